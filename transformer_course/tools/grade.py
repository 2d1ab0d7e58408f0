"""Grade a class: a folder of student notebooks into a CSV (a row per student, a column per exercise)
and per-student HTML feedback in the checks' own words.

    python -m transformer_course.tools.grade SUBMISSIONS [--out grades.csv] [--feedback DIR] [-j N]

SUBMISSIONS holds nbgrader's layout, ``<student>/<chapter>/<chapter>.ipynb`` (its ``submitted/``
folder), or a flat folder of ``<student>_<chapter>.ipynb`` files (chapter = a notebook stem such
as ``03_attention``).

How a submission is graded, and why neither it nor anyone else's can spoil a grade:
- nbgrader prepares each chapter (``generate_assignment``: the gradebook and the student edition);
- every graded cell is put back as the instructor wrote it, hidden tests included, wherever the
  student edited, moved or deleted it (:func:`restore_tests`);
- the notebook's cells run in a bubblewrap sandbox of its own (:mod:`transformer_course.tools.sandbox`),
  which sees the Python installation and the course package, and not the submissions, the grader's
  folders or the instructor's files; cells tagged ``skip-when-grading`` (the chapter's long demos)
  are not run;
- the check cells run here, in the grader, never in the sandbox: the learner's functions and
  classes are proxies (:mod:`transformer_course.tools.bridge`) whose calls the sandbox answers with
  plain data. An exercise earns its points when its check cell raises nothing;
- submissions run in parallel in -j worker processes (:func:`run_workers`), each in a session of its
  own, with a progress bar: a worker that dies costs only the notebook it was grading; the main
  process alone writes nbgrader's gradebook (sqlite takes one writer), and
  :class:`~transformer_course.tools.gradebook.ExerciseCsvExporter` -- also usable as
  ``nbgrader export --exporter=transformer_course.tools.gradebook.ExerciseCsvExporter`` -- writes
  the CSV from it.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import copy
import csv
import html
import io
import json
import os
import re
import shutil
import signal
import symtable
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from ..i18n import SETTING, language, speaking, tr, trf
from .bridge import BridgeError, Grader, Remote
from .notebooks import LANGS, PACKAGE, SOLUTIONS, nbgrader_api
from .sandbox import Box, Limits
from .sandbox import works as sandbox_works

CHECK_PREFIX = "check_"
GiB = 2**30


def find_submissions(folder: Path, chapters: list[str]) -> dict[tuple[str, str], Path]:
    """(student, chapter) -> notebook, from either layout."""
    found = {}
    flat = re.compile(rf"^(?P<student>.+)_(?P<chapter>{'|'.join(map(re.escape, chapters))})$")
    for nb in sorted(folder.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in nb.parts:
            continue
        rel = nb.relative_to(folder).parts
        if len(rel) >= 3 and rel[-2] in chapters:  # <student>/<chapter>/<file>.ipynb
            found[(rel[-3], rel[-2])] = nb
        elif (m := flat.match(nb.stem)):
            found[(m["student"], m["chapter"])] = nb
    return found


def exercise_name(grade_cell_name: str) -> str:
    return grade_cell_name.removeprefix(CHECK_PREFIX)


# --- what grading needs to know, prepared once per chapter --------------------------------------

@dataclass
class Chapter:
    name: str
    source: Path                # the instructor's notebook: solutions and hidden tests
    release: Path               # the student edition nbgrader generated from it


@dataclass
class Settings:
    work: Path                  # nbgrader's course directory, and the grader's files under grader/
    timeout: int = 120          # seconds per cell
    notebook_timeout: int = 900 # seconds per notebook
    memory: int = 4 * GiB       # bytes of data one kernel may allocate (0: no limit)
    threads: int = 1            # torch threads per kernel
    fonts: str = ""             # matplotlib's font list, built once, copied into each sandbox
    unsafe: bool = False        # no sandbox could be made and the instructor accepted the risk


@dataclass
class Exercise:
    name: str
    grade_id: str
    points: float
    score: float = 0.0
    message: str = ""           # the check's own words, or why it did not run
    notes: list[str] = field(default_factory=list)
    code: str = ""              # the student's cell for it
    output: str = ""            # what the check printed


@dataclass
class Result:
    student: str
    chapter: str
    exercises: list[Exercise]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    lang: str = "en"  # the language of its messages

    @property
    def score(self) -> float:
        return sum(e.score for e in self.exercises)

    @property
    def max_score(self) -> float:
        return sum(e.points for e in self.exercises)


def is_graded(cell) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("grade"))


def nbgrader_cells(nb) -> dict:
    return {c.metadata.nbgrader.grade_id: c for c in nb.cells
            if isinstance(c.metadata.get("nbgrader"), dict) and c.metadata.nbgrader.get("grade_id")}


def code_cells(nb) -> list[str]:
    """What a notebook runs: the source of its code cells (not their outputs), in order."""
    return [c.source.strip() for c in nb.cells if c.cell_type == "code"]


# --- a submission ---------------------------------------------------------------------------------

class Invalid(Exception):
    """The file is not a notebook we can grade."""


def read_submission(path: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # schema quibbles (Colab metadata, say) do not stop grading
            nb = nbformat.read(path, as_version=4)
    except Exception as e:
        raise Invalid(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()) from None
    if not isinstance(nb.get("cells"), list) or not all(
            isinstance(c, dict) and c.get("cell_type") in ("code", "markdown", "raw") and isinstance(c.get("source"), str)
            for c in nb.cells):
        raise Invalid("its JSON is not a Jupyter notebook (no list of cells)")
    for c in nb.cells:
        c.setdefault("metadata", nbformat.NotebookNode())
    return nb


def restore_tests(nb, source, release) -> dict[str, list[str]]:
    """Put every graded cell back as the instructor wrote it (hidden tests included), wherever the
    student edited, moved or deleted it, and give nbgrader cells their source metadata. Like
    nbgrader's OverwriteCells(add_missing_cells=True), without failing when a solution cell is gone.
    Returns notes by grade_id."""
    src, rel = nbgrader_cells(source), nbgrader_cells(release)
    order = list(src)
    notes: dict[str, list[str]] = {}
    cells, seen = [], set()
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader")
        gid = meta.get("grade_id") if isinstance(meta, dict) else None
        if meta is not None and (gid not in src or gid in seen):
            del cell.metadata["nbgrader"]  # a student cannot add graded cells, nor copy them
            if gid in src and is_graded(src[gid]):
                notes.setdefault(gid, []).append(tr("your notebook had a second copy of this check cell; it was ignored"))
            cells.append(cell)
            continue
        if gid is None:
            cells.append(cell)
            continue
        seen.add(gid)
        want = src[gid]
        if is_graded(want):
            if cell.cell_type != "code" or cell.source.strip() not in (rel[gid].source.strip(), want.source.strip()):
                notes.setdefault(gid, []).append(
                    tr("you changed this check cell; it was graded as the course wrote it"))
            if meta.get("points") != want.metadata.nbgrader.get("points"):
                notes.setdefault(gid, []).append(
                    trf("the points of this check were changed to {meta.get('points')!r}; it is worth "
                    "{want.metadata.nbgrader['points']:g}"))
            cell = nbformat.v4.new_code_cell(want.source, metadata=copy.deepcopy(want.metadata))
        else:
            cell.metadata["nbgrader"] = copy.deepcopy(want.metadata.nbgrader)
        cells.append(cell)
    for i, gid in enumerate(order):  # graded cells the student deleted, placed after their predecessor
        if gid in seen or not is_graded(src[gid]):
            continue
        at = len(cells)
        for prev in reversed(order[:i]):
            where = [j for j, c in enumerate(cells) if c.metadata.get("nbgrader", {}).get("grade_id") == prev]
            if where:
                at = where[0] + 1
                break
        cells.insert(at, nbformat.v4.new_code_cell(src[gid].source, metadata=copy.deepcopy(src[gid].metadata)))
        seen.add(gid)
        notes.setdefault(gid, []).append(tr("this check cell was missing from your notebook; the grader put it back"))
    for cell in cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.cells = cells
    return notes


def cell_label(nb, i: int) -> str:
    first = next((l.strip() for l in nb.cells[i].source.splitlines() if l.strip()), "")
    return trf("cell {i + 1} ({first[:50] + ('...' if len(first) > 50 else '')})")


SKIP = "skip-when-grading"  # a cell tag: the chapter's demos (training, timing, figures), which no exercise needs


def bound_and_used(source: str) -> tuple[set[str], set[str]]:
    """The names a cell binds in the notebook's namespace, and those it reads from there (in its
    functions too), by Python's own scope analysis (symtable). A cell that does not parse: none."""
    try:
        top = symtable.symtable(source, "<cell>", "exec")
    except SyntaxError:
        return set(), set()
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    used = {s.get_name() for s in top.get_symbols() if s.is_referenced()}
    tables = list(top.get_children())
    while tables:
        t = tables.pop()
        tables += t.get_children()
        for sym in t.get_symbols():
            if sym.is_declared_global() and sym.is_assigned():
                bound.add(sym.get_name())
            elif sym.is_global() and sym.is_referenced():
                used.add(sym.get_name())
    return bound, used


