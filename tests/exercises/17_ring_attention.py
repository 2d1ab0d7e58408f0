"""Chapter 17 (ring attention): the exercises, their checks, and plausible wrong answers."""

import torch

from exercises._case import Exercise
from transformer_course import ring
from transformer_course.checks import ring as checks

INF = float("inf")


# --- merge_partial_attention ---------------------------------------------------------------------

def merge_base2(o1, lse1, o2, lse2):
    lse = torch.logaddexp2(lse1, lse2)  # treats natural-log lse as base 2
    safe = lse.masked_fill(lse == -INF, 0.0)
    return (torch.exp2(lse1 - safe)[..., None] * o1 + torch.exp2(lse2 - safe)[..., None] * o2,
            lse)


def merge_average(o1, lse1, o2, lse2):
    return (o1 + o2) / 2, torch.logaddexp(lse1, lse2)


def merge_lse_max(o1, lse1, o2, lse2):
    o, _ = ring.merge_partial_attention(o1, lse1, o2, lse2)
    return o, torch.maximum(lse1, lse2)


def merge_overflowing(o1, lse1, o2, lse2):
    e1, e2 = torch.exp(lse1), torch.exp(lse2)
    o = (e1[..., None] * o1 + e2[..., None] * o2) / (e1 + e2).clamp_min(1e-30)[..., None]
    return o, torch.log(e1 + e2)


def merge_nan_when_empty(o1, lse1, o2, lse2):
    lse = torch.logaddexp(lse1, lse2)
    return torch.exp(lse1 - lse)[..., None] * o1 + torch.exp(lse2 - lse)[..., None] * o2, lse


# --- ring_attention: one mistake each ------------------------------------------------------------

def _ring(bug):
    def ring_attention(q, k, v, causal=False, group=None, layout="contiguous"):
        rank, size, n = ring.ring_rank(group), ring.ring_size(group), q.shape[-2]
        q_pos = ring.block_positions(rank, size, n, layout)
        o = torch.zeros_like(q)
        lse = torch.full(q.shape[:-1], -INF, dtype=q.dtype)
        kv = torch.stack([k, v])
        for step in range(size):
            last = step == size - 1 and bug != "extra_shift"  # extra: shift every step
            pending = None if last else ring.ring_shift(kv, group)
            src = (rank + step) % size if bug == "reversed" else (rank - step) % size
            if bug == "off_by_one":
                src = (rank - step - 1) % size
            k_pos = ring.block_positions(src, size, n, layout)
            if bug == "skip_diagonal":
                skip = causal and src >= rank
            else:
                skip = causal and not bool((k_pos.min() <= q_pos).any())
            if not skip:
                keys_at = q_pos if bug == "q_pos_for_keys" else k_pos
                o_b, lse_b = ring.block_attention(q, kv[0], kv[1], q_pos, keys_at, causal)
                if bug == "no_rescale":  # new block weighted, the running o not rescaled
                    new = torch.logaddexp(lse, lse_b)
                    safe = new.masked_fill(new == -INF, 0.0)
                    o, lse = o + torch.exp(lse_b - safe)[..., None] * o_b, new
                else:
                    o, lse = ring.merge_partial_attention(o, lse, o_b, lse_b)
            if pending is not None:
                kv = pending.wait()
        return o, lse

    return ring_attention


def ring_ignores_causal(q, k, v, causal=False, group=None, layout="contiguous"):
    return ring.ring_attention(q, k, v, False, group, layout)


EXERCISES = {
    "merge_partial_attention": Exercise(
        check=checks.check_merge_partial_attention,
        solution=ring.merge_partial_attention,
        wrong=[
            (merge_base2, "your lse is in base 2"),
            (merge_average, "plain average of o1 and o2"),
            (merge_lse_max, "max(lse1, lse2)"),
            (merge_overflowing, "exp(lse) overflows float32"),
            (merge_nan_when_empty, "saw no key in either part"),
        ],
    ),
    "ring_attention": Exercise(
        check=checks.check_ring_attention,
        solution=ring.ring_attention,
        wrong=[
            (_ring("skip_diagonal"), "skip their own (diagonal) block"),
            (_ring("reversed"), "blocks move to rank + 1"),
            (_ring("off_by_one"), "off by one in the rotation"),
            (_ring("no_rescale"), "missing rescale"),
            (ring_ignores_causal, "ignores the causal mask"),
            (_ring("extra_shift"), "not at the last step"),
            (_ring("q_pos_for_keys"), "the queries' positions q_pos for the keys"),
        ],
    ),
}


# --- ring_attention_rope -------------------------------------------------------------------------

def _rope(bug):
    from transformer_course.positions import apply_rope

    def ring_attention_rope(q, k, v, causal=False, group=None, layout="contiguous"):
        rank, size, n = ring.ring_rank(group), ring.ring_size(group), q.shape[-2]
        pos = torch.arange(n) if bug == "local" else ring.block_positions(rank, size, n, layout)
        if bug == "none":
            return ring.ring_attention(q, k, v, causal, group, layout)
        k_r = k if bug == "q_only" else apply_rope(k, pos)
        return ring.ring_attention(apply_rope(q, pos), k_r, v, causal, group, layout)

    return ring_attention_rope


def _rope_solution(q, k, v, causal=False, group=None, layout="contiguous"):
    return _rope("right")(q, k, v, causal, group, layout)


EXERCISES["ring_attention_rope"] = Exercise(
    check=checks.check_ring_attention_rope,
    solution=_rope_solution,
    wrong=[
        (_rope("local"), "as if it started at position 0"),
        (_rope("none"), "without any rotation"),
        (_rope("q_only"), "only q was rotated"),
    ],
)
