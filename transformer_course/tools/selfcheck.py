"""Check your own work: run the checks of every exercise your notebook defines and print a summary.

In a notebook (Jupyter, Colab), in a cell at the end:

    from transformer_course.tools.selfcheck import selfcheck
    selfcheck()

From the command line (runs the whole notebook in a fresh kernel first):

    python -m transformer_course.tools.selfcheck chapters/03_attention.ipynb

Nothing is listed by hand: an exercise is a ``check_<name>(fn, seed=0)`` function in one of the
modules of ``transformer_course.checks``, and it is in play when the notebook defines ``<name>`` or
has imported a check from the same module (the command line takes the notebook's solution cells),
listed in the chapter's order. These are the checks the grader runs; it also runs hidden tests, the
same checks on other inputs, so a function that only works on the visible ones can still lose points.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

from ..checks import CheckFailed, NotImplementedYet
from ..i18n import language, speaking, tr, trf

MARK = {"pass": "\u2713", "fail": "\u2717", "todo": "\u00b7", "missing": "?"}


def check_modules() -> dict:
    """Module name -> module, for every importable transformer_course.checks.<topic>."""
    from .. import checks

    found = {}
    for info in pkgutil.iter_modules(checks.__path__):
        try:
            found[info.name] = importlib.import_module(f"{checks.__name__}.{info.name}")
        except Exception:  # a chapter being written; its notebook will say so
            pass
    return found


def exercise_checks(mod) -> dict:
    """Exercise name -> check, for the checks a module defines (its ``__all__`` where it has one)
    that take the learner's answer alone, ``check_<name>(fn, seed=0)``: a helper such as
    ``check_merge(fn, seed, cases)``, or a check imported from another module, is no exercise."""
    out = {}
    for n in list(getattr(mod, "__all__", vars(mod))):  # vars: in the order of definition
        f = getattr(mod, n, None)
        if not (n.startswith("check_") and inspect.isfunction(f) and f.__module__ == mod.__name__):
            continue
        rest = list(inspect.signature(f).parameters.values())[1:]
        if all(q.default is not q.empty or q.kind in (q.VAR_POSITIONAL, q.VAR_KEYWORD) for q in rest):
            out[n.removeprefix("check_")] = f
    return out


def exercises(namespace: dict, names: list[str] | None = None) -> list[tuple[str, object, object]]:
    """(name, check, the notebook's function or None) for each exercise in play, in chapter order.

    With ``names`` (the notebook's solution cells, in order, as the command line reads them), these.
    Without, every exercise of a check module the notebook uses (it defines one of its exercises or
    imported one of its checks), in the order the notebook defined them (a dict keeps the order in
    which names were first assigned, so cells run top to bottom list the chapter's order); those
    whose cells have not run yet come last."""
    modules = [exercise_checks(mod) for mod in check_modules().values()]
    if names is not None:
        every = {n: c for checks in modules for n, c in checks.items()}
        found = [(n, every[n]) for n in names if n in every]
    else:
        found = []
        for checks in modules:
            if any(namespace.get(f"check_{n}") is c or is_mine(namespace.get(n)) for n, c in checks.items()):
                found += checks.items()
        position = {n: i for i, n in enumerate(namespace)}
        last = len(position)

        def first_seen(item):
            n, _ = item
            return min(position.get(n, last), position.get(f"check_{n}", last))

        found.sort(key=first_seen)  # stable: the unseen keep their module's order
    return [(n, c, namespace.get(n)) for n, c in found]


def is_mine(f) -> bool:
    """A function or class the notebook defined (not one imported from the course's package)."""
    return callable(f) and getattr(f, "__module__", None) == "__main__"


def run(name: str, check, fn) -> tuple[str, str]:
    """(status, message) for one exercise; the check's own words when it fails."""
    if not is_mine(fn):
        home = getattr(fn, "__module__", "")
        if callable(fn) and home.startswith("transformer_course"):
            return "missing", (trf("{name} is the course's own here: a later cell imported it from {home} "
                               "over yours; run your cell again, then the self-check"))
        return "missing", trf("{name} is not defined: run its cell first")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            check(fn)
    except NotImplementedYet:
        return "todo", tr("not implemented yet")
    except CheckFailed as e:
        return "fail", str(e)
    except Exception as e:  # a bug in the check itself should not hide the others
        return "fail", trf("the check raised {type(e).__name__}: {e}")
    said = printed.getvalue().strip().splitlines()  # "✓ name passed N checks"
    return "pass", said[-1].lstrip("\u2713 ").removeprefix(name).strip() if said else "passed"


class Results(dict):
    """name -> status ("pass", "fail", "todo", "missing"). The summary was printed already, so in
    Jupyter the result of a last-line `selfcheck()` shows nothing more (IPython calls
    _ipython_display_ instead of echoing the dict); elsewhere it is an ordinary dict."""

    def _ipython_display_(self):
        pass


def selfcheck(namespace: dict | None = None, names: list[str] | None = None) -> Results:
    """Run the checks of the exercises in play; print a line per exercise, in chapter order; return
    name -> status. ``names``: the chapter's exercises in order, where the caller knows them."""
    ns = namespace if namespace is not None else sys._getframe(1).f_globals  # the notebook's globals
    found = exercises(ns, names)
    if not found:
        print(tr("No exercises found: run the chapter's cells first (the self-check looks for the functions "
              "your notebook defines)."))
        return Results()
    results = {name: run(name, check, fn) for name, check, fn in found}
    width = max(map(len, results))
    n_pass = sum(status == "pass" for status, _ in results.values())
    print(trf("Self-check: {n_pass} of {len(results)} exercises pass"))
    for name, (status, message) in results.items():
        print(f"  {MARK[status]} {name:<{width}}  {message}")
    if n_pass < len(results):
        print(tr("Start with the first one that does not pass: fix its cell, then run its check again."))
    return Results({name: status for name, (status, _) in results.items()})


def where(cells, i: int) -> str:
    """A cell as the learner finds it in Jupyter (which numbers no cells): the heading of its
    section and its first line."""
    first = next((line.strip() for line in cells[i].source.splitlines()
                  if line.strip() and not line.startswith("#|")), "")
    first = first if len(first) <= 60 else first[:57] + "..."
    heading = next((line.lstrip("#").strip() for c in reversed(cells[:i]) if c.cell_type == "markdown"
                    for line in reversed(c.source.splitlines()) if line.startswith("#")), None)
    return (trf('the cell under "{heading}" that begins `{first}`') if heading
            else trf("the cell that begins `{first}`"))


def solution_names(nb) -> list[tuple[int, str]]:
    """(cell index, exercise name) of the notebook's solution cells, in order."""
    return [(i, c.metadata.nbgrader.grade_id) for i, c in enumerate(nb.cells)
            if isinstance(c.metadata.get("nbgrader"), dict) and c.metadata.nbgrader.get("solution")
            and c.metadata.nbgrader.get("grade_id")]


def main(argv=None, prog="python -m transformer_course.tools.selfcheck") -> int:
    """Run a notebook top to bottom in a fresh kernel, then the self-check in it."""
    import nbformat

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("notebook", type=Path)
    p.add_argument("--timeout", type=int, default=300,
                   help="seconds a single cell may run before it is stopped (default 300)")
    args = p.parse_args(argv)

    nb = nbformat.read(args.notebook, as_version=4)
    lang = nb.metadata.get("transformer_course", {}).get("language", language())
    with speaking(lang if isinstance(lang, str) else "en"):  # a Chinese notebook gets its summary in Chinese
        return _run_notebook(nb, args, prog)


def _run_notebook(nb, args, prog) -> int:
    import logging
    import time

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError
    from tqdm import tqdm

    # Keep each answer as its cell made it: a later cell may import the course's function of the
    # same name over it. A kept cell follows each solution cell (from the last, so indices hold).
    solutions = solution_names(nb)
    for i, name in reversed(solutions):
        nb.cells.insert(i + 1, nbformat.v4.new_code_cell(
            f"_tc_mine = globals().get('_tc_mine', {{}})\n_tc_mine[{name!r}] = globals().get({name!r})",
            metadata={"tc_selfcheck": True}))
    nb.cells.append(nbformat.v4.new_code_cell(
        "from transformer_course.tools.selfcheck import selfcheck as _tc_selfcheck\n"
        "_tc_ns = {**globals(), **{k: v for k, v in globals().get('_tc_mine', {}).items() if v is not None}}\n"
        f"_tc_status = _tc_selfcheck(_tc_ns, {[n for _, n in solutions] or None!r})\n"
        "import json as _tc_json\nprint('TC-SELFCHECK', _tc_json.dumps(_tc_status))",
        metadata={"tc_selfcheck": True}))
    code = [c for c in nb.cells if c.cell_type == "code"]
    bar = tqdm(total=len(code), desc=f"running {args.notebook.name}", unit="cell", leave=False)
    started, slow = {}, []

    def start(cell, cell_index, **kw):
        started[cell_index] = time.monotonic()

    def executed(cell, cell_index, **kw):
        bar.update()
        if time.monotonic() - started[cell_index] >= args.timeout and any(
                o.output_type == "error" and o.ename == "KeyboardInterrupt" for o in cell.outputs):
            slow.append(cell_index)

    # A cell that runs past --timeout is interrupted and the notebook goes on, so that the summary
    # still comes; nbclient's own log lines about it are not for learners.
    # The self-check's own cells run without a limit.
    client = NotebookClient(nb, timeout=args.timeout, allow_errors=True, kernel_name="python3",
                            interrupt_on_timeout=True,
                            timeout_func=lambda cell: None if "tc_selfcheck" in cell.metadata
                            else args.timeout,
                            resources={"metadata": {"path": str(args.notebook.resolve().parent)}},
                            on_cell_start=start, on_cell_executed=executed)
    client.log.setLevel(logging.CRITICAL)
    try:
        client.execute(stderr=subprocess.DEVNULL)  # the kernel's own log lines are not for learners
    except DeadKernelError:
        bar.close()
        at = max(started, default=0)
        print(trf("The kernel died while running {where(nb.cells, at)} (out of memory?): no self-check. "
                  "Fix or skip that cell, then run the check again."))
        return 2
    bar.close()

    last = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    summary, _, status = last.partition("TC-SELFCHECK ")
    print(summary.rstrip())
    # errors elsewhere, beyond the exercises not done yet (whose stubs other cells call too)
    errors = [(i, o) for i, c in enumerate(nb.cells[:-1]) if c.cell_type == "code" and i not in slow
              for o in c.outputs if o.output_type == "error"
              and o.ename not in ("CheckFailed", "NotImplementedYet", "NotImplementedError")]
    if errors:
        n = len(errors)
        print(tr("1 other cell raised an error, the first:") if n == 1
              else trf("{n} other cells raised an error, the first:"))
        i, o = errors[0]
        print(f"  {where(nb.cells, i)}")
        print(f"  {o.ename}: {o.evalue.splitlines()[0] if o.evalue else ''}")
    if slow:
        n, first, longer = len(slow), where(nb.cells, slow[0]), 4 * args.timeout
        print(trf("1 cell ran longer than --timeout {args.timeout} s and was stopped, the first: {first}.") if n == 1
              else trf("{n} cells ran longer than --timeout {args.timeout} s and were stopped, the first: {first}."))
        print(trf("What needs it may have failed above. On a slow or busy machine, give cells longer: "
                  "{prog} {args.notebook} --timeout {longer}") if n == 1
              else trf("What needs them may have failed above. On a slow or busy machine, give cells longer: "
                       "{prog} {args.notebook} --timeout {longer}"))
    err = next((o for o in nb.cells[-1].outputs if o.output_type == "error"), None)
    if err is not None:
        print(trf("The self-check itself failed: {err.ename}: {err.evalue}"))
        return 2
    results = json.loads(status or "{}")
    return 0 if results and all(v == "pass" for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
