"""Measure matmul throughput (GFLOP/s) over sizes and dtypes, on the CPU and on the GPU when present.

    python benchmarks/matmul_throughput.py                       # default sizes, writes a CSV
    python benchmarks/matmul_throughput.py --sizes 256 1024 4096 --dtypes float32 bfloat16
    python benchmarks/matmul_throughput.py --device cuda        # the GPU only

Chapter 00 (the machine) claims that throughput grows with size and that a GPU is far faster in
bf16 than in fp32; this script measures it. Results go to benchmarks/results/matmul_throughput_<device>.csv
(one row per device, dtype and size). Not run by the tests: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import platform
import re
from pathlib import Path

import torch

from common import RESULTS, write_csv
from transformer_course.machine import matmul_flops, time_fn



def measure(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds, GFLOP/s) of [n, n] @ [n, n]."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_fn(torch.matmul, a, b, warmup=3, repeats=repeats, device=device)
    return seconds, matmul_flops(n, n, n) / seconds / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cpu-max", type=int, default=2048, help="largest size measured on the CPU")
    p.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                   help="where to measure (all: the CPU, and the GPU when present)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    devices = [torch.device(d) for d in (["cpu", "cuda"] if args.device == "all" else [args.device])
               if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        p.error("--device cuda: no CUDA GPU here")
    tag = ("cuda_" + re.sub(r"\W+", "_", torch.cuda.get_device_name()).strip("_").lower()) if devices[-1].type == "cuda" else "cpu"
    out = args.out or RESULTS / f"matmul_throughput_{tag}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for n in args.sizes:
                if device.type == "cpu" and n > args.cpu_max:
                    continue
                if device.type == "cuda":
                    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
                seconds, gflops = measure(n, dtype, device, args.repeats)
                rows.append({"device": device.type, "device_name": name, "threads": torch.get_num_threads(),
                             "dtype": dtype_name, "n": n, "seconds": f"{seconds:.6g}", "gflops": f"{gflops:.1f}",
                             "torch": torch.__version__})
                print(f"{device.type:4s} {dtype_name:9s} n={n:5d}  {1e3 * seconds:9.3f} ms  {gflops:9.1f} GFLOP/s",
                      flush=True)
    write_csv(rows, out)


if __name__ == "__main__":
    main()
