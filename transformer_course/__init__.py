"""Transformers, piece by piece.

- the transformer the chapters build, one module per chapter, generated from solutions/ by
  `bash tasks.sh sync` (machine, tokens, positions, attention, multihead, blocks, ffn, transformer,
  training, decoding, ...): edit the notebook, not the module;
- ``checks``: the exercise checks, one module per topic;
- ``tools``: what makes and grades the course (authoring, self-check, grading; the
  ``transformer-course`` command).

In a notebook, ``from transformer_course import selfcheck; selfcheck()`` checks every exercise.
"""


def __getattr__(name):  # keep `import transformer_course` light: the tools load when asked for
    if name == "selfcheck":
        from .tools.selfcheck import selfcheck
        return selfcheck
    raise AttributeError(f"module 'transformer_course' has no attribute {name!r}")
