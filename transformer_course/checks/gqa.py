"""Checks for chapter 11 (GQA and MQA): expanding K/V heads, grouped-query attention, and
mean-pooling the K/V projections of a multi-head model.

The oracles are PyTorch's own ``F.scaled_dot_product_attention(..., enable_gqa=True)`` in float64
and exact properties (``repeat_interleave``, the mean of each group's rows). The shapes are chosen
so that the usual mistakes give different outputs: H / G, d_head, N_q and N_k all differ, and
every K/V head is random, so that a query head served by the wrong K/V head shows. When an output
is wrong the checks recompute it with each known mistake (tile order, the scale of the wrong
dimension, the mask ignored or applied after the softmax, strided groups, a sum) and name the one
that reproduces it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..i18n import tr, trf
from . import CheckFailed, NotImplementedYet, call, expect_close, expect_tensor, fail, name_of, passed, seeded

__all__ = ["check_repeat_kv", "check_grouped_query_attention", "check_mean_pool_kv_heads",
           "check_mla_cache_bytes"]


def _shape(t) -> str:
    return str(list(t.shape))


def _same(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return tuple(a.shape) == tuple(b.shape) and bool(
        torch.allclose(a.detach().double().cpu(), b.detach().double().cpu(), atol=atol, rtol=1e-4))


def _same_nan(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    """_same, with NaN equal to NaN (the rows of a query left with no key)."""
    return tuple(a.shape) == tuple(b.shape) and bool(torch.allclose(
        a.detach().double().cpu(), b.detach().double().cpu(), atol=atol, rtol=1e-4, equal_nan=True))


def _head_sources(got: torch.Tensor, x: torch.Tensor) -> list[int | None]:
    """For each output head, the input head it equals (None if none)."""
    src = []
    for h in range(got.shape[1]):
        match = [g for g in range(x.shape[1]) if torch.equal(got[:, h], x[:, g])]
        src.append(match[0] if match else None)
    return src


# --- repeat_kv ---------------------------------------------------------------------------------

# (B, G, N, d, n_rep): G > 1 and n_rep > 1 first, so that tile order shows; then MQA (G = 1),
# n_rep = 1 (MHA, nothing to repeat), a single position, and float64.
REPEAT_CASES = [(2, 3, 5, 4, 2, torch.float32), (1, 2, 3, 6, 4, torch.float32),
                (2, 1, 4, 3, 5, torch.float32), (3, 4, 2, 2, 1, torch.float32),
                (1, 3, 1, 5, 3, torch.float64)]


def check_repeat_kv(fn, seed: int = 0) -> None:
    """repeat_kv(x [B, G, N, d], n_rep) -> [B, G * n_rep, N, d]; query head h reads K/V head h // n_rep."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        for B, G, N, d, r, dtype in REPEAT_CASES + [(2, 2 + seed % 2, 3, 2, 3, torch.float32)]:
            x = torch.randn(B, G, N, d, dtype=dtype)
            saved = x.clone()
            what = trf("{who}(x {[B, G, N, d]}, n_rep={r})")
            got = call(fn, x, r)
            expect_tensor(got, what)
            want = x.repeat_interleave(r, dim=1)
            if tuple(got.shape) != tuple(want.shape):
                for dim, name in ((0, tr("the batch")), (2, tr("the positions")), (3, tr("the features"))):
                    wrong = x.repeat_interleave(r, dim=dim)
                    if r > 1 and tuple(got.shape) == tuple(wrong.shape):
                        fail(trf("{what} has shape {_shape(got)}, expected {list(want.shape)}: you repeated "
                             "along dimension {dim} ({name}) instead of dimension 1 (the heads)"))
                if got.dim() == 5:
                    fail(trf("{what} has shape {_shape(got)}, expected {list(want.shape)}: after expanding "
                         "to [B, G, n_rep, N, d], merge G and n_rep into one head dimension "
                         "(.reshape(B, G * n_rep, N, d))"))
                fail(trf("{what} has shape {_shape(got)}, expected [B, G * n_rep, N, d] = {list(want.shape)}"))
            if got.dtype != x.dtype:
                fail(trf("{what} has dtype {got.dtype}, expected {x.dtype}: repeating only copies x"))
            if not torch.equal(x, saved):
                fail(trf("{who} changed its input x in place"))
            if torch.equal(got, want):
                n += 1
                continue
            src = _head_sources(got, x)
            if r > 1 and G > 1 and torch.equal(got, x.repeat(1, r, 1, 1)):
                fail(trf("{what}: tile order: your output heads come from K/V heads {src}, expected "
                     "{[h // r for h in range(G * r)]}. x.repeat(1, n_rep, 1, 1) tiles the whole "
                     "stack of heads (0, 1, 2, 0, 1, 2, ...), so query head 1 reads K/V head 1; "
                     "each K/V head must serve n_rep *consecutive* query heads (query head h uses "
                     "K/V head h // n_rep): use x.repeat_interleave(n_rep, dim=1)"))
            if None not in src:
                h = next(h for h in range(G * r) if src[h] != h // r)
                fail(trf("{what}: output head {h} is K/V head {src[h]}, expected K/V head {h // r} "
                     "(query head h uses K/V head h // n_rep; your heads come from {src})"))
            expect_close(got, want, what)
    passed(fn, n)


# --- grouped_query_attention -------------------------------------------------------------------

# (name, B, H, G, N_q, N_k, d, mask kind, dtype). H / G = 3, d = 8, N_q = 5, N_k = 7 differ, so
# sqrt(d) is told apart from sqrt(H d), sqrt(N_k), ... and tile order from the right order.
GQA_CASES = [
    ("GQA", 2, 6, 2, 5, 7, 8, None, torch.float32),
    (tr("GQA, a causal mask [N_q, N_k] aligned bottom-right"), 2, 6, 2, 5, 7, 8, "causal", torch.float32),
    (tr("GQA, a padding mask [B, 1, 1, N_k]"), 2, 6, 2, 5, 7, 8, "padding", torch.float32),
    (tr("GQA, a random mask [B, H, N_q, N_k]"), 1, 4, 2, 3, 6, 5, "random", torch.float32),
    (tr("MHA (G = H)"), 2, 3, 3, 4, 4, 6, "causal", torch.float32),
    (tr("MQA (G = 1), one query (decoding)"), 3, 4, 1, 1, 9, 8, None, torch.float32),
    (tr("GQA in float64"), 1, 8, 2, 2, 3, 4, "causal", torch.float64),
]


def _make_mask(kind, B, H, n_q, n_k):
    if kind is None:
        return None
    if kind == "causal":
        return torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)
    if kind == "padding":
        lengths = torch.randint(1, n_k + 1, (B,))
        lengths[0] = n_k - 2
        return (torch.arange(n_k) < lengths[:, None])[:, None, None, :]
    m = torch.rand(B, H, n_q, n_k) < 0.5
    return m | F.one_hot(torch.randint(0, n_k, (B, H, n_q)), n_k).bool()   # every query sees a key


