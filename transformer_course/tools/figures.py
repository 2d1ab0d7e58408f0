"""The course's figures: one look in every chapter, readable fonts, sharp on high-DPI screens,
and the committed benchmark results the chapters plot.

Every chapter's setup cell calls ``figure_style()`` once, after importing matplotlib.
"""

from __future__ import annotations

import csv
import site
import sys
from pathlib import Path

import matplotlib as mpl

STYLE = {
    "figure.figsize": (6.4, 3.6),     # inches; the book's text column is about 6.5 in wide
    "figure.dpi": 110,
    "savefig.dpi": 220,
    "savefig.bbox": "tight",
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.8,
    "image.cmap": "viridis",
}


def figure_style() -> None:
    """Apply the course style; in Jupyter, draw figures at twice the pixel density (retina)."""
    mpl.rcParams.update(STYLE)
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("retina")
    except Exception:  # not in IPython, or an older matplotlib-inline: the rcParams still apply
        pass


def committed_results(name: str) -> list[dict]:
    """The rows of benchmarks/results/<name>, a benchmark CSV committed with the course: read
    from the repository (a clone; an editable install) or, for a pip install such as Colab's,
    from the copy installed with the package under <prefix>/share/transformer-course/."""
    repo = Path(__file__).resolve().parents[2]
    places = [repo / "benchmarks" / "results", Path.cwd().parent / "benchmarks" / "results"]
    places += [Path(p) / "share" / "transformer-course" / "results"
               for p in (sys.prefix, site.USER_BASE or "")]
    for folder in places:
        if (folder / name).is_file():
            with (folder / name).open() as f:
                return list(csv.DictReader(f))
    raise FileNotFoundError(f"benchmarks/results/{name} is in none of "
                            + ", ".join(str(p) for p in places))
