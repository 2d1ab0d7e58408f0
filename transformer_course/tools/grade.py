"""Grade a class: a folder of student notebooks into a CSV (a row per student, a column per exercise)
and per-student HTML feedback in the checks' own words.

    python -m transformer_course.tools.grade SUBMISSIONS [--out grades.csv] [--feedback DIR] [-j N]

SUBMISSIONS holds nbgrader's layout, ``<student>/<chapter>/<chapter>.ipynb`` (its ``submitted/``
folder), or a flat folder of ``<student>_<chapter>.ipynb`` files (chapter = a notebook stem such
as ``03_attention``).

How a submission is graded, and why it cannot spoil the batch:
- nbgrader prepares each chapter (``generate_assignment``: the gradebook and the student edition);
- every graded cell is put back as the instructor wrote it, hidden tests included, wherever the
  student edited, moved or deleted it (:func:`restore_tests`);
- the notebook runs in a fresh kernel of its own (nbclient) started by
  :mod:`transformer_course.tools.sandbox` -- in a PID namespace of its own, memory limited, reading
  the solutions and writing outside its folder refused, signals to other processes refused, the
  checks' tools and IPython's machinery restored before each graded cell -- in a folder where the
  package's copy of the chapter's own modules is the student edition's (so importing the solution
  gives a stub), with a time limit per cell and per notebook; a cell that times out or a kernel
  that dies costs the exercises it touches, and the reason goes in the feedback;
- a graded cell earns its points when each check it calls reported its pass to the kernel's audit
  hook (from the checks' own code, called by the cell itself) and it shows no error;
- submissions run in parallel in -j worker processes (:func:`run_workers`), each in a session of its
  own, writing each result to a file, with a progress bar: a worker that dies costs only the notebook
  it was grading (another takes its place), and a notebook whose grading was cut short while others
  ran is graded again alone at the end; the
  main process alone writes nbgrader's gradebook (sqlite takes one writer), and
  :class:`ExerciseCsvExporter` -- also usable as
  ``nbgrader export --exporter=transformer_course.tools.grade.ExerciseCsvExporter`` -- writes the CSV
  from it.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import csv
import html
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import ExportPlugin

from .notebooks import HIDDEN_BLOCK, PACKAGE, ROOT, SOLUTIONS, exports, nbgrader_api

CHECK_PREFIX = "check_"
KERNEL = "transformer-course-grader"
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


class ExerciseCsvExporter(ExportPlugin):
    """One row per student; for each graded cell (exercise) of each assignment, its score; then the total."""

    def export(self, gradebook: Gradebook) -> None:
        columns, rows = [], {}
        for assignment in gradebook.assignments:
            if self.assignment and assignment.name not in self.assignment:
                continue
            cells = [(nb.name, cell.name, cell.max_score)
                     for nb in assignment.notebooks for cell in nb.grade_cells]
            columns += [f"{assignment.name}/{exercise_name(c)}" for _, c, _ in cells]
            for student in gradebook.students:
                if self.student and student.id not in self.student:
                    continue
                row = rows.setdefault(student.id, {"student": student.id, "total": 0.0, "max": 0.0})
                for nb, cell, max_score in cells:
                    try:
                        score = gradebook.find_grade(cell, nb, assignment.name, student.id).score
                    except MissingEntry:  # no submission: zero
                        score = 0.0
                    row[f"{assignment.name}/{exercise_name(cell)}"] = score
                    row["total"] += score
                    row["max"] += max_score
        with open(self.to or "grades.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["student", *columns, "total", "max"])
            writer.writeheader()
            for student in sorted(rows):
                writer.writerow({k: (f"{v:g}" if isinstance(v, float) else v) for k, v in rows[student].items()})


# --- what grading needs to know, prepared once per chapter --------------------------------------

@dataclass
class Chapter:
    name: str
    source: Path                # the instructor's notebook: solutions and hidden tests
    release: Path               # the student edition nbgrader generated from it
    package: Path               # put first on the kernel's path: the course package, own modules stubbed
    solutions: dict[str, str]   # module the chapter exports -> its file in the course package (off limits)


@dataclass
class Settings:
    work: Path                  # nbgrader's course directory, and the grader's files under grader/
    timeout: int = 120          # seconds per cell
    notebook_timeout: int = 900 # seconds per notebook
    memory: int = 4 * GiB       # bytes of data one kernel may allocate (0: no limit)
    threads: int = 1            # torch threads per kernel
    forbidden: list[str] = field(default_factory=list)
    fonts: str = ""             # matplotlib's font list, built once, copied into each kernel's folder


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
    cut_short: str = ""         # why its grading may have been stopped from outside (then it is regraded alone)

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


def prepare_chapter(name: str, source: Path, release: Path, grader: Path) -> Chapter:
    """Copy the course package for the kernel, with the chapter's own modules as in the student edition."""
    own = exports([source])
    pkg = grader / "package" / name
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(PACKAGE, pkg / "transformer_course", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for mod, text in exports([release]).items():  # the same modules, stubs where the exercises are
        (pkg / "transformer_course" / f"{mod}.py").write_text(text)
    results = PACKAGE.parent / "benchmarks" / "results"  # what chapters plot (committed_results)
    if results.is_dir():  # in a clone; a pip install has its own copy under sys.prefix
        shutil.copytree(results, pkg / "benchmarks" / "results")
    import compileall  # once here: the kernels may not write their bytecode into it

    compileall.compile_dir(pkg, quiet=1)
    return Chapter(name, source, release, pkg, {f"transformer_course.{m}": str(PACKAGE / f"{m}.py") for m in own})


def write_kernelspec(grader: Path) -> Path:
    kernels = grader / "kernels"
    spec = kernels / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "transformer_course.tools.sandbox", "-f", "{connection_file}"],
        "display_name": "transformer-course grader", "language": "python"}))
    return kernels


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
                notes.setdefault(gid, []).append("your notebook had a second copy of this check cell; it was ignored")
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
                    "you changed this check cell; it was graded as the course wrote it")
            if meta.get("points") != want.metadata.nbgrader.get("points"):
                notes.setdefault(gid, []).append(
                    f"the points of this check were changed to {meta.get('points')!r}; it is worth "
                    f"{want.metadata.nbgrader['points']:g}")
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
        notes.setdefault(gid, []).append("this check cell was missing from your notebook; the grader put it back")
    for cell in cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.cells = cells
    return notes


