"""Checks for chapter 00, the machine: counting FLOPs, a first Triton kernel, back-of-envelope costs."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from ..i18n import tr, trf
from . import (CheckFailed, beside, NotImplementedYet, call, expect_equal, expect_tensor, fail, name_of,
               passed, seeded)


# --- matmul_flops ------------------------------------------------------------------------------

def _counted_flops(m: int, n: int, k: int) -> int:
    """PyTorch's own count for [m, k] @ [k, n], on shape-only (meta) tensors: nothing is computed."""
    from torch.utils.flop_counter import FlopCounterMode

    a, b = torch.empty(m, k, device="meta"), torch.empty(k, n, device="meta")
    with FlopCounterMode(display=False) as counter:
        a @ b
    return int(counter.get_total_flops())


def _sizes(seed: int) -> list[tuple[int, int, int]]:
    with seeded(seed):
        rand = [tuple(int(v) for v in torch.randint(1, 300, (3,))) for _ in range(4)]
    return [(3, 5, 7), (1, 1, 1), (1, 64, 1), (17, 1, 33), (4096, 4096, 4096)] + rand


def check_matmul_flops(fn, seed: int = 0) -> None:
    """fn(m, n, k) must be the FLOPs of [m, k] @ [k, n], as PyTorch's FlopCounterMode counts them."""
    sizes = _sizes(seed)
    for m, n, k in sizes:
        got = call(fn, m, n, k)
        if isinstance(got, bool) or not isinstance(got, int):
            fail(trf("{name_of(fn)}({m}, {n}, {k}) returned {type(got).__name__} {got!r}: an operation count "
                 "is a whole number, so return an int (multiply ints; avoid `/` and float literals)"))
        want = _counted_flops(m, n, k)
        if got == want:
            continue
        shapes = trf("for A of shape [m, k] = [{m}, {k}] and B of shape [k, n] = [{k}, {n}]")
        if got == m * n * k:
            fail(trf("{shapes} you count m·n·k = {got}; each of those terms is a multiply AND an add, "
                 "so expected {want}"))
        fail(trf("{shapes} you count {got} FLOPs, expected {want}: the output has m·n = {m * n} entries and "
             "each is a dot product of length k = {k} (k multiplies and k adds)"))
    passed(fn, len(sizes))


# --- vector_add (Triton) -----------------------------------------------------------------------

_PAD = 1 << 16  # elements of guard space after every tensor the check hands out or sees allocated


class _OutOfBounds(Exception):
    pass


@contextmanager
def _bounds_checked():
    """Under Triton's CPU interpreter, stop any load or store outside the tensors given to a kernel.

    An unmasked store past the end of a tensor would otherwise scribble on the heap and may crash
    the whole Python process. Yields the list of violations found (empty when there is nothing to
    hook: Triton compiled for a GPU, or an interpreter whose internals differ).
    """
    found: list[tuple[str, int]] = []
    try:
        from triton.runtime import interpreter as interp

        builder, executor = interp.interpreter_builder, interp.GridExecutor
        orig_init = executor._init_args_hst
        orig_load, orig_store = builder.create_masked_load, builder.create_masked_store
        np_dtype = interp._get_np_dtype
    except (ImportError, AttributeError):
        yield found
        return
    ranges: list[tuple[int, int]] = []

    def init(self, args_dev, kwargs):
        args_hst, kwargs_hst = orig_init(self, args_dev, kwargs)
        ranges.clear()
        for a in list(args_hst) + list(kwargs_hst.values()):
            if isinstance(a, torch.Tensor):
                ranges.append((a.data_ptr(), a.data_ptr() + a.numel() * a.element_size()))
        return args_hst, kwargs_hst

    def outside(ptrs, mask, itemsize: int) -> int:
        addr = np.asarray(ptrs.data, dtype=np.uint64)
        addr = addr[np.broadcast_to(np.asarray(mask.data, dtype=bool), addr.shape)]
        ok = np.zeros(addr.shape, dtype=bool)
        for start, end in ranges:
            ok |= (addr >= start) & (addr + np.uint64(itemsize) <= end)
        return int((~ok).sum())

    def load(ptrs, mask, other, *args, **kwargs):
        bad = outside(ptrs, mask, np.dtype(np_dtype(ptrs.get_element_ty())).itemsize)
        if bad:
            found.append(("read", bad))
            raise _OutOfBounds(trf("{bad} loads outside the tensors"))
        return orig_load(ptrs, mask, other, *args, **kwargs)

    def store(ptrs, value, mask, *args, **kwargs):
        bad = outside(ptrs, mask, np.asarray(value.data).dtype.itemsize)
        if bad:
            found.append(("write", bad))
            raise _OutOfBounds(trf("{bad} stores outside the tensors"))
        return orig_store(ptrs, value, mask, *args, **kwargs)

    had = {k: vars(builder)[k] for k in ("create_masked_load", "create_masked_store") if k in vars(builder)}
    builder.create_masked_load, builder.create_masked_store = load, store
    executor._init_args_hst = init
    try:
        yield found
    finally:
        executor._init_args_hst = orig_init
        for k in ("create_masked_load", "create_masked_store"):
            if k in had:
                setattr(builder, k, had[k])
            else:
                delattr(builder, k)


