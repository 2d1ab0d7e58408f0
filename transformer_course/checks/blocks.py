"""Checks for chapter 05, normalization and residuals: LayerNorm, RMSNorm and BatchNorm written
by hand, the transformer block (Pre-Norm and Post-Norm), BatchNorm over the real tokens of a
padded batch, and RMSNorm with float32 statistics for half-precision inputs.

The oracles are PyTorch's own: ``F.layer_norm``, ``F.rms_norm``, ``F.batch_norm(training=True)``
on the tokens flattened to ``[N, D]``, and ``nn.TransformerEncoderLayer`` with the learner's weights
copied in. When a learner's answer is wrong, the check recomputes the usual wrong answers (the
unbiased variance, eps outside the square root, statistics over the wrong dimensions, a missing
residual, Post-Norm wired as Pre-Norm, ...) and names the one that matches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..i18n import tr, trf
from . import call, expect_close, expect_tensor, fail, name_of, passed, seeded

__all__ = [
    "check_layer_norm",
    "check_rms_norm",
    "check_batch_norm",
    "check_TransformerBlock",
    "check_masked_batch_norm",
    "check_rms_norm_upcast",
]


# --- helpers -----------------------------------------------------------------------------------

def _shape(t) -> list:
    return list(t.shape)


def _close(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if got.shape != want.shape:
        return False
    both_nan = torch.isnan(got) & torch.isnan(want)
    ok = ((got - want).abs() <= atol + rtol * want.abs()) | both_nan
    return bool(ok.all())


def _expect_like(got, x: torch.Tensor, what: str, hint: str = "") -> torch.Tensor:
    """A tensor of x's shape and dtype."""
    expect_tensor(got, what)
    if tuple(got.shape) != tuple(x.shape):
        fail(trf("{what} has shape {_shape(got)}, expected {_shape(x)}: a norm keeps the shape of its input")
             + (trf(". {hint}") if hint else ""))
    if got.dtype != x.dtype:
        fail(trf("{what} has dtype {got.dtype}, expected {x.dtype}, the dtype of x"))
    return got


def _expect_untouched(x: torch.Tensor, saved: torch.Tensor, who: str, name: str = "x") -> None:
    if not torch.equal(x, saved):
        fail(trf("{who} changed its input {name} in place (an in-place op such as `{name} -= mean`); "
             "compute new tensors instead, the caller still needs {name} (it is the residual stream)"))


def _diagnose(got, want, candidates, what: str, hint: str, atol=1e-5, rtol=1e-4) -> None:
    """Pass if got matches want; else name the first wrong answer it matches; else show the values.
    candidates: {message: wrong answer}, or a function that makes them, called only on a mismatch
    (while grading, each of the learner's calls it makes crosses the sandbox's boundary)."""
    if _close(got, want, atol, rtol):
        return
    if callable(candidates):
        candidates = candidates()
    g = got.detach().double().cpu()
    w = want.detach().double().cpu()
    if not torch.isfinite(g).all() and torch.isfinite(w).all():
        bad = tuple(torch.nonzero(~torch.isfinite(g))[0].tolist())
        for message, candidate in candidates.items():
            if candidate is not None and _close(got, candidate, atol, rtol):
                fail(trf("{what}: {message}"))
        fail(trf("{what} contains {g[bad].item()} at index {list(bad)}, expected finite values. {hint}"))
    matched = [m for m, c in candidates.items()
               if c is not None and not _close(want, c, atol, rtol) and _close(got, c, atol, rtol)]
    if len(matched) == 1:
        fail(trf("{what}: {matched[0]}"))
    if matched:   # these mistakes coincide on this input: name none rather than the wrong one
        fail(trf("{what}: your output matches {len(matched)} different mistakes on this input, one of: ")
             + tr("; or ").join(matched))
    expect_close(got, want, what, atol=atol, rtol=rtol, hint=hint)


def _normalize(x, dims, centre=True, unbiased=False, eps=1e-5, eps_inside=True, root=True, mean_sq=True):
    """A family of normalizations in float64, right and wrong, for the diagnoses."""
    x = x.double()
    if centre:
        mu = x.mean(dims, keepdim=True)
        xc = x - mu
    else:
        xc = x
    n = math.prod(x.shape[d] for d in dims)
    sq = xc.pow(2).sum(dims, keepdim=True)
    if centre and unbiased:
        ms = sq / (n - 1) if n > 1 else sq * float("nan")
    elif mean_sq:
        ms = sq / n
    else:
        ms = sq
    if not root:
        return xc / (ms + eps)
    if eps_inside:
        return xc / torch.sqrt(ms + eps)
    return xc / (torch.sqrt(ms) + eps)


def _affine(y, weight, bias=None):
    y = y * weight.double()
    return y if bias is None else y + bias.double()


def _quiet(x: torch.Tensor, where, scale: float = 2e-3) -> torch.Tensor:
    """Make the token at `where` tiny and centred: a variance close to eps shows where eps sits.

    (Centred at 0, so that float32 loses no digits when the mean is subtracted.)"""
    x = x.clone()
    x[where] = scale * (x[where] - x[where].mean())
    return x


# --- LayerNorm ---------------------------------------------------------------------------------

LN_HINT = (tr("LayerNorm normalizes each token over its own features (the last dimension): "
           "(x - mean) / sqrt(var + eps) * weight + bias, with the biased variance (divide by D)"))


