"""Everything generated from solutions/ is up to date, and each edition holds what it should."""

import re
import tomllib

import pytest
import yaml

from transformer_course.tools.notebooks import (CHAPTERS, ROOT, drift, read, reader_edition,
                                          solution_notebooks)

NOTEBOOKS = solution_notebooks()
IDS = [p.stem for p in NOTEBOOKS]


def test_there_are_chapters():
    assert [p.stem[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(len(NOTEBOOKS))]
    assert len(NOTEBOOKS) >= 4


def test_nothing_generated_has_drifted():
    """Package exports and the student edition match solutions/ (else: `bash tasks.sh sync`)."""
    assert drift() == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_edition_has_no_solutions_or_outputs(path):
    nb = read(CHAPTERS / path.name)
    text = "\n".join(c.source for c in nb.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    stubs = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert stubs and all("raise NotImplementedError()" in c.source for c in stubs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_solution_has_its_outputs_and_runs_clean(path):
    """Solutions are committed executed (the book is built from their outputs), without errors."""
    code = [c for c in read(path).cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "execute it: python -m transformer_course.tools.notebooks execute"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0]["evalue"] if errors else ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_chapter_shape(path):
    """Every chapter has the same sections, in the same order."""
    want = ["Goal", "Build it", "Check it", "Experiment", "On the GPU", "Questions", "Exercises", "Summary"]
    heads = [m for c in read(path).cells if c.cell_type == "markdown"
             for m in re.findall(r"^## (.+?)\s*$", c.source, re.M)]
    found = [h for h in heads if h in want]
    assert found == want, f"sections found: {heads}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_each_exercise_is_followed_by_a_graded_check(path):
    cells = read(path).cells
    for i, cell in enumerate(cells):
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            later = [c.metadata.get("nbgrader", {}) for c in cells[i + 1:]]
            graded = [m for m in later if m.get("grade")]
            assert graded and graded[0]["grade_id"] == f"check_{meta['grade_id']}", \
                f"{meta['grade_id']}: the next graded cell should be check_{meta['grade_id']}"


def test_colab_cells_install_this_version_from_the_repository():
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for path in NOTEBOOKS:
        setup = [c for c in read(path).cells if "colab-setup" in c.metadata.get("tags", [])]
        assert len(setup) == 1, f"{path.name}: one colab-setup cell"
        assert url in setup[0].source and f"@v{version}" in setup[0].source, \
            f"{path.name}: the colab-setup cell must install v{version} (pyproject.toml) from {url}"
        assert "%pip" not in setup[0].source  # %pip tells learners they "may need to restart the kernel"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_reader_edition_hides_solutions_and_drops_hidden_tests(path):
    nb = reader_edition(read(path))
    text = "\n".join(c.source for c in nb.cells)
    assert "HIDDEN TESTS" not in text and "BEGIN SOLUTION" not in text
    solved = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert solved and all("hide-input" in c.metadata["tags"] for c in solved)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_answers_stay_hidden_outside_the_book(path):
    """MyST's {dropdown} and {admonition} show as plain text in JupyterLab, nbconvert and Colab;
    an HTML <details> block stays collapsed everywhere."""
    cells = read(CHAPTERS / path.name).cells
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert "{dropdown}" not in text and "{admonition}" not in text
    questions = re.search(r"^## Questions\s*$(.*?)^## Exercises\s*$", text, re.M | re.S).group(1)
    asked = re.findall(r"^(?:\*\*\d+\.\*\*|\d+\. )", questions, re.M)
    answers = re.findall(r'^<details class="answer"><summary>Answer</summary>\n\n', questions, re.M)
    assert asked and len(answers) >= len(asked), f"{len(asked)} questions, {len(answers)} hidden answers"
    assert questions.count("<details") == questions.count("</details>")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_code_fits_the_column(path):
    """The book's code column holds 88 characters; longer lines are cut off on the page."""
    wide = [(i, len(line)) for i, c in enumerate(read(path).cells) if c.cell_type == "code"
            for line in c.source.splitlines() if len(line) > 88]
    assert not wide, f"code lines over 88 characters (cell index, length): {wide[:5]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_outputs_fit_the_column(path):
    """Printed outputs too: a line over 88 characters puts a scrollbar under the cell."""
    wide = []
    for i, c in enumerate(read(path).cells):
        for o in c.get("outputs", []):
            data = o.get("data", {})
            text = o.get("text", "") if o.output_type == "stream" else (
                "" if "image/png" in data else data.get("text/plain", ""))
            wide += [(i, len(line)) for line in text.splitlines() if len(line) > 88]
    assert not wide, f"output lines over 88 characters (cell index, length): {wide[:5]}"


def test_readme_lists_every_exercise():
    """The README's chapter table names each chapter's graded exercises."""
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        row = next((l for l in readme.splitlines() if l.startswith(f"| {path.stem[:2]} ")), None)
        assert row is not None, f"README.md has no row for chapter {path.stem[:2]}"
        names = [c.metadata.nbgrader.grade_id for c in read(path).cells
                 if c.metadata.get("nbgrader", {}).get("solution")]
        missing = [n for n in names if f"`{n}`" not in row]
        assert not missing, f"README.md's row for {path.stem} does not list {missing}"
