"""The book builds offline, warnings as errors, with the front matter and every chapter."""

import re

import pytest

from transformer_course.tools.notebooks import book, solution_notebooks


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    return book(tmp_path_factory.mktemp("book"))


@pytest.mark.slow
def test_front_matter_and_chapters(html):
    for page in ("book/intro", "book/how_to_use", "book/setup", "book/notation", "book/adopting", "book/grading"):
        assert (html / f"{page}.html").exists(), page
    for nb in solution_notebooks():
        assert (html / "chapters" / f"{nb.stem}.html").exists(), nb.stem


@pytest.mark.slow
def test_chapter_pages_are_the_reader_edition(html):
    for nb in solution_notebooks():
        page = (html / "chapters" / f"{nb.stem}.html").read_text()
        assert "HIDDEN TESTS" not in page and "BEGIN SOLUTION" not in page
        assert "tag_hide-input" in page, "solutions are shown collapsed"
        assert "cell_output" in page, "outputs are shown"
        assert 'src="../_static/mathjax/' in page, "MathJax ships with the book (reads offline)"
        assert "html-manager" not in page and "require.js" not in page, "no widget JavaScript from a CDN"
        colab = re.search(r'https://colab\.research\.google\.com/github/[^"]+', page)
        assert colab and colab.group(0).endswith(f"/chapters/{nb.stem}.ipynb"), "Colab opens the student edition"
