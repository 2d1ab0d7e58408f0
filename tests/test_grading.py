"""The instructor command grades a class in which every kind of broken submission sits beside good
ones: each broken one gets 0 for what failed and the reason in its feedback, the good ones their
points. One batch, graded in parallel (two workers), so the suite stays quick.

The submissions are made here from the student edition of chapter 03 and the solution code, one
real notebook per case. Some attack the grader: they signal or kill other processes, write outside
their folder, or change how IPython runs and reports cells so that a failing check would look
passed.
"""

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import psutil
import pytest

from transformer_course.tools.grade import NOT_PASSED, NOT_SEEN, grade, restore_tests
from transformer_course.tools.notebooks import CHAPTERS, PACKAGE, ROOT, SOLUTIONS, read, solution_notebooks
from transformer_course.tools.sandbox import namespaces_work

CHAPTER = "03_attention"  # quick to execute, five exercises
EXERCISES = ["scaled_dot_product_attention", "causal_mask", "padding_mask", "attention_weights", "sliding_window_mask"]
MARKER = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*(\n|$)", re.M)
TIMEOUT = 15  # seconds per cell in this test; the honest cells of chapter 03 take under 2 s on an idle machine


def solved():
    """The student edition with every exercise solved as the solutions solve it."""
    nb = read(CHAPTERS / f"{CHAPTER}.ipynb")
    answers = {c.metadata.nbgrader.grade_id: MARKER.sub("", c.source)
               for c in read(SOLUTIONS / f"{CHAPTER}.ipynb").cells if c.metadata.get("nbgrader", {}).get("solution")}
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("solution"):
            c.source = answers[c.metadata.nbgrader.grade_id]
    return nb


def index(nb, grade_id):
    return next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def answer(nb, name, code):
    """The exercise's cell becomes `code`."""
    nb.cells[index(nb, name)].source = code


def edit(nb, name, old, new):
    c = nb.cells[index(nb, name)]
    assert old in c.source
    c.source = c.source.replace(old, new)


def insert_after(nb, grade_id, code):
    nb.cells.insert(index(nb, grade_id) + 1, nbformat.v4.new_code_cell(code))


ISOLATED = namespaces_work()  # kernels in PID namespaces of their own (Linux, where allowed)


def stub_with(nb, grade_id, trick):
    """In the stub, the exercise's function runs `trick` (lines indented for the function) before raising."""
    edit(nb, grade_id, "    raise NotImplementedError()", trick + "    raise NotImplementedError()")


