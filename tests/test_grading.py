"""The instructor's command grades a class right: every chapter's solved, unsolved and one-wrong
notebooks, and a batch in which hostile or broken submissions sit beside good ones.

Each submission runs in a bubblewrap sandbox of its own; the checks run in the grader against
proxies of the submission's objects (transformer_course.tools.bridge). So a score cannot be forged
by what a notebook does to its own process, and no submission can see or touch another's.
"""

import csv
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import psutil
import pytest

from transformer_course.tools.grade import SKIP, cells_to_run, grade, nbgrader_cells, is_graded, restore_tests
from transformer_course.tools.notebooks import CHAPTERS, ROOT, SOLUTIONS, read, solution_notebooks
from transformer_course.tools.sandbox import works

MARKER = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*(\n|$)", re.M)
CHAPTER = "03_attention"
EXERCISES = ["scaled_dot_product_attention", "causal_mask", "padding_mask", "attention_weights", "sliding_window_mask"]
TIMEOUT = 45  # seconds per cell; honest cells take a few seconds, the loops below cost it
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(works()), reason=f"no sandbox here: {works()}")]


def answers(chapter):
    return {c.metadata.nbgrader.grade_id: MARKER.sub("", c.source)
            for c in read(SOLUTIONS / f"{chapter}.ipynb").cells if c.metadata.get("nbgrader", {}).get("solution")}


def solved(chapter, leave=()):
    """The student edition with every exercise but those in `leave` solved as the solutions solve it."""
    nb, ans = read(CHAPTERS / f"{chapter}.ipynb"), answers(chapter)
    for c in nb.cells:
        gid = c.metadata.get("nbgrader", {}).get("grade_id")
        if c.metadata.get("nbgrader", {}).get("solution") and gid not in leave:
            c.source = ans[gid]
    return nb


def exercises(chapter):
    return [gid.removeprefix("check_") for gid, c in nbgrader_cells(read(SOLUTIONS / f"{chapter}.ipynb")).items()
            if is_graded(c)]


def points(chapter):
    return {gid.removeprefix("check_"): float(c.metadata.nbgrader.points)
            for gid, c in nbgrader_cells(read(SOLUTIONS / f"{chapter}.ipynb")).items() if is_graded(c)}


def index(nb, grade_id):
    return next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def edit(nb, name, old, new):
    c = nb.cells[index(nb, name)]
    assert old in c.source, (name, old)
    c.source = c.source.replace(old, new)


def insert_after(nb, grade_id, code):
    nb.cells.insert(index(nb, grade_id) + 1, nbformat.v4.new_code_cell(code))


def feedback(fb, student, chapter=CHAPTER):
    text = (fb / student / f"{chapter}.html").read_text()
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).replace("&#x27;", "'").replace("&quot;", '"')


# --- every chapter, in the same batch as the hostile class below ------------------------------------

CHAPTER_NAMES = [p.stem for p in solution_notebooks()]


def every_chapter(folder):
    """For every chapter: solved (full marks), untouched (0), and solved but for a wrong last exercise.
    The solved chapter 03 is in nbgrader's layout (<student>/<chapter>/<chapter>.ipynb), the rest flat."""
    for ch in CHAPTER_NAMES:
        last = exercises(ch)[-1]
        path = folder / "solved" / ch / f"{ch}.ipynb" if ch == CHAPTER else folder / f"solved_{ch}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(solved(ch), path)
        shutil.copy(CHAPTERS / f"{ch}.ipynb", folder / f"unsolved_{ch}.ipynb")
        nb = solved(ch)
        c = nb.cells[index(nb, last)]  # a wrong answer: the right one, then overwritten by one that fails
        c.source += f"\n\n_right = {last}\n\ndef {last}(*args, **kwargs):\n    raise ValueError('wrong on purpose')\n"
        nbformat.write(nb, folder / f"onewrong_{ch}.ipynb")


@pytest.mark.parametrize("chapter", CHAPTER_NAMES)
def test_every_chapter_is_graded_right(graded, chapter):
    rows, fb, _ = graded
    pts, last = points(chapter), exercises(chapter)[-1]
    for name, p in pts.items():
        col = f"{chapter}/{name}"
        assert float(rows["solved"][col]) == p, (col, feedback(fb, "solved", chapter))
        assert float(rows["unsolved"][col]) == 0, col
        assert float(rows["onewrong"][col]) == (0 if name == last else p), (col, feedback(fb, "onewrong", chapter))
    assert "wrong on purpose" in feedback(fb, "onewrong", chapter)
    assert "not implemented yet" in feedback(fb, "unsolved", chapter)
    assert "as released, so it was not run" in feedback(fb, "unsolved", chapter)  # no sandbox needed
    assert "the grader failed" not in feedback(fb, "solved", chapter)
    assert " raised " not in feedback(fb, "solved", chapter), "a cell not tagged skip-when-grading failed"


