"""Chapter 09 (decoding): the exercises, their checks, and plausible wrong answers."""

import torch

from exercises._case import Exercise
from transformer_course import decoding
from transformer_course.checks import decoding as checks


# --- greedy_decode -------------------------------------------------------------------------------

def _greedy(context="all", position=-1, pick="argmax", eos="stop", keep_prompt=True):
    """A greedy decoder with one mistake: the context it feeds, the position it reads, how it picks,
    what it does at eos, what it returns."""

    def greedy_decode(model, prompt_ids, max_new_tokens, eos_id=None):
        ids = prompt_ids
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        for _ in range(max_new_tokens):
            inp = ids[:, -1:] if context == "last" else ids
            logits = model(inp)[:, position, :]
            nxt = logits.argmin(-1) if pick == "argmin" else logits.argmax(-1)
            if eos_id is not None and eos == "stop":
                nxt = nxt.masked_fill(done, eos_id)
                done = done | (nxt == eos_id)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
        return ids if keep_prompt else ids[:, prompt_ids.shape[1]:]

    return greedy_decode


def _greedy_buffer(model, prompt_ids, max_new_tokens, eos_id=None):
    """Preallocates the output and runs the model on the whole buffer, zeros where nothing is yet."""
    B, T = prompt_ids.shape
    out = torch.zeros(B, T + max_new_tokens, dtype=torch.long)
    out[:, :T] = prompt_ids
    for t in range(T, T + max_new_tokens):
        out[:, t] = model(out)[:, -1, :].argmax(-1)
    return out


def _greedy_float(model, prompt_ids, max_new_tokens, eos_id=None):
    ids = prompt_ids
    for _ in range(max_new_tokens):
        nxt = model(ids)[:, -1, :].argmax(-1)
        ids = torch.cat([ids.float(), nxt[:, None].float()], dim=1).long()
    return ids.float()


GREEDY_WRONG = [
    (_greedy(context="last"), "you fed only the last token to the model"),
    (_greedy(position=0), "you read the logits at position 0"),
    (_greedy(pick="argmin"), "you took the least probable token"),
    (_greedy(eos="ignore"), "and then you went on decoding"),
    (_greedy(keep_prompt=False), "expected [2, 8]. greedy_decode returns the prompt followed by the new tokens"),
    (_greedy_buffer, "(the argmax of model(ids)[:, -1, :], the logits at the last position"),
    (_greedy_float, "expected token ids (torch.int64"),
]


# --- top_k_filter --------------------------------------------------------------------------------

def _top_k(rule):
    def top_k_filter(logits, k):
        return rule(logits, k)
    return top_k_filter


def _keep_k_plus_1(logits, k):
    kk = min(k + 1, logits.shape[-1])
    kth = logits.topk(kk, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _keep_smallest(logits, k):
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1, largest=False).values[..., -1:]
    return logits.masked_fill(logits > kth, float("-inf"))


def _zero_instead(logits, k):
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, 0.0)


def _in_place(logits, k):
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill_(logits < kth, float("-inf"))


def _no_clamp(logits, k):
    kth = logits.topk(k, dim=-1).values[..., -1:]          # fails for k > V
    return logits.masked_fill(logits < kth, float("-inf"))


def _strict(logits, k):
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits <= kth, float("-inf"))   # drops the k-th itself: k - 1 kept


TOP_K_WRONG = [
    (_top_k(_keep_k_plus_1), "one too many"),
    (_top_k(_keep_smallest), "you kept the 3 *smallest* logits"),
    (_top_k(_zero_instead), "should be -inf (so that the softmax gives them exactly 0), not 0"),
    (_top_k(_in_place), "changed the logits in place"),
    (_top_k(_no_clamp), "9) raised RuntimeError: selected index k out of range"),
    (_top_k(_strict), "one too few"),
]


# --- top_p_filter --------------------------------------------------------------------------------

def _top_p(drop_crossing=False, ascending=False, unsort=True, use_logits=False, special_one=True):
    def top_p_filter(logits, p):
        if special_one and p >= 1:
            return logits.clone()
        s, order = logits.sort(dim=-1, descending=not ascending)
        probs = s if use_logits else s.softmax(-1)
        cum = probs.cumsum(-1)
        drop_sorted = (cum >= p) if drop_crossing else (cum - probs >= p)
        drop = drop_sorted.scatter(-1, order, drop_sorted) if unsort else drop_sorted
        return logits.masked_fill(drop, float("-inf"))
    return top_p_filter


