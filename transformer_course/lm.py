"""Generated from solutions/18_modern_lm.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# A modern small language model, end to end: Python's own documentation as data, a BPE
# tokenizer, a decoder-only model whose every part is a config field (the 2017 recipe
# and the modern one are two configs), training, cached generation, and the mapping
# from a Hugging Face Llama state dict.
import hashlib
import math
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from transformer_course import speculative
from transformer_course.blocks import RMSNorm
from transformer_course.ffn import FeedForward, SwiGLU, swiglu_d_ff
from transformer_course.gqa import repeat_kv
from transformer_course.kv_cache import KVCache, decode_mask
from transformer_course.long_attention import window_mask
from transformer_course.positions import (half_split_permutation, rotate_pairs,
                                          sinusoidal_positions)
from transformer_course.tokens import (bpe_decode, bpe_encode, load_corpus, train_bpe,
                                       vocab_bytes)
from transformer_course.training import TrainSettings, cached, train

LM_VERSION = 1  # part of every cached recipe: raise it when a change alters results


def load_topics() -> dict[str, str]:
    """{topic: text}: the 79 help topics of pydoc_data.topics (Python's own reference
    documentation, about 465,000 characters). Where pydoc_data is missing, the
    standard library's docstrings (tokens.load_corpus) cut into 40 pseudo-topics."""
    try:
        from pydoc_data.topics import topics
        return dict(sorted(topics.items()))
    except ImportError:
        paragraphs = load_corpus().split("\n\n")
        return {f"docstrings-{i:02d}": "\n\n".join(paragraphs[i::40])
                for i in range(40)}


