"""Generated from solutions/04_multi_head_attention.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# Multi-head attention: n_heads attention heads of width d_head = d_model / n_heads, run
# side by side.
import torch
from torch import nn

from transformer_course.attention import attention_weights, scaled_dot_product_attention


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, N, D] -> [B, H, N, D // n_heads]: head h gets features h*d_head ..
    (h+1)*d_head - 1."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape [B, N, D], got {got}")
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive int, got {n_heads!r}")
    if x.shape[-1] % n_heads:
        raise ValueError(f"D = {x.shape[-1]} is not divisible by n_heads = {n_heads}")
    B, T, D = x.shape
    return x.reshape(B, T, n_heads, D // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, d_head] -> [B, N, H * d_head], the inverse of split_heads."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape [B, H, N, d_head], got {got}")
    B, H, T, d_head = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d_head)


class MultiHeadAttention(nn.Module):
    """Multi-head attention of Vaswani et al. (2017) with projections w_q, w_k, w_v, w_o
    (d_model x d_model).

    forward(x_q [B, n_q, D], x_kv [B, n_k, D] or None for self-attention, mask) ->
    [B, n_q, D]. mask: bool, True = may attend, broadcastable to [B, n_heads, n_q, n_k];
    a 3-D mask [B, n_q, n_k] is shared by all heads.
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(
                f"d_model = {d_model} is not divisible by n_heads = {n_heads}"
            )
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.w_q = nn.Linear(d_model, d_model, bias=bias)
        self.w_k = nn.Linear(d_model, d_model, bias=bias)
        self.w_v = nn.Linear(d_model, d_model, bias=bias)
        self.w_o = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x_kv = x_q if x_kv is None else x_kv
        for name, t in (("x_q", x_q), ("x_kv", x_kv)):
            if (
                not isinstance(t, torch.Tensor)
                or t.dim() != 3
                or t.shape[-1] != self.d_model
            ):
                got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(
                    f"{name} must have shape [B, n, d_model={self.d_model}], got {got}"
                )
        if x_q.shape[0] != x_kv.shape[0]:
            raise ValueError(
                f"x_q and x_kv must have the same batch size, got {list(x_q.shape)} "
                f"and {list(x_kv.shape)}"
            )
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]                      # one mask for every head
        q = split_heads(self.w_q(x_q), self.n_heads)   # [B, H, n_q, d_head]
        k = split_heads(self.w_k(x_kv), self.n_heads)  # [B, H, n_k, d_head]
        v = split_heads(self.w_v(x_kv), self.n_heads)
        return self.w_o(merge_heads(scaled_dot_product_attention(q, k, v, mask)))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, d_head={self.d_head}"


def head_weights(
    attn: MultiHeadAttention,
    x_q: torch.Tensor,
    x_kv: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention weights of every head of attn on these inputs:
    [B, n_heads, n_q, n_k]."""
    x_kv = x_q if x_kv is None else x_kv
    if mask is not None and mask.dim() == 3:
        mask = mask[:, None]
    q = split_heads(attn.w_q(x_q), attn.n_heads)
    k = split_heads(attn.w_k(x_kv), attn.n_heads)
    return attention_weights(q, k, mask)


def mha_flops(batch: int, n_q: int, n_k: int, d_model: int, n_heads: int) -> int:
    """Matmul FLOPs of one MultiHeadAttention forward: 2·m·n·k per [m, k] @ [k, n]."""
    if d_model % n_heads:
        raise ValueError(f"d_model = {d_model} is not divisible by n_heads = {n_heads}")
    d_head = d_model // n_heads
    # w_q, w_o on n_q; w_k, w_v on n_k
    projections = 2 * batch * (2 * n_q + 2 * n_k) * d_model * d_model
    # q k^T and weights @ v, per head
    attention = n_heads * 2 * (2 * batch * n_q * n_k * d_head)
    return projections + attention


def from_torch(m: nn.MultiheadAttention) -> MultiHeadAttention:
    """A MultiHeadAttention holding copies of the weights of nn.MultiheadAttention m
    (same function)."""
    if not isinstance(m, nn.MultiheadAttention) or not m._qkv_same_embed_dim:
        raise ValueError(
            "m must be an nn.MultiheadAttention with kdim = vdim = embed_dim"
        )
    bias = m.in_proj_bias is not None
    ours = MultiHeadAttention(m.embed_dim, m.num_heads, bias=bias).to(
        m.in_proj_weight.device, m.in_proj_weight.dtype
    )
    with torch.no_grad():
        for lin, w in zip((ours.w_q, ours.w_k, ours.w_v), m.in_proj_weight.chunk(3)):
            lin.weight.copy_(w)
        ours.w_o.weight.copy_(m.out_proj.weight)
        if bias:
            for lin, b in zip((ours.w_q, ours.w_k, ours.w_v), m.in_proj_bias.chunk(3)):
                lin.bias.copy_(b)
            ours.w_o.bias.copy_(m.out_proj.bias)
    return ours
