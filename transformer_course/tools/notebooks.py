"""The course's notebook tooling: one source (solutions/), everything else generated from it.

    python -m transformer_course.tools.notebooks sync [NB ...]     normalize solutions, write exports and chapters/
    python -m transformer_course.tools.notebooks check             list drift (what sync would change); exit 1 if any
    python -m transformer_course.tools.notebooks execute NB ...    run solution notebooks in place, storing outputs
    python -m transformer_course.tools.notebooks from-py PY NB     make a solution notebook from a jupytext percent file
    python -m transformer_course.tools.notebooks book              build the book (reader edition) into _build/html
    python -m transformer_course.tools.notebooks book --no-solutions   the same, each solution replaced by its stub

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


# --- the reader edition (the book) -------------------------------------------------------------

MAGIC_LINE = re.compile(r"^%matplotlib\b.*$")
ANSWER = re.compile(r"[ \t]*<details class=\"answer\">.*?</details>[ \t]*\n?", re.S)
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


def reader_edition(nb, solutions: bool = True):
    """The book's page: outputs kept, hidden tests, Colab setup, `#| export` markers and
    `%matplotlib` lines removed; solutions shown collapsed behind "Show solution".
    With solutions=False (for a class whose grades count) every solution is the student's stub
    instead (its outputs dropped) and the answers to the questions are left out."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        is_solution = cell.metadata.get("nbgrader", {}).get("solution", False)
        if cell.cell_type == "markdown":
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
                cell.metadata["mystnb"] = dict(SOLUTION_PROMPTS)
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
    return want


def sync(names=()):
    paths = resolve(names)
    for f, text in planned(paths).items():
        if not f.exists() or f.read_text() != text:
            f.write_text(text)
            print(f"wrote {f.relative_to(ROOT)}")


def drift() -> list[str]:
    """What is out of date: each line names a generated file that differs from its source."""
    paths = solution_notebooks()
    want = planned(paths)
    msgs = [f"{f.relative_to(ROOT)} is out of date: run `bash tasks.sh sync`"
            for f, text in want.items() if not f.exists() or f.read_text() != text]
    stems = {p.name for p in paths}
    msgs += [f"chapters/{f.name} has no source in solutions/" for f in CHAPTERS.glob("*.ipynb") if f.name not in stems]
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


def stage_book(dest: Path, solutions: bool = True) -> Path:
    """The book's source tree: config, toc and front matter as they are, chapters as reader editions."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "book", dest / "book")
    if (dest / "book" / "_static").exists():  # Jupyter Book picks up <source>/_static
        shutil.move(dest / "book" / "_static", dest / "_static")
    (dest / "chapters").mkdir()
    for path in solution_notebooks():
        # same relative path as the student edition, so launch buttons open chapters/<name>.ipynb
        (dest / "chapters" / path.name).write_text(dumps(reader_edition(read(path), solutions)))
    return dest


def book(root: Path = ROOT, solutions: bool = True) -> Path:
    """Build the HTML book into root/_build/html (warnings are errors) and return that folder.

    solutions=False builds the site for a class whose grades count: every solution is the stub
    and the answers to the questions are left out. Either way the page's Download > .ipynb gives
    the student edition (chapters/<name>.ipynb), as the launch buttons do.
    """
    src = stage_book(root / "_build" / "src", solutions)
    html = root / "_build" / "html"
    if html.exists():  # a build with solutions must not leave them in a build without
        shutil.rmtree(html)
    subprocess.run([str(Path(sys.executable).with_name("jupyter-book")), "build", str(src), "--path-output", str(root),
                    "--warningiserror", "--keep-going", "--quiet"], check=True)
    for path in solution_notebooks():
        shutil.copy(CHAPTERS / path.name, html / "_sources" / "chapters" / path.name)
    print(f"\nThe book{'' if solutions else ' (no solutions)'} is at {html / 'index.html'}")
    return html


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
    elif cmd == "book" and set(args) <= {"--no-solutions"}:
        book(solutions="--no-solutions" not in args)
    else:
        print(__doc__)
        sys.exit(0 if cmd == "help" else 2)


if __name__ == "__main__":
    main()
