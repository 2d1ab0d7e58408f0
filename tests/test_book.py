"""The book builds offline, warnings as errors, with the front matter and every chapter."""

import re

import pytest

from transformer_course.tools.notebooks import book, solution_notebooks


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    return book(tmp_path_factory.mktemp("book"))


@pytest.mark.slow
def test_front_matter_and_chapters(html):
    for page in ("book/intro", "book/how_to_use", "book/setup", "book/notation", "book/source_notes",
                 "book/adopting", "book/grading"):
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
        assert f'href="../zh/chapters/{nb.stem}.html"' in page, "the language menu leads to the Chinese page"
        assert "html-manager" not in page and "require.js" not in page, "no widget JavaScript from a CDN"
        colab = re.search(r'https://colab\.research\.google\.com/github/[^"]+', page)
        assert colab and colab.group(0).endswith(f"/chapters/{nb.stem}.ipynb"), "Colab opens the student edition"
        ref = pinned_ref()
        assert f"/blob/{ref}/chapters/{nb.stem}.ipynb" in colab.group(0), f"Colab opens {ref}"
        binder = re.search(r'https://mybinder\.org/v2/gh/[^"]+', page)
        assert binder and f"/{ref}?urlpath=lab/tree/chapters/{nb.stem}.ipynb" in binder.group(0), \
            f"Binder opens {ref}: {binder and binder.group(0)}"


def pinned_ref() -> str:
    """The ref the Colab setup cells install (`...@v0.3.0`), the same in every chapter."""
    refs = set()
    for path in solution_notebooks():
        setup = [c.source for c in read(path).cells if "colab-setup" in c.metadata.get("tags", [])]
        refs.update(re.findall(r"git\+\{?\w*\}?[^@\"]*@([\w.\-]+)", "\n".join(setup)))
    assert len(refs) == 1, f"the setup cells install {sorted(refs) or 'no pinned ref'}"
    return refs.pop()


def test_launch_buttons_open_the_version_the_setup_cells_install():
    """Colab and Binder open the chapters at the ref the setup cells pip-install, the release tag
    of the package's version: the code a learner runs is the code the notebook was written for."""
    import tomllib

    import yaml

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert pinned_ref() == f"v{version}"
    assert config["repository"]["branch"] == f"v{version}", \
        f"_config.yml's repository.branch (the launch buttons' ref) must be v{version}"


# --- what readers see (from the built HTML) ------------------------------------------------------

import json

import nbformat

from transformer_course.tools.notebooks import CHAPTERS, ROOT, SOLUTION_LINE, read, reader_edition, stage_book


def solution_lines(nb) -> list[str]:
    """Distinctive lines of the solutions: inside BEGIN/END SOLUTION, long, and nowhere else in the notebook."""
    inside, out, elsewhere = False, [], []
    for cell in nb.cells:
        for line in cell.source.splitlines():
            m = SOLUTION_LINE.match(line)
            if m:
                inside = m.group(1) == "BEGIN"
            elif inside:
                out.append(line.strip())
            else:
                elsewhere.append(line.strip())
        inside = False
    rest = "\n".join(elsewhere)
    return [l for l in out if len(l) >= 25 and l not in rest]


def test_reader_edition_strips_markers_and_labels_solutions():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("#| export attention\ndef f(x):\n    ### BEGIN SOLUTION\n"
                                          "    return x + 1\n    ### END SOLUTION"),
                nbformat.v4.new_code_cell("%matplotlib inline\nimport math"),
                nbformat.v4.new_markdown_cell('**1.** Why?\n\n<details class="answer"><summary>Answer</summary>\n\n'
                                              'Because.\n\n</details>\n')]
    nb.cells[0].metadata["nbgrader"] = {"grade_id": "f", "solution": True}
    page = reader_edition(nb)
    assert page.cells[0].source == "def f(x):\n    return x + 1"
    assert "hide-input" in page.cells[0].metadata.tags
    assert page.cells[0].metadata.mystnb["code_prompt_show"] == "Show solution"
    assert page.cells[1].source == "import math" and "mystnb" not in page.cells[1].metadata
    assert "Because." in page.cells[2].source
    graded = reader_edition(nb, solutions=False)
    assert graded.cells[0].source == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    assert graded.cells[0].outputs == [] and "Because." not in graded.cells[2].source
    assert graded.cells[2].source.startswith("**1.** Why?")


def test_no_solutions_edition_holds_no_solution(tmp_path):
    src = stage_book(tmp_path / "src", solutions=False)
    for nb in solution_notebooks():
        lines = solution_lines(read(nb))
        staged = (src / "chapters" / nb.name).read_text()
        leaked = [l for l in lines if json.dumps(l)[1:-1] in staged]
        assert not leaked, f"{nb.stem}: solution lines in the no-solutions edition: {leaked[:3]}"
        assert '<details class=\\"answer\\">' not in staged, f"{nb.stem}: answers left in"