@contextmanager
def _guarded_allocations():
    """While the learner's function runs, float tensors from torch.empty/_like and torch.zeros/_like
    get NaN guard space after their end, and empty ones start as NaN: so entries a kernel never
    writes stay NaN, and writes past the end land in memory we own and can inspect."""
    made: list[tuple[torch.Tensor, int]] = []
    originals = {name: getattr(torch, name) for name in ("empty", "empty_like", "zeros", "zeros_like")}

    def guarded(name):
        orig = originals[name]

        def alloc(*args, **kwargs):
            t = orig(*args, **kwargs)
            if not t.is_floating_point() or not t.is_contiguous() or t.requires_grad:
                return t
            buf = originals["empty"](t.numel() + _PAD, dtype=t.dtype, device=t.device).fill_(math.nan)
            view = buf[: t.numel()].view(t.shape)
            if name.startswith("zeros"):
                view.zero_()
            made.append((buf, t.numel()))
            return view

        return alloc

    for name in originals:
        setattr(torch, name, guarded(name))
    try:
        yield made
    finally:
        for name, orig in originals.items():
            setattr(torch, name, orig)


def _padded(values: torch.Tensor) -> torch.Tensor:
    """A copy of values that lives at the start of a larger buffer (zeros after it)."""
    buf = torch.zeros(values.numel() + _PAD, dtype=values.dtype, device=values.device)
    view = buf[: values.numel()].view(values.shape)
    view.copy_(values)
    return view


def _mask_hint(n: int) -> str:
    return (trf("with n = {n} the last block runs past the end of the data: did you mask the last block? "
            "Compute `mask = offsets < n` and pass `mask=mask` to every tl.load and tl.store"))


def _chain_mentions(err: BaseException, text: str) -> bool:
    seen = 0
    while err is not None and seen < 10:
        if text in f"{type(err).__name__}: {err}":
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _run_guarded(fn, x, y):
    """fn(x, y) with loads and stores bounds-checked and outputs followed by NaN guard space: returns
    (output, None or (message, unimplemented), out-of-bounds accesses, elements written past the end)."""
    x, y = _padded(x), _padded(y)  # the padding is lost on the way into a sandbox: put it back
    with _bounds_checked() as outside, _guarded_allocations() as made:
        try:
            got = call(fn, x, y)
        except CheckFailed as e:
            return None, (str(e), _chain_mentions(e, "NotImplementedError"), isinstance(e, NotImplementedYet)), outside, 0
    past_end = sum(int((~torch.isnan(buf[used:])).sum()) for buf, used in made)
    return got, None, outside, past_end


def check_vector_add(fn, seed: int = 0) -> None:
    """fn(x, y) must equal x + y for any shape, fp32 and fp16, on x's device, via a Triton kernel."""
    from transformer_course.machine import load_triton, pick_device

    if load_triton() is None:
        fail(tr("Triton is not available on this machine (it runs on Linux, natively on an NVIDIA/AMD "
             "GPU or in its CPU interpreter), so vector_add cannot be checked here: run this "
             "chapter on Linux or in Colab"))
    device = pick_device(verbose=False)
    big = 100_003 if device.type == "cpu" else (1 << 22) + 3
    cases = [((1,), torch.float32), ((5000,), torch.float32), ((2048,), torch.float16),
             ((3001,), torch.float16), ((7, 300), torch.float32), ((big,), torch.float32)]
    with seeded(seed):
        data = [(torch.randn(shape, dtype=dt), torch.randn(shape, dtype=dt)) for shape, dt in cases]
    guarded = beside(_run_guarded, fn)  # where fn's memory is: in the sandbox, while grading
    for x, y in data:
        x, y = _padded(x.to(device)), _padded(y.to(device))
        want = x + y
        n, what = x.numel(), trf("{name_of(fn)}(x, y) with x of shape {list(x.shape)} ({str(x.dtype)[6:]})")
        got, error, outside, past_end = guarded(x, y)
        if error is not None:
            message, unimplemented, not_yet = error
            if outside:
                kind, count = outside[0]
                where = tr("past the end of x or y") if kind == "read" else tr("past the end of the output")
                action = tr("read") if kind == "read" else tr("write")
                raise CheckFailed(trf("{what}: your kernel tried to {action} {count} elements "
                                  "{where}; ") + _mask_hint(n)) from None
            if unimplemented:
                raise NotImplementedYet(
                    tr("add_kernel is not implemented yet: replace `raise NotImplementedError()` in "
                    "the kernel with your code, then run this check again.")) from None
            raise (NotImplementedYet if not_yet else CheckFailed)(message)
        if past_end:
            fail(trf("{what}: your kernel wrote {past_end} elements past the end of the output; ")
                 + _mask_hint(n))
        expect_tensor(got, trf("{name_of(fn)}'s output"))
        expect_equal(list(got.shape), list(x.shape), trf("{what}: the output's shape"))
        expect_equal(got.dtype, x.dtype, trf("{what}: the output's dtype"),
                     hint=tr("allocate the output with torch.empty_like(x)"))
        expect_equal(got.device.type, x.device.type, trf("{what}: the output's device"))
        g, w = got.detach().reshape(-1).double(), want.reshape(-1).double()
        tol = 1e-6 if x.dtype == torch.float32 else 1e-3
        bad = ~((g - w).abs() <= tol * (1 + w.abs()))
        if not bad.any():
            continue
        idx = torch.nonzero(bad).reshape(-1)
        first, last = int(idx[0]), int(idx[-1])
        entries = trf("entry {first} of {n} is") if first == last else trf("entries {first}..{last} of {n} are")
        msg = (trf("{what}: {entries} wrong ({int(bad.sum())} in all; "
               "at index {first} you have {g[first].item():.6g}, expected {w[first].item():.6g})"))
        if torch.equal(got.reshape(-1), x.reshape(-1)):
            fail(msg + tr(": your output equals x; did you forget to add y?"))
        if last == n - 1 and int(bad.sum()) == n - first and first > 0:
            never = torch.isnan(g[first:]).all()
            fail(msg + (tr(": those entries were never written") if never else "")
                 + trf(". Only the first {first} entries are right: is the grid launching enough "
                 "programs? It needs triton.cdiv(n, BLOCK) of them, one per block"))
        if last == n - 1:
            fail(msg + tr(": the tail is wrong; did you mask the last block?"))
        fail(msg)
    passed(fn, len(cases))


