"""Generated from solutions/03_attention.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

import math

import torch


def broadcast_shapes(*shapes) -> torch.Size:
    """The shape that tensors of these shapes broadcast to; RuntimeError if they do not.
    Tensors on the meta device have a shape and no data. (torch.broadcast_shapes gives
    the same, but its first call costs half a second: it imports a symbolic-shape
    library.)"""
    empty = [torch.empty(shape, device="meta") for shape in shapes]
    return torch.broadcast_tensors(*empty)[0].shape


def validate_attention_inputs(q, k, v, mask=None) -> None:
    """Raise a clear error unless q [..., n_q, d_k], k [..., n_k, d_k], v
    [..., n_k, d_v] and mask (optional) is a bool tensor broadcastable to the scores'
    shape [..., n_q, n_k]."""
    for name, t, want in (
        ("q", q, "[..., n_q, d_k]"),
        ("k", k, "[..., n_k, d_k]"),
        ("v", v, "[..., n_k, d_v]"),
    ):
        if not isinstance(t, torch.Tensor) or t.dim() < 2:
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape {want}, got {got}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same last dimension d_k: got q {list(q.shape)} "
            f"and k {list(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have one row per key (the same n_k): got k {list(k.shape)} "
            f"and v {list(v.shape)}"
        )
    try:
        batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the leading (batch) dimensions of q {list(q.shape)}, k {list(k.shape)} "
            f"and v {list(v.shape)} do not broadcast"
        ) from None
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor (True = may attend), got {got}; "
                        "turn a 0/1 mask into one with mask.bool()")
    scores = torch.Size((*batch, q.shape[-2], k.shape[-2]))
    try:
        fits = broadcast_shapes(mask.shape, scores) == scores
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"mask of shape {list(mask.shape)} does not broadcast to the scores' shape"
            f" [..., n_q, n_k] = {list(scores)}: a causal mask is [n_q, n_k], a padding"
            " mask over the keys [B, 1, n_k] (or [B, 1, 1, n_k] for scores [B, H, n_q,"
            " n_k])"
        )


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) v for q [..., n_q, d_k], k [..., n_k, d_k], v
    [..., n_k, d_v].

    mask: optional bool tensor broadcastable to [..., n_q, n_k]; True = may attend, and
    keys where it is False get exactly zero weight. Returns [..., n_q, d_v].
    """
    validate_attention_inputs(q, k, v, mask)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])      # [..., n_q, n_k]
    if mask is not None:
        # hidden keys: exp(-inf) = 0
        scores = scores.masked_fill(~mask, float("-inf"))
    # over the keys: rows sum to 1
    weights = torch.softmax(scores, dim=-1)
    return weights @ v                                            # [..., n_q, d_v]


def causal_mask(n: int) -> torch.Tensor:
    """Boolean [n, n]: True where query i may attend to key j, that is j <= i."""
    if isinstance(n, (bool, float)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return torch.ones(n, n, dtype=torch.bool).tril()


def padding_mask(lengths, n: int) -> torch.Tensor:
    """Boolean [B, n]: True at the real tokens, position < lengths[b]; False at the
    padding."""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.is_floating_point():
        raise ValueError(
            f"lengths must be a 1-D int tensor or list, got {lengths.dtype} of shape"
            f" {list(lengths.shape)}"
        )
    if len(lengths) and (lengths.min() < 0 or lengths.max() > n):
        raise ValueError(f"lengths must lie in [0, n={n}], got {lengths.tolist()}")
    return torch.arange(n, device=lengths.device) < lengths[:, None]


def attention_weights(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The attention weights softmax(q k^T / sqrt(d_k)), masked; shape [..., n_q, n_k],
    rows sum to 1."""
    validate_attention_inputs(q, k, k, mask)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def sliding_window_mask(n: int, window: int) -> torch.Tensor:
    """Boolean [n, n]: True where query i may attend to key j, i - window < j <= i."""
    if isinstance(window, (bool, float)) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return causal_mask(n) & (i - j < window)