def _ln_candidates(x, weight, bias, eps):
    D = x.shape[-1]
    last = (x.dim() - 1,)
    c = {
        tr("you ignored the eps argument (it was not 1e-5 here): pass eps into the square root"):
            _affine(_normalize(x, last, eps=1e-5), weight, bias) if eps != 1e-5 else None,
        tr("you used the unbiased variance (dividing by D - 1); LayerNorm divides by D: use "
        "x.var(-1, unbiased=False, keepdim=True) (torch.var's default is the unbiased one)"):
            _affine(_normalize(x, last, unbiased=True, eps=eps), weight, bias) if D > 1 else None,
        tr("you added eps outside the square root, (x - mean) / (std + eps); it goes inside: "
        "(x - mean) / sqrt(var + eps). The difference shows on tokens whose variance is close to eps"):
            _affine(_normalize(x, last, eps=eps, eps_inside=False), weight, bias),
        tr("you left eps out: put eps inside the square root, (x - mean) / sqrt(var + eps); without it a "
        "token with (nearly) equal features, like a zero padding vector, divides by (nearly) zero"):
            _affine(_normalize(x, last, eps=0.0), weight, bias),
        tr("you did not subtract the mean: that is RMSNorm; LayerNorm centres each token first"):
            _affine(_normalize(x, last, centre=False, eps=eps), weight, bias),
        tr("you did not apply weight and bias: after normalizing, multiply by weight and add bias"):
            _normalize(x, last, eps=eps),
        tr("you swapped weight and bias: multiply by weight, then add bias"):
            _affine(_normalize(x, last, eps=eps), bias, weight),
    }
    if x.dim() >= 2 and x.shape[-2] > 1:
        c[tr("you normalized over dimension -2, the positions of each sequence (\"vectors at different "
          "time steps\"); LayerNorm normalizes each token over its own features, the last dimension")] = \
            _affine(_normalize(x, (x.dim() - 2,), eps=eps), weight, bias)
    if x.dim() >= 3 and x.shape[0] > 1:
        c[tr("you normalized over dimension 0, the batch (that is a BatchNorm-like statistic); "
          "LayerNorm normalizes each token over its own features, the last dimension")] = \
            _affine(_normalize(x, (0,), eps=eps), weight, bias)
    if x.dim() >= 2:
        c[tr("you normalized over the whole tensor (x.mean() without a dimension); LayerNorm takes one "
          "mean and variance per token, over its last dimension: mean(-1, keepdim=True)")] = \
            _affine(_normalize(x, tuple(range(x.dim())), eps=eps), weight, bias)
    return c


def _constant_token_message(got, x, who) -> None:
    """NaN or inf at a token whose features are all equal: eps was left out."""
    g = got.detach().double().cpu()
    const = (x == x[..., :1]).all(-1)
    if const.any() and not torch.isfinite(g[const]).all():
        fail(trf("{who}: your output is {g[const][~torch.isfinite(g[const])][0].item()} for a token whose "
             "features are all equal (variance 0, like a zero padding vector): put eps inside the "
             "square root, sqrt(var + eps), so the division stays finite"))


