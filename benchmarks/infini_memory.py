"""Memory held against tokens processed when streaming segments (chapter 15):
Infini-attention's compressive memory, a Transformer-XL-style cache of the last segment,
and a full KV cache.

    python benchmarks/infini_memory.py                  # up to 2^20 tokens (about a minute)
    python benchmarks/infini_memory.py --max-tokens 65536
    python benchmarks/infini_memory.py --device cuda    # on a GPU
    python benchmarks/infini_memory.py --methods infini txl   # some of the methods only

One head, d_head = 64, segments of 512 random tokens (q, k, v drawn directly), fp32, no
gradients, torch threads as set by OMP_NUM_THREADS. Each method runs in a fresh process,
which resets the kernel's high-water mark (VmHWM, /proc/self/clear_refs) after setup and one
warm-up segment (the libraries' one-time workspaces), and
reports after 2^10, 2^11, ... tokens:
  state_bytes   the tensors kept from one segment to the next
  peak_rss_mb   how far the resident memory rose above its level before the stream, at peak
  seconds       CPU time (time.process_time) of the stream so far
  infini   causal attention inside the segment + memory_retrieve / memory_update (linear)
  txl      causal attention over the previous segment's keys and values and this segment's
  full_kv  causal attention over all keys and values so far (stopped at --full-max tokens:
           each segment costs O(tokens so far))
-> benchmarks/results/infini_memory_cpu.csv. With --device cuda the same streams on the GPU:
peak_rss_mb is then the peak of torch.cuda.max_memory_allocated above the level before the
stream, and seconds the wall time, synchronised -> infini_memory_cuda.csv.

Not run by the tests: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import RESULTS, cpu_name, write_csv

SEGMENT, D = 512, 64
METHODS = ("infini", "txl", "full_kv")


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child(method: str, max_tokens: int, device: str = "cpu") -> None:
    from transformer_course.attention import scaled_dot_product_attention
    from transformer_course.infini import memory_retrieve, memory_update
    from transformer_course.long_attention import window_mask

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, SEGMENT, D, generator=g).to(device) for _ in range(3))
    M, z = torch.zeros(1, D, D, device=device), torch.zeros(1, D, device=device)
    cuda = device == "cuda"
    keys = vals = q[:, :0]
    # one warm-up call, so that the libraries' one-time workspaces are not counted
    scaled_dot_product_attention(q, k, v, window_mask(SEGMENT, SEGMENT, SEGMENT).to(device))
    memory_update(k, v, M, z)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before, clock = torch.cuda.memory_allocated(), time.perf_counter
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, clock = status("VmRSS:"), time.process_time
    start, tokens, report = clock(), 0, 1024
    with torch.no_grad():
        while tokens < max_tokens:
            # new tokens of the stream: perturb so that no work is cached
            qs, ks, vs = q + tokens * 1e-9, k - tokens * 1e-9, v
            if method == "infini":
                local = scaled_dot_product_attention(
                    qs, ks, vs, window_mask(SEGMENT, SEGMENT, SEGMENT).to(device))
                out = 0.5 * memory_retrieve(qs, M, z) + 0.5 * local
                M, z = memory_update(ks, vs, M, z)
                held = [M, z]
            else:
                keys, vals = torch.cat([keys, ks], 1), torch.cat([vals, vs], 1)
                if method == "txl":
                    keys, vals = keys[:, -2 * SEGMENT:], vals[:, -2 * SEGMENT:]
                n_k = keys.shape[1]
                out = scaled_dot_product_attention(qs, keys, vals,
                                                   window_mask(SEGMENT, n_k, n_k).to(device))
                if method == "txl":                      # keep only this segment for later
                    keys, vals = keys[:, -SEGMENT:], vals[:, -SEGMENT:]
                held = [keys, vals]
            del out
            tokens += SEGMENT
            if tokens >= report:
                if cuda:
                    torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() if cuda else status("VmHWM:")
                print(json.dumps({
                    "tokens": tokens,
                    "state_bytes": sum(t.numel() * t.element_size() for t in held),
                    "peak_rss_mb": round((peak - before) / 2**20, 2),
                    "seconds": round(clock() - start, 3)}), flush=True)
                report *= 2


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--max-tokens", type=int, default=2**20)
    p.add_argument("--full-max", type=int, default=2**15)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", help="the CSV (default: results/infini_memory_<device>.csv)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    a = p.parse_args()
    if a.child:
        return child(a.child[0], int(a.child[1]), a.child[2])
    rows = []
    for method in a.methods:
        cap = min(a.max_tokens, a.full_max) if method == "full_kv" else a.max_tokens
        res = subprocess.run([sys.executable, __file__, "--child", method, str(cap),
                              a.device], capture_output=True, text=True, check=True)
        for line in res.stdout.splitlines():
            r = json.loads(line)
            rows.append({"cpu": cpu_name(), "device": a.device,
                         "gpu": torch.cuda.get_device_name() if a.device == "cuda" else "",
                         "threads": torch.get_num_threads(),
                         "method": method, "d_head": D, "segment": SEGMENT, **r})
            print(rows[-1])
    write_csv(rows, Path(a.out) if a.out else RESULTS / f"infini_memory_{a.device}.csv")


if __name__ == "__main__":
    main()
