"""Checks for chapter 12, flash attention: the tiled forward, its backward, a Triton kernel.

Every check compares with PyTorch's own attention (F.scaled_dot_product_attention and autograd,
in float64) on shapes chosen so that the known bugs each show a different symptom: one block
first (no online softmax involved), then several blocks, lengths that are no multiple of the
block, causal with fewer and with more queries than keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..i18n import tr, trf
from . import CheckFailed, NotImplementedYet, call, expect_tensor, fail, name_of, passed, seeded

# the exercises of chapter 12, in the chapter's order (check_merge is a helper chapter 17 reuses)
__all__ = ["check_flash_attention_forward", "check_flash_attention_backward",
           "check_flash_attention_triton", "check_merge_attention"]

LOG2E = 1 / math.log(2)


# --- the oracle ----------------------------------------------------------------------------------

def _visible(n_q: int, n_k: int, top_left: bool = False) -> torch.Tensor:
    """Causal mask, bottom-right aligned (query i sees key j <= i + n_k - n_q) or top-left."""
    return torch.ones(n_q, n_k, dtype=torch.bool).tril(0 if top_left else n_k - n_q)


def reference(q, k, v, causal=False, top_left=False):
    """(o, lse) from F.scaled_dot_product_attention and torch.logsumexp, in float64. Rows that see
    no key get o = 0 and lse = -inf."""
    q, k, v = (t.detach().double().cpu() for t in (q, k, v))
    n_q, n_k = q.shape[-2], k.shape[-2]
    mask = _visible(n_q, n_k, top_left) if causal else torch.ones(n_q, n_k, dtype=torch.bool)
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    lse = torch.logsumexp(s.masked_fill(~mask, -math.inf), -1)
    has = mask.any(-1)
    o = torch.zeros_like(q)
    if has.any():
        o[..., has, :] = F.scaled_dot_product_attention(q[..., has, :], k, v,
                                                        attn_mask=mask[has])
    return o, lse


def reference_grads(q, k, v, do, causal=False, top_left=False):
    """(dq, dk, dv) of reference()'s o by autograd, in float64."""
    q, k, v = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    n_q, n_k = q.shape[-2], k.shape[-2]
    mask = _visible(n_q, n_k, top_left) if causal else torch.ones(n_q, n_k, dtype=torch.bool)
    has = mask.any(-1)
    o = F.scaled_dot_product_attention(q[..., has, :], k, v, attn_mask=mask[has])
    o.backward(do.detach().double().cpu()[..., has, :])
    return q.grad, k.grad, v.grad


def _grads_by_formula(q, k, v, o, lse, do, mask):
    """The backward's formulas in float64 with a given mask, to recognize a wrong mask."""
    q, k, v, o, lse, do = (t.detach().double().cpu() for t in (q, k, v, o, lse, do))
    scale = 1 / math.sqrt(q.shape[-1])
    s = ((q @ k.transpose(-2, -1)) * scale).masked_fill(~mask, -math.inf)
    p = torch.exp(s - lse.masked_fill(lse == -math.inf, math.inf)[..., None])
    ds = p * (do @ v.transpose(-2, -1) - (do * o).sum(-1, keepdim=True))
    return ds @ k * scale, ds.transpose(-2, -1) @ q * scale, p.transpose(-2, -1) @ do


def _cases(seed: int, ds=(16, 32, 64, 128)):
    """(batch dims, n_q, n_k, d, causal, block_q, block_k, what, dtype) in the order the check
    runs them."""
    f32, f64 = torch.float32, torch.float64
    with seeded(seed):
        r = lambda lo, hi: int(torch.randint(lo, hi, ()))
        rand = [((2, 3), r(20, 90), r(20, 90), ds[r(0, len(ds))], bool(r(0, 2)), 16, 32, "random",
                 f32)]
    return [
        ((2,), 5, 7, 16, False, 64, 64, tr("one block"), f32),
        ((1,), 64, 96, 32, False, 32, 32, tr("several blocks"), f32),
        ((3,), 45, 70, 16, False, 16, 32, tr("lengths that are no multiple of the block"), f32),
        ((2,), 37, 100, 16, True, 16, 16, tr("causal, fewer queries than keys"), f32),
        ((2,), 50, 20, 16, True, 16, 16, tr("causal, more queries than keys"), f32),
        ((), 33, 33, ds[-1], True, 32, 16, tr("causal, square"), f32),
    ] + rand + [((2,), 41, 57, 32, True, 16, 16, tr("float64 inputs"), f64)]


