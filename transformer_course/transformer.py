"""Generated from solutions/07_encoder_decoder.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# The encoder, the decoder and the two models built from them: encoder-decoder and
# decoder-only.
import math
from dataclasses import dataclass

import torch
from torch import nn

from transformer_course.attention import causal_mask
from transformer_course.blocks import residual
from transformer_course.ffn import FeedForward
from transformer_course.multihead import MultiHeadAttention
from transformer_course.positions import sinusoidal_positions


@dataclass
class TransformerConfig:
    # one vocabulary and one embedding table for source and target; lm_head is separate
    vocab_size: int
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    n_layers: int = 2  # per stack: the encoder and the decoder have n_layers each
    max_len: int = 256  # longest sequence the position table covers
    dropout: float = 0.0
    norm_first: bool = True  # Pre-Norm; False is the 2017 paper's Post-Norm
    activation: str = "relu"  # the FFN's nonlinearity: "relu" or "gelu"

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model = {self.d_model} is not divisible by n_heads = {self.n_heads}"
            )
        if self.d_model % 2:
            raise ValueError(
                "d_model must be even (the sinusoidal table pairs dimensions), got"
                f" {self.d_model}"
            )


class EncoderLayer(nn.Module):
    """Self-attention over the whole source, then the FFN; each sublayer with residual
    and LayerNorm.

    EncoderLayer(d_model, n_heads, d_ff, norm_first=True, dropout=0.0,
    activation="relu"), parts
    self_attn, ffn, norm1, norm2, drop. forward(x [B, S, D], mask: bool, True = may
    attend, e.g. a
    padding mask [B, 1, S]) -> [B, S, D].
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        norm_first: bool = True,
        dropout: float = 0.0,
        activation: str = "relu",
    ):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.ffn = FeedForward(d_model, d_ff, activation)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = residual(
            x,
            lambda h: self.self_attn(h, mask=mask),
            self.norm1,
            self.drop,
            self.norm_first,
        )
        return residual(x, self.ffn, self.norm2, self.drop, self.norm_first)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder's output (memory), then the
    FFN.

    DecoderLayer(d_model, n_heads, d_ff, norm_first=True, dropout=0.0,
    activation="relu"), parts
    self_attn, cross_attn, ffn, norm1, norm2, norm3, drop. Cross-attention takes its
    queries from the
    decoder and its keys and values from memory, projected by this layer's own w_k and
    w_v.
    forward(x [B, T, D], memory [B, S, D], self_mask [T, T], memory_mask [B, 1, S]) ->
    [B, T, D].
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        norm_first: bool = True,
        dropout: float = 0.0,
        activation: str = "relu",
    ):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.cross_attn = MultiHeadAttention(d_model, n_heads)
        self.ffn = FeedForward(d_model, d_ff, activation)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        self_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = residual(
            x,
            lambda h: self.self_attn(h, mask=self_mask),
            self.norm1,
            self.drop,
            self.norm_first,
        )
        x = residual(
            x,
            lambda h: self.cross_attn(h, memory, mask=memory_mask),
            self.norm2,
            self.drop,
            self.norm_first,
        )
        return residual(x, self.ffn, self.norm3, self.drop, self.norm_first)


class Embedding(nn.Module):
    """Token embedding scaled by sqrt(d_model), plus the sinusoidal position table, then
    dropout."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # std 1/sqrt(d_model), as the paper's table shared with the output layer: times
        # sqrt(d_model) the token entries have size ~1, like the positions they are
        # added to (nn.Embedding's N(0, 1) would make them sqrt(d_model) times larger).
        nn.init.normal_(self.tok.weight, std=cfg.d_model**-0.5)
        self.register_buffer(
            "pos", sinusoidal_positions(cfg.max_len, cfg.d_model), persistent=False
        )
        self.drop, self.scale = nn.Dropout(cfg.dropout), math.sqrt(cfg.d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[-1] > self.pos.shape[0]:
            raise ValueError(
                f"sequence of length {ids.shape[-1]} is longer than "
                f"max_len = {self.pos.shape[0]}"
            )
        return self.drop(self.tok(ids) * self.scale + self.pos[: ids.shape[-1]])


def _layers(cls, cfg: TransformerConfig) -> nn.ModuleList:
    return nn.ModuleList(
        cls(
            cfg.d_model,
            cfg.n_heads,
            cfg.d_ff,
            cfg.norm_first,
            cfg.dropout,
            cfg.activation,
        )
        for _ in range(cfg.n_layers)
    )


def _final_norm(cfg: TransformerConfig) -> nn.Module:
    # Pre-Norm leaves the residual stream unnormalized, so the stack ends with one more
    # LayerNorm.
    return nn.LayerNorm(cfg.d_model) if cfg.norm_first else nn.Identity()


def _check_ids(ids, name: str, length: str) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        got = (
            f"{ids.dtype} of shape {list(ids.shape)}"
            if isinstance(ids, torch.Tensor)
            else type(ids).__name__
        )
        raise ValueError(
            f"{name} must be token ids, an integer tensor [B, {length}], got {got}"
        )


def _check_src_mask(src_mask, B: int, S: int) -> None:
    if src_mask is not None and (
        src_mask.dtype != torch.bool or tuple(src_mask.shape) != (B, S)
    ):
        raise ValueError(
            f"src_mask must be bool [B, S] = {[B, S]}, True at real source tokens; got "
            f"{src_mask.dtype} of shape {list(src_mask.shape)}"
        )


def shift_right(targets: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Decoder input for teacher forcing: [B, T] -> [B, T], bos_id first, targets[:,
    :-1] after it."""
    if targets.dim() != 2:
        raise ValueError(f"targets must have shape [B, T], got {list(targets.shape)}")
    bos = torch.full_like(targets[:, :1], bos_id)
    return torch.cat([bos, targets[:, :-1]], dim=1)