def submissions(folder):
    """student -> notebook path; each broken notebook is one case of the issue."""
    made = {}

    def save(student, nb, nbgrader_layout=False):
        path = (folder / student / CHAPTER / f"{CHAPTER}.ipynb") if nbgrader_layout else folder / f"{student}_{CHAPTER}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)
        made[student] = path

    save("ada", solved(), nbgrader_layout=True)                  # good: everything solved
    shutil.copy(CHAPTERS / f"{CHAPTER}.ipynb", folder / f"bob_{CHAPTER}.ipynb")  # good: the untouched stub

    nb = solved()                                                # good: one plausible mistake
    edit(nb, "scaled_dot_product_attention", "dim=-1", "dim=-2")
    save("cara", nb)

    nb = solved()                                                # loops forever, twice
    edit(nb, "padding_mask", "#| export attention\n", "#| export attention\nwhile True:\n    pass\n")
    edit(nb, "sliding_window_mask", "#| export attention\n",     # ...and ignores the interrupt
         "#| export attention\nimport time\nwhile True:\n    try:\n        time.sleep(0.05)\n"
         "    except KeyboardInterrupt:\n        pass\n")
    save("dan", nb)

    nb = solved()                                                # exhausts memory
    edit(nb, "causal_mask", "#| export attention\n",
         "#| export attention\nhog = [torch.empty(2**28) for _ in range(1000)]  # 1 GiB each\n")
    save("erin", nb)

    nb = solved()                                                # crashes the kernel: segfault
    insert_after(nb, "check_padding_mask", "import ctypes\nctypes.string_at(0)")
    save("fay", nb)

    nb = solved()                                                # crashes the kernel: os._exit
    insert_after(nb, "check_causal_mask", "import os\nos._exit(3)")
    save("gus", nb)

    nb = solved()                                                # raises; passes visible tests only
    edit(nb, "scaled_dot_product_attention", "#| export attention\n", "#| export attention\nraise ValueError('oops')\n")
    edit(nb, "causal_mask", "return torch.ones(n, n, dtype=torch.bool).tril()",
         "return torch.ones(n, n, dtype=torch.bool).tril() if n != 9 else torch.ones(n, n, dtype=torch.bool)")
    edit(nb, "sliding_window_mask", "return causal_mask(n) & (i - j < window)", "return (causal_mask(n) & (i - j < window)).int()")
    save("hal", nb)

    nb = solved()                                                # deletes and edits the test cells
    edit(nb, "padding_mask", "< lengths[:, None]", "<= lengths[:, None]")
    check = nb.cells[index(nb, "check_padding_mask")]
    check.source = 'print("\u2713 padding_mask passed 5 checks")'
    check.metadata.nbgrader["points"] = 100
    del nb.cells[index(nb, "check_causal_mask")]
    check = nb.cells[index(nb, "check_sliding_window_mask")]
    del check.metadata["nbgrader"]
    check.source = "pass"
    nb.cells.append(nbformat.v4.new_code_cell("print('bonus')", metadata={"nbgrader": {
        "grade": True, "grade_id": "bonus", "points": 50, "solution": False, "locked": True, "schema_version": 3}}))
    save("ivy", nb)

    nb = solved()                                                # makes the checks pass everything
    edit(nb, "causal_mask", "return torch.ones(n, n, dtype=torch.bool).tril()",
         "return ~torch.ones(n, n, dtype=torch.bool).tril()")
    edit(nb, "causal_mask", "#| export attention\n",
         "#| export attention\ntorch.equal = lambda *a, **k: True\ntorch.allclose = lambda *a, **k: True\n")
    edit(nb, "padding_mask", "< lengths[:, None]", "<= lengths[:, None]")
    insert_after(nb, "padding_mask", "import transformer_course.checks.attention as A\n"
                                     "A.check_padding_mask = lambda fn, seed=0: print('\u2713 padding_mask passed 5 checks')")
    edit(nb, "attention_weights", "return torch.softmax(scores, dim=-1)", "return torch.softmax(scores, dim=-2)")
    insert_after(nb, "attention_weights", "import sys, types\nsys.modules['transformer_course.checks.attention'] = "
                                          "types.SimpleNamespace(check_attention_weights=lambda fn, seed=0: None)")
    edit(nb, "sliding_window_mask", "return causal_mask(n) & (i - j < window)",   # patches while the check runs
         "torch.equal = lambda *a, **k: True\n    return torch.zeros(n, n, dtype=torch.bool)")
    save("jay", nb)

    nb = solved()                                                # reads the solutions from disk
    answer(nb, "causal_mask", "from transformer_course.attention import causal_mask")
    answer(nb, "padding_mask", f"import json\nsource = json.load(open({str(SOLUTIONS / (CHAPTER + '.ipynb'))!r}))\n"
                               "exec(next(''.join(c['source']) for c in source['cells'] if 'def padding_mask' in ''.join(c['source'])))")
    answer(nb, "attention_weights", "import importlib.util\n"
                                    f"spec = importlib.util.spec_from_file_location('real', {str(PACKAGE / 'attention.py')!r})\n"
                                    "real = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(real)\n"
                                    "attention_weights = real.attention_weights")
    answer(nb, "sliding_window_mask", "import subprocess\n"
                                      f"text = subprocess.run(['cat', {str(PACKAGE / 'attention.py')!r}], capture_output=True, text=True).stdout\n"
                                      "exec(text[text.index('def sliding_window_mask'):])")
    save("kim", nb)

    nb = read(CHAPTERS / f"{CHAPTER}.ipynb")                      # unsolved; hides errors with IPython's hooks
    insert_after(nb, "scaled_dot_product_attention",              # one line each, in a cell before a check
                 "get_ipython().set_custom_exc((Exception,), lambda *a, **k: None)")
    insert_after(nb, "causal_mask", "get_ipython().showtraceback = lambda *a, **k: None")
    insert_after(nb, "padding_mask", "from IPython.display import clear_output\n"
                                     "get_ipython().events.register('post_run_cell', lambda result: clear_output())")
    insert_after(nb, "attention_weights",
                 "import io, sys\nsys.stdout = sys.stderr = io.StringIO()\nsession = get_ipython().kernel.session\n"
                 "send = session.send\n\ndef quiet(stream, msg, *args, **kwargs):\n"
                 "    kind = msg if isinstance(msg, str) else msg['header']['msg_type']\n"
                 "    return None if kind == 'error' else send(stream, msg, *args, **kwargs)\n\n"
                 "session.send = quiet")
    insert_after(nb, "sliding_window_mask",                       # the check cells it reaches run `pass`
                 "get_ipython().input_transformers_cleanup.append(\n"
                 "    lambda lines: ['pass\\n'] if any('check_' in l for l in lines) else lines)")
    save("lou", nb)

    nb = solved()                                                 # the same tricks, while the check runs
    nb.cells[index(nb, "causal_mask")].source = read(CHAPTERS / f"{CHAPTER}.ipynb").cells[index(nb, "causal_mask")].source
    stub_with(nb, "causal_mask", "    get_ipython().set_custom_exc((Exception,), lambda *a, **k: None)\n")
    answer(nb, "padding_mask", "def padding_mask(lengths, n):\n"
                               "    get_ipython().showtraceback = lambda *a, **k: None\n    raise NotImplementedError()")
    answer(nb, "attention_weights", "from IPython.display import clear_output\n"
                                    "from transformer_course.checks import passed\n\n"
                                    "def attention_weights(q, k, mask=None):\n"
                                    "    passed(attention_weights, 5)  # report a pass itself\n"
                                    "    get_ipython().events.register('post_run_cell', lambda r: clear_output())\n"
                                    "    raise NotImplementedError()")
    save("max", nb)

    nb = solved()                                                 # signals and kills other processes
    insert_after(nb, "check_scaled_dot_product_attention", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    insert_after(nb, "check_causal_mask", "os.killpg(os.getpgrp(), signal.SIGKILL)")
    walk = ("import psutil\nfor p in psutil.process_iter():\n    try:\n"
            "        if p.pid != os.getpid() and any(w in ' '.join(p.cmdline()) for w in ('transformer', 'pytest')):\n"
            "            p.kill()\n            print('killed', p.pid)\n    except Exception as e:\n"
            "        print(type(e).__name__)\n")
    if ISOLATED:  # the same without the audit hook: only the PID namespace stops it
        walk += ("import ctypes\nfor pid in [int(d) for d in os.listdir('/proc') if d.isdigit()]:\n    try:\n"
                 "        line = open(f'/proc/{pid}/cmdline', 'rb').read()\n    except OSError:\n        continue\n"
                 "    if pid != os.getpid() and (b'transformer' in line or b'pytest' in line):\n"
                 "        ctypes.CDLL(None).kill(pid, signal.SIGKILL)\n")
    insert_after(nb, "check_padding_mask", walk)
    insert_after(nb, "check_attention_weights",                   # writes and deletes outside its folder
                 "import pathlib, shutil\ncourse = pathlib.Path.cwd().parents[3]  # its run folder is in the grader's\n"
                 "for attack in (lambda: (course.parent / 'grades.csv').write_text('ned,6'),\n"
                 "               lambda: os.remove(course / 'gradebook.db'),\n"
                 "               lambda: shutil.rmtree(course.parent / 'submitted'),\n"
                 "               lambda: os.rename(course.parent / 'feedback', course.parent / 'gone'),\n"
                 "               lambda: open(os.path.expanduser('~/ned.txt'), 'w')):\n"
                 "    try:\n        attack()\n    except OSError as e:\n        print(e)\n"
                 "pathlib.Path('mine.txt').write_text('its own folder is fine')")
    insert_after(nb, "check_sliding_window_mask",                 # kills its parent without asking Python
                 "import ctypes\nctypes.CDLL(None).kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(5)")
    save("ned", nb)

    (folder / f"eve_{CHAPTER}.ipynb").write_text("{ this is not a notebook")   # not valid notebooks
    (folder / f"flo_{CHAPTER}.ipynb").write_text('{"cells": "nope"}')
    (folder / f"gil_{CHAPTER}.ipynb").write_text("")
    return made


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grading")
    sub = tmp / "submitted"
    sub.mkdir()
    submissions(sub)
    out = grade(sub, tmp / "grades.csv", feedback=tmp / "feedback", workdir=tmp / "course", timeout=TIMEOUT,
                jobs=2, memory=2, log=lambda *a: None, progress=False)
    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    return rows, tmp / "feedback", tmp


def scores(rows, student):
    return [float(rows[student][f"{CHAPTER}/{e}"]) for e in EXERCISES]


def feedback(fb, student):
    text = (fb / student / f"{CHAPTER}.html").read_text()
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).replace("&#x27;", "'").replace("&quot;", '"')


