import os

import torch

from transformer_course import machine, vector_add
from transformer_course.checks.machine import (check_arithmetic_intensity, check_matmul_flops,
                                               check_matmul_time_estimate, check_vector_add)

from ._case import Exercise

# --- matmul_flops --------------------------------------------------------------------------------


def flops_without_the_add(m, n, k):
    return m * n * k


def flops_wrong_dims(m, n, k):
    return 2 * m * k * k


def flops_as_float(m, n, k):
    return 2.0 * m * n * k


# --- vector_add: each wrong answer has its own kernel, as a learner would write it ----------------

triton = machine.load_triton()
# Under the interpreter the check sees every load; compiled for a GPU it sees only what lands in memory.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _add_unmasked(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offsets, tl.load(x_ptr + offsets) + tl.load(y_ptr + offsets))

    @triton.jit
    def _add_masked_store_only(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        tl.store(out_ptr + offsets, tl.load(x_ptr + offsets) + tl.load(y_ptr + offsets), mask=mask)

    @triton.jit
    def _add_store_unmasked(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
        y = tl.load(y_ptr + offsets, mask=mask, other=0.0)
        tl.store(out_ptr + offsets, x + y)

    @triton.jit
    def _copy_x(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask), mask=mask)


def add_without_mask(x, y, block=1024):
    out = torch.empty_like(x)
    _add_unmasked[(triton.cdiv(x.numel(), block),)](x, y, out, x.numel(), BLOCK=block)
    return out


def add_without_mask_zeros(x, y, block=1024):
    """Same mistake, but the output comes from zeros_like."""
    out = torch.zeros_like(x)
    _add_unmasked[(triton.cdiv(x.numel(), block),)](x, y, out, x.numel(), BLOCK=block)
    return out


def add_mask_on_store_only(x, y, block=1024):
    out = torch.empty_like(x)
    _add_masked_store_only[(triton.cdiv(x.numel(), block),)](x, y, out, x.numel(), BLOCK=block)
    return out


def add_store_without_mask(x, y, block=1024):
    out = torch.empty_like(x)
    _add_store_unmasked[(triton.cdiv(x.numel(), block),)](x, y, out, x.numel(), BLOCK=block)
    return out


def add_forgot_y(x, y, block=1024):
    out = torch.empty_like(x)
    _copy_x[(triton.cdiv(x.numel(), block),)](x, y, out, x.numel(), BLOCK=block)
    return out


def add_one_block(x, y, block=1024):
    """Launches a single program: everything after the first block is never written."""
    out = torch.empty_like(x)
    vector_add.add_kernel[(1,)](x, y, out, x.numel(), BLOCK=block)
    return out


def add_grid_from_rows(x, y, block=1024):
    """Sizes the grid from x.shape[0] instead of x.numel()."""
    out = torch.empty_like(x)
    vector_add.add_kernel[(triton.cdiv(x.shape[0], block),)](x, y, out, x.numel(), BLOCK=block)
    return out


def add_returns_fp32(x, y, block=1024):
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    vector_add.add_kernel[(triton.cdiv(x.numel(), block),)](x, y, out, x.numel(), BLOCK=block)
    return out


# --- back-of-envelope ----------------------------------------------------------------------------


def time_without_the_add(m, n, k, peak_flops):
    return m * n * k / peak_flops


def time_in_ms(m, n, k, peak_flops):
    return 2 * m * n * k / peak_flops * 1e3


def intensity_without_output(m, n, k, bytes_per_element):
    return 2 * m * n * k / ((m * k + k * n) * bytes_per_element)


def intensity_in_elements(m, n, k, bytes_per_element):
    return 2 * m * n * k / (m * k + k * n + m * n)


def intensity_without_the_add(m, n, k, bytes_per_element):
    return m * n * k / ((m * k + k * n + m * n) * bytes_per_element)


EXERCISES = {
    "matmul_flops": Exercise(
        check=check_matmul_flops,
        solution=machine.matmul_flops,
        wrong=[
            (flops_without_the_add, "you count m·n·k = 105; each of those terms is a multiply AND an add, so expected 210"),
            (flops_wrong_dims, "each is a dot product of length k"),
            (flops_as_float, "return an int"),
        ],
    ),
    "vector_add": Exercise(
        check=check_vector_add,
        solution=vector_add.vector_add,
        wrong=[
            (add_without_mask, "did you mask"),
            (add_without_mask_zeros, "mask = offsets < n"),
            (add_store_without_mask, "1023 elements past the end of the output"),
            (add_forgot_y, "did you forget to add y?"),
            (add_one_block, "is the grid launching enough programs?"),
            (add_grid_from_rows, "triton.cdiv(n, BLOCK)"),
            (add_returns_fp32, "dtype"),
        ] + ([(add_mask_on_store_only, "read 1023 elements past the end of x or y")]
             if INTERPRETED else []) if triton is not None else [
            (add_without_mask, "Triton is not available"),
            (add_forgot_y, "Triton is not available"),
        ],
    ),
    "matmul_time_estimate": Exercise(
        check=check_matmul_time_estimate,
        solution=machine.matmul_time_estimate,
        wrong=[
            (time_without_the_add, "half the time"),
            (time_in_ms, "return seconds, not milliseconds"),
        ],
    ),
    "arithmetic_intensity": Exercise(
        check=check_arithmetic_intensity,
        solution=machine.arithmetic_intensity,
        wrong=[
            (intensity_without_output, "but not of C"),
            (intensity_in_elements, "multiply by bytes_per_element"),
            (intensity_without_the_add, "2·m·n·k"),
        ],
    ),
}
