"""Generated from solutions/10_kv_cache.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# The KV cache: every layer keeps the keys and values of the tokens seen so far, so that
# decoding computes each token's keys and values once. What later chapters use:
#   KVCache(n_layers)          dense cache grown by concatenation: update, crop, reset,
#                              len()
#   StaticKVCache(...)         the same interface over preallocated buffers
#   PagedKVCache(...)          the same interface over fixed-size blocks and a block
#                              table (vLLM)
#   decode_mask(n_q, n_k)      the causal mask of n_q new queries against n_k keys
#                              (bottom-right)
#   forward_cached(model, ids, cache)   logits of a DecoderOnly for the new tokens only
#   generate_cached(model, prompt_ids, max_new_tokens, ...)   greedy or sampled, with a
#                              cache
#   kv_cache_bytes(...)        the cache's size by formula
import math

import torch

from transformer_course.attention import scaled_dot_product_attention
from transformer_course.blocks import residual
from transformer_course.decoding import validate_prompt, warp_logits
from transformer_course.multihead import merge_heads, split_heads
from transformer_course.transformer import DecoderOnly, TransformerConfig


def check_kv(n_layers: int, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a clear error unless 0 <= layer < n_layers, k is [B, G, N_new, d_head] and
    v is [B, G, N_new, d_v]."""
    if (isinstance(layer, bool) or not isinstance(layer, int)
            or not 0 <= layer < n_layers):
        raise ValueError(f"layer must be an int in [0, {n_layers}), got {layer!r}")
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must have shape [B, G, N_new, d_head], got {got}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must agree in [B, G, N_new], got {list(k.shape)} "
                         f"and {list(v.shape)}")


