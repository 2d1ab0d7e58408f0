"""The learner's self-check finds the exercises a notebook defines and reports each in the checks' words."""

import re
import subprocess
import sys
import types

import nbformat
import pytest

import transformer_course.attention as attention
from transformer_course.tools.notebooks import CHAPTERS, SOLUTIONS
from transformer_course.tools.selfcheck import selfcheck

CHAPTER = "03_attention"


def notebook_namespace(source: str) -> dict:
    """Globals as a notebook would have them: functions defined there belong to __main__."""
    ns = {"__name__": "__main__"}
    exec(compile(source, "<cell>", "exec"), ns)
    return ns


def solved_source() -> str:
    return attention.__loader__.get_source(attention.__name__)


def test_all_solved(capsys):
    status = selfcheck(notebook_namespace(solved_source()))
    assert status == dict.fromkeys(["scaled_dot_product_attention", "causal_mask", "padding_mask",
                                    "attention_weights", "sliding_window_mask"], "pass")
    out = capsys.readouterr().out
    assert "Self-check: 5 of 5 exercises pass" in out and "\u2713 causal_mask" in out


def test_wrong_unfinished_and_missing(capsys):
    ns = notebook_namespace(solved_source())
    ns.update(notebook_namespace("import torch\ndef causal_mask(n):\n    return ~torch.ones(n, n, dtype=torch.bool).tril()\n"
                                 "def padding_mask(lengths, n):\n    raise NotImplementedError()\n"))
    del ns["sliding_window_mask"]
    status = selfcheck(ns)
    assert status["causal_mask"] == "fail" and status["padding_mask"] == "todo"
    assert status["sliding_window_mask"] == "missing" and status["scaled_dot_product_attention"] == "pass"
    out = capsys.readouterr().out
    assert "Self-check: 2 of 5 exercises pass" in out
    assert "your mask is inverted" in out and "not implemented yet" in out and "run its cell first" in out


def test_functions_from_the_package_are_not_the_learners(capsys):
    """A notebook that imports the course's solutions has defined nothing of its own."""
    assert selfcheck({"causal_mask": attention.causal_mask}) == {}
    assert "No exercises found" in capsys.readouterr().out


SAYS = {"en": ["Self-check: 1 of 2 exercises pass", "raised an error, the first:", "the cell under \""],
        "zh": ["自查：2 道练习中通过了 1 道", "尚未实现", "个单元格抛出了错误", "”下以 `"]}