def _tolerance(dtype, atol32: float, rtol32: float = 1e-4) -> tuple[float, float]:
    """(atol, rtol) for an answer in dtype: float32's, scaled by the ratio of the machine epsilons,
    so that float64 inputs must give float64 accuracy (about 1e-15), not float32's (1e-7)."""
    ratio = torch.finfo(dtype).eps / torch.finfo(torch.float32).eps
    return atol32 * ratio, rtol32 * ratio


def _float32_inside(head: str, what: str, err: float) -> str:
    verb = tr("agree") if "," in what else tr("agrees")
    return (trf("{head}: your {what} {verb} with attention only to float32 precision (largest "
            "error {err:.1e}; float64 arithmetic gives about 1e-15): the inputs are float64, but "
            "part of your computation is float32 (a buffer made with dtype=torch.float32, a "
            ".float(), a float32 constant tensor?). Compute in the inputs' dtype"))


def _make(batch, n_q, n_k, d, seed, dtype=torch.float32, spread=2.0):
    """q, k, v with scores spread wide enough that the running max changes between blocks."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, n_q, d, generator=g, dtype=dtype) * spread
    k = torch.randn(*batch, n_k, d, generator=g, dtype=dtype)
    v = torch.randn(*batch, n_k, d, generator=g, dtype=dtype)
    return q, k, v


def _max_error(got, want) -> float:
    g, w = got.detach().double().cpu(), want.double()
    fin = torch.isfinite(w)
    return (g[fin] - w[fin]).abs().max().item() if fin.any() else 0.0


def _close(got, want, atol, rtol=1e-4) -> bool:
    g, w = got.detach().double().cpu(), want.double()
    both_inf = torch.isinf(w) & (g == w)
    return bool((both_inf | ((g - w).abs() <= atol + rtol * w.abs())).all())


def _where(got, want, what, atol, rtol=1e-4) -> str:
    g, w = got.detach().double().cpu(), want.double()
    bad = ~((torch.isinf(w) & (g == w)) | ((g - w).abs() <= atol + rtol * w.abs()))
    idx = tuple(torch.nonzero(bad)[0].tolist())
    return (trf("{what} differs from attention's: at index {list(idx)} you have "
            "{g[idx].item():.6g}, expected {w[idx].item():.6g} ({int(bad.sum())} of "
            "{bad.numel()} entries wrong)"))


def _describe(batch, n_q, n_k, d, causal, block_q=None, block_k=None) -> str:
    blocks = "" if block_q is None else trf(", block_q={block_q}, block_k={block_k}")
    return (trf("q {list(batch) + [n_q, d]}, k and v {list(batch) + [n_k, d]}, causal={causal}")
            + blocks)


def _cut_short(g, q, k, v, n_q, n_k, block_q, block_k, atol):
    """If o is causal attention in which every block of block_q queries saw a prefix of its
    visible keys made of whole key blocks, and some block saw less than it should (the key loop
    stopped early): (first row, last row, keys seen, keys needed) of the first such block."""
    q, k, v = (t.detach().double().cpu() for t in (q, k, v))
    vis, cols = _visible(n_q, n_k), torch.arange(n_k)
    short = None
    for i in range(0, n_q, block_q):
        last = min(i + block_q, n_q) - 1
        need = max(0, min(n_k, last + 1 + n_k - n_q))  # keys [0, need) are seen by some row
        cuts = [need] + [c for c in range(0, need, block_k)][::-1]
        for c in cuts:
            o_c, _ = _partial(q[..., i:last + 1, :], k, v, vis[i:last + 1] & (cols < c))
            if _close(g[..., i:last + 1, :], o_c, atol * 10, 1e-3):
                if c < need and short is None:
                    short = (i, last, c, need)
                break
        else:
            return None
    return short


def _diagnose_o(got, q, k, v, want, causal, n_q, n_k, block_ks, atol, head,
                blocks=()) -> None:
    """o is wrong: name the mistake if its signature is recognizable, else say where. blocks:
    the (block_q, block_k) the learner's loops may use."""
    g = got.detach().double().cpu()
    if causal and n_q != n_k:
        top_left, _ = reference(q, k, v, causal=True, top_left=True)
        if _close(g, top_left, atol):
            fail(trf("{head}: your o is causal attention aligned top-left (query i sees keys "
                 "j <= i). With n_q={n_q} queries and n_k={n_k} keys the queries are the LAST "
                 "n_q positions: query i sees key j when j <= i + n_k - n_q (bottom-right)"))
    for block_q, block_k in blocks if causal else ():
        short = _cut_short(g, q, k, v, n_q, n_k, block_q, block_k, atol)
        if short:
            first, last, seen, need = short
            fail(trf("{head}: some queries never saw keys they should: your causal key loop stops "
                 "too early. The queries {first}..{last} (one block) saw keys 0..{seen - 1} "
                 "only, but the last of them sees keys up to {need - 1} (query i sees key j "
                 "when j <= i + n_k - n_q). Skip only the key blocks past what the block's LAST "
                 "query sees: stop the key loop at min(n_k, first + rows in the block + n_k - "
                 "n_q), rounded UP to a whole key block"))
    has = want.abs().sum(-1) > 0
    if torch.isnan(g).any():
        if causal and n_q > n_k and torch.isnan(g[..., ~has, :]).any():
            fail(trf("{head}: o is NaN at the first {n_q - n_k} queries, which see no key at all "
                 "(causal with n_q > n_k). Their o must be 0 (and lse = -inf): guard exp(-inf - "
                 "(-inf)) by using 0 as the max of a row that has seen no key yet, and divide "
                 "by l only where l > 0"))
        fail(trf("{head}: o contains NaN, expected finite values"))
    for factor, name in ((LOG2E, "log2(e)"), (1 / LOG2E, tr("ln 2"))):
        if _close(g, reference(q * factor, k, v, causal)[0], atol * 10, 1e-3):
            fail(trf("{head}: your o is attention with every score multiplied by {name}: you mixed "
                 "exp and exp2. exp(x) = exp2(x · log2 e): scale the scores by log2(e) AND use "
                 "exp2, or do neither"))
    for block in block_ks:  # the learner's block_k (a Triton kernel's: any power of 2)
        pad = -n_k % block
        if not pad or causal:
            continue
        kp = torch.cat([k.double(), k.new_zeros(*k.shape[:-2], pad, k.shape[-1]).double()], -2)
        vp = torch.cat([v.double(), v.new_zeros(*v.shape[:-2], pad, v.shape[-1]).double()], -2)
        padded, _ = reference(q, kp, vp)
        if _close(g, padded, atol * 10, 1e-3):
            fail(trf("{head}: your o attends to {pad} extra zero keys: n_k={n_k} is no multiple of "
                 "the key block ({block}), and the padding of the last key block takes part in "
                 "the softmax. Mask the keys j >= n_k (score -inf) before the softmax"))
    num = (g * want).sum(-1)
    den = (want * want).sum(-1)
    c = torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(num))
    if ((c - 1).abs() > 1e-3).any() and _close(g, c[..., None] * want, atol * 10, 1e-3):
        fail(trf("{head}: each row of your o is the right one times a factor (between "
             "{c.min().item():.3g} and {c.max().item():.3g}): did you forget the final division "
             "by the running sum l? o = acc / l"))


