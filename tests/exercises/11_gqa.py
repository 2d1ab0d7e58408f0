"""Chapter 11 (GQA and MQA): the exercises, their checks, and plausible wrong answers."""

import math

import torch

from exercises._case import Exercise
from transformer_course import gqa
from transformer_course.checks import gqa as checks


# --- repeat_kv ---------------------------------------------------------------------------------

def _repeat(make):
    def repeat_kv(x, n_rep):
        return make(x, n_rep)
    return repeat_kv


def _expand_tile(x, n_rep):
    B, G, N, d = x.shape
    return x[:, None].expand(B, n_rep, G, N, d).reshape(B, n_rep * G, N, d)


REPEAT_WRONG = [
    (_repeat(lambda x, r: x.repeat(1, r, 1, 1)), "tile order"),
    (_repeat(_expand_tile), "tile order"),
    (_repeat(lambda x, r: x.repeat_interleave(r, dim=2)), "along dimension 2 (the positions)"),
    (_repeat(lambda x, r: x.repeat_interleave(r, dim=-1)), "along dimension 3 (the features)"),
    (_repeat(lambda x, r: x[:, :, None].expand(-1, -1, r, -1, -1)), "merge G and n_rep"),
    (_repeat(lambda x, r: x.repeat_interleave(r, dim=1).float()), "expected torch.float64"),
]


# --- grouped_query_attention -------------------------------------------------------------------

def _gqa(order="interleave", n_rep=lambda H, G: H // G, scale=lambda q, k, H: math.sqrt(q.shape[-1]),
         mask_mode="before", dim=1, cast=False):
    """A grouped-query attention with one mistake."""

    def grouped_query_attention(q, k, v, mask=None):
        H, G = q.shape[1], k.shape[1]
        r = n_rep(H, G)
        if order == "interleave":
            k, v = k.repeat_interleave(r, dim=dim), v.repeat_interleave(r, dim=dim)
        else:
            k, v = k.repeat(1, r, 1, 1), v.repeat(1, r, 1, 1)
        scores = q @ k.transpose(-2, -1) / scale(q, k, H)
        if mask is not None and mask_mode == "before":
            scores = scores.masked_fill(~mask, float("-inf"))
        if mask is not None and mask_mode == "inverted":
            scores = scores.masked_fill(mask, float("-inf"))
        w = scores.softmax(-1)
        if mask is not None and mask_mode == "after":
            w = w * mask
        out = w @ v
        return out.float() if cast else out

    return grouped_query_attention


GQA_WRONG = [
    (_gqa(order="tile"), "tile order"),
    (_gqa(n_rep=lambda H, G: G // H), "n_rep = H // G = 3"),
    (_gqa(n_rep=lambda H, G: G / H), "n_rep = H // G = 3"),
    (_gqa(dim=2), "expand k and v along dimension 1"),
    (_gqa(mask_mode="ignored"), "ignores the mask"),
    (_gqa(mask_mode="after"), "after the softmax"),
    (_gqa(mask_mode="inverted"), "your mask is inverted: True means *may attend*"),
    (_gqa(scale=lambda q, k, H: math.sqrt(H * q.shape[-1])), "sqrt(H * d) = sqrt(48)"),
    (_gqa(scale=lambda q, k, H: math.sqrt(k.shape[-2])), "sqrt(N_k) = sqrt(7)"),
    (_gqa(scale=lambda q, k, H: 1.0), "1 (no scaling)"),
    (_gqa(cast=True), "expected torch.float64"),
]


# --- mean_pool_kv_heads ------------------------------------------------------------------------

def _pool(make):
    def mean_pool_kv_heads(w, n_heads, n_kv_heads):
        d = w.shape[0] // n_heads
        return make(w, n_heads, n_kv_heads, d)
    return mean_pool_kv_heads


POOL_WRONG = [
    (_pool(lambda w, H, G, d: w.reshape(H // G, G, d, -1).mean(0).reshape(G * d, -1)), "strided"),
    (_pool(lambda w, H, G, d: w.reshape(G, H // G, d, -1).sum(1).reshape(G * d, -1)), "summed"),
    (_pool(lambda w, H, G, d: w.reshape(G * d, H // G, -1).mean(1)), "consecutive *rows*"),
    (_pool(lambda w, H, G, d: w.reshape(G, H // G, d, -1).mean(1)), "expected [G * d_head, D]"),
    (_pool(lambda w, H, G, d: w.reshape(G, H // G, d, -1).float().mean(1).reshape(G * d, -1)),
     "expected torch.float64"),
]


# --- mla_cache_bytes ---------------------------------------------------------------------------

def _mla(make):
    def mla_cache_bytes(n_layers, d_latent, d_rope, seq_len, batch, bytes_per_element):
        return make(n_layers, d_latent, d_rope, seq_len, batch, bytes_per_element)
    return mla_cache_bytes


MLA_WRONG = [
    (_mla(lambda L, r, dr, N, B, nb: 2 * L * (r + dr) * N * B * nb), "no factor 2"),
    (_mla(lambda L, r, dr, N, B, nb: L * r * N * B * nb), "left out the decoupled RoPE key"),
    (_mla(lambda L, r, dr, N, B, nb: L * (r + dr) * N * B * nb / 1), "expected an int"),
    (_mla(lambda L, r, dr, N, B, nb: L * (r + 2 * dr) * N * B * nb), "expected n_layers * (d_latent"),
]


EXERCISES = {
    "repeat_kv": Exercise(check=checks.check_repeat_kv, solution=gqa.repeat_kv, wrong=REPEAT_WRONG),
    "grouped_query_attention": Exercise(
        check=checks.check_grouped_query_attention,
        solution=gqa.grouped_query_attention,
        wrong=GQA_WRONG,
    ),
    "mean_pool_kv_heads": Exercise(
        check=checks.check_mean_pool_kv_heads,
        solution=gqa.mean_pool_kv_heads,
        wrong=POOL_WRONG,
    ),
    "mla_cache_bytes": Exercise(
        check=checks.check_mla_cache_bytes, solution=gqa.mla_cache_bytes, wrong=MLA_WRONG,
    ),
}