# --- a hostile class ---------------------------------------------------------------------------------

def submissions(folder):
    def save(student, nb):
        nbformat.write(nb, folder / f"{student}_{CHAPTER}.ipynb")

    # good: everything solved, and the untouched stub: the students "solved" and "unsolved" of every_chapter
    nb = solved(CHAPTER)                                            # good: one plausible mistake
    edit(nb, "scaled_dot_product_attention", "dim=-1", "dim=-2")
    save("cara", nb)

    # loops forever: in a cell, in a check. Asleep: the time limit is what is tested, and a busy loop
    # would take a core from the rest of the suite for TIMEOUT seconds twice.
    nb = solved(CHAPTER)
    edit(nb, "padding_mask", "#| export attention\n",
         "#| export attention\nimport time\nwhile True:\n    time.sleep(0.01)\n")
    edit(nb, "sliding_window_mask", "    return causal_mask(n) & (i - j < window)",   # ...swallowing everything
         "    while True:\n        try:\n            while True:\n                time.sleep(0.01)\n"
         "        except BaseException:\n            pass")
    save("dan", nb)

    nb = solved(CHAPTER)                                            # exhausts memory
    edit(nb, "causal_mask", "#| export attention\n",
         "#| export attention\nhog = [torch.ones(2**28) for _ in range(1000)]  # 1 GiB each\n")
    save("erin", nb)

    nb = solved(CHAPTER)                                            # crashes its process: segfault
    insert_after(nb, "check_padding_mask", "import ctypes\nctypes.string_at(0)")
    save("fay", nb)

    nb = solved(CHAPTER)                                            # passes the visible tests only; raises
    edit(nb, "scaled_dot_product_attention", "#| export attention\n", "#| export attention\nraise ValueError('oops')\n")
    edit(nb, "causal_mask", "return torch.ones(n, n, dtype=torch.bool).tril()",
         "return torch.ones(n, n, dtype=torch.bool).tril() if n != 9 else torch.ones(n, n, dtype=torch.bool)")
    save("hal", nb)

    nb = solved(CHAPTER)                                            # deletes and edits the test cells
    edit(nb, "padding_mask", "< lengths[:, None]", "<= lengths[:, None]")
    check = nb.cells[index(nb, "check_padding_mask")]
    check.source = 'print("\u2713 padding_mask passed 5 checks")'
    check.metadata.nbgrader["points"] = 100
    del nb.cells[index(nb, "check_causal_mask")]
    nb.cells.append(nbformat.v4.new_code_cell("print('bonus')", metadata={"nbgrader": {
        "grade": True, "grade_id": "bonus", "points": 50, "solution": False, "locked": True, "schema_version": 3}}))
    save("ivy", nb)

    nb = solved(CHAPTER)                                            # forges results in its own process
    edit(nb, "causal_mask", "return torch.ones(n, n, dtype=torch.bool).tril()",
         "return ~torch.ones(n, n, dtype=torch.bool).tril()")
    edit(nb, "causal_mask", "#| export attention\n",             # patches what checks would use
         "#| export attention\ntorch.equal = lambda *a, **k: True\ntorch.allclose = lambda *a, **k: True\n"
         "import transformer_course.checks as C, transformer_course.checks.attention as A\n"
         "C.fail = lambda msg: None\nA.check_causal_mask = lambda fn, seed=0: print('\u2713')\n"
         "import sys\nsys.settrace(lambda *a: None)\n")
    edit(nb, "padding_mask", "< lengths[:, None]", "<= lengths[:, None]")
    edit(nb, "padding_mask", "#| export attention\n",             # a tensor that claims to equal anything
         "#| export attention\nclass Liar(torch.Tensor):\n    def __eq__(self, other):\n        return True\n")
    edit(nb, "attention_weights", "return torch.softmax(scores, dim=-1)",
         "return torch.softmax(scores, dim=-2)\n\nimport types\n"
         "attention_weights.__code__ = (lambda q, k, mask=None: None).__code__")
    save("jay", nb)

    nb = solved(CHAPTER)                                            # takes the course's own answers
    edit(nb, "causal_mask", "def causal_mask", "from transformer_course.attention import causal_mask\n\ndef _unused")
    edit(nb, "padding_mask", "#| export attention\n",
         f"#| export attention\nimport json\nsource = json.load(open({str(SOLUTIONS / (CHAPTER + '.ipynb'))!r}))\n")
    save("kim", nb)

    nb = solved(CHAPTER)                                            # attacks the others and the grader
    insert_after(nb, "check_scaled_dot_product_attention",
                 "import os, signal, subprocess, glob\n"
                 "for pid in [int(d) for d in os.listdir('/proc') if d.isdigit()]:\n"
                 "    if pid != os.getpid():\n        try:\n            os.kill(pid, signal.SIGKILL)\n"
                 "        except OSError:\n            pass\n"
                 f"subprocess.run('for f in {folder}/*.ipynb {folder}/*/*/*.ipynb; do echo x > $f; done; "
                 f"rm -rf {folder}', shell=True)\n"
                 # three levels down from each place (the whole of / would outlast the cell's limit)
                 f"for d in ('..', '../..', '/tmp', '/dev/shm', {str(folder.parent)!r}):\n"
                 "    for pattern in ('/*.result', '/*/*.result', '/*/*/*.result'):\n"
                 "        for f in glob.glob(d + pattern):\n"
                 "            open(f, 'w').write('{\"score\": 100}')\n"
                 "open('/dev/shm/left-behind', 'w').write('x' * 1000)\nos.makedirs('figures')\n")
    insert_after(nb, "check_causal_mask", "import os\nif os.fork() == 0:\n    import time\n    time.sleep(60)\n")
    edit(nb, "padding_mask", "    return", "    import os\n    if os.fork() == 0:\n        return None\n    return")
    save("max", nb)

    shutil.copy(ROOT / "zh" / "chapters" / f"{CHAPTER}.ipynb", folder / f"li_{CHAPTER}.ipynb")  # Chinese, untouched
    nb = solved(CHAPTER)                                            # solved, in a notebook that says Chinese
    nb.metadata["transformer_course"] = {"language": "zh_CN"}
    save("lin", nb)

    (folder / f"eve_{CHAPTER}.ipynb").write_text("{ this is not a notebook")   # not valid notebooks
    (folder / f"flo_{CHAPTER}.ipynb").write_text('{"cells": "nope"}')


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grading")
    sub = tmp / "submitted"
    sub.mkdir()
    submissions(sub)
    every_chapter(sub)  # one batch for all: the two workers stay busy
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sub.rglob("*.ipynb")}
    shm = set(os.listdir("/dev/shm"))
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    out = grade(sub, tmp / "grades.csv", feedback=tmp / "feedback", workdir=tmp / "course", timeout=TIMEOUT,
                jobs=2, memory=3, log=lambda *a: None, progress=False)
    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sub.rglob("*.ipynb")}
    left = {p.pid for p in psutil.Process().children(recursive=True)} - children
    return rows, tmp / "feedback", {"changed": before != after, "shm": set(os.listdir("/dev/shm")) - shm,
                                    "left": left}


