"""Checks for chapter 04 (multi-head attention): splitting and merging heads, the module itself,
the per-head attention weights, its FLOP count, and loading nn.MultiheadAttention's weights.

The oracles are exact properties (head h of position t is the slice x[b, t, h*d_head:(h+1)*d_head])
and PyTorch's own ``nn.MultiheadAttention`` with the learner's weights copied into it, in float64.
When an output is wrong, the checks recompute it with the usual mistakes (no W_O, the scale
sqrt(d_model), heads split or merged without the transpose, the mask ignored, ...) and name the
one that reproduces it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..i18n import tr, trf
from . import CheckFailed, call, describe, expect_close, expect_tensor, fail, name_of, passed, seeded

__all__ = [
    "check_split_heads",
    "check_merge_heads",
    "check_MultiHeadAttention",
    "check_head_weights",
    "check_mha_flops",
    "check_from_torch",
]


def _shape(t) -> str:
    return str(list(t.shape))


def _call_strided(fn, *args, what: str, **kwargs):
    """Call fn where a transposed (non-contiguous) tensor is involved; name the usual cause when
    `.view` refuses it."""
    try:
        return call(fn, *args, **kwargs)
    except CheckFailed as e:
        if "view size is not compatible" in str(e):  # PyTorch's own words
            fail(trf("{what}: .view() refused: it needs the tensor's memory laid out in order, and a transposed "
                 "tensor (split_heads returns one, and .transpose makes one) is not. Use .reshape(), which "
                 "copies only when it must (or .contiguous().view())"))
        raise


def _same(a: torch.Tensor, b: torch.Tensor, atol: float = 0.0) -> bool:
    return tuple(a.shape) == tuple(b.shape) and bool(
        torch.allclose(a.detach().double().cpu(), b.detach().double().cpu(), atol=atol, rtol=0))


# --- split_heads / merge_heads ----------------------------------------------------------------

def _split_oracle(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Head h gets the contiguous block of features h*d_head .. (h+1)*d_head - 1 (exact, by slicing)."""
    d = x.shape[-1] // n_heads
    return torch.stack([x[..., h * d:(h + 1) * d] for h in range(n_heads)], dim=1)


SPLIT_CASES = [  # B, T, D, n_heads
    (2, 5, 12, 4),
    (1, 1, 8, 2),    # one position
    (3, 7, 6, 6),    # d_head = 1
    (2, 4, 9, 1),    # one head
    (1, 3, 10, 5),
]


