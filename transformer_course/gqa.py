"""Generated from solutions/11_gqa.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# Grouped-query and multi-query attention: H query heads share G key/value heads.
# Converting a multi-head model by mean-pooling its K/V heads, and multi-head latent
# attention (DeepSeek-V2).
import copy
import math

import torch
from torch import nn

from transformer_course.attention import scaled_dot_product_attention
from transformer_course.multihead import MultiHeadAttention, merge_heads, split_heads


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, G, N, d] -> [B, G * n_rep, N, d]: each K/V head repeated for n_rep
    consecutive query heads, so head h of the result is x[:, h // n_rep] (the order of
    repeat_interleave)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape [B, G, N, d], got {got}")
    if isinstance(n_rep, bool) or not isinstance(n_rep, int) or n_rep < 1:
        raise ValueError(f"n_rep must be a positive int, got {n_rep!r}")
    B, G, N, d = x.shape
    return x[:, :, None].expand(B, G, n_rep, N, d).reshape(B, G * n_rep, N, d)


def grouped_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention with H query heads and G key/value heads: q [B, H, N_q, d], k and v
    [B, G, N_k, d], H a multiple of G -> [B, H, N_q, d]. Query head h uses K/V head
    h // (H // G). mask: bool, True = may attend, broadcastable to [B, H, N_q, N_k]."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor [B, heads, N, d], got {got}")
    if (k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0]
            or q.shape[-1] != k.shape[-1]):
        raise ValueError(f"need q [B, H, N_q, d] and k, v [B, G, N_k, d], "
                         f"got q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"the number of query heads H = {q.shape[1]} must be a "
                         f"multiple of the number of K/V heads G = {k.shape[1]}")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = may attend), got {mask.dtype}")
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


class GroupedQueryAttention(nn.Module):
    """Attention with n_heads query heads sharing n_kv_heads key/value heads (Ainslie et
    al., 2023): n_kv_heads = n_heads is MultiHeadAttention, n_kv_heads = 1 multi-query
    attention.

    Parts w_q, w_o: d_model -> d_model; w_k, w_v: d_model -> n_kv_heads * d_head.
    forward(x_q [B, n_q, D], x_kv [B, n_k, D] or None for self-attention, mask)
    -> [B, n_q, D], the mask as in MultiHeadAttention (bool, True = may attend; a 3-D
    mask [B, n_q, n_k] is shared by all heads).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, bias: bool = True):
        super().__init__()
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"need d_model divisible by n_heads and n_heads by "
                             f"n_kv_heads, got d_model={d_model}, n_heads={n_heads}, "
                             f"n_kv_heads={n_kv_heads}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.d_head = d_model // n_heads
        self.w_q = nn.Linear(d_model, d_model, bias=bias)
        self.w_k = nn.Linear(d_model, n_kv_heads * self.d_head, bias=bias)
        self.w_v = nn.Linear(d_model, n_kv_heads * self.d_head, bias=bias)
        self.w_o = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x_kv = x_q if x_kv is None else x_kv
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]                           # one mask for every head
        q = split_heads(self.w_q(x_q), self.n_heads)       # [B, H, n_q, d_head]
        k = split_heads(self.w_k(x_kv), self.n_kv_heads)   # [B, G, n_k, d_head]: cached
        v = split_heads(self.w_v(x_kv), self.n_kv_heads)
        return self.w_o(merge_heads(grouped_query_attention(q, k, v, mask)))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, "
                f"n_kv_heads={self.n_kv_heads}")


