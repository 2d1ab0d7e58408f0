"""Chapter 04 (multi-head attention): the exercises, their checks, and plausible wrong answers."""

import math

import torch
from torch import nn

from exercises._case import Exercise
from transformer_course import multihead
from transformer_course.attention import attention_weights, scaled_dot_product_attention
from transformer_course.checks import multihead as checks


# --- split_heads -------------------------------------------------------------------------------

def _split(make):
    def split_heads(x, n_heads):
        B, T, D = x.shape
        return make(x, B, T, D, n_heads, D // n_heads)
    return split_heads


SPLIT_WRONG = [
    (_split(lambda x, B, T, D, H, d: x.reshape(B, H, T, d)), "your heads mix positions"),
    (_split(lambda x, B, T, D, H, d: x.reshape(B, T, H, d)), "swap them with .transpose(1, 2)"),
    (_split(lambda x, B, T, D, H, d: x.reshape(B, T, d, H).permute(0, 3, 1, 2)), "every n_heads-th feature"),
    (_split(lambda x, B, T, D, H, d: x.reshape(B, T, H, d).transpose(1, 2).squeeze()),
     "expected [B, n_heads, T, d_head] = [1, 2, 1, 4]"),
    (_split(lambda x, B, T, D, H, d: x.reshape(B, T, H, d).transpose(1, 2).flip(1)),
     "differs from the expected values"),
]


# --- merge_heads -------------------------------------------------------------------------------

def _merge(make):
    def merge_heads(x):
        B, H, T, d = x.shape
        return make(x, B, H, T, d)
    return merge_heads


MERGE_WRONG = [
    (_merge(lambda x, B, H, T, d: x.reshape(B, T, H * d)), "your output mixes positions"),
    (_merge(lambda x, B, H, T, d: x.permute(0, 2, 3, 1).reshape(B, T, H * d)), "merged the heads in the wrong order"),
    (_merge(lambda x, B, H, T, d: x.transpose(1, 2)), "flatten the heads into the features"),
    (_merge(lambda x, B, H, T, d: x.transpose(1, 2).view(B, T, H * d)), ".view() refused"),
    (_merge(lambda x, B, H, T, d: x.flip(1).transpose(1, 2).reshape(B, T, H * d)), "differs from the expected values"),
]


# --- MultiHeadAttention ------------------------------------------------------------------------

def _mha(mistake=None, names=("w_q", "w_k", "w_v", "w_o"), ignore_bias=False):
    """A MultiHeadAttention class with one mistake."""

    class MultiHeadAttention(nn.Module):
        def __init__(self, d_model, n_heads, bias=True):
            super().__init__()
            self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
            bias = True if ignore_bias else bias
            for name in names:
                setattr(self, name, nn.Linear(d_model, d_model, bias=bias))

        def forward(self, x_q, x_kv=None, mask=None):
            x_kv = x_q if x_kv is None else x_kv
            if mask is not None and mask.dim() == 3:
                mask = mask[:, None]
            B, n_q, D = x_q.shape
            H, d = self.n_heads, self.d_head

            def split(t):
                if mistake == "split_no_transpose":
                    return t.reshape(B, H, t.shape[1], d)
                return multihead.split_heads(t, H)

            def merge(t):
                if mistake == "merge_interleaved":
                    return t.permute(0, 2, 3, 1).reshape(B, n_q, D)
                if mistake == "merge_no_transpose":
                    return t.reshape(B, n_q, D)
                return multihead.merge_heads(t)

            kv = x_q if mistake == "kv_from_q" else x_kv
            q, k = split(self.w_q(x_q)), split(self.w_k(kv))
            v = split((self.w_k if mistake == "v_from_k" else self.w_v)(kv))
            if mistake == "scale_dmodel":
                scores = q @ k.transpose(-2, -1) / math.sqrt(D)
                if mask is not None:
                    scores = scores.masked_fill(~mask, float("-inf"))
                out = torch.softmax(scores, -1) @ v
            else:
                out = scaled_dot_product_attention(q, k, v, None if mistake == "no_mask" else mask)
            out = merge(out)
            return out if mistake == "no_wo" else self.w_o(out)

    return MultiHeadAttention


def _mha_one_head():
    class MultiHeadAttention(nn.Module):
        """Attention with d_model-wide queries and keys: a single head, whatever n_heads says."""

        def __init__(self, d_model, n_heads, bias=True):
            super().__init__()
            self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
            self.w_q, self.w_k, self.w_v, self.w_o = (nn.Linear(d_model, d_model, bias=bias) for _ in range(4))

        def forward(self, x_q, x_kv=None, mask=None):
            x_kv = x_q if x_kv is None else x_kv
            if mask is not None and mask.dim() == 4:
                mask = mask.all(1)
            return self.w_o(scaled_dot_product_attention(self.w_q(x_q), self.w_k(x_kv), self.w_v(x_kv), mask))

    return MultiHeadAttention


MHA_WRONG = [
    (_mha("no_wo", names=("w_q", "w_k", "w_v")), "has no attribute w_o"),
    (_mha("no_wo"), "without the output projection"),
    (_mha("scale_dmodel"), "you scaled the scores by sqrt(d_model) = sqrt(16)"),
    (_mha("split_no_transpose"), "your heads mix positions"),
    (_mha("merge_no_transpose"), "your output mixes positions"),
    (_mha("merge_interleaved"), "you merged the heads in the wrong order"),
    (_mha("no_mask"), "does not depend on the mask"),
    (_mha("v_from_k"), "your values are computed with w_k"),
    (_mha("kv_from_q"), "your keys and values come from x_q"),
    (_mha(ignore_bias=True), "has bias: pass bias=bias"),
    (_mha(names=("q_proj", "k_proj", "v_proj", "out_proj")), "has no attribute w_q"),
    (_mha_one_head(), "a single head of width d_model"),
]


# --- head_weights ------------------------------------------------------------------------------

def _weights(mistake):
    def head_weights(attn, x_q, x_kv=None, mask=None):
        x_kv = x_q if x_kv is None else x_kv
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]
        q = multihead.split_heads(attn.w_q(x_q), attn.n_heads)
        k = multihead.split_heads(attn.w_k(x_kv), attn.n_heads)
        if mistake == "average":
            return attention_weights(q, k, mask).mean(1)
        if mistake == "no_mask":
            return attention_weights(q, k)
        if mistake == "scale_dmodel":
            scores = q @ k.transpose(-2, -1) / math.sqrt(attn.d_model)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            return torch.softmax(scores, -1)
        if mistake == "dim":
            scores = q @ k.transpose(-2, -1) / math.sqrt(attn.d_head)
            return torch.softmax(scores, -2)
        raise ValueError(mistake)
    return head_weights