def check_split_heads(fn, seed: int = 0) -> None:
    """split_heads(x [B, T, D], n_heads) -> [B, n_heads, T, D // n_heads]; oracle: per-head slices."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        for B, T, D, H in SPLIT_CASES + [(2, 3 + seed % 3, 8, 2)]:
            d = D // H
            x = torch.randn(B, T, D)
            saved = x.clone()
            what = trf("{who}(x {[B, T, D]}, n_heads={H})")
            got = call(fn, x, H)
            expect_tensor(got, what)
            if tuple(got.shape) != (B, H, T, d):
                if tuple(got.shape) == (B, T, H, d) and T != H:
                    fail(trf("{what} has shape {_shape(got)}, expected {[B, H, T, d]}: you split the features "
                         "into [B, T, n_heads, d_head] but kept the positions first; swap them with "
                         ".transpose(1, 2), so that each head holds a whole sequence [T, d_head]"))
                fail(trf("{what} has shape {_shape(got)}, expected [B, n_heads, T, d_head] = {[B, H, T, d]}"))
            if got.dtype != x.dtype:
                fail(trf("{what} has dtype {got.dtype}, expected {x.dtype} (splitting only rearranges x)"))
            if not torch.equal(x, saved):
                fail(trf("{who} changed its input x in place; return a new view or tensor"))
            want = _split_oracle(x, H)
            if torch.equal(got, want):
                n += 1
                continue
            if H > 1 and T > 1 and torch.equal(got, x.reshape(B, H, T, d)):
                fail(trf("{what}: your heads mix positions: reshaping [B, T, d_model] straight to "
                     "[B, n_heads, T, d_head] (view without transpose) fills head 0 with all the "
                     "features of the first few positions, and so on. Reshape to "
                     "[B, T, n_heads, d_head] first, then .transpose(1, 2)"))
            if H > 1 and d > 1 and torch.equal(got, x.reshape(B, T, d, H).permute(0, 3, 1, 2)):
                fail(trf("{what}: head h got every n_heads-th feature (h, h + {H}, h + {2 * H}, ...); it should "
                     "get the contiguous block of features h*d_head .. (h+1)*d_head - 1: reshape to "
                     "[B, T, n_heads, d_head], not [B, T, d_head, n_heads]"))
            expect_close(got, want, what, atol=0, rtol=0,
                         hint=tr("Head h at position t holds x[b, t, h*d_head:(h+1)*d_head]"))
        # a non-contiguous input: the features are strided (x is a transposed [B, D, T] tensor)
        x = torch.randn(2, 12, 5).transpose(1, 2)
        what = trf("{who}(x {_shape(x)} non-contiguous, n_heads=3)")
        got = _call_strided(fn, x, 3, what=what)
        expect_tensor(got, what)
        expect_close(got, _split_oracle(x, 3), what, atol=0, rtol=0,
                     hint=tr("Head h at position t holds x[b, t, h*d_head:(h+1)*d_head]"))
        n += 1
    passed(fn, n)


def check_merge_heads(fn, seed: int = 0) -> None:
    """merge_heads(y [B, H, T, d_head]) -> [B, T, H * d_head], the inverse of split_heads."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        for B, T, D, H in SPLIT_CASES + [(2, 3 + seed % 3, 8, 2)]:
            d = D // H
            for contiguous in (False, True):
                x = torch.randn(B, T, D)
                y = _split_oracle(x, H).transpose(1, 2).contiguous().transpose(1, 2)  # a transposed view
                if contiguous:
                    y = y.contiguous()
                saved = y.clone()
                what = f"{who}(y {[B, H, T, d]}{'' if contiguous else tr(', a transposed view as split_heads returns')})"
                got = _call_strided(fn, y, what=what)
                expect_tensor(got, what)
                if tuple(got.shape) != (B, T, D):
                    if tuple(got.shape) == (B, T, H, d):
                        fail(trf("{what} has shape {_shape(got)}, expected {[B, T, D]}: after the transpose, "
                             "flatten the heads into the features (.reshape(B, T, n_heads * d_head))"))
                    fail(trf("{what} has shape {_shape(got)}, expected [B, T, n_heads * d_head] = {[B, T, D]}"))
                if not torch.equal(y, saved):
                    fail(trf("{who} changed its input in place; return a new view or tensor"))
                if torch.equal(got, x):
                    n += 1
                    continue
                if H > 1 and T > 1 and torch.equal(got, y.reshape(B, T, D)):
                    fail(trf("{what}: your output mixes positions: reshaping [B, n_heads, T, d_head] straight "
                         "to [B, T, d_model] (no transpose) puts several of head 0's "
                         "positions into position 0. Transpose back to [B, T, n_heads, d_head] first, then flatten"))
                if H > 1 and d > 1 and torch.equal(got, y.permute(0, 2, 3, 1).reshape(B, T, D)):
                    fail(trf("{what}: you merged the heads in the wrong order: your features are interleaved "
                         "(feature 1 is head 1's feature 0). Concatenate the heads: head 0's d_head "
                         "features, then head 1's, ... (transpose to [B, T, n_heads, d_head], then flatten)"))
                expect_close(got, x, what, atol=0, rtol=0,
                             hint=tr("Features h*d_head .. (h+1)*d_head - 1 of position t are y[b, h, t]: "
                                  "merge_heads(split_heads(x, h)) must give x back"))
                n += 1
    passed(fn, n)


# --- a plain reference multi-head attention, with the usual mistakes on request ---------------