FULL = [2, 1, 1, 1, 1]


@pytest.mark.slow
def test_csv_has_a_row_per_student_and_a_column_per_exercise(graded):
    rows, _, _ = graded
    assert list(rows["ada"]) == ["student", *[f"{CHAPTER}/{e}" for e in EXERCISES], "total", "max"]
    assert set(rows) == set("ada bob cara dan erin fay gus hal ivy jay kim lou max ned eve flo gil".split())
    assert all(r["max"] == "6" for r in rows.values())  # a student cannot add points or graded cells


@pytest.mark.slow
def test_good_submissions_are_graded_normally(graded):
    rows, fb, _ = graded
    assert scores(rows, "ada") == FULL and rows["ada"]["total"] == "6"
    assert "About the whole notebook" not in feedback(fb, "ada") and "grader" not in feedback(fb, "ada")
    assert scores(rows, "bob") == [0] * 5
    assert "not implemented yet" in feedback(fb, "bob")
    assert scores(rows, "cara") == [0, 1, 1, 1, 1]
    assert "softmax ran over the queries (dim=-2)" in feedback(fb, "cara")


@pytest.mark.slow
def test_loops_are_stopped(graded):
    rows, fb, _ = graded
    assert scores(rows, "dan") == [2, 1, 0, 1, 0]
    text = feedback(fb, "dan")
    assert f"ran past the {TIMEOUT} s limit and was stopped" in text
    assert "the kernel did not stop when interrupted" in text and "not run: the kernel was stuck" in text


