"""Ring attention (chapter 17): time and memory per rank for P = 1, 2, 4 processes on the
CPU with gloo, with the send of the next K/V block started before the block's compute
(as ring_attention does) and after it (no overlap), and the causal FLOPs per rank of the
contiguous and zigzag layouts.

    python benchmarks/ring_attention.py               # N = 2048, H = 4, d = 64 (~10 min)
    python benchmarks/ring_attention.py --n 1024 --rounds 2

Each configuration spawns P processes (transformer_course.ring.run_ring), each with one
torch thread. Each process makes a warm-up call, one that measures memory, then `repeats`
timed calls, each after a barrier. The configurations take turns, `rounds` times over, so
that a change in the machine's load (other jobs share its cores) reaches every
configuration alike. One CSV row per timed call (`round`, `run`):
  ms               wall time of this call on the slowest rank (the P processes share this
                   machine's cores: they are not P devices)
  ms_mean_ranks    the same call's time averaged over the ranks
  send             "first": ring_shift started before the block's compute (overlap);
                   "after": started only once the compute is done (SendAfterCompute)
  bytes_counted    what one call allocates per rank, counted from the shapes: o, the
                   stacked K/V in hand and arriving, lse, one [n, n] score block per head
  bytes_measured   how far the process's resident memory rose during one call after the
                   warm-up, at its peak (VmHWM reset through /proc/self/clear_refs;
                   Linux; MALLOC_MMAP_THRESHOLD_ set below), largest over the ranks
  gflop_max/mean   FLOPs of QK^T and PV each rank computes (transformer_course.ring.ring_flops)
B = 1, fp32. -> benchmarks/results/ring_attention_cpu.csv

Not run by the tests: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# every allocation of 64 KiB or more its own mapping, returned to the system when freed
# (glibc; spawned ranks inherit it): the rise of resident memory during a call then counts
# the tensors the call allocates instead of reusing what the warm-up call freed
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")

import torch  # noqa: E402

from common import RESULTS, cpu_name, write_csv  # noqa: E402
from transformer_course.ring import ring_flops, run_ring  # noqa: E402

CONFIGS = ([(False, "contiguous", P, True) for P in (1, 2, 4)]
           + [(True, "contiguous", P, True) for P in (1, 2, 4)]
           + [(True, "zigzag", P, True) for P in (1, 2, 4)]
           + [(False, "contiguous", P, False) for P in (2, 4)]
           + [(True, "zigzag", P, False) for P in (2, 4)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per round")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, args.n, args.d, generator=g) for _ in range(3))
    rows, today = [], datetime.date.today().isoformat()
    for rnd, (causal, layout, P, send_first) in (
            (rnd, c) for rnd in range(args.rounds) for c in CONFIGS):
        load = os.getloadavg()[0]
        reports = run_ring(q, k, v, P, causal, layout, timeout=600, repeats=args.repeats,
                           send_first=send_first).reports
        flops = [f * args.heads for f in ring_flops(args.n, P, args.d, layout, causal)]
        measured = [r["bytes_measured"] for r in reports]
        for run in range(args.repeats):
            ms = [r["seconds"][run] * 1e3 for r in reports]
            rows.append(dict(
                hardware=cpu_name(), device="cpu", backend=reports[0]["backend"],
                threads_per_rank=1, cpu_count=os.cpu_count(), load_before=round(load, 2),
                P=P, layout=layout, causal=causal, send="first" if send_first else "after",
                N=args.n, heads=args.heads, d=args.d, dtype="float32", round=rnd,
                run=run,
                ms=round(max(ms), 2), ms_mean_ranks=round(sum(ms) / P, 2),
                bytes_counted=max(r["bytes_counted"] for r in reports),
                bytes_measured=None if None in measured else max(measured),
                gflop_max=round(max(flops) / 1e9, 4),
                gflop_mean=round(sum(flops) / P / 1e9, 4), date=today))
        print({k: rows[-1][k] for k in ("round", "P", "layout", "causal", "send", "ms",
                                          "bytes_counted", "bytes_measured")}, flush=True)
    write_csv(rows, RESULTS / "ring_attention_cpu.csv")


if __name__ == "__main__":
    main()