@pytest.mark.slow
@pytest.mark.parametrize("lang", SAYS)
def test_command_line_runs_the_notebook_then_the_checks(tmp_path, lang):
    """A student notebook, English or Chinese (zh/chapters/: the summary in Chinese), with its
    first exercise solved: chapter 16's, the quickest to run of those with two exercises or more."""
    chapter = "16_rwkv"
    folder = CHAPTERS if lang == "en" else CHAPTERS.parent / lang / "chapters"
    nb = nbformat.read(folder / f"{chapter}.ipynb", as_version=4)
    answer = next(c for c in nbformat.read(SOLUTIONS / f"{chapter}.ipynb", as_version=4).cells
                  if c.metadata.get("nbgrader", {}).get("grade_id") == "wkv_recurrent")
    stub = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "wkv_recurrent")
    stub.source = re.sub(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n", "", answer.source, flags=re.M)
    path = tmp_path / f"{chapter}.ipynb"
    nbformat.write(nb, path)
    run = subprocess.run([sys.executable, "-m", "transformer_course.tools.selfcheck", str(path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    assert all(s in run.stdout for s in SAYS[lang]), run.stdout
    assert "\u2713 wkv_recurrent" in run.stdout and "\u00b7 wkv_parallel" in run.stdout
    assert "cell " not in run.stdout.replace("the cell under", ""), "cells are named by their heading"


def test_jupyter_does_not_echo_the_result(capsys):
    """The summary is printed; a last-line `selfcheck()` must not add the dict under it in Jupyter."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        status = selfcheck(notebook_namespace(solved_source()))
        assert shell.display_formatter.format(status) == ({}, {})
    finally:
        InteractiveShell.clear_instance()
    assert status["causal_mask"] == "pass" and isinstance(status, dict)   # still a dict in code


def test_a_failing_cell_is_named_as_the_learner_sees_it():
    """Jupyter numbers no cells: the command line names the section heading and the first line."""
    from transformer_course.tools.selfcheck import where

    cells = [nbformat.v4.new_markdown_cell("## Build it\n\n### Causal masks\nText."),
             nbformat.v4.new_code_cell("#| export attention\nmask = causal_mask(4)\nprint(mask)"),
             nbformat.v4.new_code_cell("x = 1")]
    assert where(cells, 1) == 'the cell under "Causal masks" that begins `mask = causal_mask(4)`'
    assert where(cells[1:], 1) == "the cell that begins `x = 1`"


def chapter_namespace(chapter: str) -> tuple[dict, list[str]]:
    """A notebook's globals after running its exported cells in the notebook's order (as the
    package's modules have them), and the notebook's exercises in the order of its solution cells."""
    from transformer_course.tools.notebooks import exported_source
    from transformer_course.tools.selfcheck import solution_names

    nb = nbformat.read(SOLUTIONS / f"{chapter}.ipynb", as_version=4)
    names = [n for _, n in solution_names(nb)]
    ns = {"__name__": "__main__", "__spec__": None}  # a notebook's __main__ has no __spec__
    for c in nb.cells:
        if c.cell_type == "code" and c.source.startswith("#| export "):
            exec(compile(exported_source(c), f"<{chapter}>", "exec"), ns)
    return ns, names


@pytest.mark.parametrize("chapter", sorted(p.stem for p in SOLUTIONS.glob("[0-9][0-9]_*.ipynb")))
def test_exercises_in_chapter_order_and_no_helpers(chapter):
    """The self-check lists a chapter's exercises, and only those, in the order of its solution
    cells: in a notebook (from the order of its globals) and on the command line (from its cells).
    The check modules' own order differs (checks/kv_cache.py, checks/long_attention.py), and a
    helper such as checks/flash.py's check_merge(fn, seed, cases) is no exercise."""
    from transformer_course.tools.selfcheck import exercises

    ns, names = chapter_namespace(chapter)
    assert [n for n, _, _ in exercises(ns)] == names
    assert [n for n, _, _ in exercises({}, names)] == names


def test_a_check_modules_helpers_are_not_exercises(tmp_path, monkeypatch):
    """Without __all__: a check that needs more than the learner's answer, or one imported from
    another check module, is not listed, and the chapter can still be all pass."""
    import transformer_course.checks.flash as flash_checks
    from transformer_course.tools import selfcheck as sc

    module = types.ModuleType("transformer_course.checks.mock")
    exec("from transformer_course.checks.flash import check_merge\n"
         "def check_second(fn, seed=0):\n    pass\n"
         "def check_helper(fn, seed, cases):\n    pass\n"
         "def check_first(fn, seed=0, *, verbose=False):\n    pass\n", module.__dict__)
    monkeypatch.setattr(sc, "check_modules", lambda: {"mock": module, "flash": flash_checks})
    assert list(sc.exercise_checks(module)) == ["second", "first"]
    ns = notebook_namespace("def first(x):\n    return x\ndef second(x):\n    return x\n")
    assert [n for n, _, _ in sc.exercises(ns)] == ["first", "second"]
    assert sc.selfcheck(ns) == {"first": "pass", "second": "pass"}


def test_an_answer_imported_over_is_named(capsys):
    """A later cell that imports the course's function over the learner's (chapter 13 did) leaves
    the course's own in the notebook: the self-check says so instead of "not defined"."""
    ns = notebook_namespace(solved_source())
    ns["causal_mask"] = attention.causal_mask
    status = selfcheck(ns)
    assert status["causal_mask"] == "missing" and status["padding_mask"] == "pass"
    out = capsys.readouterr().out
    assert "causal_mask is the course's own here" in out and "transformer_course.attention" in out


@pytest.mark.slow
def test_command_line_after_a_slow_cell_still_summarizes(tmp_path):
    """A cell past --timeout is stopped, the rest runs, and the command ends with the summary and
    the option to give cells longer (not nbclient's CellTimeoutError). An answer that a later cell
    imports the course's function over still counts as the learner's."""
    def solution(name, source):
        return nbformat.v4.new_code_cell(source, metadata={"nbgrader": {
            "grade_id": name, "solution": True, "locked": False, "schema_version": 3}})

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## Build it"),
        solution("padding_mask", "def padding_mask(lengths, n):\n    raise NotImplementedError()"),
        solution("causal_mask", "import torch\ndef causal_mask(n: int) -> torch.Tensor:\n"
                                "    return torch.ones(n, n, dtype=torch.bool).tril()"),
        nbformat.v4.new_code_cell("from transformer_course.attention import causal_mask"),
        nbformat.v4.new_markdown_cell("### A long experiment"),
        nbformat.v4.new_code_cell("import time\ntime.sleep(600)\nresult = 1"),
        nbformat.v4.new_code_cell("print(result)"),
        solution("attention_weights", "def attention_weights(q, k, mask=None):\n"
                                      "    raise NotImplementedError()"),
    ])
    path = tmp_path / "03_attention.ipynb"
    nbformat.write(nb, path)
    run = subprocess.run([sys.executable, "-m", "transformer_course.tools.cli", "check", str(path),
                          "--timeout", "12"], capture_output=True, text=True, timeout=400)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stdout + run.stderr and "CellTimeoutError" not in run.stderr
    lines = run.stdout.splitlines()
    assert "Self-check: 1 of 3 exercises pass" in lines[0], run.stdout
    assert [line.split()[1] for line in lines[1:4]] == ["padding_mask", "causal_mask",
                                                         "attention_weights"], run.stdout
    assert "\u2713 causal_mask" in run.stdout
    assert "1 cell ran longer than --timeout 12 s and was stopped" in run.stdout
    assert 'under "A long experiment" that begins `import time`' in run.stdout
    assert "NameError: name 'result' is not defined" in run.stdout  # the cell that needed it
    assert f"transformer-course check {path} --timeout 48" in run.stdout