@pytest.mark.slow
def test_memory_is_limited(graded):
    rows, fb, _ = graded
    assert scores(rows, "erin") == [2, 0, 1, 1, 0]  # sliding_window_mask calls causal_mask
    assert "ran out of memory (a notebook may use 2 GiB)" in feedback(fb, "erin")


@pytest.mark.slow
def test_kernel_crashes_cost_what_they_stop(graded):
    rows, fb, _ = graded
    assert scores(rows, "fay") == [2, 1, 1, 0, 0]
    assert "the kernel died running cell" in feedback(fb, "fay") and "SIGSEGV" in feedback(fb, "fay")
    assert scores(rows, "gus") == [2, 1, 0, 0, 0]
    assert "exit code 3" in feedback(fb, "gus")


@pytest.mark.slow
def test_errors_and_hidden_tests(graded):
    rows, fb, _ = graded
    assert scores(rows, "hal") == [0, 0, 1, 1, 0]
    text = feedback(fb, "hal")
    assert "your cell for scaled_dot_product_attention raised ValueError: oops" in text
    assert "causal_mask(9)" in text  # only the hidden test (seed=1) tries n = 9
    assert "the check you could see passed; the hidden tests" in text
    assert "dtype should be torch.bool" in text


@pytest.mark.slow
def test_test_cells_are_restored_from_the_source(graded):
    rows, fb, _ = graded
    assert scores(rows, "ivy") == FULL[:2] + [0] + FULL[3:]
    text = feedback(fb, "ivy")
    assert "off by one" in text  # the real check ran, not the student's print
    assert "you changed this check cell; it was graded as the course wrote it" in text
    assert "the points of this check were changed to 100; it is worth 1" in text
    assert "this check cell was missing from your notebook; the grader put it back" in text


