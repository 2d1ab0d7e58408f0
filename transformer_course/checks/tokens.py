"""Checks for chapter 01, tokens and embeddings.

The BPE checks carry their own small oracle (a trainer, an encoder and a decoder written with
``collections.Counter``), independent of the learner's code and of ``transformer_course.tokens``.
The conventions they check are the chapter's:

- text is split into chunks with ``SPLIT_PATTERN`` and pairs are counted and merged only inside a chunk;
- ``merges`` is a dict ``{(a, b): new_id}`` in the order learned, new ids 256, 257, ...;
- encoding applies merges by priority (lowest new id first); decoding joins the bytes of all
  tokens and decodes them once with ``errors="replace"``.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import torch
import torch.nn.functional as F

from ..i18n import tr, trf
from . import CheckFailed, call, describe, expect_shape, fail, name_of, passed, seeded

# The same pattern as transformer_course.tokens.SPLIT_PATTERN (a simplified GPT-2 pattern):
# a word with its leading space, a number, a run of punctuation, underscores, whitespace.
SPLIT_PATTERN = r" ?[^\W\d_]+| ?\d+| ?[^\s\w]+|_+|\s+(?!\S)|\s+"

_SENTENCES = [
    "The tokenizer turns text into a list of integers, and the model only ever sees those integers.",
    "Every string is first encoded as bytes, so there are exactly two hundred and fifty six base tokens.",
    "Byte pair encoding then merges the most frequent pair of neighbouring tokens into a new token.",
    "After the merge the text is shorter, and the pair counts are taken again.",
    "The merges are kept in the order they were learned, because that order is their priority.",
    "A word that is common in the training text ends up as a single token, with its leading space.",
    "A rare word is spelled with several smaller tokens, and an unseen symbol falls back to its bytes.",
    "The embedding table has one row per token; looking a token up returns its row.",
    "That lookup is the same as multiplying a one-hot vector by the table, only much cheaper.",
    "The gradient of the loss reaches only the rows that were looked up in the batch.",
    "Then the model adds the position of each token, and the transformer takes it from there.",
    "These sentences are the training text of the checks: they repeat the, then, there and these.",
]

_UNSEEN = [
    "hello world",
    "The thin thread: there, then the other.",
    "naïve café, déjà vu, 東京 and 🙂 emoji 👍🏽",
    "  indented\n\ttabs\r\nand trailing spaces   ",
    "tokens_and_embeddings 2024 x=3.14",
]


def _text(seed: int) -> str:
    """The sentences in a seeded order; every third starts an indented line, as in docstrings."""
    sentences = list(_SENTENCES)
    random.Random(seed).shuffle(sentences)
    return "".join(s + ("\n    " if i % 3 == 2 else " ") for i, s in enumerate(sentences)).rstrip()


# --- the oracle --------------------------------------------------------------------------------

def _chunks(text: str) -> Counter:
    return Counter(tuple(c.encode("utf-8")) for c in re.findall(SPLIT_PATTERN, text))


def _pair_counts(chunks) -> Counter:
    counts = Counter()
    for ids, n in chunks.items():
        for pair in zip(ids, ids[1:]):
            counts[pair] += n
    return counts


def _merge(ids, pair, new_id) -> tuple:
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return tuple(out)


def _merge_chunks(chunks, pair, new_id) -> Counter:
    out = Counter()
    for ids, n in chunks.items():
        out[_merge(ids, pair, new_id)] += n
    return out


def _train(text: str, n_merges: int) -> dict:
    chunks, merges = _chunks(text), {}
    for new_id in range(256, 256 + n_merges):
        counts = _pair_counts(chunks)
        pair = max(counts, key=counts.get)
        merges[pair] = new_id
        chunks = _merge_chunks(chunks, pair, new_id)
    return merges


def _encode_chunk(ids, merges) -> list:
    ids = tuple(ids)
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, math.inf))
        if pair not in merges:
            break
        ids = _merge(ids, pair, merges[pair])
    return list(ids)


def _encode(text: str, merges) -> list:
    out = []
    for chunk in re.findall(SPLIT_PATTERN, text):
        out += _encode_chunk(chunk.encode("utf-8"), merges)
    return out


def _vocab(merges) -> dict:
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in merges.items():
        vocab[new_id] = vocab[a] + vocab[b]
    return vocab


def _decode(ids, merges) -> str:
    vocab = _vocab(merges)
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def _show(pair, vocab) -> str:
    """(116, 104) = b'th', for messages."""
    a, b = pair
    if a in vocab and b in vocab:
        return f"({a}, {b}) = {vocab[a] + vocab[b]!r}"
    return f"({a}, {b})"


def _ordinal(k: int) -> str:
    return tr("your first merge") if k == 0 else trf("your merge number {k + 1}")


def _times(n: int) -> str:
    return {0: tr("0 times"), 1: tr("once"), 2: tr("twice")}.get(n, trf("{n} times"))


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _expect_merges(merges, what: str) -> None:
    if not isinstance(merges, dict):
        fail(trf("{what} should be a dict {{(a, b): new_id}}, got {type(merges).__name__}"))
    for pair, new_id in merges.items():
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(_is_int(x) for x in pair)):
            fail(trf("{what} has key {pair!r}: keys should be pairs of token ids, like (116, 104)"))
        if not _is_int(new_id):
            fail(trf("{what} maps {pair} to {new_id!r}: values should be the new token ids (int)"))


# --- the checks --------------------------------------------------------------------------------

def check_train_bpe(fn, seed: int = 0) -> None:
    text = _text(seed)
    n_merges = 25 + 5 * (seed % 3)
    vocab_size = 256 + n_merges
    merges = call(fn, text, vocab_size)
    what = trf("{name_of(fn)}(text, vocab_size={vocab_size})")
    _expect_merges(merges, what)
    if len(merges) != n_merges:
        fail(trf("{what} returned {len(merges)} merges, expected {vocab_size} - 256 = {n_merges}: "
             "the 256 byte tokens come for free, every merge adds one token"))
    ids = list(merges.values())
    if ids != list(range(256, vocab_size)):
        first = ids[0]
        hint = (tr("ids 0 to 255 are the bytes, so the first new id is 256") if first < 256
                else tr("use 256, 257, ... in the order the merges are learned"))
        fail(trf("{what}: the new ids are {ids[:4]}..., expected [256, 257, 258, 259, ...]: {hint}"))
    n_cases = 3
    chunks, whole = _chunks(text), Counter(zip(text.encode("utf-8"), text.encode("utf-8")[1:]))
    vocab = {i: bytes([i]) for i in range(256)}
    for k, (pair, new_id) in enumerate(merges.items()):
        for x in pair:
            if x >= new_id:
                fail(trf("{_ordinal(k)} (new id {new_id}) merges {pair}, but id {x} does not exist yet: "
                     "a merge can only join tokens that exist, ids 0 to {new_id - 1}"))
        counts = _pair_counts(chunks)
        best = max(counts, key=counts.get)
        got = counts.get(pair, 0)
        if got < counts[best]:
            msg = (trf("{_ordinal(k)} is {_show(pair, vocab)} which occurs {_times(got)}, "
                   "but {_show(best, vocab)} occurs {_times(counts[best])}"))
            joined = (vocab.get(pair[0], b"") + vocab.get(pair[1], b"")).decode("utf-8", errors="replace")
            if len(re.findall(SPLIT_PATTERN, joined)) > 1 or (k == 0 and whole[pair] > got):
                msg += (trf(". {joined!r} spans two chunks: count pairs only inside the chunks of "
                        "split_chunks(text), never across two chunks"))
            elif k == 0 and got == min(counts.values()):
                msg += tr(": merge the most frequent pair (max, not min)")
            else:
                msg += tr(": each merge should join a most frequent pair of the text as merged so far")
            fail(msg)
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        chunks = _merge_chunks(chunks, pair, new_id)
        n_cases += 1
    try:
        fn(text, 200)
    except (ValueError, TypeError):
        n_cases += 1
    except Exception as e:
        fail(trf("{name_of(fn)}(text, vocab_size=200) raised {type(e).__name__}: {e}; expected a ValueError "
             "saying that vocab_size must be at least 256"))
    else:
        fail(trf("{name_of(fn)}(text, vocab_size=200) returned instead of raising ValueError: "
             "a vocabulary smaller than the 256 bytes cannot encode every text"))
    passed(fn, n_cases)


def _expect_ids(ids, vocab_size: int, what: str) -> None:
    if not isinstance(ids, list):
        fail(trf("{what} should return a list of ints, got {type(ids).__name__}"))
    for i, x in enumerate(ids):
        if not _is_int(x):
            fail(trf("{what}: element {i} is {x!r} ({type(x).__name__}), expected a Python int"))
        if not 0 <= x < vocab_size:
            fail(trf("{what}: element {i} is {x}, outside the vocabulary [0, {vocab_size})"))


def check_bpe_encode(fn, seed: int = 0) -> None:
    text = _text(seed)
    merges = _train(text, 60)
    vocab, vocab_size = _vocab(merges), 256 + len(merges)
    cases = [text[:120]] + _UNSEEN + [text, ""]
    n_cases = 0
    for t in cases:
        what = trf("{name_of(fn)}({describe(t)}, merges)")
        got = call(fn, t, merges)
        _expect_ids(got, vocab_size, what)
        want = _encode(t, merges)
        back = _decode(got, merges)
        if back != t:
            fail(trf("{what} gave ids that decode to {describe(back)}, expected {describe(t)}: "
                 "every byte of the text must end up in exactly one token"))
        if got != want:
            raw = list(t.encode("utf-8"))
            head = trf("{what} gave {len(got)} tokens, expected {len(want)}")
            if got == raw:
                fail(trf("{head}: your ids are the raw UTF-8 bytes, so no merges were applied "
                     "(the round trip works, but there is no compression)"))
            if got == _encode_chunk(t.encode("utf-8"), merges):
                fail(trf("{head}: you merged the text as one sequence, so merges joined tokens across chunks. "
                     "Split the text with split_chunks first and merge inside each chunk, as train_bpe did"))
            i = next(j for j, (a, b) in enumerate(zip(got + [None], want + [None])) if a != b)
            nothing = tr("nothing")
            where = (trf("; first difference at token {i}: you have "
                     "{got[i] if i < len(got) else nothing}"
                     "{' = ' + repr(vocab[got[i]]) if i < len(got) else ''}, expected "
                     "{want[i] if i < len(want) else nothing}"
                     "{' = ' + repr(vocab[want[i]]) if i < len(want) else ''}"))
            if len(got) < len(want):
                hint = (tr(": did you merge across chunks? Split the text with split_chunks first and "
                        "merge inside each chunk, as train_bpe did"))
            else:
                hint = (tr(": apply merges by priority: in each chunk, repeatedly merge the adjacent pair "
                        "with the lowest new id, until no adjacent pair is in merges"))
            fail(head + where + hint)
        n_cases += 1
    passed(fn, n_cases)


def check_bpe_decode(fn, seed: int = 0) -> None:
    text = _text(seed)
    merges = _train(text, 60)
    word = ["héllo", "naïve", "déjà vu"][seed % 3]
    raw = list(word.encode("utf-8"))
    n_cases = 0

    def run(ids, want, shown):
        what = trf("{name_of(fn)}({shown}, merges)")
        try:
            got = call(fn, ids, merges)
        except CheckFailed as e:
            if isinstance(e.__cause__, UnicodeDecodeError):
                if "\ufffd" in want:
                    fail(trf("{what} raised UnicodeDecodeError. A model can generate any ids, including "
                         "bytes that are not valid UTF-8: decode with errors='replace' so that they "
                         "become '\ufffd' instead of crashing"))
                fail(trf("{what} raised UnicodeDecodeError although the bytes are valid UTF-8: you decoded "
                     "tokens one at a time, but a character like é spans two bytes. Join the bytes of "
                     "all tokens first, then decode once"))
            raise
        if not isinstance(got, str):
            fail(trf("{what} should return a str, got {type(got).__name__}"))
        if got != want:
            msg = trf("{what} gave {got!r}, expected {want!r}")
            if "\ufffd" in got and "\ufffd" not in want:
                msg += (tr(": you decoded tokens one at a time, but a character like é spans two bytes. "
                        "Join the bytes of all tokens first, then decode once"))
            elif got.count("\ufffd") < want.count("\ufffd"):
                msg += (tr(": bytes that are not valid UTF-8 should become '\ufffd' (errors='replace'), "
                        "not vanish, so that the reader sees something was there"))
            fail(msg)

    # raw bytes: each byte is its own token, so a multi-byte character spans several tokens
    run(raw, word, f"<the {len(raw)} raw bytes of {word!r}>")
    n_cases += 1
    for t in _UNSEEN + [text, ""]:
        run(_encode(t, merges), t, f"<encoding of {describe(t)}>")
        n_cases += 1
    # invalid UTF-8: a lone continuation byte and a truncated 3-byte character
    bad = [0xFF] + list(b"ok") + [0xE6, 0x9D]
    run(bad, "\ufffdok\ufffd", str(bad))
    n_cases += 1
    passed(fn, n_cases)


def check_embed(fn, seed: int = 0) -> None:
    with seeded(seed):
        cases = []
        for vocab, d, shape in [(5, 8, (3,)), (11, 4, (2, 7)), (7, 3, (2, 3, 1)), (6, 5, ()),
                                (9, 4, (0,)), (4, 6, (2, 0))]:
            table = torch.randn(vocab, d, dtype=torch.float64 if d == 3 else torch.float32)
            ids = torch.randint(0, vocab - 1, shape)  # the last row is never used
            cases.append((ids, table))
    n_cases = 0
    for ids, table in cases:
        vocab, d = table.shape
        what = trf("{name_of(fn)}(ids of shape {list(ids.shape)}, table of shape [{vocab}, {d}])")
        try:
            got = call(fn, ids, table)
        except CheckFailed as e:
            if "multiplied" in str(e) or "one_hot" in str(e):
                raise CheckFailed(trf("{e}. If you build one-hot vectors, they need one entry per row of "
                                  "the table: F.one_hot(ids, num_classes=table.shape[0]), not the "
                                  "largest id + 1")) from e.__cause__
            raise
        want = F.embedding(ids, table)
        if isinstance(got, torch.Tensor) and tuple(got.shape) != tuple(want.shape):
            hint = ""
            if got.dim() >= 1 and got.shape[0] == vocab and want.dim() >= 1 and want.shape[-1] == d:
                hint = (tr(": its first dimension is the vocabulary size. A token's vector is a row of "
                        "the table, table[ids], not a column (table[:, ids])"))
            fail(trf("{what} has shape {list(got.shape)}, expected {list(want.shape)} = ids.shape + [d]{hint}"))
        expect_shape(got, want.shape, what)
        if got.dtype != table.dtype:
            fail(trf("{what} has dtype {got.dtype}, expected the table's dtype {table.dtype}"))
        if not torch.allclose(got, want):
            if want.numel() and torch.allclose(got, want * math.sqrt(d)):
                fail(trf("{what}: your vectors are sqrt(d) = {math.sqrt(d):.3g} times the rows of the table. "
                     "embed only looks rows up; the Transformer's scaling by sqrt(d_model) belongs to the "
                     "model, not to the lookup"))
            fail(trf("{what} differs from F.embedding(ids, table): row i of the output should be table[ids[i]]"))
        n_cases += 1
    # the gradient reaches exactly the rows that were looked up, summed over repeats
    ids, table = torch.tensor([[1, 3, 1], [0, 1, 2]]), torch.randn(6, 4).requires_grad_()
    weights = torch.arange(24.0).reshape(2, 3, 4)
    out = call(fn, ids, table)
    if not out.requires_grad:
        fail(trf("{name_of(fn)}(ids, table) returned a tensor that is not connected to table in autograd "
             "(did you use .tolist(), .detach() or torch.tensor(...)?): the embedding could not be trained"))
    (out * weights).sum().backward()
    want = torch.zeros(6, 4).index_add_(0, ids.flatten(), weights.reshape(-1, 4))
    if table.grad is None or not torch.allclose(table.grad, want):
        fail(trf("the gradient of {name_of(fn)} with respect to the table is wrong: rows that were looked up "
             "should get the sum of their output gradients, the others zero"))
    n_cases += 1
    # errors: float ids, ids out of range (negative ids would silently wrap around in table[ids])
    table = torch.randn(5, 3)
    for bad, why in [(torch.tensor([0.0, 1.0]), tr("float ids")), (torch.tensor([0, 5]), tr("id 5 with 5 rows")),
                     (torch.tensor([-1, 2]), tr("id -1"))]:
        try:
            fn(bad, table)
        except NotImplementedError:
            raise
        except (ValueError, IndexError, TypeError, RuntimeError):
            n_cases += 1
            continue
        fail(trf("{name_of(fn)}({why}, table of shape [5, 3]) returned instead of raising an error: ids must be "
             "integers in [0, vocab) and anything else should raise a clear error")
             + (tr(" (table[-1] silently picks the last row)") if "-1" in why else ""))
    passed(fn, n_cases)


def check_merges_until_single_token(fn, seed: int = 0) -> None:
    text = _text(seed)
    merges = _train(text, 60)
    items = list(merges.items())
    vocab = _vocab(merges)
    words = [" the", "the", " token", " tokens", "th", " zebra", ""]  # inputs, not words to translate
    n_cases = 0
    for word in words:
        want = None
        for k in range(len(items) + 1):
            if len(_encode(word, dict(items[:k]))) == 1:
                want = k
                break
        got = call(fn, word, merges)
        what = trf("{name_of(fn)}({word!r}, merges)")
        if got != want:
            msg = trf("{what} is {got!r}, expected {want!r}")
            if want is not None and got == want + 255:
                msg += trf(": that is the id of the token {vocab[got]!r}; the answer is how many merges it takes")
            elif want is not None and got == want - 1:
                msg += tr(": off by one (merge k has the id 255 + k, so k merges make ids 256 .. 255 + k)")
            elif want is None:
                msg += trf(": {word!r} never becomes a single token with these merges")
            fail(msg)
        n_cases += 1
    passed(fn, n_cases)


def check_embedding_grad(fn, seed: int = 0) -> None:
    n_cases = 0
    with seeded(seed):
        vocab, d = 7, 4
        cases = [torch.tensor([2, 5, 2, 2]), torch.randint(0, vocab, (3, 5)), torch.tensor([], dtype=torch.long)]
        for ids in cases:
            table = torch.randn(vocab, d, requires_grad=True)
            grad_out = torch.randn(*ids.shape, d)
            F.embedding(ids, table).backward(grad_out)
            want = table.grad
            what = trf("{name_of(fn)}(ids of shape {list(ids.shape)}, grad_out of shape {list(grad_out.shape)}, {vocab})")
            got = call(fn, ids, grad_out, vocab)
            expect_shape(got, (vocab, d), what)
            if not torch.allclose(got, want, atol=1e-5):
                counts = torch.bincount(ids.flatten(), minlength=vocab)
                unused = counts == 0
                if (got[unused] != 0).any():
                    r = int(torch.nonzero(unused & (got != 0).any(-1))[0])
                    fail(trf("{what}: row {r} was never looked up, so its gradient must be zero, "
                         "yours is {[round(x, 3) for x in got[r].tolist()]}"))
                repeated = counts > 1
                if repeated.any():
                    r = int(torch.nonzero(repeated)[0])
                    fail(trf("{what}: id {r} appears {int(counts[r])} times in ids, so row {r} gets the sum of "
                         "those {int(counts[r])} output gradients; yours differs (did you assign with "
                         "grad[ids] = ... instead of accumulating with index_add_?)"))
                fail(trf("{what} differs from the gradient autograd computes for F.embedding"))
            n_cases += 1
    passed(fn, n_cases)
