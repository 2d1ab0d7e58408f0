"""Checks for chapter 09 (decoding): greedy decoding, the top-k and top-p (nucleus) filters, beam
search with length normalization, and the exercises' min-p filter and repetition penalty.

The decoding checks run the learner's function on toy language models (:class:`PrefixHashLM`) whose
next-token logits depend on the *whole* prefix, through a hash of it, and are deliberately not
normalized. So every mistake of context shows: a decoder that feeds only the last token, or reads
the logits at the wrong position, or adds raw logits instead of log-probabilities, picks other tokens.

The oracles are written independently of the chapter's code: greedy decoding as an argmax loop over
one sequence at a time; beam search against exhaustive search over all V^n continuations, each
scored in one forward pass (teacher forcing), and, for small beams, a reference beam search in
float64. The reference also runs a few typical mistakes, so a wrong answer can be named.
"""

from __future__ import annotations

import torch

from ..i18n import tr, trf
from . import (approx, call, describe, expect_shape, expect_tensor, fail, name_of, passed, seeded)

__all__ = [
    "PrefixHashLM",
    "check_greedy_decode",
    "check_top_k_filter",
    "check_top_p_filter",
    "check_beam_search",
    "check_min_p_filter",
    "check_repetition_penalty",
]


# --- a toy language model ----------------------------------------------------------------------

class PrefixHashLM:
    """A toy language model: ids [B, N] (int64) -> float64 logits [B, N, V] for every position.

    The logits at position t are a random row chosen by a hash of ids[:, :t+1], the whole prefix,
    plus a random offset per row (so raw logits are not log-probabilities). ``eos_bias`` raises
    the logit of ``eos_id`` everywhere, to make hypotheses end at different lengths.
    """

    n_rows = 4099

    def __init__(self, vocab_size: int, seed: int = 0, scale: float = 2.0, eos_id: int | None = None,
                 eos_bias: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.table = torch.randn(self.n_rows, vocab_size, generator=g, dtype=torch.float64) * scale
        self.table += torch.randn(self.n_rows, 1, generator=g, dtype=torch.float64) * 5.0
        if eos_id is not None:
            self.table[:, eos_id] += eos_bias

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if (not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point()
                or ids.dtype == torch.bool):
            fail(trf("the model takes token ids as an integer tensor of shape [B, N], but was called with "
                 "{describe(ids)}"))
        if ids.shape[1] == 0:
            fail(tr("the model was called with an empty sequence (N = 0): it needs at least the prompt"))
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.vocab_size):
            fail(trf("the model was called with a token id outside [0, {self.vocab_size}): "
                 "{ids.min().item()}..{ids.max().item()}"))
        h = torch.zeros(ids.shape[0], dtype=torch.long)
        rows = []
        for t in range(ids.shape[1]):
            h = (h * 131 + ids[:, t].long().cpu() + 1) % self.n_rows
            rows.append(self.table[h])
        return torch.stack(rows, dim=1).to(ids.device)


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    # (torch's log_softmax on tiny float64 tensors can be slow under multithreading; this is not)
    return x - x.logsumexp(-1, keepdim=True)


def _row(prompt_len: int, vocab_size: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, vocab_size, (1, prompt_len), generator=g)


def _toks(x) -> list:
    return [int(v) for v in (x.flatten().tolist() if isinstance(x, torch.Tensor) else x)]


# --- greedy ------------------------------------------------------------------------------------

def _greedy_oracle(model, prompt, n, eos_id=None, mode="ok"):
    """One row at a time, one token at a time: the argmax of the logits at the last position.

    mode names a mistake: "last_token" feeds only the last token, "first_position" reads the
    logits at position 0, "argmin" takes the least probable token, "no_eos" ignores eos_id."""
    out = []
    for row in prompt:
        seq = row.tolist()
        done = False
        for _ in range(n):
            if done:
                seq.append(eos_id)
                continue
            ids = torch.tensor([seq[-1:] if mode == "last_token" else seq])
            logits = model(ids)[0, 0 if mode == "first_position" else -1]
            tok = int(logits.argmin() if mode == "argmin" else logits.argmax())
            seq.append(tok)
            done = eos_id is not None and tok == eos_id and mode != "no_eos"
        out.append(seq)
    return torch.tensor(out)


def _expect_ids(got, shape, what, hint=""):
    expect_tensor(got, what)
    if tuple(got.shape) != tuple(shape):
        fail(trf("{what} has shape {list(got.shape)}, expected {list(shape)}") + (trf(". {hint}") if hint else ""))
    if got.is_floating_point() or got.dtype == torch.bool:
        fail(trf("{what} has dtype {got.dtype}, expected token ids (torch.int64, as argmax gives)"))


