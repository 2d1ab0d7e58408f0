"""The grading kernel: an IPython kernel in which a submission cannot take the machine down or
grade itself. `transformer_course.tools.grade` starts it for every submission:

    python -m transformer_course.tools.sandbox -f CONNECTION_FILE        (settings in $TC_SANDBOX, JSON)

What it does before the kernel starts:
- limits the data the process may allocate (RLIMIT_DATA): a notebook that eats memory gets a
  MemoryError (or torch's "can't allocate memory") instead of the machine's OOM killer;
- loads the chapter's own modules twice: the student edition (which the grader put first on the
  path) is what the notebook imports; the solution is kept for the checks, some of which build
  fixtures from it, and is shown only while a check's own code runs;
- adds a Python audit hook (PEP 578). A hook cannot be removed once added and the interpreter
  itself raises the events it listens to, so code in the notebook cannot switch it off:
  * "open" (every file opened, imports included) and process launches: reading the instructor's
    notebooks, the course package's solutions, other students' submissions or the grader's
    files raises PermissionError;
  * "compile" of a graded cell, just before it runs, and "transformer_course.checks.call" around
    every call of the learner's code inside a check: what the notebook put in place of the
    objects the checks rely on (torch.allclose, torch.equal, the check helpers, builtins, ...)
    is put back, and an exercise function that is not the notebook's own (imported from the
    course package) is replaced by one that fails with the reason.
Everything it does is appended to the events file (JSON lines), which the grader turns into
feedback. It is a guard against the ways a submission is likely to go wrong or cheat, not a
sandbox against an attacker who controls the interpreter (ctypes can do anything).
"""

from __future__ import annotations

import builtins
import json
import os
import resource
import sys

# Objects that checks use, restored before each graded cell; classes are restored attribute by attribute.
GUARDED_MODULES = ["builtins", "math", "random", "torch", "torch.nn", "torch.nn.functional", "torch.testing",
                   "numpy", "numpy.testing", "transformer_course.checks"]
GUARDED_CLASSES = [("torch", "Tensor"), ("torch.nn", "Module")]
# builtins that IPython may set to the values of cells
VOLATILE = {"_", "__", "___"}
SPAWN_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "pty.spawn"}


