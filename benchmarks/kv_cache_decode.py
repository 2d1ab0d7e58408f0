"""Decoding speed with and without a KV cache, as the number of generated tokens grows.

    python benchmarks/kv_cache_decode.py                  # CPU; also CUDA when present
    python benchmarks/kv_cache_decode.py --ns 64 256 --threads 1

Chapter 10 (the KV cache) claims that decoding without a cache recomputes every past key and value
at every step (work quadratic in the length), and that the cache makes each step cost about the
same (linear), so that cached decoding of 512 tokens is at least 10x faster than recomputing. This
script measures greedy decoding of n tokens after a one-token prompt, batch 1, with chapter 08's
character model (its position table extended to 1024 rows by extend_context: the speed does not
depend on the weights), three ways: recomputing everything each step (chapter 09's greedy_decode),
a cache grown by concatenation (KVCache) and a preallocated one (StaticKVCache).

Results go to benchmarks/results/kv_cache_decode_<device>.csv, one row per device, method and n,
with the machine's load (1-minute load average before and after) and the number of threads: on a
shared machine, timings are only comparable within one run, and the CPU time of the process
(tokens_per_cpu_s) is steadier than the wall-clock time. Not run by the tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from common import RESULTS, cpu_name, write_csv
from transformer_course.decoding import greedy_decode
from transformer_course.kv_cache import StaticKVCache, extend_context, generate_cached
from transformer_course.training import load_or_train


def seconds(fn, device, repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds (this process) of fn() over repeats runs, after one
    warm-up run. On a shared, overloaded CPU the CPU time is the steadier measure of the work."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ns", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    p.add_argument("--recompute-max", type=int, default=512, help="largest n decoded without a cache")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        model, _ = load_or_train("chars", device, progress=False)
        model = extend_context(model, max(args.ns) + 1)
        cfg = model.cfg
        hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                    else cpu_name())
        prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
        rows = []
        for n in args.ns:
            def static():
                cache = StaticKVCache(cfg.n_layers, 1, cfg.n_heads, n + 1, cfg.d_model // cfg.n_heads,
                                      device=device)
                return generate_cached(model, prompt, n, cache=cache)

            methods = {"cache (concatenate)": lambda: generate_cached(model, prompt, n),
                       "cache (static)": static}
            if n <= args.recompute_max:
                methods["recompute"] = lambda: greedy_decode(model, prompt, n)
            for method, fn in methods.items():
                load_before = os.getloadavg()[0]
                s, cpu_s = seconds(fn, device, args.repeats)
                row = {"device": device.type, "hardware": hardware, "threads": torch.get_num_threads(),
                       "cpu_count": os.cpu_count(), "load_before": round(load_before, 2),
                       "load_after": round(os.getloadavg()[0], 2), "dtype": "float32",
                       "model": f"chars d_model={cfg.d_model} layers={cfg.n_layers} heads={cfg.n_heads}",
                       "batch": 1, "n_tokens": n, "method": method, "seconds": round(s, 5),
                       "tokens_per_s": round(n / s, 1), "cpu_seconds": round(cpu_s, 5),
                       "tokens_per_cpu_s": round(n / cpu_s, 1), "date": time.strftime("%Y-%m-%d")}
                rows.append(row)
                print(f"{device.type} n={n:>5} {method:>20}: {s:8.4f} s, {n / s:9.1f} tokens/s, "
                      f"{n / cpu_s:9.1f} tokens per CPU s "
                      f"(load {row['load_before']} -> {row['load_after']})")
        out = args.out or RESULTS / f"kv_cache_decode_{device.type}.csv"
        write_csv(rows, out)


if __name__ == "__main__":
    main()