GREEDY_SHAPE = (tr("greedy_decode returns the prompt followed by the new tokens: prompt_ids [B, N] -> "
                "[B, N + max_new_tokens]"))


def check_greedy_decode(fn, seed: int = 0) -> None:
    """Greedy decoding against a step-by-step argmax oracle on prefix-dependent toy models."""
    who = name_of(fn)
    n = 0
    g = torch.Generator().manual_seed(1000 + seed)
    cases = [  # (vocab size, B, T, max_new_tokens)
        (7, 2, 3, 5),
        (5, 3, 1, 4),
        (2, 1, 2, 6),
        (11, 4, 5, 1),
        (6, 2, 4, 0),
    ]
    for V, B, T, steps in cases:
        model = PrefixHashLM(V, seed=seed * 31 + V)
        prompt = torch.randint(0, V, (B, T), generator=g)
        saved = prompt.clone()
        what = trf("{who}(model, prompt_ids {list(prompt.shape)}, max_new_tokens={steps})")
        got = call(fn, model, prompt, steps)
        _expect_ids(got, (B, T + steps), what, GREEDY_SHAPE)
        if not torch.equal(prompt, saved):
            fail(trf("{what} changed prompt_ids in place; build a new tensor (torch.cat) instead"))
        got = got.cpu()
        if not torch.equal(got[:, :T], prompt):
            fail(trf("{what}: the output should begin with the prompt {prompt[0].tolist()}, "
                 "but row 0 begins with {got[0, :T].tolist()}"))
        _compare_greedy(got, model, prompt, steps, None, what)
        n += 1

    # eos: choose eos_id as the token row 0 produces at its second step, so that row stops there
    V, B, T, steps = 5, 3, 2, 6
    model = PrefixHashLM(V, seed=seed * 31 + 100)
    prompt = torch.randint(0, V, (B, T), generator=g)
    free = _greedy_oracle(model, prompt, steps)
    eos_id = int(free[0, T + 1])
    what = trf("{who}(model, prompt_ids {list(prompt.shape)}, max_new_tokens={steps}, eos_id={eos_id})")
    got = call(fn, model, prompt, steps, eos_id=eos_id)
    _expect_ids(got, (B, T + steps), what, GREEDY_SHAPE + tr("; finished rows are filled with eos_id up "
                "to that length"))
    _compare_greedy(got.cpu(), model, prompt, steps, eos_id, what)
    n += 1
    passed(fn, n)


def _compare_greedy(got, model, prompt, steps, eos_id, what):
    want = _greedy_oracle(model, prompt, steps, eos_id)
    if torch.equal(got, want):
        return
    T = prompt.shape[1]
    b, t = torch.nonzero(got != want)[0].tolist()
    prefix = want[b, :t].tolist()
    where = (trf("row {b}, new token {t - T} (after the prefix {prefix}): you chose {got[b, t].item()}, "
             "greedy chooses {want[b, t].item()}"))
    if eos_id is not None:
        first = (want[b, T:] == eos_id).nonzero()
        if len(first) and t - T > first[0].item():
            fail(trf("{what}: row {b} produced eos_id = {eos_id} at new token {first[0].item()}, and then you "
                 "went on decoding ({where}). A row that has produced eos_id is finished: fill its later "
                 "positions with eos_id"))
    named = []
    for mode, words in [
        ("last_token", tr("you fed only the last token to the model; feed the whole sequence so far "
                       "(prompt and new tokens): the model needs the full context")),
        ("first_position", tr("you read the logits at position 0; the next token is predicted at the "
                           "*last* position: model(ids)[:, -1, :]")),
        ("argmin", tr("you took the least probable token: use argmax")),
    ]:
        if torch.equal(got[b], _greedy_oracle(model, prompt[b:b + 1], steps, eos_id, mode=mode)[0]):
            named.append(words)
    if len(named) == 1:
        fail(trf("{what}: {where}: {named[0]}"))
    if named:
        fail(trf("{what}: {where}. Each of these mistakes gives exactly your row {b}: ")
             + tr(" Or: ").join(trf("({i + 1}) {w}.") for i, w in enumerate(named)))
    fail(trf("{what}: {where} (the argmax of model(ids)[:, -1, :], the logits at the last position of the "
         "whole sequence so far)"))


# --- top-k ---------------------------------------------------------------------------------------

