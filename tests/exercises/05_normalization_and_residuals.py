"""Chapter 05 (normalization and residuals): the exercises, their checks, and plausible wrong answers."""

import torch
from torch import nn

from exercises._case import Exercise
from transformer_course import blocks
from transformer_course.checks import blocks as checks
from transformer_course.multihead import MultiHeadAttention


def _named(name):
    def rename(fn):
        fn.__name__ = fn.__qualname__ = name
        return fn
    return rename


# --- layer_norm --------------------------------------------------------------------------------

def _ln(dim=-1, unbiased=False, eps_inside=True, use_eps=True, affine="ok", centre=True):
    @_named("layer_norm")
    def layer_norm(x, weight, bias, eps=1e-5):
        dims = dim
        mean = x.mean(dims, keepdim=True) if centre else 0.0
        var = ((x - mean) ** 2).sum(dims, keepdim=True) / (x.shape[dims] - (1 if unbiased else 0)) \
            if isinstance(dims, int) else x.var(dims, unbiased=unbiased, keepdim=True)
        e = eps if use_eps else 0.0
        y = (x - mean) / torch.sqrt(var + e) if eps_inside else (x - mean) / (torch.sqrt(var) + e)
        if affine == "ok":
            return y * weight + bias
        if affine == "swapped":
            return y * bias + weight
        return y
    return layer_norm


@_named("layer_norm")
def _ln_fixed_eps(x, weight, bias, eps=1e-5):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + bias


@_named("layer_norm")
def _ln_inplace(x, weight, bias, eps=1e-5):
    x -= x.mean(-1, keepdim=True)
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight + bias


@_named("layer_norm")
def _ln_std_var(x, weight, bias, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.std(-1, keepdim=True) ** 2 + eps) * weight + bias


LN_WRONG = [
    (_ln(unbiased=True), "you used the unbiased variance"),
    (_ln_std_var, "you used the unbiased variance"),
    (_ln(eps_inside=False), "you added eps outside the square root"),
    (_ln(dim=-2), "you normalized over dimension -2, the positions"),
    (_ln(dim=0), "you normalized over dimension 0, the batch"),
    (_ln(affine="none"), "you did not apply weight and bias"),
    (_ln(affine="swapped"), "you swapped weight and bias"),
    (_ln(centre=False), "you did not subtract the mean"),
    (_ln(use_eps=False), "you left eps out"),
    (_ln_fixed_eps, "you ignored the eps argument"),
    (_ln_inplace, "changed its input x in place"),
]


# --- rms_norm ----------------------------------------------------------------------------------

def _rms(centre=False, eps_inside=True, mean=True, root=True, weight_on=True, dim=-1):
    @_named("rms_norm")
    def rms_norm(x, weight, eps=1e-6):
        h = x - x.mean(-1, keepdim=True) if centre else x
        ms = h.pow(2).mean(dim, keepdim=True) if mean else h.pow(2).sum(dim, keepdim=True)
        if not root:
            y = h / (ms + eps)
        elif eps_inside:
            y = h / torch.sqrt(ms + eps)
        else:
            y = h / (torch.sqrt(ms) + eps)
        return y * weight if weight_on else y
    return rms_norm


@_named("rms_norm")
def _rms_no_eps(x, weight, eps=1e-6):
    return x / x.pow(2).mean(-1, keepdim=True).sqrt() * weight


@_named("rms_norm")
def _rms_returns_float64(x, weight, eps=1e-6):
    x = x.double()
    return (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double())


RMS_WRONG = [
    (_rms(centre=True), "you subtracted the mean: RMSNorm does not centre"),
    (_rms(eps_inside=False), "you added eps outside the square root"),
    (_rms(mean=False), "you used the sum of the squares instead of their mean"),
    (_rms(root=False), "you divided by the mean square itself"),
    (_rms(weight_on=False), "you did not multiply by weight"),
    (_rms(dim=-2), "you normalized over dimension -2"),
    (_rms_no_eps, "you left eps out"),
    (_rms_returns_float64, "expected torch.float32, the dtype of x"),
]


# --- batch_norm --------------------------------------------------------------------------------

def _bn(dims="rest", unbiased=False, eps_inside=True):
    @_named("batch_norm")
    def batch_norm(x, weight, bias, eps=1e-5):
        d = {"rest": tuple(range(x.dim() - 1)), "first": (0,), "last": (-1,), "01": (0, 1),
             "all": tuple(range(x.dim()))}[dims]
        mean, var = x.mean(d, keepdim=True), x.var(d, unbiased=unbiased, keepdim=True)
        y = (x - mean) / torch.sqrt(var + eps) if eps_inside else (x - mean) / (var.sqrt() + eps)
        return y * weight + bias
    return batch_norm


