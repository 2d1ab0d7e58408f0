"""The course's notebook tooling: one source (solutions/), everything else generated from it.

    python -m transformer_course.tools.notebooks sync [NB ...]     normalize solutions, write exports and chapters/
    python -m transformer_course.tools.notebooks check             list drift (what sync would change); exit 1 if any
    python -m transformer_course.tools.notebooks execute NB ...    run solution notebooks in place, storing outputs
    python -m transformer_course.tools.notebooks from-py PY NB     make a solution notebook from a jupytext percent file
    python -m transformer_course.tools.notebooks book              build the book (reader edition) into _build/html,
                                                                   the Chinese edition into _build/html/zh
    python -m transformer_course.tools.notebooks book --lang zh    one edition only (en or zh)
    python -m transformer_course.tools.notebooks book --no-solutions   each solution replaced by its stub
    python -m transformer_course.tools.notebooks catalogs          refresh the translation catalogs (locales/)

Conventions in a solution notebook (see CONTRIBUTING.md):
- a code cell whose first line is ``#| export <module>`` is copied into transformer_course/<module>.py
  (solution markers dropped), in notebook order; each module belongs to exactly one notebook;
- solution cells carry ``nbgrader`` metadata ``{"grade_id": ..., "solution": true}`` and their
  answer between ``### BEGIN SOLUTION`` / ``### END SOLUTION``;
- graded check cells carry ``{"grade_id": ..., "points": N}``, hidden tests between
  ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``;
- the rest of nbgrader's metadata is filled in by ``sync``.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS, CHAPTERS, PACKAGE = ROOT / "solutions", ROOT / "chapters", ROOT / "transformer_course"
LOCALES = ROOT / "locales"
LANGS = {"zh": "zh_CN"}  # the editions besides English: --lang value -> gettext language
NB_VERSION = 4

EXPORT_RE = re.compile(r"^#\|\s*export\s+([A-Za-z_]\w*)\s*$")
SOLUTION_LINE = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")
HIDDEN_BLOCK = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS[ \t]*\n?", re.M | re.S)
WIDGET = "application/vnd.jupyter.widget-view+json"
GENERATED = '"""Generated from solutions/{nb} by `bash tasks.sh sync`: edit the notebook, not this file."""\n'


def solution_notebooks() -> list[Path]:
    return sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))


def read(path: Path):
    return nbformat.read(path, as_version=NB_VERSION)


def dumps(nb) -> str:
    return nbformat.writes(nb) + "\n"


def resolve(names) -> list[Path]:
    """Notebook arguments may be paths or stems ('03_attention'); none means all."""
    if not names:
        return solution_notebooks()
    out = []
    for n in names:
        p = Path(n)
        p = p if p.suffix == ".ipynb" and p.exists() else SOLUTIONS / (p.stem + ".ipynb")
        if not p.exists():
            sys.exit(f"no such solution notebook: {n}")
        out.append(p.resolve())
    return out


# --- nbgrader metadata -------------------------------------------------------------------------

def normalize(nb, where: str = "") -> list[str]:
    """Complete the nbgrader metadata in place; return the problems found."""
    problems, seen = [], set()
    # Saved widget state would make the book load widget JavaScript from a CDN (it must read
    # offline) and bloat both editions; the live widget is rebuilt when a learner runs the cell.
    nb.metadata.pop("widgets", None)
    for i, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)  # run timestamps: noise in diffs and in the editions
        src, meta = cell.source, cell.metadata.get("nbgrader")
        has_solution = "### BEGIN SOLUTION" in src
        has_hidden = "### BEGIN HIDDEN TESTS" in src
        if meta is None:
            if has_solution or has_hidden:
                problems.append(f"{where} cell {i}: has solution or hidden-test markers but no nbgrader metadata")
            continue
        gid = meta.get("grade_id")
        if not gid:
            problems.append(f"{where} cell {i}: nbgrader metadata without a grade_id")
            continue
        if gid in seen:
            problems.append(f"{where} cell {i}: duplicate grade_id {gid!r}")
        seen.add(gid)
        if meta.get("solution"):
            full = {"grade": False, "grade_id": gid, "locked": False, "schema_version": 3,
                    "solution": True, "task": False}
            if not has_solution:
                problems.append(f"{where} cell {i} ({gid}): solution cell without ### BEGIN SOLUTION")
        elif "points" in meta:
            full = {"grade": True, "grade_id": gid, "locked": True, "points": meta["points"],
                    "schema_version": 3, "solution": False, "task": False}
            if has_solution:
                problems.append(f"{where} cell {i} ({gid}): a graded check cell must not hold a solution")
        else:
            problems.append(f"{where} cell {i} ({gid}): nbgrader metadata is neither solution nor points")
            continue
        if has_hidden and not full["grade"]:
            problems.append(f"{where} cell {i} ({gid}): hidden tests outside a graded cell")
        for k in ("checksum", "cell_type"):  # nbgrader adds these to generated copies only
            meta.pop(k, None)
        if meta != full:
            cell.metadata["nbgrader"] = full
    return problems


# --- exports to the package --------------------------------------------------------------------

def exported_source(cell) -> str:
    lines = cell.source.splitlines()[1:]
    return "\n".join(l for l in lines if not SOLUTION_LINE.match(l)).strip("\n") + "\n"


def exports(paths) -> dict[str, str]:
    """Module name -> generated text, from every `#| export` cell of the given notebooks."""
    owner, parts = {}, {}
    for path in paths:
        for cell in read(path).cells:
            m = cell.cell_type == "code" and EXPORT_RE.match(cell.source.split("\n", 1)[0])
            if not m:
                continue
            mod = m.group(1)
            if owner.setdefault(mod, path.name) != path.name:
                raise SystemExit(f"module {mod} is exported from both {owner[mod]} and {path.name}")
            if "### BEGIN HIDDEN TESTS" in cell.source:
                raise SystemExit(f"{path.name}: an export cell holds hidden tests")
            parts.setdefault(mod, []).append(exported_source(cell))
    return {mod: GENERATED.format(nb=owner[mod]) + "\n" + "\n\n".join(chunks) for mod, chunks in parts.items()}


def owned_modules() -> dict[str, str]:
    """Package modules that claim to be generated, by the notebook they name."""
    out = {}
    for f in PACKAGE.glob("*.py"):
        m = re.match(r'"""Generated from solutions/(\S+) by', f.read_text())
        if m:
            out[f.stem] = m.group(1)
    return out


