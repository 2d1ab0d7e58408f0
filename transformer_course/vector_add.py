"""Generated from solutions/00_the_machine.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

import torch

from transformer_course.machine import load_triton

triton = load_triton()
if triton is not None:
    import triton.language as tl


if triton is not None:
    @triton.jit
    def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        """One program: out[i] = x[i] + y[i] for the BLOCK indices i of block number
        program_id(0)."""
        pid = tl.program_id(0)
        offsets = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n  # the last block runs past the end: switch those lanes off
        x = tl.load(x_ptr + offsets, mask=mask)
        y = tl.load(y_ptr + offsets, mask=mask)
        tl.store(out_ptr + offsets, x + y, mask=mask)


def vector_add(x: torch.Tensor, y: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """x + y by add_kernel: ceil(n / block) programs of `block` elements each."""
    if triton is None:
        raise RuntimeError("Triton is not available on this machine (it needs Linux)")
    if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device:
        raise ValueError(
            f"x and y must match, got {tuple(x.shape)} {x.dtype} on {x.device} "
            f"and {tuple(y.shape)} {y.dtype} on {y.device}"
        )
    if not (x.is_contiguous() and y.is_contiguous()):
        raise ValueError(
            "x and y must be contiguous: the kernel walks their memory in order"
        )
    out = torch.empty_like(x)
    n = x.numel()
    grid = (triton.cdiv(n, block),)
    add_kernel[grid](x, y, out, n, BLOCK=block)
    return out