def check_flash_attention_forward(fn, seed: int = 0) -> None:
    """fn(q, k, v, causal, block_q, block_k) must return (o, lse) equal to attention's."""
    cases = _cases(seed)
    for n, (batch, n_q, n_k, d, causal, bq, bk, what, dtype) in enumerate(cases):
        q, k, v = _make(batch, n_q, n_k, d, seed + n, dtype)
        head = (f"{name_of(fn)}({_describe(batch, n_q, n_k, d, causal, bq, bk)}) [{what}]")
        out = call(fn, q, k, v, causal=causal, block_q=bq, block_k=bk)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            fail(trf("{head} returned {type(out).__name__}, expected a pair (o, lse)"))
        o, lse = out
        expect_tensor(o, f"{head}: o")
        expect_tensor(lse, trf("{head}: lse"))
        if tuple(o.shape) != tuple(q.shape):
            fail(trf("{head}: o has shape {list(o.shape)}, expected q's shape {list(q.shape)}"))
        if tuple(lse.shape) != tuple(q.shape[:-1]):
            fail(trf("{head}: lse has shape {list(lse.shape)}, expected {list(q.shape[:-1])}: one "
                 "log-sum-exp per query"))
        if o.dtype != q.dtype:
            fail(trf("{head}: o has dtype {o.dtype}, expected q's dtype {q.dtype}"))
        want_o, want_lse = reference(q, k, v, causal)
        atol, rtol = _tolerance(q.dtype, 2e-5)
        if not _close(o, want_o, atol, rtol):
            if dtype == torch.float64 and _close(o, want_o, 2e-5):
                fail(_float32_inside(head, "o", _max_error(o, want_o)))
            _diagnose_o(o, q, k, v, want_o, causal, n_q, n_k, [bk], max(atol, 2e-5), head,
                        [(bq, bk)])
            if what == tr("several blocks"):
                fail(_where(o, want_o, head + ": o", atol) + tr(". One block was right, several "
                     "are not: when the running max m grows, rescale what was summed under the "
                     "old max, acc AND l, by rho = exp(m_old - m_new) before adding the new "
                     "block"))
            fail(_where(o, want_o, head + ": o", atol, rtol))
        if not _close(lse, want_lse, atol, rtol):
            g = lse.detach().double()
            finite = torch.isfinite(want_lse)
            if dtype == torch.float64 and _close(lse, want_lse, 2e-5):
                fail(_float32_inside(head, "lse", _max_error(lse, want_lse)))
            if _close(g[finite], want_lse[finite] * LOG2E, max(atol, 2e-5)):
                fail(trf("{head}: your lse is in base 2 (it equals the natural one times log2(e) = "
                     "{LOG2E:.4f}). The backward computes P = exp(S - lse), so return the "
                     "natural log: multiply a base-2 lse by ln 2"))
            if causal and n_q > n_k and not (g[..., ~finite] == -math.inf).all():
                bad = g[..., ~finite]
                fail(trf("{head}: the first {n_q - n_k} queries see no key, so their lse is "
                     "log 0 = -inf; yours has {bad.flatten()[0].item():.4g} there"))
            fail(_where(lse, want_lse, head + tr(": lse"), atol, rtol) + tr(". lse = m + log(l), the "
                 "running max plus the log of the running sum, per query"))
    passed(fn, len(cases))