MISTAKES = {
    "no_wo": tr("your output is the concatenated heads without the output projection: apply self.w_o to "
             "the merged heads (W_O mixes what the heads found)"),
    "scale_dmodel": tr("you scaled the scores by sqrt(d_model) = sqrt({D}); the scale is sqrt(d_head) = "
                    "sqrt({d}), the width of one head's queries and keys (scaled_dot_product_attention "
                    "does it for you when q and k are split into heads first)"),
    "no_scale": tr("you did not scale the scores: divide them by sqrt(d_head) = sqrt({d})"),
    "split_no_transpose": tr("your heads mix positions: the queries, keys and values were reshaped from "
                          "[B, T, d_model] straight to [B, n_heads, T, d_head] (no transpose). Split with "
                          "split_heads: [B, T, n_heads, d_head], then .transpose(1, 2)"),
    "merge_no_transpose": tr("your output mixes positions: the heads were merged by reshaping "
                          "[B, n_heads, n_q, d_head] straight to [B, n_q, d_model] (no transpose). Merge with "
                          "merge_heads: transpose back to [B, n_q, n_heads, d_head], then flatten"),
    "merge_interleaved": tr("you merged the heads in the wrong order (their features interleaved): "
                         "concatenate head 0's d_head features, then head 1's, ... (merge_heads)"),
    "no_mask": tr("your output does not depend on the mask: pass mask on to scaled_dot_product_attention "
               "(True = may attend)"),
    "inverted_mask": tr("your mask is inverted: True means *may attend*, so keys where the mask is False "
                     "get zero weight"),
    "v_from_k": tr("your values are computed with w_k: the values are self.w_v(x_kv)"),
    "kv_from_q": tr("your keys and values come from x_q: in cross-attention they are projections of x_kv, "
                 "the other sequence (x_kv is x_q only when it is None)"),
    "weight_not_transposed": tr("you multiplied by the weight matrices without transposing them: "
                             "nn.Linear computes x @ weight.T + bias; call self.w_q(x) and so on"),
    "one_head": tr("your output is that of a single head of width d_model: split q, k and v into n_heads "
                "heads of width d_head = d_model / n_heads before the attention"),
}


def _reference(mod, x_q, x_kv, mask, mistake: str | None = None) -> torch.Tensor:
    """Multi-head attention in float64 from mod's w_q, w_k, w_v, w_o, optionally with one mistake."""
    H, D = mod.n_heads, mod.w_q.weight.shape[1]
    d = D // H

    def lin(layer, x):
        w = layer.weight.detach().double()
        b = None if layer.bias is None else layer.bias.detach().double()
        if mistake == "weight_not_transposed":
            return x @ w + (0 if b is None else b)
        return F.linear(x, w, b)

    def split(t):
        B, T, _ = t.shape
        if mistake == "split_no_transpose":
            return t.reshape(B, H, T, d)
        if mistake == "one_head":
            return t[:, None]
        return t.reshape(B, T, H, d).transpose(1, 2)

    def merge(t):
        B, h, T, w = t.shape
        if mistake == "merge_no_transpose":
            return t.reshape(B, T, h * w)
        if mistake == "merge_interleaved":
            return t.permute(0, 2, 3, 1).reshape(B, T, h * w)
        return t.transpose(1, 2).reshape(B, T, h * w)

    x_q = x_q.double()
    x_kv = x_q if (x_kv is None or mistake == "kv_from_q") else x_kv.double()
    q, k = split(lin(mod.w_q, x_q)), split(lin(mod.w_k, x_kv))
    v = split(lin(mod.w_k if mistake == "v_from_k" else mod.w_v, x_kv))
    scale = {"scale_dmodel": math.sqrt(D), "no_scale": 1.0}.get(mistake, math.sqrt(q.shape[-1]))
    scores = q @ k.transpose(-2, -1) / scale
    if mask is not None and mistake != "no_mask":
        m = mask[:, None] if mask.dim() == 3 else mask
        scores = scores.masked_fill(m if mistake == "inverted_mask" else ~m, float("-inf"))
    out = merge(torch.softmax(scores, dim=-1) @ v)
    return out if mistake == "no_wo" else lin(mod.w_o, out)


def _torch_mha(mod, bias: bool) -> nn.MultiheadAttention:
    """nn.MultiheadAttention (batch_first, float64) holding the weights of mod."""
    D, H = mod.w_q.weight.shape[1], mod.n_heads
    ref = nn.MultiheadAttention(D, H, bias=bias, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mod.w_q.weight, mod.w_k.weight, mod.w_v.weight]))
        ref.out_proj.weight.copy_(mod.w_o.weight)
        if bias:
            ref.in_proj_bias.copy_(torch.cat([mod.w_q.bias, mod.w_k.bias, mod.w_v.bias]))
            ref.out_proj.bias.copy_(mod.w_o.bias)
    return ref