def scores(rows, student):
    return [float(rows[student][f"{CHAPTER}/{e}"]) for e in EXERCISES]


FULL = [2, 1, 1, 1, 1]


def test_good_submissions(graded):
    rows, fb, _ = graded
    columns = list(rows["solved"])  # every chapter in the batch: a column per exercise, in chapter order
    assert columns[0] == "student" and columns[-3:] == ["total", "max", "similar"]
    assert [c for c in columns if c.startswith(CHAPTER)] == [f"{CHAPTER}/{e}" for e in EXERCISES]
    assert len(columns) == 4 + sum(len(exercises(ch)) for ch in CHAPTER_NAMES)
    assert scores(rows, "solved") == FULL and scores(rows, "unsolved") == [0] * 5
    assert "not implemented yet" in feedback(fb, "unsolved")
    assert scores(rows, "cara") == [0, 1, 1, 1, 1]
    assert "softmax ran over the queries (dim=-2)" in feedback(fb, "cara")
    most = sum(sum(points(ch).values()) for ch in CHAPTER_NAMES)  # every chapter graded in this batch
    assert all(float(r["max"]) == most for r in rows.values())  # a student cannot add points or graded cells
    assert float(rows["solved"]["total"]) == most and float(rows["cara"]["total"]) == 4


def test_feedback_speaks_the_submissions_language(graded):
    """A Chinese student notebook (zh/chapters/) is graded like the English one, in Chinese."""
    rows, fb, _ = graded
    assert scores(rows, "li") == [0] * 5 and scores(rows, "lin") == FULL
    for student in ("li", "lin"):
        assert len(re.findall("[\u4e00-\u9fff]", feedback(fb, student))) > 20, feedback(fb, student)
    assert "not implemented yet" not in feedback(fb, "li") and "passed" not in feedback(fb, "lin")
    assert "not implemented yet" in feedback(fb, "unsolved")  # and the English ones stay English