def cells_to_run(nb, skip: set) -> set[int]:
    """The code cells that grading runs: all but the demos (`skip`, cell indices), and a demo too
    where a cell that runs after it reads a name that only the demo defines (a learner's answer
    may use one of its variables: skipping the demo would leave that name undefined)."""
    names = {i: bound_and_used(c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()}
    run = set(names) - set(skip)
    while True:
        wanted, defined, demos = set(), set(), {}  # demos: name -> the last skipped cell so far that binds it
        for j in sorted(names):
            bound, used = names[j]
            if j in run:
                wanted |= {demos[n] for n in used - bound - defined if n in demos}
                defined |= bound
            else:
                demos.update(dict.fromkeys(bound, j))
        if not wanted:
            return run
        run |= wanted


def free_names(source: str) -> list[str]:
    """The names a check cell uses without defining them: the learner's objects it checks."""
    bound, used = bound_and_used(source)
    return sorted(n for n in used - bound if not hasattr(builtins, n))


def imports_of(source: str) -> str:
    """The import statements of a check cell: the sandbox runs them, for the given cells after it."""
    return "\n".join(ast.unparse(n) for n in ast.parse(source).body if isinstance(n, (ast.Import, ast.ImportFrom)))


def _where(err: dict | None) -> str:
    if not err:
        return ""
    return f"{err.get('type')}: {err.get('msg')}{err.get('where') or ''}".strip()


def run_check(conn, source: str, gid: str) -> tuple[bool, str, str]:
    """Run an instructor's check cell here, in the grader, with the learner's objects as proxies.
    Returns (passed, message, what it printed). Raises BridgeError if the sandbox is gone."""
    ns, out = {"__name__": "__check__"}, io.StringIO()
    for name in free_names(source):
        try:
            ns[name] = obj = conn.request("get", name)
        except KeyError:
            return False, (trf("{name} is not defined in your notebook: did the cell that defines it run "
                           "without an error?")), ""
        module = object.__getattribute__(obj, "_module") if isinstance(obj, Remote) else ""
        if module.startswith(PACKAGE.name + "."):
            return False, (trf("your {name} is the course package's own ({module}.{name}), imported rather than "
                           "written in your notebook: it earns no points")), ""
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(source, f"<{gid}>", "exec"), ns)
    except BridgeError:
        raise
    except AssertionError as e:  # CheckFailed and NotImplementedYet: the check's own words
        return False, str(e), out.getvalue()
    except Exception as e:
        return False, f"{type(e).__name__}: {e}{getattr(e, 'where', '')}", out.getvalue()
    printed = out.getvalue()
    return True, next((l for l in printed.splitlines() if l.strip()), "passed"), printed


