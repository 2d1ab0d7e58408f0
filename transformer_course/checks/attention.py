"""Checks for chapter 03 (attention): scaled dot-product attention, causal, padding and
sliding-window masks, and the attention weights.

The attention checks look inside the learner's function without asking for its weights: with
``v = identity`` (one value per key, ``v[j] = e_j``) the output row of query i *is* its row of
attention weights. From those weights they read the usual mistakes: rows that do not sum to 1
(softmax over the wrong dimension), a wrong scale (fitted from the weights' log-ratios),
weight on masked keys (masking after the softmax, a finite penalty, an inverted mask).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..i18n import tr, trf
from . import approx, call, expect_close, expect_tensor, fail, name_of, passed, seeded

__all__ = [
    "check_scaled_dot_product_attention",
    "check_causal_mask",
    "check_padding_mask",
    "check_attention_weights",
    "check_sliding_window_mask",
]


# --- helpers -----------------------------------------------------------------------------------

def _oracle(q, k, v, mask=None):
    """PyTorch's own attention, in float64 so that the tolerance is all the learner's."""
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    return out.to(q.dtype)


def _fmt(xs, digits=2, more=False) -> str:
    return "[" + ", ".join(f"{x:.{digits}f}" for x in xs) + (", ...]" if more else "]")


def _shape(t) -> str:
    return str(list(t.shape))


def _call_sdpa(fn, q, k, v, mask):
    if mask is None:
        return call(fn, q, k, v)
    return call(fn, q, k, v, mask=mask)


def _visible_mask(shape, p=0.6):
    """A random boolean mask where every row (query) sees at least one key."""
    m = torch.rand(shape) < p
    first = torch.randint(0, shape[-1], shape[:-1])
    return m | F.one_hot(first, shape[-1]).bool()


def _expect_float_output(got, want_shape, what, hint):
    expect_tensor(got, what)
    if tuple(got.shape) != tuple(want_shape):
        fail(trf("{what} has shape {_shape(got)}, expected {list(want_shape)}. {hint}"))
    if not got.is_floating_point():
        fail(trf("{what} has dtype {got.dtype}, expected a floating-point tensor"))


def _fitted_scale(weights: torch.Tensor, raw: torch.Tensor) -> float | None:
    """The c in softmax(q·k / c) that best explains the weights, from their log-ratios."""
    w, s = weights.double(), raw.double()
    cs = []
    for wr, sr in zip(w.reshape(-1, w.shape[-1]), s.reshape(-1, s.shape[-1])):
        keep = wr > 1e-30
        if keep.sum() < 2:
            continue
        lw, sv = wr[keep].log(), sr[keep]
        lw, sv = lw - lw.mean(), sv - sv.mean()
        slope = (lw * sv).sum() / (sv * sv).sum()
        if slope > 0:
            cs.append(1.0 / slope.item())
    return float(torch.tensor(cs).median()) if cs else None


def _diagnose_weights(w, q, k, mask, who: str, how: str, d_v: int | None = None) -> None:
    """Name the mistake behind wrong attention weights w (shape [n_q, n_k]) for q, k, mask.

    ``how`` says how the weights were obtained, for the messages. The callers choose sizes so
    that no two candidate scales coincide (d_k = 16, n_q = 5, n_k = 6, d_v = 9): sqrt of each
    is a different number, and so is d_k ** 0.25 = 2."""
    d_k, n_q, n_k = q.shape[-1], q.shape[-2], k.shape[-2]
    raw = q.double() @ k.double().transpose(-2, -1)
    want = torch.softmax((raw / math.sqrt(d_k)).masked_fill(~mask, float("-inf")) if mask is not None
                         else raw / math.sqrt(d_k), dim=-1)
    w = w.detach().double().cpu()
    tag = tr("with a mask, ") if mask is not None else ""
    if not torch.isfinite(w).all():
        i, j = torch.nonzero(~torch.isfinite(w))[0].tolist()
        extra = (tr(" Every query here may see at least one key, so nothing should be NaN or inf: set "
                 "masked *scores* to -inf before the softmax (after it, -inf or 0/0 spoils the weights).")
                 if mask is not None else tr(" Use torch.softmax, which subtracts the row maximum for you."))
        fail(trf("{who}: {tag}your attention weights contain {w[i, j].item()} (query {i}, key {j}); "
             "{how}.{extra}"))
    if mask is not None:
        on, off = w[mask], w[~mask]
        if off.numel() and on.abs().max() < 1e-6 and off.max() > 1e-6:
            fail(trf("{who}: your mask is inverted: True means *may attend* (as in "
                 "F.scaled_dot_product_attention), so it is where the mask is False that scores "
                 "become -inf; your keys with mask True got weight {approx(on.max().item(), 3)} "
                 "and those with mask False up to {approx(off.max().item(), 3)}"))
        if off.numel() and off.max() > 1e-6:
            idx = torch.nonzero(w * (~mask) == off.max())[0].tolist()
            fail(trf("{who}: a masked key got weight {off.max().item():.2f} (query {idx[0]}, key {idx[1]}, "
                 "where the mask is False): set masked scores to -inf before the softmax, so that "
                 "masked keys get exactly zero weight ({how})"))
    rows = w.sum(-1)
    worst = int((rows - 1).abs().argmax())
    if abs(rows[worst].item() - 1) > 1e-3:
        msg = (trf("{who}: {tag}rows of your attention weights sum to {rows[worst].item():.2f}, expected 1 "
               "(query {worst}; {how})"))
        if mask is not None and rows.max() < 1 + 1e-3:
            msg += (tr(". It looks as if the masked weights were zeroed after the softmax, so the rest no "
                    "longer sum to 1: set masked scores to -inf before the softmax, which then shares "
                    "all the weight among the visible keys"))
        elif (w.sum(-2) - 1).abs().max() < 1e-3:
            msg += (tr(". Your *columns* sum to 1: the softmax ran over the queries (dim=-2); it must run "
                    "over the keys, the last dimension (dim=-1)"))
        else:
            msg += tr(". Take the softmax over the keys, the last dimension (dim=-1)")
        fail(msg)
    if (w < -1e-6).any():
        fail(trf("{who}: your attention weights have a negative entry ({w.min().item():.3f}); a softmax "
             "gives weights >= 0 ({how})"))
    c = _fitted_scale(w if mask is None else w.masked_fill(~mask, 0.0), raw)
    good = math.sqrt(d_k)
    if c is not None and abs(c / good - 1) > 0.02:
        row = 0
        more = w.shape[-1] > 4
        shown = (trf("with q·k = {_fmt(raw[row, :4].tolist(), 1, more)} for query {row}, your weights are "
                 "{_fmt(w[row, :4].tolist(), 2, more)}, expected {_fmt(want[row, :4].tolist(), 2, more)}"))
        named = {1.0: tr("not at all"), float(d_k): trf("by d_k = {d_k} instead of sqrt(d_k)"),
                 d_k ** 0.25: trf("by d_k ** 0.25 = {d_k ** 0.25:.2f}")}
        if d_v is not None and d_v != d_k:
            named[math.sqrt(d_v)] = trf("by sqrt(d_v) = sqrt({d_v}), the value dimension")
        named.setdefault(math.sqrt(n_k), trf("by sqrt(n_k) = sqrt({n_k}), the number of keys"))
        named.setdefault(math.sqrt(n_q), trf("by sqrt(n_q) = sqrt({n_q}), the number of queries"))
        for value, words in named.items():
            if abs(c / value - 1) < 0.02:
                if value == 1.0:
                    fail(trf("{who}: you did not scale the scores: {shown}. Divide q·k by sqrt(d_k) = "
                         "sqrt({d_k}) = {good:g} before the softmax"))
                fail(trf("{who}: you scaled {words}: {shown}. Divide q·k by sqrt(d_k) = sqrt({d_k}) = {good:g}"))
        fail(trf("{who}: you scaled the scores by about {c:.3g}, expected sqrt(d_k) = sqrt({d_k}) = {good:g}, "
             "where d_k = q.shape[-1] is the key dimension of one head (not d_model, not d_v): {shown}"))
    expect_close(w, want, trf("{who}: your attention weights ({how})"), atol=1e-5, rtol=1e-4)


# --- scaled dot-product attention --------------------------------------------------------------

SDPA_HINT = (tr("q [..., n_q, d_k], k [..., n_k, d_k] and v [..., n_k, d_v] give an output of shape "
             "[..., n_q, d_v]: one weighted average of the value rows per query"))


def check_scaled_dot_product_attention(fn, seed: int = 0) -> None:
    """Compare with F.scaled_dot_product_attention; diagnose the weights with v = identity."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        # 1. the basic case: shape, dtype, inputs left alone
        q, k, v = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 6)
        saved = [t.clone() for t in (q, k, v)]
        got = _call_sdpa(fn, q, k, v, None)
        what = f"{who}(q {_shape(q)}, k {_shape(k)}, v {_shape(v)})"
        _expect_float_output(got, (2, 3, 6), what, SDPA_HINT)
        for name, t, s in zip("qkv", (q, k, v), saved):
            if not torch.equal(t, s):
                fail(trf("{who} changed its input {name} in place (an in-place op such as `{name} /= ...`); "
                     "compute new tensors instead, the caller still needs {name}"))
        n += 1

        # 2. the weights themselves, probed with v = [identity | zeros]: output column j < n_k
        # is the weight of key j. Sizes where no two candidate scales coincide: d_k = 16,
        # n_q = 5, n_k = 6, d_v = 9 (sqrt: 4, 2.24, 2.45, 3; d_k ** 0.25 = 2).
        d_k, n_q, n_k, d_v = 16, 5, 6, 9
        q, k = torch.randn(n_q, d_k), torch.randn(n_k, d_k)
        eye = torch.eye(n_k, d_v)
        how = (tr("found by passing v = [identity | zeros], so that your output rows are the "
               "weights"))
        # 3. (second pass) a mask that leaves each query two or more keys and hides others
        j, i = torch.arange(n_k)[None, :], torch.arange(n_q)[:, None]
        for mask in (None, (j <= i + 1) & (j < n_k - 1)):
            out = _call_sdpa(fn, q, k, eye, mask)
            what = (f"{who}(q {_shape(q)}, k {_shape(k)}, v {_shape(eye)}"
                    + (tr(", mask)") if mask is not None else ")"))
            _expect_float_output(out, (n_q, d_v), what, SDPA_HINT)
            _diagnose_weights(out[..., :n_k], q, k, mask, who, how, d_v=d_v)
            n += 1

        # 4. the oracle on ordinary and awkward shapes
        B, H = 2, 3
        lengths = torch.tensor([6, 2])
        cases = [
            # (q shape, k shape, v shape, mask or None)
            ((1, 8), (1, 8), (1, 5), None),                                       # n = 1
            ((5, 4), (5, 4), (5, 4), torch.ones(5, 5, dtype=torch.bool).tril()),  # causal, no batch
            ((B, 7, 5), (B, 4, 5), (B, 4, 9), _visible_mask((7, 4))),           # mask [n_q, n_k]
            ((B, H, 6, 8), (B, H, 6, 8), (B, H, 6, 3),                            # padding [B, 1, 1, n_k]
             (torch.arange(6) < lengths[:, None])[:, None, None, :]),
            ((B, H, 6, 8), (B, H, 6, 8), (B, H, 6, 3),                            # padding & causal
             (torch.arange(6) < lengths[:, None])[:, None, None, :] & torch.ones(6, 6, dtype=torch.bool).tril()),
            ((2, 2, 2, 3, 4), (2, 2, 2, 5, 4), (2, 2, 2, 5, 7), _visible_mask((2, 1, 2, 3, 5))),
            ((B, H, 9, 64), (B, H, 11, 64), (B, H, 11, 16), None),                # d_k = 64
        ]
        for qs, ks, vs, mask in cases:
            q, k, v = torch.randn(qs), torch.randn(ks), torch.randn(vs)
            got = _call_sdpa(fn, q, k, v, mask)
            what = (f"{who}(q {list(qs)}, k {list(ks)}, v {list(vs)}"
                    + (trf(", mask {_shape(mask)})") if mask is not None else ")"))
            want = _oracle(q, k, v, mask)
            _expect_float_output(got, want.shape, what, SDPA_HINT)
            expect_close(got, want, what, atol=1e-5, rtol=1e-4,
                         hint=tr("The oracle is F.scaled_dot_product_attention(q, k, v, attn_mask=mask)"))
            n += 1

        # 5. the dtype is kept: float64 in, float64 out
        q, k, v = (torch.randn(2, 3, 4, dtype=torch.float64) for _ in range(3))
        got = _call_sdpa(fn, q, k, v, None)
        _expect_same_dtype(got, q, (2, 3, 4), trf("{who}(q, k, v of shape [2, 3, 4], float64)"))
        n += 1
    passed(fn, n)


