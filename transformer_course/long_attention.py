"""Generated from solutions/14_windows_sparse_linear.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# Long context: sliding windows, block-sparse masks and linear attention. What later
# chapters use:
#   window_mask(n_q, n_k, window)        the sliding-window mask, bottom-right aligned
#   sliding_window_attention(q, k, v, window, block)   the band only, O(N (W + B))
#   RollingKVCache(window)               a cache of the last W keys and values
#   block_sparse_mask(n, block, pattern) "local", "strided", "bigbird" masks
#   block_layout(mask, block)            which [block, block] tiles a mask keeps
#   block_sparse_attention(q, k, v, layout, block)   only the tiles the layout keeps
#   phi, linear_attention(_recurrent, _chunked)    phi = elu + 1: parallel, recurrent,
#                                                  chunked
import math

import torch
import torch.nn.functional as F

from transformer_course.attention import causal_mask, scaled_dot_product_attention


def window_mask(n_q: int, n_k: int, window: int) -> torch.Tensor:
    """Bool [n_q, n_k]: may new query i see key j? The queries are the last n_q of n_k
    positions (bottom-right): with p = i + n_k - n_q, key j is seen when p - window < j
    <= p. With n_q = n_k it is chapter 03's sliding_window_mask(n, window)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    if not 0 <= n_q <= n_k:
        raise ValueError(f"need 0 <= n_q <= n_k, got n_q={n_q}, n_k={n_k}")
    back = (torch.arange(n_q)[:, None] + n_k - n_q) - torch.arange(n_k)[None, :]
    return (back >= 0) & (back < window)


