"""The translation catalogs: what is left to translate, filling it in, and the checks the tests run.

    python -m transformer_course.tools.translations todo [--lang zh] [PAGE ...]
        untranslated and fuzzy messages (PAGE: chapters/03_attention, book/intro,
        transformer_course/checks/attention), as JSON
    python -m transformer_course.tools.translations fill [--lang zh] PAGE FILE.json
        write FILE.json ({"msgid": "msgstr", ...}) into PAGE's catalog; a filled message is no
        longer fuzzy, so fill only what you have reviewed (CONTRIBUTING.md, "Translating")
    python -m transformer_course.tools.translations check [--lang zh]
        every problem the tests would report, a line each

A page's catalog is locales/<lang>/LC_MESSAGES/<page>.po. The package's own messages (the checks'
feedback, the grader's: every tr("...") and trf("...") of transformer_course.i18n) have a catalog
per module, transformer_course/locales/<lang>/LC_MESSAGES/<module>.po (PAGE
transformer_course/checks/attention), compiled together into transformer_course.mo. `bash tasks.sh
catalogs` makes and refreshes them all.
"""

from __future__ import annotations

import ast
import csv
import datetime
import io
import json
import re
import string
import sys
import unicodedata
from pathlib import Path

from babel.messages import mofile, pofile
from babel.messages.catalog import Catalog

from .notebooks import LANGS, LOCALES, ROOT
PACKAGE_LOCALES = ROOT / "transformer_course" / "locales"
CODE_COLUMN = 88  # the book's code column, in display columns

# Parts of a message that are the same in every language: code spans, math, link targets, MyST
# roles and references, HTML tags, format placeholders.
VERBATIM = re.compile(r"``.+?``|`[^`]+`|\$\$.+?\$\$|\$[^$]+\$|\]\([^)]*\)|\{[a-z-]+\}`[^`]*`|\[\^[^\]]+\]"
                      r"|</?[A-Za-z][^<>]*>|\{[^{}\s]*\}")
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")


PACKAGE_SOURCES = ("checks/*.py", "tools/grade.py", "tools/bridge.py", "tools/selfcheck.py")


def catalog_path(page: str, lang: str = "zh") -> Path:
    if page.startswith("transformer_course/"):
        return PACKAGE_LOCALES / LANGS[lang] / "LC_MESSAGES" / f"{page.removeprefix('transformer_course/')}.po"
    return LOCALES / LANGS[lang] / "LC_MESSAGES" / f"{page}.po"


def pages(lang: str = "zh") -> list[str]:
    found = []
    for base, prefix in ((LOCALES, ""), (PACKAGE_LOCALES, "transformer_course/")):
        base = base / LANGS[lang] / "LC_MESSAGES"
        found += sorted(prefix + str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.po"))
    return found


def package_messages() -> dict[str, list[str]]:
    """Module (transformer_course/checks/attention) -> the English messages of its tr() and trf()
    calls, in order of appearance."""
    out = {}
    for pattern in PACKAGE_SOURCES:
        for path in sorted((ROOT / "transformer_course").glob(pattern)):
            ids = []
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("tr", "trf") and node.args \
                        and isinstance(node.args[0], ast.Constant) and node.args[0].value not in ids:
                    ids.append(node.args[0].value)
            if ids:
                out[str(path.relative_to(ROOT).with_suffix(""))] = sorted(ids, key=ids.index)
    return out


def package_catalogs(lang: str = "zh") -> None:
    """Bring the package's catalogs up to date with its code (as `sphinx-intl update` does for the
    pages: new messages empty, changed ones fuzzy, gone ones dropped) and compile them."""
    messages = package_messages()
    base = PACKAGE_LOCALES / LANGS[lang] / "LC_MESSAGES"
    for module, ids in messages.items():
        template = Catalog(locale=LANGS[lang], project="transformer-course")
        for msgid in ids:
            template.add(msgid, flags=("python-brace-format",) if "{" in msgid else ())
        path = catalog_path(module, lang)
        if path.exists():
            cat = read(module, lang)
            before = [(m.id, m.string, m.fuzzy) for m in cat if m.id]
            cat.update(template, no_fuzzy_matching=False)
            cat.obsolete.clear()
            if before == [(m.id, m.string, m.fuzzy) for m in cat if m.id]:
                continue
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            cat = template
        write(module, cat, lang)
        print(f"wrote {path.relative_to(ROOT)}")
    for po in base.rglob("*.po"):
        if "transformer_course/" + str(po.relative_to(base).with_suffix("")) not in messages:
            po.unlink()
            print(f"deleted {po.relative_to(ROOT)} (its module has no messages now)")
    mo = base / "transformer_course.mo"
    data = compiled(lang)
    if not mo.exists() or mo.read_bytes() != data:
        mo.write_bytes(data)
        print(f"wrote {mo.relative_to(ROOT)}")


def compiled(lang: str = "zh") -> bytes:
    """The package's catalogs as one .mo (what gettext reads), translated messages only."""
    fixed = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)  # the same bytes every time
    merged = Catalog(locale=LANGS[lang], project="transformer-course", creation_date=fixed, revision_date=fixed)
    for page in pages(lang):
        if page.startswith("transformer_course/"):
            for m in read(page, lang):
                if m.id and m.string and not m.fuzzy:
                    merged.add(m.id, m.string)
    buf = io.BytesIO()
    mofile.write_mo(buf, merged, use_fuzzy=False)
    return buf.getvalue()


def read(page: str, lang: str = "zh"):
    with open(catalog_path(page, lang), "rb") as f:
        return pofile.read_po(f, charset="utf-8")


def write(page: str, catalog, lang: str = "zh") -> None:
    with open(catalog_path(page, lang), "wb") as f:
        pofile.write_po(f, catalog, width=0, omit_header=False)


