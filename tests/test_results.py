"""The committed benchmark results the chapters plot: present, shipped with the package, and
found both in the repository and in a pip install (Colab)."""

import fnmatch
import json
import re
import tomllib
from pathlib import Path

from transformer_course.tools import figures

ROOT = Path(__file__).resolve().parents[1]


def chapter_csvs() -> set[str]:
    """Every CSV name a chapter passes to committed_results."""
    names = set()
    for nb in (ROOT / "solutions").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            names |= set(re.findall(r'committed_results\("([^"]+)"\)', "".join(cell["source"])))
    return names


def test_every_csv_a_chapter_plots_is_committed_and_shipped():
    names = chapter_csvs()
    assert len(names) >= 9, names
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    patterns = shipped["share/transformer-course/results"]
    for name in names:
        assert (ROOT / "benchmarks" / "results" / name).is_file(), f"{name} is not committed"
        assert any(fnmatch.fnmatch(f"benchmarks/results/{name}", p) for p in patterns), \
            f"{name} is not in the package's data-files"


def test_committed_results_reads_the_repository_then_the_installed_copy(tmp_path, monkeypatch):
    rows = figures.committed_results("ring_attention_cpu.csv")
    assert rows and "P" in rows[0]
    installed = tmp_path / "share" / "transformer-course" / "results"
    installed.mkdir(parents=True)
    (installed / "only_installed.csv").write_text("a,b\n1,2\n")
    monkeypatch.setattr(figures.sys, "prefix", str(tmp_path))
    assert figures.committed_results("only_installed.csv") == [{"a": "1", "b": "2"}]


def test_a_missing_result_names_where_it_looked():
    try:
        figures.committed_results("no_such_benchmark.csv")
    except FileNotFoundError as e:
        assert "benchmarks/results/no_such_benchmark.csv" in str(e)
        assert "share/transformer-course/results" in str(e)
    else:
        raise AssertionError("a missing CSV must raise FileNotFoundError")


def test_the_graders_package_copy_finds_them(tmp_path):
    """Grading kernels import a copy of the package: the chapters' plots must still run."""
    import subprocess
    import sys

    from transformer_course.tools.grade import prepare_chapter

    chapter = prepare_chapter("17_ring_attention", ROOT / "solutions" / "17_ring_attention.ipynb",
                              ROOT / "chapters" / "17_ring_attention.ipynb", tmp_path)
    code = ("from transformer_course.tools import figures; "
            "print(figures.__file__); print(len(figures.committed_results('ring_attention_cpu.csv')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(chapter.package), "PATH": ""}, timeout=120)
    assert out.returncode == 0, out.stderr
    where, n = out.stdout.split()
    assert Path(where).is_relative_to(tmp_path) and int(n) > 0