def run_submission(nb, source, restore_notes: dict, s: Settings) -> tuple[list[Exercise], list[str]]:
    """Run the notebook in a sandbox cell by cell; the check cells here, against proxies of its objects."""
    points = {gid: float(c.metadata.nbgrader.points) for gid, c in nbgrader_cells(source).items() if is_graded(c)}
    solutions = {c.metadata.nbgrader.grade_id: i for i, c in enumerate(nb.cells)
                 if c.metadata.get("nbgrader", {}).get("solution")}
    exercises, general, pending = [], [], []  # pending: notes of the cells since the last check
    # the course's demos, by cell id: also in a student edition downloaded before they were tagged
    demos = {c.get("id") for c in source.cells if SKIP in c.metadata.get("tags", [])} - {None}
    run = cells_to_run(nb, {i for i, c in enumerate(nb.cells) if not is_graded(c) and (
        SKIP in c.metadata.get("tags", []) or c.get("id") in demos)})
    deadline = time.monotonic() + s.notebook_timeout
    box = conn = None
    stopped = ""
    try:
        box = start_sandbox(s)
        conn = Grader(box.sock)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            graded = is_graded(cell)
            if not graded and (i not in run or stopped):
                continue
            limit = min(s.timeout, deadline - time.monotonic())
            if graded:
                gid = cell.metadata.nbgrader.grade_id
                ex = Exercise(exercise_name(gid), gid, points[gid], notes=list(restore_notes.get(gid, [])))
                j = solutions.get(ex.name)
                ex.code = nb.cells[j].source if j is not None else ""
                if stopped:
                    ex.message = trf("not graded: {stopped}")
                elif limit < 1:
                    stopped = trf("the notebook used up its {s.notebook_timeout} s")
                    ex.message = trf("not graded: {stopped}")
                else:
                    conn.deadline = time.monotonic() + limit
                    try:
                        ok, ex.message, ex.output = run_check(conn, cell.source, gid)
                        conn.request("cell", imports_of(cell.source))
                    except BridgeError as e:
                        ok, stopped = False, trf("the sandbox running your notebook stopped during this check ({e})")
                        ex.message = stopped
                    ex.score = ex.points if ok else 0.0
                    if not ok and "\u2713" in ex.output:
                        ex.notes.append(tr("the check you could see passed; the hidden tests (the same check on other "
                                        "inputs) found the mistake above"))
                ex.notes += [n for n in pending if n not in ex.notes]
                pending = []
                exercises.append(ex)
                continue
            if limit < 1:
                stopped = trf("the notebook used up its {s.notebook_timeout} s")
                pending.append(trf("{cell_label(nb, i)} and the cells after it were not run: {stopped}"))
                continue
            conn.deadline = time.monotonic() + limit
            try:
                err = conn.request("cell", cell.source)
            except BridgeError as e:
                stopped = trf("the sandbox running your notebook stopped in {cell_label(nb, i)} ({e})")
                pending.append(stopped)
                continue
            if err:
                what = (tr("ran past the grader's limit of {:.0f} s and was stopped").format(limit)
                        if err.get("type") == "TimeLimit" else trf("raised {_where(err)}"))
                pending.append(f"{cell_label(nb, i)} {what}")
    finally:
        if box is not None:
            box.close()
    general += pending
    return exercises, general


