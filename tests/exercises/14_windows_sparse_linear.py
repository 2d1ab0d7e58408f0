"""Chapter 14 (windows, sparsity, linear attention): the exercises, their checks, and
plausible wrong answers."""

import torch
import torch.nn.functional as F

from exercises._case import Exercise
from transformer_course import long_attention as la
from transformer_course.checks import long_attention as checks


def phi(x):
    return F.elu(x) + 1


# --- linear_attention -----------------------------------------------------------------------

def _parallel(bug):
    def linear_attention(q, k, v, causal=True):
        fq = phi(q)
        fk = k if bug == "no_phi_k" else phi(k)
        if bug == "phi_v":
            v = phi(v)
        a = fq @ fk.transpose(-2, -1)
        if causal and bug != "noncausal":
            a = a.tril()
        if bug == "causal_always":
            a = a.tril()
        if bug == "no_norm":
            return a @ v
        if bug == "norm_all_keys":
            return (a @ v) / (fq @ fk.transpose(-2, -1)).sum(-1, keepdim=True)
        if bug == "norm_columns":
            return (a @ v) / a.sum(-2)[..., None]
        return (a @ v) / a.sum(-1, keepdim=True)

    return linear_attention


def softmax_instead(q, k, v, causal=True):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def normalizer_with_eps(q, k, v, causal=True):
    a = phi(q) @ phi(k).transpose(-2, -1)
    if causal:
        a = a.tril()
    return (a @ v) / (a.sum(-1, keepdim=True) + 1e-6)


def float32_inside(q, k, v, causal=True):
    return la.linear_attention(q.float(), k.float(), v.float(), causal).to(q.dtype)


# --- linear_attention_recurrent -----------------------------------------------------------

def _recurrent(bug):
    def linear_attention_recurrent(q, k, v, state=None):
        d_k, d_v = q.shape[-1], v.shape[-1]
        if state is None or bug == "ignore_state":
            S = q.new_zeros(*q.shape[:-2], d_k, d_v)
            z = q.new_zeros(*q.shape[:-2], d_k)
        else:
            S, z = state
        fq, fk = phi(q), phi(k)
        out = []
        for i in range(q.shape[-2]):
            if bug == "in_place":
                S += fk[..., i, :, None] * v[..., i, None, :]
                z += fk[..., i, :]
            else:
                S = S + fk[..., i, :, None] * v[..., i, None, :]
                z = z + fk[..., i, :]
            num = (fq[..., i, None, :] @ S).squeeze(-2)
            den = 1.0 if bug == "no_norm" else (fq[..., i, :] * z).sum(-1, keepdim=True)
            out.append(num / den)
        out = torch.stack(out, dim=-2)
        if bug == "no_state":
            return out, None
        if bug == "transposed":
            return out, (S.transpose(-2, -1), z)
        return out, (S, z)

    return linear_attention_recurrent


def recurrent_state_of_piece(q, k, v, state=None):
    """Uses the state passed in, but returns the sums of this call's positions only."""
    out, _ = la.linear_attention_recurrent(q, k, v, state)
    return out, la.linear_attention_recurrent(q, k, v)[1]


def recurrent_without_state(q, k, v, state=None):
    return la.linear_attention_recurrent(q, k, v, state)[0]


# --- linear_attention_chunked -------------------------------------------------------------

def _chunked(bug):
    def linear_attention_chunked(q, k, v, chunk=64):
        fq, fk = phi(q), phi(k)
        if bug == "phi_v":
            v = phi(v)
        S = q.new_zeros(*q.shape[:-2], q.shape[-1], v.shape[-1])
        z = q.new_zeros(*q.shape[:-2], q.shape[-1], 1)
        out = []
        for c0 in range(0, q.shape[-2], chunk):
            qc, kc, vc = (t[..., c0:c0 + chunk, :] for t in (fq, fk, v))
            a = qc @ kc.transpose(-2, -1)
            if bug != "intra_full":
                a = a.tril(-1 if bug == "strict" else 0)     # strict: diagonal dropped
            if bug == "intra_none":
                a = torch.zeros_like(a)
            if bug == "double":
                S, z = S + kc.transpose(-2, -1) @ vc, z + kc.sum(-2)[..., None]
            out.append((qc @ S + a @ vc) / (qc @ z + a.sum(-1, keepdim=True)))
            if bug in ("double", "no_carry"):
                continue
            S, z = S + kc.transpose(-2, -1) @ vc, z + kc.sum(-2)[..., None]
        return torch.cat(out, -2)

    return linear_attention_chunked