def error_output(ename: str, evalue: str):
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


def cell_label(nb, i: int) -> str:
    first = next((l.strip() for l in nb.cells[i].source.splitlines() if l.strip()), "")
    return f"cell {i + 1} ({first[:50] + ('...' if len(first) > 50 else '')})"


def _signal_name(code) -> str:
    if code is None or code >= 0:
        return f"exit code {code}" if code is not None else "no exit code"
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


async def run_notebook(nb, env: dict, cwd: Path, kernels: Path, log_file, s: Settings,
                       state: dict | None = None) -> list[tuple[int | None, str]]:
    """Execute the code cells in order with nbclient, in the grading kernel; never raises for what the
    notebook does. Cells that could not run get an error output saying why. Returns notes as
    (cell index or None, text); `state["died"]` is the kernel's exit status if it died."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError
    from nbclient.util import ensure_async

    class Client(NotebookClient):
        """Outputs beyond a cap are dropped (errors never): a cell printing forever must not fill our memory."""
        cap = 2_000_000

        def output(self, outs, msg, display_id, cell_index):
            size = self.sizes.get(cell_index, 0) + len(str(msg["content"]))
            self.sizes[cell_index] = size
            if size > self.cap and msg["msg_type"] != "error":
                if size - len(str(msg["content"])) <= self.cap:
                    outs.append(nbformat.v4.new_output("stream", name="stdout",
                                                       text="\n[output cut here by the grader]\n"))
                return None
            return super().output(outs, msg, display_id, cell_index)

    replies = {}
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    client = Client(nb, km=km, allow_errors=True, interrupt_on_timeout=True, shutdown_kernel="immediate",
                    error_on_timeout={"ename": "TimeLimit", "evalue": "", "traceback": []}, record_timing=False,
                    startup_timeout=120, iopub_timeout=3,
                    on_cell_executed=lambda cell, cell_index, execute_reply: replies.__setitem__(cell_index, execute_reply))
    client.sizes = {}
    notes: list[tuple[int | None, str]] = []
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    deadline = time.monotonic() + s.notebook_timeout

    def not_run(after: int, why: str):
        for j in code:
            if j > after:
                nb.cells[j].outputs = [error_output("NotRun", why)]

    try:
        async with client.async_setup_kernel(cleanup_kc=True, cwd=str(cwd), env=env, stdout=log_file, stderr=log_file):
            for i in code:
                left = deadline - time.monotonic()
                if left < 1:
                    notes.append((None, f"the notebook used up its {s.notebook_timeout} s; the cells from "
                                        f"{cell_label(nb, i)} on were not run"))
                    not_run(i - 1, f"not run: the notebook used up its {s.notebook_timeout} s")
                    break
                limit = int(min(s.timeout, left))
                client.timeout = limit
                try:
                    await client.async_execute_cell(nb.cells[i], i)
                except DeadKernelError:
                    code_ = None
                    for _ in range(20):  # the process may take a moment to be reaped
                        code_ = km.provisioner.process.poll() if km.provisioner and km.provisioner.process else None
                        if code_ is not None:
                            break
                        await asyncio.sleep(0.1)
                    how = _signal_name(code_)
                    if state is not None:
                        state["died"] = code_
                    hint = " (out of memory, or killed?)" if how == "SIGKILL" else ""
                    nb.cells[i].outputs.append(error_output("KernelDied", f"the kernel died running this cell: {how}{hint}"))
                    notes.append((i, f"the kernel died running {cell_label(nb, i)}: {how}{hint}; "
                                     "the cells after it were not run"))
                    not_run(i, f"not run: the kernel died in {cell_label(nb, i)}")
                    break
                reply = replies.get(i, {}).get("content", {})
                if reply.get("ename") == "TimeLimit":  # nbclient interrupted the kernel
                    nb.cells[i].outputs.append(error_output(
                        "TimeLimit", f"this cell ran for more than {limit} s, the grader's limit, and was stopped"))
                    notes.append((i, f"{cell_label(nb, i)} ran past the {limit} s limit and was stopped"))
                    # does the kernel answer again? (a loop that swallows KeyboardInterrupt does not)
                    client.timeout = 5
                    msg_id = await ensure_async(client.kc.execute("", store_history=False))
                    try:
                        answered = await client.async_wait_for_reply(msg_id) is not None
                    except DeadKernelError:
                        answered = False
                    if not answered:
                        notes.append((i, "the kernel did not stop when interrupted; the cells after it were not run"))
                        not_run(i, f"not run: the kernel was stuck in {cell_label(nb, i)}")
                        break
    except Exception as e:  # the kernel could not start, say: our problem, reported, the batch goes on
        notes.append((None, f"the grader could not run this notebook: {type(e).__name__}: {e}"))
        for j in code:
            if nb.cells[j].execution_count is None and not nb.cells[j].outputs:
                nb.cells[j].outputs = [error_output("NotRun", "not run: the grader could not run the notebook")]
    finally:  # never leave a kernel behind: in a long batch they would pile up and fill the memory
        try:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
        except Exception:
            pass
    return notes


def _error(cell):
    return next((o for o in cell.get("outputs", []) if o.output_type == "error"), None)


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.get("outputs", []) if o.output_type == "stream" and o.name == "stdout")


GRADER_ERRORS = ("NotRun", "TimeLimit", "KernelDied", "KeyboardInterrupt", "NotPassed")  # reported as notes instead


def _message(err) -> str:
    """A check's failure in its own words; any other error with its type."""
    if err.ename in ("CheckFailed", "NotImplementedYet", *GRADER_ERRORS):
        return err.evalue
    return f"{err.ename}: {err.evalue}".strip()