def _torch_mask(mask, B, H, n_q, n_k):
    """Our mask (True = may attend, broadcastable to [B, H, n_q, n_k], 3-D shared by the heads) in
    nn.MultiheadAttention's terms: [B * H, n_q, n_k], True = may NOT attend."""
    if mask is None:
        return None
    m = mask[:, None] if mask.dim() == 3 else mask
    return ~m.expand(B, H, n_q, n_k).reshape(B * H, n_q, n_k)


def torch_oracle(mod, x_q, x_kv=None, mask=None, bias: bool = True) -> torch.Tensor:
    """What nn.MultiheadAttention gives with mod's weights copied in (float64)."""
    x_kv = x_q if x_kv is None else x_kv
    ref = _torch_mha(mod, bias)
    B, n_q, n_k = x_q.shape[0], x_q.shape[1], x_kv.shape[1]
    out, _ = ref(x_q.double(), x_kv.double(), x_kv.double(),
                 attn_mask=_torch_mask(mask, B, mod.n_heads, n_q, n_k), need_weights=False)
    return out


def _visible(shape):
    """A random bool mask in which every query sees at least one key."""
    m = torch.rand(shape) < 0.5
    first = torch.randint(0, shape[-1], shape[:-1])
    return m | F.one_hot(first, shape[-1]).bool()


def _expect_projections(mod, who: str, D: int, bias: bool) -> None:
    if not isinstance(mod, nn.Module):
        fail(trf("{who}({D}, ...) should make an nn.Module (class ...(nn.Module)), got {type(mod).__name__}"))
    for name, role in (("w_q", "queries"), ("w_k", "keys"), ("w_v", "values"), ("w_o", "output")):
        lin = getattr(mod, name, None)
        if lin is None:
            extra = tr(" (the output projection W_O, applied to the merged heads)") if name == "w_o" else ""
            fail(trf("your {who} has no attribute {name}{extra}: name the four projections w_q, w_k, w_v, w_o, "
                 "each nn.Linear(d_model, d_model)"))
        w = getattr(lin, "weight", None)
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (D, D):
            got = _shape(w) if isinstance(w, torch.Tensor) else type(lin).__name__
            fail(trf("{who}(d_model={D}).{name} should be nn.Linear(d_model, d_model) with weight [{D}, {D}] "
                 "(the {role} projection of all heads at once), got {got}"))
        has_bias = getattr(lin, "bias", None) is not None
        if has_bias != bias:
            has = tr("has") if has_bias else tr("has no")
            fail(trf("{who}(d_model={D}, bias={bias}).{name} {has} bias: pass bias=bias to each nn.Linear"))
    if getattr(mod, "n_heads", None) is None:
        fail(trf("your {who} has no attribute n_heads (keep the line that sets self.n_heads)"))


def _randomize(mod, D: int, gain: float = 1.5) -> None:
    """Weights large enough that the attention is far from uniform (so each mistake shows)."""
    with torch.no_grad():
        for name in ("w_q", "w_k", "w_v", "w_o"):
            lin = getattr(mod, name)
            lin.weight.copy_(torch.randn(D, D) * gain / math.sqrt(D))
            if lin.bias is not None:
                lin.bias.copy_(torch.randn(D) * 0.5)


def _diagnose(got, mod, x_q, x_kv, mask, what: str, D: int, d: int) -> None:
    """Name the mistake whose output got reproduces; else report the first difference."""
    want = _reference(mod, x_q, x_kv, mask)
    for mistake, msg in MISTAKES.items():
        try:
            alt = _reference(mod, x_q, x_kv, mask, mistake)
        except RuntimeError:   # the mistake cannot even run on these shapes
            continue
        if not _same(alt, want, atol=1e-6) and _same(got, alt, atol=1e-4):
            fail(trf("{what}: {msg.format(D=D, d=d)}"))


