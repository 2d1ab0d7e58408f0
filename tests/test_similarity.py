"""The similarity report: copies of the published solutions are found through renaming,
reformatting and new comments; independent answers, stubs and short answers are not flagged."""

import ast
import importlib
import io
import re
import tokenize
import time

import pytest

from transformer_course.tools import similarity as sim
from transformer_course.tools.notebooks import CHAPTERS, SOLUTIONS, read, solution_notebooks


def cells(folder, chapter: str) -> dict[str, str]:
    """grade_id -> source of each solution cell of a chapter's notebook in folder."""
    return {c.metadata.nbgrader.grade_id: c.source for c in read(folder / f"{chapter}.ipynb").cells
            if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}


SOLUTION = {**cells(SOLUTIONS, "01_tokens_and_embeddings"), **cells(SOLUTIONS, "09_decoding"),
            **cells(SOLUTIONS, "03_attention"), **cells(SOLUTIONS, "10_kv_cache")}
STUB = {**cells(CHAPTERS, "01_tokens_and_embeddings"), **cells(CHAPTERS, "09_decoding"),
        **cells(CHAPTERS, "03_attention"), **cells(CHAPTERS, "10_kv_cache")}


def disguised_copy(source: str, tag: str = "my") -> str:
    """What a copier does to a solution cell, by hand: every variable and parameter renamed
    (not those inside f-strings), the comments (and the solution markers) replaced by others,
    indented by 2 spaces instead of 4, other quotes, blank lines put in."""
    tree = ast.parse(source)
    in_fstrings = {n.id for f in ast.walk(tree) if isinstance(f, ast.JoinedStr)
                   for n in ast.walk(f) if isinstance(n, ast.Name)}
    spans = [(n.lineno, n.col_offset, n.id) for n in ast.walk(tree) if isinstance(n, ast.Name)]
    spans += [(n.lineno, n.col_offset, n.arg) for n in ast.walk(tree) if isinstance(n, ast.arg)]
    local = ({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
             | {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}) - in_fstrings - {"self"}
    new = {name: f"{tag}_{name.lower()}_{i}" for i, name in enumerate(sorted(local))}
    lines = source.splitlines()
    for row, col, name in sorted(spans, reverse=True):  # right to left, so offsets hold
        if name in new and lines[row - 1][col: col + len(name)] == name:
            lines[row - 1] = lines[row - 1][:col] + new[name] + lines[row - 1][col + len(name):]
    code = "\n".join(lines) + "\n"
    comments = [t for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type == tokenize.COMMENT]
    lines = code.splitlines()
    for t in reversed(comments):
        row, col = t.start
        lines[row - 1] = lines[row - 1][:col].rstrip()
    out = []
    for i, line in enumerate(lines):
        body = line.lstrip(" ")
        indent = " " * ((len(line) - len(body)) // 2)
        body = re.sub(r'(?<!")"([^"\'\\{}]*)"(?!")', r"'\1'", body)  # "abc" -> 'abc'
        if body.startswith(("for ", "if ", "return ")):
            out += ["", f"{indent}# {tag}: step {i}, in my own words"]
        if body or not out or out[-1]:
            out.append(indent + body + ("  # hmm" if body.endswith(")") and i % 3 == 0 else ""))
    return "\n".join(out)


def answer(exercise: str, body: str) -> str:
    """The student edition's cell with its stub replaced by body (written at indent 0)."""
    stub = STUB[exercise]
    indent = re.search(r"^([ \t]*)raise NotImplementedError\(\)", stub, re.M).group(1)
    return stub.replace(f"{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError()",
                        "\n".join(indent + line if line else line for line in body.strip("\n").splitlines()), 1)


# Correct answers written independently of the solutions, in another style (each passes the
# course's check: see test_independent_answers_are_correct).
INDEPENDENT = {
    "beam_search": '''
alive = [(0.0, prompt_ids[0].tolist())]
done = []
for t in range(max_new_tokens):
    batch = torch.tensor([seq for _, seq in alive], device=prompt_ids.device)
    logprobs = torch.log_softmax(model(batch)[:, -1].float(), dim=-1)
    cands = []
    for (total, seq), row in zip(alive, logprobs):
        vals, idx = torch.topk(row, min(beam_width, row.numel()))
        for lp, tok in zip(vals.tolist(), idx.tolist()):
            cands.append((total + lp, seq + [tok]))
    cands.sort(key=lambda c: c[0], reverse=True)
    alive = []
    for total, seq in cands[:beam_width]:
        if eos_id is not None and seq[-1] == eos_id:
            done.append((total / (t + 1) ** length_penalty, seq))
        else:
            alive.append((total, seq))
    if not alive:
        break
done.extend((total / max_new_tokens ** length_penalty, seq) for total, seq in alive)
best = max(done, key=lambda d: d[0])[1]
return torch.tensor([best], dtype=torch.long, device=prompt_ids.device)
''',
    "train_bpe": '''
words = {}
for piece in split_chunks(text):
    key = tuple(piece.encode("utf-8"))
    words[key] = words.get(key, 0) + 1
learned = {}
next_id = 256
while next_id < vocab_size:
    stats = pair_counts(words)
    if len(stats) == 0:
        break
    best, best_n = None, 0
    for p, n in stats.items():
        if n > best_n:
            best, best_n = p, n
    learned[best] = next_id
    new_words = {}
    for w, n in words.items():
        w2 = merge(w, best, next_id)
        new_words[w2] = new_words.get(w2, 0) + n
    words = new_words
    next_id += 1
return learned
''',
    "scaled_dot_product_attention": '''
d_k = k.size(-1)
att = torch.matmul(q, k.transpose(-1, -2)) * d_k ** -0.5
if mask is not None:
    att = att.masked_fill(mask == 0, -math.inf)
return torch.matmul(att.softmax(dim=-1), v)
''',
}


@pytest.mark.parametrize("exercise", ["beam_search", "train_bpe", "scaled_dot_product_attention", "KVCache"])
def test_a_disguised_copy_of_the_solution_scores_high(exercise):
    solution = SOLUTION[exercise]
    copy = disguised_copy(solution)
    compile(copy, exercise, "exec")
    assert "### BEGIN SOLUTION" not in copy and copy.count("my_") > 3, copy
    score = sim.similarity(copy, solution, sim.scaffold(solution))
    print(f"{exercise}: a disguised copy scores {score:.3f} to the solution")
    assert score >= 0.95


@pytest.mark.parametrize("exercise", list(INDEPENDENT))
def test_an_independent_answer_scores_clearly_lower(exercise):
    solution, mine = SOLUTION[exercise], answer(exercise, INDEPENDENT[exercise])
    score = sim.similarity(mine, solution, sim.scaffold(solution))
    print(f"{exercise}: an independent answer scores {score:.3f} to the solution")
    assert score <= 0.5  # a copy scores >= 0.95


@pytest.mark.parametrize("exercise", list(INDEPENDENT))
def test_independent_answers_are_correct(exercise):
    """Their low scores mean something only if they are right (a check raises if not)."""
    module = {"beam_search": "decoding", "train_bpe": "tokens",
              "scaled_dot_product_attention": "attention"}[exercise]
    ns = dict(vars(importlib.import_module(f"transformer_course.{module}")))
    exec(compile(answer(exercise, INDEPENDENT[exercise]), exercise, "exec"), ns)
    getattr(importlib.import_module(f"transformer_course.checks.{module}"), f"check_{exercise}")(ns[exercise])


def test_moved_and_added_statements_cost_little():
    solution = SOLUTION["beam_search"]
    given = sim.scaffold(solution)
    a = "        V = log_p.shape[-1]\n"
    b = "        candidates = (scores[:, None] + log_p).flatten()  # [n_alive * V]\n"
    assert a + b in solution
    swapped = disguised_copy(solution.replace(a + b, b + a))
    added = disguised_copy(solution.replace("    finished = []",
                                            "    finished = []\n    device = prompt_ids.device\n    n = 0"))
    moved, more = sim.similarity(swapped, solution, given), sim.similarity(added, solution, given)
    print(f"beam_search: two statements swapped {moved:.3f}, two added {more:.3f}")
    assert moved >= 0.95 and more >= 0.9


def test_every_exercise_of_the_course():
    """Every untouched student edition is a stub; every solution is its own copy; the short
    ones (never flagged) are a minority."""
    short = []
    for path in solution_notebooks():
        solutions, stubs = cells(SOLUTIONS, path.stem), cells(CHAPTERS, path.stem)
        answers = {**{("stub", e): stubs[e] for e in solutions}, **{("copy", e): solutions[e] for e in solutions}}
        r = sim.report(answers, solutions)
        for e in solutions:
            assert r["stub", e].stub and not r["stub", e].flagged and r["copy", e].closest is None, e
            assert r["copy", e].to_solution == 1.0 and r["copy", e].tokens > 0, e
            if r["copy", e].tokens < sim.MIN_TOKENS:
                short.append(e)
    print(f"{len(short)} exercises are shorter than {sim.MIN_TOKENS} tokens: {', '.join(short)}")
    assert "beam_search" not in short and "causal_mask" in short and len(short) < 79 / 3


def test_normalise_ignores_names_formatting_comments_and_markers():
    a = ("def f(x, n):\n    ### BEGIN SOLUTION\n    total = 0  # running sum\n    for i in range(n):\n"
         "        total += x[i] ** 2\n    return math.sqrt(total)\n    ### END SOLUTION\n")
    b = ('def f(x, n):\n    """Doc."""\n\n    acc=0\n    for j in range( n ,):\n        acc += x[ j ]**2\n\n'
         "    return math.sqrt(\n        acc\n    )\n")
    assert sim.normalise(a) == sim.normalise(b)
    assert sim.similarity(a, b) == 1.0
    # builtins, modules, attributes and keyword arguments keep their names
    toks = sim.normalise("y = torch.softmax(x.float(), dim=-1)\nz = len(y)")
    assert {"torch", "softmax", "float", "dim", "len"} <= set(toks) and "y" not in toks


def test_stubs_are_never_flagged_nor_anyones_closest():
    exercise = "beam_search"
    solution = SOLUTION[exercise]
    answers = {("stub1", exercise): STUB[exercise], ("stub2", exercise): STUB[exercise],
               ("copier", exercise): disguised_copy(solution),
               ("own", exercise): answer(exercise, INDEPENDENT[exercise]),
               ("bare", exercise): "raise NotImplementedError()", ("empty", exercise): ""}
    r = sim.report(answers, {exercise: solution})
    for s in ("stub1", "stub2", "bare", "empty"):
        m = r[s, exercise]
        assert m.stub and not m.flagged and m.closest is None and m.to_closest == m.to_solution == 0.0, (s, m)
    assert all(m.closest not in ("stub1", "stub2", "bare", "empty") for m in r.values())
    assert r["copier", exercise].flagged and r["copier", exercise].to_solution >= 0.95
    assert not r["own", exercise].flagged and not r["own", exercise].stub
    assert sim.similarity(STUB[exercise], STUB[exercise], sim.scaffold(solution)) == 0.0


def test_the_closest_student_is_found():
    exercise = "train_bpe"
    solution, mine = SOLUTION[exercise], answer(exercise, INDEPENDENT[exercise])
    answers = {("ann", exercise): mine, ("bob", exercise): disguised_copy(mine, "bob"),
               ("cat", exercise): answer(exercise, INDEPENDENT[exercise].replace("learned", "out") + "\nprint(1)"),
               ("dan", exercise): solution, ("eve", exercise): STUB[exercise]}
    r = sim.report(answers, {exercise: solution})
    print({s: (m.tokens, round(m.to_solution, 3), m.closest, round(m.to_closest, 3)) for (s, _), m in r.items()})
    assert r["ann", exercise].closest == "bob" and r["bob", exercise].closest == "ann"
    assert r["ann", exercise].to_closest == 1.0 and r["ann", exercise].flagged
    assert r["ann", exercise].to_solution <= 0.5
    assert r["cat", exercise].closest in ("ann", "bob") and 0.8 <= r["cat", exercise].to_closest < 1.0
    assert r["dan", exercise].to_solution == 1.0 and r["dan", exercise].flagged


def test_a_natural_three_line_answer_can_coincide():
    """The limitation the module's docstring names: just above MIN_TOKENS, the natural answer is
    the solution, token for token."""
    solution, stub = cells(SOLUTIONS, "05_normalization_and_residuals")["layer_norm"], \
        cells(CHAPTERS, "05_normalization_and_residuals")["layer_norm"]
    natural = stub.replace("# YOUR CODE HERE\n    raise NotImplementedError()",
                           "mean = x.mean(-1, keepdim=True)\n    var = x.var(-1, unbiased=False, keepdim=True)\n"
                           "    return (x - mean) / torch.sqrt(var + eps) * weight + bias")
    other = stub.replace("# YOUR CODE HERE\n    raise NotImplementedError()",
                         "mu = x.mean(dim=-1, keepdim=True)\n    var = x.var(dim=-1, keepdim=True, unbiased=False)\n"
                         "    return weight * (x - mu) / torch.sqrt(var + eps) + bias")
    r = sim.report({("a", "layer_norm"): natural, ("b", "layer_norm"): other}, {"layer_norm": solution})
    print(f"layer_norm: {r['a', 'layer_norm'].tokens} tokens, natural {r['a', 'layer_norm'].to_solution:.3f}, "
          f"another wording {r['b', 'layer_norm'].to_solution:.3f}")
    assert r["a", "layer_norm"].to_solution == 1.0 and r["b", "layer_norm"].to_solution < 0.5


def test_short_answers_are_reported_but_not_flagged():
    exercise = "causal_mask"
    solution = SOLUTION[exercise]
    own = answer(exercise, "return torch.tril(torch.ones(n, n, dtype=torch.bool))")
    r = sim.report({("copier", exercise): disguised_copy(solution), ("own", exercise): own}, {exercise: solution})
    m = r["copier", exercise]
    assert m.to_solution == 1.0 and m.tokens < sim.MIN_TOKENS and not m.flagged
    assert not r["own", exercise].flagged


GARBAGE = ["def f(x:\n    return x +", "x = '''never closed\n", "if True:\n  a = 1\n    b = 2\n c = 3",
           "return (((", "\x00\x01 weird", "\tx = 1\n        y = 2", "λ = 1 $ ? `", ")))]]]", "", "   \n\n"]


@pytest.mark.parametrize("code", GARBAGE)
def test_garbage_gets_a_stream_and_no_exception(code):
    assert isinstance(sim.normalise(code), list)
    assert 0.0 <= sim.similarity(code, SOLUTION["beam_search"]) <= 1.0
    assert 0.0 <= sim.similarity(code, code) <= 1.0


def test_a_copy_with_a_syntax_error_is_still_found():
    solution = SOLUTION["beam_search"]
    broken = re.sub(r"^( *)for ", r"\1for (", disguised_copy(solution), count=1, flags=re.M)  # unclosed
    with pytest.raises(SyntaxError):
        compile(broken, "broken", "exec")
    score = sim.similarity(broken, solution, sim.scaffold(solution))
    print(f"beam_search: a copy with a syntax error scores {score:.3f}")
    assert score >= 0.7
    r = sim.report({("a", "beam_search"): broken, ("b", "beam_search"): "def beam_search(:\n  ???"},
                   {"beam_search": solution})
    assert r["a", "beam_search"].to_solution == score and not r["b", "beam_search"].stub


def test_a_class_of_300_is_quick():
    """Every pair within each exercise of chapter 09 (benchmarks/similarity.py times a class
    with realistic answers)."""
    exercises = list(cells(SOLUTIONS, "09_decoding"))
    copies = {(e, j): disguised_copy(SOLUTION[e], f"s{j}") for e in exercises for j in range(11)}
    answers = {}
    for i in range(300):
        for e in exercises:
            own = answer(e, f"x{i} = {i}\nreturn x{i} * {i % 13} + {i // 13}")
            answers[f"s{i:03d}", e] = STUB[e] if i % 7 == 0 else copies[e, i % 11] if i % 5 == 0 else own
    t = time.perf_counter()
    r = sim.report(answers, {e: SOLUTION[e] for e in exercises})
    took = time.perf_counter() - t
    print(f"300 students x {len(exercises)} exercises: {took:.1f} s")
    assert len(r) == 300 * len(exercises) and took < 60