# --- the student edition (nbgrader) ------------------------------------------------------------

def nbgrader_api(config):
    """nbgrader's API. nbgrader runs `alembic` (its database migrations) as a program: put this
    Python's bin folder on the PATH so that it is found with or without an activated venv."""
    import os

    from nbgrader.apps import NbGraderAPI

    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    return NbGraderAPI(config=config)


def student_editions(sources: dict[str, str]) -> dict[str, str]:
    """File name -> text of the student notebook nbgrader generates (no outputs, no solutions),
    from solution notebooks given as file name -> text."""
    from traitlets.config import Config

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config()
        cfg.CourseDirectory.root = tmp
        cfg.CourseDirectory.db_url = f"sqlite:///{tmp}/gradebook.db"
        cfg.GenerateAssignment.force = True
        api = nbgrader_api(cfg)
        for name, text in sources.items():
            stem = Path(name).stem
            src = Path(tmp, "source", stem)
            src.mkdir(parents=True)
            (src / name).write_text(text)
            result = api.generate_assignment(stem)
            if not result["success"]:
                raise SystemExit(f"nbgrader could not generate {name}:\n{result['log']}\n{result.get('error', '')}")
            out[name] = dumps(read(Path(tmp, "release", stem, name)))
    return out


# --- the other languages: student notebooks from the catalogs ----------------------------------

def messages(page: str, lang: str) -> dict[str, str]:
    """msgid -> msgstr of a page's catalog (translated, not fuzzy); empty if it has none."""
    from babel.messages import pofile

    path = LOCALES / LANGS[lang] / "LC_MESSAGES" / f"{page}.po"
    if not path.exists():
        return {}
    with open(path, "rb") as f:
        return {m.id: m.string for m in pofile.read_po(f, charset="utf-8") if m.id and m.string and not m.fuzzy}


def interface_words(lang: str) -> dict[str, str]:
    """The few words the tooling writes into pages (locales/<lang>/glossary.csv, note "interface")."""
    import csv

    with open(LOCALES / LANGS[lang] / "glossary.csv", encoding="utf-8") as f:
        return {r["english"]: r["chinese"] for r in csv.DictReader(f) if r["note"] == "interface"}


