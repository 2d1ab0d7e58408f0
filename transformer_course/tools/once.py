"""What a notebook's long demos compute, computed once per version of their code and kept.

A training run that a chapter shows can take a minute of CPU; rerunning the notebook should not pay
it again, and changing the code it runs (a learner's own answer, say) should. So the result is
kept (`training.cached`) under a hash of the source of every notebook cell the run reaches
(`notebook_code`) and of its arguments. Chapter 08 explains it, with the two runs it keeps; the
course's own results ship with the package, so its tests never train them.
"""

from __future__ import annotations

import hashlib
import inspect
import linecache
import time


def notebook_code(fn) -> str:
    """The source of the notebook cells that define fn and every function or class of the
    notebook it reaches through global names, directly or not."""
    cells, todo, seen = set(), [fn], set()
    while todo:
        obj = inspect.unwrap(todo.pop())  # @torch.no_grad() wraps a function
        if id(obj) in seen or getattr(obj, "__module__", None) != "__main__":
            continue
        seen.add(id(obj))
        functions = [obj] if inspect.isfunction(obj) else [  # a class: its methods
            f for f in vars(obj).values() if inspect.isfunction(f)]
        codes = [(f.__code__, f.__globals__) for f in functions]
        while codes:
            code, names = codes.pop()
            cells.add("".join(linecache.getlines(code.co_filename)))
            # lambdas and inner functions are constants of the code that makes them
            codes += [(c, names) for c in code.co_consts if inspect.iscode(c)]
            todo += [names[n] for n in code.co_names if n in names]
    return "\n".join(sorted(cells))


def run_once(kind: str, fn, *args):
    """fn(*args), computed once per version of the notebook code it reaches and of args, then
    loaded (kept by training.cached as <kind>-<device>-<hash>.pt); prints the CPU time the run
    took. The result must be what `cached` keeps: tensors, numbers, strings and lists, tuples
    and dicts of them."""
    import torch

    from ..training import cached

    made = []

    def make():
        cpu = time.process_time()
        result = fn(*args)
        made.append(True)
        return {"result": result, "cpu_seconds": time.process_time() - cpu,
                "threads": torch.get_num_threads()}

    code = hashlib.sha256(notebook_code(fn).encode()).hexdigest()
    # the payload's keys are in the recipe: a payload kept by an older run_once is not read
    run = cached(kind, {"code": code, "args": repr(args),
                        "payload": ["result", "cpu_seconds", "threads"]}, make)
    n = run["threads"]
    took = f"{run['cpu_seconds']:.1f} s of CPU time ({n} thread{'s' if n > 1 else ''})"
    print(f"{kind}: ran in {took}" if made else f"{kind}: loaded the kept run, which took {took}")
    return run["result"]
