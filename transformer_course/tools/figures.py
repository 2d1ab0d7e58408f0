"""The course's figure style: one look in every chapter, readable fonts, sharp on high-DPI screens.

Every chapter's setup cell calls ``figure_style()`` once, after importing matplotlib.
"""

from __future__ import annotations

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
