"""Checks for chapter 16 (RWKV): the WKV operator of RWKV-4 in its recurrent and parallel
forms.

wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
      / (sum_{i<t} e^{-(t-1-i) w + k_i}     + e^{u + k_t})

per channel, with w >= 0 (a decay of e^{-w} per step) and a bonus u for the current token.
The oracle writes the exponents out as a [N, N + 1] matrix per channel, in float64, and
lets torch.softmax normalize them (masked entries -inf), so it shares no code with a
learner's running maximum. When an output is wrong, the check recomputes what each known
mistake gives (no bonus, or a bonus on every token, which is the same; decay on the
current token; decay sign flipped; current token counted in the decayed sum too;
normalizer missing; running maximum not carried, or kept as the largest key seen) and
names the one that matches. Decays, bonuses and keys are drawn so that no two mistakes give
the same numbers; the last cases put the keys near +100 and -110 in float32, where exp
overflows (e^89 > 3.4e38) or underflows to 0.
"""

from __future__ import annotations

import torch

from ..i18n import tr, trf
from . import call, expect_tensor, fail, name_of, passed, seeded

__all__ = ["check_wkv_recurrent", "check_wkv_parallel", "reference"]


def exponents(w, u, k, bug=None):
    """[B, N(t), N(i), C] exponents of e^{...} v_i in wkv_t; -inf where i is not summed."""
    t = k.shape[1]
    ti = torch.arange(t)
    lag = (ti[:, None] - 1 - ti[None, :]).to(k.dtype)[None, :, :, None]   # t - 1 - i
    sign = -1.0 if bug == "decay_sign" else 1.0
    past = -sign * lag * w + k[:, None, :, :]                      # [B, N, N, C]
    if bug == "bonus_past":
        past = past + u
    now = (u + k)[:, :, None, :]                                   # [B, N, 1, C]
    if bug == "no_bonus":
        now = k[:, :, None, :]
    if bug == "decay_current":
        now = now - w
    keep_past = (ti[None, :] < ti[:, None])[None, :, :, None]
    if bug == "current_in_decayed":
        keep_past = (ti[None, :] <= ti[:, None])[None, :, :, None]
    e = torch.where(keep_past, past, torch.tensor(float("-inf"), dtype=k.dtype))
    return torch.cat([e, now], dim=2)                              # [B, N, N + 1, C]


def _recurrent_wrong_max(w, u, k, v, bug):
    """a, b scaled by max(p - w, k_t) at each step, but p then set to the current key
    (max_not_carried) or to the largest key seen so far (max_largest_key)."""
    a = torch.zeros_like(k[:, 0])
    b = torch.zeros_like(k[:, 0])
    p = torch.full_like(k[:, 0], float("-inf"))
    out = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        q = torch.maximum(p, u + kt)
        e1, e2 = torch.exp(p - q), torch.exp(u + kt - q)
        out.append((e1 * a + e2 * vt) / (e1 * b + e2))
        q = torch.maximum(p - w, kt)
        e1, e2 = torch.exp(p - w - q), torch.exp(kt - q)
        a, b = e1 * a + e2 * vt, e1 * b + e2
        p = kt if bug == "max_not_carried" else torch.maximum(p, kt)
    return torch.stack(out, dim=1)


def reference(w, u, k, v, bug=None):
    """WKV in float64 from its definition; `bug` gives a known wrong variant."""
    w, u, k, v = (x.detach().double().cpu() for x in (w, u, k, v))
    if bug in ("max_not_carried", "max_largest_key"):
        return _recurrent_wrong_max(w, u, k, v, bug)
    e = exponents(w, u, k, bug)
    vv = torch.cat([v[:, None, :, :].expand(-1, k.shape[1], -1, -1), v[:, :, None, :]],
                   dim=2)                                           # v_i, then v_t
    if bug == "no_norm":
        return (e.exp() * vv).sum(2)
    if bug == "no_norm_stabilized":
        return ((e - e.amax(2, keepdim=True)).exp() * vv).sum(2)
    return (torch.softmax(e, dim=2) * vv).sum(2)


BUGS = {
    "no_bonus": tr("your output is what you get without the bonus u, or with u on every "
                "token (then e^u is a common factor and cancels): the current token alone "
                "enters as e^{u + k_t} v_t, the past ones as e^{-(t-1-i) w + k_i} v_i"),
    "decay_current": tr("your output is what you get with the current token decayed too, "
                     "e^{u + k_t - w}: the current token gets the bonus u and no decay; "
                     "token i < t is decayed t - 1 - i times"),
    "decay_sign": tr("your output is what you get with the decay's sign flipped, "
                  "e^{+(t-1-i) w}: w >= 0 and the past fades, e^{-(t-1-i) w} (in RWKV's "
                  "code w = -exp(time_decay) is stored negative: mind which one you have)"),
    "current_in_decayed": tr("your output counts the current token twice: in the decayed sum "
                          "(i <= t) and with the bonus. The decayed sum runs over i < t "
                          "only (mask off by one)"),
    "no_norm": tr("your output is the numerator alone: divide by the same sum without the "
               "v's, sum_{i<t} e^{-(t-1-i) w + k_i} + e^{u + k_t}"),
    "no_norm_stabilized": tr("your output is the numerator alone (scaled by e^{-max}): divide "
                          "by the same sum without the v's, scaled by the same maximum"),
    "max_not_carried": tr("your output is what you get when the running maximum p is reset "
                       "to the current key k_t after each step: a and b were scaled by "
                       "e^{-max(p - w, k_t)}, so p must become that maximum"),
    "max_largest_key": tr("your output is what you get when p becomes the largest key seen "
                       "so far, max(p, k_t): a and b were scaled by e^{-max(p - w, k_t)} "
                       "(the past's exponents drop by w each step), so p must become "
                       "that maximum, the exponent they are stored relative to"),
}