def test_the_similarity_report(graded):
    """Copies of the published solution are flagged in the CSV and the feedback index; stubs never."""
    rows, fb, _ = graded
    assert "03_attention/scaled_dot_product_attention: 1.00 to the solution" in rows["solved"]["similar"]
    assert rows["unsolved"]["similar"] == ""
    index = (fb / "index.html").read_text()
    assert "Similar answers" in index and "solved/03_attention.html" in index and "solved_03" not in index


def test_loops_memory_and_crashes_cost_what_they_stop(graded):
    rows, fb, _ = graded
    assert scores(rows, "dan") == [2, 1, 0, 1, 0]
    assert "ran past the grader's limit" in feedback(fb, "dan")
    assert scores(rows, "erin")[1] == 0 and "MemoryError" in feedback(fb, "erin") or "memory" in feedback(fb, "erin")
    assert scores(rows, "fay") == [2, 1, 1, 0, 0]
    assert "stopped" in feedback(fb, "fay")


def test_errors_hidden_tests_and_restored_cells(graded):
    rows, fb, _ = graded
    assert scores(rows, "hal") == [0, 0, 1, 1, 1]
    assert "ValueError: oops" in feedback(fb, "hal")
    assert "the check you could see passed" in feedback(fb, "hal")
    assert scores(rows, "ivy") == [2, 1, 0, 1, 1]
    assert "you changed this check cell" in feedback(fb, "ivy") and "was missing" in feedback(fb, "ivy")


def test_what_a_notebook_does_to_its_own_process_forges_nothing(graded):
    rows, fb, _ = graded
    assert scores(rows, "jay") == [2, 0, 0, 0, 0]
    assert scores(rows, "kim") == [2, 0, 0, 1, 1]
    assert "the course package's own" in feedback(fb, "kim")
    assert "No such file" in feedback(fb, "kim")


def test_no_submission_reaches_another_or_the_grader(graded):
    rows, fb, seen = graded
    assert scores(rows, "max") == [2, 1, 1, 1, 1]   # its forks answer nothing; its attacks hit nothing
    assert "ran past" not in feedback(fb, "max") and " raised " not in feedback(fb, "max"), "an attack did not run"
    assert not seen["changed"], "a submission changed another's notebook"
    assert not seen["shm"] and not seen["left"], "something was left behind"
    assert scores(rows, "solved") == FULL


def test_nbgraders_own_export_writes_the_same_grades(graded):
    """book/grading.md's command: nbgrader's export, with the course's exporter, in the course folder."""
    _, fb, _ = graded
    out = fb.parent / "exported.csv"
    done = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), "export", "--exporter="
                           "transformer_course.tools.gradebook.ExerciseCsvExporter", "--to", str(out)],
                          cwd=fb.parent / "course", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with (fb.parent / "grades.csv").open() as f:
        want = [row[:-1] for row in csv.reader(f)]  # the grader's CSV, less its similarity column
    with out.open() as f:
        assert list(csv.reader(f)) == want


def test_invalid_notebooks_score_zero_with_the_reason(graded):
    rows, fb, _ = graded
    for student in ("eve", "flo"):
        assert scores(rows, student) == [0] * 5
        assert "not a valid notebook" in feedback(fb, student)