def split_topics(topics: dict[str, str], every: int = 10) -> tuple[str, str]:
    """(train_text, val_text): a fixed split BY TOPIC, so that validation text is never
    a neighbour of training text. Topics in sorted order; every `every`-th one
    (indices every//2, every//2 + every, ...) is validation. Texts joined by blank
    lines."""
    names = sorted(topics)
    val = {n for i, n in enumerate(names) if i % every == every // 2}
    join = lambda keep: "\n\n".join(topics[n].strip() for n in names if keep(n))
    return join(lambda n: n not in val), join(lambda n: n in val)


def bits_per_byte(loss_nats_per_token: float, n_tokens: int, n_bytes: int) -> float:
    """Cross-entropy in bits per byte of UTF-8 text: the total loss (nats per token
    times tokens) over ln 2 times the bytes. Unlike nats per token it does not depend
    on the tokenizer: a larger vocabulary has fewer, harder tokens for the same
    text."""
    return loss_nats_per_token * n_tokens / (math.log(2) * n_bytes)


class Tokenizer:
    """Chapter 01's byte-level BPE with a given merge table: encode, decode,
    vocab_size, and token_bytes [vocab_size] (how many bytes each token stands for)."""

    def __init__(self, merges: dict[tuple[int, int], int]):
        self.merges = merges
        self.vocab_size = 256 + len(merges)
        vocab = vocab_bytes(merges)
        self.token_bytes = torch.tensor([len(vocab[i]) for i in range(self.vocab_size)])

    def encode(self, text: str) -> list[int]:
        return bpe_encode(text, self.merges)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return bpe_decode(ids, self.merges)


def corpus_digest() -> str:
    train_text, val_text = split_topics(load_topics())
    return hashlib.sha256((train_text + "\0" + val_text).encode()).hexdigest()[:16]


def lm_data(vocab_size: int) -> dict:
    """The corpus tokenized with a BPE of vocab_size trained on the training split
    (cached by recipe): {"tokenizer": Tokenizer, "train", "val": int64 ids,
    "train_bytes", "val_bytes": UTF-8 bytes of each split}."""
    def make():
        train_text, val_text = split_topics(load_topics())
        merges = train_bpe(train_text, vocab_size)
        return {"merges": torch.tensor(list(merges), dtype=torch.int64).reshape(-1, 2),
                "train": torch.tensor(bpe_encode(train_text, merges),
                                      dtype=torch.int16),
                "val": torch.tensor(bpe_encode(val_text, merges), dtype=torch.int16),
                "train_bytes": len(train_text.encode()),
                "val_bytes": len(val_text.encode())}

    recipe = {"code": LM_VERSION, "vocab_size": vocab_size, "corpus": corpus_digest()}
    payload = cached("lm-data", recipe, make)
    merges = {tuple(p): 256 + i for i, p in enumerate(payload["merges"].tolist())}
    return {"tokenizer": Tokenizer(merges), "train": payload["train"].long(),
            "val": payload["val"].long(), "train_bytes": payload["train_bytes"],
            "val_bytes": payload["val_bytes"]}


@dataclass
class LMConfig:
    vocab_size: int = 512
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2          # = n_heads: multi-head attention; 1: multi-query
    d_ff: int | None = None      # None: swiglu_d_ff(d_model, 32), or 4 d_model for relu
    max_seq_len: int = 128
    norm: str = "rms"            # "rms" | "layer"
    norm_position: str = "pre"   # "pre": x + f(norm(x)) | "post": norm(x + f(x))
    positions: str = "rope"      # "rope" | "learned" | "sinusoidal"
    ffn: str = "swiglu"          # "swiglu" | "relu"
    window: int | None = None    # sliding-window attention over the last `window` keys
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self):
        choices = {"norm": ("rms", "layer"), "norm_position": ("pre", "post"),
                   "positions": ("rope", "learned", "sinusoidal"),
                   "ffn": ("swiglu", "relu")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, "
                                 f"got {getattr(self, field)!r}")
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"need d_model divisible by n_heads and n_heads by "
                             f"n_kv_heads, got {self.d_model}, {self.n_heads}, "
                             f"{self.n_kv_heads}")
        if self.d_model // self.n_heads % 2:
            raise ValueError("d_head = d_model / n_heads must be even (RoPE pairs)")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_width(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.ffn == "swiglu":
            return swiglu_d_ff(self.d_model, 32)
        return 4 * self.d_model


def recipe_2017(cfg: LMConfig) -> LMConfig:
    """cfg with the choices of Vaswani et al. (2017): post-norm LayerNorm, learned
    positions, a ReLU FFN of width 4 d_model, full multi-head attention."""
    return replace(cfg, norm="layer", norm_position="post", positions="learned",
                   ffn="relu", n_kv_heads=cfg.n_heads, d_ff=None)


def make_norm(cfg: LMConfig) -> nn.Module:
    if cfg.norm == "rms":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


def make_ffn(cfg: LMConfig) -> nn.Module:
    if cfg.ffn == "swiglu":
        return SwiGLU(cfg.d_model, cfg.ffn_width)
    return FeedForward(cfg.d_model, cfg.ffn_width, "relu")


def rope_tables(cfg: LMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 [max_seq_len, d_head / 2] of the RoPE angles p / theta^(2i/d),
    computed as Llama computes them (inv_freq = 1 / theta^(2i/d) in float32), so that
    the tables agree bit for bit with transformers'."""
    d = cfg.d_head
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64)
                                         .float() / d))
    angles = torch.arange(cfg.max_seq_len).float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