# --- backward ------------------------------------------------------------------------------------

def check_flash_attention_backward(fn, seed: int = 0) -> None:
    """fn(q, k, v, o, lse, do, causal, block_q, block_k) must return attention's (dq, dk, dv)."""
    cases = _cases(seed)
    for n, (batch, n_q, n_k, d, causal, bq, bk, what, dtype) in enumerate(cases):
        q, k, v = _make(batch, n_q, n_k, d, seed + n, dtype)
        do = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 100 + n),
                         dtype=dtype)
        o, lse = (t.to(dtype) for t in reference(q, k, v, causal))
        head = f"{name_of(fn)}({_describe(batch, n_q, n_k, d, causal, bq, bk)}) [{what}]"
        out = call(fn, q, k, v, o, lse, do, causal=causal, block_q=bq, block_k=bk)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            fail(trf("{head} returned {type(out).__name__}, expected a triple (dq, dk, dv)"))
        for name, got, like in zip(("dq", "dk", "dv"), out, (q, k, v)):
            expect_tensor(got, trf("{head}: {name}"))
            if tuple(got.shape) != tuple(like.shape):
                fail(trf("{head}: {name} has shape {list(got.shape)}, expected {list(like.shape)}"))
        want = reference_grads(q, k, v, do, causal)
        atol32 = 2e-4 * math.sqrt(n_k)
        atol, rtol = _tolerance(dtype, atol32, 1e-3)
        scale = 1 / math.sqrt(d)
        names = ("dq", "dk", "dv")
        wrong = [nm for nm, g, w in zip(names, out, want) if not _close(g, w, atol, rtol)]
        if not wrong:
            continue
        if dtype == torch.float64 and all(_close(g, w, atol32, 1e-3) for g, w in zip(out, want)):
            fail(_float32_inside(head, ", ".join(wrong),
                                 max(_max_error(g, w) for g, w in zip(out, want))))
        atol = max(atol, atol32)
        g = {nm: t.detach().double().cpu() for nm, t in zip(names, out)}
        w = dict(zip(names, want))
        if any(torch.isnan(g[nm]).any() for nm in wrong):
            hint = (trf(" The first {n_q - n_k} queries see no key (causal, n_q > n_k) and have "
                    "lse = -inf: exp(s - lse) is NaN there; make their P 0 (e.g. use +inf as "
                    "their lse)")) if causal and n_q > n_k else ""
            fail(trf("{head}: {', '.join(wrong)} contain NaN, expected finite values.") + hint)
        if causal and n_q != n_k:
            tl = _grads_by_formula(q, k, v, o, lse, do, _visible(n_q, n_k, top_left=True))
            if all(_close(g[nm], t, atol, 1e-3) for nm, t in zip(names, tl)):
                fail(trf("{head}: your gradients are those of causal attention aligned top-left. "
                     "Query i sees key j when j <= i + n_k - n_q (bottom-right), in the "
                     "backward as in the forward"))
        for nm in ("dq", "dk"):
            if nm in wrong and _close(g[nm] * scale, w[nm], atol, 1e-3):
                fail(trf("{head}: your {nm} is the right one times sqrt(d) = {math.sqrt(d):.4g}: "
                     "S = QK^T / sqrt(d), so d{nm[1].upper()} = dS {'K' if nm == 'dq' else 'Q'}"
                     " times the scale 1/sqrt(d)"))
        if "dv" not in wrong:
            fail(_where(out[names.index(wrong[0])], w[wrong[0]], trf("{head}: {wrong[0]}"), atol,
                        1e-3) + tr(". dv = P^T dO is right, so P is; the mistake is in "
                 "dS = P ∘ (dP - D) with dP = dO V^T and D = rowsum(dO ∘ O) (not rowsum(dO))"))
        fail(_where(out[2], w["dv"], trf("{head}: dv"), atol, 1e-3) + tr(". dv = P^T dO is wrong, "
             "so your recomputed P is: P = exp(S - lse) with S = QK^T / sqrt(d), masked as in "
             "the forward, and lse the natural log-sum-exp"))
    passed(fn, len(cases))