def _expect_filtered(got, logits, what):
    """Same shape and dtype; kept entries unchanged; the others exactly -inf. Returns the kept mask."""
    expect_tensor(got, what)
    if tuple(got.shape) != tuple(logits.shape):
        fail(trf("{what} has shape {list(got.shape)}, expected the shape of the logits {list(logits.shape)}"))
    if got.dtype != logits.dtype:
        fail(trf("{what} has dtype {got.dtype}, expected the logits' dtype {logits.dtype}"))
    got = got.detach().cpu()
    if torch.isnan(got).any():
        fail(trf("{what} contains NaN; excluded entries should be -inf"))
    kept = got != float("-inf")
    changed = kept & (got != logits)
    if changed.any():
        idx = tuple(torch.nonzero(changed)[0].tolist())
        hint = ""
        if got[idx].item() == 0.0:
            hint = tr(". Excluded entries should be -inf (so that the softmax gives them exactly 0), not 0")
        elif (got[kept] <= 0).all() and (logits > 0).any():
            hint = (tr(". The filter returns logits, not (log-)probabilities: leave the kept entries as "
                    "they were, the softmax comes later"))
        fail(trf("{what}: at index {list(idx)} you have {got[idx].item():.6g} where the logit was "
             "{logits[idx].item():.6g}: kept entries must stay unchanged and excluded ones become -inf")
             + hint)
    return kept


def _fmt_set(mask_row) -> str:
    return str(torch.nonzero(mask_row).flatten().tolist())


def check_top_k_filter(fn, seed: int = 0) -> None:
    """top_k_filter against torch.topk: the k largest logits of each row are kept, the rest -inf.

    Ties with the k-th largest value: keeping all of them (the formula `logits < kth -> -inf`) and
    keeping exactly k of them (torch.topk's choice) both pass."""
    who = name_of(fn)
    n = 0
    with seeded(2000 + seed):
        ties = torch.tensor([[1.0, 3.0, 0.5, 3.0, 2.0, 3.0, -1.0]])
        cases = [
            (torch.randn(2, 10), 3),
            (torch.randn(9), 1),                         # a single row, no batch dimension
            (torch.randn(2, 3, 6, dtype=torch.float64), 2),  # extra batch dims, float64
            (torch.randn(3, 5), 5),                      # k = V keeps everything
            (torch.randn(2, 4), 9),                      # k > V keeps everything
            (torch.randn(4, 13) * 3, 4 + seed % 3),
            (ties, 2),                                   # three entries tie for 2nd place
            (torch.tensor([[0.0, float("-inf"), 1.0, -2.0]]), 2),   # -inf already there
        ]
    for logits, k in cases:
        saved = logits.clone()
        what = trf("{who}(logits {list(logits.shape)}, k={k})")
        got = call(fn, logits, k)
        if not torch.equal(logits, saved):
            fail(trf("{what} changed the logits in place (e.g. masked_fill_ or `logits[...] = `); return a "
                 "new tensor, the caller still needs the logits"))
        kept = _expect_filtered(got, logits, what)
        V = logits.shape[-1]
        kk = min(k, V)
        kth = logits.topk(kk, dim=-1).values[..., -1:]
        above, tied = logits > kth, logits == kth
        flat = [t.reshape(-1, V) for t in (kept, above, tied, logits)]
        for r, (kr, ar, tie_r, lr) in enumerate(zip(*flat)):
            ok_set = not (kr & ~(ar | tie_r)).any() and (ar & ~kr).sum() == 0
            count = int(kr.sum())
            if ok_set and (count == kk or bool((kr == (ar | tie_r)).all())):
                continue
            smallest = torch.zeros_like(kr)
            smallest[lr.topk(kk, largest=False).indices] = True
            if kk < V and torch.equal(kr, smallest) and not torch.equal(smallest, ar | tie_r):
                fail(trf("{what}, row {r}: you kept the {kk} *smallest* logits {_fmt_set(kr)}; keep the {kk} "
                     "largest, {_fmt_set(ar | tie_r)} (torch.topk returns the largest by default)"))
            if count > kk and not (kr == (ar | tie_r)).all():
                fail(trf("{what}, row {r}: you kept {count} entries {_fmt_set(kr)}, expected the {kk} largest "
                     "{_fmt_set(ar | tie_r)}") + (tr(" (one too many: the k-th largest value is "
                                              "topk(k).values[..., -1], and entries below it go)")
                                              if count == kk + 1 else ""))
            if count < kk:
                fail(trf("{what}, row {r}: you kept {count} entries {_fmt_set(kr)}, expected the {kk} largest "
                     "{_fmt_set(ar | tie_r)}") + (tr(" (one too few: keep entries >= the k-th largest value)")
                                              if count == kk - 1 else "")
                     + (tr(" (with k >= V every entry stays)") if k >= V else ""))
            fail(trf("{what}, row {r}: you kept {_fmt_set(kr)}, expected the {kk} largest logits "
                 "{_fmt_set(ar | tie_r)}"))
        n += 1
    passed(fn, n)


# --- top-p ---------------------------------------------------------------------------------------

