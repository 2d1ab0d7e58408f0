"""Generated from solutions/01_tokens_and_embeddings.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

import importlib
import inspect
import math
import re
from collections import Counter

import torch
import torch.nn.functional as F


CORPUS_MODULES = [
    "abc",
    "argparse",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "codecs",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "doctest",
    "email.message",
    "enum",
    "fractions",
    "functools",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "http.client",
    "http.server",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "numbers",
    "operator",
    "optparse",
    "pathlib",
    "pickle",
    "pprint",
    "pydoc",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "shelve",
    "shlex",
    "shutil",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "traceback",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "weakref",
    "xml.dom.minidom",
    "zipfile",
]


def _docstrings(module_name: str):
    """The docstrings of a module, its public classes and functions, and their methods.
    """
    module = importlib.import_module(module_name)
    yield inspect.getdoc(module)
    for name in sorted(vars(module)):
        obj = getattr(module, name)
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield inspect.getdoc(obj)
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                if not attr.startswith("_") and inspect.isfunction(vars(obj)[attr]):
                    yield inspect.getdoc(vars(obj)[attr])


def load_corpus() -> str:
    """English prose from the docstrings of CORPUS_MODULES
    (about 220 KB on Python 3.11).

    Paragraphs are kept when they are prose: longer than 80 characters, no indented
    lines (code) and no doctest prompts. Duplicates are dropped. Deterministic for a
    given Python.
    """
    paragraphs, seen = [], set()
    for module_name in CORPUS_MODULES:
        for doc in _docstrings(module_name):
            for p in re.split(r"\n\s*\n", doc or ""):
                if (
                    len(p) > 80
                    and not re.search(r"^(\s|>>>|\.\.\.)", p, re.M)
                    and p not in seen
                ):
                    seen.add(p)
                    paragraphs.append(p)
    return "\n\n".join(paragraphs)


SPLIT_PATTERN = r" ?[^\W\d_]+| ?\d+| ?[^\s\w]+|_+|\s+(?!\S)|\s+"


def split_chunks(text: str) -> list[str]:
    """Split text into the chunks BPE merges inside; "".join(split_chunks(t)) == t."""
    return re.findall(SPLIT_PATTERN, text)


def pair_counts(chunks: dict) -> Counter:
    """{(a, b): how often a is followed by b}, over chunks given as {tuple of ids:
    count}.

    Pairs are counted in the order they are first met, so ties in max() go to the pair
    seen first.
    """
    counts = Counter()
    for ids, n in chunks.items():
        for pair in zip(ids, ids[1:]):
            counts[pair] += n
    return counts


def merge(ids, pair: tuple[int, int], new_id: int) -> tuple:
    """Replace each occurrence of pair in ids (left to right, not overlapping) by
    new_id."""
    if pair[0] not in ids:  # a shortcut: nothing to merge
        return tuple(ids)
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return tuple(out)


def train_bpe(text: str, vocab_size: int) -> dict[tuple[int, int], int]:
    """Learn vocab_size - 256 merges on text, counting pairs only inside
    split_chunks(text).

    Returns {(a, b): new_id} in the order learned, new ids 256, 257, ... Stops early
    (fewer merges) only if no chunk has two tokens left.
    """
    if not isinstance(vocab_size, int) or vocab_size < 256:
        raise ValueError(
            f"vocab_size must be an int >= 256 (the bytes), got {vocab_size!r}"
        )
    chunks = Counter(tuple(c.encode("utf-8")) for c in split_chunks(text))
    merges = {}
    for new_id in range(256, vocab_size):
        counts = pair_counts(chunks)
        if not counts:
            break
        pair = max(counts, key=counts.get)  # the first of the most frequent pairs
        merges[pair] = new_id
        chunks = {merge(ids, pair, new_id): n for ids, n in chunks.items()}
    return merges


def vocab_bytes(merges: dict[tuple[int, int], int]) -> dict[int, bytes]:
    """{token id: the bytes it stands for}, for the 256 bytes and every merge."""
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in merges.items():
        vocab[new_id] = vocab[a] + vocab[b]
    return vocab


def bpe_encode(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    """Token ids of text: split into chunks, then in each chunk merge by priority
    (lowest new id first)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids = []
    for chunk in split_chunks(text):
        tokens = tuple(chunk.encode("utf-8"))
        while len(tokens) > 1:
            pair = min(zip(tokens, tokens[1:]), key=lambda p: merges.get(p, math.inf))
            if pair not in merges:
                break
            tokens = merge(tokens, pair, merges[pair])
        ids.extend(tokens)
    return ids


def bpe_decode(ids: list[int], merges: dict[tuple[int, int], int]) -> str:
    """The text of ids: the bytes of all tokens joined, decoded as UTF-8 with
    errors="replace"."""
    vocab = vocab_bytes(merges)
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def embed(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rows of table [vocab, d] for token ids of any shape: the result has shape
    ids.shape + (d,)."""
    if table.dim() != 2:
        raise ValueError(f"table must have shape [vocab, d], got {list(table.shape)}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"ids must be an integer tensor (torch.long or torch.int), got {ids.dtype}"
        )
    if ids.numel() and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise IndexError(f"ids must be in [0, {table.shape[0]}), got values from "
                         f"{ids.min().item()} to {ids.max().item()}")
    return table[ids]


def merges_until_single_token(
    word: str, merges: dict[tuple[int, int], int]
) -> int | None:
    """Smallest k such that bpe_encode(word, first k merges) is one token; None if none
    does."""
    items = list(merges.items())
    for k in range(len(items) + 1):
        if len(bpe_encode(word, dict(items[:k]))) == 1:
            return k
    return None


def embedding_grad(
    ids: torch.Tensor, grad_out: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """d loss / d table [vocab_size, d] for out = table[ids], given grad_out = d loss /
    d out."""
    d = grad_out.shape[-1]
    grad = torch.zeros(vocab_size, d, dtype=grad_out.dtype, device=grad_out.device)
    return grad.index_add_(0, ids.reshape(-1), grad_out.reshape(-1, d))
