"""Measure speculative sampling against plain sampling: tokens per second and the speedup vs gamma.

    python benchmarks/speculative.py                 # CPU (or CUDA when present), 8 prompts x 48 tokens
    python benchmarks/speculative.py --prompts 4 --new 32 --gammas 1 2 4

Chapter 13 (speculative sampling) plots the CSV. Target: chapter 08's character model
(load_or_train("chars")); draft: the chapter's 1-layer model (train_draft). Each run samples
at temperature 1 from the same prompts of held-out text; timings are the median of --repeats
runs. `c` is the measured cost of the draft relative to the target: the time of plain decoding with
the draft over that with the target (same variant, same device). Two variants: "recompute"
(each call runs the model on its whole window; plain = chapter 09's sample) and "cached" (each
model keeps a KV cache, rewound after rejections: CachedLM; plain = chapter 10's generate_cached).
Results go to benchmarks/results/speculative_<device>.csv.
Not run by the tests: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch

from common import RESULTS, cpu_name, write_csv
from transformer_course.decoding import sample
from transformer_course.kv_cache import generate_cached
from transformer_course.speculative import CachedLM, speculative_generate, train_draft, windowed
from transformer_course.training import char_corpus, load_or_train


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def timed(fn, repeats: int, device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--gammas", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--note", default="", help="conditions of the run, kept in the CSV (e.g. other load)")
    ap.add_argument("--out", default=None, help="CSV path (default benchmarks/results/speculative_<device>.csv)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)

    target_model, _ = load_or_train("chars", device)
    draft_model = train_draft(device, progress=False)
    _, _, val_ids = char_corpus()
    starts = torch.linspace(0, len(val_ids) - 40, args.prompts).long().tolist()
    prompts = [val_ids[s:s + 16][None].to(device) for s in starts]
    n_tokens = args.new * len(prompts)

    common = dict(hardware=hardware(device), date=datetime.date.today().isoformat(), dtype="float32",
                  torch=torch.__version__, device=device.type, note=args.note)
    gen_for = (lambda: torch.Generator().manual_seed(0)) if device.type == "cpu" else (lambda: None)
    variants = {
        "recompute": (lambda m: windowed(m),
                      lambda m, p, g: sample(windowed(m), p, args.new, generator=g)),
        "cached": (CachedLM,
                   lambda m, p, g: generate_cached(m, p, args.new, temperature=1.0, generator=g)),
    }
    rows = []
    for variant, (wrap, plain_fn) in variants.items():
        def plain(model):
            g = gen_for()
            for p in prompts:
                plain_fn(model, p, g)

        base = timed(lambda: plain(target_model), args.repeats, device)
        c = timed(lambda: plain(draft_model), args.repeats, device) / base
        rows.append(dict(common, variant=variant, gamma=0, tokens_per_s=round(n_tokens / base, 1),
                         speedup=1.0, tokens_per_call=1.0, c=round(c, 3)))
        for gamma in args.gammas:
            stats = {}

            def spec():
                g = gen_for()
                for p in prompts:
                    speculative_generate(wrap(target_model), wrap(draft_model), p, args.new,
                                         gamma=gamma, generator=g, stats=stats)

            t = timed(spec, args.repeats, device)
            rows.append(dict(common, variant=variant, gamma=gamma, tokens_per_s=round(n_tokens / t, 1),
                             speedup=round(base / t, 3),
                             tokens_per_call=round(n_tokens * args.repeats / stats["target_calls"], 3),
                             c=round(c, 3)))
            print(rows[-1])
    write_csv(rows, args.out or RESULTS / f"speculative_{device.type}.csv")


if __name__ == "__main__":
    main()
