"""Measure how long `python -m transformer_course.tools.grade` takes for a class: N submissions of one
chapter, graded with J workers.

    python benchmarks/grading.py                        # 100 submissions of 03_attention, 2 workers
    python benchmarks/grading.py --n 20 --jobs 1 2      # a quicker look, and the gain from a 2nd worker

The class is made from the student edition and the solutions, drawn at random (seed 0) with
weights 7:2:1: students who solved everything, who left one exercise as the stub, and who handed
in the untouched stub (59, 26 and 15 of 100). Every notebook runs top to bottom as the grader runs it, so the time is dominated
by executing the chapter (the grader's own work -- restoring tests, the guards, the CSV and the
feedback -- is small). A submission that loops forever costs its cell time limit on top.

Writes benchmarks/results/grading_<host>.csv (one row per submission: when it was done, how long
it took) and, with --plot, book/images/grading_benchmark.png for the instructor guide
(`--replot CSV[:LABEL]...` draws that figure from committed results without measuring).
Not run by the tests: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import re
import socket
import tempfile
import time
from pathlib import Path

import nbformat

from common import RESULTS, cpu_name, write_csv
from transformer_course.tools.grade import grade
from transformer_course.tools.notebooks import CHAPTERS, ROOT, SOLUTIONS

MARKER = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*(\n|$)", re.M)
FIGURE = ROOT / "book" / "images" / "grading_benchmark.png"
CHAPTER_FIGURE = ROOT / "book" / "images" / "grading_chapters.png"
BUDGET = 20  # seconds per notebook per core, the target for every chapter


def make_class(chapter: str, n: int, folder: Path, seed: int = 0) -> None:
    """n submissions in the flat layout: solved, one exercise left as the stub, or untouched (weights 7:2:1)."""
    rng = random.Random(seed)
    answers = {c.metadata.nbgrader.grade_id: MARKER.sub("", c.source)
               for c in nbformat.read(SOLUTIONS / f"{chapter}.ipynb", as_version=4).cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    for i in range(n):
        nb = nbformat.read(CHAPTERS / f"{chapter}.ipynb", as_version=4)
        kind = rng.choices(["solved", "one left", "stub"], [7, 2, 1])[0]
        left = rng.choice(sorted(answers)) if kind == "one left" else None
        if kind != "stub":
            for c in nb.cells:
                gid = c.metadata.get("nbgrader", {}).get("grade_id")
                if c.metadata.get("nbgrader", {}).get("solution") and gid != left:
                    c.source = answers[gid]
        nbformat.write(nb, folder / f"student{i:03d}_{chapter}.ipynb")


def every_chapter(repeats: int, out: Path) -> list[dict]:
    """Grade a solved notebook of every chapter `repeats` times, one worker (one core): seconds each."""
    from transformer_course.tools.notebooks import solution_notebooks

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "submissions"
        folder.mkdir()
        chapters = [p.stem for p in solution_notebooks()]
        for chapter in chapters:
            nb = nbformat.read(CHAPTERS / f"{chapter}.ipynb", as_version=4)
            answers = {c.metadata.nbgrader.grade_id: MARKER.sub("", c.source)
                       for c in nbformat.read(SOLUTIONS / f"{chapter}.ipynb", as_version=4).cells
                       if c.metadata.get("nbgrader", {}).get("solution")}
            for c in nb.cells:
                if c.metadata.get("nbgrader", {}).get("solution"):
                    c.source = answers[c.metadata.nbgrader.grade_id]
            for run in range(repeats):
                nbformat.write(nb, folder / f"run{run}_{chapter}.ipynb")
        load = os.getloadavg()[0]

        def record(r):
            rows.append({"chapter": r.chapter, "run": r.student, "notebook_s": round(r.seconds, 2),
                         "score": r.score, "max": r.max_score, "load_before": round(load, 2),
                         "cpus": os.cpu_count(), "machine": cpu_name()})
            print(f"{r.chapter} {r.student}: {r.seconds:.1f} s, {r.score:g}/{r.max_score:g}")

        grade(folder, Path(tmp) / "grades.csv", jobs=1, on_result=record, log=lambda *a: None, progress=False)
    rows.sort(key=lambda r: (r["chapter"], r["run"]))
    write_csv(rows, out)
    return rows


def plot_chapters(rows: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    chapters = sorted({r["chapter"] for r in rows})
    times = [sorted(float(r["notebook_s"]) for r in rows if r["chapter"] == c) for c in chapters]
    mid = [t[len(t) // 2] for t in times]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(range(len(chapters)), mid, color="#4c72b0",
           yerr=[[m - t[0] for m, t in zip(mid, times)], [t[-1] - m for m, t in zip(mid, times)]], capsize=3)
    ax.axhline(BUDGET, color="#b3261e", ls="--", lw=1, label=f"target: {BUDGET} s per notebook per core")
    ax.set_xticks(range(len(chapters)), [c[:2] for c in chapters])
    ax.set(xlabel="chapter", ylabel="seconds to grade one notebook",
           title=f"A solved notebook of each chapter, one worker ({rows[0]['cpus']} cores)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for run, jobs in sorted({(r.get("run", ""), int(r["jobs"])) for r in rows}):
        done = sorted(float(r["done_s"]) for r in rows
                      if r.get("run", "") == run and int(r["jobs"]) == jobs)
        ax.step([0] + done, range(len(done) + 1), where="post",
                label=f"{run}{jobs} worker{'s' * (jobs > 1)}: {len(done)} in {done[-1]:.0f} s")
    r = rows[0]
    ax.set(xlabel="seconds since the command started", ylabel="notebooks graded",
           title=f"Grading {r['chapter']} on {r['cpus']} CPU cores")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chapter", default="03_attention")
    p.add_argument("--n", type=int, default=100, help="submissions in the class (default 100)")
    p.add_argument("--jobs", type=int, nargs="+", default=[2], help="worker counts to measure (default 2)")
    p.add_argument("--plot", action="store_true", help=f"also draw {FIGURE.relative_to(ROOT)}")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--replot", nargs="+", metavar="CSV[:LABEL]",
                   help="measure nothing: draw the figure from these result CSVs")
    p.add_argument("--every-chapter", type=int, metavar="REPEATS", nargs="?", const=3,
                   help="instead: grade a solved notebook of every chapter REPEATS times (default 3) with "
                        f"one worker; writes grading_chapters_<host>.csv and {CHAPTER_FIGURE.relative_to(ROOT)}")
    p.add_argument("--replot-chapters", type=Path, metavar="CSV", help="draw the chapters' figure from this CSV")
    args = p.parse_args(argv)
    if args.replot_chapters:
        with open(args.replot_chapters) as f:
            return plot_chapters(list(csv.DictReader(f)), CHAPTER_FIGURE)
    if args.every_chapter:
        rows = every_chapter(args.every_chapter, args.out or RESULTS / f"grading_chapters_{socket.gethostname()}.csv")
        return plot_chapters(rows, CHAPTER_FIGURE)
    if args.replot:
        rows = []
        for arg in args.replot:
            path, _, label = arg.partition(":")
            with open(path) as f:
                rows += [dict(r, run=f"{label or Path(path).stem}, ")
                         for r in csv.DictReader(f)]
        return plot(rows, FIGURE)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "submissions"
        folder.mkdir()
        make_class(args.chapter, args.n, folder)
        for jobs in args.jobs:
            t0 = time.monotonic()
            load = os.getloadavg()[0]

            def record(r, jobs=jobs, t0=t0, load=load):
                rows.append({"chapter": args.chapter, "n": args.n, "jobs": jobs, "student": r.student,
                             "score": r.score, "notebook_s": round(r.seconds, 2),
                             "done_s": round(time.monotonic() - t0, 2), "load_before": round(load, 2),
                             "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()})

            grade(folder, Path(tmp) / f"grades_{jobs}.csv", feedback=Path(tmp) / f"feedback_{jobs}", jobs=jobs,
                  on_result=record, log=lambda *a: None)
            mine = [r for r in rows if r["jobs"] == jobs]
            total = max(r["done_s"] for r in mine)
            print(f"{args.n} notebooks of {args.chapter} with {jobs} worker(s): {total:.0f} s "
                  f"({total / args.n:.1f} s per notebook; one notebook takes "
                  f"{sorted(r['notebook_s'] for r in mine)[len(mine) // 2]:.1f} s, median); "
                  f"load average before: {load:.1f}")
    write_csv(rows, args.out or RESULTS / f"grading_{socket.gethostname()}.csv")
    if args.plot:
        plot(rows, FIGURE)


if __name__ == "__main__":
    main()
