"""Only the Font Awesome icons the site shows (a Sphinx extension, loaded by _config.yml).

pydata-sphinx-theme loads `_static/scripts/fontawesome.js` on every page: Font Awesome's SVG
framework with all ~2,000 free icons, 1.49 MB, for the sixteen or so icons of the header and the
sidebars. When the build has finished, this extension lists the icons the pages use (the
`<i class="fa-solid fa-...">` elements, and those the theme's JavaScript makes), takes their SVG
paths and Font Awesome's own CSS from the theme's file, and writes a small script of the same name
in its place that turns those elements into the same inline SVGs. Icons Font Awesome draws through
CSS (the admonitions' glyphs) come from the webfonts the theme ships, as before.
"""

from __future__ import annotations

import re
from pathlib import Path

PACKS = {"fab": "fab", "fa-brands": "fab", "far": "far", "fa-regular": "far",
         "fas": "fas", "fa-solid": "fas"}
NOT_ICONS = {"fw", "lg", "xs", "sm", "xl", "2xs", "2xl", "1x", "2x", "3x", "4x", "5x", "6x", "7x",
             "8x", "9x", "10x", "spin", "pulse", "border", "inverse", "li", "ul", "stack",
             "stack-1x", "stack-2x", "pull-left", "pull-right", "flip", "beat", "fade", "shake",
             "bounce", "rotate-90", "rotate-180", "rotate-270", "flip-horizontal",
             "flip-vertical", "flip-both", "solid", "regular", "brands"}
# Made by the theme's JavaScript (the close button of an announcement or version banner).
FROM_SCRIPTS = {("fas", "xmark")}
CLASS = re.compile(r'<(?:i|span)\b[^>]*\bclass="([^"]*\bfa-[^"]*)"')

RENDER = """(() => {
  "use strict";
  const ICONS = %(icons)s;
  const PACKS = %(packs)s;
  const SVG = "http://www.w3.org/2000/svg";
  function render(el) {
    const classes = [...el.classList];
    const pack = PACKS[classes.find((c) => c in PACKS)] || "fas";
    const name = classes.find((c) => c.startsWith("fa-") && !(c in PACKS) && ICONS[pack + " " + c.slice(3)]);
    if (!name) return;
    const [width, height, path] = ICONS[pack + " " + name.slice(3)];
    const svg = document.createElementNS(SVG, "svg");
    const rest = classes.filter((c) => !(c in PACKS) && c !== name);
    svg.setAttribute("class", ["svg-inline--fa", name, ...rest].join(" "));
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("role", "img");
    svg.setAttribute("data-prefix", pack);
    svg.setAttribute("data-icon", name.slice(3));
    for (const a of el.attributes) if (a.name !== "class") svg.setAttribute(a.name, a.value);
    const p = document.createElementNS(SVG, "path");
    p.setAttribute("fill", "currentColor");
    p.setAttribute("d", path);
    svg.appendChild(p);
    el.replaceWith(svg);
  }
  function scan(root) {
    if (root.matches && root.matches("i[class*='fa-'], span[class*='fa-']")) render(root);
    if (root.querySelectorAll) root.querySelectorAll("i[class*='fa-'], span[class*='fa-']").forEach(render);
  }
  const style = document.createElement("style");
  style.textContent = %(css)s;
  document.head.appendChild(style);
  const start = () => {
    scan(document.body);
    new MutationObserver((changes) => changes.forEach((c) => c.addedNodes.forEach(scan)))
      .observe(document.body, { childList: true, subtree: true });
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
"""


def icons_used(html: Path) -> set[tuple[str, str]]:
    used = set(FROM_SCRIPTS)
    for page in html.rglob("*.html"):
        for attr in CLASS.findall(page.read_text(errors="replace")):
            classes = attr.split()
            pack = next((PACKS[c] for c in classes if c in PACKS), "fas")
            used |= {(pack, c[3:]) for c in classes
                     if c.startswith("fa-") and c not in PACKS and c[3:] not in NOT_ICONS}
    return used


def pack_regions(js: str) -> dict[str, tuple[int, int]]:
    """Where each pack's icon table lies in the bundle: before its `d("fab",p)` registration."""
    ends = {m.group(1): m.start() for m in re.finditer(r'\w\("(fab|far|fas)",\w\)', js)}
    order = sorted(ends, key=ends.get)
    return {pack: (ends[order[i - 1]] if i else 0, ends[pack]) for i, pack in enumerate(order)}


def icon(js: str, region: tuple[int, int], name: str) -> tuple[int, int, str]:
    key = f'"{name}"' if not re.fullmatch(r"[A-Za-z_$][\w$]*", name) else f'"?{name}"?'
    pattern = re.compile(r"[{,]" + key + r':\[(\d+),(\d+),\[[^\]]*\],"[0-9a-f]*","([^"]+)"\]')
    m = pattern.search(js, *region)
    if m is None:
        raise KeyError(name)
    return int(m.group(1)), int(m.group(2)), m.group(3)


def subset(bundle: Path, used: set[tuple[str, str]]) -> str:
    import json

    js = bundle.read_text()
    regions = pack_regions(js)
    icons = {}
    for pack, name in sorted(used):
        try:
            icons[f"{pack} {name}"] = icon(js, regions[pack], name)
        except KeyError:  # not a Font Awesome icon (a class that only looks like one)
            pass
    start = js.index(":host,:root{--fa-font-solid")
    css = js[start:js.index("'", start)]
    header = ("/*! Font Awesome Free (https://fontawesome.com, icons CC BY 4.0, code MIT): the "
              f"{len(icons)} icons this site shows, taken from pydata-sphinx-theme's "
              "fontawesome.js by book/_ext/icon_subset.py. */\n")
    return header + RENDER % {"icons": json.dumps(icons, separators=(",", ":")),
                              "packs": json.dumps(PACKS), "css": json.dumps(css)}


def replace_bundle(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    import pydata_sphinx_theme

    bundle = Path(pydata_sphinx_theme.__file__).parent / "theme" / "pydata_sphinx_theme" / \
        "static" / "scripts" / "fontawesome.js"
    out = Path(app.outdir) / "_static" / "scripts"
    (out / "fontawesome.js").write_text(subset(bundle, icons_used(Path(app.outdir))))
    (out / "fontawesome.js.map").unlink(missing_ok=True)  # the map of the full bundle


def setup(app):
    app.connect("build-finished", replace_bundle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