def _reference(q, k, v, mask=None, scale=None, order="interleave", mask_mode="before"):
    """Attention in float64 with K/V heads expanded in `order`, the scale 1/sqrt(scale) and the mask
    applied in `mask_mode` (one of the known mistakes when these differ from the defaults)."""
    q, k, v = q.double(), k.double(), v.double()
    r = q.shape[1] // k.shape[1]
    if order == "interleave":
        k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)
    else:
        k, v = k.repeat(1, r, 1, 1), v.repeat(1, r, 1, 1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1] if scale is None else scale)
    if mask is not None and mask_mode == "before":
        scores = scores.masked_fill(~mask, float("-inf"))
    w = scores.softmax(-1)
    if mask is not None and mask_mode == "after":
        w = w * mask
    return w @ v


def _diagnose_gqa(got, q, k, v, mask, what):
    B, H, n_q, d = q.shape
    G, n_k = k.shape[1], k.shape[2]
    r = H // G
    if G > 1 and r > 1 and _same(got, _reference(q, k, v, mask, order="tile")):
        fail(trf("{what}: your query heads read the wrong K/V heads: you expanded K and V in tile order "
             "(.repeat(1, n_rep, 1, 1), heads 0, 1, 0, 1, ...), so query head 1 read K/V head 1; "
             "query head h must use K/V head h // n_rep = h // {r} (heads 0, 0, 0, 1, 1, 1): "
             "use repeat_interleave(n_rep, dim=1)"))
    if mask is not None:
        if _same(got, _reference(q, k, v, None)):
            fail(trf("{what}: your output ignores the mask: it equals attention without it. Set the scores "
                 "where the mask is False to -inf before the softmax"))
        if _same(got, _reference(q, k, v, mask, mask_mode="after")):
            fail(trf("{what}: you applied the mask after the softmax (zeroing weights), so the remaining "
                 "weights no longer sum to 1. Set masked scores to -inf before the softmax"))
        if _same_nan(got, _reference(q, k, v, ~mask)):
            nan_rows = "" if bool((~mask).any(-1).all()) else (
                tr("; the queries that may see every key had none left, hence the NaN rows"))
            fail(trf("{what}: your mask is inverted: True means *may attend*, so set the scores to "
                 "-inf where the mask is False (masked_fill(~mask, ...)); you hid the keys a "
                 "query may see and kept the others{nan_rows}"))
    scales = {tr("1 (no scaling)"): 1.0, f"d = {d}": float(d) ** 2, trf("sqrt(H * d) = sqrt({H * d})"): H * d,
              trf("sqrt(G * d) = sqrt({G * d})"): G * d, trf("sqrt(N_k) = sqrt({n_k})"): n_k,
              trf("sqrt(N_q) = sqrt({n_q})"): n_q, trf("sqrt(H) = sqrt({H})"): H}
    for name, s in scales.items():
        if s != d and _same(got, _reference(q, k, v, mask, scale=s)):
            fail(trf("{what}: you scaled the scores by {name}; divide by sqrt(d) = sqrt({d}), the width "
                 "of one head's keys"))