def translate_markdown(source: str, catalog: dict[str, str], words: dict[str, str]) -> str:
    """A markdown cell with each block (paragraph, heading, list item, table cell, admonition title)
    replaced by its translation, the markup around it kept; a block without one stays English."""
    from markdown_it import MarkdownIt

    lines = source.split("\n")
    tokens = MarkdownIt("commonmark").enable("table").parse(source)
    blocks = [t for t in tokens if t.type == "inline" and t.map]
    for t in sorted(blocks, key=lambda t: -t.map[0]):
        text = " ".join(l.strip() for l in t.content.split("\n")).strip()
        a, b = t.map
        if text in catalog and lines[a].find(t.content.split("\n")[0]) >= 0:
            if "|" in lines[a] and b - a > 1:  # a table row: its cells are blocks of their own
                continue
            first = t.content.split("\n")[0]
            if lines[a].strip().startswith("|"):
                lines[a] = lines[a].replace(f" {first} ", f" {catalog[text]} ", 1)
            else:
                lines[a: b] = [lines[a][: lines[a].find(first)] + catalog[text]]
    out = "\n".join(lines)
    out = re.sub(r'(<p class="admonition-title">)([^\n]*?)(</p>)',
                 lambda m: m[1] + catalog.get(m[2], m[2]) + m[3], out)
    for en, there in words.items():
        out = out.replace(f"<summary>{en}</summary>", f"<summary>{there}</summary>")
    return out


def translated_notebook(text: str, stem: str, lang: str) -> str:
    """A student notebook in another language: markdown from the page's catalog, the language
    setting at the top of the first code cell after the Colab setup; ids, nbgrader metadata and
    code otherwise as they are, so grading and the self-check work on it as on the English one."""
    nb = nbformat.reads(text, as_version=NB_VERSION)
    catalog, words = messages(f"chapters/{stem}", lang), interface_words(lang)
    nb.metadata["transformer_course"] = {"language": LANGS[lang]}
    setting = (f'import os\nos.environ["TRANSFORMER_COURSE_LANG"] = "{LANGS[lang]}"  '
               f'# {words.get("the checks answer in this language", "")}\n')
    placed = False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = translate_markdown(cell.source, catalog, words)
        elif not placed and "colab-setup" not in cell.metadata.get("tags", []):
            cell.source, placed = setting + cell.source, True
    return dumps(nb)


# --- the reader edition (the book) -------------------------------------------------------------

MAGIC_LINE = re.compile(r"^%matplotlib\b.*$")
ANSWER = re.compile(r"[ \t]*<details class=\"answer\">.*?</details>[ \t]*\n?", re.S)
# A notebook's admonitions are HTML (Jupyter and Colab show them); the book makes each a MyST
# admonition, which looks the same and whose title the translation catalogs can carry.
ADMONITION = re.compile(r'<div class="admonition (\w+)">\n<p class="admonition-title">([^\n]*?)</p>\n(.*?)\n</div>', re.S)
SOLUTION_PROMPTS = {"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"}


def stub(source: str) -> str:
    """What nbgrader leaves of a solution: each BEGIN/END SOLUTION block becomes the stub."""
    out, inside = [], False
    for line in source.splitlines():
        m = SOLUTION_LINE.match(line)
        if m and m.group(1) == "BEGIN":
            indent = line[: len(line) - len(line.lstrip())]
            out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError()"]
            inside = True
        elif m:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def reader_edition(nb, solutions: bool = True, words: dict[str, str] | None = None):
    """The book's page: outputs kept, hidden tests, Colab setup, `#| export` markers and
    `%matplotlib` lines removed; solutions shown collapsed behind "Show solution".
    With solutions=False (for a class whose grades count) every solution is the student's stub
    instead (its outputs dropped) and the answers to the questions are left out. ``words`` gives the
    words the tooling writes (Show solution, Answer) in another language (interface_words)."""
    words = words or {}
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        is_solution = cell.metadata.get("nbgrader", {}).get("solution", False)
        if cell.cell_type == "markdown":
            cell.source = ADMONITION.sub(r"::::{admonition} \2\n:class: \1\n\3\n::::", cell.source)
            for en, there in words.items():
                cell.source = cell.source.replace(f"<summary>{en}</summary>", f"<summary>{there}</summary>")
            if not solutions:
                cell.source = "YOUR ANSWER HERE" if is_solution else ANSWER.sub("", cell.source)
        if cell.cell_type != "code":
            if not tags:
                del cell.metadata["tags"]
            continue
        if "colab-setup" in tags:
            tags.append("remove-cell")
        # a live widget needs a kernel; the book shows the static figure drawn beside it instead
        cell.outputs = [o for o in cell.outputs if WIDGET not in o.get("data", {})]
        lines = HIDDEN_BLOCK.sub("", cell.source).rstrip("\n").splitlines()
        if lines and EXPORT_RE.match(lines[0]):
            lines = lines[1:]  # the marker is for the course's tooling, not for readers
        cell.source = "\n".join(l for l in lines if not MAGIC_LINE.match(l)).strip("\n")
        if "### BEGIN SOLUTION" in cell.source:
            if solutions:
                cell.source = "\n".join(l for l in cell.source.splitlines() if not SOLUTION_LINE.match(l))
                tags.append("hide-input")
                cell.metadata["mystnb"] = {k: words.get(v, v) for k, v in SOLUTION_PROMPTS.items()}
            else:
                cell.source, cell.outputs = stub(cell.source), []
        if not tags:
            del cell.metadata["tags"]
    return nb


