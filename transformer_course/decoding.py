"""Generated from solutions/09_decoding.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# Decoding strategies: turn a language model's next-token distributions into sequences.
import math
from typing import Callable

import torch

# ids [B, N] (int64) -> logits [B, N, V]
LanguageModel = Callable[
    [torch.Tensor], torch.Tensor
]


def validate_prompt(prompt_ids, max_new_tokens: int, one_prompt: bool = False) -> None:
    """Raise a clear error unless prompt_ids is an integer tensor [B, N] (N >= 1; B = 1
    if one_prompt) and max_new_tokens an int >= 0."""
    if (
        not isinstance(prompt_ids, torch.Tensor)
        or prompt_ids.dim() != 2
        or prompt_ids.shape[1] == 0
        or prompt_ids.is_floating_point()
        or prompt_ids.dtype == torch.bool
    ):
        got = (
            f"{list(prompt_ids.shape)} ({prompt_ids.dtype})"
            if isinstance(prompt_ids, torch.Tensor)
            else type(prompt_ids).__name__
        )
        raise ValueError(
            "prompt_ids must be an integer tensor of shape [B, N] with N >= 1, got"
            f" {got}"
        )
    if one_prompt and prompt_ids.shape[0] != 1:
        raise ValueError(
            "this decodes one prompt: prompt_ids must have shape [1, N], got"
            f" {list(prompt_ids.shape)}"
        )
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 0
    ):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")


class BigramLM:
    """A toy language model with known probabilities: p(next = b | last = a) = probs[a,
    b].

    Called on ids [B, N] it returns logits [B, N, V] (the log-probabilities), for
    every position, like a transformer. Rows of probs must sum to 1; zeros are
    allowed (logit -inf)."""

    def __init__(self, probs: torch.Tensor):
        if probs.dim() != 2 or probs.shape[0] != probs.shape[1]:
            raise ValueError(
                f"probs must be a square [V, V] table, got {list(probs.shape)}"
            )
        if not torch.allclose(
            probs.sum(-1), torch.ones(len(probs), dtype=probs.dtype), atol=1e-5
        ):
            raise ValueError("each row of probs must sum to 1")
        self.log_probs = probs.log()

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.log_probs.to(ids.device)[ids]


@torch.no_grad()
def greedy_decode(
    model: LanguageModel,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    eos_id: int | None = None,
) -> torch.Tensor:
    """Append the argmax token max_new_tokens times: [B, N] -> [B, N + max_new_tokens]
    (int64).

    model maps ids [B, N] to logits [B, N, V]; the next token is predicted at the
    last position. With eos_id, a row that has produced eos_id is finished and padded
    with eos_id."""
    validate_prompt(prompt_ids, max_new_tokens)
    ids = prompt_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits = model(ids)[:, -1, :]  # the prediction made at the last position
        next_id = logits.argmax(dim=-1)  # [B]
        if eos_id is not None:
            next_id = next_id.masked_fill(done, eos_id)  # a finished row only pads
            done = done | (next_id == eos_id)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
    return ids


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (last dim), set the others to -inf. Same
    shape and dtype.

    Ties with the k-th largest value are kept; k >= V keeps every entry."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    # the k-th largest, per row
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[
        ..., -1:
    ]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep each row's nucleus, the smallest set of most probable tokens with
    probability >= p; set the other logits to -inf. Same shape and dtype; the most
    probable token is always kept."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"p must be a number in (0, 1], got {p!r}")
    if p >= 1:
        return logits.clone()
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.float().softmax(dim=-1)
    above = probs.cumsum(dim=-1) - probs  # the mass ranked above each token
    drop_sorted = above >= p  # the token that crosses p has above < p: kept
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def warp_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The logits that sampling draws from: divided by the temperature (> 0), then top-k
    and top-p filtered (each only if given). softmax(warp_logits(...)) is the
    sampling distribution."""
    if not temperature > 0:
        raise ValueError(
            "temperature must be > 0 here (temperature 0 is greedy decoding), got"
            f" {temperature!r}"
        )
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