def sliding_window_attention(q, k, v, window: int, block: int = 64) -> torch.Tensor:
    """Causal attention over the last `window` keys: q, k [..., N, d_k], v [..., N, d_v]
    -> [..., N, d_v], W keys per query (j > i - window).

    Query blocks of `block` rows see only the keys [i0 - window + 1, i1): the scores
    computed are O(N (window + block)), never [N, N]."""
    n = q.shape[-2]
    if k.shape[-2] != n or v.shape[-2] != n:
        raise ValueError(f"self-attention needs as many keys as queries, got q "
                         f"{list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    out = []
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        j0 = max(0, i0 - window + 1)        # the first key the block's queries see
        mask = window_mask(i1 - i0, i1 - j0, window).to(q.device)
        out.append(scaled_dot_product_attention(q[..., i0:i1, :], k[..., j0:i1, :],
                                                v[..., j0:i1, :], mask))
    return torch.cat(out, dim=-2)


class RollingKVCache:
    """Keys and values of the last `window` positions, [B, H, window, d] each.

    update(k, v) takes the new positions' k, v [B, H, N_new, d] and returns
    (k_all, v_all): the last window - 1 + N_new positions (fewer at the start), oldest
    first, which are all the keys the new queries can see; they attend through
    window_mask(N_new, k_all.shape[-2], window). Position p lives in slot p % window;
    len(cache) is the number of positions seen."""

    def __init__(self, window: int):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        self.window, self.seen = window, 0
        self.k = self.v = None                   # [B, H, window, d], allocated once

    def __len__(self) -> int:
        return self.seen

    def cached(self):
        """The cached (k, v), oldest position first: at most `window` of them."""
        n = min(self.seen, self.window)
        order = torch.arange(self.seen - n, self.seen) % self.window
        return self.k[..., order, :], self.v[..., order, :]

    def update(self, k: torch.Tensor, v: torch.Tensor):
        if k.dim() != 4 or v.shape[:3] != k.shape[:3]:
            raise ValueError(f"k, v must be [B, H, N_new, d] with the same "
                             f"[B, H, N_new], got k {list(k.shape)}, v {list(v.shape)}")
        if self.k is None:
            self.k = k.new_zeros(*k.shape[:2], self.window, k.shape[-1])
            self.v = v.new_zeros(*v.shape[:2], self.window, v.shape[-1])
        old_k, old_v = self.cached()
        n_new = k.shape[-2]
        need = self.window - 1 + n_new           # the first new query sees W - 1 back
        k_all = torch.cat([old_k, k], dim=-2)[..., -need:, :]
        v_all = torch.cat([old_v, v], dim=-2)[..., -need:, :]
        keep = min(n_new, self.window)           # only the last `window` are stored
        slots = torch.arange(self.seen + n_new - keep, self.seen + n_new) % self.window
        self.k[..., slots, :] = k[..., n_new - keep:, :]
        self.v[..., slots, :] = v[..., n_new - keep:, :]
        self.seen += n_new
        return k_all, v_all


PATTERNS = ("local", "strided", "bigbird")


def block_sparse_mask(n: int, block: int, pattern: str, window: int = 3,
                      seed: int = 0) -> torch.Tensor:
    """Bool [n, n]: may query i see key j, under a causal block-sparse pattern.

    Token i lies in block i // block. Query block r keeps key block c <= r when
      "local":   r - c < window;
      "strided": r - c < window or (r - c) % window == 0;
      "bigbird": r - c < window or c == 0, plus up to 2 random earlier blocks per r,
                 drawn by torch.randperm over the blocks not yet kept (in increasing
                 order), one generator seeded with `seed`, rows r = 0, 1, ... in order.
    Within kept blocks the mask is causal: j <= i."""
    for name, x in (("n", n), ("block", block), ("window", window)):
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise ValueError(f"{name} must be a positive int, got {x!r}")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    n_blocks = -(-n // block)                      # the last block may be shorter
    r = torch.arange(n_blocks)[:, None]
    c = torch.arange(n_blocks)[None, :]
    back = r - c
    keep = (back >= 0) & (back < window)
    if pattern == "strided":
        keep |= (back >= 0) & (back % window == 0)
    if pattern == "bigbird":
        keep |= (back >= 0) & (c == 0)
        g = torch.Generator().manual_seed(seed)
        for row in range(n_blocks):
            left = torch.nonzero((back[row] >= 0) & ~keep[row]).flatten()
            pick = left[torch.randperm(len(left), generator=g)[:2]]
            keep[row, pick] = True
    token_block = torch.arange(n) // block
    return keep[token_block[:, None], token_block[None, :]] & causal_mask(n)


def block_layout(mask: torch.Tensor, block: int) -> torch.Tensor:
    """Bool [n_blocks, n_blocks], n_blocks = ceil(N / block): does the [block, block]
    tile (r, c) of the bool mask [N, N] keep anything?"""
    n = mask.shape[-1]
    n_blocks, pad = -(-n // block), -n % block
    padded = F.pad(mask.cpu(), (0, pad, 0, pad)) if pad else mask.cpu()
    return padded.reshape(n_blocks, block, n_blocks, block).any(3).any(1)


def block_sparse_attention(q, k, v, layout: torch.Tensor, block: int) -> torch.Tensor:
    """Causal softmax attention of q, k [..., N, d_k], v [..., N, d_v] on the [block,
    block] tiles that the bool layout [n_blocks, n_blocks] keeps, j <= i inside them:
    dense attention under the mask the layout expands to. Every query must see a key."""
    n, n_blocks = q.shape[-2], -(-q.shape[-2] // block)
    if layout.shape != (n_blocks, n_blocks) or k.shape[-2] != n or v.shape[-2] != n:
        raise ValueError(f"expected q, k, v [..., N, d] and a layout {[n_blocks] * 2} "
                         f"(ceil(N / block) squared), got q {list(q.shape)}, k "
                         f"{list(k.shape)}, layout {list(layout.shape)}")
    offsets = torch.arange(block)
    out = []
    for r in range(n_blocks):
        rows = torch.arange(r * block, min(n, (r + 1) * block))
        cols = (torch.nonzero(layout[r].cpu())[:, :1] * block + offsets).flatten()
        cols = cols[cols < n]                                # the last block is shorter
        mask = (cols[None, :] <= rows[:, None]).to(q.device)      # causal in the tile
        cols = cols.to(q.device)
        out.append(scaled_dot_product_attention(
            q[..., r * block:(r + 1) * block, :], k[..., cols, :], v[..., cols, :],
            mask))
    return torch.cat(out, dim=-2)


def phi(x: torch.Tensor) -> torch.Tensor:
    """The feature map of linear attention (Katharopoulos et al.): elu(x) + 1 > 0."""
    return F.elu(x) + 1


def check_linear_inputs(q, k, v) -> None:
    """Raise a clear error unless q, k [..., N, d_k] and v [..., N, d_v] are float
    tensors with the same batch dims and N."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() < 2 or not t.is_floating_point():
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a float tensor [..., N, d], got {got}")
    if q.shape != k.shape or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"expected q, k [..., N, d_k] and v [..., N, d_v], got q "
                         f"{list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")


def linear_attention(q, k, v, causal: bool = True) -> torch.Tensor:
    """Linear attention, parallel form: o_i = sum_j A_ij v_j / sum_j A_ij with
    A = phi(q) phi(k)^T [..., N, N], over j <= i when causal, all j otherwise.
    q, k [..., N, d_k], v [..., N, d_v] -> [..., N, d_v]."""
    check_linear_inputs(q, k, v)
    a = phi(q) @ phi(k).transpose(-2, -1)                    # [..., N, N], all > 0
    if causal:
        a = a * causal_mask(q.shape[-2]).to(a.device)
    return (a @ v) / a.sum(-1, keepdim=True)


def linear_attention_recurrent(q, k, v, state=None):
    """Causal linear attention one position at a time: (out [..., N, d_v], (S, z)).

    state: None (start empty) or the (S [..., d_k, d_v], z [..., d_k]) a previous call
    returned; the state returned includes every position of this call."""
    check_linear_inputs(q, k, v)
    d_k, d_v = q.shape[-1], v.shape[-1]
    if state is None:
        S = q.new_zeros(*q.shape[:-2], d_k, d_v)
        z = q.new_zeros(*q.shape[:-2], d_k)
    else:
        S, z = state
        if S.shape != (*q.shape[:-2], d_k, d_v) or z.shape != (*q.shape[:-2], d_k):
            raise ValueError(f"state must be (S [..., d_k, d_v], z [..., d_k]) = "
                             f"{[*q.shape[:-2], d_k, d_v]}, {[*q.shape[:-2], d_k]}, "
                             f"got {list(S.shape)}, {list(z.shape)}")
    fq, fk = phi(q), phi(k)
    out = []
    for i in range(q.shape[-2]):
        S = S + fk[..., i, :, None] * v[..., i, None, :]     # + phi(k_i) v_i^T
        z = z + fk[..., i, :]
        num = (fq[..., i, None, :] @ S).squeeze(-2)      # phi(q_i)^T S_i  [..., d_v]
        den = (fq[..., i, :] * z).sum(-1, keepdim=True)      # phi(q_i)^T z_i  [..., 1]
        out.append(num / den)
    return torch.stack(out, dim=-2), (S, z)


def linear_attention_chunked(q, k, v, chunk: int = 64) -> torch.Tensor:
    """Causal linear attention chunk by chunk: the parallel form inside each chunk of
    `chunk` positions, the running state (S, z) for the positions before it.
    q, k [..., N, d_k], v [..., N, d_v] -> [..., N, d_v]."""
    check_linear_inputs(q, k, v)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    fq, fk = phi(q), phi(k)
    S = q.new_zeros(*q.shape[:-2], q.shape[-1], v.shape[-1])  # sum of phi(k_j) v_j^T
    z = q.new_zeros(*q.shape[:-2], q.shape[-1], 1)            # sum of phi(k_j)
    out = []
    for c0 in range(0, q.shape[-2], chunk):
        qc, kc, vc = fq[..., c0:c0 + chunk, :], fk[..., c0:c0 + chunk, :], \
            v[..., c0:c0 + chunk, :]
        a = (qc @ kc.transpose(-2, -1)).tril()               # causal inside the chunk
        num = qc @ S + a @ vc
        den = qc @ z + a.sum(-1, keepdim=True)
        out.append(num / den)
        S = S + kc.transpose(-2, -1) @ vc                    # after reading it
        z = z + kc.sum(-2)[..., None]
    return torch.cat(out, dim=-2)
