"""The instructor command grades a solved and an unsolved notebook into the expected CSV."""

import csv
import shutil

import pytest

from transformer_course.grade import grade
from transformer_course.notebooks import CHAPTERS, SOLUTIONS, read

# the quickest chapter to execute that has exercises
CHAPTER = "03_attention"


@pytest.mark.slow
def test_grades_solved_and_unsolved(tmp_path):
    sub = tmp_path / "submitted"
    (sub / "ada" / CHAPTER).mkdir(parents=True)
    shutil.copy(SOLUTIONS / f"{CHAPTER}.ipynb", sub / "ada" / CHAPTER / f"{CHAPTER}.ipynb")  # every exercise solved
    shutil.copy(CHAPTERS / f"{CHAPTER}.ipynb", sub / f"bob_{CHAPTER}.ipynb")             # the untouched stub
    (sub / f"eve_{CHAPTER}.ipynb").write_text("{ this is not a notebook")                 # broken

    out = grade(sub, tmp_path / "grades.csv", feedback=tmp_path / "feedback", log=lambda *a: None)

    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    exercises = [c.metadata["nbgrader"] for c in read(SOLUTIONS / f"{CHAPTER}.ipynb").cells
                 if c.metadata.get("nbgrader", {}).get("grade")]
    columns = [f"{CHAPTER}/{m['grade_id'].removeprefix('check_')}" for m in exercises]
    total = sum(m["points"] for m in exercises)
    assert list(rows["ada"]) == ["student", *columns, "total", "max"]
    assert rows["ada"]["total"] == f"{total:g}" and rows["ada"]["max"] == f"{total:g}"
    assert all(rows["ada"][c] == f"{m['points']:g}" for c, m in zip(columns, exercises))
    for student in ("bob", "eve"):
        assert all(rows[student][c] == "0" for c in columns) and rows[student]["total"] == "0"
    assert "not implemented yet" in (tmp_path / "feedback" / "bob" / f"{CHAPTER}.html").read_text()