def check_layer_norm(fn, seed: int = 0) -> None:
    """layer_norm(x, weight, bias, eps=1e-5) against F.layer_norm, on awkward shapes."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        # 1. the usual case, with one nearly constant token so that eps matters
        B, T, D = 2, 3, 8
        x = _quiet(torch.randn(B, T, D) * 2 + 0.5, (0, 1))
        weight, bias = 1 + 0.5 * torch.randn(D), 0.5 * torch.randn(D)
        saved = x.clone()
        what = trf("{who}(x {_shape(x)}, weight [{D}], bias [{D}])")
        got = _expect_like(call(fn, x, weight, bias), x, what, LN_HINT)
        _expect_untouched(x, saved, who)
        want = F.layer_norm(x, (D,), weight, bias, 1e-5)
        _diagnose(got, want, _ln_candidates(x, weight, bias, 1e-5), what, LN_HINT)
        n += 1

        # 2. with weight 1 and bias 0, every token comes out with mean 0 and variance 1
        x = torch.randn(4, 5, 16) * 3 - 2
        got = _expect_like(call(fn, x, torch.ones(16), torch.zeros(16)), x, trf("{who}(x {_shape(x)}, ones, zeros)"))
        mean, var = got.double().mean(-1), got.double().var(-1, unbiased=False)
        if (mean.abs() > 1e-4).any() or ((var - 1).abs() > 1e-3).any():
            i = tuple(torch.nonzero((mean.abs() > 1e-4) | ((var - 1).abs() > 1e-3))[0].tolist())
            fail(trf("{who}: with weight = 1 and bias = 0, token {list(i)} comes out with mean "
                 "{mean[i].item():.4f} and variance {var[i].item():.4f} over its features; "
                 "LayerNorm makes them 0 and 1 for every token. {LN_HINT}"))
        n += 1

        # 3. a token whose features are all equal (a zero padding vector): eps keeps it finite
        x = torch.randn(2, 4, 6)
        x[1, 3] = 0.0
        weight, bias = 1 + 0.5 * torch.randn(6), 0.5 * torch.randn(6)
        got = _expect_like(call(fn, x, weight, bias), x, trf("{who}(x {_shape(x)} with a zero token)"))
        _constant_token_message(got, x, who)
        _diagnose(got, F.layer_norm(x, (6,), weight, bias, 1e-5), _ln_candidates(x, weight, bias, 1e-5),
                  trf("{who}(x {_shape(x)} with a zero token)"), LN_HINT)
        n += 1

        # 4. the oracle on awkward shapes, dtypes and eps
        cases = [
            ((7,), 1e-5, torch.float32),            # one token, no batch
            ((1, 1, 5), 1e-5, torch.float32),        # odd D, a single token
            ((3, 2, 1), 1e-5, torch.float32),        # D = 1: every output is the bias
            ((2, 3, 4, 6), 1e-5, torch.float32),     # extra batch dimension
            ((2, 5, 9), 0.1, torch.float32),         # a large eps, passed explicitly
            ((3, 4, 8), 1e-5, torch.float64),        # float64 stays float64
        ]
        for shape, eps, dtype in cases:
            D = shape[-1]
            x = (torch.randn(shape) * 2 + 1).to(dtype)
            weight, bias = (1 + 0.5 * torch.randn(D)).to(dtype), (0.5 * torch.randn(D)).to(dtype)
            args = (x, weight, bias) if eps == 1e-5 else (x, weight, bias, eps)
            what = f"{who}(x {list(shape)} ({str(dtype).removeprefix('torch.')})" + (trf(", eps={eps})") if eps != 1e-5 else ")")
            got = _expect_like(call(fn, *args), x, what, LN_HINT)
            _diagnose(got, F.layer_norm(x, (D,), weight, bias, eps), _ln_candidates(x, weight, bias, eps),
                      what, LN_HINT + tr(". The oracle is F.layer_norm(x, (D,), weight, bias, eps)"))
            n += 1
    passed(fn, n)


# --- RMSNorm -----------------------------------------------------------------------------------

RMS_HINT = (tr("RMSNorm divides each token by the root of the mean of its squared features, "
            "x / sqrt(mean(x**2, -1) + eps) * weight: no mean subtracted, no bias"))


def _rms_candidates(x, weight, eps):
    last = (x.dim() - 1,)
    c = {
        tr("you ignored the eps argument (it was not 1e-6 here): pass eps into the square root"):
            _affine(_normalize(x, last, centre=False, eps=1e-6), weight) if eps != 1e-6 else None,
        tr("you subtracted the mean: RMSNorm does not centre the token, it divides x itself by "
        "sqrt(mean(x**2) + eps)"):
            _affine(_normalize(x, last, centre=True, eps=eps), weight),
        tr("you added eps outside the square root, x / (rms + eps); it goes inside: x / sqrt(mean(x**2) + eps)"):
            _affine(_normalize(x, last, centre=False, eps=eps, eps_inside=False), weight),
        tr("you left eps out: put eps inside the square root, x / sqrt(mean(x**2) + eps); without it a "
        "(nearly) zero token divides by (nearly) zero"):
            _affine(_normalize(x, last, centre=False, eps=0.0), weight),
        tr("you used the sum of the squares instead of their mean: divide by sqrt(mean(x**2, -1) + eps)"):
            _affine(_normalize(x, last, centre=False, eps=eps, mean_sq=False), weight),
        tr("you divided by the mean square itself, not its square root: x / sqrt(mean(x**2) + eps)"):
            _affine(_normalize(x, last, centre=False, eps=eps, root=False), weight),
        tr("you did not multiply by weight"):
            _normalize(x, last, centre=False, eps=eps),
    }
    if x.dim() >= 2 and x.shape[-2] > 1:
        c[tr("you normalized over dimension -2, the positions of each sequence; RMSNorm normalizes "
          "each token over its own features, the last dimension")] = \
            _affine(_normalize(x, (x.dim() - 2,), centre=False, eps=eps), weight)
    if x.dim() >= 2:
        c[tr("you normalized over the whole tensor; RMSNorm takes one root mean square per token, "
          "over its last dimension: mean(-1, keepdim=True)")] = \
            _affine(_normalize(x, tuple(range(x.dim())), centre=False, eps=eps), weight)
    return c


def check_rms_norm(fn, seed: int = 0) -> None:
    """rms_norm(x, weight, eps=1e-6) against F.rms_norm (nn.RMSNorm's function)."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        # 1. tokens with a non-zero mean (so that centring shows) and one tiny token (so that eps shows)
        x = torch.randn(2, 3, 8) + 1.5
        x[0, 1] *= 1e-3
        weight = 1 + 0.5 * torch.randn(8)
        saved = x.clone()
        what = trf("{who}(x {_shape(x)}, weight [8])")
        got = _expect_like(call(fn, x, weight), x, what, RMS_HINT)
        _expect_untouched(x, saved, who)
        _diagnose(got, F.rms_norm(x, (8,), weight, 1e-6), _rms_candidates(x, weight, 1e-6), what, RMS_HINT)
        n += 1

        # 2. with weight 1, every token comes out with mean square 1
        x = torch.randn(3, 4, 16) * 5 + 1
        got = _expect_like(call(fn, x, torch.ones(16)), x, trf("{who}(x {_shape(x)}, ones)"))
        ms = got.double().pow(2).mean(-1)
        if ((ms - 1).abs() > 1e-3).any():
            i = tuple(torch.nonzero((ms - 1).abs() > 1e-3)[0].tolist())
            fail(trf("{who}: with weight = 1, token {list(i)} comes out with mean square {ms[i].item():.4f}; "
                 "RMSNorm makes it 1 for every token. {RMS_HINT}"))
        n += 1

        # 3. a zero token: eps keeps it finite (0 / sqrt(0 + eps) = 0)
        x = torch.randn(2, 4, 6)
        x[0, 2] = 0.0
        weight = 1 + 0.5 * torch.randn(6)
        what = trf("{who}(x {_shape(x)} with a zero token)")
        got = _expect_like(call(fn, x, weight), x, what)
        _constant_token_message(got, x, who)
        _diagnose(got, F.rms_norm(x, (6,), weight, 1e-6), _rms_candidates(x, weight, 1e-6), what, RMS_HINT)
        n += 1

        # 4. the oracle on awkward shapes, dtypes and eps
        cases = [
            ((5,), 1e-6, torch.float32),
            ((1, 1, 7), 1e-6, torch.float32),
            ((3, 2, 1), 1e-6, torch.float32),
            ((2, 3, 4, 6), 1e-6, torch.float32),
            ((2, 5, 9), 0.5, torch.float32),
            ((3, 4, 8), 1e-6, torch.float64),
        ]
        for shape, eps, dtype in cases:
            D = shape[-1]
            x = (torch.randn(shape) + 0.5).to(dtype)
            weight = (1 + 0.5 * torch.randn(D)).to(dtype)
            args = (x, weight) if eps == 1e-6 else (x, weight, eps)
            what = f"{who}(x {list(shape)} ({str(dtype).removeprefix('torch.')})" + (trf(", eps={eps})") if eps != 1e-6 else ")")
            got = _expect_like(call(fn, *args), x, what, RMS_HINT)
            _diagnose(got, F.rms_norm(x, (D,), weight, eps), _rms_candidates(x, weight, eps),
                      what, RMS_HINT + tr(". The oracle is F.rms_norm(x, (D,), weight, eps), as in nn.RMSNorm"))
            n += 1
    passed(fn, n)


# --- BatchNorm ---------------------------------------------------------------------------------

BN_HINT = (tr("BatchNorm in training mode takes one mean and one (biased) variance per feature, over "
           "every dimension but the last: for x [B, N, D] over all B·N tokens, for a matrix of "
           "tokens [B·N, D] over its rows, in general dims tuple(range(x.dim() - 1))"))


def _bn_oracle(x, weight, bias, eps):
    D = x.shape[-1]
    flat = x.reshape(-1, D)
    return F.batch_norm(flat, None, None, weight, bias, training=True, eps=eps).reshape(x.shape)


def _bn_candidates(x, weight, bias, eps):
    D = x.shape[-1]
    rest = tuple(range(x.dim() - 1))
    c = {
        tr("you used the unbiased variance (dividing by n - 1); BatchNorm normalizes with the biased "
        "variance, dividing by the number n of values averaged (PyTorch uses the unbiased one only "
        "to update running_var)"):
            _affine(_normalize(x, rest, unbiased=True, eps=eps), weight, bias),
        tr("you added eps outside the square root; it goes inside: (x - mean) / sqrt(var + eps)"):
            _affine(_normalize(x, rest, eps=eps, eps_inside=False), weight, bias),
        tr("you normalized over the last dimension, the features of each token: that is LayerNorm. "
        "BatchNorm takes one statistic per feature, over all the other dimensions"):
            _affine(_normalize(x, (x.dim() - 1,), eps=eps), weight, bias) if D > 1 else None,
        tr("you did not apply weight and bias: after normalizing, multiply by weight and add bias"):
            _normalize(x, rest, eps=eps),
        tr("you ignored the eps argument (it was not 1e-5 here): pass eps into the square root"):
            _affine(_normalize(x, rest, eps=1e-5), weight, bias) if eps != 1e-5 else None,
    }
    if x.dim() >= 3:
        c[trf("you took the statistics over dimension 0 only, the batch, so each position t got its own "
          "mean and variance; for x of shape {_shape(x)} BatchNorm averages over every dimension but "
          "the last, dims {rest}, e.g. x.mean({rest}, keepdim=True)")] = \
            _affine(_normalize(x, (0,), eps=eps), weight, bias)
    if x.dim() != 3:
        c[trf("you took the statistics over dims (0, 1) whatever the shape of x: right for [B, N, D], "
          "but this x has shape {_shape(x)}, and BatchNorm averages over every dimension but the "
          "last, here dims {rest}: write them as tuple(range(x.dim() - 1))")] = \
            _affine(_normalize(x, (0, 1), eps=eps), weight, bias)
    if x.dim() >= 2:
        c[tr("you normalized over the whole tensor (x.mean() without a dimension), features included; "
          "BatchNorm takes one mean and variance per feature, over every dimension but the last")] = \
            _affine(_normalize(x, tuple(range(x.dim())), eps=eps), weight, bias)
    return c


def check_batch_norm(fn, seed: int = 0) -> None:
    """batch_norm(x, weight, bias, eps=1e-5): F.batch_norm(training=True) on x.reshape(-1, D)."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        # 1. [B, T, D] with features on different scales and offsets, one of them nearly constant
        B, T, D = 3, 4, 6
        x = torch.randn(B, T, D) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0, 1e-3]) + torch.tensor([0.0, 1, 2, 3, 4, 0])
        weight, bias = 1 + 0.5 * torch.randn(D), 0.5 * torch.randn(D)
        saved = x.clone()
        what = trf("{who}(x {_shape(x)}, weight [{D}], bias [{D}])")
        got = _expect_like(call(fn, x, weight, bias), x, what, BN_HINT)
        _expect_untouched(x, saved, who)
        _diagnose(got, _bn_oracle(x, weight, bias, 1e-5), _bn_candidates(x, weight, bias, 1e-5), what, BN_HINT)
        n += 1

        # 2. with weight 1 and bias 0, every feature has mean 0 and variance 1 over the whole batch
        x = torch.randn(4, 5, 8) * 3 + 2
        got = _expect_like(call(fn, x, torch.ones(8), torch.zeros(8)), x, trf("{who}(x {_shape(x)}, ones, zeros)"))
        flat = got.double().reshape(-1, 8)
        mean, var = flat.mean(0), flat.var(0, unbiased=False)
        if (mean.abs() > 1e-4).any() or ((var - 1).abs() > 1e-3).any():
            j = int(torch.nonzero((mean.abs() > 1e-4) | ((var - 1).abs() > 1e-3))[0])
            fail(trf("{who}: with weight = 1 and bias = 0, feature {j} comes out with mean {mean[j].item():.4f} "
                 "and variance {var[j].item():.4f} over all {flat.shape[0]} tokens of the batch; BatchNorm "
                 "makes them 0 and 1 for every feature. {BN_HINT}"))
        n += 1

        # 3. the oracle on other shapes, dtypes and eps
        cases = [  # four dimensions first: dims (0, 1), (0, 1, 2) and all four differ there
            ((2, 3, 2, 5), 1e-5, torch.float32),     # four dimensions
            ((10, 5), 1e-5, torch.float32),          # [N, D]: the classic BatchNorm1d input
            ((2, 1, 3), 1e-5, torch.float32),        # T = 1
            ((1, 6, 4), 1e-5, torch.float32),        # B = 1: statistics over the positions alone
            ((3, 4, 7), 0.2, torch.float32),         # a large eps, passed explicitly
            ((4, 3, 5), 1e-5, torch.float64),
        ]
        for shape, eps, dtype in cases:
            D = shape[-1]
            x = (torch.randn(shape) * 2 + 1).to(dtype)
            weight, bias = (1 + 0.5 * torch.randn(D)).to(dtype), (0.5 * torch.randn(D)).to(dtype)
            args = (x, weight, bias) if eps == 1e-5 else (x, weight, bias, eps)
            what = f"{who}(x {list(shape)} ({str(dtype).removeprefix('torch.')})" + (trf(", eps={eps})") if eps != 1e-5 else ")")
            got = _expect_like(call(fn, *args), x, what, BN_HINT)
            _diagnose(got, _bn_oracle(x, weight, bias, eps), _bn_candidates(x, weight, bias, eps), what,
                      BN_HINT + tr(". The oracle is F.batch_norm(x.reshape(-1, D), None, None, weight, bias, "
                                "training=True, eps=eps)"))
            n += 1
    passed(fn, n)


# --- BatchNorm over the real tokens of a padded batch (an exercise at the end) ---------------------

MBN_HINT = (tr("Take one mean and one biased variance per feature over the real tokens only, x[mask] "
            "([N_real, D]), and normalize every position with them"))


def check_masked_batch_norm(fn, seed: int = 0) -> None:
    """masked_batch_norm(x, mask, weight, bias, eps=1e-5): F.batch_norm over x[mask]; real positions compared."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        cases = [
            ((3, 6, 5), [6, 2, 4], 1e-5),
            ((2, 5, 4), [5, 5], 1e-5),               # no padding: plain BatchNorm
            ((4, 3, 7), [1, 3, 2, 1], 1e-5),
            ((2, 8, 3), [3, 5], 0.1),
        ]
        for shape, lengths, eps in cases:
            B, T, D = shape
            x = torch.randn(shape) * 2 + 1
            mask = torch.arange(T) < torch.tensor(lengths)[:, None]
            x[~mask] = 0.0                          # zero padding, as a padded batch holds
            weight, bias = 1 + 0.5 * torch.randn(D), 0.5 * torch.randn(D)
            saved = x.clone()
            args = (x, mask, weight, bias) if eps == 1e-5 else (x, mask, weight, bias, eps)
            what = (trf("{who}(x {list(shape)}, mask for lengths {lengths}") + (trf(", eps={eps})") if eps != 1e-5 else ")"))
            got = _expect_like(call(fn, *args), x, what, MBN_HINT)
            _expect_untouched(x, saved, who)
            want = F.batch_norm(x[mask], None, None, weight, bias, training=True, eps=eps)
            real = x[mask]
            n_real, n_all = real.shape[0], B * T
            sums_all = x.sum((0, 1)) / n_all
            candidates = {
                tr("you ignored the mask: the padding went into the statistics. Average over the real "
                "tokens only, x[mask]"):
                    _bn_oracle(x, weight, bias, eps)[mask],
                trf("you summed over the real tokens but divided by all {n_all} positions instead of the "
                "{n_real} real ones: the mean and variance must be over the real tokens only"):
                    _affine((real - sums_all) / torch.sqrt(((x - sums_all) * mask[..., None]).pow(2).sum((0, 1))
                                                            / n_all + eps), weight, bias),
                tr("you used the unbiased variance (dividing by n - 1); BatchNorm uses the biased one"):
                    _affine(_normalize(real, (0,), unbiased=True, eps=eps), weight, bias),
                tr("you took the statistics of each sequence separately (over its positions); BatchNorm "
                "shares one mean and variance per feature across the whole batch"):
                    torch.cat([_affine(_normalize(x[b, :L], (0,), eps=eps), weight, bias)
                               for b, L in enumerate(lengths)]) if min(lengths) > 1 else None,
            }
            _diagnose(got[mask], want, candidates, what + tr(" at the real tokens"), MBN_HINT)
            n += 1
            # the padding's content must not matter
            x2 = x.clone()
            x2[~mask] = 100 * torch.randn(int((~mask).sum()), D)
            if (~mask).any():
                args2 = (x2,) + args[1:]
                got2 = _expect_like(call(fn, *args2), x2, what)
                if not _close(got2[mask], got[mask]):
                    fail(trf("{who}: your output at the real tokens changed when only the padding changed "
                         "(padding filled with large random values instead of zeros): the padding "
                         "must not enter the statistics. {MBN_HINT}"))
                n += 1
    passed(fn, n)


