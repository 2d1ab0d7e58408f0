"""The Chinese edition cannot drift: every message translated, consistent and well formed, the
student notebooks and the checks' feedback in Chinese, and the Chinese site built offline."""

import ast
import builtins
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from transformer_course.i18n import fstring_source
from transformer_course.tools import translations as tr_tool
from transformer_course.tools.notebooks import CHAPTERS, ROOT, book, solution_notebooks

CJK = re.compile("[\u4e00-\u9fff]")


def test_every_message_is_translated_and_consistent():
    """Untranslated or fuzzy messages, changed code/math/links/placeholders, lost numbers, glossary
    terms rendered otherwise, lines wider than the code column: `translations check` lists them."""
    problems = tr_tool.check("zh")
    assert not problems, f"{len(problems)} problems, e.g.:\n" + "\n".join(problems[:15])


class _Msg:
    def __init__(self, msgid, msgstr, fuzzy=False):
        self.id, self.string, self.fuzzy = msgid, msgstr, fuzzy


@pytest.mark.parametrize("msgid, msgstr, fuzzy, says", [
    ("The KV cache grows.", "", False, "not translated"),
    ("The KV cache grows.", "键值缓存增长。", True, "fuzzy"),
    ("Call `f(x)` on $x$.", "调用 `f(y)`，作用于 $x$。", False, "code, math"),
    ("It takes 128 steps.", "它需要 12 步。", False, "numbers"),
    ("The KV cache grows.", "KV 缓存增长。", False, "glossary"),
    ("Goal", "目的", False, "everywhere"),
    ("{what} has shape {list(got.shape)}", "{what} 的形状是 {got.shape}", False, "placeholders"),
    ("a\nb", "甲乙", False, "line breaks"),
    ("{n} rows", "{n} " + "行" * 50, False, "columns wide"),
    ("E = \\frac{1}{N} \\text{tokens}", "E = \\frac{1}{N} \\text{词元}", False, "display-math"),
    ("The source notes say so.", "源笔记这么说。", False, "glossary"),
])
def test_the_checker_catches_each_kind_of_mistake(msgid, msgstr, fuzzy, says):
    problems = tr_tool.message_problems(_Msg(msgid, msgstr, fuzzy), tr_tool.glossary("zh"))
    assert any(says in p for p in problems), problems
    assert not tr_tool.message_problems(_Msg("The KV cache of `f(x)` holds 12 tokens.",
                                             "`f(x)` 的键值缓存保存 12 个词元。"), tr_tool.glossary("zh"))


def test_catalogs_match_the_code_and_the_compiled_catalog():
    """Each tr()/trf() message of the package is in its module's catalog, and the .mo that gettext
    reads is compiled from the catalogs as they are (`bash tasks.sh catalogs` remakes both)."""
    for module, ids in tr_tool.package_messages().items():
        in_catalog = [m.id for m in tr_tool.read(module) if m.id]
        assert sorted(in_catalog) == sorted(ids), f"{module}: run `bash tasks.sh catalogs`"
    mo = tr_tool.PACKAGE_LOCALES / "zh_CN" / "LC_MESSAGES" / "transformer_course.mo"
    assert mo.read_bytes() == tr_tool.compiled("zh"), "run `bash tasks.sh catalogs`"


SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
          ast.GeneratorExp)


def _template_names(template: str) -> set:
    tree = ast.parse(fstring_source(template), mode="eval")
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - bound


def _visible(scope) -> set:
    """Names trf's eval finds in a scope's frame: its arguments and every name the scope uses."""
    out = set()
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        a = scope.args
        out |= {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x}
    for n in ast.walk(scope):
        if isinstance(n, ast.ExceptHandler) and n.name:
            out.add(n.name)
        if isinstance(n, ast.Name):
            out.add(n.id)
    return out


def test_every_trf_template_can_be_filled_where_it_runs():
    """trf() fills a template from its caller's frame: a name the template needs must be visible
    there (an enclosing function's local that the caller never uses is not)."""
    problems = []
    for path in sorted((ROOT / "transformer_course").rglob("*.py")):
        tree = ast.parse(path.read_text())
        module = set(dir(builtins))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                module.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                module |= {(a.asname or a.name).split(".")[0] for a in node.names}
        module |= {n.id for s in tree.body for n in ast.walk(s) if not isinstance(s, (ast.FunctionDef, ast.ClassDef))
                   and isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}

        def visit(node, scope):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "trf":
                if not (node.args and isinstance(node.args[0], ast.Constant)):
                    problems.append(f"{path.name}:{node.lineno}: trf takes one string literal")
                else:
                    known = _visible(scope) if scope is not None else set()
                    problems.extend(f"{path.name}:{node.lineno}: {name} is not visible"
                                    for name in _template_names(node.args[0].value) - known - module)
            for child in ast.iter_child_nodes(node):
                visit(child, node if isinstance(node, SCOPES) else scope)

        visit(tree, None)
    assert not problems, problems


def _run(code: str, lang: str) -> str:
    env = {**os.environ, "TRANSFORMER_COURSE_LANG": lang}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout


CHECK_A_WRONG_SOFTMAX = """
import torch
from transformer_course.checks import CheckFailed
from transformer_course.checks.attention import check_scaled_dot_product_attention
def sdpa(q, k, v, mask=None):
    w = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-2)
    return w @ v
def stub(q, k, v, mask=None):
    raise NotImplementedError()
for fn in (sdpa, stub):
    try:
        check_scaled_dot_product_attention(fn)
    except CheckFailed as e:
        print(e)
"""


