"""Generated from solutions/05_normalization_and_residuals.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# Normalization layers, the residual wiring, and the transformer block built from them.
import torch
from torch import nn

from transformer_course.multihead import MultiHeadAttention


def check_norm_inputs(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> None:
    """Raise a clear error unless x is a float tensor [..., D] and weight (and bias)
    have shape [D]."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point():
        got = (
            f"{x.dtype} tensor of shape {list(x.shape)}"
            if isinstance(x, torch.Tensor)
            else type(x).__name__
        )
        raise ValueError(
            f"x must be a floating-point tensor of shape [..., D], got {got}"
        )
    D = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if name == "bias" and t is None:
            continue
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (D,):
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"{name} must have shape [D] = [{D}], one value per feature of x "
                f"(x has shape {list(x.shape)}), got {got}"
            )


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """LayerNorm over the last dimension: each token is normalized by its own mean and
    variance.

    x [..., D], weight and bias [D] -> [..., D]: (x - mean) / sqrt(var + eps) * weight +
    bias, with the
    mean and the biased variance (divide by D) of each token's D features.
    """
    check_norm_inputs(x, weight, bias)
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension: divide by the root mean square, no centring, no
    bias.

    x [..., D], weight [D] -> [..., D]: x / sqrt(mean(x**2, -1) + eps) * weight.
    """
    check_norm_inputs(x, weight)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class RMSNorm(nn.Module):
    """RMSNorm(d_model, eps) as a layer: rms_norm with a learned weight (initialized to
    1)."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d_model)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def batch_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """BatchNorm in training mode: statistics over every dimension but the last (the
    features).

    x [..., D], weight and bias [D] -> [..., D]: each feature j is normalized by the
    mean and the biased
    variance of x[..., j] over the whole batch.
    """
    check_norm_inputs(x, weight, bias)
    dims = tuple(range(x.dim() - 1))
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def residual(
    x: torch.Tensor, sublayer, norm: nn.Module, dropout: nn.Module, norm_first: bool
) -> torch.Tensor:
    """One sublayer with its residual connection: Pre-Norm x + f(norm(x)), or Post-Norm
    norm(x + f(x))."""
    if norm_first:
        return x + dropout(sublayer(norm(x)))
    return norm(x + dropout(sublayer(x)))


class TransformerBlock(nn.Module):
    """Self-attention and a two-layer ReLU MLP, each wrapped in a residual connection
    with LayerNorm.

    norm_first=True is Pre-Norm (x + f(LN(x))); False is Post-Norm (LN(x + f(x))), as in
    the 2017 paper.
    forward(x [B, N, D], mask: bool, True = may attend) -> [B, N, D].
    Attributes: attn (MultiHeadAttention), ffn (Linear, ReLU, Linear), norm1, norm2
    (LayerNorm), drop.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        norm_first: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model)
        )
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"x must have shape [B, N, d_model], got {list(x.shape)}")
        x = residual(
            x, lambda h: self.attn(h, mask=mask), self.norm1, self.drop, self.norm_first
        )
        return residual(x, self.ffn, self.norm2, self.drop, self.norm_first)


def masked_batch_norm(
    x: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
) -> torch.Tensor:
    """BatchNorm (training mode) whose statistics come from the real tokens only.

    x [..., D], mask bool [...] (x's shape without D; True = real token), weight and
    bias [D] -> [..., D].
    Every position is normalized with the mean and biased variance of x[mask]; padded
    outputs are not used.
    """
    check_norm_inputs(x, weight, bias)
    if (
        not isinstance(mask, torch.Tensor)
        or mask.dtype != torch.bool
        or mask.shape != x.shape[:-1]
    ):
        got = (
            f"{mask.dtype} of shape {list(mask.shape)}"
            if isinstance(mask, torch.Tensor)
            else type(mask).__name__
        )
        raise ValueError(
            f"mask must be a bool tensor of shape {list(x.shape[:-1])} (x's shape"
            f" without D), got {got}"
        )
    real = x[mask]  # [N_real, D]
    mean = real.mean(0)
    var = real.var(0, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def rms_norm_upcast(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """rms_norm with float32 statistics: safe for float16/bfloat16 inputs; returns x's
    dtype."""
    check_norm_inputs(x, weight)
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)