def _expect_same_dtype(got, q, shape, what):
    _expect_float_output(got, shape, what, SDPA_HINT)
    if got.dtype != q.dtype:
        fail(trf("{what} returned {got.dtype}: keep the inputs' dtype {q.dtype} (no .float(), "
             "no tensors made in float32 on the way)"))


# --- the weights alone (an exercise at the end of the chapter) ---------------------------------

def check_attention_weights(fn, seed: int = 0) -> None:
    """attention_weights(q, k, mask=None) -> [..., n_q, n_k]; oracle: F.sdpa with v = identity."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        d_k, n_q, n_k = 16, 5, 6          # no two candidate scales coincide (see above)
        q, k = torch.randn(n_q, d_k), torch.randn(n_k, d_k)
        how = f"{who}(q {_shape(q)}, k {_shape(k)})"
        hint = tr("q [..., n_q, d_k] and k [..., n_k, d_k] give weights of shape [..., n_q, n_k]")
        saved = (q.clone(), k.clone())
        w = call(fn, q, k)
        for name, t, before in zip("qk", (q, k), saved):
            if not torch.equal(t, before):
                fail(trf("{who} changed its input {name} in place (an in-place op such as "
                     "`{name} /= ...`); compute new tensors instead, the caller still needs {name}"))
        _expect_float_output(w, (n_q, n_k), how, hint)
        _diagnose_weights(w, q, k, None, who, how)
        n += 1
        mask = torch.arange(n_k)[None, :] <= torch.arange(n_q)[:, None] + 1
        w = call(fn, q, k, mask=mask)
        _expect_float_output(w, (n_q, n_k), how + tr(" with a mask"), hint)
        _diagnose_weights(w, q, k, mask, who, how + tr(" with a mask"))
        n += 1
        cases = [
            ((1, 8), (1, 8), None),
            ((2, 3, 7, 8), (2, 3, 5, 8), _visible_mask((7, 5))),
            ((2, 3, 6, 4), (2, 3, 6, 4), (torch.arange(6) < torch.tensor([6, 3])[:, None])[:, None, None, :]),
        ]
        for qs, ks, mask in cases:
            q, k = torch.randn(qs), torch.randn(ks)
            eye = torch.eye(ks[-2]).expand(*ks[:-2], ks[-2], ks[-2])
            want = _oracle(q, k, eye, mask)
            got = call(fn, q, k) if mask is None else call(fn, q, k, mask=mask)
            what = f"{who}(q {list(qs)}, k {list(ks)}" + (trf(", mask {_shape(mask)})") if mask is not None else ")")
            _expect_float_output(got, want.shape, what, hint)
            expect_close(got, want, what, hint=tr("The weights must be softmax(q k^T / sqrt(d_k)) with masked "
                                               "scores set to -inf, over the last dimension"))
            n += 1
        q, k = (torch.randn(2, 3, 4, dtype=torch.float64) for _ in range(2))
        got = call(fn, q, k)
        _expect_same_dtype(got, q, (2, 3, 3), trf("{who}(q, k of shape [2, 3, 4], float64)"))
        n += 1
    passed(fn, n)


# --- masks -------------------------------------------------------------------------------------

def _expect_bool_mask(got, shape, what, meaning=tr("True = may attend")):
    expect_tensor(got, what)
    if tuple(got.shape) != tuple(shape):
        fail(trf("{what} has shape {_shape(got)}, expected {list(shape)}"))
    if got.dtype != torch.bool:
        fail(trf("{what} has dtype {got.dtype}: dtype should be torch.bool ({meaning}), which is "
             "what masked_fill and F.scaled_dot_product_attention expect; make it with "
             "dtype=torch.bool or call .bool()"))


def _first_diff(got, want):
    i = torch.nonzero(got != want)[0].tolist()
    return i, bool(got[tuple(i)]), bool(want[tuple(i)])


def check_causal_mask(fn, seed: int = 0) -> None:
    """causal_mask(n) -> bool [n, n], True where key j <= query i; oracle: ones(n, n).tril()."""
    who = name_of(fn)
    sizes = [5, 1, 2, 8 + seed % 5]
    for n in sizes:
        what = f"{who}({n})"
        got = call(fn, n)
        _expect_bool_mask(got, (n, n), what)
        got = got.cpu()
        want = torch.ones(n, n).tril().bool()
        if torch.equal(got, want):
            continue
        if n > 1 and torch.equal(got, ~want):
            fail(trf("{what}: your mask is inverted: True must mean *may attend*, which is key j <= query i "
                 "(the lower triangle with its diagonal); yours is True where j > i"))
        if n > 1 and got[0, 1]:
            fail(trf("{what}: your mask lets query 0 see key 1 (the future): keep only j <= i, the lower "
                 "triangle with its diagonal (tril)"))
        if not got.diagonal().all():
            i = int(torch.nonzero(~got.diagonal())[0])
            fail(trf("{what}: your mask hides the diagonal (query {i} cannot see key {i}, itself): every query "
                 "attends to itself and the past, j <= i; use tril(), not tril(-1)"))
        (i, j), g, w_ = _first_diff(got, want)
        fail(trf("{what}: at [query {i}, key {j}] your mask is {g}, expected {w_} (True where j <= i)"))
    passed(fn, len(sizes))


def check_padding_mask(fn, seed: int = 0) -> None:
    """padding_mask(lengths, n) -> bool [B, n], True at real tokens (position < length)."""
    who = name_of(fn)
    with seeded(seed):
        rand = torch.randint(0, 8, (4,))
    cases = [
        (torch.tensor([3, 1, 5]), 5),
        (torch.tensor([2, 0, 4], dtype=torch.int32), 6),  # an empty sequence; int32 lengths
        ([2, 3], 4),                                       # a plain list
        (torch.tensor([1]), 1),
        (rand, 8),
    ]
    for lengths, n in cases:
        lt = torch.as_tensor(lengths)
        shown = lt.tolist()
        what = trf("{who}(lengths={shown}, n={n})")
        got = call(fn, lengths, n)
        _expect_bool_mask(got, (len(shown), n), what, meaning=tr("True = real token"))
        got = got.cpu()
        pos = torch.arange(n)
        want = pos < lt[:, None]
        if torch.equal(got, want):
            continue
        if torch.equal(got, ~want):
            fail(trf("{what}: your mask is inverted: True marks the real tokens (position < length), "
                 "False the padding"))
        b = int(torch.nonzero((got != want).any(-1))[0])
        L = int(lt[b])
        if torch.equal(got, pos <= lt[:, None]):
            fail(trf("{what}: off by one: a sequence of length {L} has real tokens at positions 0..{L - 1}, "
                 "so position {L} is padding (False); use position < length"))
        if torch.equal(got, pos < lt[:, None] - 1):
            fail(trf("{what}: off by one: position {L - 1}, the last real token of a sequence of length {L}, "
                 "should be True; use position < length"))
        (i, j), g, w_ = _first_diff(got, want)
        fail(trf("{what}: sequence {i} (length {int(lt[i])}) at position {j}: yours is {g}, expected {w_} "
             "(True where position < length)"))
    passed(fn, len(cases))


def check_sliding_window_mask(fn, seed: int = 0) -> None:
    """sliding_window_mask(n, window) -> bool [n, n], True where 0 <= i - j < window."""
    who = name_of(fn)
    cases = [(6, 3), (5, 1), (4, 10), (1, 1), (7 + seed % 3, 2 + seed % 2)]
    for n, window in cases:
        what = trf("{who}({n}, window={window})")
        got = call(fn, n, window)
        _expect_bool_mask(got, (n, n), what)
        got = got.cpu()
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        want = (j <= i) & (i - j < window)
        if torch.equal(got, want):
            continue
        if n > 1 and got[0, 1]:
            fail(trf("{what}: your mask lets query 0 see key 1 (the future): a sliding window is causal too"))
        if not got.diagonal().all():
            fail(trf("{what}: your mask hides the diagonal: each query sees itself and the window - 1 keys "
                 "before it"))
        extra = got & ~want
        if extra.any():
            a, b = torch.nonzero(extra)[0].tolist()
            fail(trf("{what}: query {a} sees key {b}, {a - b} positions back: with window={window} a query sees "
                 "itself and the {window - 1} keys before it (i - window < j <= i)"))
        a, b = torch.nonzero(want & ~got)[0].tolist()
        fail(trf("{what}: query {a} should see key {b}, {a - b} positions back: with window={window} a query "
             "sees itself and the {window - 1} keys before it (i - window < j <= i)"))
    passed(fn, len(cases))