def _nucleus(logits: torch.Tensor, p: float, mode: str = "ok") -> torch.Tensor:
    """Boolean mask of the nucleus, in float64: sorted descending, keep a token while the mass of
    the tokens ranked above it is < p. Modes name mistakes: "drop_crossing" keeps only tokens whose
    cumulative mass (including themselves) is < p; "ascending" sorts the wrong way; "logits" sums
    logits instead of probabilities."""
    x = logits.double().reshape(-1, logits.shape[-1])
    probs = x.softmax(-1)
    sorted_p, order = probs.sort(-1, descending=(mode != "ascending"))
    cum = sorted_p.cumsum(-1)
    if mode == "logits":
        sorted_p = x.sort(-1, descending=True).values
        cum = sorted_p.cumsum(-1)
    keep_sorted = (cum < p) if mode == "drop_crossing" else (cum - sorted_p < p)
    if p >= 1 and mode == "ok":
        keep_sorted = torch.ones_like(keep_sorted)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return keep.reshape(logits.shape)


def _clear_of_boundary(logits: torch.Tensor, p: float, margin: float = 1e-3) -> bool:
    x = logits.double().reshape(-1, logits.shape[-1]).softmax(-1).sort(-1, descending=True).values
    cum = x.cumsum(-1)
    return bool(((cum - p).abs() > margin).all()) if p < 1 else True


def check_top_p_filter(fn, seed: int = 0) -> None:
    """top_p_filter against a sort/cumsum oracle in float64: per row, the smallest set of most
    probable tokens whose probabilities sum to at least p (the token that crosses p is kept)."""
    who = name_of(fn)
    n = 0
    with seeded(3000 + seed):
        def fresh(shape, p, scale=1.5):
            while True:  # no cumulative sum within 1e-3 of p, so rounding cannot decide
                x = torch.randn(shape) * scale
                if _clear_of_boundary(x, p):
                    return x
        # a token with probability ~1e-18: in float32 the cumsum reaches 1.0 before it
        wide = torch.tensor([[0.0, 0.0, 0.0, -40.0], [1.0, -0.5, 0.0, -40.0]])
        cases = [
            (fresh((3, 12), 0.9), 0.9),
            (fresh((2, 8), 0.5), 0.5),
            (fresh((10,), 0.75), 0.75),                  # a single row
            (fresh((2, 2, 7), 0.6, 2.5), 0.6),           # extra batch dims
            (fresh((4, 9), 0.01), 0.01),                 # only the top token survives
            (wide, 1.0),                                 # p = 1 keeps everything
            (fresh((5, 16), 0.8 + 0.05 * (seed % 3), 1.0), 0.8 + 0.05 * (seed % 3)),
        ]
    for logits, p in cases:
        saved = logits.clone()
        what = trf("{who}(logits {list(logits.shape)}, p={p:g})")
        got = call(fn, logits, p)
        if not torch.equal(logits, saved):
            fail(trf("{what} changed the logits in place; return a new tensor, the caller still needs them"))
        kept = _expect_filtered(got, logits, what)
        want = _nucleus(logits, p)
        if torch.equal(kept, want):
            n += 1
            continue
        V = logits.shape[-1]
        rows = [t.reshape(-1, V) for t in (kept, want, logits)]
        r = int(torch.nonzero((rows[0] != rows[1]).any(-1))[0])
        kr, wr, lr = rows[0][r], rows[1][r], rows[2][r]
        probs = lr.double().softmax(-1)
        mass, want_mass = probs[kr].sum().item(), probs[wr].sum().item()
        head = trf("{what}, row {r}")
        if not kr.any():
            fail(trf("{head}: you removed every token. The most probable token is always kept: the mass "
                 "ranked above it is 0 < p"))
        if p >= 1:
            fail(trf("{head}: with p = 1 every token must stay, you kept {int(kr.sum())} of {V}. In float32 "
                 "the cumulative sum can round to 1.0 before the last token, so treat p >= 1 as 'keep all'"))
        if torch.equal(kr, _nucleus(lr[None], p, "ascending")[0]):
            fail(trf("{head}: you kept the *least* probable tokens {_fmt_set(kr)}: sort the probabilities in "
                 "descending order (sort(descending=True)) before the cumulative sum"))
        if torch.equal(kr, _nucleus(lr[None], p, "drop_crossing")[0]):
            fail(trf("{head}: you kept {_fmt_set(kr)} with mass {approx(mass, 3)} < p = {p:g}: you dropped the "
                 "token that crosses p. Keep each token whose *preceding* mass (cumsum - prob) is < p, "
                 "so the kept set sums to at least p: {_fmt_set(wr)}, mass {approx(want_mass, 3)}"))
        if torch.equal(kr, _nucleus(lr[None], p, "logits")[0]):
            fail(trf("{head}: you kept {_fmt_set(kr)}, expected {_fmt_set(wr)}: you summed the logits; the "
                 "nucleus is defined by probabilities, so take the softmax before the cumulative sum"))
        top_set = probs >= probs[kr].min()
        if not torch.equal(kr, top_set):
            fail(trf("{head}: you kept {_fmt_set(kr)}, which are not the most probable tokens (expected "
                 "{_fmt_set(wr)}). Did you map the mask from sorted order back to the vocabulary "
                 "order (scatter with the sort's indices)?"))
        fail(trf("{head}: you kept {int(kr.sum())} tokens {_fmt_set(kr)} with mass {approx(mass, 3)}; the "
             "smallest set of most probable tokens with mass >= p = {p:g} is {_fmt_set(wr)}, mass "
             "{approx(want_mass, 3)}. Are you summing probabilities (softmax), not logits?"))
    passed(fn, n)


