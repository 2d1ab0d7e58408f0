"""Checks for chapter 13 (speculative sampling): the verification step, the decoding loop, and the
exercises' acceptance rate and expected tokens per target call.

The oracles are independent of the chapter's code: for the verification step, cases whose right
answer is forced (a draft the target agrees with, a draft token the target never emits, a residual
with one possible token), acceptance frequencies, and a chi-square test of the emitted tokens
against the target's distribution; for the decoding loop, toy bigram models with known
probabilities, the target's greedy decoding and its counts written as an argmax loop, exact
marginals and the joint of two positions of the target's chain, and counters of model calls.

While grading, the learner's function runs in a sandbox and each call from a check is a round
trip; the thousands of calls these checks make run beside the function instead (`beside`), in
`_emit_all` and `_generate_all`, which return plain data (tokens, counts) for the checks to judge.
The chapter's negative controls (`wrong_decoders`) live here too, so that the notebook does not
show the exercise's answer.
"""

from __future__ import annotations

import functools
import math

import torch

from ..i18n import tr, trf
from . import (CheckFailed, NotImplementedYet, approx, beside, call, describe, expect_close,
               expect_shape, fail, name_of, passed)

__all__ = ["chi_square", "check_verify_draft", "check_speculative_generate",
           "check_acceptance_rate", "check_expected_tokens", "wrong_decoders"]

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


