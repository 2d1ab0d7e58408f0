"""Measure how long the instructors' similarity report takes for a class: every pair of answers
to each exercise of a chapter compared (N (N - 1) / 2 pairs per exercise).

    python benchmarks/similarity.py                              # 300 students, chapters 09 and 12
    python benchmarks/similarity.py --students 100 --chapters 03_attention

The class is made from the solutions and the student edition, at random (seed 0), per student
and exercise: the untouched stub (10%), the solution disguised (variables renamed, comments
and blank lines changed: 10%), another student's answer disguised (10%), or an answer of the
student's "own" (70%): the solution's answer lines with about a third of them deleted, doubled,
or replaced by a line of another exercise's solution, then disguised (some of these no longer
parse, as some real answers do not). Only the report's time matters here, not what it flags.

Writes benchmarks/results/similarity_cpu.csv, one row per chapter: wall-clock and CPU seconds
(one process), and the load average before it ran (other work on the machine slows it). Not run by the tests: timings depend on
the machine.
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import random
import re
import time
from pathlib import Path

from common import RESULTS, cpu_name, write_csv
from transformer_course.tools.notebooks import CHAPTERS, SOLUTIONS, read, solution_notebooks
from transformer_course.tools.similarity import report

BLOCK = re.compile(r"(^[ \t]*### BEGIN SOLUTION[ \t]*\n)(.*?)(^[ \t]*### END SOLUTION)", re.M | re.S)


def solution_cells(folder, chapter: str) -> dict[str, str]:
    return {c.metadata.nbgrader.grade_id: c.source for c in read(folder / f"{chapter}.ipynb").cells
            if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}


def disguise(code: str, tag: str) -> str:
    """Rename what the code assigns (as text, roughly) and drop comments and blank lines."""
    try:
        names = {n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    except SyntaxError:
        names = set()
    for name in names - {"self"}:
        code = re.sub(rf"(?<![.\w]){re.escape(name)}\b", f"{tag}_{name}", code)
    return "\n".join(l for l in code.splitlines() if l.strip() and not l.lstrip().startswith("#"))


def own(solution: str, pool: list[str], rng: random.Random) -> str:
    """The solution with a third of its answer lines deleted, doubled or replaced."""
    def mutate(m):
        indent = re.match(r"[ \t]*", m.group(2)).group()
        out = []
        for line in m.group(2).splitlines():
            r = rng.random()
            if r < 0.1:
                continue
            out.append(line)
            if r > 0.9:
                out.append(line)
            elif r > 0.8:
                out[-1] = indent + rng.choice(pool)
        return m.group(1) + "\n".join(out) + "\n" + m.group(3)
    return BLOCK.sub(mutate, solution)


def make_class(chapter: str, n: int, seed: int = 0) -> tuple[dict, dict]:
    rng = random.Random(seed)
    solutions, stubs = solution_cells(SOLUTIONS, chapter), solution_cells(CHAPTERS, chapter)
    pool = [l.strip() for p in solution_notebooks() for src in solution_cells(SOLUTIONS, p.stem).values()
            for m in BLOCK.finditer(src) for l in m.group(2).splitlines()
            if l.strip() and not l.rstrip().endswith((":", "(", "[", ",")) and l.count("(") == l.count(")")]
    answers = {}
    for i in range(n):
        student = f"student{i:03d}"
        for e, solution in solutions.items():
            kind = rng.choices(["stub", "copy", "peer", "own"], [1, 1, 1, 7])[0]
            if kind == "peer" and i > 0:
                answers[student, e] = disguise(answers[f"student{rng.randrange(i):03d}", e], f"p{i}")
            elif kind == "stub":
                answers[student, e] = stubs[e]
            elif kind == "copy":
                answers[student, e] = disguise(solution, f"c{i}")
            else:
                answers[student, e] = disguise(own(solution, pool, rng), f"o{i}")
    return answers, solutions


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=int, default=300)
    p.add_argument("--chapters", nargs="+", default=["09_decoding", "12_flash_attention"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="CSV to write (default: benchmarks/results/similarity_cpu.csv)")
    args = p.parse_args()
    rows = []
    for chapter in args.chapters:
        answers, solutions = make_class(chapter, args.students, args.seed)
        load = os.getloadavg()[0]
        t, cpu = time.perf_counter(), time.process_time()
        r = report(answers, solutions)
        seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
        n_ex = len(solutions)
        row = {"chapter": chapter, "students": args.students, "exercises": n_ex, "answers": len(answers),
               "pairs": n_ex * args.students * (args.students - 1) // 2, "seconds": round(seconds, 2),
               "cpu_seconds": round(cpu_seconds, 2),
               "stubs": sum(m.stub for m in r.values()), "flagged": sum(m.flagged for m in r.values()),
               "load_before": round(load, 2), "cpus": os.cpu_count(), "python": platform.python_version(),
               "cpu": cpu_name()}
        print(", ".join(f"{k}={v}" for k, v in row.items()))
        rows.append(row)
    write_csv(rows, args.out or RESULTS / "similarity_cpu.csv")


if __name__ == "__main__":
    main()
