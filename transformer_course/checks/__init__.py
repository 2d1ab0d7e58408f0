"""Checks that teach: compare a learner's function with an oracle and say what is wrong.

Every exercise in the course has a ``check_<name>(fn)`` in ``transformer_course.checks.<topic>``.
A check calls the learner's ``fn`` on ordinary and awkward inputs, compares with an independent
oracle (PyTorch's own function where one exists, or an exact mathematical property), and either
prints one line of praise or raises :class:`CheckFailed` with a message in the learner's terms:

    CheckFailed: scaled_dot_product_attention: rows of your attention weights sum to 1.37, expected 1

The helpers below are the vocabulary the topic modules are written in.
"""

from __future__ import annotations

import linecache
import math
import os
import sys
import sysconfig
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

from ..i18n import tr, trf


class CheckFailed(AssertionError):
    """A check found a mistake. Its message is meant for the learner, so no traceback is shown."""

    def _render_traceback_(self):  # IPython calls this instead of printing the traceback
        return [f"\x1b[31mCheckFailed\x1b[0m: {self}"]


class NotImplementedYet(CheckFailed):
    """The learner's function still raises NotImplementedError."""


def fail(msg: str):
    raise CheckFailed(msg)


def name_of(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def describe(x: Any) -> str:
    """A short description of an argument, for messages: what it is, never its contents.

    Tensors by shape and dtype, modules by class and parameter count, functions and classes by
    name, long sequences by length; anything else whose repr is long or an address by its type."""
    if isinstance(x, torch.Tensor):
        return trf("tensor of shape {list(x.shape)} ({str(x.dtype).removeprefix('torch.')})")
    if isinstance(x, torch.nn.Module):
        n = sum(p.numel() for p in x.parameters())
        return trf("{x.__class__.__name__} (nn.Module, {n:,} parameters)")
    if isinstance(x, type):
        return trf("class {x.__name__}")
    if callable(x) and hasattr(x, "__name__"):
        return trf("function {x.__name__}")
    if isinstance(x, str):
        return repr(x if len(x) <= 30 else x[:27] + "...")
    if isinstance(x, (list, tuple)):
        if len(x) > 6:
            return trf("{type(x).__name__} of length {len(x)}")
        inner = ", ".join(describe(v) for v in x)
        return f"[{inner}]" if isinstance(x, list) else f"({inner}{',' * (len(x) == 1)})"
    if isinstance(x, (bool, int, float, complex, type(None), torch.dtype, torch.device)):
        return repr(x)
    shown = repr(x)
    if len(shown) > 60 or " at 0x" in shown:
        return trf("a {type(x).__name__} object")
    return shown


# PyTorch and other installed packages, the standard library, and this course's own package
_NOT_LEARNERS = tuple({str(Path(p).resolve()) + os.sep for p in (
    *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")),
    Path(torch.__file__).parent, Path(__file__).parents[1])})


def _learners_line(tb) -> str:
    """'at <where>: <source line>' for the innermost frame of the learner's own code, else ''.

    The learner's code is whatever is not PyTorch, the standard library or this course's package:
    a notebook cell ("Cell In[12], line 4", as IPython names it) or a file of their own."""
    where = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        real = filename if filename.startswith("<") else str(Path(filename).resolve())
        if not real.startswith(_NOT_LEARNERS) and not real.startswith("<frozen"):
            where = (filename, tb.tb_lineno)
        tb = tb.tb_next
    if where is None:
        return ""
    filename, lineno = where
    place = trf("{filename}, line {lineno}")
    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    named = getattr(getattr(shell, "compile", None), "format_code_name", lambda _: None)(filename)
    if named:
        place = trf("{named[0]} {named[1]}, line {lineno}")
    text = linecache.getline(filename, lineno).strip()
    return trf("\n  at {place}") + (f":  {text}" if text else "")


def _where(tb) -> str:
    try:        # a message without the line is better than a crash while making it
        return _learners_line(tb)
    except Exception:
        return ""


def call(fn: Callable, *args, **kwargs):
    """Call the learner's function, turning 'not done yet' and crashes into a clear message."""
    # While grading, fn is a proxy (transformer_course.tools.bridge): the learner's code runs in a
    # sandbox, and its exceptions arrive with the learner's line already found (`where`).
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise NotImplementedYet(
            trf("{name_of(fn)} is not implemented yet: replace `raise NotImplementedError()` "
            "with your code, then run this check again.")
        ) from None
    except CheckFailed:
        raise
    except Exception as e:  # the learner's bug, reported with the inputs and the line that failed
        shown = ", ".join([describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()])
        where = getattr(e, "where", None) or _where(e.__traceback__)
        raise CheckFailed(trf("{name_of(fn)}({shown}) raised {type(e).__name__}: {e}{where}")) from e


def beside(helper: Callable, fn: Callable, **kwargs) -> Callable:
    """`(*args) -> helper(fn, *args, **kwargs)`, run where fn runs. While grading, fn is a proxy of
    the learner's code in its sandbox, and a helper that calls it from threads (the simulated ranks
    of a ring) must run there too; helper must be importable (a module-level function)."""
    def run(*args):
        if hasattr(type(fn), "_beside"):
            return fn._beside(helper, (fn, *args), kwargs)
        return helper(fn, *args, **kwargs)

    run.__name__ = name_of(fn)
    return run


def expect_tensor(got: Any, what: str) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        fail(trf("{what} should be a torch.Tensor, got {type(got).__name__}"))
    return got


def expect_shape(got: torch.Tensor, shape, what: str) -> None:
    expect_tensor(got, what)
    if tuple(got.shape) != tuple(shape):
        fail(trf("{what} has shape {list(got.shape)}, expected {list(shape)}"))


def expect_dtype(got: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    if got.dtype != dtype:
        fail(trf("{what} has dtype {got.dtype}, expected {dtype}"))


def expect_close(got: torch.Tensor, want: torch.Tensor, what: str, atol: float = 1e-5,
                 rtol: float = 1e-4, hint: str = "") -> None:
    """Shape, then values; on a mismatch, say where and by how much."""
    expect_shape(got, want.shape, what)
    got_f, want_f = got.detach().double().cpu(), want.detach().double().cpu()
    if torch.isnan(got_f).any() and not torch.isnan(want_f).any():
        where = tuple(torch.nonzero(torch.isnan(got_f))[0].tolist())
        fail(trf("{what} contains NaN (first at index {list(where)}), expected finite values")
             + (trf(". {hint}") if hint else ""))
    err = (got_f - want_f).abs().nan_to_num(0.0)
    bad = err > atol + rtol * want_f.abs().nan_to_num(0.0)
    if bad.any():
        idx = tuple(torch.nonzero(bad)[0].tolist())
        fail(
            trf("{what} differs from the expected values: at index {list(idx)} you have "
            "{got_f[idx].item():.6g}, expected {want_f[idx].item():.6g} "
            "(largest difference {err.max().item():.3g}, in {int(bad.sum())} of {bad.numel()} entries)")
            + (trf(". {hint}") if hint else "")
        )


def expect_equal(got: Any, want: Any, what: str, hint: str = "") -> None:
    if got != want:
        fail(trf("{what} is {got!r}, expected {want!r}") + (trf(". {hint}") if hint else ""))


@contextmanager
def seeded(seed: int):
    """Run a block with a fixed torch seed without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


_reported: set = set()


def _cell() -> int | None:
    """The number of the notebook cell running now (None outside IPython)."""
    try:
        return get_ipython().execution_count  # noqa: F821 (defined inside IPython)
    except NameError:
        return None


def passed(fn: Callable, n_cases: int) -> None:
    """Report success, once per function and cell: a grader's hidden tests rerun the check silently."""
    key = (_cell(), name_of(fn))
    if key[0] is not None and key in _reported:
        return
    _reported.add(key)
    print(trf("\u2713 {name_of(fn)} passed {n_cases} checks"))


def approx(x: float, digits: int = 4) -> str:
    """Round for messages so they read well and are stable."""
    return f"{x:.{digits}g}" if math.isfinite(x) else str(x)