def todo(page: str, lang: str = "zh") -> list[dict]:
    return [{"id": m.id, "fuzzy_translation": m.string if m.fuzzy else ""}
            for m in read(page, lang) if m.id and (not m.string or m.fuzzy)]


def fill(page: str, translations: dict, lang: str = "zh") -> int:
    cat = read(page, lang)
    n = 0
    for m in cat:
        if m.id and m.id in translations:
            m.string = translations[m.id]
            m.flags.discard("fuzzy")
            n += 1
    write(page, cat, lang)
    return n


def fields(text: str) -> list:
    """The replacement fields of a format string or f-string template, sorted."""
    try:
        return sorted(f"{{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}"
                      for _, name, spec, conv in string.Formatter().parse(text) if name is not None)
    except ValueError as e:
        return [f"unbalanced braces: {e}"]


def width(text: str) -> int:
    """Display columns: East Asian wide and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def verbatim(text: str) -> list[str]:
    return sorted(VERBATIM.findall(text))


def prose(text: str) -> str:
    """The words of a message: without code, math, link targets and tags."""
    return VERBATIM.sub(" ", text)


def glossary(lang: str = "zh") -> list[dict]:
    with open(LOCALES / LANGS[lang] / "glossary.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return sorted(rows, key=lambda r: -len(r["english"]))  # longest first: "KV cache" before "cache"


def glossary_problems(msgid: str, msgstr: str, terms: list[dict]) -> list[str]:
    """Each term of the glossary in the English message must be rendered by its one translation."""
    if not msgstr:
        return []
    if any(r["english"] == msgid for r in terms):  # a heading that is itself a term
        want = next(r["chinese"] for r in terms if r["english"] == msgid)
        return [] if msgstr == want else [f"{msgid!r} is translated {want!r} everywhere"]
    problems, text = [], prose(msgid)
    for r in terms:
        if "the eight sections" in r["note"] or r["note"] == "interface":
            continue
        flags = 0 if r["english"][0].isupper() else re.I
        pattern = re.compile(rf"(?<![\w-]){re.escape(r['english'])}(?:s|es)?(?![\w-])", flags)
        if pattern.search(text):
            if r["chinese"] not in msgstr:
                problems.append(f"{r['english']!r} is translated {r['chinese']!r} (locales glossary)")
            text = pattern.sub(" ", text)
    return problems


def message_problems(m, terms: list[dict]) -> list[str]:
    """What is wrong with one catalog entry, in words a translator can act on."""
    if not m.id:
        return []
    if not m.string:
        return ["not translated"]
    if m.fuzzy:
        return ["fuzzy: the English changed; check the translation, then fill it (clears the flag)"]
    out = []
    if verbatim(m.id) != verbatim(m.string):
        gone = set(verbatim(m.id)) - set(verbatim(m.string))
        extra = set(verbatim(m.string)) - set(verbatim(m.id))
        out.append(f"code, math, links and placeholders must stay as they are: missing {sorted(gone)}, "
                   f"added {sorted(extra)}")
    if fields(m.id) != fields(m.string):
        out.append(f"the {{placeholders}} must stay exactly as in the English: {fields(m.id)}")
    missing = set(NUMBER.findall(prose(m.id))) - set(NUMBER.findall(prose(m.string)))
    if missing:
        out.append(f"numbers of the English missing: {sorted(missing)}")
    if m.id.count("\n") != m.string.count("\n"):
        out.append(f"the English has {m.id.count(chr(10))} line breaks: keep them")
    for en, zh in zip(m.id.split("\n"), m.string.split("\n")):
        if width(zh) > max(CODE_COLUMN, width(en)) and ("\n" in m.id or "{" in m.id):
            out.append(f"a line is {width(zh)} columns wide: more than the code column ({CODE_COLUMN}) and "
                       "than the English")
    if "$" not in m.id and re.search(r"\\[a-zA-Z]+", prose(m.id)):  # a display-math block: copied as it is
        return out + ([] if m.string == m.id else ["a display-math block is copied exactly (\\text{} too)"])
    return out + glossary_problems(m.id, m.string, terms)


def check(lang: str = "zh") -> list[str]:
    terms = glossary(lang)
    out, package = [], {}
    for page in pages(lang):
        for m in read(page, lang):
            for p in message_problems(m, terms):
                out.append(f"{catalog_path(page, lang).relative_to(ROOT)}: {m.id[:60]!r}: {p}")
            if page.startswith("transformer_course/") and m.id and m.string:
                package.setdefault(m.id, {}).setdefault(m.string, []).append(page)
    # the package's catalogs compile into one .mo, which keeps one translation of each message
    out += [f"{m[:60]!r} is translated differently in {sorted(p for ps in ways.values() for p in ps)}"
            for m, ways in package.items() if len(ways) > 1]
    return out


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    lang = "zh"
    if "--lang" in args:
        i = args.index("--lang")
        lang = args[i + 1]
        del args[i:i + 2]
    cmd, rest = (args[0], args[1:]) if args else ("help", [])
    if cmd == "todo":
        print(json.dumps({p: todo(p, lang) for p in (rest or pages(lang))}, ensure_ascii=False, indent=1))
    elif cmd == "fill" and len(rest) == 2:
        print(f"filled {fill(rest[0], json.loads(Path(rest[1]).read_text()), lang)} messages of {rest[0]}")
    elif cmd == "check" and not rest:
        problems = check(lang)
        print("\n".join(problems) or "every message is translated and consistent")
        sys.exit(1 if problems else 0)
    else:
        print(__doc__)
        sys.exit(0 if cmd == "help" else 2)


if __name__ == "__main__":
    main()
