"""Chapter 15's passkey experiment over several seeds: how far its claims depend on luck.

    python benchmarks/infini_passkey.py                 # seeds 0-4 (about 4 minutes of CPU)
    python benchmarks/infini_passkey.py --seeds 0 1

For each seed, the chapter's runs (transformer_course.infini.train_passkey: 300 steps of
64 sequences of 4 segments of 16, Adam at 3e-3, on the CPU in one thread):
  linear        the memory, linear rule, gate learning rate x10, beta = 0 at the start
  baseline      the memory read disabled (gate closed and frozen)
  gate_0.5_x1   beta = 0 at the start, the gate at the ordinary learning rate
  gate_0.05_x1  beta = -3 at the start (sigmoid 0.05), the ordinary learning rate
  gate_0.05_x10 beta = -3 at the start, the gate's learning rate x10
  delta         as linear, with the delta rule
and writes one row per measurement:
  measure=final    n = 300 (steps): held-out accuracy (1,000 sequences), the largest and
                   smallest sigmoid(beta_h) at the end
  measure=writes   linear and delta, n = memory writes before the query's segment (the
                   passkey in the first of n + 1 segments): accuracy on 500 sequences
  measure=segment  linear, n = the segment holding the passkey (of 4): accuracy on 500
The chapter reads the CSV (the same evaluation seeds as its cells) and plots it.
-> benchmarks/results/infini_passkey_cpu.csv

Not run by the tests: it trains 6 models per seed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import RESULTS, cpu_name, write_csv

RUNS = {"linear": {}, "baseline": {"memory": False},
        "gate_0.5_x1": {"gate_lr": 1.0}, "gate_0.05_x1": {"beta0": -3.0, "gate_lr": 1.0},
        "gate_0.05_x10": {"beta0": -3.0}, "delta": {"delta": True}}
LENGTHS = [2, 4, 8, 16, 32, 64]


def main() -> None:
    from transformer_course.infini import passkey_accuracy, passkey_batch, train_passkey

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default=str(RESULTS / "infini_passkey_cpu.csv"))
    args = parser.parse_args()
    rows, cpu = [], cpu_name()

    def row(seed, run, measure, n, accuracy, gates=(float("nan"),), seconds=0.0):
        rows.append({"cpu": cpu, "seed": seed, "run": run, "measure": measure, "n": n,
                     "accuracy": round(accuracy, 4), "gate_max": round(max(gates), 4),
                     "gate_min": round(min(gates), 4), "seconds": round(seconds, 2)})

    for seed in args.seeds:
        models = {}
        for run, kwargs in RUNS.items():
            start = time.process_time()
            models[run], history = train_passkey(seed=seed, **kwargs)
            row(seed, run, "final", 300, history["accuracy"][-1], history["gate"][-1],
                time.process_time() - start)
            print(f"seed {seed} {run:14s} accuracy {history['accuracy'][-1]:.3f} gates "
                  + ", ".join(f"{b:.2f}" for b in history["gate"][-1]), flush=True)
        for run in ("linear", "delta"):                       # as the chapter's cells
            g = torch.Generator().manual_seed(10**5 + seed)
            for n in LENGTHS:
                row(seed, run, "writes", n - 1,
                    passkey_accuracy(models[run], *passkey_batch(500, n, g)))
        g = torch.Generator().manual_seed(10**6 + seed)
        for where in range(4):
            row(seed, "linear", "segment", where,
                passkey_accuracy(models["linear"], *passkey_batch(500, 4, g, where)))
    write_csv(rows, Path(args.out))


if __name__ == "__main__":
    main()
