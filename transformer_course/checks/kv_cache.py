"""Checks for chapter 10 (the KV cache): the cache's size by formula, the decode mask, the cache.

kv_cache_bytes is compared with the formula, first on shapes whose factors all differ (and differ
from the 2 of keys and values), so that each forgotten or extra factor has its own signature. decode_mask is compared with PyTorch's own
bottom-right causal mask, ``torch.nn.attention.bias.causal_lower_right``, read off through
``F.scaled_dot_product_attention`` (with zero queries and the identity as values, the output row of
query i is uniform over the keys it may see). KVCache is run through prefill, decode steps, updates
of the layers in varying order, an empty update, crop and reset, against per-layer lists
concatenated by the check.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from ..i18n import tr, trf
from . import (call, describe, expect_tensor, fail, name_of, passed, seeded)

__all__ = ["check_kv_cache_bytes", "check_decode_mask", "check_KVCache", "lower_right_oracle",
           "check_llama2_70b_kv_cache_bytes"]


# --- kv_cache_bytes ----------------------------------------------------------------------------

def _formula(L, G, d, N, B, b):
    return 2 * L * G * d * N * B * b


def check_kv_cache_bytes(fn, seed: int = 0) -> None:
    """kv_cache_bytes(n_layers, n_kv_heads, d_head, seq_len, batch, bytes_per_element) -> int."""
    who = name_of(fn)
    names = ("n_layers", "n_kv_heads", "d_head", "seq_len", "batch", "bytes_per_element")
    # The first case's factors differ pairwise and from the 2 of keys and values (its 4 bytes
    # per element are 2 * 2, so leaving them out is not the same number as dropping the 2).
    cases = [(3, 5, 7, 11, 13, 4),
             (118, 48, 256, 2048, 512, 2),     # PaLM-540B-like shapes with full multi-head K/V
             (1, 1, 1, 1, 1, 1), (2, 4, 32, 64, 1, 4), (7, 3, 17, 0, 5, 2)]
    with seeded(seed):
        for _ in range(3):
            cases.append(tuple(int(x) for x in torch.randint(1, 40, (5,))) + (int(torch.randint(1, 5, ())),))
    for case in cases:
        args = dict(zip(names, case))
        shown = ", ".join(f"{k}={v}" for k, v in args.items())
        got = call(fn, **args)
        want = _formula(*case)
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            fail(trf("{who}({shown}) returned {describe(got)} ({type(got).__name__}), expected an int: "
                 "bytes are whole numbers (use integer arithmetic, no / and no float factors)"))
        if got == want:
            continue
        L, G, d, N, B, b = case
        hints = [(want // 2, tr("you dropped the factor 2: the cache holds keys AND values")),
                 (want * 8, tr("that is bits, not bytes: bytes_per_element is already in bytes"))]
        hints += [(want // f, trf("you left out {name} = {f}")) for name, f in zip(names, case) if f > 1]
        named = [hint for value, hint in hints if want and got == value]
        if named:          # several only where two factors are equal: name every candidate
            options = tr("; or ").join(named)
            fail(trf("{who}({shown}) = {got}, expected 2 * {L} * {G} * {d} * {N} * {B} * {b} = "
                 "{want}: {options}"))
        fail(trf("{who}({shown}) = {got}, expected 2 * {L} * {G} * {d} * {N} * {B} * {b} = {want}"))
    passed(fn, len(cases))


# --- decode_mask -------------------------------------------------------------------------------

def lower_right_oracle(n_q: int, n_k: int) -> torch.Tensor:
    """Bool [n_q, n_k] read off PyTorch's causal_lower_right: zero queries give each query uniform
    weights over the keys it may see, and values = identity turn the weights into the output."""
    from torch.nn.attention.bias import causal_lower_right
    q = torch.zeros(1, 1, n_q, 8, dtype=torch.float64)
    k = torch.zeros(1, 1, n_k, 8, dtype=torch.float64)
    v = torch.eye(n_k, dtype=torch.float64)[None, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(n_q, n_k))
    return out[0, 0] > 0


def _show(mask: torch.Tensor) -> str:
    return " / ".join("".join("1" if x else "." for x in row) for row in mask.tolist())


def check_decode_mask(fn, seed: int = 0) -> None:
    """decode_mask(n_q, n_k) -> bool [n_q, n_k], True where query i may see key j <= i + n_k - n_q."""
    who = name_of(fn)
    cases = [(2, 5), (1, 6), (3, 7), (4, 4), (1, 1), (5, 9), (2, 3), (6, 6)]
    with seeded(seed):
        for _ in range(4):
            n_k = int(torch.randint(1, 17, ()))
            cases.append((int(torch.randint(1, n_k + 1, ())), n_k))
    for n_q, n_k in cases:
        what = f"{who}(n_q={n_q}, n_k={n_k})"
        got = expect_tensor(call(fn, n_q, n_k), what)
        if tuple(got.shape) != (n_q, n_k):
            fail(trf("{what} has shape {list(got.shape)}, expected [n_q, n_k] = {[n_q, n_k]}: one row per "
                 "new query, one column per key (cached and new)"))
        if got.dtype != torch.bool:
            fail(trf("{what} has dtype {got.dtype}, expected torch.bool (True = may attend), the "
                 "convention of F.scaled_dot_product_attention and chapter 03"))
        got = got.cpu()
        want = lower_right_oracle(n_q, n_k)
        if torch.equal(got, want):
            continue
        i = torch.arange(n_q)[:, None]
        j = torch.arange(n_k)[None, :]
        shift = n_k - n_q
        known = [
            (j <= i, tr("your mask is aligned top-left, like torch.ones(n_q, n_k).tril() and "
                     "F.scaled_dot_product_attention(is_causal=True): the new queries are the LAST "
                     "n_q positions, so query i sees keys j <= i + n_k - n_q (bottom-right)")),
            (~want, tr("your mask is inverted: True must mean 'may attend'")),
            (j < i + shift, tr("off by one: query i must also see its own key, j = i + n_k - n_q "
                            "(use <=, not <)")),
            (j <= i + shift + 1, tr("off by one: query i sees one future key, j = i + n_k - n_q + 1")),
            (j <= i + shift - 1, tr("off by one: query i misses its own key j = i + n_k - n_q")),
            (j >= i + shift, tr("your mask is transposed (upper triangle): query i sees the keys "
                             "j <= i + n_k - n_q, the past, not the future")),
        ]
        for mask, hint in known:
            if torch.equal(got, mask):
                fail(trf("{what} = {_show(got)}, expected {_show(want)}: {hint}"))
        bad = torch.nonzero(got != want)[0].tolist()
        fail(trf("{what} = {_show(got)}, expected {_show(want)} (rows are queries): at query {bad[0]}, "
             "key {bad[1]} you have {bool(got[bad[0], bad[1]])}; query i sees keys j <= i + n_k - n_q"))
    passed(fn, len(cases))


# --- KVCache -----------------------------------------------------------------------------------

_DIM_NAMES = {0: tr("0 (the batch B)"), 1: tr("1 (the heads G)"), 3: tr("3 (the features d_head)")}


def _length(cache, what: str) -> int:
    n = call(cache.__len__)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        fail(trf("len({what}) returned {describe(n)}, expected an int: the number of cached positions"))
    return int(n)


class _Oracle:
    """Per-layer lists of what was appended, concatenated on demand."""

    def __init__(self, n_layers):
        self.k = [[] for _ in range(n_layers)]
        self.v = [[] for _ in range(n_layers)]

    def update(self, layer, k, v):
        self.k[layer].append(k)
        self.v[layer].append(v)
        return torch.cat(self.k[layer], dim=-2), torch.cat(self.v[layer], dim=-2)

    def all(self, layer):
        return torch.cat(self.k[layer], dim=-2), torch.cat(self.v[layer], dim=-2)

    def crop(self, n):
        for layer in range(len(self.k)):
            if self.k[layer]:
                k, v = self.all(layer)
                self.k[layer], self.v[layer] = [k[..., :n, :]], [v[..., :n, :]]

    def reset(self):
        self.__init__(len(self.k))


def _expect_update(got, want_k, want_v, new_k, new_v, oracle, layer, what, context):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        fail(trf("{what} returned {describe(got)}, expected a pair (k_all, v_all)"))
    for name, t, want, new, other in (("k_all", got[0], want_k, new_k, want_v),
                                      ("v_all", got[1], want_v, new_v, want_k)):
        expect_tensor(t, trf("{what}: {name}"))
        if tuple(t.shape) != tuple(want.shape):
            if tuple(t.shape) == tuple(new.shape):
                fail(trf("{what} returned {name} of shape {list(t.shape)}, only the new positions; "
                     "expected {list(want.shape)}: update returns every key and value of this "
                     "layer so far, cached and new ({context})"))
            for dim, dim_name in _DIM_NAMES.items():
                old = list(want.shape)
                old[-2] -= new.shape[-2]
                glued = list(new.shape)
                glued[dim] += old[dim]
                if old[-2] > 0 and list(t.shape) == glued:
                    fail(trf("{what} returned {name} of shape {list(t.shape)}, expected "
                         "{list(want.shape)}: you concatenated along dimension {dim_name}; the "
                         "positions are dimension 2 (-2) of [B, G, N, d_head]"))
            if tuple(t.shape) == tuple(other.shape) and t.shape[-1] != want.shape[-1]:
                fail(trf("{what} returned {name} of shape {list(t.shape)}, expected "
                     "{list(want.shape)}: keys and values are swapped (return (k_all, v_all))"))
            if t.shape[:2] == want.shape[:2] and t.shape[-1] == want.shape[-1] and \
                    t.shape[-2] > want.shape[-2]:
                fail(trf("{what} returned {name} with {t.shape[-2]} positions, expected "
                     "{want.shape[-2]}: it holds positions of other layers too. Each layer needs "
                     "its own keys and values (its own w_k and w_v made them): keep one entry per "
                     "layer ({context})"))
            fail(trf("{what} returned {name} of shape {list(t.shape)}, expected {list(want.shape)} "
                 "({context})"))
        if not torch.equal(t.cpu(), want):
            for other_layer in range(len(oracle.k)):
                if other_layer != layer and oracle.k[other_layer]:
                    ok, ov = oracle.all(other_layer)
                    theirs = ok if name == "k_all" else ov
                    if theirs.shape == t.shape and torch.equal(t.cpu(), theirs):
                        fail(trf("{what} returned the {name} of layer {other_layer}: each layer keeps "
                             "its own keys and values ({context})"))
            if want.shape[-2] > new.shape[-2] and torch.equal(t[..., -new.shape[-2]:, :].cpu(), new):
                fail(trf("{what}: the new positions are right but the cached ones before them are "
                     "not what this layer was given earlier ({context})"))
            fail(trf("{what} returned {name} that differs from the cached positions followed by the "
                 "new ones, torch.cat([cached, new], dim=-2) ({context})"))


def check_KVCache(cls, seed: int = 0) -> None:
    """KVCache(n_layers) with update(layer, k, v) -> (k_all, v_all), crop(n), reset(), len().

    Only this interface is used (the chapter's later cells use nothing else): the tensors may be
    stored under any names. One update appends N_new = 0 positions, which returns what the layer
    holds (the chapter reads the cache's tensors that way)."""
    who = name_of(cls)
    n = 0
    with seeded(seed):
        for n_layers, B, G, d, d_v, chunks in [(3, 2, 3, 5, 4, [2, 2, 1, 3]),
                                               (2, 1, 1, 1, 1, [1, 0, 1, 2]),
                                               (1, 3, 2, 6, 6, [5, 2])]:
            cache = call(cls, n_layers)
            what = f"{who}({n_layers})"
            if _length(cache, what) != 0:
                fail(trf("len({what}) is {_length(cache, what)} when nothing was cached, expected 0"))
            oracle = _Oracle(n_layers)
            total = 0
            for step, n_new in enumerate(chunks):
                total += n_new
                order = list(range(n_layers))
                if step % 2:
                    order = order[::-1]                # layers may come in any order
                for layer in order:
                    k = torch.randn(B, G, n_new, d)
                    v = torch.randn(B, G, n_new, d_v)
                    want_k, want_v = oracle.update(layer, k, v)
                    ctx = (trf("after updates of {chunks[:step]} positions and now {n_new} new, "
                           "k [B, G, N_new, d_head] = {list(k.shape)}"))
                    got = call(cache.update, layer, k.clone(), v.clone())
                    _expect_update(got, want_k, want_v, k, v, oracle, layer,
                                   trf("{what}.update(layer={layer}, ...)"), ctx)
                    n += 1
                length = _length(cache, what)
                if length != total:
                    fail(trf("len({what}) is {length} after every layer received {chunks[:step + 1]} "
                         "positions, expected {total}"))
            # crop: rewind to the first `keep` positions, then decode on from there
            keep = total - min(3, total - 1)
            before = [oracle.all(layer)[0] for layer in range(n_layers)]
            call(cache.crop, keep)
            oracle.crop(keep)
            length = _length(cache, what)
            if length != keep:
                fail(trf("len({what}) is {length} after crop({keep}) of {total} positions, expected "
                     "{keep}: crop must shrink the cache"))
            for layer in range(n_layers):
                k, v = torch.randn(B, G, 2, d), torch.randn(B, G, 2, d_v)
                want_k, want_v = oracle.update(layer, k, v)
                got = call(cache.update, layer, k.clone(), v.clone())
                ctx = trf("after crop({keep}) of {total} positions, 2 new")
                if isinstance(got, (tuple, list)) and len(got) == 2 and \
                        isinstance(got[0], torch.Tensor) and got[0].dim() == 4:
                    if got[0].shape[-2] == total + 2:
                        fail(trf("{what}: after crop({keep}) of {total} positions, update returned "
                             "{total + 2} positions, expected {keep + 2}: crop did not shrink the "
                             "cache of layer {layer}"))
                    _crop_end_hint(got[0].cpu(), what, keep, total, before[layer])
                _expect_update(got, want_k, want_v, k, v, oracle, layer,
                               trf("{what}.update(layer={layer}, ...)"), ctx)
                n += 1
            # crop to the full length keeps everything; crop(0) empties
            now = _length(cache, what)
            call(cache.crop, now)
            if _length(cache, what) != now:
                fail(trf("len({what}) is {_length(cache, what)} after crop({now}) of {now} positions, "
                     "expected {now} (nothing to drop)"))
            # reset: empty, and a new prompt (another batch size) starts from nothing
            call(cache.reset)
            oracle.reset()
            length = _length(cache, what)
            if length != 0:
                fail(trf("len({what}) is {length} after reset(), expected 0: reset must forget the "
                     "length too"))
            B2 = B                                     # stale tensors would concatenate
            for layer in range(n_layers):
                k, v = torch.randn(B2, G, 3, d), torch.randn(B2, G, 3, d_v)
                want_k, want_v = oracle.update(layer, k, v)
                got = call(cache.update, layer, k.clone(), v.clone())
                if isinstance(got, (tuple, list)) and len(got) == 2 and \
                        isinstance(got[0], torch.Tensor) and tuple(got[0].shape) != (B2, G, 3, d):
                    fail(trf("{what}: after reset(), update(layer={layer}) with k of shape "
                         "{[B2, G, 3, d]} (a new prompt) returned k_all of shape "
                         "{list(got[0].shape)}, expected {[B2, G, 3, d]}: reset() did not empty "
                         "the cache of layer {layer}"))
                _expect_update(got, want_k, want_v, k, v, oracle, layer,
                               trf("{what}.update(layer={layer}, ...)"), tr("after reset()"))
                n += 1
            if _length(cache, what) != 3:
                fail(trf("len({what}) is {_length(cache, what)} after reset() and 3 new positions, "
                     "expected 3"))
    passed(cls, n)


def _crop_end_hint(k_all, what, keep, total, old_k):
    """Name the mistake of keeping the last `keep` positions instead of the first."""
    if k_all.shape[-2] != keep + 2 or keep == total:
        return
    if torch.equal(k_all[..., :keep, :], old_k[..., total - keep:, :]):
        fail(trf("{what}: after crop({keep}) of {total} positions the cache holds the LAST {keep} "
             "positions; crop(n) keeps the FIRST n (rewinding drops the newest tokens)"))


# --- llama2_70b_kv_cache_bytes -------------------------------------------------------------------

def check_llama2_70b_kv_cache_bytes(fn, seed: int = 0) -> None:
    """llama2_70b_kv_cache_bytes(seq_len, batch, bytes_per_element=2): 80 layers, 8 K/V heads of
    width 128 (64 query heads, d_model = 8192)."""
    who = name_of(fn)
    # 1 byte first, then 4: dropping the 2 of keys and values, ignoring bytes_per_element and
    # fixing it at 2 give three different numbers there (at 2 bytes two of them coincide).
    cases = [(7, 3, 1), (7, 3, 4), (4096, 1, 2), (1, 1, 1), (2048, 16, 1)]
    with seeded(seed):
        cases += [(int(torch.randint(1, 5000, ())), int(torch.randint(1, 64, ())), 2)]
    for seq_len, batch, b in cases:
        what = trf("{who}(seq_len={seq_len}, batch={batch}, bytes_per_element={b})")
        got = call(fn, seq_len, batch, b) if b != 2 else call(fn, seq_len, batch)
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            fail(trf("{what} returned {describe(got)} ({type(got).__name__}), expected an int"))
        want = _formula(80, 8, 128, seq_len, batch, b)
        if got == want:
            continue
        hints = [(_formula(80, 64, 128, seq_len, batch, b),
                  tr("you cached 64 x 128 = 8192 numbers per layer and token for the keys (the 64 "
                  "query heads, or d_model); the cache holds the 8 K/V heads of 128 (n_kv_heads = "
                  "8: grouped-query attention shares each K/V head among 8 query heads)")),
                 (want // 2, tr("you dropped the factor 2: keys AND values")),
                 (_formula(80, 8, 128, seq_len, batch, 1),
                  tr("you left out bytes_per_element: multiply by it")),
                 (_formula(80, 8, 128, seq_len, batch, 2),
                  tr("you used 2 bytes per element whatever bytes_per_element says: pass it on"))]
        named = [hint for value, hint in hints if got == value and value != want]
        if named:
            options = tr("; or ").join(named)
            fail(trf("{what} = {got}, expected {want}: {options}"))
        fail(trf("{what} = {got}, expected 2 * 80 * 8 * 128 * {seq_len} * {batch} * {b} = {want}"))
    passed(fn, len(cases))