def test_the_checks_speak_the_learners_language():
    """The same wrong answers, diagnosed in English and, with TRANSFORMER_COURSE_LANG=zh_CN, in Chinese."""
    en, zh = _run(CHECK_A_WRONG_SOFTMAX, "en"), _run(CHECK_A_WRONG_SOFTMAX, "zh_CN")
    assert "softmax ran over the queries (dim=-2)" in en and "not implemented yet" in en, en
    assert len(CJK.findall(zh)) > 20 and "dim=-2" in zh and "not implemented yet" not in zh, zh
    assert len(en.splitlines()) == len(zh.splitlines())


def test_chinese_student_notebooks_grade_like_the_english_ones():
    """zh/chapters/ has every chapter, with the same cells, ids, nbgrader metadata and code (but the
    language setting), its markdown in Chinese."""
    for src in solution_notebooks():
        en, zh = (nbformat.read(d / src.name, as_version=4) for d in (CHAPTERS, ROOT / "zh" / "chapters"))
        assert zh.metadata["transformer_course"] == {"language": "zh_CN"}
        assert [(c.id, c.cell_type, c.metadata) for c in en.cells] == [(c.id, c.cell_type, c.metadata) for c in zh.cells]
        code = [(a.source, b.source) for a, b in zip(en.cells, zh.cells) if a.cell_type == "code"]
        changed = [b for a, b in code if a != b]
        assert len(changed) == 1 and 'os.environ["TRANSFORMER_COURSE_LANG"] = "zh_CN"' in changed[0], src.stem
        markdown = "\n".join(c.source for c in zh.cells if c.cell_type == "markdown")
        words = "\n".join(c.source for c in en.cells if c.cell_type == "markdown")
        assert len(CJK.findall(markdown)) > len(words) / 8, f"{src.stem}: markdown mostly untranslated"
        assert "<summary>Answer</summary>" not in markdown


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    return book(tmp_path_factory.mktemp("book-zh"), lang="zh")


def test_the_chinese_site_builds_and_links_to_the_english_one(html):
    for nb in solution_notebooks():
        page = (html / "chapters" / f"{nb.stem}.html").read_text()
        assert 'lang="zh-CN"' in page
        assert f'href="../../chapters/{nb.stem}.html"' in page, "the language menu leads to the same page"
        assert f'href="../../zh/chapters/{nb.stem}.html"' in page
        assert 'target="_blank"\n   class="btn btn-sm btn-language' not in page, "the other edition opens in place"
        assert "<summary>Answer</summary>" not in page and "Show solution" not in page
        served = (html / "_sources" / "chapters" / nb.name).read_text()
        assert served == (ROOT / "zh" / "chapters" / nb.name).read_text(), "Download gives the Chinese notebook"
        assert f"/zh/chapters/{nb.name}" in page, "the launch buttons open the Chinese notebook"
    intro = (html / "book" / "intro.html").read_text()
    assert len(CJK.findall(intro)) > 300
    for caption in re.findall(r"caption: (.+)", (ROOT / "_toc.yml").read_text()):
        assert f">{caption}<" not in intro, f"the sidebar's part {caption!r} is not translated"


def test_chinese_search_finds_words(html):
    """Sphinx splits Chinese into words with jieba: the index holds words, not single characters
    or whole sentences."""
    text = (html / "searchindex.js").read_text()
    terms = json.loads(text[text.index("(") + 1: text.rindex(")")])["terms"]
    for word in ("注意力", "缓存", "掩码", "词元"):
        assert word in terms, word


EVERY_CASE_IN_CHINESE = r"""
import contextlib, io, json, re, sys
sys.path.insert(0, "tests")
from test_checks import EXERCISES, _stub
from transformer_course.checks import CheckFailed, NotImplementedYet
cjk = re.compile("[\u4e00-\u9fff]")
out = []
for key, ex in EXERCISES.items():
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ex.check(ex.solution)
    if not cjk.search(printed.getvalue()):
        out.append(f"{key}: the solution's praise is not Chinese: {printed.getvalue()!r}")
    try:
        ex.check(_stub(key[1]))
        out.append(f"{key}: the stub passed")
    except NotImplementedYet as e:
        if not cjk.search(str(e)):
            out.append(f"{key}: the stub's message is not Chinese")
    for i, (wrong, _) in enumerate(ex.wrong):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                ex.check(wrong)
            out.append(f"{key}/{i}: a wrong answer passed in Chinese")
        except NotImplementedYet:
            out.append(f"{key}/{i}: a wrong answer read as not implemented")
        except CheckFailed as e:
            if not cjk.search(str(e)):
                out.append(f"{key}/{i}: not Chinese: {e}")
        except Exception as e:
            out.append(f"{key}/{i}: the check itself crashed in Chinese: {type(e).__name__}: {e}")
print(json.dumps(out))
"""


def test_every_check_works_in_chinese():
    """Every exercise of tests/exercises, in Chinese: the solution is praised, the stub and each
    wrong answer fail with a Chinese message, and no translated message breaks its check."""
    env = {**os.environ, "TRANSFORMER_COURSE_LANG": "zh_CN"}
    run = subprocess.run([sys.executable, "-c", EVERY_CASE_IN_CHINESE], env=env, capture_output=True, text=True,
                         cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    problems = json.loads(run.stdout.strip().splitlines()[-1])
    assert not problems, "\n".join(problems[:20])


def test_the_compiled_catalog_ships_in_the_wheel(tmp_path):
    """A pip install (Colab's) gets the Chinese messages: the .mo is package data in the wheel."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    wheel = next(tmp_path.glob("transformer_course-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "transformer_course/locales/zh_CN/LC_MESSAGES/transformer_course.mo" in names
    assert "transformer_course/i18n.py" in names
