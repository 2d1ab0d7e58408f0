"""Chapter 07 (encoder, decoder, encoder-decoder): the exercises, their checks, and plausible wrong answers.

Each wrong answer is the solution with one mistake, made by subclassing the exported class and
overriding the method where the mistake lives.
"""

import torch
from torch import nn

from exercises._case import Exercise
from transformer_course import transformer as T
from transformer_course.attention import causal_mask
from transformer_course.blocks import residual
from transformer_course.checks import transformer as checks
from transformer_course.multihead import MultiHeadAttention


# --- EncoderLayer ------------------------------------------------------------------------------

class EncoderLayer(T.EncoderLayer):
    """Base for the wrong answers: the solution's parts, a forward to override."""


class EncoderIgnoresMask(EncoderLayer):
    def forward(self, x, mask=None):
        x = residual(x, lambda h: self.self_attn(h), self.norm1, self.drop, self.norm_first)
        return residual(x, self.ffn, self.norm2, self.drop, self.norm_first)


class EncoderAlwaysPreNorm(EncoderLayer):
    def forward(self, x, mask=None):
        x = x + self.self_attn(self.norm1(x), mask=mask)
        return x + self.ffn(self.norm2(x))


class EncoderNoResidual(EncoderLayer):
    def forward(self, x, mask=None):
        if self.norm_first:
            x = self.self_attn(self.norm1(x), mask=mask)
            return self.ffn(self.norm2(x))
        x = self.norm1(self.self_attn(x, mask=mask))
        return self.norm2(self.ffn(x))


class EncoderOneNorm(EncoderLayer):
    def forward(self, x, mask=None):
        x = residual(x, lambda h: self.self_attn(h, mask=mask), self.norm1, self.drop, self.norm_first)
        return residual(x, self.ffn, self.norm1, self.drop, self.norm_first)


class EncoderFfnFirst(EncoderLayer):
    def forward(self, x, mask=None):
        x = residual(x, self.ffn, self.norm2, self.drop, self.norm_first)
        return residual(x, lambda h: self.self_attn(h, mask=mask), self.norm1, self.drop, self.norm_first)


class EncoderRenamed(nn.Module):
    """Right computation, but its own names: the weights cannot be found."""

    def __init__(self, d_model, n_heads, d_ff, norm_first=True, dropout=0.0, activation="relu"):
        super().__init__()
        self.inner = T.EncoderLayer(d_model, n_heads, d_ff, norm_first, dropout, activation)

    def forward(self, x, mask=None):
        return self.inner(x, mask)


def _residual_drop(where):
    """residual() with dropout misplaced: on the residual stream, on the sublayer's input, or nowhere."""
    def res(x, f, norm, drop, norm_first):
        if where == "stream":
            return drop(x + f(norm(x))) if norm_first else drop(norm(x + f(x)))
        if where == "input":
            return x + f(drop(norm(x))) if norm_first else norm(x + f(drop(x)))
        return x + f(norm(x)) if norm_first else norm(x + f(x))
    return res


def _encoder_with(res):
    class Enc(EncoderLayer):
        def forward(self, x, mask=None):
            x = res(x, lambda h: self.self_attn(h, mask=mask), self.norm1, self.drop, self.norm_first)
            return res(x, self.ffn, self.norm2, self.drop, self.norm_first)
    return Enc


class EncoderInPlace(EncoderLayer):
    def forward(self, x, mask=None):
        x += self.drop(self.self_attn(self.norm1(x), mask=mask)) if self.norm_first else 0
        return super().forward(x, mask) if not self.norm_first else x + self.drop(self.ffn(self.norm2(x)))


class EncoderFunctionalDropout(EncoderLayer):
    def forward(self, x, mask=None):
        drop = lambda t: nn.functional.dropout(t, self.drop.p, training=True)
        x = residual(x, lambda h: self.self_attn(h, mask=mask), self.norm1, drop, self.norm_first)
        return residual(x, self.ffn, self.norm2, drop, self.norm_first)


EncoderDropStream = _encoder_with(_residual_drop("stream"))
EncoderDropInput = _encoder_with(_residual_drop("input"))
EncoderNoDropout = _encoder_with(_residual_drop(None))

for _cls in (EncoderIgnoresMask, EncoderAlwaysPreNorm, EncoderNoResidual, EncoderOneNorm, EncoderFfnFirst,
             EncoderRenamed, EncoderInPlace, EncoderFunctionalDropout, EncoderDropStream,
             EncoderDropInput, EncoderNoDropout):
    _cls.__name__ = "EncoderLayer"