WEIGHTS_WRONG = [
    (_weights("average"), "one map per head"),
    (_weights("no_mask"), "a masked key got weight"),
    (_weights("scale_dmodel"), "you scaled the scores by sqrt(d_model)"),
    (_weights("dim"), "rows of your weights sum to"),
]


# --- mha_flops ---------------------------------------------------------------------------------

def _flops(projections, attention):
    def mha_flops(batch, n_q, n_k, d_model, n_heads):
        return projections(batch, n_q, n_k, d_model) + attention(batch, n_q, n_k, d_model, d_model // n_heads, n_heads)
    return mha_flops


_proj = lambda B, nq, nk, D: 2 * B * (2 * nq + 2 * nk) * D * D
_att = lambda B, nq, nk, D, d, H: 4 * B * nq * nk * d * H

FLOPS_WRONG = [
    (_flops(lambda B, nq, nk, D: B * (2 * nq + 2 * nk) * D * D, lambda B, nq, nk, D, d, H: 2 * B * nq * nk * D),
     "count 2 FLOPs per multiply-add"),
    (_flops(lambda B, nq, nk, D: 2 * B * (nq + 2 * nk) * D * D, _att), "you left out the output projection w_o"),
    (_flops(_proj, lambda B, nq, nk, D, d, H: 4 * B * nq * nk * d), "your attention part counts one head"),
    (_flops(_proj, lambda B, nq, nk, D, d, H: 4 * B * nq * nk * D * H), "n_heads = 4 times too large"),
    (_flops(lambda B, nq, nk, D: 8 * B * nq * D * D, _att), "not of the n_q = 5 queries"),
    (_flops(_proj, lambda B, nq, nk, D, d, H: 2 * B * nq * nk * D), "two matmuls per head"),
    (lambda batch, n_q, n_k, d_model, n_heads: float(_proj(batch, n_q, n_k, d_model)) + 0.5, "should return an int"),
    # right count, wrong type: d_head = d_model / n_heads makes a float (the docstring says int)
    (lambda batch, n_q, n_k, d_model, n_heads: multihead.mha_flops(batch, n_q, n_k, d_model, n_heads) * 1.0,
     "got float 29056.0: multiply ints, and use // rather than /"),
    (lambda batch, n_q, n_k, d_model, n_heads: torch.tensor(multihead.mha_flops(batch, n_q, n_k, d_model, n_heads)),
     "got Tensor tensor of shape [] (int64)"),
]


# --- from_torch --------------------------------------------------------------------------------

def _from_torch(order=(0, 1, 2), transpose=False, bias=True, share=False):
    def from_torch(m):
        has_bias = m.in_proj_bias is not None
        ours = multihead.MultiHeadAttention(m.embed_dim, m.num_heads, bias=has_bias)
        blocks = m.in_proj_weight.chunk(3)
        with torch.no_grad():
            for lin, i in zip((ours.w_q, ours.w_k, ours.w_v), order):
                w = blocks[i].T if transpose else blocks[i]
                if share:
                    lin.weight = nn.Parameter(blocks[i])
                else:
                    lin.weight.copy_(w)
            ours.w_o.weight.copy_(m.out_proj.weight)
            if has_bias and bias:
                for lin, b in zip((ours.w_q, ours.w_k, ours.w_v), m.in_proj_bias.chunk(3)):
                    lin.bias.copy_(b)
                ours.w_o.bias.copy_(m.out_proj.bias)
        return ours
    return from_torch


FROM_TORCH_WRONG = [
    (_from_torch(order=(0, 2, 1)), "your w_k holds nn.MultiheadAttention's w_v block"),
    (_from_torch(transpose=True), "your w_q.weight is transposed"),
    (_from_torch(bias=False), "copy in_proj_bias.chunk(3) and out_proj.bias too"),
    (_from_torch(share=True), "shares its weight tensor with nn.MultiheadAttention"),
]


EXERCISES = {
    "split_heads": Exercise(check=checks.check_split_heads, solution=multihead.split_heads, wrong=SPLIT_WRONG),
    "merge_heads": Exercise(check=checks.check_merge_heads, solution=multihead.merge_heads, wrong=MERGE_WRONG),
    "MultiHeadAttention": Exercise(check=checks.check_MultiHeadAttention, solution=multihead.MultiHeadAttention,
                                   wrong=MHA_WRONG),
    "head_weights": Exercise(check=checks.check_head_weights, solution=multihead.head_weights, wrong=WEIGHTS_WRONG),
    "mha_flops": Exercise(check=checks.check_mha_flops, solution=multihead.mha_flops, wrong=FLOPS_WRONG),
    "from_torch": Exercise(check=checks.check_from_torch, solution=multihead.from_torch, wrong=FROM_TORCH_WRONG),
}