def _strings(x):
    if isinstance(x, (str, bytes, os.PathLike)):
        yield os.fsdecode(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _strings(y)


class Guard:
    def __init__(self, cfg: dict):
        self.forbidden = [os.path.realpath(p) for p in cfg.get("forbidden", [])]
        self.allowed = [os.path.realpath(p) for p in cfg.get("allowed", [])]
        self.tests = {src.strip(): names for src, names in cfg.get("tests", {}).items()}
        self.own_modules = set(cfg.get("solutions", {}))
        self.events = open(cfg["events"], "a", buffering=1) if cfg.get("events") else None
        self.saved = None  # (object, name, dict) taken when the first cell is compiled
        self.busy = False  # our own work raises events too; ignore them
        self.cell = None   # execution count of the cell running now
        self.modules = {}  # the chapter's own modules: name -> (student edition, solution)
        self.checking = 0  # > 0 while the check's own code runs, 0 while the learner's does
        from IPython.core.getipython import get_ipython
        from transformer_course.checks import CheckFailed
        self.get_ipython, self.CheckFailed = get_ipython, CheckFailed

    # --- reporting ---

    def report(self, kind: str, detail: str) -> None:
        if self.events is None:
            return
        self.events.write(json.dumps({"cell": self.cell, "kind": kind, "detail": detail}) + "\n")

    # --- files ---

    def forbidden_path(self, path: str) -> bool:
        """The closest folder named decides: the venv inside a forbidden checkout is allowed, the
        package inside an allowed venv (a pip install) is not."""
        p = os.path.realpath(path)
        best, verdict = -1, False
        for roots, no in ((self.forbidden, True), (self.allowed, False)):
            for root in roots:
                if (p == root or p.startswith(root + os.sep)) and len(root) > best:
                    best, verdict = len(root), no
        return verdict

    # --- pristine objects ---

    def snapshot(self) -> None:
        saved = []
        for name in GUARDED_MODULES + sorted(m for m in sys.modules if m.startswith("transformer_course.checks.")):
            if name in sys.modules:
                saved.append((sys.modules[name], name, dict(vars(sys.modules[name]))))
        for mod, cls in GUARDED_CLASSES:
            if mod in sys.modules and hasattr(sys.modules[mod], cls):
                owner = getattr(sys.modules[mod], cls)
                saved.append((owner, f"{mod}.{cls}", dict(vars(owner))))
        self.saved = saved

    def from_notebook(self, value) -> bool:
        """Was this object made by the notebook (a lambda, a def, an instance of a class of its own)?
        Libraries patch torch too (Triton's interpreter, torch._dynamo): those are left alone."""
        for x in (value, getattr(value, "func", None), getattr(value, "__func__", None), type(value)):
            if getattr(x, "__module__", None) == "__main__":
                return True
        code = getattr(value, "__code__", None)
        return code is not None and self.is_cell(code.co_filename)

    @staticmethod
    def is_cell(filename) -> bool:
        return isinstance(filename, str) and (os.sep + "ipykernel_" in filename or filename.startswith("<ipython-input"))

    def restore(self) -> list[str]:
        """Put back what the notebook replaced or deleted in the guarded objects (in the checks'
        modules: anything); return the names."""
        restored, missing = [], object()
        for owner, name, before in self.saved or []:
            now = vars(owner)
            ours = name.startswith("transformer_course.checks")
            for key, value in before.items():
                new = now.get(key, missing)
                if new is value or (owner is builtins and key in VOLATILE):
                    continue
                if not (ours or new is missing or self.from_notebook(new)):
                    continue
                try:
                    setattr(owner, key, value)
                    restored.append(f"{name}.{key}")
                except (AttributeError, TypeError):
                    pass
            if isinstance(owner, type(sys)) and sys.modules.get(name) is not owner:
                sys.modules[name] = owner
                restored.append(f"sys.modules[{name!r}]")
        return restored

    def not_yours(self, names) -> None:
        """An exercise function taken from the course package (its solution) fails, saying why."""
        ip = self.get_ipython()
        ns = ip.user_ns if ip is not None else vars(sys.modules["__main__"])
        for name in names:
            obj = ns.get(name)
            module = getattr(obj, "__module__", None)
            code = getattr(obj, "__code__", None)
            origin = module if module in self.own_modules else (
                code.co_filename if code is not None and self.forbidden_path(code.co_filename) else None)
            if obj is None or origin is None:
                continue
            ns[name] = self._refusal(name, origin)
            self.report("not_yours", name)

    def _refusal(self, name: str, origin: str):
        CheckFailed = self.CheckFailed

        def refused(*args, **kwargs):
            raise CheckFailed(f"{name} is the course package's own ({origin}), not a function your notebook "
                              f"defines: define {name} in its cell (the course's solution earns no points)")

        refused.__name__ = refused.__qualname__ = name
        return refused

    # --- the chapter's own modules ---

    def show(self, solution: bool) -> None:
        """Let checks use the chapter's solution (some build fixtures from it) while learner code,
        even called from inside a check, sees only the student edition."""
        for name, pair in self.modules.items():
            module = pair[solution]
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, module)

    # --- the hook ---

    def __call__(self, event: str, args: tuple) -> None:
        if self.busy:
            return
        blocked = None
        self.busy = True
        try:
            if event == "open":
                path = args[0]
                if isinstance(path, (str, bytes)) and self.forbidden_path(os.fsdecode(path)):
                    blocked = os.fsdecode(path)
            elif event in SPAWN_EVENTS:
                if any(root in s for s in _strings(args) for root in self.forbidden):
                    argv = next((a for a in args if isinstance(a, (list, tuple))), args[:1])
                    blocked = " ".join(_strings(argv))[:200]
            elif event == "compile" and self.is_cell(args[1]):
                # IPython compiles a cell (the source arrives as bytes) before running it
                ip = self.get_ipython()
                self.cell = ip.compile._filename_map.get(args[1]) if ip is not None else None
                if self.saved is None:
                    self.snapshot()  # the first cell, not yet run: nothing has been touched
                source = args[0].decode("utf-8", "replace") if isinstance(args[0], bytes) else args[0]
                names = self.tests.get(source.strip()) if isinstance(source, str) else None
                if names is not None:  # a graded cell is about to run
                    self._restore_and_report()
                    self.not_yours(names)
                self.checking = int(names is not None)
                self.show(solution=bool(self.checking))
            elif event == "transformer_course.checks.call":  # the check calls the learner's code, or is back
                if args[0] == "start":
                    self.checking -= 1
                else:
                    self.checking += 1
                    self._restore_and_report()
                self.show(solution=self.checking > 0)
            if blocked is not None:
                self.report("blocked", blocked)
        finally:
            self.busy = False
        if blocked is not None:
            raise PermissionError(13, "the grader does not let a submission read or run this", blocked)

    def _restore_and_report(self) -> None:
        restored = self.restore()
        if restored:
            self.report("restored", ", ".join(restored))


def main() -> None:
    cfg = json.loads(os.environ.pop("TC_SANDBOX", "{}"))
    if cfg.get("memory"):
        resource.setrlimit(resource.RLIMIT_DATA, (cfg["memory"], cfg["memory"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file behind
    # import what the checks use now, so that the snapshot holds the real things
    import importlib
    import importlib.util
    import pkgutil

    import torch  # noqa: F401
    import transformer_course.checks as checks
    guard = Guard(cfg)
    for name, path in cfg.get("solutions", {}).items():
        # the chapter's own modules: the student edition (in the package copy, first on the path)
        # for the notebook, and the solution, read now, before the hook forbids its file
        stub = importlib.import_module(name)
        spec = importlib.util.spec_from_file_location(name, path)
        solution = importlib.util.module_from_spec(spec)
        sys.modules[name] = solution
        spec.loader.exec_module(solution)
        guard.modules[name] = (stub, solution)
    for info in pkgutil.iter_modules(checks.__path__):  # with the solutions in place, should a check import them
        try:
            importlib.import_module(f"transformer_course.checks.{info.name}")
        except Exception:  # a chapter's checks being written; the notebook will say so if it needs them
            pass
    guard.show(solution=False)
    sys.addaudithook(guard)
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]  # as ipykernel_launcher does; IPython puts the cwd back
    from ipykernel import kernelapp
    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
