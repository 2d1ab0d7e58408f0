"""Checks for chapter 08 (training): cross-entropy with label smoothing, the warmup-cosine
learning-rate schedule, gradient clipping by global norm, and teacher-forced token accuracy.

The oracles are PyTorch's own: ``F.cross_entropy(..., label_smoothing=eps, ignore_index=...)`` and
``torch.nn.utils.clip_grad_norm_``; the schedule is compared with its closed form at the points
where the usual mistakes show (step 0, the end of the warmup, a quarter of the decay, after
``max_steps``), then at every step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..i18n import tr, trf
from . import approx, call, expect_close, expect_tensor, fail, passed, seeded

__all__ = [
    "check_label_smoothed_cross_entropy",
    "check_lr_at",
    "check_clip_grad_norm",
    "check_token_accuracy",
]


def _close(a: float, b: float, rel: float = 1e-5, abs_: float = 1e-9) -> bool:
    return math.isfinite(a) and abs(a - b) <= abs_ + rel * abs(b)


# --- label_smoothed_cross_entropy --------------------------------------------------------------

def _ls_oracle(logits, targets, eps, ignore_index=-100):
    V = logits.shape[-1]
    return F.cross_entropy(logits.double().reshape(-1, V), targets.reshape(-1), label_smoothing=eps,
                           ignore_index=ignore_index)


def _ls_variants(logits, targets, eps, ignore_index):
    """Plausible wrong losses, by the words that name the mistake."""
    log_p = torch.log_softmax(logits.double(), -1)
    V = logits.shape[-1]
    keep = targets != ignore_index
    safe = targets.masked_fill(~keep, 0)
    nll = -log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    mean_all = -log_p.mean(-1)
    others = (-log_p.sum(-1) - nll) / max(V - 1, 1)
    n = keep.sum()

    def mean(x):
        return x[keep].mean()

    out = {
        tr("no smoothing"): mean(nll),
        "others": mean((1 - eps) * nll + eps * others),
        tr("no uniform"): mean((1 - eps) * nll),
        tr("no 1-eps"): mean(nll + eps * mean_all),
        tr("summed uniform"): mean((1 - eps) * nll + eps * -log_p.sum(-1)),
        tr("ignored in mean"): ((1 - eps) * nll + eps * mean_all).masked_fill(~keep, 0).sum() / keep.numel(),
        tr("uniform unmasked"): mean((1 - eps) * nll) + eps * mean_all.mean(),
        "sum": ((1 - eps) * nll + eps * mean_all)[keep].sum(),
    }
    if n == keep.numel():                      # nothing ignored: these variants are the right answer
        for k in (tr("ignored in mean"), tr("uniform unmasked")):
            out.pop(k)
    if ignore_index != -100:                   # ignoring -100 instead of the given ignore_index
        out[tr("hardcoded -100")] = _ls_oracle(logits, targets, eps, ignore_index=-100)
    if eps == 0:
        for k in (tr("no smoothing"), tr("no uniform"), tr("no 1-eps"), "others"):
            out.pop(k, None)
    return out


_LS_WORDS = {
    tr("no smoothing"): tr("your loss equals the plain cross-entropy: the smoothing is missing. With smoothing ε the "
                    "loss is (1 - ε)·(-log p_y) + ε·(mean over the V classes of -log p_v)"),
    "others": tr("you spread ε over the V - 1 *other* classes (q_y = 1 - ε). Here, as in PyTorch's "
              "F.cross_entropy(label_smoothing=ε), it is spread over all V classes, the target included: "
              "q = (1 - ε)·onehot + ε/V, so q_y = 1 - ε + ε/V"),
    tr("no uniform"): tr("you computed only (1 - ε)·(-log p_y): add ε times the mean over the V classes of -log p_v"),
    tr("no 1-eps"): tr("the -log p_y term lacks its factor (1 - ε): the loss is (1 - ε)·(-log p_y) + ε·mean_v(-log p_v)"),
    tr("summed uniform"): tr("your smoothing term sums -log p_v over the V classes; it should average them "
                      "(each class gets ε/V): use .mean(-1), not .sum(-1)"),
    tr("ignored in mean"): tr("the ignored positions count in your mean: divide by the number of positions whose "
                       "target is not ignore_index, not by all positions"),
    tr("uniform unmasked"): tr("your smoothing term still includes the ignored positions: leave them out of both terms"),
    "sum": tr("you summed over the positions: the loss is the mean over the positions that are not ignored"),
    tr("hardcoded -100"): tr("you ignored the targets equal to -100 rather than those equal to the ignore_index "
                      "argument (here 0)"),
}


def _ls_cases(seed):
    with seeded(seed):
        cases = []
        cases.append((tr("logits [7, 5]"), torch.randn(7, 5) * 2, torch.randint(0, 5, (7,)), 0.1, -100))
        t = torch.randint(0, 11, (2, 3))
        t[0, 2], t[1, 1] = -100, -100
        cases.append((tr("logits [2, 3, 11] with two ignored positions"), torch.randn(2, 3, 11), t, 0.2, -100))
        cases.append((tr("smoothing = 0"), torch.randn(4, 6), torch.randint(0, 6, (4,)), 0.0, -100))
        cases.append((tr("a single position, V = 2"), torch.randn(1, 2), torch.randint(0, 2, (1,)), 0.5, -100))
        t = torch.randint(1, 9, (3, 4))
        t[:, -1], t[2, 1] = 0, 0
        cases.append((tr("logits [3, 4, 9] with ignore_index = 0 (a pad id)"), torch.randn(3, 4, 9), t, 0.1, 0))
        cases.append((tr("large logits (about ±300)"), torch.randn(5, 8) * 300, torch.randint(0, 8, (5,)), 0.1, -100))
    return cases


def check_label_smoothed_cross_entropy(fn, seed: int = 0) -> None:
    n = 0
    for what, logits, targets, eps, ignore in _ls_cases(seed):
        args = (logits.clone(), targets.clone(), eps)
        got = call(fn, *args) if ignore == -100 else call(fn, *args, ignore_index=ignore)
        if not torch.equal(args[0], logits) or not torch.equal(args[1], targets):
            fail(trf("label_smoothed_cross_entropy changed its input in place ({what}): compute on copies"))
        expect_tensor(got, f"label_smoothed_cross_entropy({what})")
        if got.shape == targets.shape and got.dim() > 0:
            fail(trf("label_smoothed_cross_entropy({what}) returned one loss per position, shape "
                 "{list(got.shape)}; return their mean over the positions that are not ignored, a scalar"))
        if got.dim() != 0:
            fail(trf("label_smoothed_cross_entropy({what}) should return a scalar (0-dim) tensor, got shape "
                 "{list(got.shape)}"))
        if not got.is_floating_point():
            fail(trf("label_smoothed_cross_entropy({what}) has dtype {got.dtype}, expected a float"))
        want = _ls_oracle(logits, targets, eps, ignore).item()
        value = got.item()
        if not math.isfinite(value):
            if what == tr("large logits (about ±300)"):
                fail(trf("label_smoothed_cross_entropy({what}) is {value}: torch.log(torch.softmax(z)) gives "
                     "log 0 = -inf once the logits differ by more than about 100. Use torch.log_softmax, "
                     "which is stable"))
            fail(trf("label_smoothed_cross_entropy({what}) is {value}, expected {approx(want)}"))
        if not _close(value, want, rel=1e-4, abs_=1e-5):
            named = [name for name, alt in _ls_variants(logits, targets, eps, ignore).items()
                     if _close(value, alt.item(), rel=1e-4, abs_=1e-5)
                     and not _close(alt.item(), want, 1e-4, 1e-5)]
            head = trf("label_smoothed_cross_entropy({what}): got {approx(value)}, expected {approx(want)}")
            if len(named) == 1:
                fail(trf("{head}: {_LS_WORDS[named[0]]}"))
            if named:           # test values where two mistakes coincide: say so, name both
                fail(trf("{head}. Each of these mistakes gives exactly your value: ")
                     + tr(" Or: ").join(trf("({i + 1}) {_LS_WORDS[n]}.") for i, n in enumerate(named)))
            fail(trf("label_smoothed_cross_entropy({what}) is {approx(value)}, expected {approx(want)} "
                 "(F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), label_smoothing={eps}, "
                 "ignore_index={ignore}))"))
        n += 1
    # the gradient must flow, and be the oracle's
    _, logits, targets, eps, ignore = _ls_cases(seed)[1]
    mine = logits.clone().requires_grad_(True)
    got = call(fn, mine, targets.clone(), eps)
    if not isinstance(got, torch.Tensor) or not got.requires_grad:
        fail(tr("label_smoothed_cross_entropy returned a loss without a gradient: keep it a tensor built from "
             "the logits (no .item(), no NumPy, no torch.no_grad())"))
    got.backward()
    ref = logits.clone().double().requires_grad_(True)
    _ls_oracle(ref, targets, eps, ignore).backward()
    if mine.grad is None:
        fail(tr("label_smoothed_cross_entropy: no gradient reached the logits"))
    expect_close(mine.grad, ref.grad, tr("the gradient of your loss with respect to the logits"), atol=1e-5)
    passed(fn, n + 1)


# --- lr_at -------------------------------------------------------------------------------------

def _lr(step, w, m, hi, lo):
    if step < w:
        return hi * step / w
    if step >= m:
        return lo
    return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * (step - w) / (m - w)))


def _lr_call(fn, step, w, m, hi, lo):
    got = call(fn, step, w, m, hi, lo)
    if isinstance(got, torch.Tensor):
        fail(trf("lr_at({step}, {w}, {m}, {hi}, {lo}) returned a tensor; return a Python float, as "
             "the docstring says (float(x), or x.item() for a tensor)"))
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        fail(trf("lr_at({step}, {w}, {m}, {hi}, {lo}) returned {type(got).__name__}, expected a float"))
    return float(got)


def _step0_candidates(w, hi, lo):
    """lr_at(0) under each diagnosed warmup mistake (w > 0), by name."""
    out = {"ahead": hi / w, tr("plus one"): hi / (w + 1), "missing": hi}
    if lo > 0:
        out[tr("from min_lr")] = lo
    return out


def _lr_configs(seed):
    configs = [(10, 100, 1e-3, 2.5e-4), (0, 50, 0.5, 0.05), (4, 20, 1.0, 0.0)]
    with seeded(seed):
        w = int(torch.randint(3, 20, ()).item())
        m = w + int(torch.randint(20, 200, ()).item())
        hi = float(10 ** torch.empty(()).uniform_(-4, -1))
        lo = hi * float(torch.empty(()).uniform_(0.05, 0.3))
    while any(abs(lo - c) < 0.05 * c for c in (hi / w, hi / (w + 1))):
        lo *= 1.3                  # keep min_lr apart from the other diagnoses' values
    configs.append((w, m, hi, lo))
    for w, m, hi, lo in configs:   # no two diagnoses of step 0 may give the same value
        values = [0.0] + list(_step0_candidates(w, hi, lo).values()) if w else []
        assert all(abs(a - b) > 1e-3 * max(abs(a), abs(b)) for i, a in enumerate(values)
                   for b in values[i + 1:]), trf("coinciding diagnoses in {(w, m, hi, lo)}")
    return configs


def check_lr_at(fn, seed: int = 0) -> None:
    n = 0
    for w, m, hi, lo in _lr_configs(seed):
        args = trf("warmup_steps={w}, max_steps={m}, max_lr={hi:g}, min_lr={lo:g}")

        def at(s):
            return _lr_call(fn, s, w, m, hi, lo)

        if w > 0:
            got = at(0)
            if not _close(got, 0.0):
                named = [k for k, v in _step0_candidates(w, hi, lo).items() if _close(got, v)]
                if named == ["ahead"]:
                    fail(trf("lr_at(0, ...) is {approx(got)} = max_lr / warmup_steps ({args}): your warmup is one "
                         "step ahead, (step + 1) / warmup_steps. Step 0 gives 0 and step warmup_steps the "
                         "full max_lr: max_lr * step / warmup_steps"))
                if named == [tr("plus one")]:
                    fail(trf("lr_at(0, ...) is {approx(got)} = max_lr / (warmup_steps + 1) ({args}): your warmup "
                         "is (step + 1) / (warmup_steps + 1), as in nanoGPT's get_lr. Here step 0 gives 0 "
                         "and step warmup_steps the full max_lr: max_lr * step / warmup_steps"))
                if named == [tr("from min_lr")]:
                    fail(trf("lr_at(0, ...) is min_lr = {approx(got)} ({args}): your warmup starts at min_lr. "
                         "It starts from 0: max_lr * step / warmup_steps (min_lr is the floor of the decay)"))
                if named == ["missing"]:
                    fail(trf("lr_at(0, ...) is max_lr = {approx(got)} ({args}): the warmup is missing; it rises "
                         "linearly from 0 at step 0 to max_lr at step warmup_steps"))
                fail(trf("lr_at(0, ...) is {approx(got)}, expected 0: the warmup starts from 0 ({args})"))
            n += 1
        got, want = at(w), hi
        if not _close(got, want):
            decay_from_0 = lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * w / m))
            if _close(got, decay_from_0):
                fail(trf("lr_at(warmup_steps = {w}, ...) is {approx(got)}, expected max_lr = {approx(hi)} ({args}): "
                     "your decay starts at step 0. The cosine starts at warmup_steps: "
                     "progress = (step - warmup_steps) / (max_steps - warmup_steps)"))
            if _close(got, hi + lo):
                fail(trf("lr_at(warmup_steps = {w}, ...) is max_lr + min_lr = {approx(got)} ({args}): the cosine part "
                     "should be min_lr + (max_lr - min_lr)·(1 + cos(π·progress))/2"))
            if w > 0 and _close(got, hi * w / (w + 1)):
                fail(trf("lr_at(warmup_steps = {w}, ...) is {approx(got)}, expected max_lr = {approx(hi)} ({args}): "
                     "off by one, the warmup should reach max_lr at step warmup_steps: max_lr * step / warmup_steps"))
            fail(trf("lr_at(warmup_steps = {w}, ...) is {approx(got)}, expected max_lr = {approx(hi)} ({args})"))
        n += 1
        span = m - w
        for frac in (0.25, 0.5, 0.75):
            s = w + round(frac * span)
            p = (s - w) / span
            got, want = at(s), _lr(s, w, m, hi, lo)
            if _close(got, want):
                n += 1
                continue
            linear = hi - (hi - lo) * p
            if _close(got, linear):
                fail(trf("lr_at({s}, ...) is {approx(got)}, expected {approx(want)} ({args}): your decay is linear. "
                     "The schedule decays along a half cosine, min_lr + (max_lr - min_lr)·(1 + cos(π·progress))/2, "
                     "which stays high longer at first and flattens towards min_lr at the end"))
            if lo > 0 and _close(got, 0.5 * hi * (1 + math.cos(math.pi * p))):
                fail(trf("lr_at({s}, ...) is {approx(got)}, expected {approx(want)} ({args}): your cosine decays "
                     "to 0 instead of min_lr: min_lr + (max_lr - min_lr)·(1 + cos(π·progress))/2"))
            if _close(got, lo + 0.5 * hi * (1 + math.cos(math.pi * p))):
                fail(trf("lr_at({s}, ...) is {approx(got)}, expected {approx(want)} ({args}): the cosine part "
                     "should span max_lr - min_lr: min_lr + (max_lr - min_lr)·(1 + cos(π·progress))/2"))
            if _close(got, lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * s / m))):
                fail(trf("lr_at({s}, ...) is {approx(got)}, expected {approx(want)} ({args}): your decay starts at "
                     "step 0. The cosine starts at warmup_steps: "
                     "progress = (step - warmup_steps) / (max_steps - warmup_steps)"))
            fail(trf("lr_at({s}, ...) is {approx(got)}, expected {approx(want)} ({args}), a fraction {frac} "
                 "of the way through the decay"))
        for s in (m, m + 1, m + 10, 2 * m):
            got = at(s)
            if _close(got, lo):
                n += 1
                continue
            if lo > 0 and _close(got, 0.0):
                fail(trf("lr_at({s}, ...) is 0, expected min_lr = {approx(lo)} ({args}): from max_steps on, "
                     "the learning rate stays at min_lr"))
            if got > lo:
                fail(trf("lr_at({s}, ...) is {approx(got)}, expected min_lr = {approx(lo)} ({args}): after "
                     "max_steps the learning rate must stay at its floor min_lr; yours climbs back (a cosine "
                     "keeps going past π), or never reached it"))
            fail(trf("lr_at({s}, ...) is {approx(got)}, expected min_lr = {approx(lo)} ({args})"))
        for s in range(0, m + 5):
            got, want = at(s), _lr(s, w, m, hi, lo)
            if not _close(got, want):
                fail(trf("lr_at({s}, ...) is {approx(got)}, expected {approx(want)} ({args})"))
        n += 1
    passed(fn, n)


# --- clip_grad_norm ----------------------------------------------------------------------------

def _params(seed, scale):
    """Parameters with gradients (one without), as a model would have them."""
    with seeded(seed):
        shapes = [(3, 4), (5,), (2, 1, 3), (1,)]
        ps = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        for p in ps[:-1]:
            p.grad = torch.randn(p.shape) * scale
        ps.append(torch.nn.Parameter(torch.randn(2, 2)))   # this one has no gradient
        ps[-2].grad = torch.randn(1) * scale
    return ps


def _copy(ps):
    out = []
    for p in ps:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


class _OneShot:
    """Iterable once, like model.parameters() (a generator); shown as such in messages."""

    def __init__(self, params):
        self._it = iter(params)

    def __iter__(self):
        return self._it

    def __repr__(self):
        return "model.parameters()"


def _norm_value(got, what):
    if isinstance(got, torch.Tensor):
        if got.dim() != 0:
            fail(trf("{what} returned a tensor of shape {list(got.shape)}; expected the global norm as a "
                 "0-dim tensor, shape []"))
        return float(got.detach().item())
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        fail(trf("{what} returned a Python {type(got).__name__}; return the global norm as a 0-dim tensor, "
             "as the docstring says (and torch.nn.utils.clip_grad_norm_ does)"))
    fail(trf("{what} returned {type(got).__name__}; expected the global norm from before clipping, "
         "a 0-dim tensor"))


def check_clip_grad_norm(fn, seed: int = 0) -> None:
    n = 0
    cases = [(tr("gradients with a norm above max_norm"), 1.0, 0.5),
             (tr("gradients with a norm below max_norm"), 0.05, 5.0),
             (tr("a large max_norm and large gradients"), 30.0, 7.0)]
    for what, scale, max_norm in cases:
        base = _params(seed + n, scale)
        mine, ref = _copy(base), _copy(base)
        want = float(torch.nn.utils.clip_grad_norm_(ref, max_norm))
        grads = [p.grad for p in base if p.grad is not None]
        call_what = trf("clip_grad_norm(model.parameters(), max_norm={max_norm}) ({what})")
        got = _norm_value(call(fn, _OneShot(mine), max_norm), call_what)
        if not _close(got, want, rel=1e-4):
            sq = sum(float(g.pow(2).sum()) for g in grads)
            if _close(got, sq, rel=1e-4):
                fail(trf("{call_what} returned {approx(got)}, the squared norm; the global norm is its square "
                     "root, {approx(want)}"))
            if _close(got, sum(float(g.norm()) for g in grads), rel=1e-4):
                fail(trf("{call_what} returned {approx(got)}, the sum of the parameters' norms; the global norm is "
                     "sqrt(sum of the squares of all gradient entries) = {approx(want)}"))
            if _close(got, max(float(g.abs().max()) for g in grads), rel=1e-4):
                fail(trf("{call_what} returned {approx(got)}, the largest gradient entry; expected the L2 norm of "
                     "all gradients together, {approx(want)}"))
            if want > max_norm and _close(got, max_norm, rel=1e-4):
                fail(trf("{call_what} returned {approx(got)} = max_norm, the norm after clipping; return the norm "
                     "from before clipping ({approx(want)}), which tells how often clipping acts"))
            if got == 0.0:
                fail(trf("{call_what} returned 0, expected {approx(want)}. If you go through `parameters` twice, "
                     "note that model.parameters() is a generator, empty the second time: make a list first"))
            fail(trf("{call_what} returned {approx(got)}, expected the global norm {approx(want)}"))
        for i, (p, r, b) in enumerate(zip(mine, ref, base)):
            if not torch.equal(p.detach(), b.detach()):
                fail(trf("{call_what} changed the parameters themselves (parameter {i}); only .grad may change"))
            if r.grad is None:
                if p.grad is not None:
                    fail(trf("{call_what} gave a gradient to parameter {i}, which had none; skip such parameters"))
                continue
            if torch.allclose(p.grad, r.grad, rtol=1e-4, atol=1e-7):
                continue
            if torch.equal(p.grad, b.grad):
                again = _copy(base)
                call(fn, list(again), max_norm)
                if torch.allclose(again[i].grad, r.grad, rtol=1e-4, atol=1e-7):
                    fail(trf("{call_what}: the gradients did not change when `parameters` was a generator, though "
                         "they did for a list. model.parameters() can be iterated only once: make a list first"))
                fail(trf("{call_what}: the gradients did not change, but their norm {approx(want)} exceeds max_norm "
                     "= {max_norm}. Scale them in place, p.grad.mul_(factor); rebinding a name changes nothing"))
            if want <= max_norm:
                fail(trf("{call_what}: you changed the gradients, but their global norm {approx(want)} is already "
                     "below max_norm = {max_norm}: the factor max_norm / norm is capped at 1 (never scale up)"))
            per_param = b.grad * min(1.0, max_norm / (float(b.grad.norm()) + 1e-6))
            if torch.allclose(p.grad, per_param, rtol=1e-4, atol=1e-7):
                fail(trf("{call_what}: you clipped each parameter's gradient by its own norm. Clipping uses the global "
                     "norm of all gradients together, so that every gradient is scaled by the same factor and the "
                     "update keeps its direction"))
            expect_close(p.grad, r.grad, trf("{call_what}: the gradient of parameter {i} after clipping"),
                         atol=1e-7, rtol=1e-4)
        n += 1
    passed(fn, n)


# --- token_accuracy ----------------------------------------------------------------------------

def _acc_cases(seed):
    with seeded(seed):
        cases = []
        t = torch.randint(0, 7, (2, 5))
        t[0, 3:], t[1, 4] = -100, -100
        cases.append((tr("logits [2, 5, 7] with three ignored positions"), torch.randn(2, 5, 7), t, -100))
        cases.append((tr("logits [4, 3]"), torch.randn(4, 3), torch.randint(0, 3, (4,)), -100))
        cases.append((tr("logits [1, 1, 2]"), torch.tensor([[[0.3, 1.0]]]), torch.tensor([[1]]), -100))
        t = torch.randint(1, 6, (3, 4))
        t[:, 0] = 0
        cases.append((tr("logits [3, 4, 6] with ignore_index = 0"), torch.randn(3, 4, 6), t, 0))
    # make sure the labels agree with the argmax at some positions but not all
    for _, logits, labels, ignore in cases[:2] + cases[3:]:
        keep = (labels != ignore).flatten().nonzero().flatten()
        labels.view(-1)[keep[::2]] = logits.argmax(-1).view(-1)[keep[::2]]
    # with ignore_index = 0, one ignored position's argmax is 0: counting it (ignoring -100
    # instead of 0) then gives another value than counting the ignored positions in the mean
    logits = cases[3][1]
    logits[0, 0, 0] = logits[0, 0].max() + 1.0
    return cases


def check_token_accuracy(fn, seed: int = 0) -> None:
    n = 0
    for what, logits, labels, ignore in _acc_cases(seed):
        args = (logits.clone(), labels.clone())
        got = call(fn, *args) if ignore == -100 else call(fn, *args, ignore_index=ignore)
        if not torch.equal(args[0], logits) or not torch.equal(args[1], labels):
            fail(trf("token_accuracy({what}) changed its input in place (the caller's logits or labels); "
                 "compute on new tensors, e.g. a boolean mask labels != ignore_index"))
        if isinstance(got, torch.Tensor):
            fail(trf("token_accuracy({what}) returned a tensor; return a Python float (use .item())"))
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            fail(trf("token_accuracy({what}) returned {type(got).__name__}, expected a float"))
        keep = labels != ignore
        hits = (logits.argmax(-1) == labels) & keep
        want = hits.sum().item() / keep.sum().item()
        if _close(got, want, rel=1e-6):
            n += 1
            continue
        if got > 1:
            fail(trf("token_accuracy({what}) is {got}: a fraction lies in [0, 1]; divide the number of correct "
                 "positions by the number of positions counted"))
        if _close(got, hits.sum().item() / labels.numel(), rel=1e-6):
            fail(trf("token_accuracy({what}) is {approx(got)}, expected {approx(want)}: the ignored positions "
                 "count in your denominator; average over the positions whose label is not ignore_index"))
        if ignore != -100:
            keep100 = labels != -100
            alt = ((logits.argmax(-1) == labels) & keep100).sum().item() / keep100.sum().item()
            if _close(got, alt, rel=1e-6):
                fail(trf("token_accuracy({what}) is {approx(got)}, expected {approx(want)}: you ignored the labels "
                     "equal to -100 rather than those equal to the ignore_index argument (here 0)"))
        fail(trf("token_accuracy({what}) is {approx(got)}, expected {approx(want)} ({hits.sum().item()} of "
             "{keep.sum().item()} counted positions right)"))
    passed(fn, n)
