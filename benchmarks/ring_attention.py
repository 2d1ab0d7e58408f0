"""Ring attention (chapter 17): time and memory per rank for P = 1, 2, 4 processes on the
CPU with gloo, and the causal FLOPs per rank of the contiguous and zigzag layouts.

    python benchmarks/ring_attention.py               # N = 2048, H = 4, d = 64 (about a minute)
    python benchmarks/ring_attention.py --n 1024

Each configuration spawns P processes (transformer_course.ring.run_ring), each with one torch
thread, which run ring_attention on their block after one warm-up call and report:
  ms_max, ms_mean   wall time of one ring_attention call, slowest rank and mean over ranks
                    (the P processes share this machine's cores: not P devices)
  bytes_per_rank    bytes of the tensors one rank holds: q, k, v, o, lse, the stacked K/V in
                    hand and the one arriving, one [n, n] score block per head
  gflop_max/mean    FLOPs of QK^T and PV each rank computes (transformer_course.ring.ring_flops)
B = 1, fp32. -> benchmarks/results/ring_attention_cpu.csv

Not run by the tests: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from common import RESULTS, cpu_name, write_csv  # noqa: E402
from transformer_course.ring import ring_flops, run_ring  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, args.n, args.d, generator=g) for _ in range(3))
    rows = []
    for causal in (False, True):
        for layout in ("contiguous", "zigzag"):
            if layout == "zigzag" and not causal:
                continue
            for P in (1, 2, 4):
                reports = run_ring(q, k, v, P, causal, layout, timeout=300,
                                   repeats=args.repeats).reports
                ms = [r[2] * 1e3 for r in reports]
                flops = [f * args.heads for f in ring_flops(args.n, P, args.d, layout, causal)]
                rows.append(dict(hardware=cpu_name(), device="cpu", backend=reports[0][1],
                                 threads_per_rank=1, P=P, layout=layout, causal=causal,
                                 N=args.n, heads=args.heads, d=args.d, dtype="float32",
                                 ms_max=round(max(ms), 2), ms_mean=round(sum(ms) / P, 2),
                                 bytes_per_rank=max(r[3] for r in reports),
                                 gflop_max=round(max(flops) / 1e9, 4),
                                 gflop_mean=round(sum(flops) / P / 1e9, 4)))
                print(rows[-1])
    write_csv(rows, RESULTS / "ring_attention_cpu.csv")


if __name__ == "__main__":
    main()