class Attention(nn.Module):
    """Causal self-attention with n_heads query heads sharing n_kv_heads K/V heads,
    RoPE on queries and keys, an optional KV cache and sliding window.

    w_q: d_model -> n_heads d_head; w_k, w_v: d_model -> n_kv_heads d_head; w_o:
    n_heads d_head -> d_model; no biases. forward(x [B, N, d_model], rope=(cos, sin)
    [N, d_head/2] of the N positions or None, cache=KVCache or None, layer=index in
    the cache) -> [B, N, d_model]."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg, H, G, d = cfg, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.w_q = nn.Linear(cfg.d_model, H * d, bias=False)
        self.w_k = nn.Linear(cfg.d_model, G * d, bias=False)
        self.w_v = nn.Linear(cfg.d_model, G * d, bias=False)
        self.w_o = nn.Linear(H * d, cfg.d_model, bias=False)

    def forward(self, x, rope=None, cache=None, layer: int = 0):
        cfg, (B, N, _) = self.cfg, x.shape
        H, G, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        q = self.w_q(x).view(B, N, H, d).transpose(1, 2)     # [B, H, N, d]: heads first
        k = self.w_k(x).view(B, N, G, d).transpose(1, 2)     # [B, G, N, d]
        v = self.w_v(x).view(B, N, G, d).transpose(1, 2)
        if rope is not None:                                 # queries and keys only
            q, k = rotate_pairs(q, *rope), rotate_pairs(k, *rope)
        if cache is not None:                                # keys of earlier tokens
            k, v = cache.update(layer, k, v)
        n_k = k.shape[-2]                                    # the new queries are last:
        mask = (decode_mask(N, n_k) if cfg.window is None    # bottom-right alignment
                else window_mask(N, n_k, cfg.window)).to(x.device)
        k, v = repeat_kv(k, H // G), repeat_kv(v, H // G)    # head h: K/V h // (H/G)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.w_o(o.transpose(1, 2).reshape(B, N, H * d))


class Block(nn.Module):
    """One decoder block: attention then FFN, each in a residual connection with its
    norm. Pre-norm: x + f(norm(x)); post-norm (2017): norm(x + f(x)).

    Parts attn_norm, attn (Attention), ffn_norm, ffn (SwiGLU or FeedForward).
    forward(x, rope=None, cache=None, layer=0) as Attention's."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.pre = cfg.norm_position == "pre"
        self.attn_norm, self.attn = make_norm(cfg), Attention(cfg)
        self.ffn_norm, self.ffn = make_norm(cfg), make_ffn(cfg)

    def forward(self, x, rope=None, cache=None, layer: int = 0):
        attend = lambda h: self.attn(h, rope, cache, layer)
        if self.pre:
            x = x + attend(self.attn_norm(x))
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + attend(x))
        return self.ffn_norm(x + self.ffn(x))


class LM(nn.Module):
    """The decoder-only language model of cfg: token embedding (+ learned or sinusoidal
    positions, or RoPE inside attention), n_layers Blocks, a final norm (pre-norm
    only), and the head to vocabulary logits (the embedding matrix itself when
    tie_embeddings).

    Parts embed, pos (learned positions only), layers, norm, head.
    forward(ids [B, N], cache=None, hidden=None) -> logits [B, N, vocab_size] of the N
    new tokens, which come after the len(cache) cached ones. hidden: a list to which
    the residual stream is appended (after the embedding and after each block)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.positions == "learned":
            self.pos = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        if cfg.positions == "sinusoidal":
            self.register_buffer(
                "pe", sinusoidal_positions(cfg.max_seq_len, cfg.d_model), False)
        if cfg.positions == "rope":
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, False)
            self.register_buffer("rope_sin", sin, False)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight       # one matrix, two uses
        self.apply(self._init)

    def _init(self, m):
        """nanoGPT's initialization: N(0, 0.02) weights, zero biases, and the
        projections back into the residual stream scaled by 1/sqrt(2 n_layers)."""
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        for name in ("w_o", "w_2"):
            if isinstance(getattr(m, name, None), nn.Linear):
                nn.init.normal_(getattr(m, name).weight,
                                std=0.02 / math.sqrt(2 * self.cfg.n_layers))

    def forward(self, ids, cache=None, hidden=None):
        cfg, (B, N) = self.cfg, ids.shape
        start = 0 if cache is None else len(cache)
        if start + N > cfg.max_seq_len:
            raise ValueError(f"positions up to {start + N} exceed max_seq_len = "
                             f"{cfg.max_seq_len}")
        positions = torch.arange(start, start + N, device=ids.device)
        x, rope = self.embed(ids), None
        if cfg.positions == "learned":
            x = x + self.pos(positions)
        if cfg.positions == "sinusoidal":
            x = x + self.pe[positions]
        if cfg.positions == "rope":
            rope = self.rope_cos[positions], self.rope_sin[positions]
        if hidden is not None:
            hidden.append(x)
        for i, block in enumerate(self.layers):
            x = block(x, rope, cache, i)
            if hidden is not None:
                hidden.append(x)
        return self.head(self.norm(x))


def first_divergence(ours: list, theirs: list, atol: float, rtol: float = 0.0):
    """(index, difference) of the first pair of hidden states (0: the embedding, i + 1:
    after block i) that differ by more than atol + rtol |theirs|; (None, the largest
    difference) when all agree."""
    worst = 0.0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        err = (a.double() - b.double()).abs()
        if (err > atol + rtol * b.double().abs()).any():
            return i, err.max().item()
        worst = max(worst, err.max().item())
    return None, worst


def n_params(model: nn.Module) -> int:
    """Parameters, a tied matrix counted once."""
    return sum(p.numel() for p in model.parameters())


def kv_bytes_per_token(cfg: LMConfig, bytes_per_element: int = 4) -> int:
    """The KV cache's bytes per token, counted: a key and a value of n_kv_heads heads
    of d_head in every layer."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.d_head * bytes_per_element


