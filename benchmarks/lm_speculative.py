"""Speculative decoding on chapter 18's model: acceptance, tokens per target call and
time per token against plain decoding, for several gamma, repeated.

    python benchmarks/lm_speculative.py                       # the committed run (CPU)
    python benchmarks/lm_speculative.py --gammas 1 2 4 --repeats 5 --prompts 4 --new 96

Target: the chapter's main model (lm.load_main); draft: its small model trained on the
same data and tokenizer (lm.load_draft). Both run with a KV cache kept across calls
(lm.CachedLM, rewound after a rejection); plain decoding is lm.generate (KV-cached). All
sampling at temperature 1 from prompts of --prompt-len tokens cut from the validation
split. A repeat r runs, one after the other, plain decoding with the target, with the
draft, and speculative decoding for every gamma, all with generators seeded from r and
the prompt: the repeats are interleaved, so a change in the machine's load falls on
every variant alike. On the CPU every time is the process's CPU time (torch on one
thread), on a GPU wall time.

Columns, one row per gamma (gamma 0: plain decoding with the target) and repeat:
- gamma, repeat, tokens (generated), target_calls, drafted, accepted, rejected;
- alpha: accepted / (accepted + rejected), the drafts the target judged, kept;
- tokens_per_call: tokens / target_calls; formula: (1 - alpha^(gamma+1)) / (1 - alpha)
  with that alpha (a round cut short at the end of a text drafts fewer than gamma, so
  the measured value sits a little below);
- ms_per_token; speedup: this repeat's plain ms_per_token over this row's;
- c: the draft's ms_per_token in plain decoding over the target's (this repeat);
  speedup_formula: formula / (gamma c + 1);
- prompts, new_tokens, threads, hardware, date.
Results go to benchmarks/results/lm_speculative.csv. Not run by the tests.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import torch

from common import RESULTS, cpu_name, write_csv
from transformer_course import lm
from transformer_course.speculative import expected_tokens, speculative_generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gammas", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new", type=int, default=96)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(RESULTS / "lm_speculative.csv"))
    args = p.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    clock = time.process_time if device.type == "cpu" else time.perf_counter

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    target, _ = lm.load_main(device, progress=False)
    draft, _ = lm.load_draft(device, progress=False)
    val = lm.lm_data(target.cfg.vocab_size)["val"]
    step = len(val) // args.prompts
    prompts = [val[i * step: i * step + args.prompt_len][None].to(device)
               for i in range(args.prompts)]

    def timed(fn):
        sync()
        t0 = clock()
        fn()
        sync()
        return clock() - t0

    def plain(model, r):
        gens = [torch.Generator().manual_seed(1000 * r + i)
                for i in range(len(prompts))]
        return timed(lambda: [lm.generate(model, x, args.new, 1.0, generator=g)
                              for x, g in zip(prompts, gens)])

    def speculative(gamma, r, stats):
        gens = [torch.Generator().manual_seed(1000 * r + i)
                for i in range(len(prompts))]
        return timed(lambda: [speculative_generate(
            lm.CachedLM(target), lm.CachedLM(draft), x, args.new, gamma, 1.0, g,
            stats=stats) for x, g in zip(prompts, gens)])

    plain(target, 0), speculative(2, 0, {})                 # warm-up, not recorded
    rows, n = [], args.new * len(prompts)
    common = {"prompts": args.prompts, "new_tokens": args.new,
              "threads": torch.get_num_threads(),
              "hardware": (torch.cuda.get_device_name(device) if device.type == "cuda"
                           else cpu_name()),
              "date": datetime.date.today().isoformat()}
    for r in range(args.repeats):
        t_plain, t_draft = plain(target, r), plain(draft, r)
        c = t_draft / t_plain
        rows.append({"gamma": 0, "repeat": r, "tokens": n, "target_calls": n,
                     "drafted": 0, "accepted": 0, "rejected": 0, "alpha": "",
                     "tokens_per_call": 1.0, "formula": 1.0,
                     "ms_per_token": round(1000 * t_plain / n, 4), "speedup": 1.0,
                     "c": round(c, 4), "speedup_formula": 1.0, **common})
        for gamma in args.gammas:
            stats = {}
            t = speculative(gamma, r, stats)
            judged = stats["accepted"] + stats["rejected"]
            alpha = stats["accepted"] / judged
            per_call = n / stats["target_calls"]
            formula = expected_tokens(alpha, gamma)
            rows.append({"gamma": gamma, "repeat": r, "tokens": n,
                         "target_calls": stats["target_calls"],
                         "drafted": stats["drafted"], "accepted": stats["accepted"],
                         "rejected": stats["rejected"], "alpha": round(alpha, 4),
                         "tokens_per_call": round(per_call, 4),
                         "formula": round(formula, 4),
                         "ms_per_token": round(1000 * t / n, 4),
                         "speedup": round(t_plain / t, 4), "c": round(c, 4),
                         "speedup_formula": round(formula / (gamma * c + 1), 4),
                         **common})
            print(f"repeat {r} gamma {gamma}: alpha {alpha:.3f}, tokens/call "
                  f"{per_call:.2f} (formula {formula:.2f}), speedup {t_plain / t:.2f}, "
                  f"c {c:.3f}", flush=True)
    write_csv(rows, Path(args.out))


if __name__ == "__main__":
    main()