MEMORY = re.compile(r"MemoryError|can't allocate memory|out of memory", re.I)


def check_calls(source: str) -> int:
    """How many checks a graded cell calls (hidden tests included): each must report its pass."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return 0
    return sum(isinstance(n, ast.Call) and (getattr(n.func, "id", None) or getattr(n.func, "attr", "")).startswith(
        CHECK_PREFIX) for n in ast.walk(tree))


def verified_passes(events: list[dict]) -> tuple[dict[str, int], set[str]]:
    """From the kernel's audit hook: per graded cell, the passes the checks' own code reported in its
    last run; and the graded cells the hook saw start (compiled exactly as the course wrote them)."""
    passes, seen = {}, set()
    for e in events:
        if e["kind"] == "graded":
            passes[e["grade_id"]] = 0
            seen.add(e["grade_id"])
        elif e["kind"] == "passed" and e.get("grade_id") in passes:
            passes[e["grade_id"]] += 1
    return passes, seen


NOT_SEEN = ("the grader did not see this check cell run as the course wrote it: your notebook changed the code "
            "that runs (an input transformer, say), so it earns no points")
NOT_PASSED = ("the check did not report a pass, yet no error was shown: your notebook changed how errors are "
              "handled or shown, so it earns no points (only the checks' own report of a pass counts)")


def score(nb, source, restore_notes: dict, events: list[dict], run_notes, s: Settings):
    """Per exercise: points when the checks of its graded cell reported all their passes to the kernel's
    audit hook and the cell raised nothing; the message, and the notes that concern it (those of the
    cells since the previous graded cell). Returns (exercises, notes about the whole notebook)."""
    by_count = {c.execution_count: i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.execution_count}
    cell_notes: dict[int | None, list[str]] = {}
    for i, text in run_notes:
        cell_notes.setdefault(i, []).append(text)
    grouped: dict[tuple, list[str]] = {}
    for e in events:  # several events of a kind in one cell make one note
        details = grouped.setdefault((by_count.get(e.get("cell")), e["kind"]), [])
        if e["detail"] not in details:
            details.append(e["detail"])
    for (i, kind), details in grouped.items():
        where = f" ({cell_label(nb, i)})" if i is not None else ""
        if kind == "blocked":
            cell_notes.setdefault(i, []).append(f"the grader refused to let your notebook read or run "
                                                f"{', '.join(details)}{where}")
        elif kind == "restored":
            cell_notes.setdefault(i, []).append(f"your notebook had replaced {', '.join(details)}; the grader "
                                                f"put back the originals before checking")
        elif kind == "refused":
            cell_notes.setdefault(i, []).append(f"the grader refused to let your notebook change files outside "
                                                f"its folder or signal other processes: {', '.join(details)}{where}")
        elif kind == "unverified":
            cell_notes.setdefault(i, []).append(f"a pass of {', '.join(details)} reported from outside the check "
                                                f"cell's own call of the check was ignored{where}")
    limit = f" (a notebook may use {s.memory / GiB:g} GiB)" if s.memory else ""
    for i, c in enumerate(nb.cells):
        err = _error(c)
        if err is not None and MEMORY.search(f"{err.ename} {err.evalue}") and i not in cell_notes:
            cell_notes[i] = [f"{cell_label(nb, i)} ran out of memory{limit}: {_message(err)}"]

    solutions = {c.metadata.nbgrader.grade_id: i for i, c in enumerate(nb.cells)
                 if c.metadata.get("nbgrader", {}).get("solution")}
    points = {gid: float(c.metadata.nbgrader.points) for gid, c in nbgrader_cells(source).items() if is_graded(c)}
    passes, seen = verified_passes(events)
    exercises, start = [], 0
    for i in [i for i, c in enumerate(nb.cells) if is_graded(c)]:
        cell = nb.cells[i]
        gid = cell.metadata.nbgrader.grade_id
        name = exercise_name(gid)
        ex = Exercise(name, gid, points[gid], output=_stdout(cell))
        err = _error(cell)
        if cell.execution_count is None and err is None:
            err = error_output("NotRun", "not run")
        need = check_calls(cell.source)
        if err is None and need and passes.get(gid, 0) < need:
            err = error_output("NotPassed", NOT_SEEN if gid not in seen else NOT_PASSED)
        ex.score = 0.0 if err is not None else ex.points
        ex.message = _message(err) if err is not None else next(
            (l for l in ex.output.splitlines() if l.strip()), "passed")
        ex.notes += restore_notes.get(gid, [])
        j = solutions.get(name)
        if j is not None:
            ex.code = nb.cells[j].source
            serr = _error(nb.cells[j])
            if err is not None and serr is not None and j not in cell_notes and serr.ename not in GRADER_ERRORS:
                ex.notes.append(f"your cell for {name} raised {_message(serr)}")
        if err is not None and "\u2713" in ex.output:
            ex.notes.append("the check you could see passed; the hidden tests (the same check on other inputs) "
                            "found the mistake above")
        for k in range(start, i + 1):
            ex.notes += [n for n in cell_notes.get(k, []) if n not in ex.notes]
        exercises.append(ex)
        start = i + 1
    general = cell_notes.get(None, []) + [n for k in range(start, len(nb.cells)) for n in cell_notes.get(k, [])]
    return exercises, general


def grade_submission(student: str, chapter: Chapter, path: Path, s: Settings, kernels: Path) -> Result:
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
                ex.message = "not graded: the file is not a valid notebook"
            return Result(student, chapter.name, zeros, [f"{path.name} is not a valid notebook: {e}"],
                          time.monotonic() - t0)
        release = nbformat.read(chapter.release, as_version=4)
        restore_notes = restore_tests(nb, source, release)

        grader = s.work / "grader"
        run = grader / "runs" / chapter.name / student
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        events_file = grader / "events" / chapter.name / f"{student}.jsonl"
        events_file.parent.mkdir(parents=True, exist_ok=True)
        events_file.write_text("")
        exercises = {c.metadata.nbgrader.grade_id for c in source.cells
                     if c.metadata.get("nbgrader", {}).get("solution")}
        tests = {c.source: [x for x in exercises if re.search(rf"\b{re.escape(x)}\b", HIDDEN_BLOCK.sub("", c.source))]
                 for c in nb.cells if is_graded(c)}
        graded = {c.source: c.metadata.nbgrader.grade_id for c in nb.cells if is_graded(c)}
        sandbox = {"memory": s.memory, "events": str(events_file), "tests": tests, "graded": graded,
                   "solutions": chapter.solutions, "forbidden": s.forbidden, "writable": [str(run), "/dev"],
                   "allowed": [sys.prefix, sys.base_prefix, sys.exec_prefix, str(run), str(chapter.package)]}
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("COVERAGE", "TC_", "JPY_")) or k == "TC_SANDBOX_NAMESPACE"}
        path = os.pathsep.join([str(chapter.package)] + [p for p in [env.get("PYTHONPATH")] if p])
        env.update(PYTHONPATH=path, TC_SANDBOX=json.dumps(sandbox), PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1",
                   OMP_NUM_THREADS=str(s.threads), MKL_NUM_THREADS=str(s.threads), MPLBACKEND="agg")
        # whatever the kernel and its libraries write goes into its own folder, the only one it may write to
        # (the checkpoints in ~/.cache/transformer-course stay readable)
        for var, sub in (("TMPDIR", "tmp"), ("MPLCONFIGDIR", "config/matplotlib"), ("IPYTHONDIR", "config/ipython"),
                         ("XDG_CACHE_HOME", "cache"), ("TRITON_CACHE_DIR", "cache/triton"),
                         ("TORCHINDUCTOR_CACHE_DIR", "cache/torchinductor")):
            (run / sub).mkdir(parents=True, exist_ok=True)
            env[var] = str(run / sub)
        for f in Path(s.fonts).glob("fontlist-*.json") if s.fonts else []:  # or each kernel scans the fonts again
            shutil.copy(f, run / "config/matplotlib")
        env.setdefault("TRANSFORMER_COURSE_CACHE", str(Path("~/.cache/transformer-course").expanduser()))
        log_path = grader / "logs" / chapter.name / f"{student}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        state = {}
        with open(log_path, "w") as log_file:
            run_notes = asyncio.run(run_notebook(nb, env, run, kernels, log_file, s, state))
        events = [json.loads(l) for l in events_file.read_text().splitlines() if l.strip()]
        exs, general = score(nb, source, restore_notes, events, run_notes, s)
        out = s.work / "autograded" / student / chapter.name / f"{chapter.name}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
        shutil.rmtree(run, ignore_errors=True)
        died = state.get("died")
        # a signal the kernel may not have sent itself (another process, the OOM killer): not a crash of its own
        cut = f"the kernel was killed by {_signal_name(died)}" if died is not None and died < 0 and -died in (
            signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT) else ""
        return Result(student, chapter.name, exs, general, time.monotonic() - t0, cut)
    except Exception as e:  # a bug of ours: say so, grade the rest
        for ex in zeros:
            ex.message = "not graded: the grader failed on this notebook"
        return Result(student, chapter.name, zeros,
                      [f"the grader failed on this notebook: {type(e).__name__}: {e}",
                       traceback.format_exc()], time.monotonic() - t0)


# --- feedback -------------------------------------------------------------------------------------

STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4em;text-align:left;
vertical-align:top}.pass td:first-child::before{content:"\\2713  ";color:#197a1b}.fail td:first-child::before{
content:"\\2717  ";color:#b3261e}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.note{color:#8a5a00}"""


