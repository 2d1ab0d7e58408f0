"""Docutils' default settings built once per parser, not once per paragraph (a Sphinx extension,
loaded by _config.yml).

MyST makes a throwaway document, with fresh default settings, for every piece of Markdown it
renders (myst_parser 4: `DocutilsRenderer.setup_render` evaluates `make_document()` even when it
is given the document), and docutils builds its whole option parser for each. The Chinese edition
renders each translated message on its own, thousands of them: that was a sixth of its build.
Each caller still gets settings of its own (a shallow copy, as docutils' `Values.copy` makes).
"""

from __future__ import annotations

import functools

import docutils.frontend

_build = docutils.frontend.get_default_settings


@functools.lru_cache(maxsize=None)
def _defaults(*components):
    return _build(*components)


def get_default_settings(*components):
    return _defaults(*components).copy()


def setup(app):
    docutils.frontend.get_default_settings = get_default_settings
    return {"parallel_read_safe": True, "parallel_write_safe": True}