@_named("batch_norm")
def _bn_flat_dim0_only_2d(x, weight, bias, eps=1e-5):
    """Works for [N, D] only: reshapes nothing, so [B, T, D] gets statistics per position."""
    mean, var = x.mean(0), x.var(0, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


BN_WRONG = [
    (_bn(dims="first"), "you took the statistics over dimension 0 only"),
    (_bn_flat_dim0_only_2d, "you took the statistics over dimension 0 only"),
    (_bn(unbiased=True), "you used the unbiased variance"),
    (_bn(dims="last"), "that is LayerNorm"),
    (_bn(eps_inside=False), "you added eps outside the square root"),
    # dims (0, 1) hard-coded is right for [B, T, D] only: told so, not told to use dims (0, 1)
    (_bn(dims="01"), "you took the statistics over dims (0, 1) whatever the shape of x"),
    (_bn(dims="all"), "you normalized over the whole tensor"),
]


# --- TransformerBlock --------------------------------------------------------------------------

def _block(forward, ffn=None, names=("attn", "ffn", "norm1", "norm2", "drop"), extra=False):
    """A TransformerBlock whose forward is `forward(self, x, mask)`; the rest as in the solution."""

    class TransformerBlock(nn.Module):
        def __init__(self, d_model, n_heads, d_ff, norm_first=True, dropout=0.0):
            super().__init__()
            self.norm_first = norm_first
            parts = dict(
                attn=MultiHeadAttention(d_model, n_heads),
                ffn=(ffn or (lambda: nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))))(),
                norm1=nn.LayerNorm(d_model), norm2=nn.LayerNorm(d_model), drop=nn.Dropout(dropout))
            for name, key in zip(names, ("attn", "ffn", "norm1", "norm2", "drop")):
                setattr(self, name, parts[key])
            if extra:
                self.norm3 = nn.LayerNorm(d_model)

        def forward(self, x, mask=None):
            return forward(self, x, mask)

    return TransformerBlock


def _always_pre(self, x, mask=None):
    x = x + self.drop(self.attn(self.norm1(x), mask=mask))
    return x + self.drop(self.ffn(self.norm2(x)))


def _pre_or_post(attn_res=True, ffn_res=True, twice=False, use_mask=True, same_norm=False, drop=True):
    def forward(self, x, mask=None):
        m = mask if use_mask else None
        n2 = self.norm1 if same_norm else self.norm2
        d = self.drop if drop else (lambda t: t)
        if self.norm_first:
            h = d(self.attn(self.norm1(x), mask=m))
            x = x + h if attn_res else h
            if twice:
                x = self.norm1(x)
            h = d(self.ffn(n2(x)))
            x = x + h if ffn_res else h
            return n2(x) if twice else x
        h = d(self.attn(x, mask=m))
        x = self.norm1(x + h if attn_res else h)
        h = d(self.ffn(x))
        return n2(x + h if ffn_res else h)
    return forward


def _drop_misplaced(where):
    """Dropout in the wrong place: on the residual stream ("stream"), the sublayer's input ("input"),
    one sublayer only ("attn", "ffn"), or the Post-Norm sum before the norm ("sum")."""
    def forward(self, x, mask=None):
        d = self.drop
        attn = lambda h: self.attn(h, mask=mask)
        if self.norm_first:
            for f, norm, name in ((attn, self.norm1, "attn"), (self.ffn, self.norm2, "ffn")):
                if where == "stream":
                    x = d(x + f(norm(x)))
                elif where == "input":
                    x = x + f(d(norm(x)))
                else:
                    x = x + (d(f(norm(x))) if where == name else f(norm(x)))
            return x
        for f, norm, name in ((attn, self.norm1, "attn"), (self.ffn, self.norm2, "ffn")):
            if where == "stream":
                x = d(norm(x + f(x)))
            elif where == "sum":
                x = norm(d(x + f(x)))
            elif where == "input":
                x = norm(x + f(d(x)))
            else:
                x = norm(x + (d(f(x)) if where == name else f(x)))
        return x
    return forward


def _drop_only_when(norm_first, where):
    """Right for one norm placement, misplaced for the other."""
    def forward(self, x, mask=None):
        wrong = self.norm_first == norm_first
        return (_drop_misplaced(where) if wrong else _pre_or_post())(self, x, mask)
    return forward


def _drop_train_ignored(self, x, mask=None):
    """Dropout only ever in eval mode's sense: self.drop.eval() before use."""
    self.drop.eval()
    return _pre_or_post()(self, x, mask)


def _inverted_mask(self, x, mask=None):
    return _pre_or_post()(self, x, None if mask is None else ~mask)


def _functional_dropout(self, x, mask=None):
    drop = lambda t: nn.functional.dropout(t, self.drop.p, training=True)
    x = x + drop(self.attn(self.norm1(x), mask=mask)) if self.norm_first else self.norm1(x + drop(self.attn(x, mask=mask)))
    return x + drop(self.ffn(self.norm2(x))) if self.norm_first else self.norm2(x + drop(self.ffn(x)))


