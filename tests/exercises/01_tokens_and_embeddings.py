"""Chapter 01: the checks pass on the exported solutions and fail, saying why, on plausible mistakes."""

import math
from collections import Counter

import torch
import torch.nn.functional as F

from exercises._case import Exercise
from transformer_course import tokens
from transformer_course.checks import tokens as checks
from transformer_course.tokens import merge, pair_counts, split_chunks, vocab_bytes


def _named(name):
    def wrap(fn):
        fn.__name__ = fn.__qualname__ = name
        return fn
    return wrap


# --- train_bpe -------------------------------------------------------------------------------

def _train(text, vocab_size, chunker, pick=max, first_id=256, n=None):
    chunks = Counter(tuple(c.encode("utf-8")) for c in chunker(text))
    merges = {}
    for new_id in range(first_id, first_id + (vocab_size - 256 if n is None else n)):
        counts = pair_counts(chunks)
        pair = pick(counts, key=counts.get)
        merges[pair] = new_id
        chunks = {merge(ids, pair, new_id): c for ids, c in chunks.items()}
    return merges


@_named("train_bpe")
def train_across_chunks(text, vocab_size):
    return _train(text, vocab_size, lambda t: [t])  # pairs counted over the whole text


@_named("train_bpe")
def train_least_frequent(text, vocab_size):
    return _train(text, vocab_size, split_chunks, pick=min)


@_named("train_bpe")
def train_one_too_many(text, vocab_size):
    return _train(text, vocab_size, split_chunks, n=vocab_size - 255)


@_named("train_bpe")
def train_ids_from_255(text, vocab_size):
    return _train(text, vocab_size, split_chunks, first_id=255)


@_named("train_bpe")
def train_ids_from_0(text, vocab_size):
    return _train(text, vocab_size, split_chunks, first_id=0)


@_named("train_bpe")
def train_no_validation(text, vocab_size):
    return _train(text, max(vocab_size, 256), split_chunks)


# --- bpe_encode ------------------------------------------------------------------------------

@_named("bpe_encode")
def encode_single_pass(text, merges):
    """One left-to-right pass: merge a pair wherever it is in merges, never revisit."""
    out = []
    for chunk in split_chunks(text):
        ids, i, res = list(chunk.encode("utf-8")), 0, []
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) in merges:
                res.append(merges[ids[i], ids[i + 1]])
                i += 2
            else:
                res.append(ids[i])
                i += 1
        out += res
    return out


@_named("bpe_encode")
def encode_reverse_priority(text, merges):
    """Applies the merges newest first."""
    out = []
    for chunk in split_chunks(text):
        ids = tuple(chunk.encode("utf-8"))
        for pair, new_id in reversed(list(merges.items())):
            ids = merge(ids, pair, new_id)
        out += ids
    return out


@_named("bpe_encode")
def encode_raw_bytes(text, merges):
    return list(text.encode("utf-8"))


@_named("bpe_encode")
def encode_without_chunks(text, merges):
    ids = tuple(text.encode("utf-8"))
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, math.inf))
        if pair not in merges:
            break
        ids = merge(ids, pair, merges[pair])
    return list(ids)


# --- bpe_decode ------------------------------------------------------------------------------

@_named("bpe_decode")
def decode_per_token(ids, merges):
    vocab = vocab_bytes(merges)
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


@_named("bpe_decode")
def decode_per_token_strict(ids, merges):
    vocab = vocab_bytes(merges)
    return "".join(vocab[i].decode("utf-8") for i in ids)


@_named("bpe_decode")
def decode_strict(ids, merges):
    vocab = vocab_bytes(merges)
    return b"".join(vocab[i] for i in ids).decode("utf-8")


@_named("bpe_decode")
def decode_ignore(ids, merges):
    vocab = vocab_bytes(merges)
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore")


# --- embed -----------------------------------------------------------------------------------

