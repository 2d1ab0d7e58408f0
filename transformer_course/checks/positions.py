"""Checks for chapter 02, positional encoding: sinusoidal tables, rotary embeddings (RoPE),
the shift map of the sinusoidal table, and the two RoPE layouts.

Every oracle here is computed independently of the chapter's code, in float64:
the sinusoidal table straight from the formula, RoPE as complex multiplication
(``torch.view_as_complex`` of the pairs times ``torch.polar(1, angle)``).
"""

from __future__ import annotations

import torch

from ..i18n import tr, trf
from . import (
    CheckFailed,
    NotImplementedYet,
    approx,
    call,
    describe,
    expect_close,
    expect_dtype,
    expect_shape,
    expect_tensor,
    fail,
    name_of,
    passed,
    seeded,
)

BASE = 10000.0
FORMULA = (tr("PE[pos, 2i] = sin(pos / 10000^(2i/d_model)) and "
           "PE[pos, 2i+1] = cos(pos / 10000^(2i/d_model)), with i = 0, 1, ..., d_model/2 - 1"))
ROTATION = (tr("x'[2i] = x[2i] cos(pos·θ_i) - x[2i+1] sin(pos·θ_i), "
            "x'[2i+1] = x[2i] sin(pos·θ_i) + x[2i+1] cos(pos·θ_i), θ_i = 10000^(-2i/d)"))


# --- oracles (float64, written independently of the chapter) -----------------------------------

