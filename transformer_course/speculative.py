"""Generated from solutions/13_speculative_sampling.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# Speculative sampling: a small draft model proposes, the target verifies, and what
# comes out follows the target's distribution exactly.
import dataclasses
from dataclasses import asdict

import torch
import torch.nn.functional as F

from transformer_course.decoding import LanguageModel, validate_prompt, warp_logits
from transformer_course.kv_cache import KVCache, forward_cached
from transformer_course.training import (cached, char_corpus, char_windows,
                                         chars_loss, chars_recipe, checkpoint_path,
                                         train)
from transformer_course.transformer import DecoderOnly


def windowed(model: DecoderOnly) -> LanguageModel:
    """The model as a language model over any length: it sees the last max_len ids.
    (Past max_len a verifying call scores earlier positions with a shorter window than
    one-token decoding would: the chapter's sequences stay within max_len.)"""
    return lambda ids: model(ids[:, -model.cfg.max_len:])


def draft_recipe(steps: int = 300):
    """(config, settings) of the draft: chapter 08's recipe, smaller (1 layer,
    d_model 32) and trained for fewer steps."""
    _, cfg, settings = chars_recipe()
    cfg = dataclasses.replace(cfg, d_model=32, n_heads=2, d_ff=128, n_layers=1)
    settings = dataclasses.replace(settings, steps=steps, warmup_steps=steps // 10)
    return cfg, settings


def train_draft(device, steps: int = 300, progress: bool = True) -> DecoderOnly:
    """A small character model (1 layer, d_model 32) trained as chapter 08 trains its
    target, on the same text and tokenizer; returned in eval mode."""
    cfg, settings = draft_recipe(steps)
    _, train_ids, _ = char_corpus()
    torch.manual_seed(settings.seed)
    model = DecoderOnly(cfg)

    def get_batch(step):
        g = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        starts = torch.randint(0, len(train_ids) - cfg.max_len - 1,
                               (settings.batch_size,), generator=g)
        return char_windows(train_ids, starts, cfg.max_len, device)

    train(model, get_batch, chars_loss, settings, device, progress=progress)
    return model.eval()


def load_or_train_draft(device, steps: int = 300, progress: bool = True) -> DecoderOnly:
    """The draft, kept by `training.cached` (the package ships the one trained on a
    CPU): its file name hashes the draft's recipe and the name of the target's
    checkpoint, which hashes the text, the tokenizer, the device and the arithmetic."""
    cfg, settings = draft_recipe(steps)
    recipe = {"config": asdict(cfg), "settings": asdict(settings),
              "target": checkpoint_path("chars", device).name}

    def make():
        return {"state_dict": train_draft(device, steps, progress).state_dict()}

    model = DecoderOnly(cfg)
    model.load_state_dict(cached("draft", recipe, make, device)["state_dict"])
    return model.to(device).eval()


def _shape(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{list(x.shape)} ({x.dtype})"
    return type(x).__name__


def verify_draft(draft_tokens: torch.Tensor, q_probs: torch.Tensor,
                 p_probs: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The tokens one target call emits: the accepted drafts, then one more.

    draft_tokens [gamma] (int64): x_i, drawn from q_probs[i];
    q_probs [gamma, V]: the draft's distributions the tokens were drawn from;
    p_probs [gamma + 1, V]: the target's distributions at those positions, and one
    after. x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)). At the first
    rejection, a token drawn from max(0, p_i - q_i) (normalized) replaces x_i and the
    rest are dropped; if all are accepted, a bonus token is drawn from p_probs[gamma].
    Returns a 1-D int64 tensor of n + 1 tokens (n accepted). All tensors and the
    generator on one device.
    """
    if (not isinstance(draft_tokens, torch.Tensor) or draft_tokens.dim() != 1
            or draft_tokens.is_floating_point()):
        raise ValueError(f"draft_tokens must be a 1-D integer tensor [gamma], "
                         f"got {_shape(draft_tokens)}")
    gamma = len(draft_tokens)
    if (not isinstance(q_probs, torch.Tensor) or q_probs.dim() != 2
            or len(q_probs) != gamma):
        raise ValueError(f"q_probs must have shape [gamma, V] with gamma = {gamma}, "
                         f"got {_shape(q_probs)}")
    if (not isinstance(p_probs, torch.Tensor)
            or tuple(p_probs.shape) != (gamma + 1, q_probs.shape[1])):
        raise ValueError(f"p_probs must have shape [gamma + 1, V] = "
                         f"[{gamma + 1}, {q_probs.shape[1]}], got {_shape(p_probs)}")
    for i in range(gamma):
        x = draft_tokens[i]
        r = torch.rand((), generator=generator, device=p_probs.device)
        if r * q_probs[i, x] < p_probs[i, x]:               # r < p/q: keep the guess
            continue
        residual = (p_probs[i] - q_probs[i]).clamp(min=0)
        if residual.sum() <= 0:                              # p == q up to rounding
            residual = p_probs[i]
        y = torch.multinomial(residual / residual.sum(), 1, generator=generator)
        return torch.cat([draft_tokens[:i], y])
    bonus = torch.multinomial(p_probs[gamma], 1, generator=generator)
    return torch.cat([draft_tokens, bonus])


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """The distribution sampling draws from, float32 on the CPU: softmax of the warped
    logits, or one-hot at the argmax when temperature is 0 (greedy)."""
    logits = logits.detach().float().cpu()
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return warp_logits(logits, temperature, top_k, top_p).softmax(-1)


@torch.no_grad()
def speculative_generate(target: LanguageModel, draft: LanguageModel,
                         prompt_ids: torch.Tensor, max_new_tokens: int, gamma: int = 4,
                         temperature: float = 1.0,
                         generator: torch.Generator | None = None,
                         top_k: int | None = None, top_p: float | None = None,
                         stats: dict | None = None) -> torch.Tensor:
    """Decode max_new_tokens tokens, the draft proposing up to gamma per target call:
    [1, N] -> [1, N + max_new_tokens] (int64).

    A round drafts k = min(gamma, tokens still missing - 1) tokens one by one, each
    drawn from sampling_probs of the draft's logits (its q), calls the target once on
    the sequence and the drafts, and appends what verify_draft returns (at most k + 1
    tokens). The tokens follow the target's distribution softmax(warp_logits(...,
    temperature, top_k, top_p)) exactly; temperature 0 gives the target's greedy
    decoding. generator: a CPU generator (sampling happens on the CPU).
    stats: a dict or None. If given, the call adds its counts to it (a missing key
    counts from 0): "target_calls" (calls of the target), "drafted" (draft tokens
    proposed), "accepted" (drafts kept) and "rejected" (rounds that ended in a
    rejection).
    """
    validate_prompt(prompt_ids, max_new_tokens, one_prompt=True)
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise ValueError(f"gamma must be an int >= 1, got {gamma!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    counts = dict(target_calls=0, drafted=0, accepted=0, rejected=0)
    ids, goal = prompt_ids, prompt_ids.shape[1] + max_new_tokens
    while ids.shape[1] < goal:
        k = min(gamma, goal - ids.shape[1] - 1)     # a call yields up to k + 1 tokens
        seq, q = ids, []
        for _ in range(k):
            q.append(sampling_probs(draft(seq)[0, -1], temperature, top_k, top_p))
            x = torch.multinomial(q[-1], 1, generator=generator)
            seq = torch.cat([seq, x.to(seq.device)[None]], dim=1)
        p = sampling_probs(target(seq)[0, -(k + 1):], temperature, top_k, top_p)
        q = torch.stack(q) if q else p.new_zeros(0, p.shape[-1])
        new = verify_draft(seq[0, ids.shape[1]:].cpu(), q, p, generator)
        ids = torch.cat([ids, new.to(ids.device)[None]], dim=1)
        counts["target_calls"] += 1
        counts["drafted"] += k
        counts["accepted"] += len(new) - 1
        counts["rejected"] += int(len(new) <= k)       # the last token replaced a draft
    if stats is not None:
        for key, n in counts.items():
            stats[key] = stats.get(key, 0) + n
    return ids                                   # k <= missing - 1: never past goal


def toy_pair(vocab_size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bigram tables (target p, draft q) [V, V], rows summing to 1, related."""
    g = torch.Generator().manual_seed(seed)
    shape = (vocab_size, vocab_size)
    base = torch.rand(shape, generator=g, dtype=torch.float64) ** 2 + 0.02
    noise = torch.rand(shape, generator=g, dtype=torch.float64) ** 2
    p, q = base, base + noise
    return p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)


