"""The grading kernel: an IPython kernel in which a submission cannot take the machine down, stop
the batch or grade itself. `transformer_course.tools.grade` starts it for every submission:

    python -m transformer_course.tools.sandbox -f CONNECTION_FILE        (settings in $TC_SANDBOX, JSON)

What it does before the kernel starts:
- limits the data the process may allocate (RLIMIT_DATA): a notebook that eats memory gets a
  MemoryError (or torch's "can't allocate memory") instead of the machine's OOM killer;
- on Linux, runs the kernel in a PID namespace of its own (:func:`isolate`): it sees and can
  signal only its own processes, never the grader, its workers or other kernels. This process
  stays outside as the kernel's launcher: it passes on the grader's interrupts and ends with the
  kernel's exit status. Where namespaces are not allowed, the kernel runs without one and the
  audit hook below is the only guard;
- loads the chapter's own modules twice: the student edition (which the grader put first on the
  path) is what the notebook imports; the solution is kept for the checks, some of which build
  fixtures from it, and is shown only while a check's own code runs;
- adds a Python audit hook (PEP 578). A hook cannot be removed once added and the interpreter
  itself raises the events it listens to, so code in the notebook cannot switch it off:
  * "open" (every file opened, imports included) and process launches: reading the instructor's
    notebooks, the course package's solutions, other students' submissions or the grader's
    files raises PermissionError; so does writing, deleting or renaming anything outside the
    kernel's own run folder (its TMPDIR, caches and IPython's files are in it) and /dev;
  * "os.kill" and "os.killpg": signals to anything but the kernel's own processes are refused;
  * "compile" of a graded cell, just before it runs, and "transformer_course.checks.call" around
    every call of the learner's code inside a check: what the notebook put in place of the
    objects the checks rely on (torch.allclose, torch.equal, the check helpers, builtins, ...)
    and of IPython's own machinery that runs cells and shows their results (exception handlers,
    input and AST transformers, event callbacks, display hooks, sys.stdout, the kernel's
    messages) is put back, and an exercise function that is not the notebook's own (imported
    from the course package) is replaced by one that fails with the reason;
  * "transformer_course.checks.passed", raised by every check that passes: the hook counts it
    for the graded cell running now only when it comes from the checks' own code (the code
    objects loaded at start, in their own modules), called from the graded cell's top level.
    The grader gives a graded cell its points only when the hook saw as many such passes as the
    cell calls checks, so a notebook that changes how errors are shown (or what runs) cannot
    make a failing check look passed.
Everything it does is appended to the events file (JSON lines, opened before the notebook runs,
in a folder the notebook may not open), which the grader turns into scores and feedback. It is a
guard against the ways a submission is likely to go wrong or cheat, not a sandbox against an
attacker who controls the interpreter (ctypes can do anything): see book/grading.md.
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
# events that change files: the argument positions that are paths (and of their dir_fd)
WRITE_EVENTS = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
                "os.rename": ((0, 2), (1, 3)), "os.replace": ((0, 2), (1, 3)), "os.link": ((1, 3),),
                "os.symlink": ((1, 2),), "os.truncate": ((0, None),), "os.chmod": ((0, 2),),
                "os.chown": ((0, 3),), "os.utime": ((0, 3),), "shutil.rmtree": ((0, 1),),
                "sqlite3.connect": ((0, None),)}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
# IPython's attributes that decide how a cell runs and how its result is shown and reported
SHELL_STATE = {"custom_exceptions", "CustomTB", "InteractiveTB", "SyntaxTB", "displayhook", "display_pub",
               "display_trap", "builtin_trap", "compile", "input_transformer_manager", "ast_transformers",
               "input_transformers_post", "events", "excepthook", "kernel", "session", "iopub_socket",
               "data_pub", "payload_manager", "history_manager", "shell", "callbacks", "cleanup_transforms",
               "line_transforms", "token_transformers"}
SYS_STATE = ["stdout", "stderr", "stdin", "displayhook", "excepthook", "__stdout__", "__stderr__",
             "__displayhook__", "__excepthook__", "breakpointhook", "unraisablehook"]


def _strings(x):
    if isinstance(x, (str, bytes, os.PathLike)):
        yield os.fsdecode(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _strings(y)


def _is_function(x) -> bool:
    return callable(x) or isinstance(x, (classmethod, staticmethod, property))


def _ipython_own(x) -> bool:
    """Made by IPython or the kernel (which swap some of these themselves while a cell runs)?"""
    module = getattr(x, "__module__", None) or getattr(getattr(x, "__func__", None), "__module__", None)
    return isinstance(module, str) and module.startswith(("IPython.", "ipykernel.", "matplotlib_inline."))


class Guard:
    def __init__(self, cfg: dict, isolated: bool = False):
        self.forbidden = [os.path.realpath(p) for p in cfg.get("forbidden", [])]
        self.allowed = [os.path.realpath(p) for p in cfg.get("allowed", [])]
        self.writable = [os.path.realpath(p) for p in cfg.get("writable", [])]
        self.tests = {src.strip(): names for src, names in cfg.get("tests", {}).items()}
        self.graded = {src.strip(): gid for src, gid in cfg.get("graded", {}).items()}
        self.own_modules = set(cfg.get("solutions", {}))
        self.isolated = isolated  # in a PID namespace of its own: every pid it can name is its own
        self.events = open(cfg["events"], "a", buffering=1) if cfg.get("events") else None
        self.saved = None  # (object, name, dict) taken when the first cell is compiled
        self.shell = None  # (object, name, instance dict, lists) of IPython's machinery, taken then too
        self.busy = False  # our own work raises events too; ignore them
        self.cell = None   # execution count of the cell running now
        self.current = None       # grade_id of the graded cell running now
        self.current_file = None  # the file name IPython compiled it under
        self.modules = {}  # the chapter's own modules: name -> (student edition, solution)
        self.checking = 0  # > 0 while the check's own code runs, 0 while the learner's does
        from IPython.core.getipython import get_ipython
        import transformer_course.checks as checks
        self.get_ipython, self.CheckFailed = get_ipython, checks.CheckFailed
        self.passed_code = checks.passed.__code__
        self.check_codes = {}  # code object of every check -> the globals of its module

    def remember_checks(self) -> None:
        """The checks' own code, as loaded at start: only passes reported by it count."""
        for name, mod in list(sys.modules.items()):
            if name.startswith("transformer_course.checks.") and mod is not None:
                for key, fn in vars(mod).items():
                    code = getattr(fn, "__code__", None)
                    if key.startswith("check_") and code is not None and fn.__module__ == name:
                        self.check_codes[code] = vars(mod)

    # --- reporting ---

    def report(self, kind: str, detail: str, **extra) -> None:
        if self.events is None:
            return
        self.events.write(json.dumps({"cell": self.cell, "kind": kind, "detail": detail, **extra}) + "\n")

    # --- files ---

    @staticmethod
    def _under(p: str, roots) -> int:
        return max((len(r) for r in roots if p == r or p.startswith(r.rstrip(os.sep) + os.sep)), default=-1)

    def forbidden_path(self, path: str) -> bool:
        """The closest folder named decides: the venv inside a forbidden checkout is allowed, the
        package inside an allowed venv (a pip install) is not."""
        p = os.path.realpath(path)
        return self._under(p, self.forbidden) > self._under(p, self.allowed)

    def writable_path(self, path, dir_fd=None) -> bool:
        if isinstance(path, int):  # an open file: it was checked when it was opened
            return True
        path = os.fsdecode(path)
        if path == ":memory:" or path == "":
            return True
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        return self._under(os.path.realpath(path), self.writable) >= 0

    def refused_write(self, event: str, args: tuple):
        """The path a write outside the kernel's own folders would change, or None."""
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writes = (isinstance(flags, int) and flags & WRITE_FLAGS) or (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writes and isinstance(path, (str, bytes)) and not self.writable_path(path):
                return os.fsdecode(path)
            return None
        for at, fd_at in WRITE_EVENTS[event]:
            path = args[at] if at < len(args) else None
            fd = args[fd_at] if fd_at is not None and fd_at < len(args) else None
            if not isinstance(path, (str, bytes, os.PathLike)):
                continue
            if event == "os.mkdir" and os.path.isdir(path):
                continue  # exists already: changes nothing (makedirs(exist_ok=True))
            if event == "sqlite3.connect" and str(path).startswith("file:"):
                return str(path)
            if not self.writable_path(path, fd):
                return os.fsdecode(path)
        return None

    # --- signals ---

    def own_process(self, pid: int) -> bool:
        """Is `pid` this kernel or one of its descendants?"""
        if pid == os.getpid():
            return True
        if pid <= 0:
            return False  # a process group, or every process
        if self.isolated:
            return True  # in the kernel's own PID namespace: nothing else can be named
        try:
            while pid > 1:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    pid = int(f.read().rsplit(b")", 1)[1].split()[1])
                if pid == os.getpid():
                    return True
        except (OSError, ValueError, IndexError):
            pass
        return False

    def refused_signal(self, event: str, args: tuple):
        target = args[0]
        if not isinstance(target, int):
            return None
        if event == "os.killpg":  # a group of its own children's (started with a new session) only
            ok = target > 0 and target != os.getpgrp() and target != os.getpid() and self.own_process(target)
        else:
            ok = self.own_process(target)
        return None if ok else f"{event}({target}, {args[1]})"

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
        self.snapshot_shell()

    def snapshot_shell(self) -> None:
        """IPython's machinery that runs a cell and shows and reports what happened, and sys's hooks."""
        ip = self.get_ipython()
        if ip is None:
            return
        kernel = getattr(ip, "kernel", None)
        named = [(ip, "get_ipython()"), (ip.input_transformer_manager, "get_ipython().input_transformer_manager"),
                 (ip.events, "get_ipython().events"), (ip.displayhook, "get_ipython().displayhook"),
                 (ip.display_pub, "get_ipython().display_pub"), (ip.compile, "get_ipython().compile"),
                 (ip.InteractiveTB, "get_ipython().InteractiveTB"), (ip.SyntaxTB, "get_ipython().SyntaxTB"),
                 (sys.stdout, "sys.stdout"), (sys.stderr, "sys.stderr")]
        if kernel is not None:
            named += [(kernel, "get_ipython().kernel"), (kernel.session, "get_ipython().kernel.session")]
        objects, classes = [], {}
        for obj, name in named:
            for key in SHELL_STATE:  # traitlets make a trait's default when first read: make them now
                try:
                    getattr(obj, key, None)
                except Exception:
                    pass
            for state in (getattr(obj, "__dict__", None), getattr(obj, "_trait_values", None)):  # traitlets keep theirs apart
                if not isinstance(state, dict):
                    continue
                lists = {(k, None): list(v) for k, v in state.items() if k in SHELL_STATE and isinstance(v, list)}
                lists.update({(k, e): list(v) for k, d in state.items() if k == "callbacks" and isinstance(d, dict)
                              for e, v in d.items() if isinstance(v, list)})
                objects.append((obj, state, name, dict(state), lists))
            for cls in type(obj).__mro__[:-1]:
                if cls.__module__ != "builtins" and cls not in classes:
                    classes[cls] = dict(vars(cls))
        self.shell = (objects, classes, {k: getattr(sys, k, None) for k in SYS_STATE})

    def restore_shell(self) -> list[str]:
        """Put back IPython's machinery and sys's hooks as they were when the kernel started."""
        if self.shell is None:
            return []
        objects, classes, sys_state = self.shell
        restored, missing = [], object()
        for key, value in sys_state.items():
            if getattr(sys, key, None) is not value:
                setattr(sys, key, value)
                restored.append(f"sys.{key}")
        for cls, before in classes.items():
            now = vars(cls)
            for key in set(before) | set(now):
                old, new = before.get(key, missing), now.get(key, missing)
                if old is new or not (_is_function(old) or _is_function(new)):
                    continue
                try:
                    if old is missing:
                        delattr(cls, key)
                    else:
                        setattr(cls, key, old)
                    restored.append(f"{cls.__module__}.{cls.__qualname__}.{key}")
                except (AttributeError, TypeError):
                    pass
        for obj, now, name, before, lists in objects:
            for key in list(now):
                old, new = before.get(key, missing), now[key]
                if old is new or (_ipython_own(new) and key not in SHELL_STATE):
                    continue
                if old is missing:  # a new attribute hiding one of the class's methods
                    shadows = _is_function(getattr(type(obj), key, None))
                    if shadows or key in SHELL_STATE:
                        del now[key]
                        restored.append(f"{name}.{key}")
                elif key in SHELL_STATE or _is_function(old) or _is_function(new):
                    now[key] = old
                    restored.append(f"{name}.{key}")
            for key, old in before.items():  # deleted attributes
                if key not in now and (key in SHELL_STATE or _is_function(old)):
                    now[key] = old
                    restored.append(f"{name}.{key}")
            for (key, event), items in lists.items():
                current = now.get(key)
                label = f"{name}.{key}" + (f"[{event!r}]" if event is not None else "")
                if event is not None:
                    current = current.get(event) if isinstance(current, dict) else None
                    if current is None and isinstance(now.get(key), dict):
                        now[key][event] = current = []
                if isinstance(current, list) and (len(current) != len(items) or
                                                  any(a is not b for a, b in zip(current, items))):
                    changed = [x for x in current if all(x is not y for y in items)]
                    current[:] = items
                    if any(self.from_notebook(x) or not _ipython_own(x) and getattr(x, "__module__", "").startswith(
                            ("__main__", "IPython.display")) for x in changed):
                        restored.append(label)  # libraries' callbacks (matplotlib's, say) are removed silently
        return restored

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

    # --- passes ---

    def verified_pass(self) -> bool:
        """Does this "passed" event come from a check's own code, called by the graded cell itself?
        Frames: the hook, then `passed` (sys.audit is C), then the check, then the cell's top level."""
        f = sys._getframe(2)
        if f.f_code is not self.passed_code or f.f_globals is not vars(sys.modules["transformer_course.checks"]):
            return False
        check = f.f_back
        if check is None or self.check_codes.get(check.f_code) is not check.f_globals:
            return False
        cell = check.f_back
        return (cell is not None and cell.f_code.co_name == "<module>"
                and cell.f_code.co_filename == self.current_file)

    # --- the hook ---

    def __call__(self, event: str, args: tuple) -> None:
        if self.busy:
            return
        blocked = refused = None
        self.busy = True
        try:
            if event == "open":
                path = args[0]
                if isinstance(path, (str, bytes)) and self.forbidden_path(os.fsdecode(path)):
                    blocked = os.fsdecode(path)
                elif self.saved is not None:
                    refused = self.refused_write(event, args)
            elif event in WRITE_EVENTS:
                if self.saved is not None:
                    refused = self.refused_write(event, args)
            elif event in ("os.kill", "os.killpg"):
                refused = self.refused_signal(event, args)
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
                key = source.strip() if isinstance(source, str) else None
                names = self.tests.get(key)
                gid = self.graded.get(key)
                if names is not None or gid is not None:  # a graded cell is about to run
                    self._restore_and_report(shell=True)
                    self.not_yours(names or [])
                if gid is not None:
                    self.current, self.current_file = gid, args[1]
                    self.report("graded", gid, grade_id=gid)
                self.checking = int(names is not None)
                self.show(solution=bool(self.checking))
            elif event == "transformer_course.checks.call":  # the check calls the learner's code, or is back
                if args[0] == "start":
                    self.checking -= 1
                else:
                    self.checking += 1
                    self._restore_and_report()
                self.show(solution=self.checking > 0)
            elif event == "transformer_course.checks.passed":
                if self.current is not None and self.verified_pass():
                    self.report("passed", str(args[0]), grade_id=self.current)
                else:
                    self.report("unverified", str(args[0]), grade_id=self.current)
            if blocked is not None:
                self.report("blocked", blocked)
            if refused is not None:
                self.report("refused", refused)
        finally:
            self.busy = False
        if blocked is not None:
            raise PermissionError(13, "the grader does not let a submission read or run this", blocked)
        if refused is not None:
            raise PermissionError(13, "the grader does not let a submission change files outside its folder "
                                      "or signal other processes", refused)

    def _restore_and_report(self, shell: bool = False) -> None:
        restored = self.restore() + (self.restore_shell() if shell else [])
        if restored:
            self.report("restored", ", ".join(restored))


# --- the kernel's own PID namespace ---

CLONE_NEWUSER, CLONE_NEWPID, PR_SET_PDEATHSIG = 0x10000000, 0x20000000, 1


def isolate() -> bool:
    """Fork the kernel into a PID namespace of its own (where it is process 1: it can name and
    signal only the processes it starts, and they all end with it). This process stays outside as
    its launcher: it ignores the grader's interrupts (they reach the kernel too: both are in one
    process group) and exits as the kernel did. Returns, in the kernel, whether the namespace was
    made; where it cannot be (not Linux, user namespaces not allowed), the kernel runs without one."""
    import ctypes
    import signal

    made = False
    if sys.platform == "linux" and os.environ.get("TC_SANDBOX_NAMESPACE", "1") != "0":
        libc = ctypes.CDLL(None, use_errno=True)
        uid, gid = os.geteuid(), os.getegid()
        flags = CLONE_NEWPID | (0 if uid == 0 else CLONE_NEWUSER)
        if libc.unshare(flags) == 0:
            made = True
            if flags & CLONE_NEWUSER:  # the same user inside as outside: files keep their owner
                try:
                    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                                       ("gid_map", f"{gid} {gid} 1")):
                        with open(f"/proc/self/{name}", "w") as f:
                            f.write(text)
                except OSError:
                    pass
    launcher = os.getpid()
    if sys.platform == "linux":  # the process that started it gone (a worker killed): this one too
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    pid = os.fork()
    if pid == 0:
        if sys.platform == "linux":
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the launcher gone: the kernel too
            if os.getppid() not in (launcher, 0):
                os._exit(1)
        return made
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def namespaces_work() -> bool:
    """Can kernels run in a PID namespace of their own here? (The tests ask.)"""
    import subprocess

    code = "import os; from transformer_course.tools.sandbox import isolate; os._exit(0 if isolate() else 3)"
    return subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def main() -> None:
    cfg = json.loads(os.environ.pop("TC_SANDBOX", "{}"))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file behind
    isolated = isolate()  # from here on: the kernel
    if cfg.get("memory"):
        resource.setrlimit(resource.RLIMIT_DATA, (cfg["memory"], cfg["memory"]))
    # import what the checks use now, so that the snapshot holds the real things
    import importlib
    import importlib.util
    import pkgutil

    import torch  # noqa: F401
    import transformer_course.checks as checks
    guard = Guard(cfg, isolated)
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
    guard.remember_checks()
    guard.show(solution=False)
    guard.report("started", "pid namespace" if isolated else "no pid namespace")
    sys.addaudithook(guard)
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]  # as ipykernel_launcher does; IPython puts the cwd back
    from ipykernel import kernelapp
    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