def feedback_html(r: Result) -> str:
    e = html.escape
    rows = []
    for x in r.exercises:
        notes = "".join(f"<li class=note>{e(n)}</li>" for n in x.notes)
        rows.append(f"<tr class={'pass' if x.score == x.points else 'fail'}><td>{e(x.name)}</td>"
                    f"<td>{x.score:g} / {x.points:g}</td><td>{e(x.message)}"
                    f"{'<ul>' + notes + '</ul>' if notes else ''}</td></tr>")
    general = "".join(f"<li class=note>{e(n)}</li>" for n in r.notes if "Traceback" not in n)
    code = "".join(f"<h3>{e(x.name)}</h3><pre>{e(x.code)}</pre>"
                   + (f"<p>The check printed:</p><pre>{e(x.output)}</pre>" if x.output.strip() else "")
                   for x in r.exercises if x.code)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{e(r.chapter)}: {e(r.student)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{e(r.chapter)}: {e(r.student)}</h1>"
            f"<p><b>{r.score:g} of {r.max_score:g} points.</b> Each exercise earns its points when its check "
            f"(and the hidden tests behind it, the same check on other inputs) passes.</p>"
            f"<table><tr><th>exercise</th><th>points</th><th>result</th></tr>{''.join(rows)}</table>"
            + (f"<h2>About the whole notebook</h2><ul>{general}</ul>" if general else "")
            + (f"<h2>Your code</h2>{code}" if code else "") + "</body></html>\n")


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
    chapter = Chapter(**{k: (Path(v) if k in ("source", "release", "package") else v) for k, v in t["chapter"].items()})
    r = grade_submission(t["student"], chapter, Path(t["path"]), s, Path(t["kernels"]))
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
    crowded: bool = False       # another submission was graded while this one was
    result: Path | None = None  # where its worker writes the Result
    started: float = 0.0