@_named("embed")
def embed_transposed(ids, table):
    return table[:, ids]


@_named("embed")
def embed_one_hot_default_classes(ids, table):
    return F.one_hot(ids).to(table.dtype) @ table


@_named("embed")
def embed_scaled(ids, table):
    return table[ids] * math.sqrt(table.shape[1])


@_named("embed")
def embed_detached(ids, table):
    return torch.tensor(table.detach()[ids].tolist(), dtype=table.dtype).reshape(*ids.shape, table.shape[1])


@_named("embed")
def embed_no_range_check(ids, table):
    if ids.is_floating_point():
        raise ValueError("ids must be integers")
    return table[ids]  # table[-1] silently gives the last row


# --- further exercises -----------------------------------------------------------------------

@_named("merges_until_single_token")
def until_returns_id(word, merges):
    k = tokens.merges_until_single_token(word, merges)
    return None if k is None else k + 255


@_named("merges_until_single_token")
def until_off_by_one(word, merges):
    k = tokens.merges_until_single_token(word, merges)
    return None if k is None else k - 1


@_named("embedding_grad")
def grad_assign(ids, grad_out, vocab_size):
    d = grad_out.shape[-1]
    grad = torch.zeros(vocab_size, d)
    grad[ids.reshape(-1)] = grad_out.reshape(-1, d)  # repeated ids: the last one wins
    return grad


@_named("embedding_grad")
def grad_everywhere(ids, grad_out, vocab_size):
    d = grad_out.shape[-1]
    return grad_out.reshape(-1, d).sum(0).expand(vocab_size, d).clone()


EXERCISES = {
    "train_bpe": Exercise(
        check=checks.check_train_bpe,
        solution=tokens.train_bpe,
        wrong=[
            (train_across_chunks, "count pairs only inside the chunks"),
            (train_least_frequent, "most frequent pair (max, not min)"),
            (train_one_too_many, "expected 281 - 256 = 25"),
            (train_ids_from_255, "the new ids are [255, 256"),
            (train_ids_from_0, "ids 0 to 255 are the bytes"),
            (train_no_validation, "instead of raising ValueError"),
        ],
    ),
    "bpe_encode": Exercise(
        check=checks.check_bpe_encode,
        solution=tokens.bpe_encode,
        wrong=[
            (encode_single_pass, "lowest new id, until no adjacent pair is in merges"),
            (encode_reverse_priority, "apply merges by priority"),
            (encode_raw_bytes, "no merges were applied"),
            (encode_without_chunks, "merge inside each chunk"),
        ],
    ),
    "bpe_decode": Exercise(
        check=checks.check_bpe_decode,
        solution=tokens.bpe_decode,
        wrong=[
            (decode_per_token, "you decoded tokens one at a time"),
            (decode_per_token_strict, "you decoded tokens one at a time"),
            (decode_strict, "errors='replace'"),
            (decode_ignore, "expected '\ufffdok\ufffd'"),
        ],
    ),
    "embed": Exercise(
        check=checks.check_embed,
        solution=tokens.embed,
        wrong=[
            (embed_transposed, "not a column (table[:, ids])"),
            (embed_one_hot_default_classes, "num_classes=table.shape[0]"),
            (embed_scaled, "belongs to the model, not to the lookup"),
            (embed_detached, "not connected to table in autograd"),
            (embed_no_range_check, "table[-1] silently picks the last row"),
        ],
    ),
    "merges_until_single_token": Exercise(
        check=checks.check_merges_until_single_token,
        solution=tokens.merges_until_single_token,
        wrong=[
            (until_returns_id, "that is the id of the token"),
            (until_off_by_one, "off by one"),
        ],
    ),
    "embedding_grad": Exercise(
        check=checks.check_embedding_grad,
        solution=tokens.embedding_grad,
        wrong=[
            (grad_assign, "instead of accumulating with index_add_"),
            (grad_everywhere, "was never looked up"),
        ],
    ),
}