def mean_pool_kv_heads(w: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """[H * d_head, D] -> [G * d_head, D]: K/V head g of the result (rows g*d_head ..
    (g+1)*d_head - 1) is the mean of heads g*H/G .. (g+1)*H/G - 1 of w, the group of
    consecutive query heads that reads K/V head g. H = n_heads, G = n_kv_heads, G
    divides H."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        got = list(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"w must be a matrix [n_heads * d_head, D], got {got}")
    if n_heads < 1 or n_kv_heads < 1 or n_heads % n_kv_heads or w.shape[0] % n_heads:
        raise ValueError(f"need n_kv_heads to divide n_heads and n_heads to divide w's "
                         f"{w.shape[0]} rows, got n_heads={n_heads}, "
                         f"n_kv_heads={n_kv_heads}")
    d_head, D = w.shape[0] // n_heads, w.shape[1]
    # [G, H/G, d_head, D]: group g holds the consecutive heads g*H/G .. (g+1)*H/G - 1
    groups = w.reshape(n_kv_heads, n_heads // n_kv_heads, d_head, D)
    return groups.mean(dim=1).reshape(n_kv_heads * d_head, D)


def gqa_from_mha(mha: MultiHeadAttention, n_kv_heads: int) -> GroupedQueryAttention:
    """A GroupedQueryAttention with mha's W_Q and W_O and its K/V heads mean-pooled in
    groups."""
    H, has_bias = mha.n_heads, mha.w_q.bias is not None
    gqa = GroupedQueryAttention(mha.d_model, H, n_kv_heads, bias=has_bias)
    gqa.to(mha.w_q.weight.device, mha.w_q.weight.dtype)
    with torch.no_grad():
        for name in ("w_q", "w_o"):
            getattr(gqa, name).load_state_dict(getattr(mha, name).state_dict())
        for name in ("w_k", "w_v"):
            src, dst = getattr(mha, name), getattr(gqa, name)
            dst.weight.copy_(mean_pool_kv_heads(src.weight, H, n_kv_heads))
            if has_bias:
                # the bias [H*d_head] pooled as a one-column matrix
                bias = mean_pool_kv_heads(src.bias[:, None], H, n_kv_heads)
                dst.bias.copy_(bias[:, 0])
    return gqa


def convert_to_gqa(model: nn.Module, n_kv_heads: int) -> nn.Module:
    """A copy of model in which every MultiHeadAttention is replaced by
    gqa_from_mha(it, n_kv_heads)."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MultiHeadAttention):
                setattr(module, name, gqa_from_mha(child, n_kv_heads))
    return model


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2, 2024) without its decoupled RoPE part:
    keys and values are decompressed from a latent c_kv = x W_DKV^T of width d_latent,
    the only thing a cache keeps per token. No biases, so that W_UK and W_UV can be
    absorbed.

    Parts w_q, w_o: d_model -> d_model; w_dkv: d_model -> d_latent; w_uk, w_uv:
    d_latent -> d_model (n_heads heads of d_head). forward(x [B, N, D], mask,
    absorb=False) -> [B, N, D].
    """

    def __init__(self, d_model: int, n_heads: int, d_latent: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model = {d_model} is not divisible by "
                             f"n_heads = {n_heads}")
        self.n_heads, self.d_head, self.d_latent = n_heads, d_model // n_heads, d_latent
        self.w_q = nn.Linear(d_model, d_model, bias=False)
        self.w_dkv = nn.Linear(d_model, d_latent, bias=False)  # down: what is cached
        self.w_uk = nn.Linear(d_latent, d_model, bias=False)   # up: all heads' keys
        self.w_uv = nn.Linear(d_latent, d_model, bias=False)   # up: all heads' values
        self.w_o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                absorb: bool = False) -> torch.Tensor:
        c = self.w_dkv(x)                                        # [B, N, d_latent]
        q = split_heads(self.w_q(x), self.n_heads)               # [B, H, N, d_head]
        if not absorb:
            k = split_heads(self.w_uk(c), self.n_heads)          # [B, H, N, d_head]
            v = split_heads(self.w_uv(c), self.n_heads)
            return self.w_o(merge_heads(scaled_dot_product_attention(q, k, v, mask)))
        H, d, r = self.n_heads, self.d_head, self.d_latent
        w_uk = self.w_uk.weight.view(H, d, r)    # head h of W_UK: [d_head, d_latent]
        w_uv = self.w_uv.weight.view(H, d, r)
        q_latent = q @ w_uk                                      # [B, H, N, d_latent]
        # the same scale as the decompressed form: 1/sqrt(d_head), not 1/sqrt(d_latent)
        scores = q_latent @ c[:, None].transpose(-2, -1) / math.sqrt(d)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        o_latent = scores.softmax(-1) @ c[:, None]               # [B, H, N, d_latent]
        return self.w_o(merge_heads(o_latent @ w_uv.transpose(-2, -1)))


def mla_cache_bytes(n_layers: int, d_latent: int, d_rope: int, seq_len: int, batch: int,
                    bytes_per_element: int) -> int:
    """Bytes of a multi-head latent attention cache: per layer and token, one latent
    c_kv of d_latent entries and one RoPE key of d_rope entries (no per-head keys or
    values)."""
    return n_layers * (d_latent + d_rope) * seq_len * batch * bytes_per_element
