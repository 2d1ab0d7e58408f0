"""A similarity report for instructors: which exercise answers are nearly the published
solution, or nearly another student's answer, once names, formatting and comments are set aside.

The course is open and its solutions are public, so copying cannot be prevented; this report
only points an instructor at answers worth a conversation. A high score proves nothing by
itself (a study group, the same hint, or an exercise with one natural answer all give one).

    from transformer_course.tools.similarity import report
    matches = report({(student, exercise): student_cell_source, ...},
                     {exercise: solution_cell_source, ...})
    for (student, exercise), m in sorted(matches.items()):
        if m.flagged:
            print(student, exercise, m.tokens, m.to_solution, m.closest, m.to_closest)

What to pass. Exercises are keyed by grade_id. An answer is the student's solution cell as
submitted; a solution is the instructor's cell from solutions/, with its `### BEGIN SOLUTION` /
`### END SOLUTION` markers. The code outside the markers (signature, docstring, input checks:
`scaffold(solution)`, the student edition's cell) is what everyone was given; its lines are
removed from every answer and from the solution before comparing, so only what the student
wrote counts. An answer given as just the student's own lines works as well.

Normalising (`normalise`):
- code that parses is laid out one way first (`ast.parse` then `ast.unparse`): brackets,
  quotes, line breaks, spacing, trailing commas and comments (the nbgrader markers and
  `# YOUR CODE HERE` with them) stop mattering. Code that does not parse is repaired for this
  when replacing up to one line in ten by `pass` (or `if True:`, for a block's header) makes it
  parse: the copy with a typo still compares, less those lines. Otherwise it is taken as
  written: Python's tokenizer as far as it goes, then a rough regular-expression tokenizer for
  the rest. Nothing here raises on bad code;
- dropped: docstrings and any other string standing alone as a statement, indentation;
  `raise NotImplementedError(...)` statements (the stub) when an answer is compared;
- kept: one token for each end of a logical line (statement or block header), so that the
  structure counts; strings and numbers by value (`1e-6` == `0.000001`; in an f-string the
  `{...}` parts are left out, as they hold names);
- renamed by first appearance (v0, v1, ...): every name the code binds, which is what a
  copier can rename freely: variables, loop/`with`/`except` targets, parameters, functions
  and classes it defines (found with `ast`, on the repaired copy if need be; code beyond
  repair has every name but the builtins renamed);
- kept as written: names the code does not bind (builtins such as `len`, modules such as
  `torch`, `math`, `F`, the course's helpers such as `split_heads`; `import` does not count as
  binding), attribute names (`x.transpose`, `self.w_q`) and keyword-argument names in calls
  (`dim=-1`). The APIs an answer uses fix these; keeping them keeps apart two answers that take
  different routes, and renaming them would not hide a copy anyway.

The measure (`similarity`). Each normalised stream is cut into overlapping K-grams (K = 5
tokens; the whole stream if shorter), and a K-gram occurring n times counts n times. Within
each K-gram names are renumbered by their first appearance in it, so that one name added or
lost early does not renumber every K-gram after it. The score is the Jaccard index of the two
multisets, |A & B| / |A | B|: 1.0 for copies up to renaming, reformatting and comments, 0.0 for
nothing in common. Reordering independent statements changes only the K-grams that straddle a
moved statement's edges (two statements of beam_search swapped: 0.99). An empty answer or a
stub scores 0.0 against everything.

The report (`report`). For each (student, exercise): the answer's length in normalised tokens
(line ends included), its similarity to the solution, and the other student whose answer to
the same exercise is most similar, from all pairs. Stubs are never flagged and never anyone's
closest. Measured (tests/test_similarity.py, benchmarks/similarity.py): a copy of a solution
renamed, re-indented, re-quoted and re-commented scores 1.0 (beam_search, train_bpe, KVCache,
scaled_dot_product_attention); correct answers written independently 0.12 to 0.18; the
disguised copy of beam_search with a syntax error 0.9. A class of 300, every pair: chapter 09
(6 exercises, 269,100 pairs) in 5 s of CPU, chapter 12 (4 long exercises) in 12 s, most of it
normalising; the pairs take 1 and 5 s (one process, Python 3.11, an AMD EPYC core;
benchmarks/results/similarity_cpu.csv).

Limitations, honestly:
- Short answers. Where the answer is a line or two (`return 2 * m * n * k`, `return
  table[ids]`, `return q @ k.transpose(-2, -1) / math.sqrt(d)`), independent correct answers
  coincide with the solution and with each other token for token: no measure on the code can
  tell a copy from a correct answer there. So an answer shorter than MIN_TOKENS (40) normalised
  tokens is never flagged, whatever its scores; scores and `tokens` are still reported. About a
  quarter of the course's exercises (21 of 79) have solutions that short; for those the report
  says nothing. Just above it, three natural lines can still coincide: layer_norm written as
  `mean = x.mean(-1, keepdim=True)`, `var = x.var(-1, unbiased=False, keepdim=True)`,
  `return (x - mean) / torch.sqrt(var + eps) * weight + bias` (51 tokens) is the solution,
  1.0, while another natural wording scores 0.29. Below about 80 tokens, read a flag next to
  the exercise before acting on it.
- What it does not see through: a loop rewritten as a comprehension, `a @ b` as
  `torch.matmul(a, b)`, variables inlined or split out, many harmless statements interleaved.
  A determined copier gets below any threshold; the report catches the lazy copy.
- Two answers that both copy the solution are each other's closest at 1.0: read
  `to_solution` first.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import re
import textwrap
import tokenize
import warnings
from collections import defaultdict
from dataclasses import dataclass
from difflib import SequenceMatcher
from itertools import combinations

K = 5              # tokens per K-gram
MIN_TOKENS = 40    # shorter answers are never flagged (see "Short answers" above)
MARKER = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")
BUILTINS = set(dir(builtins))
NAME, OP, NUMBER, STRING, NEWLINE = tokenize.NAME, tokenize.OP, tokenize.NUMBER, tokenize.STRING, tokenize.NEWLINE
FSTRING = tuple(getattr(tokenize, f"FSTRING_{x}", -1) for x in ("START", "MIDDLE", "END"))  # Python >= 3.12
# what the rough tokenizer takes a piece of code that Python's tokenizer rejected apart into
ROUGH = re.compile(r"""(?P<comment>\#[^\n]*)
    |(?P<string>[rRbBfFuU]{0,2}(?:'''[\s\S]*?'''|\"\"\"[\s\S]*?\"\"\"|'[^'\n]*'|"[^"\n]*"))
    |(?P<number>\d[\w.]*)|(?P<name>\w+)|(?P<newline>\n)
    |(?P<op>\*\*=?|//=?|>>=?|<<=?|->|:=|\.\.\.|[-+*/%@&|^<>=!]=|[^\s\w])""", re.X)
ROUGH_KIND = {"string": STRING, "number": NUMBER, "name": NAME, "newline": NEWLINE, "op": OP}


# --- tokens ------------------------------------------------------------------------------------

def _rough_tokens(code: str) -> list[tuple[int, str]]:
    """What _tokens gives, roughly, for code Python's tokenizer rejects."""
    out, depth = [], 0
    for m in ROUGH.finditer(code):
        kind, text = m.lastgroup, m.group()
        if kind == "comment" or (kind == "newline" and depth > 0):
            continue
        depth += (text in "([{") - (text in ")]}") if kind == "op" else 0
        depth = max(depth, 0)
        out.append((ROUGH_KIND[kind], text))
    return out


def _tokens(code: str) -> list[tuple[int, str]]:
    """(type, text) of code's significant tokens: names, operators, numbers, strings and the
    ends of logical lines (NEWLINE). Python's tokenizer as far as it goes, then rough."""
    out, done = [], 0  # done: the lines tokenized so far
    depth, start = 0, (1, 0)  # f-strings open, where the outermost began
    try:
        for t in tokenize.generate_tokens(io.StringIO(code).readline):
            if t.type in FSTRING:  # Python >= 3.12 takes f-strings apart: keep each one token
                start = t.start if depth == 0 else start
                depth += (t.type == FSTRING[0]) - (t.type == FSTRING[2])
                if depth == 0:
                    out.append((STRING, _source(code, start, t.end)))
            elif depth == 0 and t.type == tokenize.ERRORTOKEN and t.string.strip():
                out.append((OP, t.string))  # e.g. a stray `$` or `?`
            elif depth == 0 and t.type in (NAME, OP, NUMBER, STRING, NEWLINE):
                out.append((t.type, t.string))
            done = t.end[0]
    except (tokenize.TokenError, SyntaxError, ValueError):  # IndentationError is a SyntaxError
        out += _rough_tokens("\n".join(code.splitlines()[done:]))
    return out


def _source(code: str, start: tuple[int, int], end: tuple[int, int]) -> str:
    """The text of code from (row, col) start to end, rows counted from 1."""
    lines = code.splitlines(keepends=True)[start[0] - 1: end[0]]
    return "".join(lines)[start[1]: len("".join(lines)) - len(lines[-1]) + end[1]]


def _parse(code: str) -> ast.Module | None:
    """code's syntax tree, repaired if need be: while Python rejects a line, that line is
    replaced by `if True:` (a block's header) or `pass` (blanked, if that fails too), up to one
    line in ten. None when that does not make it parse."""
    lines, repaired = code.splitlines(), set()
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ast.parse("\n".join(lines))
        except (RecursionError, MemoryError):  # absurdly nested code
            return None
        except (SyntaxError, ValueError) as e:  # ValueError: null bytes
            i = (getattr(e, "lineno", None) or 0) - 1
            if not 0 <= i < len(lines) or not lines[i].strip() or len(repaired | {i}) > max(1, len(lines) // 10):
                return None
            line = lines[i]
            indent = line[: len(line) - len(line.lstrip())]
            header = line.split("#")[0].rstrip().endswith(":")
            lines[i] = "" if i in repaired else indent + ("if True:" if header else "pass")
            repaired.add(i)


def _bound(tree: ast.Module) -> set[str]:
    """The names a tree binds: assigned or deleted names, loop/with/except/match targets,
    parameters, functions and classes defined."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                               ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
    return names


def _literal(text: str) -> str:
    try:
        with warnings.catch_warnings():  # a student's "\d" is not the instructor's concern
            warnings.simplefilter("ignore")
            return repr(ast.literal_eval(text))
    except Exception:  # an f-string (its {expressions} left out: they hold names), or a rough token
        text, n = text.replace("'", '"'), 1
        while n:
            text, n = re.subn(r"\{[^{}]*\}", "\0", text)
        return text.replace("\0", "{}")


def _lex(code: str) -> list[tuple[str, bool]]:
    """code's normalised tokens, not yet renamed, as (text, whether to rename it)."""
    code = textwrap.dedent(code.replace("\r\n", "\n"))
    tree = _parse(code)
    if tree:
        try:
            code = ast.unparse(tree)  # one layout for all: brackets, quotes, line breaks
        except Exception:  # RecursionError on absurdly nested code: take it as written
            pass
    toks, bound = _tokens(code), _bound(tree) if tree else None
    out, brackets = [], []  # brackets: for each open bracket, whether it is a call's
    for i, (kind, text) in enumerate(toks):
        prev = toks[i - 1] if i else (NEWLINE, "\n")
        after = toks[i + 1] if i + 1 < len(toks) else (NEWLINE, "\n")
        if kind == STRING and prev[0] == NEWLINE and after[0] == NEWLINE:
            continue  # a docstring, or a string standing alone as a comment
        if kind == NEWLINE or text == ";":
            if out and out[-1][0] != "\n":
                out.append(("\n", False))
            continue
        if kind == OP and text in "([{":
            brackets.append(text == "(" and (prev[1] in ")]" or prev[0] == NAME and not keyword.iskeyword(prev[1]))
                            and not (i >= 2 and toks[i - 2][1] == "def"))
        elif kind == OP and text in ")]}" and brackets:
            brackets.pop()
        if text == "," and after[1] in (")", "]", "}"):
            continue  # a trailing comma
        if kind == STRING or kind == NUMBER:
            text = _literal(text)
        rename = (kind == NAME and _is_name(text) and prev[1] != "."
                  and not (brackets and brackets[-1] and after[1] == "=")
                  and (text in bound if bound is not None else text not in BUILTINS))
        out.append((text, rename))
    while out and out[-1][0] == "\n":
        out.pop()
    return out


def _is_name(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text)


def _rename(lexed: list[tuple[str, bool]]) -> list[str]:
    names = {}
    return [names.setdefault(t, f"v{len(names)}") if r else t for t, r in lexed]


def normalise(code: str) -> list[str]:
    """The token stream of Python code, normalised as the module docstring says ("\\n" ends
    each logical line). Never raises."""
    return _rename(_lex(code))


# --- the code an exercise gives ------------------------------------------------------------------

def scaffold(solution: str) -> str:
    """The code an exercise gives: the student edition's cell, each BEGIN/END SOLUTION block of
    the solution cell replaced by the stub; "" for code without the markers."""
    if not any(MARKER.match(line) for line in solution.splitlines()):
        return ""
    out, inside = [], False
    for line in solution.splitlines():
        m = MARKER.match(line)
        if m and m.group(1) == "BEGIN":
            out.append(line[: len(line) - len(line.lstrip())] + "raise NotImplementedError()")
        if m:
            inside = m.group(1) == "BEGIN"
        elif not inside:
            out.append(line)
    return "\n".join(out)


def _drop_stubs(lexed: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """lexed without its `raise NotImplementedError(...)` statements."""
    out, skipping = [], False
    for i, x in enumerate(lexed):
        if (x[0] == "raise" and lexed[i + 1: i + 2] == [("NotImplementedError", False)]
                and (not out or out[-1][0] in ("\n", ":"))):
            skipping = True
        if not skipping:
            out.append(x)
        elif x[0] == "\n":
            skipping = False
    return out


def _strip(lexed: list[tuple[str, bool]], given: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """lexed without the lines (logical lines: statements, block headers) it shares, in order,
    with given. Any name matches any name here, so that renaming a parameter does not make the
    given code the student's."""
    if not given:
        return lexed
    mine, theirs = _lines(lexed), _lines(given)
    keys = [[tuple("\0" if _is_name(t) else t for t, _ in line) for line in x] for x in (mine, theirs)]
    keep = [True] * len(mine)
    for i, _, n in SequenceMatcher(None, *keys, autojunk=False).get_matching_blocks():
        keep[i: i + n] = [False] * n
    return [x for line, k in zip(mine, keep) if k for x in line + [("\n", False)]][:-1]


def _lines(lexed: list[tuple[str, bool]]) -> list[list[tuple[str, bool]]]:
    out = [[]]
    for x in lexed:
        if x[0] == "\n":
            out.append([])
        else:
            out[-1].append(x)
    return out


def _answer(code: str, given: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """What the student wrote, lexed: code without the given code and without stubs."""
    return _strip(_drop_stubs(_lex(code)), given)


def _is_stub(lexed: list[tuple[str, bool]]) -> bool:
    """Nothing left but `pass` or `...` (the stubs are gone already)."""
    return all(t in ("\n", "pass", "...") for t, _ in lexed)


# --- the measure -------------------------------------------------------------------------------

def _fingerprints(lexed: list[tuple[str, bool]]) -> set[int]:
    """The stream's K-grams as a set of hashes, the n-th repeat of a K-gram hashed apart. Names
    are renamed by first appearance within each K-gram, so that a name added, lost or moved
    elsewhere does not renumber the names of every K-gram after it."""
    seen: dict[tuple, int] = defaultdict(int)
    out = set()
    for i in range(max(1, len(lexed) - K + 1) if lexed else 0):
        gram = tuple(_rename(lexed[i: i + K]))
        out.add(hash((gram, seen[gram])))
        seen[gram] += 1
    return out


def _jaccard(a: set[int], b: set[int]) -> float:
    if not a or not b:
        return 0.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def similarity(a: str, b: str, given: str = "") -> float:
    """Jaccard index of the K-gram multisets of the normalised answers a and b, in [0, 1]; 0.0
    if either is empty or a stub. given: code both were given (e.g. `scaffold(solution)`),
    whose lines are removed from both first."""
    g = _drop_stubs(_lex(given)) if given.strip() else []
    ta, tb = _answer(a, g), _answer(b, g)
    if _is_stub(ta) or _is_stub(tb):
        return 0.0
    return _jaccard(_fingerprints(ta), _fingerprints(tb))


# --- the report --------------------------------------------------------------------------------

@dataclass
class Match:
    tokens: int          # the answer's length in normalised tokens (given code and stubs removed)
    to_solution: float   # similarity to the published solution
    closest: str | None  # the other student whose answer to this exercise is most similar
    to_closest: float    # ... and that similarity (0.0 when none)
    stub: bool           # still the stub: never flagged, never anyone's closest
    flagged: bool        # not a stub, tokens >= min_tokens, and a similarity >= threshold


def report(answers: dict[tuple[str, str], str], solutions: dict[str, str], threshold: float = 0.9,
           min_tokens: int = MIN_TOKENS) -> dict[tuple[str, str], Match]:
    """A Match for every (student, exercise) of answers (-> the student's code); solutions maps
    exercise -> the published solution's cell (with its markers; the code outside them is
    removed from every answer). Every pair of answers to the same exercise is compared."""
    by_exercise: dict[str, list[str]] = defaultdict(list)
    for student, exercise in sorted(answers):
        by_exercise[exercise].append(student)
    out = {}
    for exercise, students in by_exercise.items():
        solution = solutions.get(exercise, "")
        given = _drop_stubs(_lex(scaffold(solution))) if solution else []
        sol = _fingerprints(_answer(solution, given)) if solution else set()
        code = {s: answers[s, exercise] for s in students}
        lexed = {c: _answer(c, given) for c in set(code.values())}  # many answers are the same stub
        prints = {c: _fingerprints(t) for c, t in lexed.items() if not _is_stub(t)}
        live = [s for s in students if code[s] in prints]
        closest: dict[str, tuple[str | None, float]] = {s: (None, 0.0) for s in students}
        for a, b in combinations(live, 2):
            score = _jaccard(prints[code[a]], prints[code[b]])
            if score > closest[a][1]:
                closest[a] = (b, score)
            if score > closest[b][1]:
                closest[b] = (a, score)
        for s in students:
            stub, n = code[s] not in prints, len(lexed[code[s]])
            to_solution = 0.0 if stub else _jaccard(prints[code[s]], sol)
            other, to_other = closest[s]
            flagged = not stub and n >= min_tokens and max(to_solution, to_other) >= threshold
            out[s, exercise] = Match(n, to_solution, other, to_other, stub, flagged)
    return out
