"""Generated from solutions/18_modern_lm.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# A faster BPE trainer: chapter 01's merges, merge for merge, with the pair counts
# updated only in the chunks that a merge changed. What later chapters use:
#   train_bpe_incremental(text, vocab_size)   the same merges as tokens.train_bpe
import heapq
from collections import Counter, defaultdict

from transformer_course.tokens import merge, split_chunks


def chunk_pairs(ids: tuple) -> dict:
    """{pair: [occurrences, position of the first]} for one chunk of token ids."""
    found = {}
    for position, pair in enumerate(zip(ids, ids[1:])):
        if pair in found:
            found[pair][0] += 1
        else:
            found[pair] = [1, position]
    return found


def train_bpe_incremental(text: str, vocab_size: int) -> dict[tuple[int, int], int]:
    """tokens.train_bpe(text, vocab_size), merge for merge, tie-break included, in time
    that grows with the chunks each merge changes rather than with all of them.

    count[pair]: occurrences, weighted by chunk frequency; where[pair]: the chunks that
    hold it; first[pair]: (chunk, position) of its first occurrence, chunks in the order
    first met, the order chapter 01 counts in. A heap of (-count, *first, pair) has on
    top the pair chapter 01's max() picks: the most frequent, ties to the one counted
    first. Entries whose pair has changed since are dropped when they reach the top.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not isinstance(vocab_size, int) or vocab_size < 256:
        raise ValueError(
            f"vocab_size must be an int >= 256 (the bytes), got {vocab_size!r}"
        )
    counted = Counter(tuple(c.encode("utf-8")) for c in split_chunks(text))
    chunks, freq = list(counted), list(counted.values())  # first met first
    count, first, where = Counter(), {}, defaultdict(set)
    for i, ids in enumerate(chunks):
        for pair, (k, position) in chunk_pairs(ids).items():
            count[pair] += k * freq[i]
            where[pair].add(i)
            first.setdefault(pair, (i, position))
    heap = [(-n, *first[pair], pair) for pair, n in count.items()]
    heapq.heapify(heap)
    merges = {}
    for new_id in range(256, vocab_size):
        while heap:
            n, i, position, pair = heap[0]
            if count[pair] == -n and first.get(pair) == (i, position):
                break  # up to date: the pair to merge
            heapq.heappop(heap)  # stale: the pair's count or first place changed since
        if not heap:
            break  # no chunk has two tokens left
        merges[pair] = new_id
        changed = set()
        for i in sorted(where[pair], reverse=True):  # last chunk first (see below)
            old = chunk_pairs(chunks[i])
            chunks[i] = merge(chunks[i], pair, new_id)
            new = chunk_pairs(chunks[i])
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
                            first[p] = (j, chunk_pairs(chunks[j])[p][1])
                        else:
                            del count[p], first[p], where[p]
        for p in changed & first.keys():
            heapq.heappush(heap, (-count[p], *first[p], p))
    return merges


def pair_visits(text: str, merges: dict[tuple[int, int], int]) -> tuple[list, list]:
    """Counted, for each merge in order: the pairs chapter 01's train_bpe counts (every
    pair of every distinct chunk) and those train_bpe_incremental counts (the pairs of
    the chunks the merge changed, before and after it; not the few chunks it reads
    again to find a pair's new first place)."""
    counted = Counter(tuple(c.encode("utf-8")) for c in split_chunks(text))
    chunks = list(counted)
    holds = defaultdict(set)  # token id -> chunks that hold it (or once held it)
    for i, ids in enumerate(chunks):
        for t in ids:
            holds[t].add(i)
    total = sum(len(ids) - 1 for ids in chunks)
    naive, incremental = [], []
    for (a, b), new_id in merges.items():
        naive.append(total)
        visits = 0
        for i in holds[a] & holds[b]:
            merged = merge(chunks[i], (a, b), new_id)
            if len(merged) < len(chunks[i]):
                visits += len(chunks[i]) - 1 + len(merged) - 1
                total -= len(chunks[i]) - len(merged)
                chunks[i] = merged
                holds[new_id].add(i)
        incremental.append(visits)
    return naive, incremental