def start_sandbox(s: Settings) -> Box:
    from .notebooks import PACKAGE as pkg

    extra = [(str(pkg.parent / "benchmarks" / "results"), str(pkg.parent / "benchmarks" / "results"))]
    env = {}
    cache = Path(os.environ.get("TRANSFORMER_COURSE_CACHE", "~/.cache/transformer-course")).expanduser()
    if cache.is_dir():  # the course's trained checkpoints, read-only: chapters 09-17 load them
        extra.append((str(cache), "/cache/transformer-course"))
        env["TRANSFORMER_COURSE_CACHE"] = "/cache/transformer-course"
    if s.fonts:
        extra.append((s.fonts, "/grader/matplotlib"))
    return Box(Limits(memory=s.memory, threads=s.threads), extra, env, unsafe=s.unsafe)


def grade_submission(student: str, chapter: Chapter, path: Path, s: Settings) -> Result:
    """Grade one notebook; whatever happens, return a Result (the batch goes on)."""
    t0 = time.monotonic()
    source = nbformat.read(chapter.source, as_version=4)
    zeros = [Exercise(exercise_name(gid), gid, float(c.metadata.nbgrader.points))
             for gid, c in nbgrader_cells(source).items() if is_graded(c)]
    try:
        try:
            nb = read_submission(path)
        except Invalid as e:
            for ex in zeros:
                ex.message = tr("not graded: the file is not a valid notebook")
            return Result(student, chapter.name, zeros, [trf("{path.name} is not a valid notebook: {e}")],
                          time.monotonic() - t0)
        release = nbformat.read(chapter.release, as_version=4)
        if code_cells(nb) == code_cells(release):  # every exercise still its stub: nothing to run
            for ex in zeros:
                ex.message = tr("not implemented yet: your notebook's code is the student edition's "
                                "as released, so it was not run")
            return Result(student, chapter.name, zeros, [], time.monotonic() - t0)
        restore_notes = restore_tests(nb, source, release)
        exs, general = run_submission(nb, source, restore_notes, s)
        return Result(student, chapter.name, exs, general, time.monotonic() - t0)
    except Exception as e:  # a bug of ours: say so, grade the rest
        for ex in zeros:
            ex.message = tr("not graded: the grader failed on this notebook")
        return Result(student, chapter.name, zeros,
                      [trf("the grader failed on this notebook: {type(e).__name__}: {e}"),
                       traceback.format_exc()], time.monotonic() - t0)


# --- feedback -------------------------------------------------------------------------------------

STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4em;text-align:left;
vertical-align:top}.pass td:first-child::before{content:"\\2713  ";color:#197a1b}.fail td:first-child::before{
content:"\\2717  ";color:#b3261e}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.note{color:#8a5a00}"""


UNSAFE = ("WARNING: graded WITHOUT a sandbox (--unsafe-no-sandbox): each submission could read and change "
          "the other submissions, the grader's files and these grades")


def feedback_html(r: Result, unsafe: bool = False) -> str:
    with speaking(r.lang):  # the submission's language; UNSAFE is for the instructor
        return _feedback_html(r, unsafe)


def _feedback_html(r: Result, unsafe: bool) -> str:
    e = html.escape
    rows = []
    for x in r.exercises:
        notes = "".join(f"<li class=note>{e(n)}</li>" for n in x.notes)
        rows.append(f"<tr class={'pass' if x.score == x.points else 'fail'}><td>{e(x.name)}</td>"
                    f"<td>{x.score:g} / {x.points:g}</td><td>{e(x.message)}"
                    f"{'<ul>' + notes + '</ul>' if notes else ''}</td></tr>")
    general = "".join(f"<li class=note>{e(n)}</li>" for n in r.notes if "Traceback" not in n)
    code = "".join(f"<h3>{e(x.name)}</h3><pre>{e(x.code)}</pre>"
                   + (f"<p>{tr('The check printed:')}</p><pre>{e(x.output)}</pre>" if x.output.strip() else "")
                   for x in r.exercises if x.code)
    score = trf("{r.score:g} of {r.max_score:g} points.")
    rule = tr("Each exercise earns its points when its check (and the hidden tests behind it, the same "
              "check on other inputs) passes.")
    head = "".join(f"<th>{h}</th>" for h in (tr("exercise"), tr("points"), tr("result")))
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{e(r.chapter)}: {e(r.student)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{e(r.chapter)}: {e(r.student)}</h1>"
            + (f"<p class=note><b>{e(UNSAFE)}</b></p>" if unsafe else "") +
            f"<p><b>{e(score)}</b> {e(rule)}</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>"
            + (f"<h2>{tr('About the whole notebook')}</h2><ul>{general}</ul>" if general else "")
            + (f"<h2>{tr('Your code')}</h2>{code}" if code else "") + "</body></html>\n")


def similarity_notes(results: list[Result], chapters: dict[str, Chapter]) -> dict[str, list[str]]:
    """student -> 'chapter/exercise: 0.97 to the solution' for the answers the similarity report flags."""
    from .similarity import report

    answers = {(r.student, f"{r.chapter}/{x.name}"): x.code for r in results for x in r.exercises if x.code}
    solutions = {f"{name}/{c.metadata.nbgrader.grade_id}": c.source for name, ch in chapters.items()
                 for c in nbformat.read(ch.source, as_version=4).cells if c.metadata.get("nbgrader", {}).get("solution")}
    notes: dict[str, list[str]] = {}
    for (student, exercise), m in sorted(report(answers, solutions).items()):
        if m.flagged:
            whom = [f"{m.to_solution:.2f} to the solution"] if m.to_solution >= m.to_closest else []
            whom += [f"{m.to_closest:.2f} to {m.closest}"] if m.closest and m.to_closest > m.to_solution else []
            notes.setdefault(student, []).append(f"{exercise}: {', '.join(whom)}")
    return notes


def index_html(results: list[Result], similar: dict[str, list[str]], unsafe: bool) -> str:
    """The feedback folder's front page: every student's pages and scores, then the similarity report."""
    e = html.escape
    rows = "".join(f"<tr><td>{e(r.student)}</td><td><a href='{e(r.student)}/{e(r.chapter)}.html'>{e(r.chapter)}</a>"
                   f"</td><td>{r.score:g} / {r.max_score:g}</td></tr>"
                   for r in sorted(results, key=lambda r: (r.student, r.chapter)))
    flags = "".join(f"<li>{e(student)}: {e('; '.join(notes))}</li>" for student, notes in sorted(similar.items()))
    return (f"<!doctype html><html><head><meta charset=utf-8><title>Feedback</title><style>{STYLE}</style></head>"
            "<body><h1>Feedback</h1>" + (f"<p class=note><b>{e(UNSAFE)}</b></p>" if unsafe else "")
            + f"<table><tr><th>student</th><th>chapter</th><th>points</th></tr>{rows}</table>"
            "<h2>Similar answers</h2><p>Answers nearly identical to the published solution or to another "
            "student's, once names, layout and comments are set aside (transformer_course.tools.similarity). "
            "The solutions are public, so this proves nothing: it shows where to look. Answers under about "
            "two lines are never flagged, since short exercises have one natural answer.</p>"
            + (f"<ul>{flags}</ul>" if flags else "<p>None.</p>") + "</body></html>\n")


# --- the batch -----------------------------------------------------------------------------------

def _to_json(x):
    if isinstance(x, Path):
        return str(x)
    raise TypeError(type(x).__name__)


def _result(d: dict) -> Result:
    return Result(**{**d, "exercises": [Exercise(**e) for e in d["exercises"]]})


def worker(task_file: Path, result_file: Path) -> None:
    """Grade one submission (described in task_file), write its Result to result_file."""
    import dataclasses

    t = json.loads(Path(task_file).read_text())
    s = Settings(**{**t["settings"], "work": Path(t["settings"]["work"])})
    chapter = Chapter(**{k: (Path(v) if k in ("source", "release") else v) for k, v in t["chapter"].items()})
    import torch

    torch.set_num_threads(max(1, s.threads))  # the checks' oracles are small; the workers share the cores
    r = grade_submission(t["student"], chapter, Path(t["path"]), s)
    r.lang = language()
    tmp = Path(result_file).with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(r), default=_to_json))
    tmp.replace(result_file)  # whole or not at all: the grader takes it as soon as it exists