def _sdpa_gqa(q, k, v, mask):
    """PyTorch's GQA attention (enable_gqa needs torch >= 2.5; before, the same by expanding)."""
    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    except TypeError:
        r = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(r, 1), v.repeat_interleave(r, 1),
                                              attn_mask=mask)


def check_grouped_query_attention(fn, seed: int = 0) -> None:
    """grouped_query_attention(q [B, H, N_q, d], k, v [B, G, N_k, d], mask) against PyTorch's
    F.scaled_dot_product_attention(..., enable_gqa=True) in float64."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        for name, B, H, G, n_q, n_k, d, kind, dtype in GQA_CASES:
            q = torch.randn(B, H, n_q, d, dtype=dtype)
            k, v = torch.randn(B, G, n_k, d, dtype=dtype), torch.randn(B, G, n_k, d, dtype=dtype)
            mask = _make_mask(kind, B, H, n_q, n_k)
            saved = [t.clone() for t in (q, k, v)]
            what = (trf("{who}(q {[B, H, n_q, d]}, k and v {[B, G, n_k, d]}")
                    + ("" if mask is None else trf(", mask {_shape(mask)}")) + f") [{name}]")
            try:
                got = call(fn, q, k, v) if mask is None else call(fn, q, k, v, mask=mask)
            except NotImplementedYet:
                raise
            except CheckFailed as e:
                fail(trf("{e}. Here q has H = {H} heads and k, v have G = {G}: each K/V head serves "
                     "n_rep = H // G = {H // G} query heads; expand k and v along dimension 1 "
                     "(the heads) before the matmuls"))
            expect_tensor(got, what)
            if tuple(got.shape) != (B, H, n_q, d):
                fail(trf("{what} has shape {_shape(got)}, expected [B, H, N_q, d] = {[B, H, n_q, d]}"))
            if got.dtype != dtype:
                fail(trf("{what} has dtype {got.dtype}, expected {dtype} (the dtype of q, k and v)"))
            if any(not torch.equal(a, b) for a, b in zip((q, k, v), saved)):
                fail(trf("{who} changed one of its inputs in place"))
            want = _sdpa_gqa(q.double(), k.double(), v.double(), mask)
            tol = 1e-10 if dtype == torch.float64 else 1e-5
            if not _same(got, want, atol=tol):
                _diagnose_gqa(got, q, k, v, mask, what)
            expect_close(got, want, what, atol=tol, rtol=1e-4 if dtype == torch.float32 else 1e-8)
            n += 1
    passed(fn, n)


# --- mean_pool_kv_heads ------------------------------------------------------------------------

# (H, G, d_head, D): group size H / G = 3 differs from G = 2 and from d_head = 4, so contiguous
# groups, strided groups and groups of rows all give different results.
POOL_CASES = [(6, 2, 4, 5), (4, 4, 3, 2), (4, 1, 2, 7), (8, 2, 1, 3), (6, 3, 5, 4)]


def _pool_oracle(w, H, G):
    d = w.shape[0] // H
    out = torch.stack([w[g * (H // G) * d:(g + 1) * (H // G) * d].reshape(H // G, d, -1).mean(0)
                       for g in range(G)])          # group g: the consecutive heads g*H/G .. (g+1)*H/G - 1
    return out.reshape(G * d, w.shape[1])


def check_mean_pool_kv_heads(fn, seed: int = 0) -> None:
    """mean_pool_kv_heads(w [H * d_head, D], H, G) -> [G * d_head, D]: the mean of each group of
    H / G consecutive heads' rows, groups in head order."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        for H, G, d, D in POOL_CASES + [(6, 2, 2 + seed % 3, 3)]:
            for dtype in (torch.float32, torch.float64):
                w = torch.randn(H * d, D, dtype=dtype)
                saved = w.clone()
                what = trf("{who}(w {[H * d, D]}, n_heads={H}, n_kv_heads={G})")
                got = call(fn, w, H, G)
                expect_tensor(got, what)
                if tuple(got.shape) != (G * d, D):
                    fail(trf("{what} has shape {_shape(got)}, expected [G * d_head, D] = {[G * d, D]} "
                         "(d_head = {H * d} // {H} = {d})"))
                if got.dtype != dtype:
                    fail(trf("{what} has dtype {got.dtype}, expected {dtype} (the dtype of w)"))
                if not torch.equal(w, saved):
                    fail(trf("{who} changed its input w in place"))
                want = _pool_oracle(w, H, G)
                if _same(got, want, atol=1e-6):
                    n += 1
                    continue
                r = H // G
                if r > 1 and _same(got, want * r, atol=1e-5):
                    fail(trf("{what}: your rows are {r} times too large: you summed the {r} heads of "
                         "each group; take their mean, so that a group of identical heads pools to "
                         "that same head"))
                strided = w.reshape(r, G, d, D).mean(0).reshape(G * d, D)
                if r > 1 and G > 1 and _same(got, strided, atol=1e-6):
                    fail(trf("{what}: you grouped heads {list(range(0, H, G))} together (strided: heads "
                         "h, h + G, ...); group g holds the consecutive heads g * H/G .. "
                         "(g + 1) * H/G - 1 = {list(range(r))} for g = 0, the heads that "
                         "repeat_interleave sends to K/V head g"))
                rows = w.reshape(G * d, r, D).mean(1)
                if r > 1 and d > 1 and _same(got, rows, atol=1e-6):
                    fail(trf("{what}: you averaged groups of {r} consecutive *rows*; a head is a block "
                         "of d_head = {d} rows: reshape to [G, H/G, d_head, D] and average over "
                         "the H/G heads of each group"))
                expect_close(got, want, what, atol=1e-6)
    passed(fn, n)