def _one_thread(helper):
    """helper run on one thread: the toy models' tensors are tiny, and a second thread only costs
    (ten times the time, on a loaded machine)."""
    @functools.wraps(helper)
    def run(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return helper(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return run


def _problem(e: CheckFailed) -> tuple[str, bool]:
    return str(e), isinstance(e, NotImplementedYet)


def _results(outputs: list, problem, i: int):
    """The i-th job's results from a helper run beside the learner's function; the problem that
    stopped the helper there, raised as the check's own failure."""
    if i < len(outputs):
        return outputs[i]
    message, unimplemented = problem
    raise (NotImplementedYet if unimplemented else CheckFailed)(message) from None


# --- verify_draft --------------------------------------------------------------------------------

def _dist(g: torch.Generator, V: int, zero: list[int] = ()) -> torch.Tensor:
    w = torch.rand(V, generator=g, dtype=torch.float64) + 0.05
    w[list(zero)] = 0
    return w / w.sum()


def _emit(fn, draft, q, p, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    got = call(fn, draft.clone(), q.clone(), p.clone(), gen)
    if not isinstance(got, torch.Tensor) or got.dim() != 1 or got.is_floating_point():
        fail(trf("{name_of(fn)} should return a 1-D integer tensor of token ids, got {describe(got)}"))
    gamma = len(draft)
    if not 1 <= len(got) <= gamma + 1:
        fail(trf("{name_of(fn)} returned {len(got)} tokens for gamma = {gamma} drafts: one target call "
             "emits between 1 and gamma + 1 = {gamma + 1} (the accepted drafts, then one more)"))
    if not torch.equal(got[:-1].cpu(), draft[:len(got) - 1]):
        fail(trf("{name_of(fn)} returned {got.tolist()} for drafts {draft.tolist()}: all tokens but the "
             "last must be the accepted prefix of the drafts, unchanged"))
    return got.tolist()


@_one_thread
def _emit_all(fn, jobs: list) -> tuple[list, tuple[str, bool] | None]:
    """Run beside fn: for each job (draft, q, p, seeds), the tokens fn emits with a generator of
    each seed (lists of ids). A job whose draft is None draws a new one from q for each seed. Stops
    at the first problem: (results of the jobs before it, (message, unimplemented) or None)."""
    out = []
    try:
        for draft, q, p, seeds in jobs:
            tokens = []
            for seed in seeds:
                d = draft
                if d is None:
                    g = torch.Generator().manual_seed(10**6 + seed)
                    d = torch.stack([torch.multinomial(row, 1, generator=g)[0] for row in q])
                tokens.append(_emit(fn, d, q, p, seed))
            out.append(tokens)
    except CheckFailed as e:
        return out, _problem(e)
    return out, None


def check_verify_draft(fn, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(1000 + seed)
    V, gamma = (7, 4) if seed == 0 else (9, 3)
    jobs = []

    # 1. The target agrees with the draft: every draft is accepted, then the bonus from p[gamma].
    q = torch.stack([_dist(g, V) for _ in range(gamma)])
    p = torch.cat([q, torch.nn.functional.one_hot(torch.tensor([0]), V).double()])  # bonus: token 0
    p[gamma - 1, 0] = 0                       # so a bonus from p[gamma - 1] cannot be token 0
    p[gamma - 1] /= p[gamma - 1].sum()
    q[gamma - 1] = p[gamma - 1]
    draft = torch.stack([torch.multinomial(q[i], 1, generator=g)[0] for i in range(gamma)])
    jobs.append((draft, q, p, list(range(5))))

    # 2. p(x)/q(x) = 4: always accepted (the ratio upside down accepts it 1 time in 4).
    i = gamma - 1
    q4, p4 = q.clone(), p.clone()
    q4[i] = torch.zeros(V, dtype=torch.float64)
    q4[i, [2, 4]] = torch.tensor([0.2, 0.8], dtype=torch.float64)
    p4[i] = torch.zeros(V, dtype=torch.float64)
    p4[i, [2, 4, 6]] = torch.tensor([0.8, 0.1, 0.1], dtype=torch.float64)
    draft4 = torch.stack([torch.multinomial(q4[k], 1, generator=g)[0] for k in range(gamma)])
    draft4[i] = 2
    jobs.append((draft4, q4, p4, list(range(300, 400))))

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
    jobs.append((draft, q2, p2, list(range(100, 125))))

    # 4. p(x)/q(x) = 0.05: accepted about 1 time in 20, not always (the ratio upside down accepts it
    #    every time) and not never.
    q3, p3 = q.clone(), p.clone()
    q3[i] = torch.zeros(V, dtype=torch.float64)
    q3[i, [2, 4]] = torch.tensor([0.8, 0.2], dtype=torch.float64)
    p3[i] = torch.zeros(V, dtype=torch.float64)
    p3[i, [2, 4, 6]] = torch.tensor([0.04, 0.2, 0.76], dtype=torch.float64)
    draft3 = draft.clone()
    draft3[:i] = torch.stack([torch.multinomial(q3[k], 1, generator=g)[0] for k in range(i)])
    draft3[i] = 2
    jobs.append((draft3, q3, p3, list(range(200, 400))))

    # 5. Every draft has p(x)/q(x) = 1/2, decided by its own uniform: all gamma are accepted
    #    1 time in 2^gamma (one uniform for the whole round accepts all of them 1 time in 2).
    qh, ph = torch.zeros(gamma, V, dtype=torch.float64), p.clone()
    qh[:, [1, 3]] = torch.tensor([0.8, 0.2], dtype=torch.float64)
    ph[:gamma] = 0
    ph[:gamma, [1, 3, 5]] = torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64)
    jobs.append((torch.ones(gamma, dtype=torch.long), qh, ph, list(range(400, 600))))

    # 6. The emitted tokens follow p: chi-square over many target calls with a draft that is off.
    pc, qc = _dist(g, V), _dist(g, V, zero=[0])
    qs, ps = qc.expand(gamma, V).clone(), pc.expand(gamma + 1, V).clone()
    jobs.append((None, qs, ps, list(range(1000, 2500))))

    # 7. All randomness from the generator: the same seeds give the same tokens.
    jobs.append((None, qs, ps, list(range(7, 17)) * 2))

    # The quick jobs (1-5) first, judged before the 1,500 draws of 6 are made: most mistakes
    # show there, and a learner hears of them sooner.
    run = beside(_emit_all, fn)
    outputs, problem = run(jobs[:5])
    n = 0
    for got in _results(outputs, problem, 0):
        if len(got) <= gamma:
            fail(trf("{name_of(fn)}: where p = q every draft must be accepted (min(1, p/q) = 1), and then "
                 "one more token, the bonus, is drawn from p_probs[gamma]; you returned {len(got)} "
                 "tokens for gamma = {gamma}"))
        if got[-1] != 0:
            fail(trf("{name_of(fn)}: after all {gamma} drafts are accepted, the bonus token must be drawn "
                 "from p_probs[gamma] (here always token 0); you emitted token {got[-1]}"))
        n += 1

    kept = sum(len(got) == gamma + 1 for got in _results(outputs, problem, 1))
    if kept < 100:
        fail(trf("{name_of(fn)}: draft token 2 has p = 0.8 and q = 0.2, so it must always be accepted "
             "(min(1, p/q) = 1); you rejected it {100 - kept} times in 100. Is the ratio upside down "
             "(q/p)?"))
    n += 100

    for got in _results(outputs, problem, 2):
        if len(got) > j + 1:
            fail(trf("{name_of(fn)}: draft token {x} at position {j} has p = 0 under the target and "
                 "q = 0.5, so it can never be accepted (min(1, p/q) = 0); you accepted it. Accept when "
                 "r < p(x) / q(x), with r uniform in [0, 1)"))
        if len(got) < j + 1:
            fail(trf("{name_of(fn)}: you rejected the draft at position {len(got) - 1}, where p = q "
                 "(acceptance probability min(1, p/q) = 1)"))
        if got[-1] != t:
            fail(trf("{name_of(fn)}: after rejecting draft token {x} at position {j}, you emitted token "
                 "{got[-1]}, but max(0, p - q) is {approx(0.5)} for token {t} and 0 for every "
                 "other: the replacement must be drawn from max(0, p_{j} - q_{j}), normalized. "
                 "Drawing it from p counts the tokens the draft proposed twice"))
        n += 1

    kept = sum(len(got) == gamma + 1 for got in _results(outputs, problem, 3))
    if kept > 40:
        fail(trf("{name_of(fn)}: draft token 2 has p = 0.04 and q = 0.8, so it should be accepted with "
             "probability p/q = 0.05; you accepted it {kept} times in 200. Is the ratio upside down "
             "(q/p)?"))
    n += 200

    kept = sum(len(got) == gamma + 1 for got in _results(outputs, problem, 4))
    want = 200 / 2 ** gamma
    if kept > (want + 100) / 2:
        fail(trf("{name_of(fn)}: each of {gamma} drafts has p/q = 1/2, so all {gamma} are accepted with "
             "probability (1/2)^{gamma}, about {approx(want, 3)} times in 200; you accepted all of "
             "them {kept} times. Draw a new uniform r for each draft: one r for the whole round "
             "makes the acceptances of a round depend on each other"))
    n += 200

    outputs, problem = run(jobs[5:])
    counts = torch.zeros(V)
    for got in _results(outputs, problem, 0):
        counts += torch.bincount(torch.tensor(got), minlength=V)[:V].float()
    stat, p_value = chi_square(counts, pc)
    if p_value < ALPHA:
        freq = counts / counts.sum()
        worst = int(((freq - pc).abs()).argmax())
        fail(trf("{name_of(fn)}: the tokens you emit do not follow the target's distribution p: token "
             "{worst} came out {approx(freq[worst].item(), 3)} of the time, p gives it "
             "{approx(pc[worst].item(), 3)} (chi-square p-value {p_value:.1e}, over "
             "{int(counts.sum())} tokens)"))
    n += 1

    runs = _results(outputs, problem, 1)
    for a, b in zip(runs[:10], runs[10:]):
        if a != b:
            fail(trf("{name_of(fn)} gave {a} and then {b} with generators of the same seed: "
                 "draw every random number from `generator`"))
    passed(fn, n + 1)


# --- speculative_generate -------------------------------------------------------------------------

STATS = ("target_calls", "drafted", "accepted", "rejected")


class _Bigram:
    """A toy model with known probabilities p(next | last) = probs[last]; counts its calls and
    stops a decoding loop that makes no progress."""

    max_calls = 200

    def __init__(self, probs: torch.Tensor):
        self.logits, self.calls = probs.log().float(), 0

    def __call__(self, ids):
        if (not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point()
                or ids.shape[1] == 0):
            fail(trf("a model was called with {describe(ids)}; it takes ids [1, T] (integer, T >= 1)"))
        self.calls += 1
        if self.calls > self.max_calls:
            fail(trf("a model was called more than {self.max_calls} times to decode at most 12 tokens: "
                 "does every round of your loop add at least one token (the replacement or the "
                 "bonus), including the last round, when fewer tokens are missing than gamma?"))
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


def _generate(fn, target, draft, prompt, m, gamma, temperature, seed, **kw) -> list[int]:
    got = call(fn, target, draft, prompt.clone(), m, gamma=gamma, temperature=temperature,
               generator=torch.Generator().manual_seed(seed), **kw)
    expect_shape(got, (1, prompt.shape[1] + m), trf("{name_of(fn)}(prompt [1, {prompt.shape[1]}], "
                                                "max_new_tokens={m})"))
    if got.is_floating_point() or not torch.equal(got[:, :prompt.shape[1]].cpu(), prompt):
        fail(trf("{name_of(fn)} should return integer ids that start with the prompt {prompt.tolist()}, "
             "got {got[:, :prompt.shape[1]].tolist()} ({got.dtype})"))
    return got[0, prompt.shape[1]:].cpu().tolist()


def _plain(stats: dict) -> dict:
    """The dict's numbers as plain numbers (a one-element tensor counts as its value)."""
    out = {}
    for key, v in stats.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)):
            out[key] = v
    return out


@_one_thread
def _generate_all(fn, jobs: list) -> tuple[list, tuple[str, bool] | None]:
    """Run beside fn: for each job (p_chain, q_chain, prompt, m, gamma, temperature, kw, seeds,
    stats), decode with fresh bigram models for each seed: (new tokens, target calls, draft calls,
    the stats dict after the call, or None when stats was not passed). `stats` is the dict to pass
    (copied for each seed) or None. Stops at the first problem, as _emit_all does."""
    out = []
    try:
        for p_chain, q_chain, prompt, m, gamma, temperature, kw, seeds, stats in jobs:
            runs = []
            for seed in seeds:
                target, draft = _Bigram(p_chain), _Bigram(q_chain)
                extra = dict(kw) if stats is None else dict(kw, stats=dict(stats))
                tokens = _generate(fn, target, draft, prompt, m, gamma, temperature, seed, **extra)
                got_stats = None if stats is None else _plain(extra["stats"])
                runs.append((tokens, target.calls, draft.calls, got_stats))
            out.append(runs)
    except CheckFailed as e:
        return out, _problem(e)
    return out, None


def _greedy_rounds(p_chain, q_chain, last: int, m: int, gamma: int) -> tuple[list[int], dict]:
    """Speculative decoding at temperature 0 written as argmax loops: the new tokens, and the
    counts of a loop that drafts min(gamma, missing - 1) tokens per target call."""
    out, counts = [], dict.fromkeys(STATS, 0)
    while len(out) < m:
        k = min(gamma, m - len(out) - 1)
        drafts, prev = [], last
        for _ in range(k):
            prev = int(q_chain[prev].argmax())
            drafts.append(prev)
        prev, new = last, []
        for d in drafts:
            want = int(p_chain[prev].argmax())
            new.append(want)
            prev = want
            if d != want:
                break
        else:
            new.append(int(p_chain[prev].argmax()))
        counts["target_calls"] += 1
        counts["drafted"] += k
        counts["accepted"] += len(new) - 1
        counts["rejected"] += int(len(new) <= k)
        out += new
        last = out[-1]
    return out, counts


def _check_stats(fn, got: dict | None, before: dict, want: dict, target_calls: int,
                 draft_calls: int, what: str) -> None:
    """The models' call counters and the stats dict of one run against the counts of the rounds."""
    if draft_calls > want["drafted"]:
        fail(trf("{name_of(fn)} {what} called the draft {draft_calls} times; drafting "
             "k = min(gamma, missing - 1) tokens per round needs {want['drafted']}. Never draft "
             "more tokens than are still needed: a target call on k drafts yields up to k + 1 tokens"))
    if target_calls != want["target_calls"] or draft_calls != want["drafted"]:
        fail(trf("{name_of(fn)} {what} called the target {target_calls} times and the draft "
             "{draft_calls} times; drafting k = min(gamma, missing - 1) tokens per round and "
             "calling the target once per round takes {want['target_calls']} and "
             "{want['drafted']}"))
    if got is None or got == before:
        fail(trf("{name_of(fn)} {what} did not update `stats`: add this call's counts (")
             + ", ".join(STATS) + tr(") to the dict it is given"))
    for key in STATS:
        if key not in got:
            fail(trf("{name_of(fn)} {what}: stats has no key {key!r} after the call; it should count ")
                 + ", ".join(STATS))
        have = got[key] - before.get(key, 0)
        if have != want[key]:
            meaning = {"target_calls": tr("target calls"),
                       "drafted": tr("draft tokens proposed to the target"),
                       "accepted": tr("drafts accepted (not the replacement or bonus token)"),
                       "rejected": tr("rounds that ended in a rejection")}[key]
            extra = (trf(" (stats held {before[key]} before the call: add to it)")
                     if before.get(key) and got[key] == want[key] else "")
            fail(trf("{name_of(fn)} {what}: stats[{key!r}] grew by {have}, but there were "
                 "{want[key]} {meaning}{extra}"))


def check_speculative_generate(fn, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(2000 + seed)
    V = 6 if seed == 0 else 7
    p_chain, q_chain = _chain(g, V, 3.0), _chain(g, V, 3.0)
    prompt = torch.tensor([[2, 4]]) if seed == 0 else torch.tensor([[5]])
    last = prompt[0, -1].item()
    jobs = []

    # 1. Temperature 0 is the target's greedy decoding (an argmax loop), whatever the draft, and
    #    the calls and stats are the argmax loop's counts. The stats dict starts empty, then holds
    #    counts of an earlier call.
    before = [{}, dict.fromkeys(STATS, 50), {}]
    for gamma, stats in zip((1, 3, 5), before):
        jobs.append((p_chain, q_chain, prompt, 11, gamma, 0.0, {}, [gamma], stats))

    # 2. A draft identical to the target: every proposal accepted, gamma + 1 tokens per target call.
    for gamma in (2, 4):
        jobs.append((p_chain, p_chain, prompt, 3 * (gamma + 1), gamma, 1.0, {}, [gamma], None))

    # 3. At temperature > 0 with top-k and top-p on both models, the tokens follow the target: each
    #    position's marginal and the joint of the first two (exact, from the target's chain).
    temperature, top_k, top_p, gamma, m, runs = 0.7, 4, 0.9, 2, 3, 1200
    warp = dict(top_k=top_k, top_p=top_p)
    jobs.append((p_chain, q_chain, prompt, m, gamma, temperature, warp,
                 list(range(10_000, 10_000 + runs)), {}))

    # 4. All randomness from the generator.
    jobs.append((p_chain, q_chain, prompt, 7, 3, 1.0, {}, [5, 5], None))

    # The quick jobs (1, 2) first, judged before the runs of 3 are made, as in check_verify_draft.
    run = beside(_generate_all, fn)
    outputs, problem = run(jobs[:5])
    n = 0
    draft_greedy, _ = _greedy_rounds(q_chain, q_chain, last, 11, 11)
    for job, (g_greedy, stats) in enumerate(zip((1, 3, 5), before)):
        want, counts = _greedy_rounds(p_chain, q_chain, last, 11, g_greedy)
        [(got, target_calls, draft_calls, got_stats)] = _results(outputs, problem, job)
        if got != want:
            i = next(k for k in range(11) if got[k] != want[k])
            why = (tr(" That is the draft's greedy choice: the draft only proposes, the target decides.")
                   if got[:i + 1] == draft_greedy[:i + 1] else "")
            fail(trf("{name_of(fn)} at temperature 0 (gamma = {g_greedy}) must give the target's greedy "
                 "decoding; new token {i} is {got[i]}, the target's argmax is {want[i]}.{why}"))
        _check_stats(fn, got_stats, stats, counts, target_calls, draft_calls,
                     trf("at temperature 0 (gamma = {g_greedy}, max_new_tokens = 11)"))
        n += 2

    for job, g_same in enumerate((2, 4), start=3):
        [(_, target_calls, _, _)] = _results(outputs, problem, job)
        if target_calls > 3:
            fail(trf("{name_of(fn)}: with a draft identical to the target every proposal is accepted, so "
                 "each target call yields gamma + 1 = {g_same + 1} tokens (the gamma drafts and the "
                 "bonus token); your {3 * (g_same + 1)} new tokens took {target_calls} target calls "
                 "instead of 3"))
        n += 1

    outputs, problem = run(jobs[5:])
    results = _results(outputs, problem, 0)
    for _, target_calls, _, got_stats in results:
        if (got_stats is None or got_stats.get("target_calls") != target_calls
                or got_stats.get("accepted", 0) + target_calls != m):
            fail(trf("{name_of(fn)} at temperature {temperature} (gamma = {gamma}, max_new_tokens = "
                 "{m}) called the target {target_calls} times, and stats says {got_stats}: "
                 "stats['target_calls'] counts the target calls, and the accepted drafts plus one "
                 "token per call make the {m} new tokens"))
    counts = torch.zeros(m, V)
    pairs = torch.zeros(V, V)
    for out, _, _, _ in results:
        counts[torch.arange(m), torch.tensor(out)] += 1
        pairs[out[0], out[1]] += 1
    Pw = _warp(p_chain, temperature, top_k, top_p)
    start = torch.nn.functional.one_hot(prompt[0, -1], V).double()
    marginals = [start @ Pw]
    for t in range(1, m):
        marginals.append(marginals[-1] @ Pw)
    candidates = {tr("the target at temperature 1 with no top-k/top-p"): p_chain,
                  tr("the draft's distribution"): _warp(q_chain, temperature, top_k, top_p)}
    for t in range(m):
        _, p_value = chi_square(counts[t], marginals[t])
        if p_value * (m + 1) < ALPHA:           # Bonferroni over m positions and one joint
            hint = ""
            for what, probs in candidates.items():
                other = start
                for _ in range(t + 1):
                    other = other @ probs
                if chi_square(counts[t], other)[1] > ALPHA:
                    hint = trf(" They follow {what} instead.")
            fail(trf("{name_of(fn)}: at temperature {temperature} with top_k={top_k}, top_p={top_p}, new "
                 "token {t} does not follow the target's distribution (chi-square p-value "
                 "{p_value:.1e} over {runs} runs).{hint} Warp both models' logits the same way, and "
                 "put into the ratio exactly the q each draft token was drawn from"))
        n += 1
    _, p_value = chi_square(pairs, marginals[0][:, None] * Pw)
    if p_value * (m + 1) < ALPHA:
        fail(trf("{name_of(fn)}: at temperature {temperature}, each new token may look right alone, but "
             "the pairs (new token 0, new token 1) do not follow the target's chain (chi-square "
             "p-value {p_value:.1e} over {runs} runs): given the token before it, a token must "
             "follow the target's distribution after that token. Does a decision depend on an "
             "earlier one, such as one uniform reused for several drafts?"))
    n += 1

    (a, *_), (b, *_) = _results(outputs, problem, 1)
    if a != b:
        fail(trf("{name_of(fn)} gave {a} and then {b} with generators of the same seed: "
             "draw every random number from `generator`"))
    passed(fn, n + 1)


# --- the chapter's negative controls ------------------------------------------------------------------

def _one_uniform(draft_tokens, q_probs, p_probs, generator=None):
    """Wrong: one uniform r decides every draft of the round."""
    r = torch.rand((), generator=generator)
    for i in range(len(draft_tokens)):
        x = draft_tokens[i]
        if r * q_probs[i, x] < p_probs[i, x]:
            continue
        residual = (p_probs[i] - q_probs[i]).clamp(min=0)
        y = torch.multinomial(residual / residual.sum(), 1, generator=generator)
        return torch.cat([draft_tokens[:i], y])
    return torch.cat([draft_tokens, torch.multinomial(p_probs[-1], 1, generator=generator)])


def _resample_from_p(draft_tokens, q_probs, p_probs, generator=None):
    """Wrong: after a rejection, draws the replacement from p, not max(0, p - q)."""
    for i in range(len(draft_tokens)):
        x = draft_tokens[i]
        if torch.rand((), generator=generator) * q_probs[i, x] < p_probs[i, x]:
            continue
        y = torch.multinomial(p_probs[i], 1, generator=generator)
        return torch.cat([draft_tokens[:i], y])
    return torch.cat([draft_tokens, torch.multinomial(p_probs[-1], 1, generator=generator)])


def _decoder(verify, draft_warp=None):
    """A speculative decoder with a given verification step; draft_warp, if given, is the warping
    the draft *samples* with, while the ratio still uses the full one."""
    from transformer_course.speculative import sampling_probs, verify_draft

    verify = verify or verify_draft

    def generate(target, draft, prompt_ids, max_new_tokens, gamma, generator=None, **warp):
        ids, goal = prompt_ids, prompt_ids.shape[1] + max_new_tokens
        while ids.shape[1] < goal:
            k = min(gamma, goal - ids.shape[1] - 1)
            seq, q = ids, []
            for _ in range(k):
                logits = draft(seq)[0, -1]
                q.append(sampling_probs(logits, **warp))
                sample_from = q[-1] if draft_warp is None else sampling_probs(logits, **draft_warp)
                x = torch.multinomial(sample_from, 1, generator=generator)
                seq = torch.cat([seq, x[None]], dim=1)
            p = sampling_probs(target(seq)[0, -(k + 1):], **warp)
            q = torch.stack(q) if q else p.new_zeros(0, p.shape[-1])
            ids = torch.cat([ids, verify(seq[0, ids.shape[1]:], q, p, generator)[None]], dim=1)
        return ids[:, :goal]

    return generate


def wrong_decoders(temperature: float) -> dict:
    """Three speculative decoders that look right and are not, for the chapter's statistical test:
    {name: generate(target, draft, prompt_ids, max_new_tokens, gamma, generator, **warp)}."""
    return {
        tr("resample from p after a rejection"): _decoder(_resample_from_p),
        tr("draft samples without top-k/top-p"): _decoder(None, dict(temperature=temperature)),
        tr("one uniform for all drafts of a round"): _decoder(_one_uniform),
    }


# --- the exercises ----------------------------------------------------------------------------------

def check_acceptance_rate(fn, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(3000 + seed)
    n = 0
    for shape in [(5,), (3, 7), (2, 1, 4)]:
        p = torch.rand(shape, generator=g, dtype=torch.float64).softmax(-1)
        q = (3 * torch.rand(shape, generator=g, dtype=torch.float64)).softmax(-1)
        got = call(fn, p.clone(), q.clone())
        want = torch.minimum(p, q).sum(-1)
        expect_close(got, want, trf("{name_of(fn)}(p, q) for p of shape {list(shape)}"), atol=1e-9,
                     hint=tr("alpha = sum over the vocabulary (the last dimension) of min(p(x), q(x))"))
        n += 1
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    got = call(fn, p, p.clone())
    expect_close(got, torch.tensor(1.0, dtype=torch.float64), f"{name_of(fn)}(p, p)", atol=1e-9,
                 hint=tr("a draft equal to the target is always accepted"))
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
            fail(trf("{e}. With alpha = 1 every draft is accepted: gamma + 1 tokens per call (the "
                 "formula's 0/0 has that limit)"))
        want = sum(alpha ** i for i in range(gamma + 1))
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            fail(trf("{name_of(fn)}({alpha}, {gamma}) should return a number (float), got {describe(got)}"))
        if not math.isfinite(got) or abs(got - want) > 1e-9 * max(1, want):
            hint = (tr(" With alpha = 1 every draft is accepted: gamma + 1 tokens per call (the formula's "
                    "0/0 has that limit)") if alpha == 1 else
                    tr(" A call yields 1 + alpha + ... + alpha^gamma tokens on average: "
                    "(1 - alpha^(gamma + 1)) / (1 - alpha)"))
            fail(trf("{name_of(fn)}(alpha={alpha}, gamma={gamma}) = {got!r}, expected {approx(want, 6)}.{hint}"))
    passed(fn, len(cases))
