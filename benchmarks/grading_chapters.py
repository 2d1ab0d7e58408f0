"""How long grading executes each chapter: one solved notebook per chapter, run as one grading
core runs it, with the cells tagged `skip-when-grading` left out.

    python benchmarks/grading_chapters.py                    # every chapter, tagged cells skipped
    python benchmarks/grading_chapters.py 08 12 --slowest 5  # two chapters, and their slowest cells
    python benchmarks/grading_chapters.py --no-skip          # every cell, as before the tags

For each chapter the "solved" notebook is the student edition (chapters/NN_*.ipynb) with each
solution cell's source taken from solutions/ (solution markers dropped) and each graded cell put
back as the instructor wrote it, hidden tests included (the grader does the same). Cells tagged
`skip-when-grading` are dropped, and the rest runs top to bottom with nbclient in a fresh kernel,
in a temporary folder, with TRANSFORMER_COURSE_CACHE pointing to an empty folder (a grading
sandbox cannot read the course's trained models, so loading one trains it from scratch),
OMP_NUM_THREADS=1 (torch uses one thread, as on one grading core), MPLBACKEND=agg and the kernel's
caches in that folder. Seconds are wall time from the kernel's start to the last cell's end; CPU
seconds are the kernel's and its child processes'.

Prints a table and writes benchmarks/results/grading_chapters.csv (with --no-skip:
grading_chapters_every_cell.csv; columns chapter, seconds, cpu_seconds, cells_run, cells_skipped,
errors, host); exits 1 when any cell raised, naming it. On a busy machine the wall time grows with
the load (the table's header gives the load average) while the CPU time stays: quote both. Not run
by the tests: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from common import RESULTS, cpu_name, write_csv

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS, CHAPTERS = ROOT / "solutions", ROOT / "chapters"
SKIP = "skip-when-grading"
MARKER = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*(\n|$)", re.M)


def nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def solved(chapter: str):
    """The student edition of `chapter` with every exercise solved as the solutions solve it and
    every graded cell as the instructor wrote it (hidden tests included), as the grader runs it."""
    nb = nbformat.read(CHAPTERS / f"{chapter}.ipynb", as_version=4)
    source = {nbgrader(c)["grade_id"]: c for c in nbformat.read(SOLUTIONS / f"{chapter}.ipynb", as_version=4).cells
              if nbgrader(c).get("grade_id")}
    for c in nb.cells:
        if nbgrader(c).get("solution"):
            c.source = MARKER.sub("", source[nbgrader(c)["grade_id"]].source)
        elif nbgrader(c).get("grade"):
            c.source = source[nbgrader(c)["grade_id"]].source
    return nb


def kernel_cpu_seconds(pid: int) -> float:
    """CPU time of the kernel, its waited-for children and those still running."""
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in proc.children(recursive=True):
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return float("nan")


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:70]


def run_chapter(chapter: str, skip: bool = True, timeout: int = 600, save: Path | None = None) -> dict:
    nb = solved(chapter)
    tagged = [c for c in nb.cells if c.cell_type == "code" and SKIP in c.metadata.get("tags", [])]
    if skip:
        nb.cells = [c for c in nb.cells if not (c.cell_type == "code" and SKIP in c.metadata.get("tags", []))]
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    cells, errors = [], []
    with tempfile.TemporaryDirectory(prefix=f"grade-{chapter[:2]}-") as tmp:
        run = Path(tmp)
        env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   MPLBACKEND="agg",
                   PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        for var, sub in (("TMPDIR", "tmp"), ("MPLCONFIGDIR", "config/matplotlib"), ("IPYTHONDIR", "config/ipython"),
                         ("XDG_CACHE_HOME", "cache"), ("TRITON_CACHE_DIR", "cache/triton"),
                         ("TORCHINDUCTOR_CACHE_DIR", "cache/torchinductor"), ("TRANSFORMER_COURSE_CACHE", "models")):
            (run / sub).mkdir(parents=True, exist_ok=True)
            env[var] = str(run / sub)
        fonts = Path(os.environ.get("MPLCONFIGDIR", Path.home() / ".cache" / "matplotlib"))
        for f in fonts.glob("fontlist-*.json"):  # as the grader does: no font scan in each kernel
            shutil.copy(f, run / "config/matplotlib")
        work = run / "work"
        work.mkdir()
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                record_timing=False, store_widget_state=False,
                                resources={"metadata": {"path": str(work)}})
        t0 = time.perf_counter()
        cpu = float("nan")
        with client.setup_kernel(env=env, cwd=str(work)):
            pid = client.km.provisioner.process.pid
            for i, cell in code:
                c0 = time.perf_counter()
                try:
                    client.execute_cell(cell, i)
                except (CellTimeoutError, DeadKernelError) as e:
                    errors.append(f"{cell.get('id', i)}: {type(e).__name__}: {first_line(str(e))}")
                    cells.append((time.perf_counter() - c0, i, cell))
                    break
                cells.append((time.perf_counter() - c0, i, cell))
                for out in cell.outputs:
                    if out.output_type == "error":
                        errors.append(f"{cell.get('id', i)}: {out.ename}: {first_line(out.evalue)}")
            seconds = time.perf_counter() - t0
            cpu = kernel_cpu_seconds(pid)
    if save:
        save.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save / f"{chapter}.ipynb")
    return {"chapter": chapter, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "cells_run": len(cells), "cells_skipped": len(tagged) if skip else 0, "errors": len(errors),
            "host": f"{cpu_name()}, {os.cpu_count()} cores", "_errors": errors, "_cells": cells}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("chapters", nargs="*", help="chapter numbers or names (default: all)")
    p.add_argument("--no-skip", action="store_true", help=f"run the cells tagged {SKIP} too")
    p.add_argument("--timeout", type=int, default=600, help="seconds a cell may run (default 600)")
    p.add_argument("--slowest", type=int, default=0, metavar="K", help="also list each chapter's K slowest cells")
    p.add_argument("--out", type=Path, default=None,
                   help="default: results/grading_chapters.csv (with --no-skip: grading_chapters_every_cell.csv)")
    p.add_argument("--save", type=Path, metavar="DIR", help="also write the executed notebooks there")
    args = p.parse_args(argv)
    names = sorted(f.stem for f in SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))
    chosen = [n for n in names if not args.chapters or any(n == a or n[:2] == a.zfill(2) for a in args.chapters)]
    print(f"{'chapter':34} {'seconds':>8} {'cpu s':>7} {'run':>4} {'skipped':>7} {'errors':>6}"
          f"   ({'every cell' if args.no_skip else 'skipping ' + SKIP}; 1 thread; "
          f"load average {os.getloadavg()[0]:.2f})", flush=True)
    rows = []
    for name in chosen:
        r = run_chapter(name, skip=not args.no_skip, timeout=args.timeout, save=args.save)
        rows.append(r)
        print(f"{name:34} {r['seconds']:8.1f} {r['cpu_seconds']:7.1f} {r['cells_run']:4d} {r['cells_skipped']:7d} "
              f"{r['errors']:6d}", flush=True)
        for e in r["_errors"]:
            print(f"    error in {e}")
        for t, i, cell in sorted(r["_cells"], key=lambda x: x[0], reverse=True)[: args.slowest]:
            tags = ",".join(tag for tag in cell.metadata.get("tags", []) if tag != "nbval-ignore-output")
            print(f"    {t:6.1f} s  {cell.get('id', f'cell {i}'):10} {first_line(cell.source)!r} {tags}")
    total = sum(r["seconds"] for r in rows)
    print(f"{'total':34} {total:8.1f} {sum(r['cpu_seconds'] for r in rows):7.1f}")
    out = args.out or RESULTS / f"grading_chapters{'_every_cell' if args.no_skip else ''}.csv"
    write_csv([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], out)
    sys.exit(1 if any(r["errors"] for r in rows) else 0)


if __name__ == "__main__":
    main()