ENCODER_WRONG = [
    (EncoderIgnoresMask, "changing the input at padded positions"),
    (EncoderAlwaysPreNorm, "with norm_first=False (Post-Norm"),
    (EncoderNoResidual, "no residual connections"),
    (EncoderOneNorm, "uses norm1 for both sublayers"),
    (EncoderFfnFirst, "runs the FFN before self-attention"),
    (EncoderRenamed, "has no attribute `self_attn`"),
    # train vs eval and where dropout goes (the checks once built every layer with dropout=0)
    (EncoderDropStream, "applies dropout to the residual stream itself"),
    (EncoderDropInput, "applies dropout to each sublayer's input"),
    (EncoderNoDropout, "in train mode your layer gives its eval-mode output"),
    (EncoderFunctionalDropout, "in eval mode gave two different outputs"),
    (EncoderInPlace, "changed its input x in place"),
]


# --- DecoderLayer ------------------------------------------------------------------------------

class DecoderLayer(T.DecoderLayer):
    pass


def _decoder_forward(self, x, memory, self_mask, memory_mask, cross):
    x = residual(x, lambda h: self.self_attn(h, mask=self_mask), self.norm1, self.drop, self.norm_first)
    x = residual(x, cross, self.norm2, self.drop, self.norm_first)
    return residual(x, self.ffn, self.norm3, self.drop, self.norm_first)


class DecoderMemoryAsQueries(DecoderLayer):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        return _decoder_forward(self, x, memory, self_mask, memory_mask,
                                lambda h: self.cross_attn(memory, h))


class DecoderNotCausal(DecoderLayer):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        return super().forward(x, memory, None, memory_mask)


