"""Beyond O(N²): CPU time and peak memory against N for full softmax attention, a sliding
window, block-sparse attention and linear attention (chapter 14).

    python benchmarks/long_attention.py                  # N = 512..8192, 5 runs each
    python benchmarks/long_attention.py --ns 1024 4096 --repeats 3   # fewer
    python benchmarks/long_attention.py --device cuda    # on a GPU: time and peak memory
    python benchmarks/long_attention.py --methods full linear   # some of the methods only

Each (method, N) runs in a fresh process, which measures how far its resident memory rises
above the level before the call (Linux: VmHWM reset through /proc/self/clear_refs, see
transformer_course.flash.peak_rss_increase) and the CPU time of the call (time.process_time).
Each (method, N) is measured --repeats times, each in its own process, the methods and sizes
interleaved; the CSV holds the median and the spread (min, max).
One head (B = H = 1), d = 64, fp32, causal, torch threads as set by OMP_NUM_THREADS:
  full            scaled_dot_product_attention (chapter 03) under causal_mask(N): the [N, N]
                  scores and weights in memory
  sliding_window  sliding_window_attention, W = 256, query blocks of 256 (the band only)
  block_sparse    block_sparse_attention on the block layout of block_sparse_mask(N, 64,
                  "bigbird"), W_b = 3 (at most 6 kept blocks per row), only the kept 64 x 64
                  tiles computed
  linear          linear_attention_chunked, chunks of 64
The [N, N] bool mask of "full" and the [N/64, N/64] block layout of "block_sparse" are built
before the measurement (a kernel takes them as inputs; the bool mask costs 1 byte per entry).
-> benchmarks/results/long_attention_cpu.csv. With --device cuda the same four methods on
the GPU, N = 1k..16k, timed with synchronisation (median of 5 calls after warm-up), peak
memory from torch.cuda.max_memory_allocated -> long_attention_cuda.csv.

Not run by the tests: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import RESULTS, cpu_name, write_csv

METHODS = ("full", "sliding_window", "block_sparse", "linear")


def make_fn(method: str, n: int, d: int, device: str = "cpu"):
    """One call of method on q, k, v [1, 1, n, d] (drawn on the CPU, then moved)."""
    from transformer_course.attention import causal_mask, scaled_dot_product_attention
    from transformer_course.long_attention import (block_layout, block_sparse_attention,
                                                   block_sparse_mask,
                                                   linear_attention_chunked,
                                                   sliding_window_attention)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, d, generator=g).to(device) for _ in range(3))
    if method == "full":
        mask = causal_mask(n).to(device)
        return lambda: scaled_dot_product_attention(q, k, v, mask)
    if method == "sliding_window":
        return lambda: sliding_window_attention(q, k, v, 256, 256)
    if method == "block_sparse":
        layout = block_layout(block_sparse_mask(n, 64, "bigbird"), 64)
        return lambda: block_sparse_attention(q, k, v, layout, 64)
    return lambda: linear_attention_chunked(q, k, v, 64)


def child(method: str, n: int, d: int) -> None:
    """Runs in a fresh process: measure one call, print a JSON line."""
    from transformer_course.flash import peak_rss_increase

    make_fn(method, 512, d)()     # warm up at a small size: first calls allocate buffers
    fn = make_fn(method, n, d)
    start = time.process_time()
    peak = peak_rss_increase(fn)
    seconds = time.process_time() - start
    print(json.dumps({"peak_extra_mib": peak / 2**20, "cpu_seconds": seconds}))


def run_cuda(ns, d: int, csv_out=None, methods=METHODS) -> None:
    """On the GPU: median time of a call (synchronised) and the peak memory it allocates
    above what is held before it (torch.cuda.max_memory_allocated)."""
    from transformer_course.machine import time_fn

    rows = []
    for n in ns:
        for method in methods:
            fn = make_fn(method, n, d, "cuda")
            fn()
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
            row = {"hardware": torch.cuda.get_device_name(), "device": "cuda",
                   "method": method, "n": n, "d": d, "dtype": "float32", "causal": True,
                   "scores_mib": round(4 * n * n / 2**20, 2),
                   "peak_extra_mib": round(peak / 2**20, 2),
                   "ms": round(time_fn(fn, device="cuda") * 1e3, 3)}
            print(row)
            rows.append(row)
            del fn
            torch.cuda.empty_cache()
    write_csv(rows, csv_out or RESULTS / "long_attention_cuda.csv")


def run_cpu(ns, d: int, repeats: int = 5, csv_out=None, methods=METHODS) -> None:
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    got = {}
    for run in range(repeats):                     # interleaved: drifts in load spread out
        for n in ns:
            for method in methods:
                out = subprocess.run([sys.executable, __file__, "--child", method, str(n),
                                      str(d)], capture_output=True, text=True, check=True)
                one = json.loads(out.stdout.strip().splitlines()[-1])
                got.setdefault((method, n), []).append(one)
                print(run, method, n, one, flush=True)
    rows = []
    for n in ns:
        for method in methods:
            secs = sorted(r["cpu_seconds"] for r in got[method, n])
            peaks = sorted(r["peak_extra_mib"] for r in got[method, n])
            rows.append({"hardware": cpu_name(), "device": "cpu", "threads": threads,
                         "method": method, "n": n, "d": d, "dtype": "float32",
                         "causal": True, "scores_mib": round(4 * n * n / 2**20, 2),
                         "runs": repeats,
                         "peak_extra_mib": round(statistics.median(peaks), 2),
                         "cpu_seconds": round(statistics.median(secs), 4),
                         "cpu_seconds_min": round(secs[0], 4),
                         "cpu_seconds_max": round(secs[-1], 4)})
    write_csv(rows, csv_out or RESULTS / "long_attention_cpu.csv")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--ns", type=int, nargs="+")
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="runs per (method, N)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, help="the CSV (default: results/, by device)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    args = parser.parse_args()
    if args.child:
        method, n, d = args.child
        child(method, int(n), int(d))
    elif args.device == "cuda":
        run_cuda(args.ns or [1024, 2048, 4096, 8192, 16384], args.d, args.out, args.methods)
    else:
        run_cpu(args.ns or [512, 1024, 2048, 4096, 8192], args.d, args.repeats, args.out,
                args.methods)
