"""Grade a folder of executed student notebooks into a CSV: a row per student, a column per exercise.

    python -m transformer_course.grade SUBMISSIONS [--out grades.csv] [--feedback DIR]

SUBMISSIONS holds either nbgrader's layout, ``<student>/<chapter>/<chapter>.ipynb``, or a flat
folder of ``<student>_<chapter>.ipynb`` files (chapter = a notebook stem such as ``03_attention``).

Under the hood this is nbgrader: the solutions become the assignments' source (so test cells a
student deleted or edited are restored from it and hidden tests run), ``autograde`` executes each
submission, and :class:`ExerciseCsvExporter` -- a small export plugin in the way nbgrader's docs
describe, also usable as ``nbgrader export --exporter=transformer_course.grade.ExerciseCsvExporter`` --
writes the CSV. A broken submission is graded as far as it goes and never stops the batch.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import ExportPlugin

from .notebooks import SOLUTIONS, solution_notebooks

CHECK_PREFIX = "check_"


def find_submissions(folder: Path, chapters: list[str]) -> dict[tuple[str, str], Path]:
    """(student, chapter) -> notebook, from either layout."""
    found = {}
    flat = re.compile(rf"^(?P<student>.+)_(?P<chapter>{'|'.join(map(re.escape, chapters))})$")
    for nb in sorted(folder.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in nb.parts:
            continue
        rel = nb.relative_to(folder).parts
        if len(rel) >= 3 and rel[-2] in chapters:  # <student>/<chapter>/<file>.ipynb
            found[(rel[-3], rel[-2])] = nb
        elif (m := flat.match(nb.stem)):
            found[(m["student"], m["chapter"])] = nb
    return found


def exercise_name(grade_cell_name: str) -> str:
    return grade_cell_name.removeprefix(CHECK_PREFIX)


class ExerciseCsvExporter(ExportPlugin):
    """One row per student; for each graded cell (exercise) of each assignment, its score; then the total."""

    def export(self, gradebook: Gradebook) -> None:
        columns, rows = [], {}
        for assignment in gradebook.assignments:
            if self.assignment and assignment.name not in self.assignment:
                continue
            cells = [(nb.name, cell.name, cell.max_score)
                     for nb in assignment.notebooks for cell in nb.grade_cells]
            columns += [f"{assignment.name}/{exercise_name(c)}" for _, c, _ in cells]
            for student in gradebook.students:
                if self.student and student.id not in self.student:
                    continue
                row = rows.setdefault(student.id, {"student": student.id, "total": 0.0, "max": 0.0})
                for nb, cell, max_score in cells:
                    try:
                        score = gradebook.find_grade(cell, nb, assignment.name, student.id).score
                    except MissingEntry:  # no submission: zero
                        score = 0.0
                    row[f"{assignment.name}/{exercise_name(cell)}"] = score
                    row["total"] += score
                    row["max"] += max_score
        with open(self.to or "grades.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["student", *columns, "total", "max"])
            writer.writeheader()
            for student in sorted(rows):
                writer.writerow({k: (f"{v:g}" if isinstance(v, float) else v) for k, v in rows[student].items()})


def grade(submissions: Path, out: Path, feedback: Path | None = None, workdir: Path | None = None,
          timeout: int = 120, log=print) -> Path:
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    chapters = [p.stem for p in solution_notebooks()]
    found = find_submissions(Path(submissions), chapters)
    if not found:
        raise SystemExit(f"no submissions found in {submissions} (expected <student>/<chapter>/<chapter>.ipynb "
                         f"or <student>_<chapter>.ipynb, chapter one of {', '.join(chapters)})")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory()
        workdir = Path(tmp.name)
    root = Path(workdir).resolve()
    cfg = Config()
    cfg.CourseDirectory.root = str(root)
    cfg.CourseDirectory.db_url = f"sqlite:///{root}/gradebook.db"
    cfg.Execute.timeout = timeout  # per cell: a submission that loops forever is stopped and graded
    cfg.Execute.allow_errors = True
    api = NbGraderAPI(config=cfg)
    warnings.filterwarnings("ignore", module="nbgrader")  # SQLAlchemy session chatter

    for chapter in sorted({c for _, c in found}):
        src = root / "source" / chapter
        src.mkdir(parents=True, exist_ok=True)
        shutil.copy(SOLUTIONS / f"{chapter}.ipynb", src)
        result = api.generate_assignment(chapter)
        if not result["success"]:
            raise SystemExit(f"nbgrader could not prepare {chapter}:\n{result['log']}")

    for i, ((student, chapter), nb) in enumerate(sorted(found.items()), 1):
        dest = root / "submitted" / student / chapter
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(nb, dest / f"{chapter}.ipynb")
        result = api.autograde(chapter, student)
        status = "graded" if result["success"] else "could not be graded (scored 0)"
        log(f"[{i}/{len(found)}] {student} {chapter}: {status}")
        if not result["success"]:  # the reason, without nbgrader's traceback
            reasons = [l for l in result.get("log", "").splitlines() if "[AutogradeApp | ERROR]" in l]
            log("  " + (reasons[0].split("ERROR]", 1)[1].strip() if reasons else "see nbgrader's log"))
        if feedback and result["success"]:
            fb = api.generate_feedback(chapter, student)
            if fb["success"]:
                target = Path(feedback) / student
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(root / "feedback" / student / chapter / f"{chapter}.html", target / f"{chapter}.html")

    with Gradebook(cfg.CourseDirectory.db_url) as gb:
        ExerciseCsvExporter(to=str(out)).export(gb)
    log(f"wrote {out}")
    if tmp is not None:
        tmp.cleanup()
    return Path(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m transformer_course.grade", description=__doc__.split("\n\n")[0])
    p.add_argument("submissions", type=Path, help="folder of student notebooks")
    p.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV to write (default grades.csv)")
    p.add_argument("--feedback", type=Path, help="also write per-student HTML feedback into this folder")
    p.add_argument("--workdir", type=Path, help="keep nbgrader's course directory here (default: a temporary one)")
    p.add_argument("--timeout", type=int, default=120, help="seconds a single cell may run (default 120)")
    args = p.parse_args(argv)
    grade(args.submissions, args.out, args.feedback, args.workdir, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
