"""Checks for chapter 13 (speculative sampling): the verification step, the decoding loop, and the
exercises' acceptance rate and expected tokens per target call.

The oracles are independent of the chapter's code: for the verification step, cases whose right
answer is forced (a draft the target agrees with, a draft token the target never emits, a residual
with one possible token) and a chi-square test of the emitted tokens against the target's
distribution; for the decoding loop, toy bigram models with known probabilities, the target's
greedy decoding written as an argmax loop, exact marginals of the target's chain, and a counter of
target calls.
"""

from __future__ import annotations

import math

import torch

from . import (CheckFailed, NotImplementedYet, approx, call, describe, expect_close, expect_shape,
               fail, name_of, passed)

__all__ = ["chi_square", "check_verify_draft", "check_speculative_generate",
           "check_acceptance_rate", "check_expected_tokens"]

ALPHA = 1e-4   # significance of the statistical tests: a right answer fails 1 time in 10,000


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """Pearson's chi-square test of observed counts against probabilities: (statistic, p-value).
    Cells of probability 0 must be empty (else p-value 0); cells expected below 5 are pooled."""
    counts, probs = counts.double().flatten(), probs.double().flatten()
    if (counts[probs == 0] > 0).any():
        return math.inf, 0.0
    n = counts.sum()
    expected = probs * n
    small = (expected < 5) & (probs > 0)
    obs = torch.cat([counts[~small & (probs > 0)], counts[small].sum().reshape(1)])
    exp = torch.cat([expected[~small & (probs > 0)], expected[small].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    dof = len(obs) - 1
    if dof < 1:
        return 0.0, 1.0
    stat = ((obs - exp) ** 2 / exp).sum()
    p_value = torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2)
    return stat.item(), p_value.item()


# --- verify_draft --------------------------------------------------------------------------------

def _dist(g: torch.Generator, V: int, zero: list[int] = ()) -> torch.Tensor:
    w = torch.rand(V, generator=g, dtype=torch.float64) + 0.05
    w[list(zero)] = 0
    return w / w.sum()


def _emit(fn, draft, q, p, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    got = call(fn, draft.clone(), q.clone(), p.clone(), gen)
    if not isinstance(got, torch.Tensor) or got.dim() != 1 or got.is_floating_point():
        fail(f"{name_of(fn)} should return a 1-D integer tensor of token ids, got {describe(got)}")
    gamma = len(draft)
    if not 1 <= len(got) <= gamma + 1:
        fail(f"{name_of(fn)} returned {len(got)} tokens for gamma = {gamma} drafts: one target call "
             f"emits between 1 and gamma + 1 = {gamma + 1} (the accepted drafts, then one more)")
    if not torch.equal(got[:-1].cpu(), draft[:len(got) - 1]):
        fail(f"{name_of(fn)} returned {got.tolist()} for drafts {draft.tolist()}: all tokens but the "
             "last must be the accepted prefix of the drafts, unchanged")
    return got


def check_verify_draft(fn, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(1000 + seed)
    V, gamma = (7, 4) if seed == 0 else (9, 3)
    n = 0

    # 1. The target agrees with the draft: every draft is accepted, then the bonus from p[gamma].
    q = torch.stack([_dist(g, V) for _ in range(gamma)])
    p = torch.cat([q, torch.nn.functional.one_hot(torch.tensor([0]), V).double()])  # bonus: token 0
    p[gamma - 1, 0] = 0                       # so a bonus from p[gamma - 1] cannot be token 0
    p[gamma - 1] /= p[gamma - 1].sum()
    q[gamma - 1] = p[gamma - 1]
    draft = torch.stack([torch.multinomial(q[i], 1, generator=g)[0] for i in range(gamma)])
    for trial in range(5):
        got = _emit(fn, draft, q, p, seed=trial)
        if len(got) <= gamma:
            fail(f"{name_of(fn)}: where p = q every draft must be accepted (min(1, p/q) = 1), and then "
                 f"one more token, the bonus, is drawn from p_probs[gamma]; you returned {len(got)} "
                 f"tokens for gamma = {gamma}")
        if got[-1].item() != 0:
            fail(f"{name_of(fn)}: after all {gamma} drafts are accepted, the bonus token must be drawn "
                 f"from p_probs[gamma] (here always token 0); you emitted token {got[-1].item()}")
        n += 1

    # 2. p(x)/q(x) = 4: always accepted (the ratio upside down accepts it 1 time in 4).
    i = gamma - 1
    q4, p4 = q.clone(), p.clone()
    q4[i] = torch.zeros(V, dtype=torch.float64)
    q4[i, [2, 4]] = torch.tensor([0.2, 0.8], dtype=torch.float64)
    p4[i] = torch.zeros(V, dtype=torch.float64)
    p4[i, [2, 4, 6]] = torch.tensor([0.8, 0.1, 0.1], dtype=torch.float64)
    draft4 = torch.stack([torch.multinomial(q4[k], 1, generator=g)[0] for k in range(gamma)])
    draft4[i] = 2
    kept = sum(len(_emit(fn, draft4, q4, p4, seed=300 + k)) == gamma + 1 for k in range(100))
    if kept < 100:
        fail(f"{name_of(fn)}: draft token 2 has p = 0.8 and q = 0.2, so it must always be accepted "
             f"(min(1, p/q) = 1); you rejected it {100 - kept} times in 100. Is the ratio upside down "
             "(q/p)?")
    n += 100

    # 3. A draft token the target never emits is always rejected; its replacement comes from the
    #    residual max(0, p - q), which here has one possible token.
    j = 2 if seed == 0 else 0
    x, t, u = 1, 3, 5
    p2, q2 = p.clone(), q.clone()
    q2[j] = torch.zeros(V, dtype=torch.float64)
    q2[j, [x, t, u]] = torch.tensor([0.5, 0.1, 0.4], dtype=torch.float64)
    p2[j] = torch.zeros(V, dtype=torch.float64)
    p2[j, [t, u]] = torch.tensor([0.6, 0.4], dtype=torch.float64)
    p2[j + 1] = torch.nn.functional.one_hot(torch.tensor(u), V).double()   # a residual from p[j+1] is u
    if j + 1 < gamma:
        q2[j + 1] = p2[j + 1]
    draft = torch.stack([torch.multinomial(q2[k], 1, generator=g)[0] for k in range(gamma)])
    draft[j] = x
    for trial in range(25):
        got = _emit(fn, draft, q2, p2, seed=100 + trial)
        if len(got) > j + 1:
            fail(f"{name_of(fn)}: draft token {x} at position {j} has p = 0 under the target and "
                 f"q = 0.5, so it can never be accepted (min(1, p/q) = 0); you accepted it. Accept when "
                 "r < p(x) / q(x), with r uniform in [0, 1)")
        if len(got) < j + 1:
            fail(f"{name_of(fn)}: you rejected the draft at position {len(got) - 1}, where p = q "
                 "(acceptance probability min(1, p/q) = 1)")
        if got[-1].item() != t:
            fail(f"{name_of(fn)}: after rejecting draft token {x} at position {j}, you emitted token "
                 f"{got[-1].item()}, but max(0, p - q) is {approx(0.5)} for token {t} and 0 for every "
                 f"other: the replacement must be drawn from max(0, p_{j} - q_{j}), normalized. "
                 "Drawing it from p counts the tokens the draft proposed twice")
        n += 1

    # 4. p(x)/q(x) = 0.05: accepted about 1 time in 20, not always (the ratio upside down accepts it
    #    every time) and not never.
    q3 = q.clone()
    p3 = p.clone()
    i = gamma - 1
    q3[i] = torch.zeros(V, dtype=torch.float64)
    q3[i, [2, 4]] = torch.tensor([0.8, 0.2], dtype=torch.float64)
    p3[i] = torch.zeros(V, dtype=torch.float64)
    p3[i, [2, 4, 6]] = torch.tensor([0.04, 0.2, 0.76], dtype=torch.float64)
    draft3 = draft.clone()
    draft3[:i] = torch.stack([torch.multinomial(q3[k], 1, generator=g)[0] for k in range(i)])
    draft3[i] = 2
    kept = sum(len(_emit(fn, draft3, q3, p3, seed=200 + k)) == gamma + 1 for k in range(200))
    if kept > 40:
        fail(f"{name_of(fn)}: draft token 2 has p = 0.04 and q = 0.8, so it should be accepted with "
             f"probability p/q = 0.05; you accepted it {kept} times in 200. Is the ratio upside down "
             "(q/p)?")
    n += 200

    # 5. The emitted tokens follow p: chi-square over many target calls with a draft that is off.
    pc, qc = _dist(g, V), _dist(g, V, zero=[0])
    qs, ps = qc.expand(gamma, V).clone(), pc.expand(gamma + 1, V).clone()
    counts = torch.zeros(V)
    for trial in range(1500):
        draft4 = torch.multinomial(qc, gamma, replacement=True, generator=g)
        got = _emit(fn, draft4, qs, ps, seed=1000 + trial)
        counts += torch.bincount(got.cpu(), minlength=V)[:V].float()
    stat, p_value = chi_square(counts, pc)
    if p_value < ALPHA:
        freq = counts / counts.sum()
        worst = int(((freq - pc).abs()).argmax())
        fail(f"{name_of(fn)}: the tokens you emit do not follow the target's distribution p: token "
             f"{worst} came out {approx(freq[worst].item(), 3)} of the time, p gives it "
             f"{approx(pc[worst].item(), 3)} (chi-square p-value {p_value:.1e}, over "
             f"{int(counts.sum())} tokens)")
    n += 1

    # 6. All randomness from the generator: the same seed gives the same tokens.
    a, b = (_emit(fn, draft4, qs, ps, seed=7) for _ in range(2))
    if not torch.equal(a, b):
        fail(f"{name_of(fn)} gave {a.tolist()} and then {b.tolist()} with generators of the same seed: "
             "draw every random number from `generator`")
    passed(fn, n + 1)


# --- speculative_generate -------------------------------------------------------------------------

class _Bigram:
    """A toy model with known probabilities p(next | last) = probs[last]; counts its calls and
    stops a decoding loop that makes no progress."""

    max_calls = 200

    def __init__(self, probs: torch.Tensor):
        self.logits, self.calls = probs.log().float(), 0

    def __call__(self, ids):
        if (not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point()
                or ids.shape[1] == 0):
            fail(f"a model was called with {describe(ids)}; it takes ids [1, T] (integer, T >= 1)")
        self.calls += 1
        if self.calls > self.max_calls:
            fail(f"a model was called more than {self.max_calls} times to decode at most 12 tokens: "
                 "does every round of your loop add at least one token (the replacement or the "
                 "bonus), including the last round, when fewer tokens are missing than gamma?")
        return self.logits[ids]


def _chain(g, V, sharp: float) -> torch.Tensor:
    rows = torch.rand(V, V, generator=g, dtype=torch.float64) ** sharp + 1e-3
    return rows / rows.sum(-1, keepdim=True)


def _warp(probs, temperature, top_k=None, top_p=None):
    """The sampling distribution of each row, written here independently of the chapter."""
    logits = probs.log() / temperature
    if top_k is not None:
        kth = logits.sort(-1, descending=True).values[..., top_k - 1:top_k]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None:
        sorted_, order = logits.sort(-1, descending=True)
        pr = sorted_.softmax(-1)
        drop = (pr.cumsum(-1) - pr) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    return logits.softmax(-1)


def _generate(fn, target, draft, prompt, m, gamma, temperature, seed, **kw):
    got = call(fn, target, draft, prompt.clone(), m, gamma=gamma, temperature=temperature,
               generator=torch.Generator().manual_seed(seed), **kw)
    expect_shape(got, (1, prompt.shape[1] + m), f"{name_of(fn)}(prompt [1, {prompt.shape[1]}], "
                                                f"max_new_tokens={m})")
    if got.is_floating_point() or not torch.equal(got[:, :prompt.shape[1]].cpu(), prompt):
        fail(f"{name_of(fn)} should return integer ids that start with the prompt {prompt.tolist()}, "
             f"got {got[:, :prompt.shape[1]].tolist()} ({got.dtype})")
    return got[0, prompt.shape[1]:].cpu()


def check_speculative_generate(fn, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(2000 + seed)
    V = 6 if seed == 0 else 7
    P, Q = _chain(g, V, 3.0), _chain(g, V, 3.0)
    prompt = torch.tensor([[2, 4]]) if seed == 0 else torch.tensor([[5]])
    n = 0

    # 1. Temperature 0 is the target's greedy decoding (an argmax loop), whatever the draft.
    def greedy(probs, m):
        last, out = prompt[0, -1].item(), []
        for _ in range(m):
            last = int(probs[last].argmax())
            out.append(last)
        return out

    want, draft_greedy = greedy(P, 11), greedy(Q, 11)
    for gamma in (1, 3, 5):
        got = _generate(fn, _Bigram(P), _Bigram(Q), prompt, 11, gamma, 0.0, seed=gamma).tolist()
        if got != want:
            i = next(k for k in range(11) if got[k] != want[k])
            why = (" That is the draft's greedy choice: the draft only proposes, the target decides."
                   if got[:i + 1] == draft_greedy[:i + 1] else "")
            fail(f"{name_of(fn)} at temperature 0 (gamma = {gamma}) must give the target's greedy "
                 f"decoding; new token {i} is {got[i]}, the target's argmax is {want[i]}.{why}")
        n += 1

    # 2. A draft identical to the target: every proposal accepted, gamma + 1 tokens per target call.
    for gamma in (2, 4):
        target = _Bigram(P)
        m = 3 * (gamma + 1)
        _generate(fn, target, _Bigram(P), prompt, m, gamma, 1.0, seed=gamma)
        if target.calls > 3:
            fail(f"{name_of(fn)}: with a draft identical to the target every proposal is accepted, so "
                 f"each target call yields gamma + 1 = {gamma + 1} tokens (the gamma drafts and the "
                 f"bonus token); your {m} new tokens took {target.calls} target calls instead of 3")
        n += 1

    # 3. At temperature > 0 with top-k and top-p on both models, the tokens follow the target: each
    #    position's marginal (exact, from the target's chain) against many runs.
    temperature, top_k, top_p, gamma, m, runs = 0.7, 4, 0.9, 2, 3, 1200
    Pw = _warp(P, temperature, top_k, top_p)
    counts = torch.zeros(m, V)
    for r in range(runs):
        out = _generate(fn, _Bigram(P), _Bigram(Q), prompt, m, gamma, temperature, seed=10_000 + r,
                        top_k=top_k, top_p=top_p)
        counts[torch.arange(m), out] += 1
    marginal = torch.nn.functional.one_hot(prompt[0, -1], V).double()
    candidates = {"the target at temperature 1 with no top-k/top-p": P,
                  "the draft's distribution": _warp(Q, temperature, top_k, top_p)}
    for t in range(m):
        marginal = marginal @ Pw
        _, p_value = chi_square(counts[t], marginal)
        if p_value * m < ALPHA:               # Bonferroni over the m positions
            hint = ""
            for what, probs in candidates.items():
                other = torch.nn.functional.one_hot(prompt[0, -1], V).double()
                for _ in range(t + 1):
                    other = other @ probs
                if chi_square(counts[t], other)[1] > ALPHA:
                    hint = f" They follow {what} instead."
            fail(f"{name_of(fn)}: at temperature {temperature} with top_k={top_k}, top_p={top_p}, new "
                 f"token {t} does not follow the target's distribution (chi-square p-value "
                 f"{p_value:.1e} over {runs} runs).{hint} Warp both models' logits the same way, and "
                 "put into the ratio exactly the q each draft token was drawn from")
        n += 1

    # 4. All randomness from the generator.
    a, b = (_generate(fn, _Bigram(P), _Bigram(Q), prompt, 7, 3, 1.0, seed=5) for _ in range(2))
    if not torch.equal(a, b):
        fail(f"{name_of(fn)} gave {a.tolist()} and then {b.tolist()} with generators of the same seed: "
             "draw every random number from `generator`")
    passed(fn, n + 1)


# --- the exercises ----------------------------------------------------------------------------------

def check_acceptance_rate(fn, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(3000 + seed)
    n = 0
    for shape in [(5,), (3, 7), (2, 1, 4)]:
        p = torch.rand(shape, generator=g, dtype=torch.float64).softmax(-1)
        q = (3 * torch.rand(shape, generator=g, dtype=torch.float64)).softmax(-1)
        got = call(fn, p.clone(), q.clone())
        want = torch.minimum(p, q).sum(-1)
        expect_close(got, want, f"{name_of(fn)}(p, q) for p of shape {list(shape)}", atol=1e-9,
                     hint="alpha = sum over the vocabulary (the last dimension) of min(p(x), q(x))")
        n += 1
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    got = call(fn, p, p.clone())
    expect_close(got, torch.tensor(1.0, dtype=torch.float64), f"{name_of(fn)}(p, p)", atol=1e-9,
                 hint="a draft equal to the target is always accepted")
    passed(fn, n + 1)


def check_expected_tokens(fn, seed: int = 0) -> None:
    cases = [(0.8, 4), (0.5, 1), (0.0, 3), (0.9, 7), (1.0, 4), (0.3, 10)]
    if seed:
        cases = [(0.65, 3), (0.99, 5), (1.0, 1), (0.2, 2)]
    for alpha, gamma in cases:
        try:
            got = call(fn, alpha, gamma)
        except NotImplementedYet:
            raise
        except CheckFailed as e:
            if alpha != 1:
                raise
            fail(f"{e}. With alpha = 1 every draft is accepted: gamma + 1 tokens per call (the "
                 "formula's 0/0 has that limit)")
        want = sum(alpha ** i for i in range(gamma + 1))
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            fail(f"{name_of(fn)}({alpha}, {gamma}) should return a number (float), got {describe(got)}")
        if not math.isfinite(got) or abs(got - want) > 1e-9 * max(1, want):
            hint = (" With alpha = 1 every draft is accepted: gamma + 1 tokens per call (the formula's "
                    "0/0 has that limit)" if alpha == 1 else
                    " A call yields 1 + alpha + ... + alpha^gamma tokens on average: "
                    "(1 - alpha^(gamma + 1)) / (1 - alpha)")
            fail(f"{name_of(fn)}(alpha={alpha}, gamma={gamma}) = {got!r}, expected {approx(want, 6)}.{hint}")
    passed(fn, len(cases))