# --- mla_cache_bytes ---------------------------------------------------------------------------

# (n_layers, d_latent, d_rope, seq_len, batch, bytes): DeepSeek-V2's shapes first, then small odd
# ones where d_latent, d_rope and the rest all differ.
MLA_CASES = [(60, 512, 64, 4096, 1, 2), (3, 7, 5, 11, 2, 4), (1, 16, 0, 1, 1, 1), (2, 9, 3, 5, 13, 2)]


def check_mla_cache_bytes(fn, seed: int = 0) -> None:
    """mla_cache_bytes(n_layers, d_latent, d_rope, seq_len, batch, bytes) = the product, exactly."""
    who = name_of(fn)
    n = 0
    g = torch.Generator().manual_seed(seed)
    extra = tuple(int(x) for x in torch.randint(1, 9, (6,), generator=g))
    for L, r, dr, N, B, nb in MLA_CASES + [extra]:
        what = trf("{who}(n_layers={L}, d_latent={r}, d_rope={dr}, seq_len={N}, batch={B}, bytes_per_element={nb})")
        got = call(fn, L, r, dr, N, B, nb)
        want = L * (r + dr) * N * B * nb
        if isinstance(got, bool) or not isinstance(got, int):
            fail(trf("{what} returned {type(got).__name__} {got!r}, expected an int (a number of bytes)"))
        if got == want:
            n += 1
            continue
        if got == 2 * want:
            fail(trf("{what} is {got}, expected {want}: twice too much. An MLA cache holds no separate "
                 "keys and values: the latent c_kv stands for both, so there is no factor 2"))
        if got == L * r * N * B * nb or got == 2 * L * r * N * B * nb:
            fail(trf("{what} is {got}, expected {want}: you left out the decoupled RoPE key "
                 "(d_rope = {dr} entries per layer and token)"))
        fail(trf("{what} is {got}, expected n_layers * (d_latent + d_rope) * seq_len * batch * "
             "bytes_per_element = {want}"))
    passed(fn, n)