# --- Triton forward ------------------------------------------------------------------------------

def _triton_cases(seed: int):
    with seeded(seed):
        r = lambda lo, hi: int(torch.randint(lo, hi, ()))
        rand = ((1, 2), r(20, 100), r(20, 100), (16, 32, 64)[r(0, 3)], bool(r(0, 2)), "random")
    return [
        ((1,), 5, 7, 16, False, tr("one block")),
        ((2,), 64, 128, 32, False, tr("several blocks")),
        ((1,), 45, 70, 16, False, tr("lengths that are no multiple of the block")),
        ((2,), 37, 100, 16, True, tr("causal, fewer queries than keys")),
        ((1,), 70, 45, 32, True, tr("causal, more queries than keys")),
        rand,
    ]


def _low_precision_cases(seed: int):
    with seeded(seed):
        r = lambda lo, hi: int(torch.randint(lo, hi, ()))
        n = r(500, 1100)
    return [((2, 4), n, n, 64, False), ((2, 4), n, n + 37, 128, True), ((1, 8), 1, n, 128, True)]


def _check_triton_lse(lse, q, k, causal, want, atol, head) -> None:
    """The lse the kernel stores, which the Triton backward reads."""
    n_q, n_k = q.shape[-2], k.shape[-2]
    lse = expect_tensor(lse, trf("{head}: lse"))
    if tuple(lse.shape) != tuple(q.shape[:-1]):
        fail(trf("{head}: the lse your kernel stores has shape {list(lse.shape)}, expected "
             "{list(q.shape[:-1])}"))
    if _close(lse, want, atol):
        return
    g = lse.detach().double().cpu()
    finite = torch.isfinite(want)
    if _close(g[finite], want[finite] * LOG2E, atol):
        fail(trf("{head}: o is right, but the lse your kernel stores is in base 2 (it equals the "
             "natural one times log2(e) = {LOG2E:.4f}). The backward recomputes "
             "P = exp(S - lse) from it: store (m + log2(l)) * ln 2, the natural log"))
    if causal and n_q > n_k and not (g[..., ~finite] == -math.inf).all():
        fail(trf("{head}: the first {n_q - n_k} queries see no key, so the lse your kernel stores "
             "for them must be log 0 = -inf; yours is {g[..., ~finite].flatten()[0].item():.4g}"))
    fail(_where(lse, want, head + tr(": the lse your kernel stores"), atol) + tr(". o is right, so m "
         "and l are; the lse is (m + log2(l)) * ln 2 if you work in base 2, m + log(l) if not"))


