"""Measure how much CPU each chapter takes to run, as a learner runs it: the solution notebook top to
bottom in a fresh kernel, with the course's trained models already cached.

    python benchmarks/chapter_times.py                      # every chapter, 2 runs each
    python benchmarks/chapter_times.py 00_the_machine 03_attention --runs 3

The budget (CONTRIBUTING.md): a chapter stays within 90 s of CPU on a 2-core machine, a chapter
that trains a model within 180 s. What counts is the CPU time of the kernel's process (user +
system, its threads together, and the processes it started and waited for), read with psutil
from outside the kernel before and after each cell; the wall time is written beside it. The
kernel runs torch on one thread (`--threads`), as the stored outputs were made.

Before the timed runs each chapter runs once untimed ("warm-up"), so that a model the chapter loads
with `load_or_train` (chapter 08's, chapter 13's draft, ...) is in the cache, as it is for a learner
who ran the earlier chapters; `--no-warmup` skips it when the cache is known to be warm. The
warm-up's own time is written too (run = "warmup"): what a learner with an empty cache pays.

Writes benchmarks/results/chapter_times_<host>.csv, one row per chapter and run, merged into what
the file already holds (a chapter measured again replaces its rows), so chapters can be measured a
few at a time. tests/test_chapter_times.py checks the committed CSV against the budget. Not run by
the tests: timings depend on the machine and on what else runs on it (say so with the numbers).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import socket
import sys
import time
from pathlib import Path

import nbformat
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, cpu_name, write_csv  # noqa: E402

from transformer_course.tools.notebooks import SOLUTIONS, solution_notebooks  # noqa: E402

BUDGET_S, TRAINING_BUDGET_S = 90, 180
# Chapters whose cells train a model as part of the lesson (a chapter that only loads a cached
# model does not count): CONTRIBUTING's "a chapter that trains, 180 s".
TRAINS = {"04_multi_head_attention", "05_normalization_and_residuals", "06_feed_forward",
          "08_training", "11_gqa", "13_speculative_sampling", "15_infini_attention", "16_rwkv"}
FIELDS = ["chapter", "run", "cpu_s", "wall_s", "budget_s", "slowest_cell_cpu_s", "slowest_cell",
          "threads", "cpus", "load_before", "machine", "date"]


def budget(chapter: str) -> int:
    return TRAINING_BUDGET_S if chapter in TRAINS else BUDGET_S


def first_line(cell) -> str:
    line = next((l.strip() for l in cell.source.splitlines() if l.strip() and not l.startswith("#|")), "")
    return line if len(line) <= 60 else line[:57] + "..."


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def run_chapter(path: Path, timeout: int) -> dict:
    """Run one notebook in a fresh kernel; CPU seconds of the kernel's process, in all and for its
    most expensive cell."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            store_widget_state=False, resources={"metadata": {"path": str(path.parent)}})
    slowest = (0.0, "")
    start = time.perf_counter()
    with client.setup_kernel():
        proc = psutil.Process(client.km.provisioner.pid)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            before = cpu_seconds(proc)
            client.execute_cell(cell, i)  # raises CellExecutionError if the cell fails
            spent = cpu_seconds(proc) - before
            if spent > slowest[0]:
                slowest = (spent, f"cell {i}: {first_line(cell)}")
        total = cpu_seconds(proc)  # from the kernel's start: its imports count too
    return {"cpu_s": round(total, 1), "wall_s": round(time.perf_counter() - start, 1),
            "slowest_cell_cpu_s": round(slowest[0], 1), "slowest_cell": slowest[1]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("chapters", nargs="*", help="notebook stems (default: every chapter)")
    p.add_argument("--runs", type=int, default=2, help="timed runs per chapter (default 2)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed first run")
    p.add_argument("--timeout", type=int, default=900, help="seconds a cell may run (default 900)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in the kernel (default 1, as the stored outputs were made)")
    p.add_argument("--out", type=Path, default=RESULTS / f"chapter_times_{socket.gethostname()}.csv")
    args = p.parse_args(argv)

    os.environ["PYTHONHASHSEED"] = "0"  # as the notebooks are executed and tested
    # One thread: then CPU seconds are the work a chapter does. A second thread spins while it
    # waits on these small matrices: chapter 08 on the idle 2-core VM took 197 s of CPU and 112 s
    # of wall time with two threads, 161 s and 162 s with one.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    chapters = args.chapters or [nb.stem for nb in solution_notebooks()]
    missing = [c for c in chapters if not (SOLUTIONS / f"{c}.ipynb").exists()]
    if missing:
        p.error(f"no such chapter: {', '.join(missing)}")
    rows = []
    if args.out.exists():  # keep the chapters not measured this time
        with args.out.open() as f:
            rows = [r for r in csv.DictReader(f) if r["chapter"] not in chapters]
    for chapter in chapters:
        runs = ([] if args.no_warmup else ["warmup"]) + [f"run{i}" for i in range(args.runs)]
        for run in runs:
            load = round(os.getloadavg()[0], 2)
            r = run_chapter(SOLUTIONS / f"{chapter}.ipynb", args.timeout)
            rows.append({"chapter": chapter, "run": run, **r, "budget_s": budget(chapter),
                         "threads": args.threads, "cpus": len(os.sched_getaffinity(0)), "load_before": load,
                         "machine": cpu_name(), "date": datetime.date.today().isoformat()})
            print(f"{chapter} {run}: {r['cpu_s']} s CPU ({r['wall_s']} s wall; budget {budget(chapter)} s);"
                  f" most: {r['slowest_cell_cpu_s']} s in {r['slowest_cell']}", flush=True)
    rows.sort(key=lambda r: (r["chapter"], r["run"] != "warmup", r["run"]))
    write_csv([{k: r.get(k, "") for k in FIELDS} for r in rows], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