# --- block_sparse_mask ----------------------------------------------------------------------

def _mask(bug):
    def block_sparse_mask(n, block, pattern, window=3, seed=0):
        n_blocks = -(-n // block)
        if bug == "floor_blocks":
            n_blocks = max(1, n // block)
        r = torch.arange(n_blocks)[:, None]
        c = torch.arange(n_blocks)[None, :]
        back = r - c
        w = window + 1 if bug == "window_inclusive" else window
        keep = (back >= 0) & (back < w)
        if pattern == "strided":
            keep |= (back >= 0) & (back % window == 0)
        if pattern == "bigbird":
            keep |= (back >= 0) & (c == 0)
            g = torch.Generator().manual_seed(seed)
            if bug == "global_rng":
                g = None
            for row in range(n_blocks):
                left = torch.nonzero((back[row] >= 0) & ~keep[row]).flatten()
                how_many = 1 if bug == "one_random" else 2
                pick = left[torch.randperm(len(left), generator=g)[:how_many]]
                keep[row, pick] = True
        t = torch.arange(n) // block
        if bug == "modulo":
            t = torch.arange(n) % n_blocks
        if bug == "floor_blocks":
            t = t.clamp(max=n_blocks - 1)
        mask = keep[t[:, None], t[None, :]]
        if bug == "diag_not_causal":
            return mask
        return mask & torch.ones(n, n, dtype=torch.bool).tril()

    return block_sparse_mask


def mask_as_float(n, block, pattern, window=3, seed=0):
    return la.block_sparse_mask(n, block, pattern, window, seed).float()


EXERCISES = {
    "linear_attention": Exercise(
        check=checks.check_linear_attention,
        solution=la.linear_attention,
        wrong=[
            (_parallel("phi_v"), "phi applied to v too"),
            (_parallel("no_phi_k"), "without phi on the keys"),
            (_parallel("no_norm"), "the numerator alone"),
            (_parallel("norm_all_keys"), "normalizer sums phi(k_j) over all keys"),
            (_parallel("norm_columns"), "over the queries (dim -2)"),
            (_parallel("noncausal"), "NOT causal"),
            (_parallel("causal_always"), "causal although causal=False"),
            (softmax_instead, "at index"),
            (float32_inside, "not to float64's precision"),
            (normalizer_with_eps, "an eps added to the normalizer"),
        ],
    ),
    "linear_attention_recurrent": Exercise(
        check=checks.check_linear_attention_recurrent,
        solution=la.linear_attention_recurrent,
        wrong=[
            (_recurrent("no_state"), "returned the state None"),
            (_recurrent("ignore_state"), "you ignored the state passed in"),
            (_recurrent("in_place"), "changed the state passed in, in place"),
            (_recurrent("transposed"), "S = sum_j phi(k_j) v_j^T, an outer product"),
            (_recurrent("no_norm"), "the numerator alone"),
            (recurrent_state_of_piece, "covers this call's positions only"),
            (recurrent_without_state, "expected a pair (out, state)"),
        ],
    ),
    "linear_attention_chunked": Exercise(
        check=checks.check_linear_attention_chunked,
        solution=la.linear_attention_chunked,
        wrong=[
            (_chunked("intra_full"), "must be masked causally"),
            (_chunked("intra_none"), "NaN in the first chunk"),
            (_chunked("strict"), "do not see their own key"),
            (_chunked("double"), "counted twice"),
            (_chunked("no_carry"), "do not see the earlier chunks"),
            (_chunked("phi_v"), "phi applied to v too"),
        ],
    ),
    "block_sparse_mask": Exercise(
        check=checks.check_block_sparse_mask,
        solution=la.block_sparse_mask,
        wrong=[
            (_mask("window_inclusive"), "your window spans 4 blocks, expected 3"),
            (_mask("diag_not_causal"), "the diagonal blocks must be causal"),
            (_mask("modulo"), "keep or drop whole blocks"),
            (_mask("floor_blocks"), "the last one shorter"),
            (_mask("one_random"), "random key blocks, expected 2"),
            (_mask("global_rng"), "same seed gave different masks"),
            (mask_as_float, "expected torch.bool"),
        ],
    ),
}
