"""The `transformer-course` command: one entry point per job (installed with the package).

    transformer-course grade SUBMISSIONS --out grades.csv --feedback feedback/   instructors: grade a class
    transformer-course check chapters/03_attention.ipynb                         learners: run a chapter, self-check it

Authors use `bash tasks.sh sync | book | test` (see CONTRIBUTING.md).
"""

from __future__ import annotations

import sys

COMMANDS = {"grade": "transformer_course.tools.grade", "check": "transformer_course.tools.selfcheck"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:], prog=f"transformer-course {argv[0]}") or 0


if __name__ == "__main__":
    sys.exit(main())