@pytest.mark.slow
def test_patched_checks_and_torch_are_restored(graded):
    rows, fb, _ = graded
    assert scores(rows, "jay") == [2, 0, 0, 0, 0]
    text = feedback(fb, "jay")
    assert "your mask is inverted" in text and "off by one" in text and "Your *columns* sum to 1" in text
    for name in ("torch.equal", "torch.allclose", "transformer_course.checks.attention.check_padding_mask",
                 "sys.modules['transformer_course.checks.attention']"):
        assert name in text, name


@pytest.mark.slow
def test_solutions_cannot_be_read(graded):
    rows, fb, _ = graded
    assert scores(rows, "kim") == [2, 0, 0, 0, 0]
    text = feedback(fb, "kim")
    assert "causal_mask is the course package's own (transformer_course.attention)" in text
    refused = re.findall(r"the grader refused to let your notebook read or run (.+?) \(cell", text)
    assert [str(SOLUTIONS / f"{CHAPTER}.ipynb")] in [r.split(", ") for r in refused]     # open()
    assert any(str(PACKAGE / "attention.py") in r.split(", ") for r in refused)         # an import by path
    assert any(r.startswith("cat " + str(PACKAGE / "attention.py")) for r in refused)   # a subprocess


@pytest.mark.slow
def test_ipython_hooks_cannot_hide_a_failing_check(graded):
    """Exception handlers, showtraceback, post_run_cell callbacks, output streams, the kernel's
    messages, input transformers: put back before each graded cell, and points only for passes the
    checks' own code reports to the audit hook."""
    rows, fb, _ = graded
    assert scores(rows, "lou") == [0] * 5
    text = feedback(fb, "lou")
    assert text.count("not implemented yet") >= 4  # the errors were shown again
    for name in ("get_ipython().custom_exceptions", "get_ipython().showtraceback",
                 "get_ipython().events.callbacks['post_run_cell']", "sys.stdout", "sys.stderr",
                 "get_ipython().kernel.session.send"):
        assert name in text, name
    assert NOT_SEEN in text  # the check cell rewritten to `pass`
    assert scores(rows, "max") == [2, 0, 0, 0, 0]  # sliding_window_mask calls causal_mask
    text = feedback(fb, "max")
    assert NOT_PASSED in text
    assert "a pass of attention_weights reported from outside the check cell's own call of the check was ignored" in text


@pytest.mark.slow
def test_signals_and_writes_outside_its_folder_are_refused(graded):
    rows, fb, tmp = graded
    assert scores(rows, "ned") == FULL
    text = feedback(fb, "ned")
    refused = "the grader refused to let your notebook change files outside its folder or signal other processes"
    assert refused + ": os.kill(" in text and "os.killpg(" in text
    for path in (tmp / "grades.csv", Path("~/ned.txt").expanduser(), tmp / "feedback"):
        assert str(path) in text, path
    assert not Path("~/ned.txt").expanduser().exists()
    assert (tmp / "course" / "gradebook.db").exists() and (tmp / "submitted" / f"ned_{CHAPTER}.ipynb").exists()
    # its last cell killed the kernel's launcher: cut short while another notebook was graded, so graded
    # again alone, and what happened then counts
    assert "the kernel died running cell" in text and "SIGKILL" in text and "it was graded again on its own" in text
    assert "graded again" not in " ".join(feedback(fb, s) for s in ("ada", "lou", "max", "kim"))


@pytest.mark.slow
def test_invalid_notebooks_score_zero_with_the_reason(graded):
    rows, fb, _ = graded
    for student in ("eve", "flo", "gil"):
        assert scores(rows, student) == [0] * 5
        assert "is not a valid notebook" in feedback(fb, student)