def run_workers(jobs: list[Job], n: int, s: Settings, kernels: Path, folder: Path, done) -> None:
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
                                    "path": job.path, "settings": dataclasses.asdict(s), "kernels": kernels},
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

    def start() -> dict:
        with open(folder / f"worker-{next(ids)}.log", "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "transformer_course.tools.grade", "--worker",
                                     str(os.getpid())], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, text=True)
        return {"proc": proc, "job": None}

    while pending or any(w["job"] is not None for w in pool):
        for w in [w for w in pool if w["job"] is None] + [None] * (n - len(pool)):
            if not pending:
                break
            if w is None:
                w = start()
                pool.append(w)
            job = pending.pop(0)
            if not assign(w, job):
                pending.insert(0, job)
                _kill_group(w["proc"].pid)
                pool.remove(w)
        busy = [w for w in pool if w["job"] is not None]
        if len(busy) > 1:
            for w in busy:
                w["job"].crowded = True
        time.sleep(0.05)
        for w in busy:
            job = w["job"]
            if job.result.exists():
                w["job"] = None
                done(job, _read_result(job, "its result could not be read"))
                continue
            code = w["proc"].poll()
            if code is None and time.monotonic() - job.started > limit:
                _kill_group(w["proc"].pid)
                code = w["proc"].wait()
                why = f"its grading ran past {limit} s and was stopped"
            elif code is None:
                continue
            else:
                why = f"the process grading it died ({_signal_name(code)})"
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
        return lost(job, why, time.monotonic() - job.started)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def lost(job: Job, why: str, seconds: float) -> Result:
    """No result came back from the worker: zero for every exercise, and why."""
    source = nbformat.read(job.chapter.source, as_version=4)
    zeros = [Exercise(exercise_name(gid), gid, float(c.metadata.nbgrader.points),
                      message="not graded: the grading of this notebook was stopped")
             for gid, c in nbgrader_cells(source).items() if is_graded(c)]
    return Result(job.student, job.chapter.name, zeros, [f"{why}; your notebook scores 0"], seconds, why)


