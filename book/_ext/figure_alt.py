"""Alt text for the figures that notebook cells draw (a Sphinx extension, loaded by _config.yml).

MyST-NB gives an image output no alt text unless its cell says one (cell metadata
``mystnb: {image: {alt: ...}}``), and the HTML then carries the file name as ``alt``. The chapters
introduce each figure in the sentence before its cell ("All four heads on one sequence:"), so a
figure without alt text of its own gets that sentence, with the section it is in:
``Figure (Temperature): The order of the tokens never changes, ...``.
"""

from __future__ import annotations

import re

from docutils import nodes

LIMIT = 300  # characters; a screen reader reads alt text in one go


def last_sentence(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip().rstrip(":").strip()
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text)
    return parts[-1] if parts else text


def introduction(cell: nodes.Element) -> str:
    """The text just before a cell: the nearest paragraph (or list) among its earlier siblings."""
    parent = cell.parent
    for node in reversed(parent.children[: parent.index(cell)]):
        if isinstance(node, nodes.container) and node.get("nb_element", "").startswith("cell"):
            return ""  # another cell came first: the prose introduces that one
        if isinstance(node, (nodes.paragraph, nodes.bullet_list, nodes.enumerated_list)):
            return last_sentence(node.astext())
    return ""


def section_title(node: nodes.Node) -> str:
    while node is not None and not isinstance(node, nodes.section):
        node = node.parent
    return node[0].astext() if node is not None and len(node) else ""


def describe(app, doctree: nodes.document, docname: str) -> None:
    for cell in doctree.findall(nodes.container):
        if cell.get("nb_element") != "cell_code":
            continue
        images = [im for im in cell.findall(nodes.image) if not im.get("alt")]
        if not images:
            continue
        title, said = section_title(cell), introduction(cell)
        text = f"Figure ({title}): {said}" if said else f"Figure in the section {title}"
        if len(text) > LIMIT:
            text = text[: LIMIT - 3].rsplit(" ", 1)[0] + "..."
        for i, image in enumerate(images, 1):
            image["alt"] = text + (f" ({i} of {len(images)})" if len(images) > 1 else "")


def setup(app):
    app.connect("doctree-resolved", describe)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
