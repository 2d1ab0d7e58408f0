"""Chapter 13 (speculative sampling): the exercises, their checks, and plausible wrong answers."""

import torch

from exercises._case import Exercise
from transformer_course import speculative
from transformer_course.checks import speculative as checks


# --- verify_draft -----------------------------------------------------------------------------------

def _verify(ratio="p/q", residual="max(0,p-q)", bonus="p[gamma]", rng="generator"):
    """A verification step with one mistake (rng="one uniform": one r for every draft)."""

    def verify_draft(draft_tokens, q_probs, p_probs, generator=None):
        gen = None if rng == "global" else generator
        gamma = len(draft_tokens)
        shared = torch.rand((), generator=gen)
        for i in range(gamma):
            x = draft_tokens[i]
            r = shared if rng == "one uniform" else torch.rand((), generator=gen)
            p, q = p_probs[i, x], q_probs[i, x]
            keep = r * q < p if ratio == "p/q" else r * p < q
            if keep:
                continue
            if residual == "p":
                res = p_probs[i]
            elif residual == "p[i+1]":
                res = (p_probs[i + 1] - q_probs[i]).clamp(min=0)
            else:
                res = (p_probs[i] - q_probs[i]).clamp(min=0)
            y = torch.multinomial(res / res.sum(), 1, generator=gen)
            return torch.cat([draft_tokens[:i], y])
        if bonus == "none":
            return draft_tokens.clone()
        row = p_probs[gamma] if bonus == "p[gamma]" else p_probs[gamma - 1]
        return torch.cat([draft_tokens, torch.multinomial(row, 1, generator=gen)])

    return verify_draft


def _verify_always_accept(draft_tokens, q_probs, p_probs, generator=None):
    """Trusts the draft: keeps every token, then the bonus."""
    bonus = torch.multinomial(p_probs[-1], 1, generator=generator)
    return torch.cat([draft_tokens, bonus])


# --- speculative_generate ---------------------------------------------------------------------------

def _generate(q_warp="same", target_warp=True, bonus=True, final="trim", pick="target",
              drafts="needed", stats_kind="right"):
    """A speculative decoder with one mistake (final="keep": drafts gamma tokens every round and
    returns the excess of the last one; drafts="missing": drafts min(gamma, missing), one more than needed in the last round;
    stats_kind="none" | "bonus" | "replace": never updates stats, counts the bonus or replacement
    token as accepted, sets stats instead of adding to it)."""

    def speculative_generate(target, draft, prompt_ids, max_new_tokens, gamma=4, temperature=1.0,
                             generator=None, top_k=None, top_p=None, stats=None):
        def probs(logits, warp=True):
            if temperature == 0:
                return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
            if not warp:
                return logits.float().softmax(-1)
            return speculative.sampling_probs(logits, temperature, top_k, top_p)

        ids, goal = prompt_ids, prompt_ids.shape[1] + max_new_tokens
        counts = dict(target_calls=0, drafted=0, accepted=0, rejected=0)
        while ids.shape[1] < goal:
            k = min(gamma, goal - ids.shape[1] - (drafts == "needed"))
            if final == "keep":
                k = gamma
            seq, q = ids, []
            for _ in range(k):
                logits = draft(seq)[0, -1]
                sampled = probs(logits)
                q.append(sampled if q_warp == "same" else probs(logits, warp=False))
                x = torch.multinomial(sampled, 1, generator=generator)
                seq = torch.cat([seq, x[None]], dim=1)
            p = probs(target(seq)[0, -(k + 1):], warp=target_warp)
            q = torch.stack(q) if q else p.new_zeros(0, p.shape[-1])
            if pick == "draft":                    # keeps the draft's tokens, samples one more
                new = torch.cat([seq[0, ids.shape[1]:],
                                 torch.multinomial(p[-1], 1, generator=generator)])
            else:
                new = speculative.verify_draft(seq[0, ids.shape[1]:], q, p, generator)
            if not bonus and len(new) == k + 1:
                new = new[:-1]
            ids = torch.cat([ids, new[None]], dim=1)
            counts["target_calls"] += 1
            counts["drafted"] += k
            counts["accepted"] += len(new) - (stats_kind != "bonus")
            counts["rejected"] += int(len(new) <= k)
        if stats is not None and stats_kind != "none":
            for key, n in counts.items():
                stats[key] = n if stats_kind == "replace" else stats.get(key, 0) + n
        return ids if final == "keep" else ids[:, :goal]

    return speculative_generate


# --- acceptance_rate and expected_tokens -----------------------------------------------------------

def _expected(kind):
    def expected_tokens(alpha, gamma):
        if kind == "exponent":
            return (1 - alpha ** gamma) / (1 - alpha) if alpha != 1 else float(gamma)
        if kind == "no-limit":
            return (1 - alpha ** (gamma + 1)) / (1 - alpha)
        return gamma * alpha + 1

    return expected_tokens


EXERCISES = {
    "verify_draft": Exercise(checks.check_verify_draft, speculative.verify_draft, [
        (_verify(residual="p"), "the replacement must be drawn from max(0, p_"),
        (_verify(ratio="q/p"), "Is the ratio upside down (q/p)?"),
        (_verify(bonus="none"), "one more token, the bonus, is drawn from p_probs[gamma]"),
        (_verify(bonus="p[gamma-1]"), "the bonus token must be drawn from p_probs[gamma]"),
        (_verify(residual="p[i+1]"), "the replacement must be drawn from max(0, p_"),
        (_verify(rng="global"), "draw every random number from `generator`"),
        (_verify_always_accept, "so it can never be accepted"),
        (_verify(rng="one uniform"), "Draw a new uniform r for each draft"),
    ]),
    "speculative_generate": Exercise(checks.check_speculative_generate,
                                     speculative.speculative_generate, [
        (_generate(q_warp="unwarped"), "put into the ratio exactly the q each draft token was drawn from"),
        (_generate(target_warp=False), "They follow the target at temperature 1 with no top-k/top-p"),
        (_generate(bonus=False), "does every round of your loop add at least one token"),
        (_generate(final="keep"), "Never draft more tokens than are still needed"),
        (_generate(pick="draft"), "That is the draft's greedy choice"),
        (_generate(drafts="missing"), "Never draft more tokens than are still needed"),
        (_generate(stats_kind="none"), "did not update `stats`"),
        (_generate(stats_kind="bonus"), "stats['accepted'] grew by"),
        (_generate(stats_kind="replace"), "add to it"),
    ]),
    "acceptance_rate": Exercise(checks.check_acceptance_rate, speculative.acceptance_rate, [
        (lambda p, q: (p * q).sum(-1), "min(p(x), q(x))"),
        (lambda p, q: torch.minimum(p, q).mean(-1), "min(p(x), q(x))"),
        (lambda p, q: torch.minimum(p, q).sum(0), "has shape"),
    ]),
    "expected_tokens": Exercise(checks.check_expected_tokens, speculative.expected_tokens, [
        (_expected("exponent"), "(1 - alpha^(gamma + 1)) / (1 - alpha)"),
        (_expected("no-limit"), "With alpha = 1 every draft is accepted"),
        (_expected("linear"), "expected"),
    ]),
}