# --- beam search ---------------------------------------------------------------------------------

def _exhaustive(model, prompt, n, alpha=1.0, eos_id=None):
    """The best continuation over all V^n, each scored in one forward pass (teacher forcing).

    A continuation ends at its first eos_id (length L includes it) or after n tokens; its score is
    (sum of the L log-probabilities) / L ** alpha. Returns (ids [1, N + L], score)."""
    V, T = model.vocab_size, prompt.shape[1]
    conts = torch.cartesian_prod(*[torch.arange(V)] * n) if n > 1 else torch.arange(V)[:, None]
    full = torch.cat([prompt.expand(len(conts), -1), conts], dim=1)
    logp = _log_softmax(model(full)[:, T - 1:-1].double()).gather(-1, conts[..., None])[..., 0]
    if eos_id is None:
        L = torch.full((len(conts),), n)
    else:
        is_eos = conts == eos_id
        L = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, n)
    total = logp.cumsum(-1).gather(-1, (L - 1)[:, None])[:, 0]
    score = total / L.double() ** alpha
    best = int(score.argmax())
    return full[best, : T + int(L[best])][None], score[best].item()


def _score(model, prompt, seq, alpha, eos_id):
    """The score of one hypothesis seq [1, T + L] (None if it is not a valid hypothesis)."""
    T = prompt.shape[1]
    new = seq[0, T:]
    L = len(new)
    if L == 0:
        return None
    logp = _log_softmax(model(seq)[0, T - 1:-1].double()).gather(-1, new[:, None])[:, 0]
    return logp.sum().item() / L ** alpha


def _ref_beam(model, prompt, width, n, alpha=1.0, eos_id=None, mode="ok"):
    """Reference beam search in float64 (see the chapter's docstring); modes run typical mistakes:
    "logits" adds raw logits, "probs" adds probabilities, "per_parent" lets each beam keep its own
    best continuation after the first step, "no_norm" ignores the length penalty, "with_prompt"
    counts the prompt in the length, "alive_raw" leaves the beams that reach max_new_tokens
    unnormalized, "no_eos" never finishes a hypothesis at eos_id."""
    T = prompt.shape[1]
    beams, scores = prompt, torch.zeros(1, dtype=torch.float64)
    finished = []

    def norm(s, L):
        if mode == "no_norm":
            return s
        return s / (L + T if mode == "with_prompt" else L) ** alpha

    for step in range(1, n + 1):
        logits = model(beams)[:, -1].double()
        log_p = _log_softmax(logits)
        inc = logits if mode == "logits" else log_p.exp() if mode == "probs" else log_p
        cand = scores[:, None] + inc
        V = cand.shape[-1]
        if mode == "per_parent" and step > 1:
            vals, tok = cand.max(-1)
            parent = torch.arange(len(beams))
        else:
            top = cand.flatten().topk(min(width, cand.numel()))
            vals, parent, tok = top.values, top.indices // V, top.indices % V
        beams, scores = torch.cat([beams[parent], tok[:, None]], dim=1), vals
        if eos_id is not None and mode != "no_eos":
            ended = tok == eos_id
            finished += [(norm(s, step), b) for s, b in zip(scores[ended].tolist(), beams[ended])]
            beams, scores = beams[~ended], scores[~ended]
            if len(beams) == 0:
                break
    for s, b in zip(scores.tolist(), beams):   # the beams that reached max_new_tokens are finished too
        finished.append((s if mode == "alive_raw" else norm(s, n), b))
    return max(finished, key=lambda f: f[0])[1][None]