def _make(b, t, c, seed, dtype, scale=0.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(c, generator=g, dtype=torch.float64) * 1.5 + 0.05   # in (0.05, 1.55)
    u = torch.randn(c, generator=g, dtype=torch.float64) + 0.7
    k = torch.randn(b, t, c, generator=g, dtype=torch.float64)
    v = torch.randn(b, t, c, generator=g, dtype=torch.float64) + 0.3
    if scale:
        k = k * 3 + scale
    return tuple(x.to(dtype) for x in (w, u, k, v))


def _tol(dtype):
    return 1e-10 if dtype == torch.float64 else 1e-4


def _close(got, want, tol) -> bool:
    g = got.detach().double().cpu()
    if g.shape != want.shape:
        return False
    return bool(((g - want).abs() <= tol * (1 + want.abs())).all())


def _expect_output(out, k, head):
    expect_tensor(out, head)
    if list(out.shape) != list(k.shape):
        fail(trf("{head} has shape {list(out.shape)}, expected {list(k.shape)} = [B, N, C]: "
             "one output per token and channel"))
    if out.dtype != k.dtype:
        fail(trf("{head} has dtype {out.dtype}, expected the inputs' dtype {k.dtype}"))


def _diagnose(out, w, u, k, v, head, tol, big=False):
    g = out.detach().double().cpu()
    if not torch.isfinite(g).all():
        idx = tuple(torch.nonzero(~torch.isfinite(g))[0].tolist())
        if big:
            fail(trf("{head} contains {g[idx].item()} (first at index {list(idx)}): exp "
                 "overflowed or underflowed, e^k for keys near +-100 is out of float32's "
                 "range. Subtract the running maximum of the exponents before exp (p in "
                 "the recurrence, the row maximum in the parallel form)"))
        fail(trf("{head} contains {g[idx].item()} (first at index {list(idx)}), expected "
             "finite values: is the normalizer ever 0, or an exponent inf?"))
    for bug in BUGS:
        if _close(g, reference(w, u, k, v, bug), max(tol, 1e-6) * 10):
            fail(trf("{head}: {BUGS[bug]}"))
    want = reference(w, u, k, v)
    err = (g - want).abs()
    bad = err > tol * (1 + want.abs())
    idx = tuple(torch.nonzero(bad)[0].tolist())
    fail(trf("{head}: at index {list(idx)} (b, t, c) you have {g[idx].item():.6g}, expected "
         "{want[idx].item():.6g} (largest difference {err.max().item():.3g}, "
         "{int(bad.sum())} of {bad.numel()} entries wrong; tolerance {tol:g})"))


def _cases(seed):
    with seeded(seed):
        t = int(torch.randint(20, 40, ())) | 1                   # odd
    return [(2, 7, 5, torch.float64, 0.0), (1, 1, 3, torch.float64, 0.0),
            (3, 12, 1, torch.float64, 0.0), (2, t, 6, torch.float32, 0.0),
            (2, t, 4, torch.float32, 100.0), (1, 9, 4, torch.float32, -110.0)]


def _check(fn, seed):
    who, n_cases = name_of(fn), 0
    for i, (b, t, c, dtype, scale) in enumerate(_cases(seed)):
        w, u, k, v = _make(b, t, c, seed + i, dtype, scale)
        head = (f"{who}(w, u [{c}], k, v [{b}, {t}, {c}], {str(dtype)[6:]}"
                + (trf(", keys near {scale:g}") if scale else "") + ")")
        w0, k0 = w.clone(), k.clone()
        out = call(fn, w, u, k, v)
        _expect_output(out, k, head)
        if not (torch.equal(w, w0) and torch.equal(k, k0)):
            fail(trf("{head} changed its arguments in place: leave w and k as they are"))
        if not _close(out, reference(w, u, k, v), _tol(dtype)):
            _diagnose(out, w, u, k, v, head, _tol(dtype), big=bool(scale))
        n_cases += 1
    passed(fn, n_cases)


def check_wkv_recurrent(fn, seed: int = 0) -> None:
    """fn(w, u, k, v) -> [B, N, C]: WKV token by token, stabilized with a running max."""
    _check(fn, seed)


def check_wkv_parallel(fn, seed: int = 0) -> None:
    """fn(w, u, k, v) -> [B, N, C]: WKV from the [N, N + 1] matrix of exponents, stabilized."""
    _check(fn, seed)
