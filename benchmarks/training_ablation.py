"""Chapter 08's ablation over several seeds: what each training ingredient buys.

    python benchmarks/training_ablation.py                 # seeds 0-2 (about 3 minutes of CPU)
    python benchmarks/training_ablation.py --seeds 0 1

For each seed, the dates model (transformer_course.training.dates_recipe) is trained for the
first 120 steps of its 250-step schedule, on the CPU in one thread, four times from the same
initial weights and on the same batches (the seed sets both):
  the recipe          as chapter 08 trains it
  no warmup           the learning rate starts at its peak, 1e-2
  N(0, 1) embedding   the token table drawn as nn.Embedding does by default, N(0, 1)
  no shift            the decoder reads the labels themselves, not shifted right
and writes one row per measurement:
  measure=loss         n = the step: the training loss of that step
  measure=exact_match  n = 120: the fraction of 300 held-out dates translated exactly
The chapter reads the CSV and plots it; seed 0 is the recipe's own seed.
-> benchmarks/results/training_ablation_cpu.csv

Not run by the tests: it trains 4 models per seed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from dataclasses import replace

import torch
from torch import nn

from common import RESULTS, cpu_name, write_csv

RUNS = ["the recipe", "no warmup", "N(0, 1) embedding", "no shift"]
STEPS = 120


def ablation(run: str, seed: int):
    """(training losses, exact match on 300 held-out dates) of one run."""
    from transformer_course.training import (dates_batches, dates_loss, dates_recipe,
                                             exact_match, label_smoothed_cross_entropy,
                                             make_dates, train)
    from transformer_course.transformer import EncoderDecoder

    tok, cfg, settings = dates_recipe()
    settings = replace(settings, seed=seed)
    torch.manual_seed(seed)
    model = EncoderDecoder(cfg)
    if run == "N(0, 1) embedding":
        nn.init.normal_(model.embed.tok.weight, std=1.0)
    if run == "no warmup":
        settings = replace(settings, warmup_steps=0)

    def loss_fn(model, batch):
        if run != "no shift":
            return dates_loss(model, batch, settings.label_smoothing)
        src, src_mask, labels = batch
        logits = model(src, labels, src_mask)  # the labels themselves, not shifted
        return label_smoothed_cross_entropy(logits, labels, settings.label_smoothing)

    history = train(model, dates_batches(tok, settings, "cpu"), loss_fn, settings, "cpu",
                    n_steps=STEPS, progress=False)
    held_out = make_dates(1000, seed=123, split="test")[:300]
    return history["loss"], exact_match(model, tok, held_out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(RESULTS / "training_ablation_cpu.csv"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, cpu = [], cpu_name()
    for seed in args.seeds:
        for run in RUNS:
            start = time.process_time()
            losses, em = ablation(run, seed)
            seconds = time.process_time() - start
            rows += [{"cpu": cpu, "seed": seed, "run": run, "measure": "loss", "n": step,
                      "value": round(loss, 4), "seconds": round(seconds, 1)}
                     for step, loss in enumerate(losses)]
            rows.append({"cpu": cpu, "seed": seed, "run": run, "measure": "exact_match",
                         "n": STEPS, "value": round(em, 4), "seconds": round(seconds, 1)})
            print(f"seed {seed} {run:<18} loss {sum(losses[100:]) / 20:.3f} "
                  f"exact match {em:.0%} ({seconds:.0f} s of CPU)", flush=True)
    write_csv(rows, Path(args.out))


if __name__ == "__main__":
    main()
