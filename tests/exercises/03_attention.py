"""Chapter 03 (attention): the exercises, their checks, and plausible wrong answers."""

import math

import torch

from exercises._case import Exercise
from transformer_course import attention
from transformer_course.checks import attention as checks


# --- scaled_dot_product_attention --------------------------------------------------------------

def _sdpa(scale, dim=-1, mask_mode="before"):
    """An attention with one mistake: a wrong scale, a wrong softmax dim, a wrong way to mask."""

    def scaled_dot_product_attention(q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1) / scale(q, k, v)
        if mask is not None and mask_mode == "before":
            scores = scores.masked_fill(~mask, float("-inf"))
        elif mask is not None and mask_mode == "inverted":
            scores = scores.masked_fill(mask, float("-inf"))
        elif mask is not None and mask_mode == "finite":      # a small penalty: leaks
            scores = scores.masked_fill(~mask, -1.0)
        elif mask is not None and mask_mode == "additive":    # adds the bool mask as if it were a bias
            scores = scores + mask
        weights = torch.softmax(scores, dim=dim)
        if mask is not None and mask_mode == "after":         # zeroes the weights after the softmax
            weights = weights * mask
        return weights @ v

    return scaled_dot_product_attention


def _sqrt_dk(q, k, v):
    return math.sqrt(q.shape[-1])


def _inplace_scale(q, k, v, mask=None):
    q /= math.sqrt(q.shape[-1])
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1) @ v


def _index_assign_mask(q, k, v, mask=None):
    """Masks by boolean indexing, which needs a mask of the scores' full shape: no broadcasting."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores[~mask] = float("-inf")
    return torch.softmax(scores, -1) @ v


def _returns_weights(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, -1)


def _sdpa_in_float32(q, k, v, mask=None):
    """Right values, but computed and returned in float32 whatever the inputs' dtype."""
    return _sdpa(_sqrt_dk)(q.float(), k.float(), v.float(), mask)


def _weights_in_float32(q, k, mask=None):
    return _weights(lambda q: math.sqrt(q.shape[-1]))(q.float(), k.float(), mask)


SDPA_WRONG = [
    (_sdpa(lambda q, k, v: 1.0), "you did not scale the scores"),
    (_sdpa(lambda q, k, v: q.shape[-1]), "you scaled by d_k = 16 instead of sqrt(d_k)"),
    (_sdpa(lambda q, k, v: math.sqrt(v.shape[-1])), "you scaled by sqrt(d_v) = sqrt(9)"),
    # the number of keys: equal to d_v when v = identity, so the probe pads v with zero columns
    (_sdpa(lambda q, k, v: math.sqrt(k.shape[-2])), "you scaled by sqrt(n_k) = sqrt(6)"),
    (_sdpa(lambda q, k, v: math.sqrt(q.shape[-2])), "you scaled by sqrt(n_q) = sqrt(5)"),
    (_sdpa(lambda q, k, v: q.shape[-1] ** 0.25), "you scaled by d_k ** 0.25 = 2.00"),
    (_sdpa(lambda q, k, v: math.sqrt(8 * q.shape[-1])), "expected sqrt(d_k) = sqrt(16) = 4"),  # sqrt(d_model)
    (_sdpa(_sqrt_dk, dim=-2), "rows of your attention weights sum to"),
    (_sdpa(_sqrt_dk, mask_mode="after"), "set masked scores to -inf before the softmax"),
    (_sdpa(_sqrt_dk, mask_mode="inverted"), "your mask is inverted: True means *may attend*"),
    (_sdpa(_sqrt_dk, mask_mode="finite"), "a masked key got weight"),
    (_sdpa(_sqrt_dk, mask_mode="additive"), "a masked key got weight"),
    (_inplace_scale, "changed its input q in place"),
    (_index_assign_mask, "mask=tensor of shape [7, 4] (bool)) raised"),
    (_returns_weights, "has shape [2, 3, 5], expected [2, 3, 6]"),
    (_sdpa_in_float32, "returned torch.float32: keep the inputs' dtype torch.float64"),
]


# --- causal_mask -------------------------------------------------------------------------------

def _causal(make):
    def causal_mask(n):
        return make(n)
    return causal_mask


