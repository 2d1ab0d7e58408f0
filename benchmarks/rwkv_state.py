"""Time per token and state size of RWKV's recurrence against a growing KV cache.

    python benchmarks/rwkv_state.py                 # CPU, one thread, about half a minute
    python benchmarks/rwkv_state.py --lengths 256 1024 --threads 2
    python benchmarks/rwkv_state.py --device cuda   # on a GPU: synchronised wall time

Chapter 16 (RWKV) claims that RWKV decodes with a state of constant size, 5 d numbers per
layer, while a transformer's KV cache grows by 2 d numbers per position, and that the time
per token follows. This script decodes one token at position L for one layer of width d =
256, batch 1, float32: RWKV's time mixing from its state (transformer_course.rwkv.TimeMix
.step), and causal softmax attention (4 heads, projections of the same width) over a
preallocated KV cache holding L positions. It records the median CPU time of the process per
token (over repeats after warm-up) and the bytes of state, in
benchmarks/results/rwkv_state_cpu.csv, with the machine's load before and after. With
--device cuda: the median wall time per token, synchronised (transformer_course.machine
.time_fn), in rwkv_state_cuda.csv. Not run by the tests.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import RESULTS, cpu_name, write_csv
from transformer_course.rwkv import TimeMix


def time_per_call(fn, repeats: int, device: torch.device) -> float:
    if device.type == "cuda":
        from transformer_course.machine import time_fn
        return time_fn(lambda: [fn() for _ in range(20)], warmup=3, repeats=repeats,
                       device=device) / 20
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(20):
            fn()
        times.append((time.process_time() - start) / 20)
    return statistics.median(times)


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+",
                        default=[256, 512, 1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", help="the CSV (default: results/rwkv_state_<device>.csv)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    d, heads = args.d, 4
    mix = TimeMix(d).eval().to(dev)
    qkv = torch.nn.Linear(d, 3 * d, bias=False).to(dev)
    out_proj = torch.nn.Linear(d, d, bias=False).to(dev)
    x = torch.randn(1, d).to(dev)
    load_before = os.getloadavg()[0]
    rows = []
    for length in args.lengths:
        # RWKV: a state reached after `length` tokens (its size does not depend on them)
        state = tuple(t.to(dev) for t in (torch.randn(1, d), torch.randn(1, d),
                                           torch.rand(1, d) + 1, torch.randn(1, d)))
        rwkv_s = time_per_call(lambda: mix.step(x, state), args.repeats, dev)
        rwkv_bytes = sum(s.numel() * s.element_size() for s in state) + d * 4  # + ffn x
        # attention: the new token's q, k, v; the cache holds `length` positions
        k_cache = torch.randn(1, heads, length, d // heads).to(dev)
        v_cache = torch.randn(1, heads, length, d // heads).to(dev)

        def attend():
            q, k, v = qkv(x).view(1, 3, heads, 1, d // heads).unbind(1)
            k_cache[:, :, -1:] = k                      # write the new position
            v_cache[:, :, -1:] = v
            o = F.scaled_dot_product_attention(q, k_cache, v_cache)
            return out_proj(o.transpose(1, 2).reshape(1, d))

        kv_s = time_per_call(attend, args.repeats, dev)
        kv_bytes = 2 * length * d * 4
        for method, seconds, nbytes in (("rwkv", rwkv_s, rwkv_bytes),
                                        ("kv_cache", kv_s, kv_bytes)):
            hardware = torch.cuda.get_device_name() if dev.type == "cuda" else cpu_name()
            rows.append(dict(device=dev.type, hardware=hardware, threads=args.threads,
                             cpu_count=os.cpu_count(), load_before=f"{load_before:.2f}",
                             load_after="", dtype="float32", d_model=d, batch=1,
                             method=method, length=length,
                             us_per_token=f"{seconds * 1e6:.1f}", state_bytes=nbytes,
                             date=datetime.date.today().isoformat()))
        print(f"L = {length:5d}: rwkv {rwkv_s * 1e6:7.1f} µs, {rwkv_bytes:,} B; "
              f"kv cache {kv_s * 1e6:7.1f} µs, {kv_bytes:,} B")
    load_after = f"{os.getloadavg()[0]:.2f}"
    for row in rows:
        row["load_after"] = load_after
    write_csv(rows, Path(args.out) if args.out else RESULTS / f"rwkv_state_{dev.type}.csv")


if __name__ == "__main__":
    main()
