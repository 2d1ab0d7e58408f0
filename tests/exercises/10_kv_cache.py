"""Chapter 10 (the KV cache): the exercises, their checks, and plausible wrong answers."""

import torch

from exercises._case import Exercise
from transformer_course import kv_cache
from transformer_course.checks import kv_cache as checks


# --- kv_cache_bytes ------------------------------------------------------------------------------

def _bytes_no_two(n_layers, n_kv_heads, d_head, seq_len, batch, bytes_per_element):
    return n_layers * n_kv_heads * d_head * seq_len * batch * bytes_per_element


def _bytes_no_element_size(n_layers, n_kv_heads, d_head, seq_len, batch, bytes_per_element):
    return 2 * n_layers * n_kv_heads * d_head * seq_len * batch


def _bytes_bits(n_layers, n_kv_heads, d_head, seq_len, batch, bytes_per_element):
    return 2 * n_layers * n_kv_heads * d_head * seq_len * batch * bytes_per_element * 8


def _bytes_float(n_layers, n_kv_heads, d_head, seq_len, batch, bytes_per_element):
    return 2.0 * n_layers * n_kv_heads * d_head * seq_len * batch * bytes_per_element


def _bytes_no_batch(n_layers, n_kv_heads, d_head, seq_len, batch, bytes_per_element):
    return 2 * n_layers * n_kv_heads * d_head * seq_len * bytes_per_element


def _bytes_tensor(n_layers, n_kv_heads, d_head, seq_len, batch, bytes_per_element):
    return torch.tensor(2 * n_layers * n_kv_heads * d_head * seq_len * batch * bytes_per_element)


BYTES_WRONG = [
    (_bytes_no_two, "you dropped the factor 2: the cache holds keys AND values"),
    (_bytes_no_element_size, "you left out bytes_per_element = 4"),
    (_bytes_bits, "that is bits, not bytes"),
    (_bytes_float, "expected an int: bytes are whole numbers"),
    (_bytes_no_batch, "you left out batch = 13"),
    (_bytes_tensor, "expected an int"),
]


# --- decode_mask ---------------------------------------------------------------------------------

def _mask(rule, dtype=torch.bool):
    def decode_mask(n_q, n_k):
        i, j = torch.arange(n_q)[:, None], torch.arange(n_k)[None, :]
        return rule(i, j, n_q, n_k).to(dtype)
    return decode_mask


MASK_WRONG = [
    (_mask(lambda i, j, n_q, n_k: j <= i), "aligned top-left"),
    (_mask(lambda i, j, n_q, n_k: torch.ones(n_q, n_k, dtype=torch.bool).tril()),
     "F.scaled_dot_product_attention(is_causal=True)"),
    (_mask(lambda i, j, n_q, n_k: j < i + n_k - n_q), "must also see its own key"),
    (_mask(lambda i, j, n_q, n_k: j <= i + n_k - n_q + 1), "sees one future key"),
    (_mask(lambda i, j, n_q, n_k: j > i + n_k - n_q), "inverted: True must mean 'may attend'"),
    (_mask(lambda i, j, n_q, n_k: j <= i + n_k - n_q, torch.float32), "expected torch.bool"),
    (_mask(lambda i, j, n_q, n_k: (j <= i + n_k - n_q).T), "one row per new query"),
]


# --- KVCache -------------------------------------------------------------------------------------

def _cat_on(dim):
    class KVCache(kv_cache.KVCache):
        def update(self, layer, k, v):
            if self.k[layer] is not None:
                k = torch.cat([self.k[layer], k], dim=dim)
                v = torch.cat([self.v[layer], v], dim=dim)
            self.k[layer], self.v[layer] = k, v
            return k, v
    return KVCache


class _OnlyNew(kv_cache.KVCache):
    def update(self, layer, k, v):
        super().update(layer, k, v)
        return k, v


class _Swapped(kv_cache.KVCache):
    def update(self, layer, k, v):
        k_all, v_all = super().update(layer, k, v)
        return v_all, k_all