def worker_loop(parent: int) -> int:
    """A worker process: grade the submissions the grader sends, one line (TASK<tab>RESULT) each."""
    if sys.platform == "linux":  # the grader gone (killed, Ctrl-C): stop too
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
        if os.getppid() != parent:
            return 1
    for line in sys.stdin:
        task, result = line.rstrip("\n").split("\t")
        try:
            worker(Path(task), Path(result))
        except Exception:  # no result: the grader says so for this notebook and starts another worker
            traceback.print_exc()
            sys.stdout.flush()
            os._exit(1)
    return 0


@dataclass
class Job:
    student: str
    chapter: Chapter
    path: Path
    result: Path | None = None  # where its worker writes the Result
    started: float = 0.0
    lang: str = "en"  # the language of its feedback (transformer_course.i18n)


def submission_language(path: Path) -> str:
    """The feedback's language: the notebook's own (a Chinese student notebook says zh_CN in its
    metadata), else English."""
    try:
        lang = json.loads(Path(path).read_text())["metadata"]["transformer_course"]["language"]
    except Exception:
        return "en"
    return lang if lang in LANGS.values() else "en"


def run_workers(jobs: list[Job], n: int, s: Settings, folder: Path, done) -> None:
    """Grade the jobs in n worker processes, each in a session of its own (nothing a notebook or its
    kernel signals there reaches this process or the other workers); call done(job, result) as each
    ends. A worker that dies, or runs past the notebook's time limit, gives a Result saying so for
    the notebook it was grading, and another worker takes its place."""
    import dataclasses
    import itertools
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    pending, pool, ids = list(jobs), [], itertools.count()
    limit = s.notebook_timeout + 300  # the kernel's start and shutdown on top of the notebook's own limit

    def assign(w: dict, job: Job) -> bool:
        task = folder / f"{next(ids)}-{job.student}-{job.chapter.name}.json"
        task.write_text(json.dumps({"student": job.student, "chapter": dataclasses.asdict(job.chapter),
                                    "path": job.path, "settings": dataclasses.asdict(s)},
                                   default=_to_json))
        job.result, job.started = task.with_suffix(".result"), time.monotonic()
        job.result.unlink(missing_ok=True)
        try:
            w["proc"].stdin.write(f"{task}\t{job.result}\n")
            w["proc"].stdin.flush()
        except OSError:  # the worker is gone already: another takes the job
            return False
        w["job"] = job
        return True

    def start(lang: str) -> dict:
        # a worker speaks one language: the checks translate their messages when imported
        env = {**os.environ, SETTING: lang}
        with open(folder / f"worker-{next(ids)}.log", "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "transformer_course.tools.grade", "--worker",
                                     str(os.getpid())], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, text=True, env=env)
        return {"proc": proc, "job": None, "lang": lang}

    pending.sort(key=lambda job: job.lang != "en")  # one language after the other: few new workers
    while pending or any(w["job"] is not None for w in pool):
        for w in [w for w in pool if w["job"] is None] + [None] * (n - len(pool)):
            if not pending:
                break
            if w is not None and w["lang"] != pending[0].lang:  # idle, and of another language
                _kill_group(w["proc"].pid)
                w["proc"].wait()
                pool.remove(w)
                w = None
            if w is None:
                w = start(pending[0].lang)
                pool.append(w)
            job = pending.pop(0)
            if not assign(w, job):
                pending.insert(0, job)
                _kill_group(w["proc"].pid)
                pool.remove(w)
        busy = [w for w in pool if w["job"] is not None]
        time.sleep(0.05)
        for w in busy:
            job = w["job"]
            if job.result.exists():
                w["job"] = None
                done(job, _read_result(job, tr("its result could not be read")))
                continue
            code = w["proc"].poll()
            if code is None and time.monotonic() - job.started > limit:
                _kill_group(w["proc"].pid)
                code = w["proc"].wait()
                with speaking(job.lang):  # a sentence of the submission's feedback
                    why = trf("its grading ran past {limit} s and was stopped")
            elif code is None:
                continue
            else:
                with speaking(job.lang):
                    why = trf("the process grading it died ({_signal_name(code)})")
            _kill_group(w["proc"].pid)  # whatever it left behind
            pool.remove(w)
            done(job, _read_result(job, why) if job.result.exists() else lost(job, why, time.monotonic() - job.started))
    for w in pool:  # no more work: they end at the end of their input
        try:
            w["proc"].stdin.close()
            w["proc"].wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _kill_group(w["proc"].pid)