def check_crop(n: int, length: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= length:
        raise ValueError("crop(n) keeps the first n positions: need "
                         f"0 <= n <= {length} (the cached length), got {n!r}")


class KVCache:
    """The keys and values of every layer, [B, G, N, d_head] each, grown along dim -2.

    KVCache(n_layers). update(layer, k, v) appends one layer's new k, v
    [B, G, N_new, d_head] and returns that layer's (k_all, v_all) [B, G, N, d_head],
    cached positions first (N_new may be 0: then it returns what the layer holds);
    len(cache) is the number of cached positions; crop(n) keeps the first n positions
    (rewinds: the newest are dropped); reset() empties the cache for the next prompt.
    """

    def __init__(self, n_layers: int):
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
        self.n_layers = n_layers
        self.k: list[torch.Tensor | None] = [None] * n_layers    # one entry per layer
        self.v: list[torch.Tensor | None] = [None] * n_layers

    def __len__(self) -> int:
        """The number of cached positions (all layers agree between forward passes)."""
        return 0 if self.k[0] is None else self.k[0].shape[-2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append layer's new k, v [B, G, N_new, d]; return its (k_all, v_all)
        [B, G, N, d]."""
        check_kv(self.n_layers, layer, k, v)
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=-2)      # dim -2: the positions
            v = torch.cat([self.v[layer], v], dim=-2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def crop(self, n: int) -> None:
        """Keep the first n positions of every layer, 0 <= n <= len(self)."""
        check_crop(n, len(self))
        for layer in range(self.n_layers):
            if self.k[layer] is not None:
                self.k[layer] = self.k[layer][..., :n, :]
                self.v[layer] = self.v[layer][..., :n, :]

    def reset(self) -> None:
        """Forget everything: len(self) becomes 0."""
        self.k = [None] * self.n_layers
        self.v = [None] * self.n_layers


def decode_mask(n_q: int, n_k: int) -> torch.Tensor:
    """Bool [n_q, n_k]: True where new query i may see key j, that is
    j <= i + n_k - n_q.

    The n_q queries are the last n_q of the n_k positions (the cache holds the first
    n_k - n_q), so the causal mask is aligned bottom-right; with n_q = n_k it is the
    ordinary causal mask."""
    for name, n in (("n_q", n_q), ("n_k", n_k)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be an int >= 0, got {n!r}")
    if n_q > n_k:
        raise ValueError(f"more queries than keys (n_q={n_q}, n_k={n_k}): every new "
                         "token is also a key")
    i = torch.arange(n_q)[:, None]
    j = torch.arange(n_k)[None, :]
    return j <= i + (n_k - n_q)


def cached_attention(attn, x: torch.Tensor, cache, layer: int,
                     mask: torch.Tensor) -> torch.Tensor:
    """attn (chapter 04's MultiHeadAttention, or chapter 11's GroupedQueryAttention,
    whose n_kv_heads K/V heads are what the cache holds) on new tokens x [B, N_new, D],
    their keys and values appended to cache's layer; mask [N_new, N_k] or
    [B, 1, N_new, N_k] -> [B, N_new, D]."""
    G = getattr(attn, "n_kv_heads", attn.n_heads)                # G = H here
    q = split_heads(attn.w_q(x), attn.n_heads)                   # [B, H, N_new, d_head]
    k, v = cache.update(layer, split_heads(attn.w_k(x), G),
                        split_heads(attn.w_v(x), G))              # [B, G, N_k, d_head]
    if G != attn.n_heads:               # chapter 11: a K/V head serves H/G query heads
        k = k.repeat_interleave(attn.n_heads // G, dim=1)
        v = v.repeat_interleave(attn.n_heads // G, dim=1)
    return attn.w_o(merge_heads(scaled_dot_product_attention(q, k, v, mask)))


def forward_cached(model: DecoderOnly, ids: torch.Tensor, cache,
                   pad_mask: torch.Tensor | None = None,
                   mask_fn=decode_mask) -> torch.Tensor:
    """Logits [B, N_new, |V|] of new tokens ids [B, N_new] that follow the len(cache)
    cached ones.

    Runs model's own modules (embedding, layers, final norm, lm_head) on the new tokens
    only, at positions len(cache) .. len(cache) + N_new - 1. Each layer appends their
    keys and values to cache (any object with KVCache's update and len) and their
    queries see all N_k = len(cache) + N_new keys through mask_fn(N_new, N_k), the
    bottom-right decode_mask. With an empty cache it equals model(ids) up to rounding.
    pad_mask: bool [B, N_k], True at the real tokens of all positions so far (cached and
    new): padding is hidden from every query and each row counts its positions from its
    first real token (left padding).
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        got = list(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError("ids must be token ids, an integer tensor [B, N_new], "
                         f"got {got}")
    start, n_new = len(cache), ids.shape[1]
    n_k, table = start + n_new, model.embed.pos
    if n_k > table.shape[0]:
        raise ValueError(f"positions up to {n_k - 1} exceed the model's max_len = "
                         f"{table.shape[0]}; extend_context(model, max_len) makes a "
                         "longer table")
    mask = mask_fn(n_new, n_k).to(ids.device)                     # [N_new, N_k]
    if pad_mask is None:
        pe = table[start:n_k]                                     # [N_new, D]
    else:
        if pad_mask.dtype != torch.bool or tuple(pad_mask.shape) != (ids.shape[0], n_k):
            raise ValueError(f"pad_mask must be bool [B, N_k] = {[ids.shape[0], n_k]}, "
                             f"got {pad_mask.dtype} of shape {list(pad_mask.shape)}")
        positions = (pad_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start:]
        pe = table[positions]                                     # [B, N_new, D]
        mask = mask & pad_mask[:, None, None, :]                  # [B, 1, N_new, N_k]
        # a query on padding: any finite output will do
        mask = mask | ~mask.any(-1, keepdim=True)
    embed = model.embed
    x = embed.drop(embed.tok(ids) * embed.scale + pe)
    for i, layer in enumerate(model.layers):
        attend = lambda h, layer=layer, i=i: cached_attention(layer.self_attn, h, cache,
                                                              i, mask)
        x = residual(x, attend, layer.norm1, layer.drop, layer.norm_first)
        x = residual(x, layer.ffn, layer.norm2, layer.drop, layer.norm_first)
    return model.lm_head(model.norm(x))


@torch.no_grad()
def generate_cached(model: DecoderOnly, prompt_ids: torch.Tensor, max_new_tokens: int,
                    temperature: float = 0.0, top_k: int | None = None,
                    top_p: float | None = None,
                    generator: torch.Generator | None = None,
                    cache=None, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Decode with a KV cache: [B, T] -> [B, T + max_new_tokens] (int64), the tokens of
    chapter 09's greedy_decode (temperature 0) or sample (temperature > 0, top_k, top_p,
    generator).

    A prefill of the prompt fills the cache, then each step feeds only the newest token.
    cache: an empty cache to fill (default: a new KVCache); afterwards it holds
    T + max_new_tokens - 1 positions. pad_mask: bool [B, T], False at the prompts' left
    padding."""
    validate_prompt(prompt_ids, max_new_tokens)
    cache = KVCache(len(model.layers)) if cache is None else cache
    if len(cache):
        raise ValueError(f"cache must be empty (it holds {len(cache)} positions): "
                         "reset() it")
    ids, new = prompt_ids, prompt_ids
    for _ in range(max_new_tokens):
        logits = forward_cached(model, new, cache, pad_mask)[:, -1, :].float()
        if temperature == 0:
            new = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = warp_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
            new = torch.multinomial(probs, 1, generator=generator)
        ids = torch.cat([ids, new], dim=1)
        if pad_mask is not None:
            pad_mask = torch.cat([pad_mask, torch.ones_like(pad_mask[:, :1])], dim=1)
    return ids


def extend_context(model: DecoderOnly, max_len: int) -> DecoderOnly:
    """A copy of model with a sinusoidal position table of max_len rows. Its weights
    never saw positions beyond the trained max_len: for measuring speed, not the quality
    of text."""
    cfg = TransformerConfig(**{**vars(model.cfg), "max_len": max_len})
    longer = DecoderOnly(cfg).to(next(model.parameters()).device)
    # the position table is a buffer, not saved in the state dict
    longer.load_state_dict(model.state_dict())
    return longer.train(model.training)


def kv_cache_bytes(n_layers: int, n_kv_heads: int, d_head: int, seq_len: int,
                   batch: int, bytes_per_element: int) -> int:
    """Bytes of a KV cache: 2 (keys and values) * layers * kv heads * d_head * tokens *
    batch * bytes per element."""
    args = dict(n_layers=n_layers, n_kv_heads=n_kv_heads, d_head=d_head,
                seq_len=seq_len, batch=batch, bytes_per_element=bytes_per_element)
    for name, x in args.items():
        if isinstance(x, bool) or not isinstance(x, int) or x < 0:
            raise ValueError(f"{name} must be an int >= 0, got {x!r}")
    return 2 * n_layers * n_kv_heads * d_head * seq_len * batch * bytes_per_element


class StaticKVCache:
    """KVCache's interface over buffers allocated once, [B, G, max_len, d_head] per
    layer.

    StaticKVCache(n_layers, batch, n_kv_heads, max_len, d_head, dtype, device). update
    writes the new rows in place and returns views of the filled part (valid until the
    next update after a crop or reset, which only move the length)."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int,
                 d_head: int, dtype=torch.float32, device=None):
        shape = (batch, n_kv_heads, max_len, d_head)
        self.k = [torch.zeros(shape, dtype=dtype, device=device)
                  for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device)
                  for _ in range(n_layers)]
        self.lengths = [0] * n_layers     # filled rows per layer (equal between passes)

    def __len__(self) -> int:
        return self.lengths[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        check_kv(len(self.k), layer, k, v)
        if (k.shape[:2] != self.k[layer].shape[:2]
                or k.shape[-1] != self.k[layer].shape[-1]):
            raise ValueError(f"k must be [B, G, N_new, d_head] with [B, G] = "
                             f"{list(self.k[layer].shape[:2])} and d_head = "
                             f"{self.k[layer].shape[-1]}, got {list(k.shape)}")
        start, end = self.lengths[layer], self.lengths[layer] + k.shape[-2]
        if end > self.k[layer].shape[-2]:
            raise ValueError(f"the cache holds {self.k[layer].shape[-2]} positions, "
                             f"{end} needed")
        self.k[layer][..., start:end, :] = k
        self.v[layer][..., start:end, :] = v
        self.lengths[layer] = end
        return self.k[layer][..., :end, :], self.v[layer][..., :end, :]

    def crop(self, n: int) -> None:
        check_crop(n, len(self))
        self.lengths = [min(length, n) for length in self.lengths]

    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)


class PagedKVCache:
    """KVCache's interface over a pool of fixed-size blocks and a block table, as in
    vLLM.

    PagedKVCache(n_layers, batch, n_kv_heads, d_head, block_size, n_blocks, dtype,
    device). Each layer has pools k_pool, v_pool [n_blocks, G, block_size, d_head];
    sequence b owns the blocks listed in block_table[b] (the same ids in every layer),
    taken from a free list as it grows and given back by crop and reset. update returns
    the blocks gathered into a dense [B, G, N, d_head]. reserved_slots() counts the
    positions its blocks can hold."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, d_head: int,
                 block_size: int = 16, n_blocks: int = 64, dtype=torch.float32,
                 device=None):
        shape = (n_blocks, n_kv_heads, block_size, d_head)
        self.k_pool = [torch.zeros(shape, dtype=dtype, device=device)
                       for _ in range(n_layers)]
        self.v_pool = [torch.zeros(shape, dtype=dtype, device=device)
                       for _ in range(n_layers)]
        self.block_size = block_size
        self.free = list(range(n_blocks - 1, -1, -1))   # pop() hands out block 0 first
        self.block_table: list[list[int]] = [[] for _ in range(batch)]
        self.lengths = [0] * n_layers

    def __len__(self) -> int:
        return self.lengths[0]

    def reserved_slots(self) -> int:
        return sum(len(table) for table in self.block_table) * self.block_size

    def _table(self, n_blocks: int) -> torch.Tensor:
        for table in self.block_table:      # the first layer to need a block takes it
            while len(table) < n_blocks:
                if not self.free:
                    raise RuntimeError("out of blocks: make the pool larger (n_blocks)")
                table.append(self.free.pop())
        device = self.k_pool[0].device
        return torch.tensor([t[:n_blocks] for t in self.block_table], device=device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        check_kv(len(self.k_pool), layer, k, v)
        B, G, n_new, d = k.shape
        if (B, G, d) != (len(self.block_table), *self.k_pool[layer].shape[1:4:2]):
            raise ValueError("k must be [B, G, N_new, d_head] with "
                             f"B = {len(self.block_table)}, "
                             f"[G, d_head] = {list(self.k_pool[layer].shape[1:4:2])}, "
                             f"got {list(k.shape)}")
        start, end = self.lengths[layer], self.lengths[layer] + n_new
        size = self.block_size
        table = self._table(math.ceil(end / size))                # [B, blocks]
        pos = torch.arange(start, end, device=k.device)
        block, slot = table[:, pos // size], pos % size           # [B, N_new], [N_new]
        self.k_pool[layer][block, :, slot] = k.transpose(1, 2)   # rows [B, N_new, G, d]
        self.v_pool[layer][block, :, slot] = v.transpose(1, 2)
        self.lengths[layer] = end

        def gather(pool):                                      # [B, blocks, G, size, d]
            return pool[table].transpose(1, 2).reshape(B, G, -1, d)[..., :end, :]

        return gather(self.k_pool[layer]), gather(self.v_pool[layer])

    def crop(self, n: int) -> None:
        check_crop(n, len(self))
        self.lengths = [min(length, n) for length in self.lengths]
        keep = math.ceil(n / self.block_size)
        for table in self.block_table:
            while len(table) > keep:
                self.free.append(table.pop())

    def reset(self) -> None:
        self.crop(0)


def llama2_70b_kv_cache_bytes(seq_len: int, batch: int,
                              bytes_per_element: int = 2) -> int:
    """Bytes of Llama-2-70B's KV cache (80 layers, 64 query heads of width 128, 8 K/V
    heads)."""
    return kv_cache_bytes(80, 8, 128, seq_len, batch, bytes_per_element)