class _Shared(kv_cache.KVCache):
    """One k and one v for all layers: every layer appends to the same tensors."""

    def update(self, layer, k, v):
        return super().update(0, k, v)


class _CropNoop(kv_cache.KVCache):
    def crop(self, n):
        pass


class _CropLast(kv_cache.KVCache):
    def crop(self, n):
        for layer in range(self.n_layers):
            if self.k[layer] is not None:
                self.k[layer] = self.k[layer][..., self.k[layer].shape[-2] - n:, :]
                self.v[layer] = self.v[layer][..., self.v[layer].shape[-2] - n:, :]


class _Counted(kv_cache.KVCache):
    """Keeps its length in a counter, which reset() forgets to zero."""

    def __init__(self, n_layers):
        super().__init__(n_layers)
        self.length = 0

    def __len__(self):
        return self.length

    def update(self, layer, k, v):
        out = super().update(layer, k, v)
        if layer == 0:
            self.length += k.shape[-2]
        return out

    def crop(self, n):
        super().crop(n)
        self.length = n


class _ResetStale(_Counted):
    def reset(self):
        super().reset()                       # empties the tensors, keeps the counter


class _ResetKeepsTensors(_Counted):
    def reset(self):
        self.length = 0                       # the counter only: the tensors stay


KVCACHE_WRONG = [
    (_cat_on(0), "you concatenated along dimension 0 (the batch B)"),
    (_cat_on(-1), "you concatenated along dimension 3 (the features d_head)"),
    (_cat_on(1), "you concatenated along dimension 1 (the heads G)"),
    (_OnlyNew, "only the new positions"),
    (_Swapped, "keys and values are swapped"),
    (_Shared, "Each layer needs its own keys and values"),
    (_CropNoop, "crop must shrink the cache"),
    (_CropLast, "crop(n) keeps the FIRST n"),
    (_ResetStale, "reset must forget the length too"),
    (_ResetKeepsTensors, "reset() did not empty the cache"),
]


# --- llama2_70b_kv_cache_bytes -----------------------------------------------------------------

def _llama(n_layers=80, n_kv_heads=8, d_head=128):
    def llama2_70b_kv_cache_bytes(seq_len, batch, bytes_per_element=2):
        return kv_cache.kv_cache_bytes(n_layers, n_kv_heads, d_head, seq_len, batch,
                                       bytes_per_element)
    return llama2_70b_kv_cache_bytes


LLAMA_WRONG = [
    (_llama(n_kv_heads=64), "the cache holds the 8 K/V heads of 128"),
    (_llama(n_kv_heads=1, d_head=8192), "(the 64 query heads, or d_model)"),
    (lambda seq_len, batch, bytes_per_element=2: 80 * 8 * 128 * seq_len * batch * bytes_per_element,
     "you dropped the factor 2: keys AND values"),
    (lambda seq_len, batch, bytes_per_element=2: 2 * 80 * 8 * 128 * seq_len * batch,
     "you left out bytes_per_element"),
    (lambda seq_len, batch, bytes_per_element=2: kv_cache.kv_cache_bytes(
        80, 8, 128, seq_len, batch, 2), "you used 2 bytes per element whatever"),
    (lambda seq_len, batch, bytes_per_element=2: kv_cache.kv_cache_bytes(
        80, 8, 128, seq_len, batch, bytes_per_element) / 1e9, "expected an int"),
]


EXERCISES = {
    "kv_cache_bytes": Exercise(check=checks.check_kv_cache_bytes, solution=kv_cache.kv_cache_bytes,
                               wrong=BYTES_WRONG),
    "decode_mask": Exercise(check=checks.check_decode_mask, solution=kv_cache.decode_mask,
                            wrong=MASK_WRONG),
    "KVCache": Exercise(check=checks.check_KVCache, solution=kv_cache.KVCache,
                        wrong=KVCACHE_WRONG),
    "llama2_70b_kv_cache_bytes": Exercise(check=checks.check_llama2_70b_kv_cache_bytes,
                                          solution=kv_cache.llama2_70b_kv_cache_bytes,
                                          wrong=LLAMA_WRONG),
}