class EncoderDecoder(nn.Module):
    """The encoder-decoder transformer: encode(src) once, decode(tgt, memory) -> logits
    [B, T, vocab_size].

    EncoderDecoder(cfg: TransformerConfig), parts embed, encoder, decoder, enc_norm,
    dec_norm, lm_head.
    src_mask: bool [B, S], True at real source tokens (padding = False). The decoder is
    causal.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.encoder, self.decoder = _layers(EncoderLayer, cfg), _layers(
            DecoderLayer, cfg
        )
        self.enc_norm, self.dec_norm = _final_norm(cfg), _final_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def encode(
        self, src: torch.Tensor, src_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        _check_ids(src, "src", "S")
        _check_src_mask(src_mask, *src.shape)
        mask = (
            None if src_mask is None else src_mask[:, None, :]
        )  # [B, 1, S]: hide padded keys
        x = self.embed(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x)

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _check_ids(tgt, "tgt", "T")
        if memory.dim() != 3 or memory.shape[0] != tgt.shape[0]:
            raise ValueError(
                f"memory must be [B, S, d_model] with B = {tgt.shape[0]} (tgt's batch),"
                f" got {list(memory.shape)}"
            )
        _check_src_mask(src_mask, *memory.shape[:2])
        memory_mask = None if src_mask is None else src_mask[:, None, :]
        self_mask = causal_mask(tgt.shape[1]).to(tgt.device)
        x = self.embed(tgt)
        for layer in self.decoder:
            x = layer(x, memory, self_mask, memory_mask)
        return self.lm_head(self.dec_norm(x))

    def forward(
        self, src: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.decode(tgt, self.encode(src, src_mask), src_mask)


class DecoderOnly(nn.Module):
    """A GPT-style language model: a stack of causal self-attention layers, ids [B, T]
    -> logits [B, T, vocab_size]."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.layers = _layers(
            EncoderLayer, cfg
        )  # a decoder-only layer is an encoder layer with a causal mask
        self.norm = _final_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _check_ids(ids, "ids", "T")
        x, mask = self.embed(ids), causal_mask(ids.shape[1]).to(ids.device)
        for layer in self.layers:
            x = layer(x, mask)
        return self.lm_head(self.norm(x))


def prefix_lm_mask(n_prefix: int, n: int) -> torch.Tensor:
    """Bool [n, n]: True where query i may see key j: every query sees the prefix (j <
    n_prefix), and
    beyond it the mask is causal (j <= i)."""
    if not 0 <= n_prefix <= n:
        raise ValueError(f"need 0 <= n_prefix <= n, got n_prefix={n_prefix}, n={n}")
    return causal_mask(n) | (torch.arange(n) < n_prefix)[None, :]


def count_parameters(cfg: TransformerConfig, decoder_only: bool = False) -> int:
    """Parameters of EncoderDecoder(cfg), or of DecoderOnly(cfg) when decoder_only, by
    formula."""
    d, f, V, L = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
    attention, ffn, norm = 4 * (d * d + d), 2 * d * f + f + d, 2 * d
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    final = norm if cfg.norm_first else 0
    ends = V * d + (d * V + V)  # embedding table, lm_head
    if decoder_only:
        return ends + L * encoder_layer + final
    return ends + L * (encoder_layer + decoder_layer) + 2 * final
