"""Flash attention: peak memory and time of the tiled forward vs naive attention on the CPU;
TFLOP/s of the Triton kernel vs PyTorch's flash backend on a GPU.

    python benchmarks/flash_attention.py                 # CPU: N = 1k..16k (about 2 minutes)
    python benchmarks/flash_attention.py --ns 1024 4096  # fewer sizes
    python benchmarks/flash_attention.py --cuda          # GPU: TFLOP/s, N = 512..16k

CPU (chapter 12's claim "O(N) memory, not O(N²)"): each (implementation, N) runs in a fresh
process, which measures how far its resident memory rises above the level before the call
(Linux: VmHWM reset through /proc/self/clear_refs, see transformer_course.flash.peak_rss_increase)
and the CPU time. One head (B = H = 1), d = 64, fp32. "naive" is softmax(QK^T/sqrt(d)) V with
the [N, N] matrices in memory; "tiled" is flash_attention_forward with 256 x 256 tiles (the tiles
are O(1) memory; a Python loop over them is slow, which is the GPU's job to fix).
-> benchmarks/results/flash_attention_cpu.csv

CUDA: TFLOP/s = 4·B·H·N²·d / seconds, halved when causal; forward+backward counts
the backward as 2.5 forwards (as flash-attention's benchmarks do). Ours is
FlashAttentionTriton (flash_forward_kernel + flash_backward_kernel); PyTorch's is
F.scaled_dot_product_attention restricted to its flash backend.
-> benchmarks/results/flash_attention_cuda.csv

Not run by the tests: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import torch

from common import RESULTS, cpu_name, write_csv


def child(impl: str, n: int, d: int, block: int) -> None:
    """Runs in a fresh process: measure one call, print a JSON line."""
    from transformer_course.flash import flash_attention_forward, peak_rss_increase

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, d, generator=g) for _ in range(3))

    def naive():
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), -1) @ v

    def tiled():
        return flash_attention_forward(q, k, v, block_q=block, block_k=block)[0]

    fn = naive if impl == "naive" else tiled
    q, k, v, full = q[..., :256, :], k[..., :256, :], v[..., :256, :], (q, k, v)
    fn()  # warm up at a small size: PyTorch's first call allocates its own buffers
    q, k, v = full
    start = time.process_time()
    peak = peak_rss_increase(fn)
    seconds = time.process_time() - start
    print(json.dumps({"peak_extra_mib": peak / 2**20, "cpu_seconds": seconds}))


def run_cpu(ns, d: int, block: int, out=None) -> None:
    rows = []
    for n in ns:
        for impl in ("tiled", "naive"):
            out = subprocess.run([sys.executable, __file__, "--child", impl, str(n), str(d),
                                  str(block)], capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            row = {"hardware": cpu_name(), "device": "cpu", "impl": impl, "n": n, "d": d,
                   "dtype": "float32", "block": block if impl == "tiled" else "",
                   "scores_mib": round(4 * n * n / 2**20, 2),
                   "peak_extra_mib": round(got["peak_extra_mib"], 2),
                   "cpu_seconds": round(got["cpu_seconds"], 3)}
            print(row)
            rows.append(row)
    write_csv(rows, out or RESULTS / "flash_attention_cpu.csv")


def run_cuda(ns, batch: int, heads: int, out=None) -> None:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from transformer_course.flash import FlashAttentionTriton, flash_attention_triton
    from transformer_course.machine import time_fn

    device = torch.device("cuda")
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        for d in (64, 128):
            for causal in (False, True):
                for n in ns:
                    q, k, v = (torch.randn(batch, heads, n, d, device=device, dtype=dtype,
                                           requires_grad=True) for _ in range(3))
                    flops = 4 * batch * heads * n * n * d / (2 if causal else 1)

                    def sdpa():
                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

                    def sdpa_fwd_bwd():
                        sdpa().backward(do)

                    def triton_fwd_bwd():
                        FlashAttentionTriton.apply(q, k, v, causal).backward(do)

                    do = torch.randn_like(q)
                    cases = [("triton", "fwd", lambda: flash_attention_triton(q, k, v, causal),
                              flops),
                             ("sdpa_flash", "fwd", sdpa, flops),
                             ("triton", "fwd+bwd", triton_fwd_bwd, (1 + 2.5) * flops),
                             ("sdpa_flash", "fwd+bwd", sdpa_fwd_bwd, (1 + 2.5) * flops)]
                    for impl, mode, fn, work in cases:
                        if mode == "fwd":
                            with torch.no_grad():
                                seconds = time_fn(fn, device=device)
                        else:
                            seconds = time_fn(fn, device=device)
                        row = {"hardware": torch.cuda.get_device_name(device), "impl": impl,
                               "mode": mode, "dtype": str(dtype).removeprefix("torch."),
                               "d": d, "causal": causal, "batch": batch, "heads": heads,
                               "n": n, "ms": round(1e3 * seconds, 4),
                               "tflops": round(work / seconds / 1e12, 2)}
                        print(row)
                        rows.append(row)
    write_csv(rows, out or RESULTS / "flash_attention_cuda.csv")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--ns", type=int, nargs="+")
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="cuda: the same as --cuda")
    parser.add_argument("--out", help="CSV to write (default benchmarks/results/flash_attention_<device>.csv)")
    args = parser.parse_args()
    if args.child:
        impl, n, d, block = args.child
        child(impl, int(n), int(d), int(block))
    elif args.cuda or args.device == "cuda":
        run_cuda(args.ns or [512, 1024, 2048, 4096, 8192, 16384], batch=4, heads=16, out=args.out)
    else:
        run_cpu(args.ns or [1024, 2048, 4096, 8192, 16384], args.d, args.block, out=args.out)