@pytest.mark.slow
def test_download_gives_the_student_edition(html):
    for nb in solution_notebooks():
        page = (html / "chapters" / f"{nb.stem}.html").read_text()
        assert f'href="../_sources/chapters/{nb.stem}.ipynb"' in page, "the Download > .ipynb button"
        served = (html / "_sources" / "chapters" / f"{nb.name}").read_text()
        assert served == (CHAPTERS / nb.name).read_text(), f"{nb.stem}: Download must serve chapters/{nb.name}"
        lines = solution_lines(read(nb))
        assert lines, f"{nb.stem}: no solution lines found to test with"
        assert not [l for l in lines if json.dumps(l)[1:-1] in served]


@pytest.mark.slow
def test_pages_hide_tooling_and_label_solutions(html):
    for nb in solution_notebooks():
        page = (html / "chapters" / f"{nb.stem}.html").read_text()
        text = re.sub(r"<[^>]+>", "", page)
        assert "#| export" not in text, f"{nb.stem}: export marker shown"
        assert "%matplotlib" not in text, f"{nb.stem}: %matplotlib shown"
        n_solutions = sum(bool(c.metadata.get("nbgrader", {}).get("solution")) and c.cell_type == "code"
                          for c in read(nb).cells)
        assert page.count(">Show solution<") == n_solutions, f"{nb.stem}: every solution toggle says so"


@pytest.mark.slow
def test_one_search_box_and_no_javascript_redeclared(html):
    pages = [html / "book" / "intro.html"] + [html / "chapters" / f"{nb.stem}.html" for nb in solution_notebooks()]
    for p in pages:
        page = p.read_text()
        assert "navbar-persistent" not in page, f"{p.name}: a second search box in a header bar"
        assert page.count("search-button-field") == 1, f"{p.name}: one search field, in the sidebar"
        consts = re.findall(r"\bconst\s+(\w+)\s*=", page)
        assert len(consts) == len(set(consts)), f"{p.name}: a const declared twice: {consts}"
        assert "THEBE_JS_URL" not in page


@pytest.mark.slow
def test_landing_page_links_the_chapters_and_its_title_says_it_once(html):
    page = (html / "book" / "intro.html").read_text()
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    parts = [p.strip() for p in title.split("&#8212;")]
    assert len(parts) == len(set(parts)), f"the tab title repeats itself: {title}"
    start = page.index('<section id="the-map">')
    the_map = page[start:page.index("</section>", start)]
    for nb in solution_notebooks():
        assert f'href="../chapters/{nb.stem}.html"' in the_map, f"the map links {nb.stem}"


@pytest.mark.slow
def test_pages_show_committed_gpu_measurements(html):
    """A page that says no GPU measurement is committed must be right (else re-execute the chapter)."""
    from transformer_course.tools.gpu import RESULTS

    for nb in solution_notebooks():
        page = (html / "chapters" / f"{nb.stem}.html").read_text()
        for name in re.findall(r"no GPU measurements of (?:&#39;|')([\w.-]+)(?:&#39;|') are committed", page):
            assert not (RESULTS / f"{name}.csv").exists(), (
                f"{nb.stem}: shows no GPU numbers for {name} but benchmarks/results/gpu/{name}.csv exists: "
                "re-execute the chapter")


@pytest.mark.slow
def test_figures_have_alt_text(html):
    """A figure a cell draws is described (book/_ext/figure_alt.py), not named by its file."""
    for nb in solution_notebooks():
        page = (html / "chapters" / f"{nb.stem}.html").read_text()
        for img in re.findall(r"<img [^>]*>", page):
            alt = re.search(r'\balt="([^"]*)"', img)
            assert alt and alt.group(1).strip(), f"{nb.stem}: an image without alt text: {img[:120]}"
            assert not re.search(r"\.(png|jpe?g|svg)$", alt.group(1)), f"{nb.stem}: alt is a file name: {img[:160]}"
    # the sentence that introduces the figure, with its section
    page = (html / "chapters" / "07_encoder_decoder.html").read_text()
    assert re.search(r'alt="Figure \([^)"]+\): The figure shows, for a source of', page)


@pytest.mark.slow
def test_every_icon_shown_is_in_the_trimmed_font_awesome(html):
    """The pages load a Font Awesome of the icons they use (book/_ext/icon_subset.py), not the
    theme's 1.49 MB bundle of all of them; every icon a page shows is in it."""
    import sys

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    from icon_subset import icons_used

    script = (html / "_static" / "scripts" / "fontawesome.js").read_text()
    assert len(script) < 100_000, f"fontawesome.js is {len(script):,} bytes"
    icons = json.loads(re.search(r"const ICONS = (\{.*?\});", script).group(1))
    used = icons_used(html)
    assert len(used) >= 10 and {f"{pack} {name}" for pack, name in used} <= set(icons), \
        f"icons not in the trimmed script: {sorted({f'{p} {n}' for p, n in used} - set(icons))}"
    assert not (html / "_static" / "scripts" / "fontawesome.js.map").exists()


def test_inline_code_wraps_on_a_phone():
    """Long inline code breaks inside the column instead of widening a phone's page."""
    css = (ROOT / "book" / "_static" / "course.css").read_text()
    assert re.search(r"code\.literal\s*\{[^}]*overflow-wrap:\s*anywhere", css)
    assert re.search(r"code\.literal span\.pre\s*\{[^}]*white-space:\s*pre-wrap", css)
