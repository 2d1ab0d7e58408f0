"""Checks for chapter 17, ring attention: the merge of partial attentions, and the ring.

The oracle is attention over the whole sequence in one process, in float64 (softmax with the
mask written out). The ring is run on simulated ranks (threads passing tensors, see
transformer_course.ring.simulate_ring) so that the check runs in the notebook's process, for
P = 1..4 ranks, both layouts, with and without the causal mask; the shapes are chosen so that
the known bugs each show a different symptom.
"""

from __future__ import annotations

import torch

from ..i18n import tr, trf
from . import beside, call, expect_tensor, fail, name_of, passed, seeded
from .flash import _close, _make, _partial, _where, check_merge

__all__ = ["check_merge_partial_attention", "check_ring_attention",
           "check_ring_attention_rope"]


# --- merge_partial_attention ---------------------------------------------------------------------

def _merge_cases(seed: int):
    """(batch, n_q, n_k, d, split, spread, empty rows, what)."""
    with seeded(seed):
        r = lambda lo, hi: int(torch.randint(lo, hi, ()))
        rand = ((2, 2), r(2, 20), 40, 32, r(1, 39), 1.0, 2, "random")
    return [((2,), 6, 10, 16, 4, 1.0, 0, tr("two parts")),
            ((1,), 5, 12, 16, 7, 40.0, 0, tr("large scores (lse far above 88)")),
            ((3,), 9, 11, 8, 5, 1.0, 3, tr("rows with no key in a part, or in both")), rand]


def _merge_mask(n_q, n_k, split, empty, seed):
    """Rows 0..empty-1 see nothing in part 1, the next see nothing in part 2, the next
    nothing at all; the rest see a random nonempty set."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_q, n_k, generator=g) < 0.7
    mask[:, 0] = mask[:, -1] = True
    for i in range(min(empty, n_q)):
        mask[i, :split] = False
    for i in range(empty, min(2 * empty, n_q)):
        mask[i, split:] = False
    for i in range(2 * empty, min(3 * empty, n_q)):
        mask[i] = False
    return mask


def check_merge_partial_attention(fn, seed: int = 0) -> None:
    """fn(o1, lse1, o2, lse2) must give attention over the union of two parts of the keys."""
    check_merge(fn, seed, [(batch, n_q, n_k, d, split, spread,
                            _merge_mask(n_q, n_k, split, empty, seed + n), what)
                           for n, (batch, n_q, n_k, d, split, spread, empty, what)
                           in enumerate(_merge_cases(seed))])


# --- ring_attention ------------------------------------------------------------------------------

def _ring_cases(seed: int):
    """(P, layout, causal, batch, n_local, d, what)."""
    with seeded(seed):
        r = lambda lo, hi: int(torch.randint(lo, hi, ()))
        P, zig = r(2, 5), bool(r(0, 2))
        rand = (P, "zigzag" if zig else "contiguous", True, (2,), 2 * r(1, 4), 16, "random")
    return [(1, "contiguous", False, (2,), 5, 8, tr("one rank")),
            (2, "contiguous", False, (1, 2), 3, 16, tr("two ranks")),
            (4, "contiguous", False, (2,), 3, 8, tr("four ranks")),
            (3, "contiguous", True, (2,), 5, 8, tr("causal, three ranks")),
            (4, "contiguous", True, (), 3, 16, tr("causal, four ranks")),
            (4, "zigzag", True, (2,), 4, 8, tr("causal, zigzag layout, four ranks")), rand]


def _pairs_reference(q, k, v, P, layout, pairs):
    """Attention of each rank's queries where at step t it attends to the data block
    pairs(r, t)[0] under the causal mask of block pairs(r, t)[1]'s positions (label "q":
    the queries' own positions, where the block has a key they see)."""
    from ..ring import block_positions, split_sequence

    qs, ks, vs = (split_sequence(t, P, layout) for t in (q, k, v))
    n = qs[0].shape[-2]
    os_, ls = [], []
    for r in range(P):
        q_pos = block_positions(r, P, n, layout)
        kk, vv, mm = [], [], []
        for t in range(P):
            data, label = pairs(r, t)
            if label == "q":  # the learner's skip was right: blocks nobody sees are left out
                if not (block_positions(data % P, P, n, layout).min() <= q_pos).any():
                    continue
                k_pos = q_pos
            else:
                k_pos = block_positions(label % P, P, n, layout)
            kk.append(ks[data % P]), vv.append(vs[data % P])
            mm.append(k_pos[None, :] <= q_pos[:, None])
        o, l = _partial(qs[r], torch.cat(kk, -2), torch.cat(vv, -2), torch.cat(mm, 1))
        os_.append(o), ls.append(l)
    from ..ring import gather_sequence
    return gather_sequence(os_, layout), gather_sequence(ls, layout, dim=-1)


