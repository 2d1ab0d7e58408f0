"""Generated from solutions/18_modern_lm.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# A faster BPE trainer: chapter 01's merges, merge for merge, with the pair counts
# updated only in the chunks that a merge changed. What later chapters use:
#   train_bpe_incremental(text, vocab_size)   the same merges as tokens.train_bpe
import heapq
from collections import Counter, defaultdict

from transformer_course.tokens import merge, split_chunks


def chunk_pairs(ids: tuple, length: list[int]) -> dict:
    """{pair: [occurrences, byte offset of the first]} for one chunk of token ids;
    length[t] is the number of bytes token t stands for."""
    found, offset = {}, 0
    for a, b in zip(ids, ids[1:]):
        if (a, b) in found:
            found[a, b][0] += 1
        else:
            found[a, b] = [1, offset]
        offset += length[a]
    return found


def train_bpe_incremental(text: str, vocab_size: int) -> dict[tuple[int, int], int]:
    """tokens.train_bpe(text, vocab_size), merge for merge, tie-break included, in time
    that grows with the chunks each merge changes rather than with all of them.

    count[pair]: occurrences, weighted by chunk frequency; where[pair]: the chunks
    holding it; first[pair]: (chunk, byte offset) of its first occurrence, chunks in
    the order first met. A heap keyed (-count, first) gives the pair chapter 01's max()
    picks: the most frequent, ties to the one counted first. Stale heap entries are
    skipped when they reach the top (lazy deletion).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not isinstance(vocab_size, int) or vocab_size < 256:
        raise ValueError(
            f"vocab_size must be an int >= 256 (the bytes), got {vocab_size!r}"
        )
    counted = Counter(tuple(c.encode("utf-8")) for c in split_chunks(text))
    chunks, freq = list(counted), list(counted.values())  # first met first
    length = [1] * 256  # bytes per token id
    count, first, where = Counter(), {}, defaultdict(set)
    for i, ids in enumerate(chunks):
        for pair, (k, offset) in chunk_pairs(ids, length).items():
            count[pair] += k * freq[i]
            where[pair].add(i)
            first.setdefault(pair, (i, offset))
    heap = [(-n, *first[pair], pair) for pair, n in count.items()]
    heapq.heapify(heap)
    merges = {}
    for new_id in range(256, vocab_size):
        while heap and (count[heap[0][3]], first.get(heap[0][3])) != (
            -heap[0][0], heap[0][1:3]
        ):
            heapq.heappop(heap)  # stale: its pair's count or first place changed
        if not heap:
            break  # no chunk has two tokens left
        pair = heap[0][3]
        merges[pair] = new_id
        length.append(length[pair[0]] + length[pair[1]])
        changed = set()
        for i in sorted(where[pair], reverse=True):  # last chunk first (see below)
            old = chunk_pairs(chunks[i], length)
            chunks[i] = merge(chunks[i], pair, new_id)
            new = chunk_pairs(chunks[i], length)
            for p in old.keys() | new.keys():
                k_old, k_new = old.get(p, (0,))[0], new.get(p, (0,))[0]
                if k_old == k_new and old[p][1] == new[p][1]:
                    continue
                changed.add(p)
                count[p] += (k_new - k_old) * freq[i]
                if k_new:
                    where[p].add(i)
                    if p not in first or (i, new[p][1]) < first[p] or first[p][0] == i:
                        first[p] = (i, new[p][1])
                else:
                    where[p].discard(i)
                    if first[p][0] == i:  # chunks after i are done: look once
                        if where[p]:
                            j = min(where[p])
                            first[p] = (j, chunk_pairs(chunks[j], length)[p][1])
                        else:
                            del count[p], first[p], where[p]
        for p in changed & first.keys():
            heapq.heappush(heap, (-count[p], *first[p], p))
    return merges
