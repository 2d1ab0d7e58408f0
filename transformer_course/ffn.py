"""Generated from solutions/06_feed_forward.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# The position-wise feed-forward networks (two linear layers around a nonlinearity,
# and SwiGLU),
# LLaMA's SwiGLU width, and the parameter count of a whole block.
import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
}  # "gelu" is the exact x·Φ(x), PyTorch's default


class FeedForward(nn.Module):
    """FFN(x) = w_2(act(w_1 x + b_1)) + b_2, applied to every position on its own; act
    is relu or gelu.

    w_1: nn.Linear(d_model, d_ff), w_2: nn.Linear(d_ff, d_model), both with biases.
    forward(x [..., d_model]) -> [..., d_model].
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        self.activation = ACTIVATIONS[activation]
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.activation(self.w_1(x)))


class SwiGLU(nn.Module):
    """SwiGLU(x) = w_2(SiLU(w_1 x) * w_3 x), no biases (Shazeer 2020; the FFN of LLaMA).

    w_1 (gate) and w_3 (value): nn.Linear(d_model, d_ff, bias=False); w_2:
    nn.Linear(d_ff, d_model,
    bias=False). forward(x [..., d_model]) -> [..., d_model].
    """

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff, bias=False)  # gate
        self.w_3 = nn.Linear(d_model, d_ff, bias=False)  # value
        self.w_2 = nn.Linear(d_ff, d_model, bias=False)  # back to d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)) * self.w_3(x))


def swiglu_d_ff(d_model: int, multiple_of: int = 256) -> int:
    """LLaMA's SwiGLU width: int(2/3 · 4 · d_model), rounded up to a multiple of
    multiple_of."""
    for name, v in (("d_model", d_model), ("multiple_of", multiple_of)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    hidden = int(2 * (4 * d_model) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def block_param_count(d_model: int, d_ff: int, swiglu: bool = False) -> int:
    """Parameters of one transformer block: attention (W_Q, W_K, W_V, W_O), the FFN and
    two norms.

    swiglu=False: the 2017 / GPT-2 block, every linear layer with a bias, a two-layer
    FFN, two LayerNorms.
    swiglu=True: the LLaMA block, no biases, a SwiGLU FFN, two RMSNorms. The number of
    heads does not matter.
    """
    for name, v in (("d_model", d_model), ("d_ff", d_ff)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    d = d_model
    if swiglu:
        return 4 * d * d + 3 * d * d_ff + 2 * d
    return (4 * d * d + 4 * d) + (2 * d * d_ff + d_ff + d) + 4 * d