# --- commands ----------------------------------------------------------------------------------

def planned(paths) -> dict[Path, str]:
    """Every generated file, with the text it should have."""
    want = {}
    for path in paths:
        nb = read(path)
        problems = normalize(nb, path.name)
        if problems:
            raise SystemExit("\n".join(problems))
        want[path] = dumps(nb)
    for mod, text in exports(paths).items():
        want[PACKAGE / f"{mod}.py"] = text
    for name, text in student_editions({p.name: want[p] for p in paths}).items():
        want[CHAPTERS / name] = text
        for lang in LANGS:
            want[ROOT / lang / "chapters" / name] = translated_notebook(text, Path(name).stem, lang)
    return want


def sync(names=()):
    paths = resolve(names)
    for f, text in planned(paths).items():
        if not f.exists() or f.read_text() != text:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
            print(f"wrote {f.relative_to(ROOT)}")


def drift() -> list[str]:
    """What is out of date: each line names a generated file that differs from its source."""
    paths = solution_notebooks()
    want = planned(paths)
    msgs = [f"{f.relative_to(ROOT)} is out of date: run `bash tasks.sh sync`"
            for f, text in want.items() if not f.exists() or f.read_text() != text]
    stems = {p.name for p in paths}
    msgs += [f"{f.relative_to(ROOT)} has no source in solutions/" for d in (CHAPTERS, *(ROOT / l / "chapters" for l in LANGS))
             for f in d.glob("*.ipynb") if f.name not in stems]
    exported = {f.stem for f in want if f.parent == PACKAGE}
    msgs += [f"transformer_course/{m}.py says it is generated from {nb}, which no longer exports it"
             for m, nb in owned_modules().items() if m not in exported]
    return msgs


def execute(names, timeout: int = 600):
    """Run solution notebooks top to bottom in a fresh kernel and store their outputs."""
    import os

    from nbclient import NotebookClient

    os.environ["PYTHONHASHSEED"] = "0"  # as under `bash tasks.sh test`, so stored outputs reproduce
    sync(names)  # a notebook may import what it exports (e.g. a function that spawned processes need)
    for path in resolve(names):
        nb = read(path)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False, store_widget_state=False,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        path.write_text(dumps(nb))
        print(f"executed {path.relative_to(ROOT)}")
    sync(names)  # the kernel fills in language_info, which the student edition carries too


def from_py(py: str, out: str):
    """Convert a jupytext percent file to a solution notebook, keeping outputs of unchanged cells."""
    import jupytext

    nb = jupytext.read(py)
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    target = Path(out)
    if target.exists():  # carry outputs over where the source is unchanged
        old = {c.source: c for c in read(target).cells if c.cell_type == "code"}
        for c in nb.cells:
            if c.cell_type == "code" and c.source in old:
                c.outputs, c.execution_count = old[c.source].outputs, old[c.source].execution_count
    for i, c in enumerate(nb.cells):  # stable, readable cell ids keep diffs small
        c.id = f"cell-{i:03d}"
        c.metadata.pop("lines_to_next_cell", None)
    problems = normalize(nb, target.name)
    if problems:
        raise SystemExit("\n".join(problems))
    target.write_text(dumps(nb))
    print(f"wrote {target}")