def _read_result(job: Job, why: str) -> Result:
    try:
        return _result(json.loads(job.result.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        with speaking(job.lang):  # why: a sentence of the grader's, in the submission's language
            return lost(job, tr(why), time.monotonic() - job.started)


def _signal_name(code) -> str:
    if code is None or code >= 0:
        return f"exit code {code}" if code is not None else "no exit code"
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def lost(job: Job, why: str, seconds: float) -> Result:
    """No result came back from the worker: zero for every exercise, and why."""
    source = nbformat.read(job.chapter.source, as_version=4)
    with speaking(job.lang):
        zeros = [Exercise(exercise_name(gid), gid, float(c.metadata.nbgrader.points),
                          message=tr("not graded: the grading of this notebook was stopped"))
                 for gid, c in nbgrader_cells(source).items() if is_graded(c)]
        return Result(job.student, job.chapter.name, zeros, [trf("{why}; your notebook scores 0")], seconds,
                      lang=job.lang)


def chapter_sources(source: Path) -> dict[str, Path]:
    """Chapter -> instructor notebook, from <source>/<chapter>.ipynb or nbgrader's <source>/<chapter>/<chapter>.ipynb."""
    found = {p.stem: p for p in source.glob("[0-9][0-9]_*.ipynb")}
    found.update({p.stem: p for p in source.glob("*/*.ipynb") if p.parent.name == p.stem})
    return dict(sorted(found.items()))


def grade(submissions: Path, out: Path, feedback: Path | None = None, workdir: Path | None = None,
          timeout: int = 120, jobs: int | None = None, memory: float = 4, notebook_timeout: int = 900,
          source: Path | None = None, students: list[str] | None = None, log=print, progress: bool = True,
          on_result=None, unsafe: bool = False) -> Path:
    """Grade every notebook in `submissions`; write the CSV to `out` (and HTML to `feedback`); return `out`.
    `on_result(result)` is called as each submission is done (the benchmark times them)."""
    from tqdm import tqdm
    from traitlets.config import Config, PyFileConfigLoader

    from .gradebook import record  # nbgrader: here, not in the workers (a second of imports each)

    submissions, source = Path(submissions).resolve(), Path(source or SOLUTIONS).resolve()
    sources = chapter_sources(source)
    found = find_submissions(submissions, list(sources))
    if students:
        found = {k: v for k, v in found.items() if k[0] in students}
    if not found:
        raise SystemExit(f"no submissions found in {submissions} (expected <student>/<chapter>/<chapter>.ipynb "
                         f"or <student>_<chapter>.ipynb, chapter one of {', '.join(sources)})")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="grading-")
        workdir = Path(tmp.name)
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    if (root / "nbgrader_config.py").exists():  # an nbgrader course directory: its course_id, gradebook, ...
        cfg.merge(PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config())
    cfg.CourseDirectory.root = str(root)
    if "db_url" not in cfg.CourseDirectory:
        cfg.CourseDirectory.db_url = f"sqlite:///{root}/gradebook.db"
    cfg.GenerateAssignment.force = True  # regrading after a fix regenerates the release
    api = nbgrader_api(cfg)
    db_url, course_id = api.coursedir.db_url, api.coursedir.course_id
    warnings.filterwarnings("ignore", module="nbgrader")  # SQLAlchemy session chatter

    jobs = jobs or os.cpu_count() or 1
    why = "" if unsafe else sandbox_works()
    if why:
        raise SystemExit(f"cannot grade: {why}\nEach submission must run in a sandbox of its own. To grade anyway, "
                         f"with every submission able to read and change the others and this machine's files, pass "
                         f"--unsafe-no-sandbox.")
    s = Settings(work=root, timeout=timeout, notebook_timeout=notebook_timeout, memory=int(memory * GiB),
                 unsafe=unsafe)
    fonts = root / "grader" / "matplotlib"
    if not any(fonts.glob("fontlist-*.json")):
        import subprocess

        fonts.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], capture_output=True, timeout=600,
                       env={**os.environ, "MPLCONFIGDIR": str(fonts)})
    s.fonts = str(fonts)
    chapters = {}
    for name in sorted({c for _, c in found}):
        src = root / "source" / name
        src.mkdir(parents=True, exist_ok=True)
        if sources[name].resolve() != (src / f"{name}.ipynb").resolve():  # --source may be the course's own
            shutil.copy(sources[name], src / f"{name}.ipynb")
        result = api.generate_assignment(name)
        if not result["success"]:
            raise SystemExit(f"nbgrader could not prepare {name}:\n{result['log']}")
        chapters[name] = Chapter(name, src / f"{name}.ipynb", root / "release" / name / f"{name}.ipynb")

    tasks = [Job(student, chapters[chapter], nb, lang=submission_language(nb)) for (student, chapter), nb in sorted(found.items())]
    jobs = min(jobs, len(tasks))
    s.threads = max(1, (os.cpu_count() or 1) // jobs)  # torch threads per kernel: the cores, shared out
    t0 = time.monotonic()
    results = {}
    bar = tqdm(total=len(tasks), desc="grading", unit="notebook", disable=not progress, dynamic_ncols=True)

    def done(job: Job, r: Result):
        results[(r.student, r.chapter)] = r
        bar.update()
        if on_result is not None:
            on_result(r)

    workers = root / "grader" / "workers"
    run_workers(tasks, jobs, s, workers, done)  # no submission can reach a worker: no regrading needed
    bar.close()
    elapsed = time.monotonic() - t0
    results = list(results.values())

    record(db_url, course_id, results, out)  # one writer of the gradebook: this process
    similar = similarity_notes(results, chapters)
    with open(out, newline="") as f:  # the similarity column, then the warning where nobody can miss it
        rows = list(csv.reader(f))
    rows[0].append("similar")
    rows[1:] = [row + ["; ".join(similar.get(row[0], []))] for row in rows[1:]]
    with open(out, "w", newline="") as f:
        if unsafe:
            f.write(f"# {UNSAFE}\n")
        csv.writer(f).writerows(rows)
    if feedback:
        for r in results:
            target = Path(feedback) / r.student / f"{r.chapter}.html"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(feedback_html(r, unsafe))
        (Path(feedback) / "index.html").write_text(index_html(results, similar, unsafe))
    for r in sorted(results, key=lambda r: (r.chapter, r.student)):
        for n in r.notes:
            log(f"{r.student} {r.chapter}: {n}")
    log(f"graded {len(results)} notebooks in {elapsed:.0f} s with {jobs} worker{'s' * (jobs > 1)}; wrote {out}")
    if tmp is not None:
        tmp.cleanup()
    return Path(out)


def main(argv=None, prog="python -m transformer_course.tools.grade"):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # started by run_workers
        return worker_loop(int(argv[1]))
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("submissions", type=Path, help="folder of student notebooks")
    p.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV to write (default grades.csv)")
    p.add_argument("--feedback", type=Path, help="also write per-student HTML feedback into this folder")
    p.add_argument("-j", "--jobs", type=int, help="notebooks graded at once (default: one per CPU core)")
    p.add_argument("--timeout", type=int, default=120, help="seconds a single cell may run (default 120)")
    p.add_argument("--notebook-timeout", type=int, default=900, help="seconds a whole notebook may run (default 900)")
    p.add_argument("--memory", type=float, default=4, help="GiB of memory one notebook may use (default 4; 0: no limit)")
    p.add_argument("--source", type=Path, help="instructor notebooks (default: the repository's solutions/; "
                                                "an nbgrader course's source/ works too)")
    p.add_argument("--student", action="append", help="grade only this student (repeat for more); with --workdir "
                                                     "the others keep their grades")
    p.add_argument("--workdir", type=Path, help="keep nbgrader's course directory here: gradebook, autograded "
                                                "notebooks, kernel logs (default: a temporary one)")
    p.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="grade although no sandbox can be made here (no bubblewrap or no user namespaces): every "
                        "submission can then read and change the others; the CSV and the feedback say so")
    args = p.parse_args(argv)
    grade(args.submissions, args.out, args.feedback, args.workdir, args.timeout, args.jobs, args.memory,
          args.notebook_timeout, args.source, args.student, unsafe=args.unsafe_no_sandbox)


if __name__ == "__main__":
    sys.exit(main())