MHA_CASES = [
    # name, d_model, n_heads, bias, B, n_q, n_k (None: self-attention), mask kind
    (tr("self-attention"), 16, 4, True, 2, 5, None, None),
    (tr("cross-attention (n_q != n_k)"), 16, 4, True, 2, 3, 7, None),
    (tr("a causal mask [T, T]"), 16, 4, True, 2, 6, None, "causal"),
    (tr("a padding mask [B, 1, n_k]"), 12, 3, True, 2, 4, 6, "padding"),
    (tr("a 3-D mask [B, n_q, n_k] shared by the heads"), 12, 3, True, 2, 5, 5, "3d"),
    (tr("a mask per head [B, n_heads, n_q, n_k]"), 8, 2, True, 3, 4, 5, "4d"),
    ("bias=False", 10, 5, False, 1, 3, 4, "padding"),
    (tr("one head"), 8, 1, True, 2, 3, None, "causal"),
    (tr("d_head = 1"), 6, 6, True, 1, 4, None, None),
    (tr("one token"), 12, 4, True, 1, 1, None, "causal"),
]


def _make_mask(kind, B, H, n_q, n_k):
    if kind is None:
        return None
    if kind == "causal":
        return torch.ones(n_q, n_k, dtype=torch.bool).tril()
    if kind == "padding":
        lengths = torch.randint(1, n_k + 1, (B,))
        lengths[0] = max(1, n_k - 2)
        return (torch.arange(n_k) < lengths[:, None])[:, None, :]
    if kind == "3d":
        return _visible((B, n_q, n_k))
    return _visible((B, H, n_q, n_k))


def check_MultiHeadAttention(cls, seed: int = 0) -> None:
    """MultiHeadAttention(d_model, n_heads, bias) against nn.MultiheadAttention with its weights copied."""
    who = name_of(cls)
    n = 0
    with seeded(seed):
        for name, D, H, bias, B, n_q, n_k, kind in MHA_CASES:
            d = D // H
            mod = call(cls, D, H, bias=bias)
            _expect_projections(mod, who, D, bias)
            _randomize(mod, D)
            x_q = torch.randn(B, n_q, D)
            x_kv = None if n_k is None else torch.randn(B, n_k, D)
            n_k_ = n_q if n_k is None else n_k
            mask = _make_mask(kind, B, H, n_q, n_k_)
            args = f"x_q {[B, n_q, D]}" + ("" if x_kv is None else trf(", x_kv {[B, n_k, D]}")) + \
                   ("" if mask is None else trf(", mask {_shape(mask)}"))
            what = trf("{who}(d_model={D}, n_heads={H}{'' if bias else ', bias=False'})({args}), {name}")
            kwargs = {} if mask is None else {"mask": mask}
            got = call(mod, x_q, x_kv, **kwargs) if x_kv is not None else call(mod, x_q, **kwargs)
            expect_tensor(got, what)
            if tuple(got.shape) != (B, n_q, D):
                fail(trf("{what} has shape {_shape(got)}, expected [B, n_q, d_model] = {[B, n_q, D]}: one "
                     "output vector per query"))
            want = torch_oracle(mod, x_q, x_kv, mask, bias)
            if not _same(got, want, atol=1e-5):
                _diagnose(got, mod, x_q, x_kv, mask, what, D, d)
                expect_close(got, want, what, atol=1e-5, rtol=1e-4,
                             hint=tr("The oracle is nn.MultiheadAttention(batch_first=True) with your weights "
                                  "copied in: in_proj_weight = cat(w_q, w_k, w_v), out_proj = w_o"))
            n += 1
        # x_kv=None is self-attention: the same as passing x_q twice
        mod = call(cls, 8, 2)
        _randomize(mod, 8)
        x = torch.randn(2, 4, 8)
        a, b = call(mod, x), call(mod, x, x)
        if not _same(a, b, atol=1e-6):
            fail(trf("{who}: forward(x) and forward(x, x) differ: x_kv=None means self-attention, x_kv = x_q"))
        n += 1
    passed(cls, n)


# --- head_weights ------------------------------------------------------------------------------

def _course_mha(D, H, bias=True):
    from transformer_course.multihead import MultiHeadAttention
    return MultiHeadAttention(D, H, bias=bias)


