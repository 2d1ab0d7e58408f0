"""One decoding step's attention vs the number of K/V heads G, on the CPU: the cache expanded
by repeat_kv before F.scaled_dot_product_attention, or read in place with enable_gqa=True.

Writes benchmarks/results/gqa_decode_cpu.csv (machine, threads and load average in its columns).
Run: .venv/bin/python benchmarks/gqa_decode.py   (about a minute on 2 cores)
"""

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from common import RESULTS, write_csv
from transformer_course.gqa import repeat_kv

H, D_HEAD, BATCH, REPEATS = 32, 128, 4, 15


def step_ms(q, k, v, expand: bool) -> float:
    """Median milliseconds of one attention call of a single query per sequence."""
    r = q.shape[1] // k.shape[1]

    def step():
        if expand:
            return F.scaled_dot_product_attention(q, repeat_kv(k, r), repeat_kv(v, r))
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    step()
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for n_tokens in (1024, 4096):
        q = torch.randn(BATCH, H, 1, D_HEAD)
        for G in (32, 8, 1):
            k, v = torch.randn(2, BATCH, G, n_tokens, D_HEAD)
            cache_mib = 2 * k.numel() * k.element_size() / 2**20
            for expand in (True, False):
                rows.append({"n_tokens": n_tokens, "n_heads": H, "n_kv_heads": G, "d_head": D_HEAD,
                             "batch": BATCH, "dtype": "float32", "cache_mib": round(cache_mib, 1),
                             "method": "repeat_kv" if expand else "enable_gqa",
                             "ms": round(step_ms(q, k, v, expand), 3),
                             "threads": torch.get_num_threads(),
                             "load_before": round(os.getloadavg()[0], 2),
                             "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                             "torch": torch.__version__})
                print(rows[-1])
    write_csv(rows, RESULTS / "gqa_decode_cpu.csv")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    main()
