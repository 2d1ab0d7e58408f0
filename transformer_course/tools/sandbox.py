"""Where a submission runs: a bubblewrap sandbox, one per notebook, that the grader talks to over a socket.

    grader                                   sandbox (bwrap: own mount, PID, network, IPC and user
      |  cells to run, calls of the           namespaces; read-only system; user nobody)
      |  learner's objects  ----------->     python -m transformer_course.tools.sandbox
      |  plain data, proxies <-----------     (runs the notebook's cells; answers requests)

What the sandbox sees: the Python installation and the course package (read-only: what every
student has), a private /proc, an empty home folder, /tmp and /dev/shm of bounded size, and the
course's trained checkpoints read-only if the grading machine has them. Not the submissions
folder, not the grader's folders, not the instructor's files, not the network. Its memory
(RLIMIT_AS and RLIMIT_DATA; the tmpfs sizes bound files in memory), file size, process count
and time are bounded; when the grader closes it, everything it started dies with it (the PID
namespace goes).

The grader never runs the submission's code: it calls the learner's functions through
:mod:`transformer_course.tools.bridge`, and scores what comes back.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .bridge import Sandbox, TimeLimit, _alarm, describe_exception

GiB = 2**30
HOME = "/home/student"


class NoSandbox(RuntimeError):
    """bubblewrap is missing or cannot make namespaces here."""


@dataclass
class Limits:
    memory: int = 4 * GiB     # bytes of address space for the notebook's processes (0: none)
    tmp: int = 1 * GiB        # bytes of files in /tmp, the home folder and /dev/shm, each
    processes: int = 256      # processes and threads the notebook may have at once
    threads: int = 1          # torch threads
    file_size: int = 512 * 2**20


def bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise NoSandbox("bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` (Debian, Ubuntu), "
                        "`dnf install bubblewrap` (Fedora)")
    return path


def _binds(extra: list[tuple[str, str]]) -> list[str]:
    """Read-only binds: the system, the Python installation and the course package; nothing else."""
    from .notebooks import PACKAGE

    args, bound = [], []
    for p in ["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/opt",
              sys.base_prefix, sys.prefix, str(PACKAGE)]:
        if not os.path.lexists(p) or any(p == b or p.startswith(b + "/") for b in bound):
            continue
        if os.path.islink(p):  # /bin -> usr/bin where /usr is merged
            args += ["--symlink", os.readlink(p), p]
            continue
        bound.append(p)
        args += ["--ro-bind", p, p]
    for src, dst in extra:
        if os.path.exists(src):
            args += ["--ro-bind", src, dst]
    return args


def command(limits: Limits, extra: list[tuple[str, str]] = (), env: dict | None = None) -> list[str]:
    size = str(limits.tmp)
    cmd = [bwrap(), "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
           "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox",
           "--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs",
           "/dev/shm", "--size", size, "--tmpfs", HOME,
           *_binds(list(extra)),  # after the tmpfs mounts: a checkout or venv under /tmp stays visible
           "--chdir", HOME, "--clearenv"]
    for k, v in (env or {}).items():
        cmd += ["--setenv", k, v]
    return cmd + [sys.executable, "-m", "transformer_course.tools.sandbox"]


def _limit(limits: Limits):
    def apply():
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        if limits.memory:
            resource.setrlimit(resource.RLIMIT_DATA, (limits.memory, limits.memory))
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory + 2 * GiB, limits.memory + 2 * GiB))
    return apply


class Box:
    """A running sandbox: `sock` is the grader's end of the connection; close() ends everything in it."""

    def __init__(self, limits: Limits, extra=(), env: dict | None = None, log=subprocess.DEVNULL,
                 unsafe: bool = False):
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": HOME, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
               "MPLBACKEND": "agg", "MPLCONFIGDIR": "/tmp/matplotlib", "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "XDG_CACHE_HOME": "/tmp/cache", "TRITON_CACHE_DIR": "/tmp/triton",
               "OMP_NUM_THREADS": str(limits.threads), "MKL_NUM_THREADS": str(limits.threads),
               "TC_THREADS": str(limits.threads), **(env or {})}
        self.sock, theirs = socket.socketpair()
        env["TC_FD"] = str(theirs.fileno())
        if unsafe:  # no sandbox: only the limits, in a session of its own (the instructor accepted the risk)
            cmd, env = [sys.executable, "-m", "transformer_course.tools.sandbox"], {**os.environ, **env}
            os.makedirs(env.setdefault("HOME", HOME), exist_ok=True)
        else:
            cmd, env = command(limits, extra, env), {"TC_FD": env["TC_FD"]}
        self.proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=log, preexec_fn=_limit(limits), env=env, start_new_session=unsafe)
        theirs.close()

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()  # bwrap's PID namespace goes with it, and every process the notebook started
            self.proc.wait()


@functools.cache
def works() -> str:
    """'' if a sandbox can be made here, else why not."""
    see = "import importlib.util, transformer_course; assert importlib.util.find_spec('torch')"
    try:
        out = subprocess.run(command(Limits())[:-3] + [sys.executable, "-c", see],
                             capture_output=True, text=True, timeout=120)
    except (NoSandbox, OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return "" if out.returncode == 0 else f"bwrap could not make a sandbox here: {out.stderr.strip()}"


# --- inside the sandbox ---------------------------------------------------------------------------

def _shell():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance(colors="NoColor", history_length=0, cache_size=0)
    shell.history_manager.enabled = False
    return shell


def main() -> None:
    fd = int(os.environ.get("TC_FD", "3"))
    sock = socket.socket(fileno=fd)
    os.makedirs("/tmp/matplotlib", exist_ok=True)
    fonts = Path("/grader/matplotlib")
    for f in fonts.glob("fontlist-*.json") if fonts.is_dir() else []:
        shutil.copy(f, "/tmp/matplotlib")
    import torch

    torch.set_num_threads(int(os.environ.get("TC_THREADS", "1")))
    signal.signal(signal.SIGALRM, _alarm)
    shell = _shell()

    def run_cell(source: str):
        """Run one of the notebook's cells; None, or the error it raised."""
        try:
            result = shell.run_cell(source, store_history=True, silent=False)
        except TimeLimit as e:
            return describe_exception(e)
        err = result.error_before_exec or result.error_in_exec
        return None if err is None else describe_exception(err)

    server = Sandbox(sock, shell.user_ns, run_cell)
    try:
        server.serve()
    except SystemExit:
        pass
    except Exception:  # the grader went away
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