@torch.no_grad()
def sample(
    model: LanguageModel,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> torch.Tensor:
    """Sample max_new_tokens tokens: [B, N] -> [B, N + max_new_tokens] (int64), each row
    independently.

    Each step draws from softmax(warp_logits(logits at the last position,
    temperature, top_k, top_p)); temperature=0 takes the argmax (greedy). generator
    (on prompt_ids' device) makes it repeatable. With eos_id, a row that has produced
    eos_id is finished and padded with eos_id."""
    validate_prompt(prompt_ids, max_new_tokens)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    ids = prompt_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits = model(ids)[:, -1, :].float()
        if temperature == 0:
            next_id = logits.argmax(dim=-1)
        else:
            probs = warp_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
            next_id = torch.multinomial(probs, 1, generator=generator)[:, 0]
        if eos_id is not None:
            next_id = next_id.masked_fill(done, eos_id)
            done = done | (next_id == eos_id)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
    return ids


@torch.no_grad()
def exhaustive_search(
    model: LanguageModel,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
    batch_size: int = 4096,
) -> tuple[torch.Tensor, float]:
    """The best continuation of one prompt [1, N] among all V ** max_new_tokens: (ids
    [1, N + L], score).

    A continuation ends at its first eos_id (L counts it) or after max_new_tokens
    tokens, and scores (sum of its L log-probabilities) / L ** length_penalty, as in
    beam_search. Each candidate is scored in one forward pass (teacher forcing). Only
    for toy sizes."""
    validate_prompt(prompt_ids, max_new_tokens, one_prompt=True)
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    N, n = prompt_ids.shape[1], max_new_tokens
    V = model(prompt_ids).shape[-1]
    if V**n > 10_000_000:
        raise ValueError(f"{V} ** {n} = {V ** n:,} continuations is too many to score")
    tokens = torch.arange(V, device=prompt_ids.device)
    # [V^n, n], every continuation
    conts = torch.cartesian_prod(*[tokens] * n).reshape(
        -1, n
    )
    best_score, best = -math.inf, None
    for chunk in conts.split(batch_size):
        full = torch.cat([prompt_ids.expand(len(chunk), -1), chunk], dim=1)
        log_p = (
            model(full)[:, N - 1 : -1]
            .float()
            .log_softmax(-1)
            .gather(-1, chunk[..., None])[..., 0]
        )
        if eos_id is None:
            lengths = torch.full((len(chunk),), n, device=chunk.device)
        else:
            is_eos = chunk == eos_id
            # up to the first eos
            lengths = torch.where(
                is_eos.any(-1), is_eos.int().argmax(-1) + 1, n
            )
        total = log_p.cumsum(-1).gather(-1, (lengths - 1)[:, None])[:, 0]
        scores = total / lengths.float() ** length_penalty
        i = int(scores.argmax())
        if scores[i].item() > best_score:
            best_score, best = scores[i].item(), full[i, : N + int(lengths[i])][None]
    return best, best_score


@torch.no_grad()
def beam_search(
    model: LanguageModel,
    prompt_ids: torch.Tensor,
    beam_width: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
) -> torch.Tensor:
    """Beam search for one prompt [1, N]; returns the best hypothesis [1, N + L]
    (int64).

    Each step keeps the beam_width best candidates (total log-probability) over all
    alive hypotheses x vocabulary. A candidate ending in eos_id is finished and
    leaves the beam; after max_new_tokens steps the alive ones are finished too. The
    winner maximizes (sum of its L log-probabilities) / L ** length_penalty, L =
    number of new tokens (eos included)."""
    validate_prompt(prompt_ids, max_new_tokens, one_prompt=True)
    if (
        isinstance(beam_width, bool)
        or not isinstance(beam_width, int)
        or beam_width < 1
    ):
        raise ValueError(f"beam_width must be an int >= 1, got {beam_width!r}")
    if max_new_tokens < 1:
        raise ValueError("beam search needs max_new_tokens >= 1")
    beams = prompt_ids  # [n_alive, N + t]
    scores = torch.zeros(1, device=prompt_ids.device)  # log P of each alive hypothesis
    finished = []  # (normalized score, ids [N + L])
    for step in range(1, max_new_tokens + 1):
        log_p = model(beams)[:, -1, :].float().log_softmax(dim=-1)  # [n_alive, V]
        V = log_p.shape[-1]
        candidates = (scores[:, None] + log_p).flatten()  # [n_alive * V]
        top = candidates.topk(min(beam_width, candidates.numel()))  # global top-k
        parent, token = top.indices // V, top.indices % V
        beams, scores = torch.cat([beams[parent], token[:, None]], dim=1), top.values
        if eos_id is not None:
            ended = token == eos_id
            finished += [
                (s / step**length_penalty, b)
                for s, b in zip(scores[ended].tolist(), beams[ended])
            ]
            beams, scores = beams[~ended], scores[~ended]
            if len(beams) == 0:
                break
    finished += [
        (s / max_new_tokens**length_penalty, b) for s, b in zip(scores.tolist(), beams)
    ]
    return max(finished, key=lambda f: f[0])[1][None, :]


@torch.no_grad()
def encoder_decoder_lm(
    model, src: torch.Tensor, src_mask: torch.Tensor | None = None
) -> LanguageModel:
    """Encode src [B, S] once; return tgt ids [B, N] -> logits [B, N, V] (the decoder
    against that memory).

    With B = 1 the memory is repeated to any number of rows (the hypotheses of a
    beam)."""
    memory = model.encode(src, src_mask)

    @torch.no_grad()
    def lm(tgt: torch.Tensor) -> torch.Tensor:
        mem, mask = memory, src_mask
        if tgt.shape[0] != mem.shape[0]:
            if mem.shape[0] != 1:
                raise ValueError(
                    f"decoding {tgt.shape[0]} rows against a memory of {mem.shape[0]}"
                    " sources"
                )
            mem = mem.expand(tgt.shape[0], -1, -1)
            mask = None if mask is None else mask.expand(tgt.shape[0], -1)
        return model.decode(tgt, mem, mask)

    return lm


def distinct_n(sequences, n: int) -> float:
    """Diversity: the number of distinct n-grams divided by the number of n-grams, over
    all sequences (lists of tokens or words, or strings for characters)."""
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def repetition_rate(sequence, n: int) -> float:
    """Repetition within one sequence: the fraction of its n-grams that already occurred
    earlier in it."""
    seen, repeats, total = set(), 0, 0
    for i in range(len(sequence) - n + 1):
        gram = tuple(sequence[i : i + n])
        repeats += gram in seen
        seen.add(gram)
        total += 1
    return repeats / max(total, 1)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep the tokens with probability >= min_p * (the top probability of their row);
    the other logits become -inf. Same shape and dtype; the most probable token is
    always kept."""
    if (
        isinstance(min_p, bool)
        or not isinstance(min_p, (int, float))
        or not 0 <= min_p <= 1
    ):
        raise ValueError(f"min_p must be a number in [0, 1], got {min_p!r}")
    probs = logits.float().softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


def repetition_penalty(
    logits: torch.Tensor, prev_ids: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL's penalty: for each token occurring in its row of prev_ids [B, N], a
    positive logit is divided by penalty and a negative one multiplied; logits [B, V]
    -> [B, V], a new tensor."""
    if logits.dim() != 2 or prev_ids.dim() != 2 or prev_ids.shape[0] != logits.shape[0]:
        raise ValueError(
            f"logits must be [B, V] and prev_ids [B, N], got {list(logits.shape)} and"
            f" {list(prev_ids.shape)}"
        )
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, prev_ids, True)
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)