class DecoderSharedAttention(DecoderLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cross_attn = self.self_attn                  # "reuse" self-attention for memory


class DecoderNoCrossModule(nn.Module):
    """Cross-attention through self_attn, and no cross_attn at all."""

    def __init__(self, d_model, n_heads, d_ff, norm_first=True, dropout=0.0, activation="relu"):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.ffn = T.FeedForward(d_model, d_ff, activation)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        return _decoder_forward(self, x, memory, self_mask, memory_mask,
                                lambda h: self.self_attn(h, memory, mask=memory_mask))


class DecoderCrossWithSelfWeights(DecoderLayer):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        return _decoder_forward(self, x, memory, self_mask, memory_mask,
                                lambda h: self.self_attn(h, memory, mask=memory_mask))


class DecoderIgnoresMemoryMask(DecoderLayer):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        return super().forward(x, memory, self_mask, None)


class DecoderNoMemory(DecoderLayer):
    """'Cross-attention' that attends over the decoder's own states."""

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        return _decoder_forward(self, x, memory, self_mask, memory_mask,
                                lambda h: self.cross_attn(h, mask=self_mask))


class DecoderAlwaysPostNorm(DecoderLayer):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.norm1(x + self.self_attn(x, mask=self_mask))
        x = self.norm2(x + self.cross_attn(x, memory, mask=memory_mask))
        return self.norm3(x + self.ffn(x))


class DecoderCrossFirst(DecoderLayer):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = residual(x, lambda h: self.cross_attn(h, memory, mask=memory_mask), self.norm1, self.drop,
                     self.norm_first)
        x = residual(x, lambda h: self.self_attn(h, mask=self_mask), self.norm2, self.drop, self.norm_first)
        return residual(x, self.ffn, self.norm3, self.drop, self.norm_first)


def _decoder_with(res):
    class Dec(DecoderLayer):
        def forward(self, x, memory, self_mask=None, memory_mask=None):
            x = res(x, lambda h: self.self_attn(h, mask=self_mask), self.norm1, self.drop,
                    self.norm_first)
            x = res(x, lambda h: self.cross_attn(h, memory, mask=memory_mask), self.norm2, self.drop,
                    self.norm_first)
            return res(x, self.ffn, self.norm3, self.drop, self.norm_first)
    return Dec


class DecoderMemoryInPlace(DecoderLayer):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        memory.mul_(1.0 + 1e-3 * self.training)        # "scales" memory in place when training
        return super().forward(x, memory, self_mask, memory_mask)


DecoderDropStream = _decoder_with(_residual_drop("stream"))
DecoderDropInput = _decoder_with(_residual_drop("input"))

for _cls in (DecoderDropStream, DecoderDropInput, DecoderMemoryInPlace,
             DecoderMemoryAsQueries, DecoderNotCausal, DecoderSharedAttention, DecoderNoCrossModule,
             DecoderCrossWithSelfWeights, DecoderIgnoresMemoryMask, DecoderNoMemory, DecoderAlwaysPostNorm,
             DecoderCrossFirst):
    _cls.__name__ = "DecoderLayer"

DECODER_WRONG = [
    (DecoderMemoryAsQueries, "cross-attention takes its queries from x"),
    (DecoderNotCausal, "the decoder must be causal"),
    (DecoderSharedAttention, "cross_attn shares its weights with self_attn"),
    (DecoderNoCrossModule, "has no attribute `cross_attn`"),
    (DecoderCrossWithSelfWeights, "your cross-attention uses self_attn's weights"),
    (DecoderIgnoresMemoryMask, "pass memory_mask to the cross-attention"),
    (DecoderNoMemory, "your output does not depend on memory"),
    (DecoderAlwaysPostNorm, "with norm_first=True (Pre-Norm"),
    (DecoderCrossFirst, "runs cross-attention before the masked self-attention"),
    (DecoderDropStream, "applies dropout to the residual stream itself"),
    (DecoderDropInput, "applies dropout to each sublayer's input"),
    (DecoderMemoryInPlace, "changed its input memory in place"),
]


# --- shift_right -------------------------------------------------------------------------------

def _shift(make):
    def shift_right(targets, bos_id):
        return make(targets, bos_id)
    return shift_right


def _bos(targets, bos_id):
    return torch.full_like(targets[:, :1], bos_id)


def _in_place(targets, bos_id):
    targets[:, 1:] = targets[:, :-1].clone()
    targets[:, 0] = bos_id
    return targets


SHIFT_WRONG = [
    (_shift(lambda t, b: torch.cat([t[:, 1:], _bos(t, b)], dim=1)), "you shifted left"),
    (_shift(lambda t, b: t[:, :-1]), "has shape [2, 3], expected [2, 4]"),
    (_shift(lambda t, b: torch.roll(t, 1, dims=1)), "wrapped around (torch.roll)"),
    (_shift(lambda t, b: torch.cat([_bos(t, b), t], dim=1)), "you prepended bos_id but kept the last target"),
    (_shift(lambda t, b: torch.cat([_bos(t, b), t[:, :-1]], dim=1).float()), "expected torch.int64"),
    (_shift(lambda t, b: torch.cat([torch.full_like(t[:1], b), t[:-1]], dim=0)), "along the batch dimension"),
    (_shift(_in_place), "changed targets in place"),
]


# --- EncoderDecoder ----------------------------------------------------------------------------

class EncoderDecoder(T.EncoderDecoder):
    pass


class NotCausal(EncoderDecoder):
    def decode(self, tgt, memory, src_mask=None):
        memory_mask = None if src_mask is None else src_mask[:, None, :]
        x = self.embed(tgt)
        for layer in self.decoder:
            x = layer(x, memory, None, memory_mask)
        return self.lm_head(self.dec_norm(x))


class EncoderIgnoresSrcMask(EncoderDecoder):
    def encode(self, src, src_mask=None):
        x = self.embed(src)
        for layer in self.encoder:
            x = layer(x)
        return self.enc_norm(x)


class DecoderIgnoresSrcMask(EncoderDecoder):
    def decode(self, tgt, memory, src_mask=None):
        return super().decode(tgt, memory, None)


class NoFinalNorm(EncoderDecoder):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.enc_norm, self.dec_norm = nn.Identity(), nn.Identity()


class FinalNormUnused(EncoderDecoder):
    """Builds the final norms but never applies the encoder's."""

    def encode(self, src, src_mask=None):
        mask = None if src_mask is None else src_mask[:, None, :]
        x = self.embed(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return x


class AlwaysFinalNorm(EncoderDecoder):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.enc_norm, self.dec_norm = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)


class OneLayer(EncoderDecoder):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.encoder, self.decoder = self.encoder[:1], self.decoder[:1]


class RepeatedLayer(EncoderDecoder):
    def __init__(self, cfg):
        super().__init__(cfg)
        args = (cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.norm_first, cfg.dropout, cfg.activation)
        self.encoder = nn.ModuleList([T.EncoderLayer(*args)] * cfg.n_layers)


class OnlyLastEncoderLayer(EncoderDecoder):
    def encode(self, src, src_mask=None):
        mask = None if src_mask is None else src_mask[:, None, :]
        x = self.embed(src)
        for layer in self.encoder:
            out = layer(x, mask)                          # forgets to feed each layer's output on
        return self.enc_norm(out)


for _cls in (NotCausal, EncoderIgnoresSrcMask, DecoderIgnoresSrcMask, NoFinalNorm, FinalNormUnused,
             AlwaysFinalNorm, OneLayer, RepeatedLayer, OnlyLastEncoderLayer):
    _cls.__name__ = "EncoderDecoder"

class FunctionalDropout(EncoderDecoder):
    """Dropout with F.dropout, whose training=True default keeps dropping in eval mode."""

    def encode(self, src, src_mask=None):
        return nn.functional.dropout(super().encode(src, src_mask), self.cfg.dropout)


FunctionalDropout.__name__ = "EncoderDecoder"

MODEL_WRONG = [
    (FunctionalDropout, "in eval mode gave two different outputs"),
    (NotCausal, "the decoder must be causal"),
    (EncoderIgnoresSrcMask, "the encoder's self-attention must hide padded keys"),
    (DecoderIgnoresSrcMask, "cross-attention must hide padded memory positions"),
    (NoFinalNorm, "each stack ends with a final nn.LayerNorm"),
    (FinalNormUnused, "your encoder stack is missing its final LayerNorm"),
    (AlwaysFinalNorm, "the 2017 model adds no final norm"),
    (OneLayer, "has 1 layer, expected cfg.n_layers = 2"),
    (RepeatedLayer, "[layer] * n_layers repeats the same module"),
    (OnlyLastEncoderLayer, "your encoder runs only its last layer"),
]


# --- prefix_lm_mask ----------------------------------------------------------------------------

def _prefix(make):
    def prefix_lm_mask(n_prefix, n):
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        return make(i, j, n_prefix)
    return prefix_lm_mask


PREFIX_WRONG = [
    (_prefix(lambda i, j, p: j <= i), "query 0 cannot see key 1, which is in the prefix"),
    (_prefix(lambda i, j, p: (j <= i) | (i < p)), "a target position after it"),
    (_prefix(lambda i, j, p: (j <= i) | (j <= p)), "query 0 may see key 3"),
    (_prefix(lambda i, j, p: ~((j <= i) | (j < p))), "your mask is inverted"),
    (_prefix(lambda i, j, p: ((j <= i) | (j < p)).float()), "dtype should be torch.bool"),
]


# --- count_parameters --------------------------------------------------------------------------

def _count(**mistake):
    def count_parameters(cfg, decoder_only=False):
        d, f, V, N = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
        attention = 4 * d * d + (0 if mistake.get("no_bias") else 4 * d)
        ffn, norm = 2 * d * f + f + d, 2 * d
        enc = attention + ffn + 2 * norm
        dec = (1 if mistake.get("no_cross") else 2) * attention + ffn + 3 * norm
        final = norm if cfg.norm_first or mistake.get("post_final") else 0
        ends = V * d * (2 if mistake.get("two_tables") else 1) + d * V + V
        if decoder_only:
            return ends + N * (dec if mistake.get("cross_in_gpt") else enc) + final
        return ends + N * (enc + dec) + 2 * final
    return count_parameters


COUNT_WRONG = [
    (_count(no_bias=True), "you left out the biases of the attention projections"),
    (_count(no_cross=True), "you left out the decoder's cross-attention"),
    (_count(two_tables=True), "share one embedding table"),
    (_count(post_final=True), "with norm_first=False (Post-Norm) there are no final norms"),
    (_count(cross_in_gpt=True), "a decoder-only layer has no cross-attention"),
    # the docstring says -> int, as in chapter 06's counts: a tensor is refused there and here
    (lambda cfg, decoder_only=False: torch.tensor(T.count_parameters(cfg, decoder_only)),
     "expected a Python int (as the docstring says): call .item()"),
]


EXERCISES = {
    "EncoderLayer": Exercise(check=checks.check_EncoderLayer, solution=T.EncoderLayer, wrong=ENCODER_WRONG),
    "DecoderLayer": Exercise(check=checks.check_DecoderLayer, solution=T.DecoderLayer, wrong=DECODER_WRONG),
    "shift_right": Exercise(check=checks.check_shift_right, solution=T.shift_right, wrong=SHIFT_WRONG),
    "EncoderDecoder": Exercise(check=checks.check_EncoderDecoder, solution=T.EncoderDecoder, wrong=MODEL_WRONG),
    "prefix_lm_mask": Exercise(check=checks.check_prefix_lm_mask, solution=T.prefix_lm_mask, wrong=PREFIX_WRONG),
    "count_parameters": Exercise(check=checks.check_count_parameters, solution=T.count_parameters,
                                 wrong=COUNT_WRONG),
}