def stage_book(dest: Path, solutions: bool = True, lang: str = "en") -> Path:
    """The book's source tree: config, toc and front matter as they are, chapters as reader editions.
    In another language the config names it and the launch buttons open that language's student
    notebooks (<lang>/chapters/<name>.ipynb); the catalogs come along (Sphinx compiles them)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    words = interface_words(lang) if lang != "en" else {}
    toc = (ROOT / "_toc.yml").read_text()
    for en, there in words.items():  # the parts' captions (Sphinx's catalogs do not see them)
        toc = toc.replace(f"caption: {en}\n", f"caption: {there}\n")
    (dest / "_toc.yml").write_text(toc)
    if (ROOT / "references.bib").exists():
        shutil.copy(ROOT / "references.bib", dest / "references.bib")
    config = (ROOT / "_config.yml").read_text()
    if lang != "en":
        config = config.replace('path_to_book: ""', f'path_to_book: "{lang}"')
        config = config.replace("  config:\n", f"  config:\n    language: {LANGS[lang]}\n", 1)
        shutil.copytree(LOCALES / LANGS[lang], dest / "locales" / LANGS[lang],
                        ignore=shutil.ignore_patterns("*.mo"))
    (dest / "_config.yml").write_text(config)
    shutil.copytree(ROOT / "book", dest / "book")
    if (dest / "book" / "_static").exists():  # Jupyter Book picks up <source>/_static
        shutil.move(dest / "book" / "_static", dest / "_static")
    (dest / "chapters").mkdir()
    for path in solution_notebooks():
        # same relative path as the student edition, so launch buttons open chapters/<name>.ipynb
        (dest / "chapters" / path.name).write_text(dumps(reader_edition(read(path), solutions, words)))
    return dest


def catalogs():
    """Refresh the translation catalogs (locales/<lang>/LC_MESSAGES/<page>.po) from the English pages:
    a new message arrives untranslated, a changed one keeps its old translation marked fuzzy, and
    the catalog of a page that is gone is deleted. The tests fail until each is translated again."""
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        src = stage_book(Path(tmp) / "src")
        subprocess.run([str(bin_dir / "jupyter-book"), "build", str(src), "--path-output", tmp, "--builder",
                        "custom", "--custom-builder", "gettext", "--quiet"], check=True, stdout=subprocess.DEVNULL)
        pot = Path(tmp) / "_build" / "gettext"
        pages = {str(p.relative_to(pot).with_suffix("")) for p in pot.rglob("*.pot")}
        for lang in LANGS.values():
            subprocess.run([str(bin_dir / "sphinx-intl"), "update", "-p", str(pot), "-l", lang, "-d", str(LOCALES),
                            "-w", "0", "--no-obsolete", "-j", "1"], check=True)
            messages = LOCALES / lang / "LC_MESSAGES"
            for po in messages.rglob("*.po"):
                if str(po.relative_to(messages).with_suffix("")) not in pages:
                    po.unlink()
                    print(f"deleted {po.relative_to(ROOT)} (its page is gone)")
    from .translations import package_catalogs

    for lang in LANGS:
        package_catalogs(lang)


def book(root: Path = ROOT, solutions: bool = True, lang: str = "en") -> Path:
    """Build one edition of the HTML book (warnings are errors) and return its folder: English into
    root/_build/html, another language into root/_build/html/<lang> (the language menu of every page
    links the two).

    solutions=False builds the site for a class whose grades count: every solution is the stub
    and the answers to the questions are left out. Either way the page's Download > .ipynb gives
    the student edition (chapters/<name>.ipynb, or <lang>/chapters/<name>.ipynb), as the launch
    buttons do.
    """
    work = root if lang == "en" else root / "_build" / lang  # jupyter-book writes <work>/_build/html
    src = stage_book(root / "_build" / ("src" if lang == "en" else f"{lang}/src"), solutions, lang)
    html = root / "_build" / "html" / ("." if lang == "en" else lang)
    if html.exists():  # a build with solutions must not leave them in a build without (the English
        shutil.rmtree(html)  # edition's folder holds the others: `book` builds English first)
    subprocess.run([str(Path(sys.executable).with_name("jupyter-book")), "build", str(src), "--path-output", str(work),
                    "--warningiserror", "--keep-going", "--quiet"], check=True)
    if lang != "en":
        shutil.move(work / "_build" / "html", html)
    students = CHAPTERS if lang == "en" else ROOT / lang / "chapters"
    for path in solution_notebooks():
        shutil.copy(students / path.name, html / "_sources" / "chapters" / path.name)
    print(f"\nThe book{'' if solutions else ' (no solutions)'} ({lang}) is at {html.resolve() / 'index.html'}")
    return html.resolve()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cmd, args = (argv[0], argv[1:]) if argv else ("help", [])
    if cmd == "sync":
        sync(args)
    elif cmd == "check":
        msgs = drift()
        print("\n".join(msgs) or "everything generated is up to date")
        sys.exit(1 if msgs else 0)
    elif cmd == "execute":
        execute(args)
    elif cmd == "from-py" and len(args) == 2:
        from_py(*args)
    elif cmd == "catalogs" and not args:
        catalogs()
    elif cmd == "book" and set(args) - {"--no-solutions"} <= {"--lang", "en", *LANGS} and args.count("--lang") <= 1:
        langs = ["en", *LANGS]
        if "--lang" in args:
            langs = [args[args.index("--lang") + 1]]
        for lang in langs:
            book(solutions="--no-solutions" not in args, lang=lang)
    else:
        print(__doc__)
        sys.exit(0 if cmd == "help" else 2)


if __name__ == "__main__":
    main()