def check_flash_attention_triton(fn, seed: int = 0) -> None:
    """fn(q, k, v, causal) must equal attention: fp32 on awkward shapes (exact to 2e-5, under the
    interpreter on a CPU), o and the lse the kernel stores (fn(..., return_lse=True), what the
    backward reads), and on a GPU also fp16/bf16 outputs within twice PyTorch's own error."""
    from transformer_course.checks.machine import _bounds_checked, _chain_mentions
    from transformer_course.machine import load_triton, pick_device

    if load_triton() is None:
        fail(tr("Triton is not available on this machine (it runs on Linux, natively on an NVIDIA/AMD "
             "GPU or in its CPU interpreter), so flash_attention_triton cannot be checked here: run "
             "this chapter on Linux or in Colab"))
    device = pick_device(verbose=False)
    cases = _triton_cases(seed)
    for n, (batch, n_q, n_k, d, causal, what) in enumerate(cases):
        q, k, v = _make(batch, n_q, n_k, d, seed + n)
        head = f"{name_of(fn)}({_describe(batch, n_q, n_k, d, causal)}) [{what}]"
        with _bounds_checked() as outside:
            try:
                # with the lse the kernel stores, what the backward (FlashAttentionTriton) reads
                out = call(fn, q.to(device), k.to(device), v.to(device), causal=causal,
                           return_lse=True)
            except NotImplementedYet:
                raise
            except CheckFailed as e:
                if outside:
                    kind, count = outside[0]
                    action = tr("read") if kind == "read" else tr("write")
                    raise CheckFailed(trf("{head}: your kernel tried to {action} {count} elements "
                                      "outside the tensors: mask every tl.load and tl.store with "
                                      "the rows < n_q, keys < n_k and dims < d it may touch")) from None
                if _chain_mentions(e, "NotImplementedError"):
                    raise NotImplementedYet(
                        tr("flash_forward_kernel is not implemented yet: replace `raise "
                        "NotImplementedError()` in the kernel with your code, then run this "
                        "check again.")) from None
                raise
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            fail(trf("{head} with return_lse=True returned {type(out).__name__}, expected the pair "
                 "(o, lse) of flash_forward_triton (keep the given wrapper)"))
        o, lse = out
        expect_tensor(o, trf("{head}: the output"))
        if tuple(o.shape) != tuple(q.shape):
            fail(trf("{head}: the output has shape {list(o.shape)}, expected {list(q.shape)}"))
        if o.dtype != q.dtype:
            fail(trf("{head}: the output has dtype {o.dtype}, expected {q.dtype}"))
        want, want_lse = reference(q, k, v, causal)
        atol = 2e-5 if device.type == "cpu" else 1e-4
        if not _close(o, want, atol):
            sizes = [128, 64, 32, 16]  # the kernel's blocks: larger first (a cut at 32 rows
            # is also one at 16, and the message should name the kernel's own block)
            _diagnose_o(o, q, k, v, want, causal, n_q, n_k, sizes, atol, head,
                        [(a, b) for a in sizes for b in sizes])
            if what == tr("several blocks"):
                fail(_where(o, want, head, atol) + tr(". One block was right, several are not: "
                     "when the running max m grows, rescale acc and l by rho = exp(m_old - "
                     "m_new) (exp2 of the difference, if you work in base 2)"))
            if what == tr("lengths that are no multiple of the block"):
                fail(_where(o, want, head, atol) + tr(". Blocks that run past n_q or n_k need masks:"
                     " keys j >= n_k must get the score -inf, not 0"))
            fail(_where(o, want, head, atol))
        _check_triton_lse(lse, q, k, causal, want_lse, atol, head)
    if device.type == "cuda":
        for batch, n_q, n_k, d, causal in _low_precision_cases(seed):
            q, k, v = _make(batch, n_q, n_k, d, seed, spread=1.0)
            ref, _ = reference(q, k, v, causal)
            for dtype in (torch.float16, torch.bfloat16):
                ql, kl, vl = (t.to(device, dtype) for t in (q, k, v))
                o = call(fn, ql, kl, vl, causal=causal)
                head = f"{name_of(fn)}({_describe(batch, n_q, n_k, d, causal)}, {dtype})"
                expect_tensor(o, head)
                if o.dtype != dtype:
                    fail(trf("{head}: the output has dtype {o.dtype}, expected {dtype}"))
                s = (ql @ kl.transpose(-2, -1)) / math.sqrt(d)
                mask = _visible(n_q, n_k).to(device) if causal else None
                if mask is not None:
                    s = s.masked_fill(~mask, float("-inf"))
                torch_o = torch.softmax(s, -1) @ vl  # PyTorch in the same dtype
                ours = (o.double().cpu() - ref).abs().max().item()
                theirs = (torch_o.double().cpu() - ref).abs().max().item()
                if not ours <= 2 * theirs + 1e-5:
                    fail(trf("{head}: your error against an fp32 reference is {ours:.3g}, more than "
                         "twice PyTorch's own {dtype} error {theirs:.3g} (flash-attention's "
                         "rule): accumulate m, l and acc in fp32"))
        cases = cases + _low_precision_cases(seed)
    passed(fn, len(cases))


