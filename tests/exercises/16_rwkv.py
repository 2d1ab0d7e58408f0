"""Chapter 16 (RWKV): the exercises, their checks, and plausible wrong answers."""

import torch

from exercises._case import Exercise
from transformer_course import rwkv
from transformer_course.checks import rwkv as checks


# --- wkv_recurrent ---------------------------------------------------------------

def _recurrent(bug):
    def wkv_recurrent(w, u, k, v):
        n, t, c = k.shape
        a, b = k.new_zeros(n, c), k.new_zeros(n, c)
        p = k.new_full((n, c), float("-inf"))
        sign = -1.0 if bug == "decay_sign" else 1.0
        bonus_past = u if bug == "bonus_past" else 0.0
        now = {"no_bonus": 0.0, "decay_current": u - w}.get(bug, u)
        out = []
        for s in range(t):
            kt, vt = k[:, s], v[:, s]
            if bug == "no_stab":                     # the formula as written: e^k
                out.append((a + torch.exp(now + kt) * vt) / (b + torch.exp(now + kt)))
                a = torch.exp(-sign * w) * a + torch.exp(kt) * vt
                b = torch.exp(-sign * w) * b + torch.exp(kt)
                continue
            q = torch.maximum(p, now + kt)
            e1, e2 = torch.exp(p - q), torch.exp(now + kt - q)
            num = e1 * a + e2 * vt
            out.append(num if bug == "no_norm" else num / (e1 * b + e2))
            q = torch.maximum(p - sign * w, bonus_past + kt)
            e1, e2 = torch.exp(p - sign * w - q), torch.exp(bonus_past + kt - q)
            a, b = e1 * a + e2 * vt, e1 * b + e2
            p = {"max_not_carried": kt,
                 "max_largest_key": torch.maximum(p, kt)}.get(bug, q)  # "largest key seen"
        return torch.stack(out, dim=1)

    return wkv_recurrent


# --- wkv_parallel ----------------------------------------------------------------

def _parallel(bug):
    def wkv_parallel(w, u, k, v):
        t = k.shape[1]
        i = torch.arange(t)
        lag = (i[:, None] - 1 - i[None, :]).to(k.dtype)[None, :, :, None]
        sign = -1.0 if bug == "decay_sign" else 1.0
        past = k[:, None] - sign * lag * w + (u if bug == "bonus_past" else 0.0)
        hidden = i[None, :] > i[:, None] if bug == "current_in_decayed" else (
            i[None, :] >= i[:, None])
        past = past.masked_fill(hidden[None, :, :, None], float("-inf"))
        now = (k if bug == "no_bonus" else u + k)[:, :, None]
        e = torch.cat([past, now], dim=2)
        if bug != "no_stab":
            e = e - e.amax(dim=2, keepdim=True)
        e = e.exp()
        values = torch.cat([v[:, None].expand(-1, t, -1, -1), v[:, :, None]], dim=2)
        num = (e * values).sum(2)
        return num if bug == "no_norm" else num / e.sum(2)

    return wkv_parallel


def parallel_in_float32(w, u, k, v):
    return rwkv.wkv_parallel(w.float(), u.float(), k.float(), v.float())


def recurrent_flat(w, u, k, v):
    return rwkv.wkv_recurrent(w, u, k, v).reshape(k.shape[0], -1)


EXERCISES = {
    "wkv_recurrent": Exercise(
        check=checks.check_wkv_recurrent,
        solution=rwkv.wkv_recurrent,
        wrong=[
            (_recurrent("no_stab"), "Subtract the running maximum"),
            (_recurrent("bonus_past"), "or with u on every token"),
            (_recurrent("no_bonus"), "without the bonus"),
            (_recurrent("decay_current"), "current token decayed too"),
            (_recurrent("decay_sign"), "decay's sign flipped"),
            (_recurrent("max_not_carried"), "running maximum p is reset"),
            (_recurrent("max_largest_key"), "p becomes the largest key seen so far"),
            (_recurrent("no_norm"), "numerator alone"),
            (recurrent_flat, "expected [2, 7, 5] = [B, N, C]"),
        ],
    ),
    "wkv_parallel": Exercise(
        check=checks.check_wkv_parallel,
        solution=rwkv.wkv_parallel,
        wrong=[
            (_parallel("no_stab"), "Subtract the running maximum"),
            (_parallel("current_in_decayed"), "counts the current token twice"),
            (_parallel("bonus_past"), "or with u on every token"),
            (_parallel("no_bonus"), "without the bonus"),
            (_parallel("decay_sign"), "decay's sign flipped"),
            (_parallel("no_norm"), "numerator alone"),
            (parallel_in_float32, "expected the inputs' dtype torch.float64"),
        ],
    ),
}
