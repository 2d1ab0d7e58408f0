"""Every chapter runs within its CPU budget: the committed measurements say so.

benchmarks/chapter_times.py runs each chapter in a fresh kernel and writes the CPU seconds of the
kernel's process to benchmarks/results/chapter_times_<host>.csv (a timing is never asserted from a
run inside the suite: the workers share the cores). This reads the committed CSVs: each chapter
measured there keeps the median of its timed runs within its budget (CONTRIBUTING.md: 90 s of CPU
on 2 cores, 180 s for a chapter that trains), and the chapters not measured yet are named.
"""

import csv
import importlib.util
import statistics
import warnings

from transformer_course.tools.notebooks import ROOT, solution_notebooks

RESULTS = ROOT / "benchmarks" / "results"


def script():
    spec = importlib.util.spec_from_file_location("chapter_times", ROOT / "benchmarks" / "chapter_times.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measured() -> dict[str, dict[str, list[dict]]]:
    """CSV name -> chapter -> its timed runs (not the warm-up)."""
    out = {}
    for path in sorted(RESULTS.glob("chapter_times_*.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row["run"] != "warmup":
                    out.setdefault(path.name, {}).setdefault(row["chapter"], []).append(row)
    return out


def test_a_csv_is_committed_and_names_its_machine():
    found = measured()
    assert found, "no benchmarks/results/chapter_times_<host>.csv: run benchmarks/chapter_times.py"
    for name, chapters in found.items():
        for chapter, rows in chapters.items():
            assert all(r["machine"] and int(r["cpus"]) >= 1 for r in rows), f"{name}: {chapter}"


def test_each_measured_chapter_is_within_its_budget():
    budget = script().budget
    chapters = {nb.stem for nb in solution_notebooks()}
    over, seen = [], set()
    for name, measured_chapters in measured().items():
        for chapter, rows in sorted(measured_chapters.items()):
            assert chapter in chapters, f"{name}: {chapter} is not a chapter"
            assert {int(r["budget_s"]) for r in rows} == {budget(chapter)}, \
                f"{name}: {chapter}'s budget is {budget(chapter)} s (benchmarks/chapter_times.py)"
            cpu = sorted(float(r["cpu_s"]) for r in rows)
            seen.add(chapter)
            if statistics.median(cpu) > budget(chapter):
                slowest = max(rows, key=lambda r: float(r["slowest_cell_cpu_s"]))
                over.append(f"{chapter}: median {statistics.median(cpu):.0f} s of CPU over "
                            f"{len(cpu)} runs ({cpu[0]:.0f}-{cpu[-1]:.0f} s), budget {budget(chapter)} s; "
                            f"most in {slowest['slowest_cell']} ({slowest['slowest_cell_cpu_s']} s)"
                            f" [{name}]")
    assert not over, "chapters over their CPU budget:\n" + "\n".join(over)
    missing = sorted(chapters - seen)
    if missing:
        warnings.warn(f"chapters with no committed CPU measurement: {', '.join(missing)} "
                      "(python benchmarks/chapter_times.py " + " ".join(missing) + ")")