# --- merge_attention -----------------------------------------------------------------------------

def _partial(q, k, v, mask):
    """(o, lse) of attention restricted to a mask, float64; rows with no key: 0 and -inf."""
    s = ((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])).masked_fill(~mask, -math.inf)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.masked_fill(lse == -math.inf, math.inf)[..., None])
    return p @ v, lse


def check_merge_attention(fn, seed: int = 0) -> None:
    """fn(o1, lse1, o2, lse2) must give attention over the union of two parts of the keys."""
    cases = [((2,), 6, 10, 16, 4, False, 1.0, tr("two parts")),
             ((1,), 5, 12, 16, 7, False, 40.0, tr("large scores (lse far above 88)")),
             ((3,), 9, 5, 8, 2, True, 1.0, tr("causal with n_q > n_k: rows with no key"))]
    with seeded(seed):
        cases.append(((2, 2), int(torch.randint(2, 30, ())), 40, 32, int(torch.randint(1, 39, ())),
                      True, 1.0, "random"))
    check_merge(fn, seed, [(batch, n_q, n_k, d, split, spread, _visible(n_q, n_k) if causal
                            else torch.ones(n_q, n_k, dtype=torch.bool), what)
                           for batch, n_q, n_k, d, split, causal, spread, what in cases])


def check_merge(fn, seed: int, cases: list) -> None:
    """The merge checks of chapters 12 and 17: for each (batch, n_q, n_k, d, split, spread,
    mask, what), fn must merge the partial attentions over keys [:split] and [split:] into
    attention over all keys under mask [n_q, n_k]."""
    for n, (batch, n_q, n_k, d, split, spread, mask, what) in enumerate(cases):
        q, k, v = (t.double() for t in _make(batch, n_q, n_k, d, seed + n, spread=spread))
        o1, lse1 = _partial(q, k[..., :split, :], v[..., :split, :], mask[:, :split])
        o2, lse2 = _partial(q, k[..., split:, :], v[..., split:, :], mask[:, split:])
        want_o, want_lse = _partial(q, k, v, mask)
        args = [t.float() for t in (o1, lse1, o2, lse2)]
        head = (trf("{name_of(fn)}(o1, lse1, o2, lse2) for o1 {list(o1.shape)}, keys split "
                "{split} + {n_k - split} [{what}]"))
        out = call(fn, *args)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            fail(trf("{head} returned {type(out).__name__}, expected a pair (o, lse)"))
        o, lse = out
        expect_tensor(o, f"{head}: o")
        expect_tensor(lse, trf("{head}: lse"))
        if tuple(o.shape) != tuple(o1.shape) or tuple(lse.shape) != tuple(lse1.shape):
            fail(trf("{head}: o and lse have shapes {list(o.shape)} and {list(lse.shape)}, "
                 "expected {list(o1.shape)} and {list(lse1.shape)}"))
        atol = 1e-4 if spread > 1 else 2e-5
        if _close(o, want_o, atol) and _close(lse, want_lse, atol):
            continue
        _diagnose_merge(o.detach().double(), lse.detach().double(), o1, lse1, o2, lse2,
                        want_o, want_lse, atol, head)
    passed(fn, len(cases))