def check_ring_attention(fn, seed: int = 0) -> None:
    """fn(q, k, v, causal=, group=, layout=) on simulated ranks must equal attention over the
    whole sequence in one process, in output and lse."""
    from ..ring import simulate_ring

    # (q, k, v, P, causal, layout) -> (o, lse, messages each rank sent)
    run_on_ranks = beside(simulate_ring, fn, timeout=10.0, count=True)
    cases = _ring_cases(seed)
    for n_case, (P, layout, causal, batch, n, d, what) in enumerate(cases):
        N = P * n
        q, k, v = _make(batch, N, N, d, seed + n_case)
        qd, kd, vd = q.double(), k.double(), v.double()
        full = torch.ones(N, N, dtype=torch.bool)
        mask = full.tril() if causal else full
        want_o, want_lse = _partial(qd, kd, vd, mask)
        head = (trf("{name_of(fn)} on {P} simulated rank(s), whole q, k, v "
                "{list(batch) + [N, d]} split into blocks of {n}, causal={causal}, "
                "layout={layout!r} [{what}]"))
        o, lse, sent = call(run_on_ranks, q, k, v, P, causal, layout)
        expect_tensor(o, f"{head}: o")
        expect_tensor(lse, trf("{head}: lse"))
        if tuple(o.shape) != tuple(q.shape) or tuple(lse.shape) != tuple(q.shape[:-1]):
            fail(trf("{head}: the gathered o and lse have shapes {list(o.shape)} and "
                 "{list(lse.shape)}, expected {list(q.shape)} and {list(q.shape[:-1])}: each "
                 "rank returns (o [..., {n}, {d}], lse [..., {n}])"))
        atol = 2e-5
        if _close(o, want_o, atol) and _close(lse, want_lse, atol):
            wrong = [r for r in range(P) if sent[r] != P - 1]
            if wrong:
                r = wrong[0]
                fail(trf("{head}: o and lse are right, but rank {r} sent {sent[r]} "
                     "message(s) with ring_shift; a ring of {P} rank(s) needs {P - 1}: "
                     "shift at steps 0 .. P - 2, not at the last step, ")
                     + (tr("where the block would travel once more to a rank that has "
                        "already seen it (on a real ring, a whole K/V block's transfer "
                        "for nothing)") if sent[r] > P - 1 else
                        tr("or some blocks never reach this rank")))
            continue
        g, gl = o.detach().double(), lse.detach().double()
        if torch.isnan(g).any() or torch.isnan(gl).any():
            fail(trf("{head}: o or lse contains NaN. A block a query cannot see gives o = 0 "
                 "and lse = -inf; merging it must not produce NaN (see "
                 "merge_partial_attention)"))
        if _close(gl, want_lse, atol):
            fail(trf("{head}: your lse is right but o is not: when the running lse grows, the o "
                 "accumulated so far must be rescaled by exp(lse_old - lse_new) (missing "
                 "rescale); merge_partial_attention does both"))
        if causal:
            if _close(g, _partial(qd, kd, vd, full)[0], atol):
                fail(trf("{head}: your o ignores the causal mask: with causal=True a query at "
                     "position i sees keys j <= i only (block_attention(..., causal=True) "
                     "with the global positions)"))
            from ..ring import block_positions

            for pairs, why in (
                    (lambda r, t: (r - t, r + t), tr("you labelled the block held after t hops "
                     "as rank (r + t)'s, but blocks move to rank + 1, so rank r then holds "
                     "rank (r - t) mod P's block")),
                    (lambda r, t: (r - t, r - t - 1), tr("off by one in the rotation: after "
                     "t hops rank r holds rank (r - t) mod P's block; (r - t - 1) mod P's is "
                     "the one arriving")),
                    (lambda r, t: (r - t, "q"), tr("you gave block_attention the queries' "
                     "positions q_pos for the keys too, so every block got the diagonal "
                     "block's mask (your causal skip is right). The keys' positions are "
                     "those of the rank the block came from: block_positions((r - t) % P, "
                     "P, n, layout)"))):
                if _close(g, _pairs_reference(qd, kd, vd, P, layout, pairs)[0], atol):
                    fail(trf("{head}: the key positions of your blocks are wrong: {why}"))
            own = torch.cat([torch.full((n,), r) for r in range(P)])
            pos = torch.cat([block_positions(r, P, n, layout) for r in range(P)])
            rank_of = own[torch.argsort(pos)]  # rank holding each position
            if layout == "contiguous":
                strict = mask & (rank_of[None, :] < rank_of[:, None])
                if _close(g, _partial(qd, kd, vd, strict)[0], atol):
                    fail(trf("{head}: your ranks skip their own (diagonal) block: with causal=True "
                         "rank r must attend to blocks 0..r, its own one under the causal mask; "
                         "skip only the blocks of ranks after r"))
            if (gl <= want_lse + atol).all() and (gl < want_lse - atol).any():
                fail(trf("{head}: your lse is smaller than attention's: some queries never saw "
                     "keys they should see. With causal=True skip a block only when no query "
                     "of this rank sees any of its keys (k_pos.min() > every q_pos)"))
        if (gl <= want_lse + atol).all() and (gl < want_lse - atol).any():
            fail(trf("{head}: your lse is smaller than attention's over all keys: some K/V blocks "
                 "were never attended to. Each rank must attend to P blocks, its own and the "
                 "P - 1 it receives: attend to the block in hand, then take the received one"))
        if not _close(o, want_o, atol):
            fail(_where(o, want_o, head + ": o", atol))
        fail(_where(lse, want_lse, head + tr(": lse"), atol))
    passed(fn, len(cases))


