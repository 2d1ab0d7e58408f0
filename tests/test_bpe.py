"""Chapter 18's incremental BPE trainer learns chapter 01's merges, merge for merge (the
tie-break included), on corpora chosen to catch the known bugs; these tests can fail."""

import random
from collections import Counter

import pytest

from transformer_course import bpe
from transformer_course.bpe import pair_visits, train_bpe_incremental
from transformer_course.tokens import (load_corpus, merge, pair_counts, split_chunks,
                                       train_bpe)


def topics(fraction=1.0) -> str:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return text[: int(len(text) * fraction)]


def ties(seed: int, alphabet: str = "ab c", n: int = 120) -> str:
    """A short random text over a tiny alphabet: many pairs tie at every merge."""
    r = random.Random(seed)
    return "".join(r.choice(alphabet) for _ in range(n))


REPEATS = " ".join("a" * n for n in range(1, 13)) + " aaab baaa abab bbbb ab" * 3
UTF8 = "héllo wörld, ñaña ü ü é 日本語 日本 🙂🙂 naïve café " * 4
CORPORA = {  # name: () -> (text, vocab_size), made when a test needs it
    "topics": lambda: (topics(), 276),  # big corpus, few merges (the naive one is slow)
    "load_corpus": lambda: (load_corpus(), 276),
    "repeats": lambda: (REPEATS, 400),  # overlapping pairs (aaaa): the classic bug
    "utf8": lambda: (UTF8, 400),
    "runs_out": lambda: ("ab ab abc " * 5 + "xyz", 1000),  # run out before 1000
    "empty": lambda: ("", 300),
    "one_byte_chunks": lambda: (". , ; :", 300),
    **{f"ties_{s}": lambda s=s: (ties(s), 320) for s in range(6)},
    "ties_utf8": lambda: (ties(7, "éa 日"), 320),
}


def first_difference(a: dict, b: dict) -> str | None:
    """None if a and b are the same merges in the same order, else where they part."""
    for k, (x, y) in enumerate(zip(a.items(), b.items())):
        if x != y:
            return f"merge {k}: {x} != {y}"
    if len(a) != len(b):
        return f"{len(a)} merges != {len(b)}"
    return None


@pytest.mark.parametrize("name", list(CORPORA))
def test_equal_to_chapter_01_merge_for_merge(name):
    text, vocab_size = CORPORA[name]()
    expected = train_bpe(text, vocab_size)
    assert first_difference(train_bpe_incremental(text, vocab_size), expected) is None
    if name == "runs_out":
        assert len(expected) < vocab_size - 256


def test_equal_on_many_small_random_texts():
    r = random.Random(0)
    for _ in range(150):
        alphabet = r.choice(["ab", "a", "ab \n", "aé日 ", "xy.,1 "])
        text = ties(r.randrange(10**6), alphabet, r.randrange(0, 200))
        vocab_size = r.choice([256, 257, 270, 320])
        assert first_difference(train_bpe_incremental(text, vocab_size),
                                train_bpe(text, vocab_size)) is None, repr(text)


@pytest.mark.parametrize("vocab_size", [255, 0, -1, 300.0, "300", None])
def test_a_bad_vocab_size_is_a_value_error_as_in_chapter_01(vocab_size):
    with pytest.raises(ValueError, match="vocab_size must be an int >= 256"):
        train_bpe_incremental("abc", vocab_size)


@pytest.mark.parametrize("text", [b"abc", None, ["a", "b"]])
def test_text_must_be_a_str(text):
    with pytest.raises(TypeError, match="text must be a str"):
        train_bpe_incremental(text, 300)


def test_vocab_256_learns_nothing():
    assert train_bpe_incremental("aaaa", 256) == {}


def right_to_left_merge(ids, pair, new_id):
    """An overlap bug: occurrences merged from the right, so aaa -> a Z (not Z a); the
    same as merge wherever occurrences do not overlap."""
    return merge(ids[::-1], pair[::-1], new_id)[::-1]


def train_bpe_tie(text: str, vocab_size: int, key) -> dict:
    """Chapter 01's trainer with another tie-break: the largest (count, key(pair))."""
    chunks = Counter(tuple(c.encode("utf-8")) for c in split_chunks(text))
    merges = {}
    for new_id in range(256, vocab_size):
        counts = pair_counts(chunks)
        if not counts:
            break
        pair = max(counts, key=lambda p: (counts[p], key(p)))
        merges[pair] = new_id
        chunks = {merge(ids, pair, new_id): n for ids, n in chunks.items()}
    return merges


def test_these_tests_catch_the_overlap_bug(monkeypatch):
    assert right_to_left_merge((97, 97, 97), (97, 97), 256) == (97, 256)
    assert right_to_left_merge((97, 98, 97, 98), (97, 98), 256) == (256, 256)
    text, vocab_size = CORPORA["repeats"]()
    monkeypatch.setattr(bpe, "merge", right_to_left_merge)
    assert first_difference(train_bpe_incremental(text, vocab_size),
                            train_bpe(text, vocab_size)) is not None


@pytest.mark.parametrize("key", [lambda p: p, lambda p: (-p[0], -p[1])],
                         ids=["largest_pair", "smallest_pair"])
def test_these_tests_catch_another_tie_break(key):
    corpora = [make() for name, make in CORPORA.items() if name.startswith("ties")]
    assert any(first_difference(train_bpe_tie(*corpus, key), train_bpe(*corpus))
               for corpus in corpora)


def test_pair_visits_counts_what_each_trainer_counts():
    text = REPEATS + UTF8
    merges = train_bpe(text, 300)
    naive, incremental = pair_visits(text, merges)
    chunks = list(Counter(tuple(c.encode("utf-8")) for c in split_chunks(text)))
    for k, (pair, new_id) in enumerate(merges.items()):
        assert naive[k] == sum(pair_counts({ids: 1 for ids in chunks}).values())
        merged = [merge(ids, pair, new_id) for ids in chunks]
        assert incremental[k] == sum(len(a) - 1 + len(b) - 1
                                     for a, b in zip(chunks, merged) if a != b)
        chunks = merged