def _diagnose_merge(g, gl, o1, lse1, o2, lse2, want_o, want_lse, atol, head) -> None:
    if not torch.isfinite(g).all():
        both = (lse1 == -math.inf) & (lse2 == -math.inf)
        if both.any() and not torch.isfinite(g[both]).all():
            fail(trf("{head}: o is NaN where a query saw no key in either part (lse1 = lse2 "
                 "= -inf). There o must be 0 and lse -inf: compute the weights "
                 "exp(lse1 - lse) with 0 in place of lse = -inf"))
        fail(trf("{head}: o contains inf or NaN: exp(lse) overflows float32 above lse ≈ 88. "
             "Never exponentiate an lse alone: lse = logaddexp(lse1, lse2), weights "
             "exp(lse1 - lse) and exp(lse2 - lse)"))
    if _close(g, (o1 + o2) / 2, atol):
        fail(trf("{head}: your o is the plain average of o1 and o2, but the parts carry "
             "different weight: part 1 holds the fraction exp(lse1 - lse) of the softmax"))
    if _close(gl, want_lse / math.log(2), atol) or _close(gl, torch.logaddexp2(lse1, lse2),
                                                          atol):
        fail(trf("{head}: your lse is in base 2 (log2 / exp2 / logaddexp2), but lse1 and "
             "lse2 are natural logs, log sum exp(s), and so must the result be: use "
             "torch.logaddexp and torch.exp"))
    if _close(g, want_o, atol) and _close(gl, torch.maximum(lse1, lse2), atol):
        fail(trf("{head}: o is right but your lse is max(lse1, lse2): the max is only the "
             "larger part's normalizer. lse = log(exp(lse1) + exp(lse2)), computed "
             "stably by torch.logaddexp"))
    if not _close(g, want_o, atol):
        fail(_where(g, want_o, head + ": o", atol))
    fail(_where(gl, want_lse, head + tr(": lse"), atol) + tr(". lse = log(exp(lse1) + "
         "exp(lse2)), computed stably by torch.logaddexp"))
