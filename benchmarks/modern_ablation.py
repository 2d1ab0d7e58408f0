"""What each modern choice buys, measured: the 2017 recipe against the modern one, each
change alone and all together, at equal parameter count and token budget, over seeds.

    python benchmarks/modern_ablation.py        # the committed run (CPU, 1 thread)
    python benchmarks/modern_ablation.py --seeds 0 1 2 3 --tokens 600000

Chapter 18 (a modern small language model) plots the CSV. The base model is a small
lm.LMConfig (d_model 64, 3 layers, 4 heads, vocabulary 512, windows of 128 tokens). The
2017 recipe (lm.recipe_2017: post-norm LayerNorm, learned positions, ReLU FFN of width 4
d_model, full multi-head attention) is the reference; every other config changes ONE
field of it toward the modern recipe (RMSNorm, pre-norm, RoPE, SwiGLU, GQA with 2 K/V
heads; and sinusoidal positions, the paper's other choice), and "modern" changes all of
them (lm.MAIN's choices). Each config's d_ff is the integer that brings its parameter
count closest to the 2017 model's, so the configs differ in how they spend the same
parameters, not in how many they have. Every run trains on the same number of tokens
with lm.train_lm (cached by recipe: re-running only trains what is missing) and is
evaluated on the whole validation split.

Two peak learning rates. At 1e-3 every config trains; all eight are run there. At 3e-3,
the chapter's main model's rate, the 2017 model learns only the unigram distribution
(its loss stays on the plateau), so the 2017, pre-norm and modern configs are run there
too: the row pairs show which change lets the model train at the higher rate. The CSV is
rewritten after every run, so an interrupted run leaves the rows it finished.

Columns, one row per config and seed:
- config, changed (the field(s) changed from 2017), max_lr, seed;
- val_bpb: validation bits per byte at the end; bpb_mean, bpb_std: over the seeds of the
  config at that max_lr (std with n - 1); params (counted, tied embedding once), d_ff;
- kv_bytes_per_token: the KV cache's bytes per token in fp32, counted from the config;
- train_tokens_per_s: training throughput measured as process CPU time (torch on one
  thread) over 3 repeats of 4 optimizer steps, median (min, max in tps_min, tps_max);
- tokens (the token budget), hardware, date.
Results go to benchmarks/results/modern_ablation.csv. Not run by the tests.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from common import RESULTS, cpu_name, write_csv
from transformer_course import lm

BASE = lm.LMConfig(vocab_size=512, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2,
                   max_seq_len=128)
OLD = lm.recipe_2017(BASE)
MODERN_FIELDS = {"norm": "rms", "norm_position": "pre", "positions": "rope",
                 "ffn": "swiglu", "n_kv_heads": BASE.n_kv_heads}


def configs() -> dict[str, tuple[str, lm.LMConfig]]:
    """name -> (what changed from 2017, config before d_ff is matched)."""
    out = {"2017": ("none", OLD)}
    out["sinusoidal"] = ("positions=sinusoidal", replace(OLD, positions="sinusoidal"))
    for field, value in MODERN_FIELDS.items():
        name = {"norm": "rmsnorm", "norm_position": "pre-norm", "positions": "rope",
                "ffn": "swiglu", "n_kv_heads": "gqa"}[field]
        out[name] = (f"{field}={value}", replace(OLD, **{field: value}))
    out["modern"] = ("all five", replace(OLD, **MODERN_FIELDS))
    return out


def count(cfg: lm.LMConfig) -> int:
    torch.manual_seed(0)
    return lm.n_params(lm.LM(cfg))


def match_params(cfg: lm.LMConfig, target: int) -> lm.LMConfig:
    """cfg with the integer d_ff whose parameter count is closest to target (the count
    is linear in d_ff: two counts give the slope)."""
    a, b = count(replace(cfg, d_ff=64)), count(replace(cfg, d_ff=128))
    d_ff = round(64 + (target - a) * 64 / (b - a))
    return replace(cfg, d_ff=d_ff)


def tokens_per_s(cfg: lm.LMConfig, batch_size: int, repeats: int = 3,
                 steps: int = 4) -> list[float]:
    """Training tokens per CPU second (process time), `repeats` times `steps` steps."""
    torch.manual_seed(0)
    model = lm.LM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.max_seq_len + 1))

    def step():
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()                                                  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(steps):
            step()
        out.append(steps * batch_size * cfg.max_seq_len / (time.process_time() - t0))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tokens", type=int, default=600_000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    p.add_argument("--high-lr-configs", nargs="+",
                   default=["2017", "pre-norm", "modern"],
                   help="the configs also run at the learning rates after the first")
    p.add_argument("--out", default=str(RESULTS / "modern_ablation.csv"))
    args = p.parse_args()
    torch.set_num_threads(1)

    target = count(OLD)
    matched = {}
    for name, (changed, cfg) in configs().items():
        cfg = cfg if name == "2017" else match_params(cfg, target)
        matched[name] = (changed, cfg)
        n = count(cfg)
        print(f"{name:>11}: d_ff {cfg.ffn_width:4d}  params {n:,} "
              f"({100 * (n - target) / target:+.2f} % vs 2017)  "
              f"KV bytes/token {lm.kv_bytes_per_token(cfg)}", flush=True)

    speed = {name: tokens_per_s(cfg, args.batch_size) for name, (_, cfg) in
             matched.items()}
    grid = [(lr, name) for i, lr in enumerate(args.lrs) for name in matched
            if i == 0 or name in args.high_lr_configs]
    bpb, date, hardware = {}, datetime.date.today().isoformat(), cpu_name()
    for seed in args.seeds:             # seed-major: every run gets seed 0 first
        for lr, name in grid:
            t0 = time.process_time()
            _, history = lm.train_lm(matched[name][1], args.tokens, seed=seed,
                                     batch_size=args.batch_size, max_lr=lr,
                                     progress=False)
            bpb[lr, name, seed] = history["val_bpb"][-1]
            print(f"seed {seed} lr {lr:g} {name:>11}: {bpb[lr, name, seed]:.4f} bpb "
                  f"({time.process_time() - t0:.0f} s CPU here)", flush=True)
            rows = []
            for lr_, name_ in grid:
                changed, cfg = matched[name_]
                seeds = [s for s in args.seeds if (lr_, name_, s) in bpb]
                values = [bpb[lr_, name_, s] for s in seeds]
                for s in seeds:
                    rows.append({
                        "config": name_, "changed": changed, "max_lr": lr_, "seed": s,
                        "val_bpb": round(bpb[lr_, name_, s], 5),
                        "bpb_mean": round(statistics.mean(values), 5),
                        "bpb_std": (round(statistics.stdev(values), 5)
                                    if len(values) > 1 else 0.0),
                        "params": count(cfg), "d_ff": cfg.ffn_width,
                        "kv_bytes_per_token": lm.kv_bytes_per_token(cfg),
                        "train_tokens_per_s": round(statistics.median(speed[name_])),
                        "tps_min": round(min(speed[name_])),
                        "tps_max": round(max(speed[name_])),
                        "tokens": args.tokens, "threads": torch.get_num_threads(),
                        "hardware": hardware, "date": date})
            write_csv(rows, Path(args.out))


if __name__ == "__main__":
    main()