CAUSAL_WRONG = [
    (_causal(lambda n: torch.ones(n, n, dtype=torch.bool).triu()), "lets query 0 see key 1 (the future)"),
    (_causal(lambda n: ~torch.ones(n, n, dtype=torch.bool).tril()), "your mask is inverted"),
    (_causal(lambda n: torch.ones(n, n).tril()), "dtype should be torch.bool"),
    (_causal(lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1)), "your mask hides the diagonal"),
    (_causal(lambda n: torch.ones(n, n + 1, dtype=torch.bool).tril()), "has shape [5, 6], expected [5, 5]"),
]


# --- padding_mask ------------------------------------------------------------------------------

def _padding(make):
    def padding_mask(lengths, n):
        lengths = torch.as_tensor(lengths)
        return make(torch.arange(n), lengths[:, None])
    return padding_mask


PADDING_WRONG = [
    (_padding(lambda pos, L: pos >= L), "your mask is inverted"),
    (_padding(lambda pos, L: pos <= L), "off by one: a sequence of length 3"),
    (_padding(lambda pos, L: pos < L - 1), "off by one: position 2, the last real token"),
    (_padding(lambda pos, L: (pos < L).long()), "dtype should be torch.bool"),
    (_padding(lambda pos, L: (pos < L).T), "expected [3, 5]"),
]


# --- attention_weights -------------------------------------------------------------------------

def _weights(scale, dim=-1, masked="before"):
    def attention_weights(q, k, mask=None):
        scores = q @ k.transpose(-2, -1) / scale(q)
        if mask is not None and masked == "before":
            scores = scores.masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, dim=dim)
        if mask is not None and masked == "after":
            w = w.masked_fill(~mask, 0.0)
        return w
    return attention_weights


def _weights_nk(q, k, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-2])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def _weights_inplace(q, k, mask=None):
    q /= math.sqrt(q.shape[-1])
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


WEIGHTS_WRONG = [
    (_weights(lambda q: 1.0), "you did not scale the scores"),
    (_weights(lambda q: q.shape[-1] ** 0.25), "you scaled by d_k ** 0.25 = 2.00"),
    (_weights(lambda q: math.sqrt(q.shape[-2])), "you scaled by sqrt(n_q) = sqrt(5)"),
    (_weights_nk, "you scaled by sqrt(n_k) = sqrt(6), the number of keys"),
    (_weights_inplace, "changed its input q in place"),
    (_weights_in_float32, "returned torch.float32: keep the inputs' dtype torch.float64"),
    (_weights(lambda q: math.sqrt(q.shape[-1]), dim=-2), "*columns* sum to 1: the softmax ran over the queries"),
    (_weights(lambda q: math.sqrt(q.shape[-1]), masked="after"), "zeroed after the softmax"),
    (_weights(lambda q: math.sqrt(q.shape[-1]), masked="never"), "a masked key got weight"),
]


# --- sliding_window_mask -----------------------------------------------------------------------

def _window(make):
    def sliding_window_mask(n, window):
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        return make(i, j, window)
    return sliding_window_mask


WINDOW_WRONG = [
    (_window(lambda i, j, w: (j <= i) & (i - j <= w)), "query 3 sees key 0, 3 positions back"),
    (_window(lambda i, j, w: (i - j).abs() < w), "lets query 0 see key 1 (the future)"),
    (_window(lambda i, j, w: (j <= i) & (i - j < w - 1)), "query 2 should see key 0, 2 positions back"),
    (_window(lambda i, j, w: (j < i) & (i - j <= w)), "your mask hides the diagonal"),
]


EXERCISES = {
    "scaled_dot_product_attention": Exercise(
        check=checks.check_scaled_dot_product_attention,
        solution=attention.scaled_dot_product_attention,
        wrong=SDPA_WRONG,
    ),
    "causal_mask": Exercise(
        check=checks.check_causal_mask,
        solution=attention.causal_mask,
        wrong=CAUSAL_WRONG,
    ),
    "padding_mask": Exercise(
        check=checks.check_padding_mask,
        solution=attention.padding_mask,
        wrong=PADDING_WRONG,
    ),
    "attention_weights": Exercise(
        check=checks.check_attention_weights,
        solution=attention.attention_weights,
        wrong=WEIGHTS_WRONG,
    ),
    "sliding_window_mask": Exercise(
        check=checks.check_sliding_window_mask,
        solution=attention.sliding_window_mask,
        wrong=WINDOW_WRONG,
    ),
}
