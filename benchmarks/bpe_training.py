"""BPE training time: chapter 01's train_bpe (every pair of every distinct chunk
recounted at each merge) against chapter 18's train_bpe_incremental (only the chunks a
merge changed), on Python's documentation: pydoc_data.topics, 79 topics joined.

    python benchmarks/bpe_training.py             # the committed run, about 5 minutes
    python benchmarks/bpe_training.py --repeats 1 --vocabs 300 512 --fractions 0.25 1

Two sweeps: the vocabulary size on the whole corpus (experiment "vocab"), and the corpus
size (the first topics, in sorted order, up to a fraction of the characters) at a fixed
vocabulary (experiment "corpus"). Each point runs both trainers --repeats times,
interleaved, and checks that they learn the same merges in the same order. The CSV holds
the minimum, median and maximum CPU seconds (time.process_time: this process only; one
thread, pure Python), the CPU seconds of the chunking both share (split_chunks, UTF-8,
the Counter of distinct chunks; the minimum over the repeats), and the pairs each
trainer counts in all (counted by bpe.pair_visits, not measured). The naive trainer runs
only while its time, extrapolated from the previous vocabulary (linear in the merges),
stays under --naive-limit seconds (its rows end there).

The committed CSV was measured on a shared VM (2 cores, other jobs running): CPU time
leaves out the waits but not the slowdown of shared caches, hence the spread.
-> benchmarks/results/bpe_training.csv. Not run by the tests: timings depend on the
machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import Counter

from common import RESULTS, cpu_name, write_csv
from transformer_course.bpe import pair_visits, train_bpe_incremental
from transformer_course.tokens import split_chunks, train_bpe

NOTE = "shared VM: 2 cores, other jobs running; CPU time by time.process_time"


def topics_text(fraction: float = 1.0) -> str:
    """The first topics of pydoc_data.topics (sorted by name) that hold at least
    fraction of its characters, joined by blank lines."""
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    total, kept = sum(map(len, texts)), []
    for t in texts:
        kept.append(t)
        if sum(map(len, kept)) >= fraction * total:
            break
    return "\n\n".join(kept)


def chunk_counts(text: str) -> Counter:
    """What both trainers start with: {distinct chunk as bytes: how often it occurs}."""
    return Counter(tuple(c.encode("utf-8")) for c in split_chunks(text))


def cpu_seconds(fn, *args) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn(*args)
    return time.process_time() - t0, out


def measure(text: str, vocab: int, repeats: int, run_naive: bool) -> list[dict]:
    """Rows for both trainers at one (text, vocab); the naive one only if run_naive."""
    times = {"naive": [], "incremental": []}
    setup = min(cpu_seconds(chunk_counts, text)[0]
                for _ in range(repeats))
    merges = None
    for _ in range(repeats):
        for name, fn in (("incremental", train_bpe_incremental), ("naive", train_bpe)):
            if name == "naive" and not run_naive:
                continue
            seconds, learned = cpu_seconds(fn, text, vocab)
            if merges is None:
                merges = learned
            if list(learned.items()) != list(merges.items()):
                sys.exit(f"{name} learned other merges at vocab {vocab}")
            times[name].append(seconds)
    naive_visits, incremental_visits = pair_visits(text, merges)
    visits = {"naive": sum(naive_visits), "incremental": sum(incremental_visits)}
    rows = []
    for name, ts in times.items():
        if not ts:
            continue
        rows.append({
            "trainer": name, "vocab_size": vocab, "merges": len(merges),
            "corpus_bytes": len(text.encode("utf-8")),
            "distinct_chunks": len(chunk_counts(text)),
            "repeats": len(ts), "cpu_s_min": round(min(ts), 4),
            "cpu_s_median": round(statistics.median(ts), 4),
            "cpu_s_max": round(max(ts), 4), "chunking_cpu_s": round(setup, 4),
            "pairs_counted": visits[name],
        })
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocabs", type=int, nargs="+",
                        default=[300, 512, 768, 1024, 1536, 2048, 4096])
    parser.add_argument("--fractions", type=float, nargs="+",
                        default=[1 / 16, 1 / 8, 1 / 4, 1 / 2, 1])
    parser.add_argument("--corpus-vocab", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-limit", type=float, default=20.0)
    args = parser.parse_args()

    common = {"hardware": cpu_name(), "python": platform.python_version(),
              "load_before": round(os.getloadavg()[0], 2), "note": NOTE}
    rows, text = [], topics_text()
    last = None  # (merges, median seconds) of the naive trainer's last vocabulary
    for vocab in sorted(args.vocabs):
        predicted = last and last[1] * (vocab - 256) / last[0]
        run_naive = last is None or predicted <= args.naive_limit
        if not run_naive:
            print(f"naive trainer skipped at vocab {vocab}: ~{predicted:.0f} s a run")
        for row in measure(text, vocab, args.repeats, run_naive):
            rows.append({"experiment": "vocab", **row, **common})
            if row["trainer"] == "naive":
                last = (row["merges"], row["cpu_s_median"])
    for fraction in sorted(args.fractions):
        text = topics_text(fraction)
        for row in measure(text, args.corpus_vocab, args.repeats, True):
            rows.append({"experiment": "corpus", **row, **common})
    write_csv(rows, RESULTS / "bpe_training.csv")


if __name__ == "__main__":
    main()