def chain_marginals(probs: torch.Tensor, first: int, steps: int) -> torch.Tensor:
    """[steps, V]: the distribution of each next token of a bigram chain."""
    x = F.one_hot(torch.tensor(first), probs.shape[0]).to(probs.dtype)
    out = []
    for _ in range(steps):
        x = x @ probs
        out.append(x)
    return torch.stack(out)


class CachedLM:
    """A DecoderOnly as a language model whose KV cache (chapter 10) lives across calls.

    A call feeds only the ids after the longest prefix the cache holds, once the cache
    is cropped back to that prefix (ids that changed, such as rejected drafts, are
    dropped), and returns the logits of the fed positions, [1, N_fed, |V|]: read them
    from the end. Positions must stay below the model's max_len. `fed` counts the
    positions computed, `calls` the forward passes. For another model, override
    `forward` (its cached forward pass)."""

    def __init__(self, model: DecoderOnly):
        self.model, self.cache = model, KVCache(len(model.layers))
        self.seen, self.fed, self.calls = None, 0, 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return forward_cached(self.model, ids, self.cache)

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        keep = 0
        if self.seen is not None:
            n = min(len(self.cache), ids.shape[1] - 1)   # feed at least one position
            same = self.seen[0, :n] == ids[0, :n]
            keep = n if bool(same.all()) else int(same.long().argmin())
        self.cache.crop(keep)                             # forget what was rejected
        self.seen, self.fed = ids, self.fed + ids.shape[1] - keep
        self.calls += 1
        return self.forward(ids[:, keep:])


def acceptance_rate(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_x min(p(x), q(x)) over the last dimension: p, q [..., V] -> [...]."""
    if (not isinstance(p, torch.Tensor) or not isinstance(q, torch.Tensor)
            or p.shape != q.shape):
        raise ValueError(f"p and q must be tensors of the same shape [..., V], got "
                         f"{_shape(p)} and {_shape(q)}")
    return torch.minimum(p, q).sum(-1)


def expected_tokens(alpha: float, gamma: int) -> float:
    """1 + alpha + ... + alpha**gamma: tokens per target call at acceptance alpha."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if alpha == 1:
        return float(gamma + 1)
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)