# --- RMSNorm in half precision (an exercise at the end) ----------------------------------------------

UPCAST_HINT = (tr("Compute the statistics in float32, x.float(), and return the result in x's dtype, "
               ".to(x.dtype)"))


def check_rms_norm_upcast(fn, seed: int = 0) -> None:
    """rms_norm_upcast(x, weight, eps=1e-6): float32 statistics, output in x's dtype."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        cases = [
            ((2, 3, 16), torch.float16, 400.0),      # x**2 ~ 1.6e5 > 65504: float16 overflows
            ((4, 32), torch.float16, 1.0),
            ((2, 5, 8), torch.bfloat16, 1000.0),
            ((3, 8), torch.float32, 3.0),
            ((1, 1, 7), torch.float16, 2000.0),
        ]
        for shape, dtype, scale in cases:
            D = shape[-1]
            x = (torch.randn(shape) * scale).to(dtype)
            weight = (1 + 0.3 * torch.randn(D)).to(dtype)
            what = trf("{who}(x {list(shape)} ({str(dtype).removeprefix('torch.')}, values up to {x.abs().max().item():.0f}))")
            got = call(fn, x, weight)
            expect_tensor(got, what)
            if tuple(got.shape) != tuple(x.shape):
                fail(trf("{what} has shape {_shape(got)}, expected {_shape(x)}"))
            if got.dtype != dtype:
                fail(trf("{what} has dtype {got.dtype}, expected {dtype}: the statistics are computed in "
                     "float32, but the layer returns the dtype it was given (.to(x.dtype)), so the next "
                     "layer still runs in {str(dtype).removeprefix('torch.')}"))
            want = F.rms_norm(x.float(), (D,), weight.float(), 1e-6).to(dtype)
            if dtype == torch.float16 and scale > 256:
                g = got.double()
                if (g == 0).all(-1).any() or not torch.isfinite(g).all():
                    fail(trf("{what}: your output is 0 or not finite for large tokens: x**2 overflowed "
                         "float16, whose largest value is 65504 (|x| > 256 is enough). {UPCAST_HINT}"))
            tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}[dtype]
            expect_close(got, want, what, atol=tol, rtol=tol,
                         hint=trf("The oracle is F.rms_norm(x.float(), (D,), weight.float(), eps).to(x.dtype). {UPCAST_HINT}"))
            n += 1
    passed(fn, n)


# --- the transformer block -----------------------------------------------------------------------

BLOCK_HINT = (tr("Pre-Norm (norm_first=True): x = x + attn(norm1(x)); x = x + ffn(norm2(x)). "
              "Post-Norm (norm_first=False): x = norm1(x + attn(x)); x = norm2(x + ffn(x))"))


def _linears(module) -> list:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _block_parts(block, who, d_model, d_ff):
    """The learner's block must have the contract's attributes: attn (w_q, w_k, w_v, w_o), ffn, norm1, norm2, drop."""
    for name in ("attn", "ffn", "norm1", "norm2", "drop"):
        if not hasattr(block, name):
            fail(trf("{who} has no attribute `{name}`: later chapters use the names attn, ffn, norm1, norm2 "
                 "and drop; set self.{name} in __init__"))
    for name in ("w_q", "w_k", "w_v", "w_o"):
        if not isinstance(getattr(block.attn, name, None), nn.Linear):
            fail(trf("{who}.attn has no Linear `{name}`: use MultiHeadAttention(d_model, n_heads) from "
                 "transformer_course.multihead (chapter 04)"))
    lins = _linears(block.ffn)
    shapes = [tuple(m.weight.shape) for m in lins]
    if shapes != [(d_ff, d_model), (d_model, d_ff)]:
        fail(trf("{who}.ffn should be Linear(d_model, d_ff), ReLU, Linear(d_ff, d_model) (weights of shapes "
             "[{d_ff}, {d_model}] and [{d_model}, {d_ff}] for d_model={d_model}, d_ff={d_ff}); yours has "
             "Linear layers with weights {[list(s) for s in shapes]}"))
    for name in ("norm1", "norm2"):
        norm = getattr(block, name)
        w, b = getattr(norm, "weight", None), getattr(norm, "bias", None)
        if not (isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor)
                and tuple(w.shape) == (d_model,) and tuple(b.shape) == (d_model,)):
            fail(trf("{who}.{name} should be nn.LayerNorm(d_model), with a weight and a bias of shape [{d_model}]"))
    if not isinstance(block.drop, nn.Dropout):
        fail(trf("{who}.drop should be nn.Dropout(dropout)"))
    return lins


def _randomize(block, lins, gen_seed):
    """Give every weight a random value (norms included), so that swapped or skipped parts show."""
    with torch.no_grad(), seeded(gen_seed):
        for lin in [block.attn.w_q, block.attn.w_k, block.attn.w_v, block.attn.w_o] + lins:
            lin.weight.copy_(torch.randn_like(lin.weight) / math.sqrt(lin.in_features))
            if lin.bias is not None:
                lin.bias.copy_(0.3 * torch.randn_like(lin.bias))
        for norm in (block.norm1, block.norm2):
            norm.weight.copy_(1 + 0.5 * torch.randn_like(norm.weight))
            norm.bias.copy_(0.5 * torch.randn_like(norm.bias))


def _oracle_layer(block, lins, d_model, n_heads, d_ff, norm_first):
    """nn.TransformerEncoderLayer with the learner's weights (float64, dropout 0, train mode: no fast path)."""
    ref = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, activation="relu",
                                     batch_first=True, norm_first=norm_first, dtype=torch.float64)
    a = block.attn
    zeros = torch.zeros(d_model, dtype=torch.float64)
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(torch.cat([a.w_q.weight, a.w_k.weight, a.w_v.weight]))
        ref.self_attn.in_proj_bias.copy_(torch.cat([l.bias if l.bias is not None else zeros
                                                    for l in (a.w_q, a.w_k, a.w_v)]))
        ref.self_attn.out_proj.weight.copy_(a.w_o.weight)
        ref.self_attn.out_proj.bias.copy_(a.w_o.bias if a.w_o.bias is not None else zeros)
        for mine, theirs in zip(lins, (ref.linear1, ref.linear2)):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias if mine.bias is not None else torch.zeros_like(theirs.bias))
        for mine, theirs in ((block.norm1, ref.norm1), (block.norm2, ref.norm2)):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
            theirs.eps = getattr(mine, "eps", 1e-5)
    return ref.train()