BEAM_MISTAKES = {
    "logits": tr("you added raw logits; add log-probabilities, log_softmax(logits), so that the "
              "score of a sequence is log P(sequence) = sum of log p(token | prefix)"),
    "probs": tr("you added probabilities; the probability of a sequence is the *product* of its "
             "tokens' probabilities, so add their logarithms (log_softmax)"),
    "per_parent": tr("each beam kept its own best continuation; at every step keep the beam_width "
                  "best candidates over all beams together (a global top-k of beam score + log p, "
                  "over beams x vocabulary)"),
    "no_norm": tr("you compared finished hypotheses by their total log-probability; divide by "
               "L ** length_penalty, L = the number of new tokens (eos included)"),
    "with_prompt": tr("you counted the prompt in the length; L is the number of *new* tokens "
                   "(eos included)"),
    "alive_raw": tr("the hypotheses that reached max_new_tokens were not length-normalized; every "
                 "finished hypothesis, with or without eos, scores (sum of log p) / L ** length_penalty"),
    "no_eos": tr("a hypothesis went on after eos_id; a candidate that ends in eos_id is finished "
              "and leaves the beam"),
}


def _compare_beam(got, model, prompt, width, n, alpha, eos_id, what, want=None, why=""):
    T = prompt.shape[1]
    if want is None:
        want = _ref_beam(model, prompt, width, n, alpha, eos_id)
    expect_tensor(got, what)
    if got.dim() != 2 or got.shape[0] != 1 or not (T < got.shape[1] <= T + n):
        fail(trf("{what} has shape {list(got.shape)}, expected [1, N + L] with 1 <= L <= max_new_tokens = {n} "
             "(N = {T}): the prompt and the best hypothesis's new tokens"))
    if got.is_floating_point() or got.dtype == torch.bool:
        fail(trf("{what} has dtype {got.dtype}, expected token ids (torch.int64)"))
    got = got.cpu()
    if not torch.equal(got[:, :T], prompt):
        fail(trf("{what}: the output should begin with the prompt {_toks(prompt)}, got {_toks(got[:, :T])}"))
    if torch.equal(got, want):
        return
    new = _toks(got[0, T:])
    if eos_id is not None and eos_id in new[:-1]:
        fail(trf("{what}: your hypothesis {new} goes on after eos_id = {eos_id}: {BEAM_MISTAKES['no_eos']}"))
    named = []
    for mode, words in BEAM_MISTAKES.items():
        if mode in ("no_norm", "with_prompt", "alive_raw") and (eos_id is None or alpha == 0):
            continue
        if mode == "no_eos" and eos_id is None:
            continue
        other = _ref_beam(model, prompt, width, n, alpha, eos_id, mode)
        if torch.equal(got, other) and not torch.equal(other, want):
            named.append(words)
    if len(named) == 1:
        fail(trf("{what}: you returned {new}, expected {_toks(want[0, T:])}: {named[0]}"))
    if named:
        fail(trf("{what}: you returned {new}, expected {_toks(want[0, T:])}. Each of these mistakes gives "
             "exactly your answer: ") + tr(" Or: ").join(trf("({i + 1}) {w}.") for i, w in enumerate(named)))
    s_got, s_want = _score(model, prompt, got, alpha, eos_id), _score(model, prompt, want, alpha, eos_id)
    fail(trf("{what}: you returned the continuation {new} (score {approx(s_got, 4)}), expected "
         "{_toks(want[0, T:])} (score {approx(s_want, 4)}){why}"))