def test_no_sandbox_no_grading(tmp_path, monkeypatch, capsys):
    """Without bubblewrap the grader stops and says why, unless told to accept the risk (then the CSV
    and the feedback say so). The command's own entry point, in this process."""
    from transformer_course.tools.grade import main, sandbox_works

    sub = tmp_path / "sub"
    sub.mkdir()
    nbformat.write(solved(CHAPTER), sub / f"ada_{CHAPTER}.ipynb")
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox_works.cache_clear()
    args = [str(sub), "--out", str(tmp_path / "g.csv"), "--feedback", str(tmp_path / "fb")]
    try:
        with pytest.raises(SystemExit) as stopped:
            main(args)
        assert "bubblewrap" in str(stopped.value) and "--unsafe-no-sandbox" in str(stopped.value)
        main(args + ["--unsafe-no-sandbox"])
    finally:
        sandbox_works.cache_clear()
    text = (tmp_path / "g.csv").read_text()
    assert text.startswith("# WARNING: graded WITHOUT a sandbox") and ",6,6" in text
    assert "WITHOUT a sandbox" in (tmp_path / "fb" / "ada" / f"{CHAPTER}.html").read_text()


def test_restore_tests_puts_back_what_was_deleted():
    nb, source = read(CHAPTERS / f"{CHAPTER}.ipynb"), read(SOLUTIONS / f"{CHAPTER}.ipynb")
    del nb.cells[index(nb, "check_causal_mask")]
    notes = restore_tests(nb, source, read(CHAPTERS / f"{CHAPTER}.ipynb"))
    assert "check_causal_mask" in notes and index(nb, "check_causal_mask") == index(nb, "causal_mask") + 1


def test_what_honest_notebooks_do_works_in_the_sandbox():
    """Relative folders, the environment's own python in a subprocess, processes that share memory
    and semaphores (chapters 12 and 17 do these): allowed, and gone with the sandbox."""
    from transformer_course.tools.bridge import Grader
    from transformer_course.tools.grade import Settings, start_sandbox

    box = start_sandbox(Settings(work=Path("/nonexistent")))
    try:
        conn = Grader(box.sock)
        err = conn.request("cell", "import os, subprocess, sys\nimport torch.multiprocessing as mp\n"
                                   "os.makedirs('figures')\nopen('figures/a.txt', 'w').write('x')\n"
                                   "out = subprocess.run([sys.executable, '-c', 'import torch; print(2 + 2)'],\n"
                                   "                     capture_output=True, text=True).stdout.strip()\n"
                                   "ctx = mp.get_context('spawn')\nlock, value = ctx.Lock(), ctx.Value('i', 0)\n"
                                   "p = ctx.Process(target=os.getpid)\np.start()\np.join()\ncode = p.exitcode")
        assert err is None, err
        assert conn.request("get", "out") == "4" and conn.request("get", "code") == 0
    finally:
        box.close()


def test_demos_are_skipped_unless_an_answer_uses_them():
    """Cells tagged skip-when-grading do not run, unless a cell that runs reads a name only a
    skipped demo defines: then the demo runs too (a learner's answer used its variable)."""
    cell = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        cell("import torch\nd_model = 8"),
        cell("sizes = [2**i for i in range(20)]\nd_model = 64\nfor n in sizes:\n    print(n)", metadata={"tags": [SKIP]}),
        cell("from time import perf_counter\nseconds = [perf_counter() for _ in range(9)]", metadata={"tags": [SKIP]}),
        cell("def width(x):\n    return x.shape[-1] * d_model"),
        cell("print(len(seconds))", metadata={"tags": [SKIP]}),
    ])
    assert cells_to_run(nb, {1, 2, 4}) == {0, 3}   # d_model is defined before the demo too
    nb.cells[3].source = "def width(x):\n    return x.shape[-1] * len(sizes)"  # only the demo defines sizes
    assert cells_to_run(nb, {1, 2, 4}) == {0, 1, 3}
    nb.cells[3].source = "global seconds\nseconds = []\ndef width(x):\n    return len(seconds)"
    assert cells_to_run(nb, {1, 2, 4}) == {0, 3}


@pytest.mark.parametrize("chapter", CHAPTER_NAMES)
def test_no_cell_that_runs_needs_a_demo(chapter):
    """The rule for skip-when-grading (CONTRIBUTING.md): no untagged cell of the instructor's notebook
    reads a name that only a tagged cell defines."""
    nb = read(SOLUTIONS / f"{chapter}.ipynb")
    demos = {i for i, c in enumerate(nb.cells) if SKIP in c.metadata.get("tags", [])}
    assert not demos & cells_to_run(nb, demos), [nb.cells[i].source[:60] for i in demos & cells_to_run(nb, demos)]