def from_hf_llama(state_dict: dict, cfg: LMConfig) -> dict:
    """A LlamaForCausalLM state dict (transformers' names) -> this LM's state dict.

    Llama's RoPE turns the pairs (i, i + d_head/2) of each head ("rotate half"); ours
    turns (2i, 2i + 1). So the rows of W_Q and W_K are permuted within each head by
    chapter 02's half_split_permutation, which makes the two rotations agree."""
    H, G, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    perm = half_split_permutation(d)

    def heads(w, n):                        # [n * d, D]: rows reordered in each head
        return w.reshape(n, d, -1)[:, perm].reshape(n * d, -1)

    sd = {"embed.weight": state_dict["model.embed_tokens.weight"],
          "norm.weight": state_dict["model.norm.weight"],
          "head.weight": state_dict.get("lm_head.weight",
                                        state_dict["model.embed_tokens.weight"])}
    for i in range(cfg.n_layers):
        hf, us = f"model.layers.{i}.", f"layers.{i}."
        sd[us + "attn_norm.weight"] = state_dict[hf + "input_layernorm.weight"]
        sd[us + "ffn_norm.weight"] = state_dict[hf + "post_attention_layernorm.weight"]
        q, k = state_dict[hf + "self_attn.q_proj.weight"], state_dict[
            hf + "self_attn.k_proj.weight"]
        sd[us + "attn.w_q.weight"] = heads(q, H)
        sd[us + "attn.w_k.weight"] = heads(k, G)
        sd[us + "attn.w_v.weight"] = state_dict[hf + "self_attn.v_proj.weight"]
        sd[us + "attn.w_o.weight"] = state_dict[hf + "self_attn.o_proj.weight"]
        sd[us + "ffn.w_1.weight"] = state_dict[hf + "mlp.gate_proj.weight"]
        sd[us + "ffn.w_3.weight"] = state_dict[hf + "mlp.up_proj.weight"]
        sd[us + "ffn.w_2.weight"] = state_dict[hf + "mlp.down_proj.weight"]
    return sd