def _angles(positions: torch.Tensor, d: int, exponent: float = 2.0) -> torch.Tensor:
    """[n, d/2] angles pos / BASE^(exponent·i/d); exponent 2 is the right one."""
    i = torch.arange(d // 2, dtype=torch.float64)
    return positions.double().cpu()[:, None] * BASE ** (-exponent * i / d)


def _sinusoidal(n: int, d: int, layout: str = "interleaved", exponent: float = 2.0,
                start: int = 0) -> torch.Tensor:
    a = _angles(torch.arange(start, start + n), d, exponent)
    if layout == "interleaved":
        return torch.stack((a.sin(), a.cos()), dim=-1).reshape(n, d)
    if layout == "concatenated":
        return torch.cat((a.sin(), a.cos()), dim=-1)
    raise ValueError(layout)


def _rope(x: torch.Tensor, positions: torch.Tensor, exponent: float = 2.0,
          sign: float = 1.0) -> torch.Tensor:
    """RoPE as complex multiplication: pair (2i, 2i+1) is the complex number x[2i] + i·x[2i+1]."""
    x64 = x.detach().double().cpu()
    z = torch.view_as_complex(x64.reshape(*x64.shape[:-1], -1, 2).contiguous())
    angle = sign * _angles(positions, x64.shape[-1], exponent)           # [seq, d/2]
    turned = z * torch.polar(torch.ones_like(angle), angle)
    return torch.view_as_real(turned).reshape(x64.shape)


def _rope_half_split(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The GPT-NeoX layout: pair (i, i + d/2) turned by pos·θ_i."""
    x64 = x.detach().double().cpu()
    h = x64.shape[-1] // 2
    a = _angles(positions, x64.shape[-1])
    x1, x2 = x64[..., :h], x64[..., h:]
    return torch.cat((x1 * a.cos() - x2 * a.sin(), x1 * a.sin() + x2 * a.cos()), dim=-1)


def _close(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float = 0.0) -> bool:
    got = got.detach().double().cpu()
    return got.shape == want.shape and bool(
        ((got - want).abs() <= atol + rtol * want.abs()).all())


def _expect_value_error(fn, args, why: str) -> None:
    shown = ", ".join(describe(a) for a in args)   # tensors by shape, never by value
    try:
        fn(*args)
    except ValueError:
        return
    except NotImplementedError:
        raise NotImplementedYet(trf("{name_of(fn)} is not implemented yet")) from None
    except Exception as e:
        fail(trf("{name_of(fn)}({shown}) raised {type(e).__name__}: {e}; expected a ValueError: {why}"))
    fail(trf("{name_of(fn)}({shown}) returned a result; it should raise ValueError: {why}"))


# --- sinusoidal_positions ----------------------------------------------------------------------

def _diagnose_sinusoidal(got: torch.Tensor, n: int, d: int, what: str) -> None:
    """Name the common mistakes, from the most visible to the least."""
    g = got.detach().double().cpu()
    pos = torch.arange(n, dtype=torch.float64)
    if not _close(g[:, 0], pos.sin(), 1e-3) and _close(g[:, 0], pos.cos(), 1e-3):
        fail(trf("{what}: dimension 0 looks like cos where sin is expected (at position 0 it is "
             "{approx(g[0, 0].item())}, expected 0). The paper puts sin on the even dimensions and "
             "cos on the odd ones: {FORMULA}"))
    if d > 2 and _close(g, _sinusoidal(n, d, "concatenated"), 1e-3):
        fail(trf("{what}: you put all the sines first and then all the cosines ([sin..., cos...]); "
             "this course interleaves them, sin at dimension 2i and cos at 2i+1 "
             "(dimension 1 should be cos(pos)): {FORMULA}"))
    if d > 2 and n > 1:
        want = _sinusoidal(n, d)
        for exponent, speed, used in ((1.0, tr("slowly"), "i"), (4.0, tr("fast"), tr("4i (twice 2i)"))):
            if _close(g, _sinusoidal(n, d, exponent=exponent), 1e-3):
                fail(trf("{what}: frequencies decay too {speed}: dimension 2 at position 1 is "
                     "{g[1, 2].item():.4f}, expected {want[1, 2].item():.4f}. The exponent uses "
                     "{used} where 2i is expected (i counts pairs): {FORMULA}"))
    if n > 1 and _close(g, _sinusoidal(n, d, start=1), 1e-3):
        fail(trf("{what}: row 0 looks like position 1; positions count from 0, so row 0 is "
             "[0, 1, 0, 1, ...] (sin 0 = 0, cos 0 = 1)"))


def check_sinusoidal_positions(fn, seed: int = 0) -> None:
    """fn(n_positions, d_model) -> float32 [n_positions, d_model], interleaved sin/cos."""
    name = name_of(fn)
    with seeded(seed):
        extra = (int(torch.randint(2, 80, ()).item()), 2 * int(torch.randint(2, 48, ()).item()))
    cases = [(50, 16), (7, 6), (1, 2), (3, 128), (33, 2), extra]
    for n, d in cases:
        what = f"{name}({n}, {d})"
        got = call(fn, n, d)
        expect_tensor(got, what)
        expect_shape(got, (n, d), what)
        expect_dtype(got, torch.float32, what)
        _diagnose_sinusoidal(got, n, d, what)
        expect_close(got, _sinusoidal(n, d), what, atol=1e-4, rtol=1e-4, hint=FORMULA)
    _expect_value_error(fn, (4, 5), tr("d_model must be even, since dimensions come in (sin, cos) pairs"))
    passed(fn, len(cases) + 1)


# --- apply_rope --------------------------------------------------------------------------------

_TOLERANCE = {torch.float64: (1e-5, 1e-5), torch.float32: (1e-4, 1e-4),
              torch.float16: (1e-2, 5e-3), torch.bfloat16: (5e-2, 2e-2)}


def _rope_cases(seed: int):
    with seeded(seed):
        seq = int(torch.randint(2, 9, ()).item())
        d = 2 * int(torch.randint(1, 33, ()).item())
        return [
            (tr("x [seq, d]"), torch.randn(5, 8), torch.arange(5)),
            (tr("x [batch, heads, seq, d], positions out of order"), torch.randn(2, 3, 4, 16),
             torch.tensor([5, 2, 9, 0])),
            (tr("one token"), torch.randn(1, 1, 1, 4), torch.tensor([7])),
            ("d = 2", torch.randn(3, 3, 2), torch.tensor([0, 1, 100])),
            (tr("float positions"), torch.randn(2, 3, 6), torch.tensor([0.5, 1.5, 10.25])),
            (tr("random shape"), torch.randn(2, seq, d), torch.randperm(4 * seq)[:seq]),
            ("float64", torch.randn(4, 10, dtype=torch.float64), torch.arange(3, 7)),
            ("float16", torch.randn(3, 16).half(), torch.tensor([0, 50, 300])),
            (tr("bfloat16 at large positions"), torch.randn(2, 3, 32).bfloat16(),
             torch.tensor([1000, 2047, 4095])),
        ]


def check_apply_rope(fn, seed: int = 0) -> None:
    """fn(x [..., seq, d], positions [seq]) -> x with pair (2i, 2i+1) of token j turned by positions[j]·θ_i."""
    name = name_of(fn)
    cases = _rope_cases(seed)
    for label, x, positions in cases:
        what = (trf("{name}(x of shape {list(x.shape)} ({str(x.dtype).removeprefix('torch.')}), "
                "positions={positions.tolist()}) [{label}]"))
        before = x.clone()
        got = call(fn, x, positions)
        expect_tensor(got, what)
        expect_shape(got, x.shape, what)
        if got.dtype != x.dtype:
            fail(trf("{what} returned dtype {got.dtype}, expected {x.dtype}: the result must keep x's dtype "
                 "(compute in float32 or wider inside if you like, then cast back)"))
        if not torch.equal(x, before):
            fail(trf("{what}: your function changed x in place; return a new tensor and leave x as it was"))
        atol, rtol = _TOLERANCE[x.dtype]
        want = _rope(x, positions)
        if _close(got, want, atol, rtol):
            continue
        seq, d = x.shape[-2], x.shape[-1]
        named = [
            (_rope_half_split(x, positions),
             tr("you rotated pairs (i, i + d/2); this course pairs (2i, 2i+1), neighbouring dimensions "
             "((i, i + d/2) is the GPT-NeoX 'rotate_half' layout)")),
            (_rope(x, positions, sign=-1.0),
             tr("your rotation goes the wrong way (the sign of the angle is flipped)")),
            (_rope(x, positions, exponent=1.0),
             tr("θ_i uses i where 2i is expected (your frequencies decay too slowly); i counts pairs, "
             "so θ_i = 10000^(-2i/d)")),
            (_rope(x, torch.arange(seq)),
             tr("you rotated token j by j (arange(seq)) and ignored `positions`; token j must be turned "
             "by positions[j]")),
        ]
        for oracle, message in named:
            if _close(got, oracle, atol, rtol):
                fail(trf("{what}: {message}. Expected {ROTATION}"))
        pairs = lambda t: t.detach().double().cpu().reshape(*t.shape[:-1], d // 2, 2).norm(dim=-1)
        norm_got, norm_x = pairs(got), pairs(x)
        bad = (norm_got - norm_x).abs() > 2 * atol + 2 * rtol * norm_x
        if bad.any():
            idx = tuple(torch.nonzero(bad)[0].tolist())
            fail(trf("{what}: a rotation keeps the length of every pair (x[2i], x[2i+1]), but yours "
                 "changed pair i = {idx[-1]} of token {idx[-2]} from length {norm_x[idx].item():.4f} "
                 "to {norm_got[idx].item():.4f}. Expected {ROTATION}"))
        hint = trf("Expected {ROTATION}")
        if x.dtype in (torch.float16, torch.bfloat16):
            hint = (tr("For float16/bfloat16 inputs compute the angles, cos and sin in float32 (in bfloat16 "
                    "position 2047 rounds to 2048) and cast only the result back to x's dtype"))
        expect_close(got, want, what, atol=atol, rtol=rtol, hint=hint)
    _expect_value_error(fn, (torch.randn(3, 5), torch.arange(3)), tr("d must be even to form pairs"))
    passed(fn, len(cases) + 1)


# --- shift_matrix (Exercises) ------------------------------------------------------------------

def _shift_oracle(k: int, d: int, freq_exponent: float = 2.0) -> torch.Tensor:
    """M with PE(pos + k) = PE(pos) @ M for row vectors (sin, cos) per pair."""
    a = _angles(torch.tensor([k]), d, freq_exponent)[0]
    m = torch.zeros(d, d, dtype=torch.float64)
    for i, b in enumerate(a.tolist()):
        c, s = torch.cos(torch.tensor(b, dtype=torch.float64)), torch.sin(torch.tensor(b, dtype=torch.float64))
        m[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.stack((torch.stack((c, -s)), torch.stack((s, c))))
    return m


def check_shift_matrix(fn, seed: int = 0) -> None:
    """fn(k, d_model) -> float32 [d_model, d_model] M_k with PE(pos + k) = PE(pos) @ M_k for every pos."""
    name = name_of(fn)
    with seeded(seed):
        extra = (int(torch.randint(1, 300, ()).item()), 2 * int(torch.randint(2, 40, ()).item()))
    cases = [(1, 8), (5, 16), (0, 4), (-3, 6), (100, 2), extra]
    for k, d in cases:
        what = f"{name}({k}, {d})"
        got = call(fn, k, d)
        expect_tensor(got, what)
        expect_shape(got, (d, d), what)
        expect_dtype(got, torch.float32, what)
        pe = _sinusoidal(60 + max(k, 0), d)                     # positions 0 .. 59 + k
        start = max(-k, 0)
        rows, shifted = pe[start:60], pe[start + k:60 + k]
        moved = rows @ got.detach().double().cpu()
        if _close(moved, shifted, 1e-4):
            continue
        if _close(got, _shift_oracle(-k, d), 1e-4):
            fail(trf("{what}: your matrix shifts by -k: it is the transpose of M_k, the matrix for column "
                 "vectors (M @ PE(pos)). Here PE(pos) is a row vector, so PE(pos + k) = PE(pos) @ M_k; "
                 "transpose each 2×2 block"))
        if d > 2 and _close(got, _shift_oracle(k, d, freq_exponent=0.0), 1e-4):
            fail(trf("{what}: every pair turns by the same angle k; pair i must turn by k·ω_i, "
                 "ω_i = 10000^(-2i/d_model), since each pair is a clock running at its own speed"))
        pos, col = (int(v) for v in torch.nonzero((moved - shifted).abs() > 1e-4)[0])
        fail(trf("{what}: PE(pos) @ M differs from PE(pos + k): at pos = {pos + start}, dimension {col} "
             "you get {moved[pos, col].item():.4f}, expected {shifted[pos, col].item():.4f}. "
             "Hint: sin(a + b) = sin a cos b + cos a sin b and cos(a + b) = cos a cos b - sin a sin b"))
    passed(fn, len(cases))


# --- half_split_permutation (Exercises) ------------------------------------------------------

def check_half_split_permutation(fn, seed: int = 0) -> None:
    """fn(d) -> LongTensor perm [d]: apply_rope(x[..., perm]) == rope_half_split(x)[..., perm]."""
    name = name_of(fn)
    with seeded(seed):
        extra = 2 * int(torch.randint(3, 64, ()).item())
        x = torch.randn(3, 5, 128, dtype=torch.float64)
        positions = torch.tensor([0, 3, 17, 4, 250])
    cases = [2, 4, 8, 64, extra]
    for d in cases:
        what = f"{name}({d})"
        got = call(fn, d)
        expect_tensor(got, what)
        expect_shape(got, (d,), what)
        if got.dtype not in (torch.int64, torch.int32):
            fail(trf("{what} has dtype {got.dtype}; an index tensor needs an integer dtype (torch.long)"))
        if not torch.equal(got.sort().values.cpu().long(), torch.arange(d)):
            fail(trf("{what} is not a permutation: it must hold each index 0 .. {d - 1} exactly once, "
                 "got {got.tolist() if d <= 16 else '...'}"))
        p = got.cpu().long()
        xd = x[..., :d]
        if torch.allclose(_rope(xd[..., p], positions), _rope_half_split(xd, positions)[..., p], atol=1e-9):
            continue
        half = torch.arange(d // 2)
        right = torch.stack((half, half + d // 2), dim=-1).reshape(d)
        if torch.equal(p, torch.arange(d)):
            fail(trf("{what} is arange(d), which changes nothing; the two layouts pair different "
                 "dimensions, so x must be reordered"))
        if torch.equal(p, right.argsort()):
            fail(trf("{what}: you returned the inverse permutation. x[..., perm] takes element perm[j] "
                 "to place j, so perm[2i] must be i and perm[2i+1] must be i + d/2"))
        fail(trf("{what}: after reordering, the pairs (2i, 2i+1) are not the half-split pairs (i, i + d/2): "
             "perm[2i] must be i and perm[2i+1] must be i + d/2 (perm[:6] is {p[:6].tolist()})"))
    passed(fn, len(cases))


__all__ = ["check_sinusoidal_positions", "check_apply_rope", "check_shift_matrix",
           "check_half_split_permutation", "CheckFailed"]