def _top_p_in_place(logits, p):
    """Right nucleus, but written into the caller's logits (masked_fill_)."""
    if p >= 1:
        return logits
    s, order = logits.sort(dim=-1, descending=True)
    probs = s.softmax(-1)
    drop_sorted = probs.cumsum(-1) - probs >= p
    return logits.masked_fill_(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


TOP_P_WRONG = [
    (_top_p(drop_crossing=True), "you dropped the token that crosses p"),
    (_top_p(ascending=True), "you kept the *least* probable tokens"),
    (_top_p(unsort=False), "map the mask from sorted order back to the vocabulary order"),
    (_top_p(use_logits=True), "you summed the logits"),
    (_top_p(special_one=False), "treat p >= 1 as 'keep all'"),
    (_top_p_in_place, "changed the logits in place"),
]


# --- beam_search ---------------------------------------------------------------------------------

def _beam(score="log_softmax", per_parent=False, norm="new", alive="norm", stop_at_eos=True):
    """A beam search with one mistake (see the names in checks.decoding.BEAM_MISTAKES)."""

    def beam_search(model, prompt_ids, beam_width, max_new_tokens, length_penalty=1.0, eos_id=None):
        T = prompt_ids.shape[1]
        beams, scores = prompt_ids, torch.zeros(1)
        finished = []

        def normed(s, L):
            return s if norm == "none" else s / (L + T if norm == "with_prompt" else L) ** length_penalty

        for step in range(1, max_new_tokens + 1):
            logits = model(beams)[:, -1, :].float()
            inc = {"log_softmax": logits.log_softmax(-1), "raw": logits, "probs": logits.softmax(-1)}[score]
            cand = scores[:, None] + inc
            V = cand.shape[-1]
            if per_parent and step > 1:
                vals, tok = cand.max(-1)
                parent = torch.arange(len(beams))
            else:
                top = cand.flatten().topk(min(beam_width, cand.numel()))
                vals, parent, tok = top.values, top.indices // V, top.indices % V
            beams, scores = torch.cat([beams[parent], tok[:, None]], dim=1), vals
            if eos_id is not None and stop_at_eos:
                ended = tok == eos_id
                finished += [(normed(s, step), b) for s, b in zip(scores[ended].tolist(), beams[ended])]
                beams, scores = beams[~ended], scores[~ended]
                if len(beams) == 0:
                    break
        finished += [(s if alive == "raw" else normed(s, max_new_tokens), b)
                     for s, b in zip(scores.tolist(), beams)]
        return max(finished, key=lambda f: f[0])[1][None]

    return beam_search


def _beam_1d(model, prompt_ids, beam_width, max_new_tokens, length_penalty=1.0, eos_id=None):
    return decoding.beam_search(model, prompt_ids, beam_width, max_new_tokens, length_penalty, eos_id)[0]


BEAM_WRONG = [
    (_beam(score="raw"), "you added raw logits"),
    (_beam(score="probs"), "you added probabilities"),
    (_beam(per_parent=True), "each beam kept its own best continuation"),
    (_beam(norm="none"), "you compared finished hypotheses by their total log-probability"),
    (_beam(norm="with_prompt"), "you counted the prompt in the length"),
    (_beam(alive="raw"), "the hypotheses that reached max_new_tokens were not length-normalized"),
    (_beam(stop_at_eos=False), "a hypothesis went on after eos_id"),
    (_beam_1d, "expected [1, N + L]"),
]


# --- min_p_filter --------------------------------------------------------------------------------

def _min_p(rule):
    def min_p_filter(logits, min_p):
        probs = logits.softmax(-1)
        return logits.masked_fill(~rule(logits, probs, min_p), float("-inf"))
    return min_p_filter


def _min_p_in_place(logits, min_p):
    probs = logits.softmax(-1)
    return logits.masked_fill_(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))


MIN_P_WRONG = [
    (_min_p(lambda l, p, m: p >= m), "the threshold scales with the top probability"),
    (_min_p(lambda l, p, m: l >= m * l.amax(-1, keepdim=True)), "you compared logits with min_p"),
    (_min_p(lambda l, p, m: p > m * p.amax(-1, keepdim=True)), "you removed every token"),
    (_min_p_in_place, "changed the logits in place"),
]


# --- repetition_penalty --------------------------------------------------------------------------

def _rep_divide_all(logits, prev_ids, penalty):
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, prev_ids, True)
    return torch.where(seen, logits / penalty, logits)


def _rep_counts(logits, prev_ids, penalty):
    out = logits.clone()
    for r in range(out.shape[0]):
        for t in prev_ids[r].tolist():
            out[r, t] = out[r, t] / penalty if out[r, t] > 0 else out[r, t] * penalty
    return out


def _rep_all_rows(logits, prev_ids, penalty):
    seen = torch.zeros(logits.shape[-1], dtype=torch.bool)
    seen[prev_ids.flatten()] = True
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def _rep_in_place(logits, prev_ids, penalty):
    """Right values, but written into the caller's logits."""
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, prev_ids, True)
    logits[seen] = torch.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
    return logits


REP_WRONG = [
    (_rep_divide_all, "Dividing a negative logit by the penalty makes it *larger*"),
    (_rep_counts, "the penalty applies once per distinct token"),
    (_rep_all_rows, "penalize each row by its own tokens"),
    (_rep_in_place, "changed the logits in place"),
]


EXERCISES = {
    "greedy_decode": Exercise(check=checks.check_greedy_decode, solution=decoding.greedy_decode,
                              wrong=GREEDY_WRONG),
    "top_k_filter": Exercise(check=checks.check_top_k_filter, solution=decoding.top_k_filter,
                             wrong=TOP_K_WRONG),
    "top_p_filter": Exercise(check=checks.check_top_p_filter, solution=decoding.top_p_filter,
                             wrong=TOP_P_WRONG),
    "beam_search": Exercise(check=checks.check_beam_search, solution=decoding.beam_search,
                            wrong=BEAM_WRONG),
    "min_p_filter": Exercise(check=checks.check_min_p_filter, solution=decoding.min_p_filter,
                             wrong=MIN_P_WRONG),
    "repetition_penalty": Exercise(check=checks.check_repetition_penalty,
                                   solution=decoding.repetition_penalty, wrong=REP_WRONG),
}
