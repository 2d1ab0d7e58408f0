"""Measure time and peak memory of naive attention vs F.scaled_dot_product_attention as N grows.

    python benchmarks/attention_cost.py                          # default sizes, CPU and GPU if present
    python benchmarks/attention_cost.py --ns 1024 4096 16384 --heads 8 --d-head 64 --causal
    python benchmarks/attention_cost.py --device cuda            # the GPU only

Chapter 03 (attention) claims that the naive attention's time and memory grow like N^2 (it stores
the [B, H, N, N] score matrix), and that PyTorch's fused kernels (flash / memory-efficient
attention, picked by F.scaled_dot_product_attention) keep the N^2 time but need only O(N) extra
memory. This script measures both. Peak memory is measured on CUDA only
(torch.cuda.max_memory_allocated, beyond what the inputs already take); on the CPU the column is
empty and `scores_mib`, the size of one score matrix by formula, stands in for it.

Results go to benchmarks/results/attention_cost_<host>.csv, one row per device, dtype, N and
implementation. Not run by the tests: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import math
import platform
import socket
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from common import RESULTS, write_csv
from transformer_course.attention import causal_mask, scaled_dot_product_attention
from transformer_course.machine import time_fn



def peak_extra_mib(fn) -> float:
    """Extra CUDA memory (MiB) fn() needs at its peak, beyond what is allocated before it runs."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ns", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--causal", action="store_true", help="causal attention (bool mask for naive, is_causal for torch)")
    p.add_argument("--cpu-max", type=int, default=4096, help="largest N measured on the CPU")
    p.add_argument("--cpu-dtype", default="float32")
    p.add_argument("--gpu-dtype", default="float16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                   help="where to measure (all: the CPU, and the GPU when present)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    devices = [torch.device(d) for d in (["cpu", "cuda"] if args.device == "all" else [args.device])
               if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        p.error("--device cuda: no CUDA GPU here")
    out = args.out or RESULTS / f"attention_cost_{socket.gethostname()}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for device in devices:
        is_cuda = device.type == "cuda"
        name = torch.cuda.get_device_name(device) if is_cuda else platform.processor() or platform.machine()
        dtype_name = args.gpu_dtype if is_cuda else args.cpu_dtype
        dtype = getattr(torch, dtype_name)
        for n in args.ns:
            if not is_cuda and n > args.cpu_max:
                continue
            shape = (args.batch, args.heads, n, args.d_head)
            q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
            mask = causal_mask(n).to(device) if args.causal else None
            scores_bytes = args.batch * args.heads * n * n * torch.finfo(dtype).bits // 8
            impls = {
                "naive": lambda: scaled_dot_product_attention(q, k, v, mask),
                "torch_sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=args.causal),
            }
            for impl, fn in impls.items():
                # the naive version holds 2-3 score matrices at its peak: ask for 4 and 1 GiB to
                # spare, so that a 16 GB GPU skips what would run out of memory instead of trying
                need = 4 * scores_bytes + 2**30
                if impl == "naive" and is_cuda and need > torch.cuda.mem_get_info()[0]:
                    print(f"{device.type:4s} n={n:6d} {impl:10s} skipped: would not fit", flush=True)
                    continue
                with torch.no_grad():
                    try:
                        t = time_fn(fn, repeats=args.repeats, device=device)
                        peak = f"{peak_extra_mib(fn):.1f}" if is_cuda else ""
                    except torch.OutOfMemoryError:
                        print(f"{device.type:4s} n={n:6d} {impl:10s} out of memory", flush=True)
                        torch.cuda.empty_cache()
                        continue
                flops = 4 * args.batch * args.heads * n * n * args.d_head / (2 if args.causal else 1)
                rows.append({"device": device.type, "device_name": name, "threads": torch.get_num_threads(),
                             "dtype": dtype_name, "batch": args.batch, "heads": args.heads, "d_head": args.d_head,
                             "causal": args.causal, "n": n, "impl": impl, "seconds": f"{t:.6g}",
                             "tflops": f"{flops / t / 1e12:.3f}", "peak_extra_mib": peak,
                             "scores_mib": f"{scores_bytes / 2**20:.1f}", "torch": torch.__version__})
                print(f"{device.type:4s} n={n:6d} {impl:10s} {1e3 * t:10.3f} ms  peak extra "
                      f"{peak or '-':>10} MiB  (one score matrix: {scores_bytes / 2**20:.1f} MiB)", flush=True)
            del q, k, v, mask
    # slope of log(time) vs log(N) per device and implementation: about 2 once N is large
    for device in {r["device"] for r in rows}:
        for impl in ("naive", "torch_sdpa"):
            pts = [(math.log(r["n"]), math.log(float(r["seconds"]))) for r in rows
                   if r["device"] == device and r["impl"] == impl and r["n"] >= 512]
            if len(pts) >= 2:
                mx, my = statistics.mean(x for x, _ in pts), statistics.mean(y for _, y in pts)
                slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
                print(f"{device} {impl}: log-log slope of time vs N (N >= 512): {slope:.2f}")
    write_csv(rows, out)


if __name__ == "__main__":
    main()