def test_restore_tests_puts_back_deleted_checks_even_without_their_solution_cell():
    """nbgrader's own OverwriteCells(add_missing_cells=True) fails when the solution cell is gone too."""
    source, release = read(SOLUTIONS / f"{CHAPTER}.ipynb"), read(CHAPTERS / f"{CHAPTER}.ipynb")
    nb = solved()
    del nb.cells[index(nb, "check_causal_mask")]
    del nb.cells[index(nb, "causal_mask")]
    notes = restore_tests(nb, source, release)
    want = next(c for c in source.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "check_causal_mask")
    assert nb.cells[index(nb, "check_causal_mask")].source == want.source  # hidden tests included
    assert index(nb, "check_scaled_dot_product_attention") < index(nb, "check_causal_mask") < index(nb, "padding_mask")
    assert "missing" in notes["check_causal_mask"][0]


@pytest.mark.slow
def test_regrading_one_student_keeps_the_others(graded, tmp_path):
    """With the course directory kept (--workdir), --student regrades only those students."""
    rows, _, base = graded
    sub = base / "submitted"
    nb = solved()
    nbformat.write(nb, sub / f"bob_{CHAPTER}.ipynb")  # Bob hands in a solved notebook after all
    out = grade(sub, tmp_path / "again.csv", workdir=base / "course", timeout=TIMEOUT, jobs=1, memory=2,
                students=["bob"], log=lambda *a: None, progress=False)
    again = {r["student"]: r for r in csv.DictReader(out.open())}
    assert scores(again, "bob") == FULL
    assert {s: r for s, r in again.items() if s != "bob"} == {s: r for s, r in rows.items() if s != "bob"}
    # graded in this process (jobs=1): its kernel must be gone, or a long batch would pile them up
    left = [p for p in psutil.Process().children(recursive=True) if "transformer_course.tools.sandbox" in " ".join(p.cmdline())]
    assert not left


@pytest.mark.parametrize("path", solution_notebooks(), ids=lambda p: p.stem)
def test_every_check_is_backed_by_hidden_tests(path):
    """The grader runs them; the student edition does not have them."""
    for c in read(path).cells:
        if c.metadata.get("nbgrader", {}).get("grade"):
            assert "### BEGIN HIDDEN TESTS" in c.source, f"{c.metadata.nbgrader.grade_id} has no hidden tests"


@pytest.mark.slow
def test_the_documented_command_works_from_anywhere_without_an_activated_venv(tmp_path):
    """README's instructor command, with the venv's full path, run from a folder outside the
    repository with a PATH that lacks .venv/bin. Its batch: a good notebook and one that kills the
    process grading it. Here the kernels run without their PID namespace (TC_SANDBOX_NAMESPACE=0,
    what happens where Linux does not allow one), so that ctypes, which the audit hook does not
    see, can reach the worker: it dies, the other notebook is graded all the same, the killer is
    graded again alone, dies again, and scores 0 with the reason."""
    sub = tmp_path / "SUBMISSIONS"
    sub.mkdir()
    nbformat.write(solved(), sub / f"ada_{CHAPTER}.ipynb")
    nb = solved()
    insert_after(nb, "check_causal_mask",
                 "import ctypes, os, signal, time\nlauncher = os.getppid()  # the kernel's; its parent grades us\n"
                 "worker = int(open(f'/proc/{launcher}/stat').read().rsplit(')', 1)[1].split()[1])\n"
                 "ctypes.CDLL(None).kill(worker, signal.SIGKILL)\ntime.sleep(10)")
    nbformat.write(nb, sub / f"zed_{CHAPTER}.ipynb")
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != bin_dir.resolve())
    env["TC_SANDBOX_NAMESPACE"] = "0"
    assert not tmp_path.resolve().is_relative_to(ROOT.resolve())
    command = [str(bin_dir / "transformer-course"), "grade", "SUBMISSIONS/", "--out", "grades.csv",
               "--feedback", "feedback/", "--timeout", str(TIMEOUT), "--memory", "2", "-j", "2"]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["student"]: r for r in csv.DictReader((tmp_path / "grades.csv").open())}
    assert scores(rows, "ada") == FULL and scores(rows, "zed") == [0] * 5
    text = feedback(tmp_path / "feedback", "zed")
    assert "the process grading it died (SIGKILL); your notebook scores 0" in text
    assert "it was graded again on its own" in text
    assert "graded again" not in feedback(tmp_path / "feedback", "ada")
