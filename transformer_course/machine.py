"""Generated from solutions/00_the_machine.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist


def pick_device(verbose: bool = True) -> torch.device:
    """The device every chapter computes on, chosen once at the top: a CUDA GPU when
    there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if verbose:
        name = (
            f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
        )
        print(f"device: {device.type}{name}")
    return device


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (every device) so that runs repeat."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_triton():
    """Import Triton: compiled for the GPU when there is one, else in its CPU
    interpreter.

    Returns the `triton` module, or None where Triton cannot be installed
    (macOS, Windows). The interpreter must be chosen before any kernel is defined, hence
    this function.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        import triton
    except ImportError:
        return None
    return triton


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of memory the elements of t take: numel × element size
    (exact, no allocator rounding)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(t).__name__}")
    return t.numel() * t.element_size()


def format_bytes(n: float) -> str:
    """1536 -> '1.50 KiB': binary units, as memory is sized."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def matmul_flops(m: int, n: int, k: int) -> int:
    """Floating-point operations of [m, k] @ [k, n]: a multiply and an add per term of
    each dot product."""
    return 2 * m * n * k


def synchronize(device) -> None:
    """Wait until every queued kernel on device has finished (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, *args, warmup: int = 2, repeats: int = 5, device=None) -> float:
    """Median wall-clock seconds of fn(*args), after warm-up calls, synchronizing the
    device."""
    if warmup < 0 or repeats < 1:
        raise ValueError(
            f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}"
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    for _ in range(warmup):
        fn(*args)
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_gflops(n: int, dtype=torch.float32, device=None, repeats: int = 5) -> float:
    """Measured GFLOP/s of an [n, n] @ [n, n] matmul in dtype on device."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_fn(torch.matmul, a, b, repeats=repeats, device=device)
    return matmul_flops(n, n, n) / seconds / 1e9


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on host that nobody is listening on and that the OS hands to no one
    else for about a minute, so that processes picking ports at the same time (two
    notebooks, two test workers) never get the same one.

    The OS picks it when we bind to port 0; we then connect to it and close the
    accepted end first, which leaves the port in TIME_WAIT: other binds to port 0 and
    outgoing connections skip it, while a server that binds it by number with
    SO_REUSEADDR (torch.distributed's store, ZeroMQ) still gets it."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        s.listen(1)
        port = s.getsockname()[1]
        with socket.create_connection((host, port)):
            accepted, _ = s.accept()
            accepted.close()  # this end closes first: its TIME_WAIT holds the port
    return port


def allreduce_worker(rank: int, world_size: int, port: int, results) -> None:
    """Run by each spawned process: join the group, all_reduce a tensor, report what
    came back.

    Rank r contributes [r + 1, r + 1, r + 1, r + 1]; after the sum every rank holds 1 +
    2 + ... + world_size in every entry. Results go to `results` (a queue) as
    (rank, list).
    """
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    use_nccl = torch.cuda.is_available() and torch.cuda.device_count() >= world_size
    if use_nccl:
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if use_nccl else "gloo", rank=rank, world_size=world_size
    )
    try:
        t = torch.full(
            (4,), float(rank + 1), device=f"cuda:{rank}" if use_nccl else "cpu"
        )
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        results.put((rank, dist.get_backend(), t.cpu().tolist()))
    finally:
        dist.destroy_process_group()


def run_allreduce(world_size: int = 2) -> list:
    """Spawn world_size processes running allreduce_worker; return their reports sorted
    by rank."""
    import torch.multiprocessing as mp

    import sys

    results = mp.get_context("spawn").SimpleQueue()
    # The children need nothing from the parent's __main__ (the worker lives in this
    # module), so
    # don't let them re-run it: in a notebook, Triton's interpreter copies its own
    # __file__ into
    # the kernels' globals, and a child would try to run that file as its main program.
    main = sys.modules.get("__main__")
    hidden = vars(main).pop("__file__", None) if main is not None else None
    try:
        mp.spawn(
            allreduce_worker,
            args=(world_size, free_port(), results),
            nprocs=world_size,
            join=True,
        )
    finally:
        if hidden is not None:
            main.__file__ = hidden
    return sorted(results.get() for _ in range(world_size))


def matmul_time_estimate(m: int, n: int, k: int, peak_flops: float) -> float:
    """Seconds [m, k] @ [k, n] takes when the chip runs at peak_flops FLOP/s
    (a lower bound)."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    return 2 * m * n * k / peak_flops


def arithmetic_intensity(m: int, n: int, k: int, bytes_per_element: int) -> float:
    """FLOPs per byte of [m, k] @ [k, n], reading A and B once and writing C once."""
    return matmul_flops(m, n, k) / ((m * k + k * n + m * n) * bytes_per_element)
