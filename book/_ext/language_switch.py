"""A language menu in every page's header that leads to the same page in the other edition.

The English edition is the site's root and the Chinese one its folder zh/ (`bash tasks.sh book`
builds both), so a page's twin is found by its name alone: chapters/03_attention.html in English
is zh/chapters/03_attention.html in Chinese.
"""

from __future__ import annotations

import re
from pathlib import Path

EDITIONS = {"en": ("", "English"), "zh_CN": ("zh/", "中文")}


def add_switch(app, pagename, templatename, context, doctree):
    here = app.config.language or "en"
    up = "../" * pagename.count("/") + ("../" if EDITIONS.get(here, ("",))[0] else "")
    links = [{"type": "link", "url": f"{up}{folder}{pagename}.html", "text": name,
              "label": f"language-{lang}"} for lang, (folder, name) in EDITIONS.items()]
    context.setdefault("header_buttons", []).append(
        {"type": "group", "tooltip": "English / 中文", "icon": "fas fa-language",
         "buttons": links, "label": "language-switch"})


NEW_TAB = re.compile(r'(<a href="[^"]*") target="_blank"(\s+class="btn btn-sm btn-language-)')


def same_tab(app, exception):
    """The theme opens header links in a new tab; the other edition of a page replaces this one."""
    if exception is None and app.builder.format == "html":
        for page in Path(app.outdir).rglob("*.html"):
            text = page.read_text()
            if "btn-language-" in text:
                page.write_text(NEW_TAB.sub(r"\1\2", text))


def setup(app):
    app.connect("html-page-context", add_switch, priority=502)  # after the theme's own buttons
    app.connect("build-finished", same_tab)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