def chapter_sources(source: Path) -> dict[str, Path]:
    """Chapter -> instructor notebook, from <source>/<chapter>.ipynb or nbgrader's <source>/<chapter>/<chapter>.ipynb."""
    found = {p.stem: p for p in source.glob("[0-9][0-9]_*.ipynb")}
    found.update({p.stem: p for p in source.glob("*/*.ipynb") if p.parent.name == p.stem})
    return dict(sorted(found.items()))


def grade(submissions: Path, out: Path, feedback: Path | None = None, workdir: Path | None = None,
          timeout: int = 120, jobs: int | None = None, memory: float = 4, notebook_timeout: int = 900,
          source: Path | None = None, students: list[str] | None = None, log=print, progress: bool = True,
          on_result=None) -> Path:
    """Grade every notebook in `submissions`; write the CSV to `out` (and HTML to `feedback`); return `out`.
    `on_result(result)` is called as each submission is done (the benchmark times them)."""
    from tqdm import tqdm
    from traitlets.config import Config, PyFileConfigLoader

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
    # What a submission may not read: the solutions (the checkout, the package's own copy), the
    # other submissions, the grader's files. Its own run folder and package copy are let through.
    forbidden = [PACKAGE, source, submissions, root] + ([ROOT] if (ROOT / "solutions").is_dir() else [])
    s = Settings(work=root, timeout=timeout, notebook_timeout=notebook_timeout, memory=int(memory * GiB),
                 forbidden=[str(p) for p in forbidden])
    kernels = write_kernelspec(root / "grader")
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
        chapters[name] = prepare_chapter(name, src / f"{name}.ipynb",
                                         root / "release" / name / f"{name}.ipynb", root / "grader")

    tasks = [Job(student, chapters[chapter], nb) for (student, chapter), nb in sorted(found.items())]
    jobs = min(jobs, len(tasks))
    s.threads = max(1, (os.cpu_count() or 1) // jobs)  # torch threads per kernel: the cores, shared out
    t0 = time.monotonic()
    results, again = {}, []
    bar = tqdm(total=len(tasks), desc="grading", unit="notebook", disable=not progress, dynamic_ncols=True)

    def done(job: Job, r: Result):
        if r.cut_short and job.crowded:  # perhaps by another submission: regraded alone at the end
            again.append(job)
            return
        results[(r.student, r.chapter)] = r
        bar.update()
        if on_result is not None:
            on_result(r)

    workers = root / "grader" / "workers"
    run_workers(tasks, jobs, s, kernels, workers, done)
    for job in again:  # one at a time: what happens now is the notebook's own doing, and counts
        def alone(job: Job, r: Result):
            r.notes.insert(0, f"its grading was cut short ({r.cut_short or 'see below'}) while other notebooks "
                              "were graded at the same time; it was graded again on its own, and this is that result")
            job.crowded = False
            done(job, r)
        run_workers([job], 1, s, kernels, workers, alone)
    bar.close()
    elapsed = time.monotonic() - t0
    results = list(results.values())

    with Gradebook(db_url, course_id) as gb:  # one writer: this process
        for r in results:
            gb.update_or_create_student(r.student)
            gb.update_or_create_submission(r.chapter, r.student)
            for x in r.exercises:
                g = gb.find_grade(x.grade_id, r.chapter, r.chapter, r.student)
                g.auto_score, g.needs_manual_grade = x.score, False
        gb.db.commit()
        ExerciseCsvExporter(to=str(out)).export(gb)
    if feedback:
        for r in results:
            target = Path(feedback) / r.student / f"{r.chapter}.html"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(feedback_html(r))
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
    args = p.parse_args(argv)
    grade(args.submissions, args.out, args.feedback, args.workdir, args.timeout, args.jobs, args.memory,
          args.notebook_timeout, args.source, args.student)


if __name__ == "__main__":
    sys.exit(main())
