"""The chapter 18 leaderboard: how long a config takes to reach TARGET_BPB bits per byte
on the validation split of Python's documentation (lm.split_topics), on your hardware.

    python benchmarks/leaderboard.py --config cpu-small            # prints one CSV row
    python benchmarks/leaderboard.py --config cpu-small --append   # and adds it
    python benchmarks/leaderboard.py --config gpu-medium --append  # on a CUDA GPU

A run trains the named config from scratch (never from a cache: the time is the point)
with chapter 08's train (AdamW, 5 % warmup, cosine to max_lr / 10) and lm.train_lm's
batches, evaluating the whole validation split every --eval-every steps. The clock is
stopped during evaluations, so time_to_target_s is the wall time of training alone until
the first evaluation at or below TARGET_BPB (empty if never reached); cpu_s_to_target is
the process CPU time over the same span. The run goes on to the end of its token budget
and reports final_bpb. On a shared machine wall time grows with the others' load: the
row records the 1-minute load average at the start (load_1min) and the threads.

Rows of benchmarks/results/leaderboard.csv: config, target_bpb, time_to_target_s,
cpu_s_to_target, tokens_to_target, final_bpb, tokens, params, batch_size, threads,
load_1min, device, hardware, torch, date, commit. Add your own with --append (any config
in CONFIGS, or a new entry there under a new name).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from common import RESULTS, cpu_name
from transformer_course import lm
from transformer_course.training import TrainSettings, train

# Fixed for every row: the bar is the same whatever the config. Chapter 18's main model
# (lm.MAIN, lm.MAIN_TOKENS) reaches it near the end of its token budget.
TARGET_BPB = 1.5


@dataclass
class Entry:
    cfg: lm.LMConfig
    tokens: int
    batch_size: int = 16
    max_lr: float = 3e-3
    eval_every: int = 25


CONFIGS = {
    # The chapter's main model (lm.MAIN) and token budget: minutes on a laptop CPU.
    "cpu-small": Entry(lm.MAIN, lm.MAIN_TOKENS),
    # Larger, for a CUDA GPU (bf16 autocast in train): 4.4 M parameters, windows of 256.
    "gpu-medium": Entry(lm.LMConfig(vocab_size=512, d_model=256, n_layers=6, n_heads=4,
                                    n_kv_heads=2, max_seq_len=256),
                        tokens=8_000_000, batch_size=64, max_lr=2e-3, eval_every=25),
}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except Exception:
        return "unknown"


def run(name: str, device: torch.device, seed: int = 0) -> dict:
    e = CONFIGS[name]
    data = lm.lm_data(e.cfg.vocab_size)
    train_ids, val_ids = data["train"], data["val"]
    token_bytes, n = data["tokenizer"].token_bytes, e.cfg.max_seq_len
    steps = max(1, e.tokens // (e.batch_size * n))
    settings = TrainSettings(steps=steps, batch_size=e.batch_size, max_lr=e.max_lr,
                             min_lr=e.max_lr / 10, warmup_steps=max(1, steps // 20),
                             seed=seed)
    torch.manual_seed(seed)
    model = lm.LM(e.cfg).to(device)
    clock = {"wall": 0.0, "cpu": 0.0, "since": None}
    reached, evals = {}, []

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def pause():
        sync()
        if clock["since"] is not None:
            clock["wall"] += time.perf_counter() - clock["since"][0]
            clock["cpu"] += time.process_time() - clock["since"][1]

    def resume():
        clock["since"] = time.perf_counter(), time.process_time()

    def evaluate(step):                 # the clock runs from the end of the step-0 eval
        pause()
        bpb = lm.evaluate_bpb(model, val_ids, token_bytes)
        evals.append(bpb)
        print(f"step {step:5d}  {clock['wall']:8.1f} s  val {bpb:.4f} bpb", flush=True)
        if bpb <= TARGET_BPB and not reached:
            reached.update(wall=clock["wall"], cpu=clock["cpu"],
                           tokens=step * e.batch_size * n)
        resume()

    def get_batch(step):
        if step % e.eval_every == 0:
            evaluate(step)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(train_ids) - n - 1, (e.batch_size,), generator=g)
        w = torch.stack([train_ids[s: s + n + 1] for s in starts.tolist()])
        return w[:, :-1].to(device), w[:, 1:].to(device)

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch[0]).flatten(0, 1).float(), batch[1].flatten())

    load = os.getloadavg()[0]
    train(model, get_batch, loss_fn, settings, device, progress=False)
    evaluate(steps)
    return {"config": name, "target_bpb": TARGET_BPB,
            "time_to_target_s": round(reached["wall"], 1) if reached else "",
            "cpu_s_to_target": round(reached["cpu"], 1) if reached else "",
            "tokens_to_target": reached.get("tokens", ""),
            "final_bpb": round(evals[-1], 4), "tokens": steps * e.batch_size * n,
            "params": lm.n_params(model), "batch_size": e.batch_size,
            "threads": torch.get_num_threads(), "load_1min": round(load, 2),
            "device": device.type,
            "hardware": (torch.cuda.get_device_name(device) if device.type == "cuda"
                         else cpu_name()),
            "torch": torch.__version__, "date": datetime.date.today().isoformat(),
            "commit": commit()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu-small")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    p.add_argument("--append", action="store_true",
                   help="add the row to benchmarks/results/leaderboard.csv")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    row = run(args.config, torch.device(args.device))
    print(",".join(row))
    print(",".join(str(v) for v in row.values()))
    if args.append:
        out = RESULTS / "leaderboard.csv"
        new = not out.exists()
        with out.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        print(f"appended to {out}")


if __name__ == "__main__":
    main()
