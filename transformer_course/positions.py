"""Generated from solutions/02_positional_encoding.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# Where tokens are: sinusoidal tables, rotary position embeddings (RoPE) and their
# cached cos/sin.
import torch


def sinusoidal_positions(n_positions: int, d_model: int) -> torch.Tensor:
    """The table of Vaswani et al. (2017), float32 [n_positions, d_model]: PE[pos, 2i] =
    sin(pos / 10000^(2i/d_model)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d_model))."""
    if d_model % 2:
        raise ValueError(
            f"d_model must be even (dimensions come in sin/cos pairs), got {d_model}"
        )
    # [n, 1]
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    # [d/2]: 2i/d
    omega = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    # [n, d/2]
    angles = pos * omega
    pe = torch.empty(n_positions, d_model)
    pe[:, 0::2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe


def apply_rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al., 2021): for x [..., seq, d] and positions
    [seq], turn each pair (x[2i], x[2i+1]) of token j by the angle positions[j] ·
    10000^(-2i/d). Returns a new tensor with x's shape and dtype; the arithmetic is done
    in float32 or wider."""
    if x.dim() < 2 or x.shape[-1] % 2:
        raise ValueError(
            f"x must have shape [..., seq, d] with d even, got {tuple(x.shape)}"
        )
    if positions.shape != (x.shape[-2],):
        raise ValueError(
            f"positions must have shape [seq] = [{x.shape[-2]}], got"
            f" {tuple(positions.shape)}"
        )
    d = x.shape[-1]
    # never rotate in 16 bits
    work = torch.promote_types(x.dtype, torch.float32)
    # [d/2]
    theta = 10000.0 ** (-torch.arange(0, d, 2, device=x.device, dtype=work) / d)
    # [seq, d/2]
    angles = positions.to(device=x.device, dtype=work)[:, None] * theta
    cos, sin = angles.cos(), angles.sin()
    # the pairs (2i, 2i+1)
    x1, x2 = x[..., 0::2].to(work), x[..., 1::2].to(work)
    # [..., seq, d/2, 2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


def rope_angles(positions: torch.Tensor, d: int, base: float = 10000.0) -> torch.Tensor:
    """Angles positions[j] · base^(-2i/d) in float32 (float64 if positions are float64):
    [seq, d/2]."""
    if d % 2:
        raise ValueError(f"d must be even, got {d}")
    work = (
        torch.promote_types(positions.dtype, torch.float32)
        if positions.is_floating_point()
        else torch.float32
    )
    theta = base ** (-torch.arange(0, d, 2, device=positions.device, dtype=work) / d)
    return positions.to(work)[:, None] * theta


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn pairs (x[2i], x[2i+1]) of x [..., seq, d] by the angles whose cos, sin are
    [seq, d/2]."""
    work = torch.promote_types(x.dtype, cos.dtype)
    x1, x2 = x[..., 0::2].to(work), x[..., 1::2].to(work)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


class RopeCache:
    """cos/sin of the RoPE angles for positions 0 .. max_positions - 1, computed once in
    float32.

    cache(x, positions) equals apply_rope(x, positions) for integer positions, without
    recomputing any cosine: it gathers rows of the cached tables.
    """

    def __init__(self, d: int, max_positions: int, base: float = 10000.0, device=None):
        angles = rope_angles(torch.arange(max_positions, device=device), d, base)
        self.d, self.max_positions = d, max_positions
        # [max_positions, d/2]
        self.cos, self.sin = angles.cos(), angles.sin()

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d:
            raise ValueError(
                f"x must have last dimension d = {self.d}, got {tuple(x.shape)}"
            )
        if (
            positions.is_floating_point()
            or positions.numel()
            and int(positions.max()) >= self.max_positions
        ):
            raise ValueError(
                f"positions must be integers below max_positions = {self.max_positions}"
            )
        positions = positions.to(self.cos.device)
        return rotate_pairs(x, self.cos[positions], self.sin[positions])


def shift_matrix(k: int, d_model: int) -> torch.Tensor:
    """M_k, float32 [d_model, d_model], with PE(pos + k) = PE(pos) @ M_k for the
    sinusoidal table PE: block-diagonal, one 2x2 rotation by k · 10000^(-2i/d_model) per
    pair (2i, 2i+1)."""
    if d_model % 2:
        raise ValueError(f"d_model must be even, got {d_model}")
    angles = k * 10000.0 ** (
        -torch.arange(0, d_model, 2, dtype=torch.float64) / d_model
    )
    c, s = angles.cos(), angles.sin()
    M = torch.zeros(d_model, d_model, dtype=torch.float64)
    M[0::2, 0::2] = torch.diag(c)      # sin' = sin·c + cos·s
    M[1::2, 0::2] = torch.diag(s)
    M[0::2, 1::2] = torch.diag(-s)     # cos' = cos·c - sin·s
    M[1::2, 1::2] = torch.diag(c)
    return M.float()


def half_split_permutation(d: int) -> torch.Tensor:
    """Long [d] index tensor perm such that x_half[..., perm] is in the interleaved
    layout: apply_rope(x[..., perm], p) == apply_rope_half_split(x, p)[..., perm] for
    all x, p."""
    if d % 2:
        raise ValueError(f"d must be even, got {d}")
    half = torch.arange(d // 2)
    return torch.stack((half, half + d // 2), dim=-1).reshape(d)