# --- back-of-envelope exercises ----------------------------------------------------------------

def check_matmul_time_estimate(fn, seed: int = 0) -> None:
    """fn(m, n, k, peak_flops) must be the seconds [m, k] @ [k, n] takes at peak_flops FLOP/s."""
    with seeded(seed):
        rand = [(*(int(v) for v in torch.randint(1, 5000, (3,))), float(torch.randint(1, 1000, ()).item()) * 1e12)]
    cases = [(4096, 4096, 4096, 989e12), (1, 1, 1, 1.0), (8192, 1024, 512, 312e12), (3, 5, 7, 1e9)] + rand
    for m, n, k, peak in cases:
        got = call(fn, m, n, k, peak)
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            fail(trf("{name_of(fn)}({m}, {n}, {k}, {peak:.3g}) returned {type(got).__name__}, expected a float (seconds)"))
        want = 2 * m * n * k / peak
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        ratio = got / want if want else math.inf
        head = (trf("{name_of(fn)}({m}, {n}, {k}, peak_flops={peak:.3g}) returned {got:.4g} s, "
                "expected {want:.4g} s"))
        if math.isclose(ratio, 0.5, rel_tol=1e-6):
            fail(head + tr(": half the time; a matmul does 2·m·n·k FLOPs (a multiply and an add per term)"))
        if math.isclose(ratio, 1e3, rel_tol=1e-6):
            fail(head + tr(": 1000 times too large; return seconds, not milliseconds"))
        if math.isclose(ratio, 1e6, rel_tol=1e-6):
            fail(head + tr(": a million times too large; return seconds, not microseconds"))
        fail(head + tr(": time = FLOPs / (FLOP/s), with FLOPs = 2·m·n·k"))
    passed(fn, len(cases))


def check_arithmetic_intensity(fn, seed: int = 0) -> None:
    """fn(m, n, k, bytes_per_element): FLOPs per byte moved for C = A @ B, reading A and B once and
    writing C once."""
    with seeded(seed):
        rand = [(*(int(v) for v in torch.randint(1, 3000, (3,))), int(torch.tensor([1, 2, 4])[torch.randint(0, 3, ())]))]
    cases = [(4096, 4096, 4096, 2), (1, 1, 1, 4), (1, 4096, 4096, 2), (3, 5, 7, 4), (512, 64, 512, 2)] + rand
    for m, n, k, b in cases:
        got = call(fn, m, n, k, b)
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            fail(trf("{name_of(fn)}({m}, {n}, {k}, {b}) returned {type(got).__name__}, expected a float (FLOP per byte)"))
        flops, moved = 2 * m * n * k, (m * k + k * n + m * n) * b
        want = flops / moved
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        head = trf("{name_of(fn)}({m}, {n}, {k}, bytes_per_element={b}) returned {got:.4g}, expected {want:.4g}")
        if math.isclose(got, flops / ((m * k + k * n) * b), rel_tol=1e-6):
            fail(head + trf(": you count the bytes of A and B but not of C; the result (m·n = {m * n} "
                 "elements) has to be written to memory too"))
        if math.isclose(got, want / 2, rel_tol=1e-6):
            fail(head + tr(": half of it; the FLOPs of a matmul are 2·m·n·k"))
        if math.isclose(got, want * b, rel_tol=1e-6):
            fail(head + tr(": you count elements, not bytes; multiply by bytes_per_element"))
        fail(head + tr(": intensity = 2·m·n·k / ((m·k + k·n + m·n) · bytes_per_element)"))
    passed(fn, len(cases))