def check_head_weights(fn, seed: int = 0) -> None:
    """head_weights(attn, x_q, x_kv=None, mask=None) -> [B, n_heads, n_q, n_k]; oracle:
    nn.MultiheadAttention(need_weights=True, average_attn_weights=False)."""
    who = name_of(fn)
    n = 0
    cases = [  # D, H, B, n_q, n_k, mask kind
        (16, 4, 2, 5, None, None),
        (12, 3, 2, 3, 6, "padding"),
        (8, 2, 1, 4, None, "causal"),
        (8, 2, 3, 4, 5, "4d"),
        (6, 1, 1, 1, None, None),
    ]
    with seeded(seed):
        for D, H, B, n_q, n_k, kind in cases:
            attn = _course_mha(D, H)
            _randomize(attn, D)
            x_q = torch.randn(B, n_q, D)
            x_kv = None if n_k is None else torch.randn(B, n_k, D)
            n_k_ = n_q if n_k is None else n_k
            mask = _make_mask(kind, B, H, n_q, n_k_)
            args = (trf("attn (d_model={D}, n_heads={H}), x_q {[B, n_q, D]}")
                    + ("" if x_kv is None else trf(", x_kv {[B, n_k, D]}"))
                    + ("" if mask is None else trf(", mask {_shape(mask)}")))
            what = f"{who}({args})"
            kwargs = {} if mask is None else {"mask": mask}
            got = call(fn, attn, x_q, x_kv, **kwargs)
            expect_tensor(got, what)
            ref = _torch_mha(attn, True)
            kv = x_q if x_kv is None else x_kv
            _, want = ref(x_q.double(), kv.double(), kv.double(), need_weights=True, average_attn_weights=False,
                          attn_mask=_torch_mask(mask, B, H, n_q, n_k_))
            if tuple(got.shape) != (B, H, n_q, n_k_):
                if tuple(got.shape) == (B, n_q, n_k_) and H > 1:
                    fail(trf("{what} has shape {_shape(got)}, expected [B, n_heads, n_q, n_k] = {[B, H, n_q, n_k_]}: "
                         "one map per head; split q and k into heads (split_heads) and keep the heads apart "
                         "(no average over them)"))
                fail(trf("{what} has shape {_shape(got)}, expected [B, n_heads, n_q, n_k] = {[B, H, n_q, n_k_]}"))
            g = got.detach().double()
            if not torch.isfinite(g).all():
                fail(trf("{what}: your weights contain NaN or inf; every query here sees at least one key"))
            rows = g.sum(-1)
            if (rows - 1).abs().max() > 1e-4:
                fail(trf("{what}: rows of your weights sum to {rows.flatten()[(rows - 1).abs().argmax()].item():.3f}, "
                     "expected 1: the softmax runs over the keys, the last dimension"))
            if mask is not None:
                m = (mask[:, None] if mask.dim() == 3 else mask).expand(B, H, n_q, n_k_)
                if (~m).any() and g[~m].abs().max() > 1e-6:
                    fail(trf("{what}: a masked key got weight {g[~m].max().item():.3f}: pass the mask on "
                         "(attention_weights(q, k, mask)), a 3-D mask [B, n_q, n_k] as mask[:, None]"))
            q = F.linear(x_q.double(), attn.w_q.weight.double(), attn.w_q.bias.double())
            k = F.linear(kv.double(), attn.w_k.weight.double(), attn.w_k.bias.double())
            q = q.reshape(B, n_q, H, D // H).transpose(1, 2)
            k = k.reshape(B, n_k_, H, D // H).transpose(1, 2)
            for scale, words in ((math.sqrt(D), trf("sqrt(d_model) = sqrt({D})")), (1.0, tr("1 (not at all)"))):
                s = q @ k.transpose(-2, -1) / scale
                if mask is not None:
                    s = s.masked_fill(~m, float("-inf"))
                alt = torch.softmax(s, -1)
                if not _same(alt, want, atol=1e-6) and _same(g, alt, atol=1e-5):
                    fail(trf("{what}: you scaled the scores by {words}; the scale is sqrt(d_head) = sqrt({D // H}), "
                         "the width of one head"))
            expect_close(got, want, what, atol=1e-5, rtol=1e-4,
                         hint=tr("The oracle is nn.MultiheadAttention(..., need_weights=True, "
                              "average_attn_weights=False) with the same weights"))
            n += 1
    passed(fn, n)


# --- mha_flops ---------------------------------------------------------------------------------

def _counted_flops(B, n_q, n_k, D, H) -> int:
    """Matmul FLOPs of a plain multi-head attention, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    w = [torch.randn(D, D) for _ in range(4)]
    x_q, x_kv = torch.randn(B, n_q, D), torch.randn(B, n_k, D)
    with FlopCounterMode(display=False) as counter:
        q = (x_q @ w[0].T).reshape(B, n_q, H, D // H).transpose(1, 2)
        k = (x_kv @ w[1].T).reshape(B, n_k, H, D // H).transpose(1, 2)
        v = (x_kv @ w[2].T).reshape(B, n_k, H, D // H).transpose(1, 2)
        o = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // H), -1) @ v
        o.transpose(1, 2).reshape(B, n_q, D) @ w[3].T
    return counter.get_total_flops()


def check_mha_flops(fn, seed: int = 0) -> None:
    """mha_flops(batch, n_q, n_k, d_model, n_heads) -> int; oracle: FlopCounterMode."""
    who = name_of(fn)
    cases = [(2, 5, 7, 16, 4), (1, 3, 3, 12, 3), (3, 4, 9, 8, 1), (1, 1, 1, 4, 4), (2, 6, 2, 24, [6, 4, 3][seed % 3])]
    for B, n_q, n_k, D, H in cases:
        what = trf("{who}(batch={B}, n_q={n_q}, n_k={n_k}, d_model={D}, n_heads={H})")
        got = call(fn, B, n_q, n_k, D, H)
        # the docstring promises an int, as matmul_flops in chapter 00: no tensors, no floats
        if not isinstance(got, int) or isinstance(got, bool):
            shown = describe(got) if isinstance(got, torch.Tensor) else repr(got)
            fail(trf("{what} should return an int (a count of floating-point operations), got "
                 "{type(got).__name__} {shown}: multiply ints, and use // rather than / for "
                 "d_head = d_model // n_heads"))
        want = _counted_flops(B, n_q, n_k, D, H)
        if got == want:
            continue
        d = D // H
        parts = {
            "w_q": 2 * B * n_q * D * D, "w_k": 2 * B * n_k * D * D, "w_v": 2 * B * n_k * D * D,
            "w_o": 2 * B * n_q * D * D, "scores": 2 * B * H * n_q * n_k * d, tr("weights @ v"): 2 * B * H * n_q * n_k * d,
        }
        if got * 2 == want:
            fail(trf("{what} is {got:,}, FlopCounterMode counts {want:,}, twice as many: count 2 FLOPs per "
                 "multiply-add (a multiply and an add), as [m, k] @ [k, n] takes 2·m·n·k"))
        if got == want - parts["w_o"]:
            fail(trf("{what} is {got:,}, expected {want:,}: you left out the output projection w_o "
                 "(2·batch·n_q·d_model² = {parts['w_o']:,})"))
        att = parts["scores"] + parts[tr("weights @ v")]
        if H > 1 and got == want - att + att // H:
            fail(trf("{what} is {got:,}, expected {want:,}: your attention part counts one head "
                 "(4·batch·n_q·n_k·d_head); there are n_heads = {H} of them: 4·batch·n_q·n_k·d_model in all"))
        if H > 1 and got == want - att + att * H:
            fail(trf("{what} is {got:,}, expected {want:,}: your attention part is n_heads = {H} times too large: "
                 "each head's dot products have length d_head = {d}, not d_model"))
        if n_q != n_k and got == want - parts["w_k"] - parts["w_v"] + 4 * B * n_q * D * D:
            fail(trf("{what} is {got:,}, expected {want:,}: the keys and values are projections of the n_k "
                 "= {n_k} tokens of x_kv, not of the n_q = {n_q} queries"))
        if got == want - att // 2:
            fail(trf("{what} is {got:,}, expected {want:,}: two matmuls per head, q @ k^T and weights @ v, "
                 "each 2·n_q·n_k·d_head FLOPs"))
        fail(trf("{what} is {got:,}, FlopCounterMode counts {want:,} (projections: "
             "{sum(parts[p] for p in ('w_q', 'w_k', 'w_v', 'w_o')):,}, attention: {att:,})"))
    passed(fn, len(cases))


# --- from_torch --------------------------------------------------------------------------------

def check_from_torch(fn, seed: int = 0) -> None:
    """from_torch(m: nn.MultiheadAttention) -> MultiHeadAttention computing the same function."""
    who = name_of(fn)
    n = 0
    with seeded(seed):
        for D, H, bias, B, n_q, n_k in [(16, 4, True, 2, 5, 7), (12, 3, False, 1, 4, 4), (8, 1, True, 2, 3, 2)]:
            theirs = nn.MultiheadAttention(D, H, bias=bias, batch_first=True)
            with torch.no_grad():
                theirs.in_proj_weight.copy_(torch.randn(3 * D, D) * 1.5 / math.sqrt(D))
                theirs.out_proj.weight.copy_(torch.randn(D, D) / math.sqrt(D))
                if bias:
                    theirs.in_proj_bias.copy_(torch.randn(3 * D))
                    theirs.out_proj.bias.copy_(torch.randn(D))
            saved = {k: v.clone() for k, v in theirs.state_dict().items()}
            what = trf("{who}(nn.MultiheadAttention({D}, {H}{'' if bias else ', bias=False'}))")
            ours = call(fn, theirs)
            if not isinstance(ours, nn.Module):
                fail(trf("{what} should return a MultiHeadAttention module, got {type(ours).__name__}"))
            _expect_projections(ours, "MultiHeadAttention", D, bias)
            if getattr(ours, "n_heads", None) != H:
                fail(trf("{what}.n_heads is {getattr(ours, 'n_heads', None)!r}, expected {H}"))
            for k, v in theirs.state_dict().items():
                if not torch.equal(v, saved[k]):
                    fail(trf("{who} changed the nn.MultiheadAttention it was given ({k}); copy its weights instead"))
            storages = {theirs.in_proj_weight.untyped_storage().data_ptr(),
                        theirs.out_proj.weight.untyped_storage().data_ptr()}
            shared = [name for name in ("w_q", "w_k", "w_v", "w_o")
                      if getattr(ours, name).weight.untyped_storage().data_ptr() in storages]
            x_q, x_kv = torch.randn(B, n_q, D), torch.randn(B, n_k, D)
            with torch.no_grad():
                want, _ = theirs(x_q, x_kv, x_kv, need_weights=False)
                got = call(ours, x_q, x_kv)
            expect_tensor(got, what)
            if tuple(got.shape) != tuple(want.shape):
                fail(trf("{what}: its output has shape {_shape(got)}, expected {_shape(want)}"))
            if not _same(got, want, atol=1e-5):
                W = theirs.in_proj_weight.detach()
                parts = dict(zip(("w_q", "w_k", "w_v"), W.chunk(3)))
                for name in ("w_q", "w_k", "w_v"):
                    w = getattr(ours, name).weight.detach()
                    if torch.equal(w, parts[name]):
                        continue
                    for other, block in parts.items():
                        if torch.equal(w, block):
                            fail(trf("{what}: your {name} holds nn.MultiheadAttention's {other} block: "
                                 "in_proj_weight stacks [W_q; W_k; W_v] in that order (rows 0..d_model-1 "
                                 "are W_q)"))
                    if torch.equal(w, parts[name].T):
                        fail(trf("{what}: your {name}.weight is transposed: nn.Linear and in_proj_weight both "
                             "store [out_features, in_features], so copy the block as it is"))
                    fail(trf("{what}: your {name}.weight is not rows {['w_q', 'w_k', 'w_v'].index(name)}·d_model .. of "
                         "in_proj_weight (in_proj_weight.chunk(3) gives W_q, W_k, W_v)"))
                if not torch.equal(ours.w_o.weight.detach(), theirs.out_proj.weight.detach()):
                    fail(trf("{what}: your w_o.weight differs from out_proj.weight: copy it as it is"))
                if bias:
                    bq, bk, bv = theirs.in_proj_bias.detach().chunk(3)
                    for name, b in (("w_q", bq), ("w_k", bk), ("w_v", bv), ("w_o", theirs.out_proj.bias.detach())):
                        if not torch.equal(getattr(ours, name).bias.detach(), b):
                            fail(trf("{what}: your {name}.bias differs from nn.MultiheadAttention's: "
                                 "copy in_proj_bias.chunk(3) and out_proj.bias too"))
                expect_close(got, want, what, atol=1e-5, rtol=1e-4)
            if shared:
                fail(trf("{what}: your {shared[0]} shares its weight tensor with nn.MultiheadAttention; copy it "
                     "(with torch.no_grad(): ours.{shared[0]}.weight.copy_(...)) so that the two stay independent"))
            n += 1
    passed(fn, n)
