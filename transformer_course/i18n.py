"""The package's messages in the learner's language, through Python's gettext.

The language is the environment variable ``TRANSFORMER_COURSE_LANG`` (``zh_CN``: Chinese; unset or
``en``: English), read at each message, so it can change while Python runs: the first cell of every
Chinese notebook sets it, and the grader sets it to each submission's language before checking it.

    tr("text")           the text in the current language
    trf("{n} rows")      an f-string in the current language, filled in from the caller's names

Module constants are translated when the module is imported: set the language before (the grader
runs each language's submissions in worker processes of their own).

The English text is the key (the msgid). The catalogs are transformer_course/locales/<lang>/
LC_MESSAGES/*.po, one per module, compiled into transformer_course.mo by `bash tasks.sh catalogs`.
"""

from __future__ import annotations

import contextlib
import functools
import gettext
import os
import sys
from pathlib import Path

LOCALEDIR = Path(__file__).parent / "locales"
SETTING = "TRANSFORMER_COURSE_LANG"


def language() -> str:
    return os.environ.get(SETTING, "en") or "en"


@contextlib.contextmanager
def speaking(lang: str):
    """Messages made inside the block are in lang (the grader writes each student's feedback so)."""
    before = os.environ.get(SETTING)
    os.environ[SETTING] = lang
    try:
        yield
    finally:
        if before is None:
            del os.environ[SETTING]
        else:
            os.environ[SETTING] = before


@functools.lru_cache(maxsize=None)
def _catalog(lang: str) -> gettext.NullTranslations:
    return gettext.translation("transformer_course", LOCALEDIR, languages=[lang], fallback=True)


def tr(message: str) -> str:
    return _catalog(language()).gettext(message)


def fstring_source(text: str) -> str:
    """The f-string literal whose body is text. Backslashes can only be in its literal parts (Python
    3.11 allows none inside the braces), so doubling them and writing newlines as \\n gives it."""
    body = text.replace("\\", "\\\\").replace("\n", "\\n")
    quote = next(q for q in ('"', "'", '"""', "'''") if q not in body and not body.endswith(q[0]))
    return f"f{quote}{body}{quote}"


@functools.lru_cache(maxsize=None)
def _compiled(text: str):
    return compile(fstring_source(text), "<message>", "eval")


def trf(template: str) -> str:
    frame = sys._getframe(1)
    try:  # one namespace, so that a comprehension inside the braces sees the caller's locals too
        return eval(_compiled(tr(template)), {**frame.f_globals, **frame.f_locals})
    finally:
        del frame