BLOCK_WRONG = [
    (_block(_always_pre), "with norm_first=False your block computed Pre-Norm"),
    (_block(_pre_or_post(attn_res=False)), "the attention sublayer has no residual connection"),
    (_block(_pre_or_post(ffn_res=False)), "the feed-forward sublayer has no residual connection"),
    (_block(_pre_or_post(twice=True)), "the residual stream is normalized twice"),
    (_block(_pre_or_post(use_mask=False)), "your block ignores the mask"),
    (_block(_inverted_mask), "your mask is inverted"),
    (_block(_pre_or_post(same_norm=True)), "you used norm1 for both sublayers"),
    (_block(_pre_or_post(drop=False)), "in train mode your block gives its eval-mode output"),
    (_block(_functional_dropout), "in eval mode gave two different outputs"),
    # dropout misplaced: passed the visible and the hidden tests before they ran in train mode
    (_block(_drop_misplaced("stream")), "applies dropout to the residual stream itself"),
    (_block(_drop_misplaced("input")), "applies dropout to the sublayer's input"),
    (_block(_drop_misplaced("attn")), "applies dropout to the attention sublayer only"),
    (_block(_drop_misplaced("ffn")), "applies dropout to the feed-forward sublayer only"),
    (_block(_drop_only_when(False, "stream")), "applies dropout after the norm, drop(norm(x + f(x)))"),
    (_block(_drop_only_when(False, "sum")), "applies dropout to the sum x + f(x), before the norm"),
    (_block(_drop_only_when(False, "input")), "applies dropout to the sublayer's input"),
    (_block(_drop_train_ignored), "in train mode your block gives its eval-mode output"),
    (_block(_pre_or_post(), names=("mha", "ffn", "norm1", "norm2", "drop")), "has no attribute `attn`"),
    (_block(_pre_or_post(), ffn=lambda: nn.Sequential(nn.Linear(12, 20), nn.Linear(20, 12))),
     "there is no ReLU between the two Linear layers"),
    (_block(_pre_or_post(), extra=True), "parameters, expected"),
]


# --- masked_batch_norm -------------------------------------------------------------------------

@_named("masked_batch_norm")
def _mbn_ignores_mask(x, mask, weight, bias, eps=1e-5):
    return blocks.batch_norm(x, weight, bias, eps)


@_named("masked_batch_norm")
def _mbn_wrong_count(x, mask, weight, bias, eps=1e-5):
    m = mask[..., None].to(x.dtype)
    mean = (x * m).sum((0, 1)) / mask.numel()
    var = (((x - mean) * m) ** 2).sum((0, 1)) / mask.numel()
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


@_named("masked_batch_norm")
def _mbn_unbiased(x, mask, weight, bias, eps=1e-5):
    real = x[mask]
    return (x - real.mean(0)) / torch.sqrt(real.var(0) + eps) * weight + bias


@_named("masked_batch_norm")
def _mbn_per_sequence(x, mask, weight, bias, eps=1e-5):
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        real = x[b][mask[b]]
        out[b] = (x[b] - real.mean(0)) / torch.sqrt(real.var(0, unbiased=False) + eps) * weight + bias
    return out


MBN_WRONG = [
    (_mbn_ignores_mask, "you ignored the mask"),
    (_mbn_wrong_count, "divided by all"),
    (_mbn_unbiased, "you used the unbiased variance"),
    (_mbn_per_sequence, "you took the statistics of each sequence separately"),
]


# --- rms_norm_upcast ---------------------------------------------------------------------------

@_named("rms_norm_upcast")
def _upcast_never(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@_named("rms_norm_upcast")
def _upcast_returns_float32(x, weight, eps=1e-6):
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


@_named("rms_norm_upcast")
def _upcast_weight_before(x, weight, eps=1e-6):
    """Upcasts only the reciprocal, after squaring in half precision: the square already overflowed."""
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True).float() + eps).to(x.dtype)) * weight


UPCAST_WRONG = [
    (_upcast_never, "x**2 overflowed float16"),
    (_upcast_returns_float32, "has dtype torch.float32, expected torch.float16"),
    (_upcast_weight_before, "x**2 overflowed float16"),
]


EXERCISES = {
    "layer_norm": Exercise(check=checks.check_layer_norm, solution=blocks.layer_norm, wrong=LN_WRONG),
    "rms_norm": Exercise(check=checks.check_rms_norm, solution=blocks.rms_norm, wrong=RMS_WRONG),
    "batch_norm": Exercise(check=checks.check_batch_norm, solution=blocks.batch_norm, wrong=BN_WRONG),
    "TransformerBlock": Exercise(check=checks.check_TransformerBlock, solution=blocks.TransformerBlock,
                                 wrong=BLOCK_WRONG),
    "masked_batch_norm": Exercise(check=checks.check_masked_batch_norm, solution=blocks.masked_batch_norm,
                                  wrong=MBN_WRONG),
    "rms_norm_upcast": Exercise(check=checks.check_rms_norm_upcast, solution=blocks.rms_norm_upcast,
                                wrong=UPCAST_WRONG),
}
