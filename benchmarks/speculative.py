"""Measure speculative sampling against plain sampling: tokens per second and the speedup vs gamma,
repeated, beside the speedup formula and the costs that explain the gap.

    python benchmarks/speculative.py                 # CPU (or CUDA when present), 8 prompts x 48 tokens
    python benchmarks/speculative.py --prompts 4 --new 32 --gammas 1 2 4 --repeats 5

Chapter 13 (speculative sampling) plots the CSV. Target: chapter 08's character model
(load_or_train("chars")); draft: the chapter's 1-layer model (load_or_train_draft). Each run
samples at temperature 1 from the same prompts of held-out text. A repeat r measures, one after the
other, plain decoding with the target, with the draft, and speculative decoding for every gamma, all
with generators seeded r: the repeats differ in the text sampled and in the machine's load, and the
CSV gives the median and the range over them. Two variants: "recompute" (each call runs the model
on its whole window; plain = chapter 09's sample) and "cached" (each model keeps a KV cache, rewound
after rejections: CachedLM; plain = chapter 10's generate_cached). On the CPU every time is the
process's CPU time (one thread: the work done, whatever else the machine runs), on a GPU wall time.

Columns, per variant and gamma (gamma 0: plain decoding with the target):
- tokens_per_s, speedup (median; speedup_min, speedup_max: the range over the repeats; a repeat's
  speedup is its plain time over its speculative time);
- c: the draft's cost relative to the target, plain decoding with the draft over that with the target
  (median over the repeats); alpha: accepted / (accepted + rejected) drafts; tokens_per_call;
- formula: the speedup formula tokens_per_call / (gamma c + 1) with the measured tokens_per_call and c;
- plain_ms: a plain decoding step (time per token); target_ms, draft_ms: the time of one target
  call and one draft call inside speculative decoding; other_ms: the rest of a round (sampling
  distributions, verification, concatenation), per target call; drafts_per_call: tokens drafted per
  target call (gamma, less in the last rounds). All medians over the repeats.
Results go to benchmarks/results/speculative_<device>.csv. Not run by the tests: timings depend on
the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch

from common import RESULTS, cpu_name, write_csv
from transformer_course.decoding import sample
from transformer_course.kv_cache import generate_cached
from transformer_course.speculative import (CachedLM, load_or_train_draft, speculative_generate,
                                            windowed)
from transformer_course.training import char_corpus, load_or_train


def hardware(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(device):
    return time.process_time if device.type == "cpu" else time.perf_counter


def timed(fn, device) -> float:
    sync(device)
    t0 = clock(device)()
    fn()
    sync(device)
    return clock(device)() - t0


class Clocked:
    """A language model whose calls are counted and timed."""

    def __init__(self, lm, device):
        self.lm, self.device, self.calls, self.seconds = lm, device, 0, 0.0
        self.clock = clock(device)

    def __call__(self, ids):
        sync(self.device)
        t0 = self.clock()
        out = self.lm(ids)
        sync(self.device)
        self.seconds += self.clock() - t0
        self.calls += 1
        return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--gammas", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--note", default="", help="conditions of the run, kept in the CSV (e.g. other load)")
    ap.add_argument("--out", default=None, help="CSV path (default benchmarks/results/speculative_<device>.csv)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    target_model, _ = load_or_train("chars", device, progress=False)
    draft_model = load_or_train_draft(device, progress=False)
    _, _, val_ids = char_corpus()
    starts = torch.linspace(0, len(val_ids) - 40, args.prompts).long().tolist()
    prompts = [val_ids[s:s + 16][None].to(device) for s in starts]
    n_tokens = args.new * len(prompts)

    def gen_for(r):
        return torch.Generator().manual_seed(r) if device.type == "cpu" else None

    variants = {
        "recompute": (windowed, lambda m, p, g: sample(windowed(m), p, args.new, generator=g)),
        "cached": (CachedLM,
                   lambda m, p, g: generate_cached(m, p, args.new, temperature=1.0, generator=g)),
    }
    runs = {(v, gamma): [] for v in variants for gamma in [0, *args.gammas]}
    load_before = os.getloadavg()[0]
    for r in range(args.repeats):
        for variant, (wrap, plain_fn) in variants.items():
            def plain(model):
                g = gen_for(r)
                for p in prompts:
                    plain_fn(model, p, g)

            base = timed(lambda: plain(target_model), device)
            c = timed(lambda: plain(draft_model), device) / base
            runs[variant, 0].append(dict(t=base, c=c))
            for gamma in args.gammas:
                stats, target, draft = {}, Clocked(None, device), Clocked(None, device)

                def spec():
                    g = gen_for(r)
                    for p in prompts:
                        # fresh wrappers (and caches) per prompt, one clock for all of them
                        target.lm, draft.lm = wrap(target_model), wrap(draft_model)
                        speculative_generate(target, draft, p, args.new, gamma=gamma, generator=g,
                                             stats=stats)

                t = timed(spec, device)
                runs[variant, gamma].append(dict(t=t, base=base, c=c, stats=stats, target=target,
                                                 draft=draft))
        print(f"repeat {r + 1}/{args.repeats} done", flush=True)

    common = dict(hardware=hardware(device), device=device.type, threads=torch.get_num_threads(),
                  clock="CPU time" if device.type == "cpu" else "wall time",
                  cpu_count=os.cpu_count(), load_before=round(load_before, 2),
                  load_after=round(os.getloadavg()[0], 2), date=datetime.date.today().isoformat(),
                  dtype="float32", torch=torch.__version__, repeats=args.repeats,
                  prompts=len(prompts), new_tokens=args.new, note=args.note)
    med = statistics.median
    rows = []
    for (variant, gamma), rs in runs.items():
        c = med(x["c"] for x in runs[variant, 0])
        plain_ms = med(x["t"] for x in runs[variant, 0]) / n_tokens * 1e3
        if gamma == 0:
            rows.append(dict(common, variant=variant, gamma=0,
                             tokens_per_s=round(n_tokens / med(x["t"] for x in rs), 1),
                             speedup=1.0, speedup_min=1.0, speedup_max=1.0, c=round(c, 3),
                             alpha="", tokens_per_call=1.0, formula=1.0,
                             plain_ms=round(plain_ms, 4), target_ms="", draft_ms="", other_ms="",
                             drafts_per_call=0))
            continue
        speedups = [x["base"] / x["t"] for x in rs]
        calls = [x["stats"]["target_calls"] for x in rs]
        accepted = sum(x["stats"]["accepted"] for x in rs)
        rejected = sum(x["stats"]["rejected"] for x in rs)
        per_call = med(n_tokens / n for n in calls)
        rows.append(dict(
            common, variant=variant, gamma=gamma,
            tokens_per_s=round(n_tokens / med(x["t"] for x in rs), 1),
            speedup=round(med(speedups), 3), speedup_min=round(min(speedups), 3),
            speedup_max=round(max(speedups), 3), c=round(c, 3),
            alpha=round(accepted / (accepted + rejected), 3), tokens_per_call=round(per_call, 3),
            formula=round(per_call / (gamma * c + 1), 3), plain_ms=round(plain_ms, 4),
            target_ms=round(med(x["target"].seconds / x["target"].calls for x in rs) * 1e3, 4),
            draft_ms=round(med(x["draft"].seconds / x["draft"].calls for x in rs) * 1e3, 4),
            other_ms=round(med((x["t"] - x["target"].seconds - x["draft"].seconds)
                               / x["target"].calls for x in rs) * 1e3, 4),
            drafts_per_call=round(med(x["stats"]["drafted"] / x["stats"]["target_calls"]
                                      for x in rs), 3)))
        print({k: rows[-1][k] for k in ("variant", "gamma", "speedup", "speedup_min", "speedup_max",
                                        "formula", "plain_ms", "target_ms", "draft_ms", "other_ms")})
    write_csv(rows, args.out or RESULTS / f"speculative_{device.type}.csv")


if __name__ == "__main__":
    main()