def _torch_mask(mask, B, n_heads, T):
    """Ours (True = may attend, [T, T], [B, 1, T] or [B, T, T]) -> nn.MultiheadAttention's (True = NOT allowed)."""
    if mask is None:
        return None
    if mask.dim() == 2:
        return ~mask
    return (~mask.expand(B, T, T)).repeat_interleave(n_heads, dim=0)   # [B * n_heads, T, T]


def _functional(block, lins, x, mask, n_heads, variant, p=0.0):
    """The block's computation, written out, right ("pre", "post") and wrong, for the diagnoses.

    With p > 0 it runs in training mode: dropout (F.dropout, the function nn.Dropout calls) on each
    sublayer's output, or for the "drop_*" variants where learners misplace it. Run under a fixed
    seed, it draws the same masks in the same order as the learner's block."""
    a = block.attn
    d = (lambda t: F.dropout(t.contiguous(), p, training=True)) if p > 0 else (lambda t: t)

    def attn(h, m=mask):
        B, T, D = h.shape
        split = lambda t: t.view(B, T, n_heads, D // n_heads).transpose(1, 2)
        q, k, v = split(a.w_q(h)), split(a.w_k(h)), split(a.w_v(h))
        scores = q @ k.transpose(-2, -1) / math.sqrt(D // n_heads)
        if m is not None:
            mm = m[:, None] if m.dim() == 3 else m
            scores = scores.masked_fill(~mm, float("-inf"))
        out = torch.softmax(scores, -1) @ v
        return a.w_o(out.transpose(1, 2).reshape(B, T, D))

    def ffn(h, relu=True):
        h = lins[0](h)
        return lins[1](torch.relu(h) if relu else h)

    n1, n2 = block.norm1, block.norm2
    if variant == "pre":
        x = x + d(attn(n1(x)))
        return x + d(ffn(n2(x)))
    if variant == "post":
        x = n1(x + d(attn(x)))
        return n2(x + d(ffn(x)))
    if variant == "pre_drop_stream":          # dropout on the residual stream itself
        x = d(x + attn(n1(x)))
        return d(x + ffn(n2(x)))
    if variant == "post_drop_stream":
        x = d(n1(x + attn(x)))
        return d(n2(x + ffn(x)))
    if variant == "post_drop_sum":            # on the sum, before the norm
        x = n1(d(x + attn(x)))
        return n2(d(x + ffn(x)))
    if variant == "pre_drop_input":           # dropout on the sublayer's input
        x = x + attn(d(n1(x)))
        return x + ffn(d(n2(x)))
    if variant == "post_drop_input":
        x = n1(x + attn(d(x)))
        return n2(x + ffn(d(x)))
    if variant == "pre_drop_attn_only":
        x = x + d(attn(n1(x)))
        return x + ffn(n2(x))
    if variant == "post_drop_attn_only":
        x = n1(x + d(attn(x)))
        return n2(x + ffn(x))
    if variant == "pre_drop_ffn_only":
        x = x + attn(n1(x))
        return x + d(ffn(n2(x)))
    if variant == "post_drop_ffn_only":
        x = n1(x + attn(x))
        return n2(x + d(ffn(x)))
    if variant == "pre_no_attn_residual":
        x = attn(n1(x))
        return x + ffn(n2(x))
    if variant == "pre_no_ffn_residual":
        x = x + attn(n1(x))
        return ffn(n2(x))
    if variant == "post_no_attn_residual":
        x = n1(attn(x))
        return n2(x + ffn(x))
    if variant == "post_no_ffn_residual":
        x = n1(x + attn(x))
        return n2(ffn(x))
    if variant == "pre_norm_twice":
        x = n1(x + attn(n1(x)))
        return n2(x + ffn(n2(x)))
    if variant == "pre_no_mask":
        x = x + attn(n1(x), None)
        return x + ffn(n2(x))
    if variant == "post_no_mask":
        x = n1(x + attn(x, None))
        return n2(x + ffn(x))
    if variant == "pre_no_relu":
        x = x + attn(n1(x))
        return x + ffn(n2(x), relu=False)
    if variant == "post_no_relu":
        x = n1(x + attn(x))
        return n2(x + ffn(x, relu=False))
    if variant == "pre_inverted_mask":
        x = x + attn(n1(x), ~mask)
        return x + ffn(n2(x))
    if variant == "post_inverted_mask":
        x = n1(x + attn(x, ~mask))
        return n2(x + ffn(x))
    if variant == "pre_same_norm":
        x = x + attn(n1(x))
        return x + ffn(n1(x))
    if variant == "post_same_norm":
        x = n1(x + attn(x))
        return n1(x + ffn(x))
    if variant == "pre_swapped_norms":
        x = x + attn(n2(x))
        return x + ffn(n1(x))
    if variant == "post_swapped_norms":
        x = n2(x + attn(x))
        return n1(x + ffn(x))
    if variant == "pre_residual_normed":     # x + f(LN(x)) with the residual taken after the norm
        h = n1(x)
        h = h + attn(h)
        g = n2(h)
        return g + ffn(g)
    raise ValueError(variant)


def _block_candidates(block, lins, x, mask, n_heads, norm_first):
    mode = "pre" if norm_first else "post"
    other = "post" if norm_first else "pre"
    wired = (tr("Pre-Norm, x + f(norm(x))") if other == "pre" else tr("Post-Norm, norm(x + f(x))"))
    asked = "norm_first=True" if norm_first else "norm_first=False"
    with torch.no_grad():
        f = lambda v: _functional(block, lins, x, mask, n_heads, v)
        c = {
            trf("with {asked} your block computed {wired}: read self.norm_first in forward. {BLOCK_HINT}"):
                f(other),
            tr("the attention sublayer has no residual connection: add its input back, x + attn(...)"):
                f(f"{mode}_no_attn_residual"),
            tr("the feed-forward sublayer has no residual connection: add its input back, x + ffn(...)"):
                f(f"{mode}_no_ffn_residual"),
            tr("your block ignores the mask: pass it on to self.attn(..., mask=mask)"):
                f(f"{mode}_no_mask") if mask is not None else None,
            tr("your mask is inverted: True means *may attend* (chapter 03), and with the padding mask "
            "inverted a full-length sequence sees no key at all, hence NaN; pass the mask on unchanged"):
                f(f"{mode}_inverted_mask") if mask is not None else None,
            tr("there is no ReLU between the two Linear layers of the feed-forward network"):
                f(f"{mode}_no_relu"),
            tr("norm1 and norm2 are swapped: norm1 belongs to the attention sublayer, norm2 to the feed-forward one"):
                f(f"{mode}_swapped_norms"),
            tr("you used norm1 for both sublayers: each has its own LayerNorm with its own weights, norm1 for "
            "the attention, norm2 for the feed-forward network"):
                f(f"{mode}_same_norm"),
        }
        if norm_first:
            c[tr("your Pre-Norm block also normalizes the sum, norm(x + f(norm(x))), so the residual "
              "stream is normalized twice; Pre-Norm leaves the stream alone: x + f(norm(x))")] = f("pre_norm_twice")
            c[tr("your Pre-Norm block adds the *normalized* input back, norm(x) + f(norm(x)); the "
              "residual is the stream x itself: x + f(norm(x))")] = f("pre_residual_normed")
    return c


DROP_HINT = (tr("Dropout goes on each sublayer's output, before it is added to the residual stream: "
             "Pre-Norm x + drop(f(norm(x))), Post-Norm norm(x + drop(f(x))); nn.Dropout (self.drop) "
             "is random in train mode and the identity in eval mode"))


def _drop_candidates(block, lins, x, mask, n_heads, norm_first, p, seed, eval_out):
    mode = "pre" if norm_first else "post"
    f = lambda v: _with_seed(seed, _functional, block, lins, x, mask, n_heads, v, p)
    c = {
        tr("your block applies dropout to the residual stream itself, drop(x + f(...)), so the "
        "stream loses entries and later layers lose the input the residual connection was meant "
        "to keep; drop only the sublayer's output: x + drop(f(norm(x)))") if norm_first else
        tr("your block applies dropout after the norm, drop(norm(x + f(x))), to the residual stream "
        "itself; drop only the sublayer's output: norm(x + drop(f(x)))"): f(f"{mode}_drop_stream"),
        tr("your block applies dropout to the sublayer's input, f(drop(...)); it goes on the "
        "sublayer's output, before the residual add: ")
        + (tr("x + drop(f(norm(x)))") if norm_first else tr("norm(x + drop(f(x)))")): f(f"{mode}_drop_input"),
        tr("your block applies dropout to the attention sublayer only: the feed-forward sublayer's "
        "output is dropped too, x + drop(ffn(...))"): f(f"{mode}_drop_attn_only"),
        tr("your block applies dropout to the feed-forward sublayer only: the attention sublayer's "
        "output is dropped too, x + drop(attn(...))"): f(f"{mode}_drop_ffn_only"),
        tr("in train mode your block gives its eval-mode output: dropout is missing; apply self.drop "
        "to each sublayer's output"): eval_out,
    }
    if not norm_first:
        c[tr("your block applies dropout to the sum x + f(x), before the norm; drop only the "
          "sublayer's output: norm(x + drop(f(x)))")] = f("post_drop_sum")
    return c


def _with_seed(seed, fn, *args):
    with torch.no_grad(), seeded(seed):
        return fn(*args)


def _check_block_dropout(cls, who, d_model, n_heads, d_ff, B, T, mask, seed) -> int:
    """Where dropout goes, and train vs eval: the learner's block against the same computation
    with F.dropout placed right, under the same seed (so both draw the same masks)."""
    n, p = 0, 0.5
    for norm_first in (True, False):
        name = "Pre-Norm" if norm_first else "Post-Norm"
        shown = trf("{who}({d_model}, {n_heads}, {d_ff}, norm_first={norm_first}, dropout={p})")
        block = call(cls, d_model, n_heads, d_ff, norm_first=norm_first, dropout=p)
        if not isinstance(getattr(block, "drop", None), nn.Dropout) or block.drop.p != p:
            fail(trf("{shown}.drop should be nn.Dropout({p}): pass the dropout argument on"))
        lins = _block_parts(block, shown, d_model, d_ff)
        block = block.double()
        _randomize(block, lins, seed + 29)
        x = torch.randn(B, T, d_model, dtype=torch.float64)
        saved = x.clone()
        what = trf("{name} {who}(..., dropout={p}) on x [{B}, {T}, {d_model}] with a padding mask")

        # eval mode: deterministic, and the block without dropout
        block.eval()
        with torch.no_grad():
            a, b = call(block, x, mask=mask), call(block, x, mask=mask)
        expect_tensor(a, what)
        if not torch.equal(a, b):
            fail(trf("{what} in eval mode gave two different outputs: use nn.Dropout (self.drop), "
                 "which turns itself off in eval mode, not F.dropout(training=True)"))
        _diagnose(a, _with_seed(0, _functional, block, lins, x, mask, n_heads,
                                "pre" if norm_first else "post"), {}, what + tr(" in eval mode"),
                  tr("In eval mode dropout is the identity. ") + BLOCK_HINT, atol=1e-8, rtol=1e-6)
        n += 1

        # train mode: the masks of F.dropout on each sublayer's output, drawn in order
        block.train()
        s = seed + 101
        with seeded(s):
            got = call(block, x, mask=mask)
        _expect_untouched(x, saved, who)
        want = _with_seed(s, _functional, block, lins, x, mask, n_heads,
                          "pre" if norm_first else "post", p)
        _diagnose(got, want, _drop_candidates(block, lins, x, mask, n_heads, norm_first, p, s, a),
                  what + tr(" in train mode"), DROP_HINT + tr(". The oracle runs your block's parts with "
                  "F.dropout on each sublayer's output, under the same seed"), atol=1e-8, rtol=1e-6)
        with torch.no_grad():
            c, d = call(block, x, mask=mask), call(block, x, mask=mask)
        if torch.equal(c, d):
            fail(trf("{what} in train mode gave the same output twice: dropout should draw new masks "
                 "on each call"))
        n += 1
    return n


def check_TransformerBlock(cls, seed: int = 0) -> None:
    """TransformerBlock(d_model, n_heads, d_ff, norm_first, dropout) against nn.TransformerEncoderLayer."""
    who = name_of(cls)
    n = 0
    d_model, n_heads, d_ff = 12, 3, 20
    B, T = 2, 5
    with seeded(seed):
        lengths = torch.tensor([5, 3])
        pad = (torch.arange(T) < lengths[:, None])[:, None, :]                 # [B, 1, T]
        causal = torch.ones(T, T, dtype=torch.bool).tril()                      # [T, T]
        masks = {tr("no mask"): None, tr("a padding mask [B, 1, N]"): pad, tr("a causal mask [N, N]"): causal,
                 tr("padding & causal [B, N, N]"): pad & causal}
        for norm_first in (True, False):
            name = "Pre-Norm" if norm_first else "Post-Norm"
            shown = trf("{who}({d_model}, {n_heads}, {d_ff}, norm_first={norm_first})")
            block = call(cls, d_model, n_heads, d_ff, norm_first=norm_first)
            if not isinstance(block, nn.Module):
                fail(trf("{shown} should be an nn.Module, got {type(block).__name__}"))
            lins = _block_parts(block, shown, d_model, d_ff)
            ref = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, batch_first=True)
            mine, theirs = sum(p.numel() for p in block.parameters()), sum(p.numel() for p in ref.parameters())
            if mine != theirs:
                fail(trf("{shown} has {mine} parameters, expected {theirs} (attention 4·(d² + d), the FFN "
                     "2·d·d_ff + d_ff + d, two LayerNorms 2·2·d): does it hold more layers than it uses?"))
            block = block.double()
            _randomize(block, lins, seed + 17)
            block.eval()
            oracle = _oracle_layer(block, lins, d_model, n_heads, d_ff, norm_first)
            for mname, mask in masks.items():
                x = torch.randn(B, T, d_model, dtype=torch.float64)
                saved = x.clone()
                what = trf("{name} {who} on x [{B}, {T}, {d_model}] with {mname}")
                got = call(block, x) if mask is None else call(block, x, mask=mask)
                expect_tensor(got, what)
                if tuple(got.shape) != (B, T, d_model):
                    fail(trf("{what}: output has shape {_shape(got)}, expected {[B, T, d_model]}: the block "
                         "maps [B, N, d_model] to [B, N, d_model]"))
                _expect_untouched(x, saved, who)
                with torch.no_grad():
                    want = oracle(x, src_mask=_torch_mask(mask, B, n_heads, T))

                def candidates():
                    try:
                        return _block_candidates(block, lins, x, mask, n_heads, norm_first)
                    except Exception:      # the learner's parts misbehave outside forward: no diagnosis
                        return {}

                _diagnose(got, want, candidates, what,
                          BLOCK_HINT + trf(". The oracle is nn.TransformerEncoderLayer(batch_first=True, "
                                       "norm_first={norm_first}) with your weights copied in"),
                          atol=1e-8, rtol=1e-6)
                n += 1

            # every parameter takes part (a norm defined but never used gets no gradient)
            block.zero_grad(set_to_none=True)
            x = torch.randn(B, T, d_model, dtype=torch.float64)
            out = call(block, x, mask=pad)
            out.pow(2).sum().backward()
            for pname, p in block.named_parameters():
                if p.grad is None or not p.grad.abs().sum() > 0:
                    fail(trf("{name} {who}: parameter {pname} got no gradient, so it is never used in "
                         "forward. {BLOCK_HINT}"))
            n += 1

        n += _check_block_dropout(cls, who, d_model, n_heads, d_ff, B, T, pad, seed)
    passed(cls, n)