# --- ring_attention_rope -------------------------------------------------------------------------

def check_ring_attention_rope(fn, seed: int = 0) -> None:
    """fn(q, k, v, causal=, group=, layout=) on simulated ranks must equal rotary attention
    over the whole sequence in one process (positions 0..N-1)."""
    from ..positions import apply_rope
    from ..ring import simulate_ring

    run_on_ranks = beside(simulate_ring, fn, timeout=10.0)  # (q, k, v, P, causal, layout)
    with seeded(seed):
        P = int(torch.randint(2, 5, ()))
    cases = [(2, "contiguous", False, (2,), 3, 8), (3, "contiguous", True, (1, 2), 4, 16),
             (P, "zigzag", True, (2,), 4, 8)]
    for n_case, (P, layout, causal, batch, n, d) in enumerate(cases):
        N = P * n
        q, k, v = (t.double() for t in _make(batch, N, N, d, seed + n_case))
        pos = torch.arange(N)
        mask = torch.ones(N, N, dtype=torch.bool)
        mask = mask.tril() if causal else mask
        want_o, want_lse = _partial(apply_rope(q, pos), apply_rope(k, pos), v, mask)
        head = (trf("{name_of(fn)} on {P} simulated ranks, q, k, v {list(batch) + [N, d]}, "
                "causal={causal}, layout={layout!r}"))
        o, lse = call(run_on_ranks, q, k, v, P, causal, layout)
        expect_tensor(o, f"{head}: o")
        if tuple(o.shape) != tuple(q.shape):
            fail(trf("{head}: o has shape {list(o.shape)}, expected {list(q.shape)}"))
        if _close(o, want_o, 1e-8) and _close(lse, want_lse, 1e-8):
            continue
        from ..ring import gather_sequence

        local = gather_sequence([torch.arange(n)[:, None].double()] * P, layout)[:, 0]
        wrong_o, _ = _partial(apply_rope(q, local), apply_rope(k, local), v, mask)
        if _close(o, wrong_o, 1e-8):
            fail(trf("{head}: every rank rotated its block as if it started at position 0. "
                 "Rotate by the tokens' global positions: block_positions(rank, size, n, "
                 "layout)"))
        if _close(o, _partial(q, k, v, mask)[0], 1e-8):
            fail(trf("{head}: o is attention without any rotation: apply apply_rope to q and k"))
        if _close(o, _partial(apply_rope(q, pos), k, v, mask)[0], 1e-8):
            fail(trf("{head}: only q was rotated: rotate k by its positions too"))
        fail(_where(o, want_o, head + ": o", 1e-8))
    passed(fn, len(cases))