@torch.no_grad()
def evaluate_bpb(model: LM, ids: torch.Tensor, token_bytes: torch.Tensor,
                 max_windows: int | None = None) -> float:
    """Bits per byte of model on ids: non-overlapping windows of max_seq_len + 1 tokens
    (the first max_windows of them, or all), each token scored given the ones before it
    in its window; the bytes are those of the scored tokens."""
    device, n = next(model.parameters()).device, model.cfg.max_seq_len
    windows = ids[: (len(ids) - 1) // n * n + 1]
    x = windows[:-1].view(-1, n)[:max_windows]
    y = windows[1:].view(-1, n)[:max_windows]
    was_training = model.training
    model.eval()
    nats = sum(F.cross_entropy(model(xb.to(device)).flatten(0, 1).float(),
                               yb.to(device).flatten(), reduction="sum").item()
               for xb, yb in zip(x.split(32), y.split(32)))
    model.train(was_training)
    return nats / (math.log(2) * token_bytes[y].sum().item())


def train_lm(cfg: LMConfig, tokens: int, seed: int = 0, batch_size: int = 16,
             max_lr: float = 3e-3, eval_every: int = 50, device="cpu",
             progress: bool = True) -> tuple[LM, dict]:
    """Train LM(cfg) on the corpus for `tokens` training tokens (batch_size windows of
    max_seq_len per step) with chapter 08's train: AdamW, linear warmup (5 %) then
    cosine to max_lr / 10. Cached by recipe (training.cached): trains once. Returns
    (model in eval mode on device, history): history "step", "tokens", "val_bpb",
    "cpu_s", "wall_s" at every eval (step 0, every eval_every steps, the end), and
    "loss" at every step."""
    recipe = {"code": LM_VERSION, "config": asdict(cfg), "tokens": tokens,
              "seed": seed, "batch_size": batch_size, "max_lr": max_lr,
              "eval_every": eval_every, "corpus": corpus_digest()}

    # Always the package's code, even where a notebook defines its own LM: what the
    # chapter trains and caches never depends on a learner's answer.
    from transformer_course import lm as course

    def make():
        data = course.lm_data(cfg.vocab_size)
        train_ids, val_ids = data["train"], data["val"]
        token_bytes, n = data["tokenizer"].token_bytes, cfg.max_seq_len
        steps = max(1, tokens // (batch_size * n))
        settings = TrainSettings(steps=steps, batch_size=batch_size, max_lr=max_lr,
                                 min_lr=max_lr / 10, warmup_steps=max(1, steps // 20),
                                 seed=seed)
        torch.manual_seed(seed)
        model = course.LM(cfg).to(device)
        history = {"step": [], "tokens": [], "val_bpb": [], "cpu_s": [], "wall_s": []}
        t0 = time.process_time(), time.perf_counter()

        def log(step):
            history["step"].append(step)
            history["tokens"].append(step * batch_size * n)
            history["cpu_s"].append(time.process_time() - t0[0])
            history["wall_s"].append(time.perf_counter() - t0[1])
            history["val_bpb"].append(course.evaluate_bpb(model, val_ids, token_bytes))

        def get_batch(step):
            if step % eval_every == 0:
                log(step)
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            starts = torch.randint(0, len(train_ids) - n - 1, (batch_size,),
                                   generator=g)
            w = torch.stack([train_ids[s: s + n + 1] for s in starts.tolist()])
            return w[:, :-1].to(device), w[:, 1:].to(device)

        def loss_fn(m, batch):
            logits = m(batch[0])
            return F.cross_entropy(logits.flatten(0, 1).float(), batch[1].flatten())

        losses = train(model, get_batch, loss_fn, settings, device, progress=progress)
        log(steps)
        history["loss"] = losses["loss"]
        return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                "history": history}

    payload = cached("lm", recipe, make, device)
    model = course.LM(cfg)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload["history"]


@torch.no_grad()
def generate(model: LM, ids: torch.Tensor, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Append max_new_tokens tokens to ids [B, N] with a KV cache: one forward pass over
    the prompt (prefill), then one per new token. temperature 0: greedy; else sample
    (on the CPU, with generator) from softmax(logits / temperature), top_k most likely
    only if given. -> [B, N + max_new_tokens]."""
    if ids.shape[1] + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"{ids.shape[1]} + {max_new_tokens} tokens exceed max_seq_len "
                         f"= {model.cfg.max_seq_len}")
    cache, out, new = KVCache(model.cfg.n_layers), ids, ids
    for _ in range(max_new_tokens):
        logits = model(new, cache)[:, -1].float().cpu()
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        new = nxt.to(ids.device)
        out = torch.cat([out, new], dim=1)
    return out


class CachedLM(speculative.CachedLM):
    """Chapter 13's CachedLM for an LM, whose forward pass takes the cache itself: a
    language model ids [1, N] -> logits of the fed positions, its KV cache kept across
    calls and cropped after rejections (`fed`: positions computed, `calls`: passes)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, self.cache)


# The chapter's two trained models: the main one and the draft for speculative
# decoding, on the same tokenizer (vocab 512).
MAIN = LMConfig(vocab_size=512, d_model=128, n_layers=3, n_heads=4, n_kv_heads=2,
                max_seq_len=128)
MAIN_TOKENS = 1_500_000
DRAFT = LMConfig(vocab_size=512, d_model=64, n_layers=1, n_heads=2, n_kv_heads=1,
                 max_seq_len=128)
DRAFT_TOKENS = 1_000_000


def load_main(device="cpu", progress: bool = True) -> tuple[LM, dict]:
    """The chapter's main model and its history (trained once, cached and shipped)."""
    return train_lm(MAIN, MAIN_TOKENS, device=device, progress=progress)


def load_draft(device="cpu", progress: bool = True) -> tuple[LM, dict]:
    """The draft model for speculative decoding (trained once, cached and shipped)."""
    return train_lm(DRAFT, DRAFT_TOKENS, device=device, progress=progress)
