"""Chapter 02, positional encoding: the checks accept the exported solutions and name the usual mistakes."""
import torch

from exercises._case import Exercise
from transformer_course import positions
from transformer_course.checks.positions import (
    check_apply_rope,
    check_half_split_permutation,
    check_shift_matrix,
    check_sinusoidal_positions,
)


# --- sinusoidal_positions: wrong answers -------------------------------------------------------

def _odd_d(d_model):
    if d_model % 2:
        raise ValueError("d_model must be even")


def notes_version(n_positions, d_model):
    """The source notes: cos on even, sin on odd dimension j, exponent j/d."""
    _odd_d(d_model)
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    j = torch.arange(d_model, dtype=torch.float32)
    angles = pos / 10000.0 ** (j / d_model)
    return torch.where(j % 2 == 1, angles.sin(), angles.cos())


def concatenated(n_positions, d_model):
    """[sin..., cos...] instead of interleaved."""
    _odd_d(d_model)
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    angles = pos * 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


def exponent_i(n_positions, d_model):
    """10000^(i/d) with i counting pairs: frequencies decay too slowly."""
    _odd_d(d_model)
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    angles = pos * 10000.0 ** (-torch.arange(d_model // 2, dtype=torch.float32) / d_model)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).reshape(n_positions, d_model)


def exponent_4i(n_positions, d_model):
    """2 * arange(0, d, 2) / d: frequencies decay too fast."""
    _odd_d(d_model)
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    angles = pos * 10000.0 ** (-2 * torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).reshape(n_positions, d_model)


def from_one(n_positions, d_model):
    """Positions 1 .. n instead of 0 .. n-1."""
    return positions.sinusoidal_positions(n_positions + 1, d_model)[1:]


def float64_table(n_positions, d_model):
    return positions.sinusoidal_positions(n_positions, d_model).double()


def no_odd_check(n_positions, d_model):
    return torch.zeros(n_positions, d_model)


# --- apply_rope: wrong answers -----------------------------------------------------------------

def _rope(x, positions_, *, half_split=False, sign=1.0, pair_exponent=2.0, dtype=torch.float32):
    if x.shape[-1] % 2:
        raise ValueError("d must be even")
    d = x.shape[-1]
    theta = 10000.0 ** (-pair_exponent * torch.arange(d // 2, dtype=dtype) / d)
    angles = sign * positions_.to(dtype)[:, None] * theta
    cos, sin = angles.cos(), angles.sin()
    if half_split:
        x1, x2 = x[..., : d // 2].to(dtype), x[..., d // 2:].to(dtype)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)
    x1, x2 = x[..., 0::2].to(dtype), x[..., 1::2].to(dtype)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).to(x.dtype)


def rope_half_split(x, positions_):
    return _rope(x, positions_, half_split=True)


def rope_wrong_direction(x, positions_):
    return _rope(x, positions_, sign=-1.0)


def rope_ignores_positions(x, positions_):
    return _rope(x, torch.arange(x.shape[-2]))


def rope_theta_i(x, positions_):
    return _rope(x, positions_, pair_exponent=1.0)


def rope_in_x_dtype(x, positions_):
    """Angles, cos and sin in x's dtype: fine in float32, wrong in bfloat16 at large positions."""
    return _rope(x, positions_, dtype=x.dtype if x.dtype != torch.float64 else torch.float64)


def rope_returns_float32(x, positions_):
    return _rope(x, positions_).float()


def rope_cos_twice(x, positions_):
    if x.shape[-1] % 2:
        raise ValueError("d must be even")
    d = x.shape[-1]
    angles = positions_.float()[:, None] * 10000.0 ** (-torch.arange(0, d, 2).float() / d)
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    c = angles.cos()
    return torch.stack((x1 * c - x2 * c, x1 * c + x2 * c), dim=-1).flatten(-2).to(x.dtype)


def rope_no_odd_check(x, positions_):
    """Right for even d; for odd d returns x unchanged instead of raising ValueError."""
    if x.shape[-1] % 2:
        return x.clone()
    return _rope(x, positions_)


def rope_in_place(x, positions_):
    x.copy_(_rope(x, positions_))
    return x


# --- shift_matrix and half_split_permutation: wrong answers ------------------------------------

def shift_transposed(k, d_model):
    return positions.shift_matrix(k, d_model).T.contiguous()


def shift_same_angle(k, d_model):
    c, s = torch.cos(torch.tensor(float(k))), torch.sin(torch.tensor(float(k)))
    return torch.block_diag(*[torch.stack((torch.stack((c, -s)), torch.stack((s, c))))] * (d_model // 2))


def shift_identity(k, d_model):
    return torch.eye(d_model)


def perm_identity(d):
    return torch.arange(d)


def perm_inverse(d):
    return positions.half_split_permutation(d).argsort()


def perm_swapped_in_pairs(d):
    half = torch.arange(d // 2)
    return torch.stack((half + d // 2, half), dim=-1).reshape(d)


EXERCISES = {
    "sinusoidal_positions": Exercise(
        check=check_sinusoidal_positions,
        solution=positions.sinusoidal_positions,
        wrong=[
            (notes_version, "dimension 0 looks like cos where sin is expected"),
            (concatenated, "all the sines first and then all the cosines"),
            (exponent_i, "exponent uses i where 2i is expected"),
            (exponent_4i, "frequencies decay too fast"),
            (from_one, "positions count from 0"),
            (float64_table, "expected torch.float32"),
            (no_odd_check, "differs from the expected values"),
        ],
    ),
    "apply_rope": Exercise(
        check=check_apply_rope,
        solution=positions.apply_rope,
        wrong=[
            (rope_half_split, "you rotated pairs (i, i + d/2); this course pairs (2i, 2i+1)"),
            (rope_wrong_direction, "your rotation goes the wrong way"),
            (rope_ignores_positions, "ignored `positions`"),
            (rope_theta_i, "θ_i uses i where 2i is expected"),
            (rope_in_x_dtype, "compute the angles, cos and sin in float32"),
            (rope_returns_float32, "the result must keep x's dtype"),
            (rope_cos_twice, "a rotation keeps the length of every pair"),
            (rope_in_place, "changed x in place"),
            # arguments described by shape, never printed whole (issue 10, erratum 12)
            (rope_no_odd_check, "rope_no_odd_check(tensor of shape [3, 5] (float32), tensor of "
                                "shape [3] (int64)) returned a result; it should raise ValueError"),
        ],
    ),
    "shift_matrix": Exercise(
        check=check_shift_matrix,
        solution=positions.shift_matrix,
        wrong=[
            (shift_transposed, "it is the transpose of M_k"),
            (shift_same_angle, "every pair turns by the same angle k"),
            (shift_identity, "PE(pos) @ M differs from PE(pos + k)"),
        ],
    ),
    "half_split_permutation": Exercise(
        check=check_half_split_permutation,
        solution=positions.half_split_permutation,
        wrong=[
            (perm_identity, "is arange(d), which changes nothing"),
            (perm_inverse, "you returned the inverse permutation"),
            (perm_swapped_in_pairs, "perm[2i] must be i and perm[2i+1] must be i + d/2"),
        ],
    ),
}
