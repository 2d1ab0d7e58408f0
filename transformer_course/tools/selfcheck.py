"""Check your own work: run the checks of every exercise your notebook defines and print a summary.

In a notebook (Jupyter, Colab), in a cell at the end:

    from transformer_course.tools.selfcheck import selfcheck
    selfcheck()

From the command line (runs the whole notebook in a fresh kernel first):

    python -m transformer_course.tools.selfcheck chapters/03_attention.ipynb

Nothing is listed by hand: an exercise is a ``check_<name>`` function in one of the modules of
``transformer_course.checks``, and it is in play when the notebook defines ``<name>`` or has imported
a check from the same module. These are the checks the grader runs; it also runs hidden tests, the
same checks on other inputs, so a function that only works on the visible ones can still lose points.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

from ..checks import CheckFailed, NotImplementedYet

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


def exercises(namespace: dict) -> list[tuple[str, object, object]]:
    """(name, check, the notebook's function or None) for each exercise in play, in the checks' order."""
    out = []
    for mod in check_modules().values():
        checks = [(n.removeprefix("check_"), getattr(mod, n)) for n in getattr(mod, "__all__", dir(mod))
                  if n.startswith("check_") and callable(getattr(mod, n, None))]
        mine = {n: namespace.get(n) for n, _ in checks}
        mine = {n: f for n, f in mine.items() if callable(f) and getattr(f, "__module__", None) == "__main__"}
        imported = any(namespace.get(f"check_{n}") is c for n, c in checks)
        if mine or imported:
            out += [(n, c, mine.get(n)) for n, c in checks]
    return out


def run(name: str, check, fn) -> tuple[str, str]:
    """(status, message) for one exercise; the check's own words when it fails."""
    if fn is None:
        return "missing", f"{name} is not defined: run its cell first"
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            check(fn)
    except NotImplementedYet:
        return "todo", "not implemented yet"
    except CheckFailed as e:
        return "fail", str(e)
    except Exception as e:  # a bug in the check itself should not hide the others
        return "fail", f"the check raised {type(e).__name__}: {e}"
    said = printed.getvalue().strip().splitlines()  # "✓ name passed N checks"
    return "pass", said[-1].lstrip("\u2713 ").removeprefix(name).strip() if said else "passed"


class Results(dict):
    """name -> status ("pass", "fail", "todo", "missing"). The summary was printed already, so in
    Jupyter the result of a last-line `selfcheck()` shows nothing more (IPython calls
    _ipython_display_ instead of echoing the dict); elsewhere it is an ordinary dict."""

    def _ipython_display_(self):
        pass


def selfcheck(namespace: dict | None = None) -> Results:
    """Run the checks of the exercises in play; print a line per exercise; return name -> status."""
    ns = namespace if namespace is not None else sys._getframe(1).f_globals  # the notebook's globals
    found = exercises(ns)
    if not found:
        print("No exercises found: run the chapter's cells first (the self-check looks for the functions "
              "your notebook defines).")
        return Results()
    results = {name: run(name, check, fn) for name, check, fn in found}
    width = max(map(len, results))
    n_pass = sum(status == "pass" for status, _ in results.values())
    print(f"Self-check: {n_pass} of {len(results)} exercises pass")
    for name, (status, message) in results.items():
        print(f"  {MARK[status]} {name:<{width}}  {message}")
    if n_pass < len(results):
        print("Start with the first one that does not pass: fix its cell, then run its check again.")
    return Results({name: status for name, (status, _) in results.items()})


def where(cells, i: int) -> str:
    """A cell as the learner finds it in Jupyter (which numbers no cells): the heading of its
    section and its first line."""
    first = next((line.strip() for line in cells[i].source.splitlines()
                  if line.strip() and not line.startswith("#|")), "")
    first = first if len(first) <= 60 else first[:57] + "..."
    heading = next((line.lstrip("#").strip() for c in reversed(cells[:i]) if c.cell_type == "markdown"
                    for line in reversed(c.source.splitlines()) if line.startswith("#")), None)
    return (f'the cell under "{heading}" that begins `{first}`' if heading
            else f"the cell that begins `{first}`")


def main(argv=None, prog="python -m transformer_course.tools.selfcheck") -> int:
    """Run a notebook top to bottom in a fresh kernel, then the self-check in it."""
    import nbformat
    from nbclient import NotebookClient
    from tqdm import tqdm

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("notebook", type=Path)
    p.add_argument("--timeout", type=int, default=300, help="seconds a single cell may run (default 300)")
    args = p.parse_args(argv)

    nb = nbformat.read(args.notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "from transformer_course.tools.selfcheck import selfcheck as _tc_selfcheck\n"
        "_tc_status = _tc_selfcheck()\nimport json as _tc_json\nprint('TC-SELFCHECK', _tc_json.dumps(_tc_status))"))
    code = [c for c in nb.cells if c.cell_type == "code"]
    bar = tqdm(total=len(code), desc=f"running {args.notebook.name}", unit="cell", leave=False)
    client = NotebookClient(nb, timeout=args.timeout, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": str(args.notebook.resolve().parent)}},
                            on_cell_executed=lambda **kw: bar.update())
    client.execute(stderr=subprocess.DEVNULL)  # the kernel's own log lines are not for learners
    bar.close()

    last = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    summary, _, status = last.partition("TC-SELFCHECK ")
    print(summary.rstrip())
    # errors elsewhere, beyond the exercises not done yet (whose stubs other cells call too)
    errors = [(i, o) for i, c in enumerate(nb.cells[:-1]) if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error" and o.ename not in ("CheckFailed", "NotImplementedYet", "NotImplementedError")]
    if errors:
        print(f"{len(errors)} other cell{'s' * (len(errors) > 1)} raised an error, the first:")
        i, o = errors[0]
        print(f"  {where(nb.cells, i)}")
        print(f"  {o.ename}: {o.evalue.splitlines()[0] if o.evalue else ''}")
    err = next((o for o in nb.cells[-1].outputs if o.output_type == "error"), None)
    if err is not None:
        print(f"The self-check itself failed: {err.ename}: {err.evalue}")
        return 2
    results = json.loads(status or "{}")
    return 0 if results and all(v == "pass" for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