def check_beam_search(fn, seed: int = 0) -> None:
    """Beam search: width 1 equals greedy; width V^n equals exhaustive search; small widths match a
    reference beam search; with eos_id, hypotheses end at different lengths and are compared by
    (sum of log p) / L ** length_penalty."""
    who = name_of(fn)
    n_checks = 0
    g = torch.Generator().manual_seed(4000 + seed)

    def run(model, prompt, width, n, alpha=1.0, eos_id=None):
        args = trf("model, prompt_ids {list(prompt.shape)}, beam_width={width}, max_new_tokens={n}")
        kwargs = {"length_penalty": alpha}
        args += trf(", length_penalty={alpha:g}")
        if eos_id is not None:
            kwargs["eos_id"] = eos_id
            args += trf(", eos_id={eos_id}")
        saved = prompt.clone()
        got = call(fn, model, prompt, width, n, **kwargs)
        if not torch.equal(prompt, saved):
            fail(trf("{who}({args}) changed prompt_ids in place; build new tensors instead"))
        return got, f"{who}({args})"

    # 1. beam width 1 is greedy decoding
    for V, T, n in [(4, 2, 5), (3, 1, 4)]:
        model, prompt = PrefixHashLM(V, seed=seed * 17 + V), _row(T, V, g)
        got, what = run(model, prompt, 1, n)
        greedy = _greedy_oracle(model, prompt, n)
        _compare_beam(got, model, prompt, 1, n, 1.0, None, what, want=greedy,
                      why=tr(", the greedy sequence: with beam_width = 1 beam search keeps the single best "
                          "candidate at each step"))
        n_checks += 1

    # 2. a beam as wide as all continuations is exhaustive search
    for V, T, n in [(3, 2, 4), (4, 1, 3)]:
        model, prompt = PrefixHashLM(V, seed=seed * 17 + 10 + V), _row(T, V, g)
        want, _ = _exhaustive(model, prompt, n)
        got, what = run(model, prompt, V ** n, n)
        _compare_beam(got, model, prompt, V ** n, n, 1.0, None, what, want=want,
                      why=trf(", the best of all {V}^{n} = {V ** n} continuations: a beam that wide keeps "
                          "every candidate, so beam search is exhaustive search"))
        n_checks += 1

    # 3. small widths against the reference: cases where the typical mistakes give other answers
    modes = ["logits", "probs", "per_parent"]
    for model, prompt, width, n in _discriminating(g, seed, modes, V=5, T=2, n=4, widths=(2, 3)):
        got, what = run(model, prompt, width, n)
        _compare_beam(got, model, prompt, width, n, 1.0, None, what)
        n_checks += 1

    # 4. eos and length normalization: exhaustive (width V^n) and a small width
    modes = ["no_norm", "with_prompt", "alive_raw", "no_eos"]
    V, n = 4, 4
    for model, prompt, width, _ in _discriminating(g, seed + 7, modes, V=V, T=3, n=n, widths=(V ** n, 2),
                                                   eos_id=0):
        for alpha in (1.0, 0.0) if width == V ** n else (1.0,):
            got, what = run(model, prompt, width, n, alpha, eos_id=0)
            if width == V ** n:
                want, _ = _exhaustive(model, prompt, n, alpha, eos_id=0)
                _compare_beam(got, model, prompt, width, n, alpha, 0, what, want=want,
                              why=trf(", the best of all continuations (a beam of width {V}^{n} keeps every "
                                  "candidate), scored by (sum of log p) / L ** {alpha:g}"))
            else:
                _compare_beam(got, model, prompt, width, n, alpha, 0, what)
            n_checks += 1

    # 5. with eos, beam width 1 is still greedy (stopping at eos)
    model, prompt = PrefixHashLM(4, seed=seed * 17 + 99, eos_id=0, eos_bias=2.0), _row(2, 4, g)
    got, what = run(model, prompt, 1, 6, 1.0, eos_id=0)
    greedy = _greedy_oracle(model, prompt, 6, eos_id=0)
    ends = (greedy[0, 2:] == 0).nonzero()
    greedy = greedy[:, : 2 + (ends[0].item() + 1 if len(ends) else 6)]
    _compare_beam(got, model, prompt, 1, 6, 1.0, 0, what, want=greedy,
                  why=tr(", the greedy sequence up to its eos: with beam_width = 1 a beam that ends in "
                      "eos_id is finished, nothing is left to extend"))
    n_checks += 1
    passed(fn, n_checks)


def _discriminating(g, seed, modes, V, T, n, widths, eos_id=None, tries=200):
    """Deterministic test cases (model, prompt, width, n) on which, together, each mistake in
    `modes` gives a result different from the reference."""
    todo, cases = list(modes), []
    for i in range(tries):
        if not todo:
            break
        model = PrefixHashLM(V, seed=seed * 1000 + 500 + i, eos_id=eos_id,
                             eos_bias=1.5 if eos_id is not None else 0.0)
        prompt = _row(T, V, g)
        width = widths[i % len(widths)]
        want = _ref_beam(model, prompt, width, n, 1.0, eos_id)
        caught = [m for m in todo if not torch.equal(_ref_beam(model, prompt, width, n, 1.0, eos_id, m), want)]
        if caught:
            cases.append((model, prompt, width, n))
            todo = [m for m in todo if m not in caught]
    return cases


# --- exercises: min-p and repetition penalty ----------------------------------------------------

