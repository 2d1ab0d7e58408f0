"""The learner's self-check finds the exercises a notebook defines and reports each in the checks' words."""

import subprocess
import sys

import nbformat
import pytest

import transformer_course.attention as attention
from transformer_course.tools.notebooks import CHAPTERS
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


@pytest.mark.slow
def test_command_line_runs_the_notebook_then_the_checks(tmp_path):
    nb = nbformat.read(CHAPTERS / f"{CHAPTER}.ipynb", as_version=4)
    stub = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "causal_mask")
    stub.source = stub.source.replace("raise NotImplementedError()", "return torch.ones(n, n, dtype=torch.bool).tril()")
    path = tmp_path / f"{CHAPTER}.ipynb"
    nbformat.write(nb, path)
    run = subprocess.run([sys.executable, "-m", "transformer_course.tools.selfcheck", str(path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    assert "Self-check: 1 of 5 exercises pass" in run.stdout
    assert "\u2713 causal_mask" in run.stdout and "\u00b7 padding_mask" in run.stdout
    assert "raised an error, the first:" in run.stdout  # cells that use what the stubs did not make
    assert "the cell under \"" in run.stdout and "cell 3" not in run.stdout


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
