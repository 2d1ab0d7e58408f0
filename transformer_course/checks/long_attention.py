"""Checks for chapter 14 (beyond O(N²)): block-sparse masks and linear attention in its
parallel, recurrent and chunked forms.

The oracle for linear attention is the definition with the running sums written out,
S_i = sum_{j<=i} phi(k_j) v_j^T and z_i = sum_{j<=i} phi(k_j), in float64, independent of the
[N, N] matrix a learner's parallel form builds. When a learner's output is wrong, the check
recomputes the output each known mistake would give (phi on v, no phi on k, no normalizer, a
normalizer over the wrong keys, not causal, a chunk counted twice...) and names the one that
matches. Test values use d_k != d_v and odd lengths, so that the mistakes give different
numbers and transposed states have the wrong shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..i18n import tr, trf
from . import call, expect_tensor, fail, name_of, passed, seeded

__all__ = [
    "check_linear_attention",
    "check_linear_attention_recurrent",
    "check_linear_attention_chunked",
    "check_block_sparse_mask",
]


# --- linear attention: the oracle and the mistakes it recognizes -------------------------

def _phi(x):
    return F.elu(x) + 1


def reference(q, k, v, causal=True, bug=None):
    """Linear attention in float64 by its running sums; `bug` gives a known wrong variant."""
    q, k, v = (t.detach().double().cpu() for t in (q, k, v))
    fq = q if bug == "no_phi_q" else _phi(q)
    fk = k if bug == "no_phi_k" else _phi(k)
    if bug == "phi_v":
        v = _phi(v)
    if bug == "noncausal":
        causal = False
    if bug == "causal":
        causal = True
    kv = fk[..., :, :, None] * v[..., :, None, :]             # [..., N, d_k, d_v]
    if causal:
        S, z = kv.cumsum(-3), fk.cumsum(-2)
    else:
        S = kv.sum(-3, keepdim=True).expand_as(kv)
        z = fk.sum(-2, keepdim=True).expand_as(fk)
    num = (fq[..., :, None, :] @ S).squeeze(-2)               # [..., N, d_v]
    den = (fq * z).sum(-1, keepdim=True)                       # [..., N, 1]
    if bug == "no_norm":
        return num
    if bug == "norm_all_keys":                                 # causal num, all-key den
        den = (fq * fk.sum(-2, keepdim=True)).sum(-1, keepdim=True)
    if bug == "norm_columns":                                  # A.sum(-2): over queries
        a = fq @ fk.transpose(-2, -1)
        if causal:
            a = a.tril()
        den = a.sum(-2)[..., None]
    return num / den


BUGS = {
    "phi_v": tr("your output is what you get with phi applied to v too: phi maps the queries "
             "and keys (the kernel phi(q)·phi(k) > 0); the values are averaged as they are"),
    "no_phi_k": tr("your output is what you get without phi on the keys: the weights are "
                "phi(q_i)·phi(k_j), phi(x) = elu(x) + 1, on both sides"),
    "no_phi_q": tr("your output is what you get without phi on the queries: the weights are "
                "phi(q_i)·phi(k_j), phi(x) = elu(x) + 1, on both sides"),
    "no_norm": tr("your output is the numerator alone: divide by the normalizer "
               "phi(q_i)·z_i, z_i = sum of phi(k_j) over the same keys j as the numerator, "
               "so that the weights sum to 1"),
    "norm_all_keys": tr("your normalizer sums phi(k_j) over all keys while the numerator sums "
                     "over j <= i: the normalizer must sum over the same keys (j <= i)"),
    "norm_columns": tr("your normalizer sums A = phi(Q) phi(K)^T over the queries (dim -2), "
                    "not over the keys (dim -1): row i needs sum_j A_ij"),
    "noncausal": tr("your output is NOT causal: query i sees keys after it. With causal=True "
                 "query i sees only keys j <= i"),
    "causal": tr("your output is causal although causal=False was asked: then every query "
              "sees every key"),
}


def _make(batch, n, d_k, d_v, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, n, d_k, generator=g, dtype=torch.float64)
    k = torch.randn(*batch, n, d_k, generator=g, dtype=torch.float64)
    v = torch.randn(*batch, n, d_v, generator=g, dtype=torch.float64) + 0.5
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _tol(dtype):
    return 1e-10 if dtype == torch.float64 else 1e-5


def _close(got, want, tol) -> bool:
    g = got.detach().double().cpu()
    return g.shape == want.shape and bool(((g - want).abs() <= tol * (1 + want.abs())).all())


def _where(got, want, head, tol) -> str:
    g = got.detach().double().cpu()
    err = (g - want).abs()
    bad = err > tol * (1 + want.abs())
    idx = tuple(torch.nonzero(bad)[0].tolist())
    return (trf("{head}: at index {list(idx)} you have {g[idx].item():.6g}, expected "
            "{want[idx].item():.6g} (largest difference {err.max().item():.3g}, "
            "{int(bad.sum())} of {bad.numel()} entries wrong; tolerance {tol:g})"))


def _expect_output(out, q, v, head) -> None:
    expect_tensor(out, head)
    want_shape = list(v.shape)
    if list(out.shape) != want_shape:
        fail(trf("{head} has shape {list(out.shape)}, expected {want_shape} = [..., N, d_v]: "
             "one row per query, as wide as the values"))
    if out.dtype != q.dtype:
        fail(trf("{head} has dtype {out.dtype}, expected the inputs' dtype {q.dtype}"))


def _diagnose(out, q, k, v, causal, head, tol, extra=()) -> None:
    """out is wrong: name the mistake whose output it equals, else say where it differs."""
    g = out.detach().double().cpu()
    if torch.isnan(g).any():
        idx = tuple(torch.nonzero(torch.isnan(g))[0].tolist())
        fail(trf("{head} contains NaN (first at index {list(idx)}): 0/0? The normalizer "
             "phi(q_i)·z_i is > 0 when every query sees at least itself"))
    for name, want in extra:
        if _close(g, want, max(tol, 1e-5) * 10):
            fail(trf("{head}: {BUGS.get(name, name)}"))
    bugs = ["phi_v", "no_phi_k", "no_phi_q", "no_norm"]
    bugs += ["norm_all_keys", "norm_columns", "noncausal"] if causal else ["causal"]
    for bug in bugs:
        if _close(g, reference(q, k, v, causal, bug), max(tol, 1e-5) * 10):
            fail(trf("{head}: {BUGS[bug]}"))
    want = reference(q, k, v, causal)
    if tol < 1e-5 and _close(g, want, 1e-4):
        fail(_where(out, want, head, tol) + tr(". Close, but not to float64's precision: an "
             "eps added to the normalizer, or a computation in float32? phi > 0 makes "
             "the normalizer positive without an eps; keep the inputs' dtype throughout"))
    fail(_where(out, want, head, tol))


def _describe(batch, n, d_k, d_v, dtype) -> str:
    return (f"q, k {list(batch) + [n, d_k]}, v {list(batch) + [n, d_v]}, "
            f"{str(dtype).removeprefix('torch.')}")


def _cases(seed):
    with seeded(seed):
        n = int(torch.randint(20, 60, ())) | 1                   # odd
    return [((2,), 7, 4, 3, torch.float64), ((1, 2), 1, 3, 5, torch.float64),
            ((3,), 33, 8, 5, torch.float64), ((2, 2), n, 16, 8, torch.float32)]


def check_linear_attention(fn, seed: int = 0) -> None:
    """fn(q, k, v, causal) must be causal (or full) linear attention with phi = elu + 1."""
    who, n_cases = name_of(fn), 0
    for i, (batch, n, d_k, d_v, dtype) in enumerate(_cases(seed)):
        q, k, v = _make(batch, n, d_k, d_v, seed + i, dtype)
        for causal in (True, False):
            head = trf("{who}({_describe(batch, n, d_k, d_v, dtype)}, causal={causal})")
            out = call(fn, q, k, v, causal=causal)
            _expect_output(out, q, v, head)
            if not _close(out, reference(q, k, v, causal), _tol(dtype)):
                _diagnose(out, q, k, v, causal, head, _tol(dtype))
            n_cases += 1
    passed(fn, n_cases)


def _expect_state(state, q, v, head):
    if state is None:
        fail(trf("{head} returned the state None: return the state after the last position, "
             "(S, z), so that the next call can carry on from it"))
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        fail(trf("{head} returned a state of type {type(state).__name__}, expected a pair "
             "(S, z)"))
    S, z = state
    expect_tensor(S, f"{head}: S")
    expect_tensor(z, f"{head}: z")
    d_k, d_v = q.shape[-1], v.shape[-1]
    want_s, want_z = [*q.shape[:-2], d_k, d_v], [*q.shape[:-2], d_k]
    if list(S.shape) != want_s:
        fail(trf("{head}: S has shape {list(S.shape)}, expected {want_s} = [..., d_k, d_v]: "
             "S = sum_j phi(k_j) v_j^T, an outer product (d_k rows, d_v columns)"))
    if list(z.shape) != want_z:
        fail(trf("{head}: z has shape {list(z.shape)}, expected {want_z} = [..., d_k]: "
             "z = sum_j phi(k_j)"))
    return S, z


def _state_ref(k, v):
    fk, v = _phi(k.detach().double().cpu()), v.detach().double().cpu()
    return fk.transpose(-2, -1) @ v, fk.sum(-2)


def check_linear_attention_recurrent(fn, seed: int = 0) -> None:
    """fn(q, k, v, state=None) -> (out, (S, z)), causal linear attention one position at a
    time; the state carries a sequence across calls."""
    who, n_cases = name_of(fn), 0
    for i, (batch, n, d_k, d_v, dtype) in enumerate(_cases(seed)):
        q, k, v = _make(batch, n, d_k, d_v, seed + i, dtype)
        tol = _tol(dtype)
        head = f"{who}({_describe(batch, n, d_k, d_v, dtype)})"
        got = call(fn, q, k, v)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(trf("{head} returned {type(got).__name__}, expected a pair (out, state)"))
        out, state = got
        _expect_output(out, q, v, head + tr(": out"))
        S, z = _expect_state(state, q, v, head)
        if not _close(out, reference(q, k, v), tol):
            _diagnose(out, q, k, v, True, head + tr(": out"), tol)
        want_s, want_z = _state_ref(k, v)
        if not _close(S, want_s, tol) or not _close(z, want_z, tol):
            what = "S" if not _close(S, want_s, tol) else "z"
            fail(trf("{head}: the state's {what} is not the sum over all N positions of "
                 "phi(k_j) v_j^T (S) and phi(k_j) (z): return the state after the last "
                 "position"))
        n_cases += 1
        if n < 3:
            continue
        # the same sequence in pieces, one of length 1, each call continuing the last
        with seeded(seed + i):
            cut = int(torch.randint(2, n, ()))
        pieces = [(0, 1), (1, cut), (cut, n)]
        outs, state = [], None
        for a, b in pieces:
            piece = trf("{who}(positions {a}..{b - 1} of {n}, state from the previous call)")
            passed_in = None if state is None else tuple(t.clone() for t in state)
            got = call(fn, q[..., a:b, :], k[..., a:b, :], v[..., a:b, :], state=state)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                fail(trf("{piece} returned {type(got).__name__}, expected (out, state)"))
            out, new_state = got
            if passed_in is not None and not all(
                    torch.equal(x, y) for x, y in zip(passed_in, state)):
                fail(trf("{piece}: your function changed the state passed in, in place "
                     "(S += ...): the caller may use that state again. Make new tensors "
                     "(S = S + ...)"))
            _expect_output(out, q[..., a:b, :], v[..., a:b, :], piece + tr(": out"))
            want = reference(q, k, v)[..., a:b, :]
            if not _close(out, want, tol):
                fresh = reference(q[..., a:b, :], k[..., a:b, :], v[..., a:b, :])
                if a > 0 and _close(out, fresh, tol * 10):
                    fail(trf("{piece}: your output is what an empty state gives: you ignored "
                         "the state passed in. Start from (S, z) = state when it is given"))
                fail(_where(out, want, piece + tr(": out"), tol) + tr(". The pieces together "
                     "must give what one call on the whole sequence gives"))
            state = _expect_state(new_state, q[..., a:b, :], v[..., a:b, :], piece)
            want_s, _ = _state_ref(k[..., :b, :], v[..., :b, :])
            if not _close(state[0], want_s, tol):
                piece_s, _ = _state_ref(k[..., a:b, :], v[..., a:b, :])
                if a > 0 and _close(state[0], piece_s, tol * 10):
                    fail(trf("{piece}: the state you returned covers this call's positions "
                         "only: it must continue the state passed in (all positions so "
                         "far)"))
                fail(trf("{piece}: the state you returned is not the sums over positions "
                     "0..{b - 1}"))
            outs.append(out)
        n_cases += 1
    passed(fn, n_cases)


def _chunked_bug(q, k, v, chunk, bug):
    """Known wrong chunked forms, in float64."""
    q, k, v = (t.detach().double().cpu() for t in (q, k, v))
    fq, fk = _phi(q), _phi(k)
    S = torch.zeros(*q.shape[:-2], q.shape[-1], v.shape[-1], dtype=torch.float64)
    z = torch.zeros(*q.shape[:-2], q.shape[-1], 1, dtype=torch.float64)
    out = []
    for c0 in range(0, q.shape[-2], chunk):
        qc, kc, vc = (t[..., c0:c0 + chunk, :] for t in (fq, fk, v))
        a = qc @ kc.transpose(-2, -1)
        if bug != "intra_full":
            a = a.tril(-1 if bug == "strict" else 0)
        if bug == "intra_none":
            a = torch.zeros_like(a)
        if bug == "double":                       # the state updated before it is read
            S, z = S + kc.transpose(-2, -1) @ vc, z + kc.sum(-2)[..., None]
        out.append((qc @ S + a @ vc) / (qc @ z + a.sum(-1, keepdim=True)))
        if bug == "no_carry":
            continue
        if bug != "double":
            S, z = S + kc.transpose(-2, -1) @ vc, z + kc.sum(-2)[..., None]
    return torch.cat(out, -2)


CHUNK_BUGS = {
    "intra_full": tr("inside a chunk your queries see the keys after them: the intra-chunk "
                  "part phi(Q_c) phi(K_c)^T must be masked causally (tril) before it "
                  "multiplies V_c and enters the normalizer"),
    "double": tr("the current chunk is counted twice: you added it to the state (S, z) "
              "before reading the state, and again through the intra-chunk part. Read the "
              "state (earlier chunks only), then update it"),
    "no_carry": tr("your chunks do not see the earlier chunks: carry the state (S, z) from "
                "chunk to chunk and add phi(q) S (and phi(q)·z) for the positions before "
                "the chunk"),
}


def check_linear_attention_chunked(fn, seed: int = 0) -> None:
    """fn(q, k, v, chunk) must equal causal linear attention for any chunk size."""
    who, n_cases = name_of(fn), 0
    with seeded(seed):
        c = int(torch.randint(3, 8, ()))
    cases = [((2,), 7, 4, 3, torch.float64, 7), ((2,), 10, 4, 3, torch.float64, 3),
             ((1, 2), 23, 6, 5, torch.float64, c), ((3,), 5, 3, 2, torch.float64, 64),
             ((2,), 9, 4, 4, torch.float64, 1), ((2, 2), 77, 16, 8, torch.float32, 16)]
    for i, (batch, n, d_k, d_v, dtype, chunk) in enumerate(cases):
        q, k, v = _make(batch, n, d_k, d_v, seed + i, dtype)
        tol = _tol(dtype)
        head = trf("{who}({_describe(batch, n, d_k, d_v, dtype)}, chunk={chunk})")
        out = call(fn, q, k, v, chunk=chunk)
        _expect_output(out, q, v, head)
        want = reference(q, k, v)
        if _close(out, want, tol):
            n_cases += 1
            continue
        g = out.detach().double().cpu()
        strict = _chunked_bug(q, k, v, chunk, "strict")
        if torch.allclose(g, strict, rtol=1e-4, atol=max(tol, 1e-5) * 10, equal_nan=True):
            fail(trf("{head}: inside a chunk your queries do not see their own key: the causal "
                 "mask of the intra-chunk part keeps j <= i, the diagonal included (tril(),"
                 " not tril(-1)); without it the first query of the sequence sees no key "
                 "at all and gives 0/0 = NaN"))
        if chunk > 1 and torch.isnan(g[..., :min(chunk, n), :]).any():
            fail(trf("{head}: NaN in the first chunk, which has no earlier chunks: there the "
                 "output comes from the intra-chunk part alone (the causal phi(Q_c) "
                 "phi(K_c)^T V_c and its row sums); did you drop it?"))
        extra = [(bug, _chunked_bug(q, k, v, chunk, bug)) for bug in CHUNK_BUGS]
        for bug, wrong in extra:
            if _close(g, wrong, max(tol, 1e-5) * 10):
                fail(trf("{head}: {CHUNK_BUGS[bug]}"))
        _diagnose(out, q, k, v, True, head, tol)
    passed(fn, n_cases)


# --- block-sparse masks --------------------------------------------------------------------

def _layout(n_blocks, pattern, window):
    r = torch.arange(n_blocks)[:, None]
    c = torch.arange(n_blocks)[None, :]
    back = r - c
    keep = (back >= 0) & (back < window)
    if pattern == "strided":
        keep |= (back >= 0) & (back % window == 0)
    if pattern == "bigbird":
        keep |= (back >= 0) & (c == 0)
    return keep


def _expand(layout, n, block, causal=True):
    t = torch.arange(n) // block
    mask = layout[t[:, None], t[None, :]]
    return mask & torch.ones(n, n, dtype=torch.bool).tril() if causal else mask


def _mask_oracle(n, block, pattern, window):
    """The mask of "local" or "strided" (exact); for "bigbird", the part without random
    blocks."""
    return _expand(_layout(-(-n // block), pattern, window), n, block)


def _expect_mask(got, n, what):
    expect_tensor(got, what)
    if got.dtype != torch.bool:
        fail(trf("{what} has dtype {got.dtype}, expected torch.bool (True = may attend)"))
    if list(got.shape) != [n, n]:
        fail(trf("{what} has shape {list(got.shape)}, expected [{n}, {n}]: one row per query "
             "and one column per key, also when the block does not divide n"))
    return got.cpu()


def _whole_blocks(got, n, block, what):
    """Is the mask constant over each (query block, key block) pair, causality aside?"""
    t = torch.arange(n) // block
    lower = torch.ones(n, n, dtype=torch.bool).tril()
    n_blocks = -(-n // block)
    for r in range(n_blocks):
        for c in range(r + 1):
            cells = got[t == r][:, t == c][lower[t == r][:, t == c]]
            if cells.any() and not cells.all():
                fail(trf("{what}: the block of queries {r * block}..{min(n, r * block + block) - 1}"
                     " and keys {c * block}..{min(n, c * block + block) - 1} is partly "
                     "kept: keep or drop whole blocks (token i is in block i // block), "
                     "causal only on the diagonal blocks"))


def _mask_diagnose(got, n, block, pattern, window, what):
    lower = torch.ones(n, n, dtype=torch.bool).tril()
    if (got & ~lower).any():
        i, j = torch.nonzero(got & ~lower)[0].tolist()
        same = i // block == j // block
        fail(trf("{what}: query {i} sees key {j}, after it") + (
            tr(" in its own block: the diagonal blocks must be causal too (j <= i)") if same
            else tr(": the patterns are causal (key block c <= query block r)")))
    if n % block and n > block and pattern != "bigbird":
        t = (torch.arange(n) // block).clamp(max=n // block - 1)
        merged = _layout(n // block, pattern, window)[t[:, None], t[None, :]] & lower
        if torch.equal(got, merged):
            fail(trf("{what}: your last {n % block} tokens share the block before them: "
                 "{n} tokens in blocks of {block} make ceil(n / block) = "
                 "{-(-n // block)} blocks, the last one shorter"))
    _whole_blocks(got, n, block, what)
    for w in (window - 1, window + 1):
        if w >= 1 and pattern != "bigbird" and torch.equal(
                got, _mask_oracle(n, block, pattern, w)):
            fail(trf("{what}: your window spans {w} blocks, expected {window}: query block r "
                 "keeps key blocks r - window < c <= r (the block itself and the "
                 "{window - 1} before it)"))
    want = _mask_oracle(n, block, pattern, window)
    missing = want & ~got
    if missing.any():
        i, j = torch.nonzero(missing)[0].tolist()
        fail(trf("{what}: query {i} (block {i // block}) should see key {j} (block "
             "{j // block}), {i // block - j // block} blocks back"))
    if pattern != "bigbird":
        i, j = torch.nonzero(got & ~want)[0].tolist()
        fail(trf("{what}: query {i} (block {i // block}) sees key {j} (block {j // block}), "
             "{i // block - j // block} blocks back, which the {pattern!r} pattern does "
             "not keep"))


def check_block_sparse_mask(fn, seed: int = 0) -> None:
    """fn(n, block, pattern, window=3, seed=0) -> bool [n, n], causal block-sparse masks."""
    who, n_cases = name_of(fn), 0
    with seeded(seed):
        n_rand = int(torch.randint(30, 60, ()))
    cases = [(23, 4, 3), (12, 1, 3), (5, 8, 2), (n_rand, 5, 2), (40, 4, 4), (1, 1, 1)]
    for pattern in ("local", "strided"):
        for n, block, window in cases:
            what = trf("{who}({n}, {block}, {pattern!r}, window={window})")
            got = _expect_mask(call(fn, n, block, pattern, window=window), n, what)
            if not torch.equal(got, _mask_oracle(n, block, pattern, window)):
                _mask_diagnose(got, n, block, pattern, window, what)
            n_cases += 1
    for n, block, window in [(61, 4, 2), (40, 3, 3), (9, 4, 3)]:
        what = trf("{who}({n}, {block}, 'bigbird', window={window}, seed={seed})")
        got = _expect_mask(call(fn, n, block, "bigbird", window=window, seed=seed), n,
                           what)
        base = _mask_oracle(n, block, "bigbird", window)
        lower = torch.ones(n, n, dtype=torch.bool).tril()
        if not torch.equal(got & base, base) or (got & ~lower).any():
            _mask_diagnose(got, n, block, "bigbird", window, what)
        _whole_blocks(got, n, block, what)
        n_blocks = -(-n // block)
        layout = _layout(n_blocks, "bigbird", window)
        firsts = torch.arange(0, n, block)
        kept = got[firsts][:, firsts]             # one token per block: the block layout
        kept |= torch.eye(n_blocks, dtype=torch.bool)  # the diagonal, whatever its corner
        for r in range(n_blocks):
            extra = int((kept[r] & ~layout[r]).sum())
            left = int(((torch.arange(n_blocks) <= r) & ~layout[r]).sum())
            if extra != min(2, left):
                fail(trf("{what}: query block {r} keeps {extra} random key blocks, expected "
                     "{min(2, left)}: 2 per query block, drawn among the earlier blocks "
                     "that the window and the global block 0 do not keep ({left} here)"))
        again = _expect_mask(call(fn, n, block, "bigbird", window=window, seed=seed), n,
                             what)
        if not torch.equal(again, got):
            fail(trf("{what}: two calls with the same seed gave different masks: draw the "
                 "random blocks from torch.Generator().manual_seed(seed), not the global "
                 "random state"))
        n_cases += 1
    many = {tuple(call(fn, 61, 4, "bigbird", window=2, seed=s).flatten().tolist())
            for s in range(4)}
    if len(many) == 1:
        fail(trf("{who}(61, 4, 'bigbird', window=2, seed=0..3): the same mask for every seed:"
             " the random blocks must depend on the seed"))
    passed(fn, n_cases + 1)