def check_min_p_filter(fn, seed: int = 0) -> None:
    """min_p_filter(logits, min_p): keep tokens with probability >= min_p * (the top probability)."""
    who = name_of(fn)
    n = 0
    with seeded(5000 + seed):
        cases = [
            (torch.randn(3, 10) * 2, 0.1),
            (torch.randn(7) * 3, 0.3),
            (torch.randn(2, 2, 9, dtype=torch.float64) * 2 + 5, 0.05),   # logits shifted: same probs
            (torch.randn(2, 6) - 4, 0.2),                                # all logits negative
            (torch.randn(4, 8) * 2, 1.0),                                # only the top token(s)
        ]
    for logits, min_p in cases:
        saved = logits.clone()
        what = trf("{who}(logits {list(logits.shape)}, min_p={min_p:g})")
        got = call(fn, logits, min_p)
        if not torch.equal(logits, saved):
            fail(trf("{what} changed the logits in place; return a new tensor"))
        kept = _expect_filtered(got, logits, what)
        probs = logits.double().softmax(-1)
        top = probs.amax(-1, keepdim=True)
        want = probs >= min_p * top
        if torch.equal(kept, want):
            n += 1
            continue
        V = logits.shape[-1]
        rows = [t.reshape(-1, V) for t in (kept, want, probs, logits)]
        r = int(torch.nonzero((rows[0] != rows[1]).any(-1))[0])
        kr, wr, pr, lr = (t[r] for t in rows)
        head = trf("{what}, row {r}")
        if not kr.any():
            fail(trf("{head}: you removed every token; the most probable token always stays "
                 "(p_max >= min_p * p_max): keep p >= min_p * p_max, with >="))
        named = []
        if torch.equal(kr, pr >= min_p):
            named.append(trf("you kept the tokens with probability >= min_p = {min_p:g}; the threshold scales "
                         "with the top probability ({approx(pr.max().item(), 3)} here): keep p >= min_p * p_max"))
        if torch.equal(kr, lr >= min_p * lr.max()):
            named.append(tr("you compared logits with min_p * (the largest logit); compare probabilities "
                         "(softmax), or equivalently logits >= max logit + log(min_p)"))
        if len(named) == 1:
            fail(trf("{head}: {named[0]}"))
        if named:
            fail(trf("{head}: you kept {_fmt_set(kr)}, expected {_fmt_set(wr)}. Each of these mistakes gives "
                 "exactly that: ") + tr(" Or: ").join(trf("({i + 1}) {w}.") for i, w in enumerate(named)))
        fail(trf("{head}: you kept {_fmt_set(kr)}, expected {_fmt_set(wr)}: the tokens whose probability is "
             ">= min_p * p_max = {approx(min_p * pr.max().item(), 3)}"))
    passed(fn, n)


def _penalized(logits, prev, penalty):
    out = logits.clone()
    for r in range(out.shape[0]):
        for t in set(prev[r].tolist()):
            v = out[r, t]
            out[r, t] = v / penalty if v > 0 else v * penalty
    return out


def check_repetition_penalty(fn, seed: int = 0) -> None:
    """repetition_penalty(logits [B, V], prev_ids [B, T], penalty): for each token that already occurs
    in its row, a positive logit is divided by penalty, a negative one multiplied (CTRL)."""
    who = name_of(fn)
    n = 0
    with seeded(6000 + seed):
        cases = [
            (torch.randn(2, 8) * 2, torch.tensor([[1, 3, 3, 5], [0, 0, 7, 2]]), 1.3),   # repeats within a row
            (torch.randn(3, 5) * 2, torch.tensor([[4], [0], [2]]), 2.0),
            (torch.randn(1, 6, dtype=torch.float64), torch.tensor([[2, 2, 2, 1, 5]]), 1.5),
            (torch.randn(2, 9) * 2, torch.randint(0, 9, (2, 6)), 1.0),                  # penalty 1: unchanged
        ]
    for logits, prev, penalty in cases:
        saved = logits.clone()
        what = trf("{who}(logits {list(logits.shape)}, prev_ids {list(prev.shape)}, penalty={penalty:g})")
        got = call(fn, logits, prev, penalty)
        if not torch.equal(logits, saved):
            fail(trf("{what} changed the logits in place; return a new tensor"))
        expect_shape(got, logits.shape, what)
        if got.dtype != logits.dtype:
            fail(trf("{what} has dtype {got.dtype}, expected the logits' dtype {logits.dtype}"))
        want = _penalized(logits, prev, penalty)
        got_c = got.detach().cpu()
        bad = (got_c - want).abs() > 1e-6 * (1 + want.abs())
        if not bad.any():
            n += 1
            continue
        r, t = torch.nonzero(bad)[0].tolist()
        v, g_, w = logits[r, t].item(), got_c[r, t].item(), want[r, t].item()
        head = trf("{what}: row {r}, token {t} (logit {v:.4g}): you have {g_:.4g}, expected {w:.4g}")
        count = prev[r].tolist().count(t)
        if count == 0:
            other = any(t in prev[o].tolist() for o in range(prev.shape[0]))
            fail(trf("{head}. Token {t} does not occur in row {r}'s previous tokens, so its logit stays")
                 + (tr(" (it occurs in another row: penalize each row by its own tokens)") if other else ""))
        if v < 0 and abs(g_ - v / penalty) < 1e-6 * (1 + abs(v)):
            fail(trf("{head}. Dividing a negative logit by the penalty makes it *larger* (more probable); "
                 "multiply negative logits by the penalty, divide positive ones"))
        if count > 1 and abs(g_ - (v / penalty ** count if v > 0 else v * penalty ** count)) < 1e-6 * (1 + abs(v)):
            fail(trf("{head}. Token {t} occurs {count} times in row {r}, and you penalized it {count} times; "
                 "the penalty applies once per distinct token"))
        fail(head)
    passed(fn, n)
