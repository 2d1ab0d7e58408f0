"""nbgrader's gradebook: the grader's scores recorded in it, and the CSV exported from it.

Only the grader's main process imports this (nbgrader takes a second to import), never its workers.
"""

from __future__ import annotations

import csv
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import ExportPlugin

from .grade import exercise_name


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


def record(db_url: str, course_id: str, results: list, out: Path) -> None:
    """Each result's exercise scores into the gradebook (sqlite takes one writer), then the CSV."""
    with Gradebook(db_url, course_id) as gb:
        for r in results:
            gb.update_or_create_student(r.student)
            gb.update_or_create_submission(r.chapter, r.student)
            for x in r.exercises:
                g = gb.find_grade(x.grade_id, r.chapter, r.chapter, r.student)
                g.auto_score, g.needs_manual_grade = x.score, False
        gb.db.commit()
        ExerciseCsvExporter(to=str(out)).export(gb)
