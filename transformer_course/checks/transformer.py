"""Checks for chapter 07 (encoder, decoder, encoder-decoder).

The layers are compared with PyTorch's ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``
and the whole model with ``nn.Transformer``, each built with ``batch_first=True, dropout=0`` and
given the learner's own weights: ``w_q, w_k, w_v`` stacked into ``in_proj_weight``, ``w_o`` into
``out_proj``, the FFN's ``w_1, w_2`` into ``linear1, linear2``, the LayerNorms by name. PyTorch's
bool masks mean the opposite of ours (True = may *not* attend), so they are inverted on the way.
The references run in training mode (dropout is 0, so nothing is random): in eval mode without
gradients PyTorch takes an inference "fast path" that returns zeros at padded positions.

Before the values, the checks test what holds for any weights: the decoder is causal, padded
positions change nothing, cross-attention depends on memory, the stacks are n_layers deep and
every layer has its own weights. When the values differ, the checks recompute the layer with
one usual mistake at a time (norm placement flipped, no residual, norms or sublayers swapped,
cross-attention with the wrong queries or weights, no final norm) and name the one that matches.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..i18n import tr, trf
from . import (CheckFailed, approx, call, describe, expect_close, expect_tensor, fail, name_of,
               passed, seeded)

__all__ = [
    "check_EncoderLayer",
    "check_DecoderLayer",
    "check_shift_right",
    "check_EncoderDecoder",
    "check_prefix_lm_mask",
    "check_count_parameters",
    "torch_layer_from",
    "torch_transformer_from",
]

ATOL, RTOL = 1e-4, 1e-4


# --- PyTorch's modules with the learner's weights --------------------------------------------

def _copy_attention(ours: nn.Module, theirs: nn.MultiheadAttention) -> None:
    """Our w_q, w_k, w_v, w_o into nn.MultiheadAttention's in_proj_weight [3D, D] and out_proj."""
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.w_q.weight, ours.w_k.weight, ours.w_v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.w_q.bias, ours.w_k.bias, ours.w_v.bias]))
        theirs.out_proj.weight.copy_(ours.w_o.weight)
        theirs.out_proj.bias.copy_(ours.w_o.bias)


def _copy_linear(ours: nn.Linear, theirs: nn.Linear) -> None:
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)


def torch_layer_from(layer: nn.Module, d_model: int, n_heads: int, d_ff: int, norm_first: bool,
                     activation: str = "relu", decoder: bool = False) -> nn.Module:
    """nn.TransformerEncoderLayer (or DecoderLayer) holding the weights of our layer, in training mode."""
    cls = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
    ref = cls(d_model, n_heads, d_ff, dropout=0.0, activation=activation, batch_first=True,
              norm_first=norm_first)
    _copy_attention(layer.self_attn, ref.self_attn)
    if decoder:
        _copy_attention(layer.cross_attn, ref.multihead_attn)
    _copy_linear(layer.ffn.w_1, ref.linear1)
    _copy_linear(layer.ffn.w_2, ref.linear2)
    for i in (1, 2, 3) if decoder else (1, 2):
        _copy_linear(getattr(layer, f"norm{i}"), getattr(ref, f"norm{i}"))
    return ref.train()


def torch_transformer_from(model: nn.Module, final_norms: bool | None = None) -> nn.Transformer:
    """nn.Transformer holding the weights of our EncoderDecoder's two stacks (no embedding, no head).

    nn.Transformer always ends both stacks with a LayerNorm. Ours has one only for Pre-Norm, so by
    default (final_norms=None) PyTorch's is copied from ours for Pre-Norm and removed for Post-Norm.
    """
    cfg = model.cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # "enable_nested_tensor is True, but ... norm_first was True"
        ref = nn.Transformer(cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.n_layers, cfg.d_ff, dropout=0.0,
                             activation=cfg.activation, batch_first=True, norm_first=cfg.norm_first)
    for ours, theirs in zip(model.encoder, ref.encoder.layers):
        for name, part in torch_layer_from(ours, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.norm_first,
                                           cfg.activation).named_children():
            setattr(theirs, name, part)
    for ours, theirs in zip(model.decoder, ref.decoder.layers):
        for name, part in torch_layer_from(ours, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.norm_first,
                                           cfg.activation, decoder=True).named_children():
            setattr(theirs, name, part)
    final_norms = cfg.norm_first if final_norms is None else final_norms
    if final_norms and isinstance(model.enc_norm, nn.LayerNorm):
        _copy_linear(model.enc_norm, ref.encoder.norm)
        _copy_linear(model.dec_norm, ref.decoder.norm)
    elif not final_norms:
        ref.encoder.norm = ref.decoder.norm = None
    return ref.train()


def _torch_mha(attn: nn.MultiheadAttention, x_q, x_kv, keep):
    """PyTorch's attention with our mask convention (keep: True = may attend; [n_q, n_k] or [B, 1, n_k])."""
    kwargs = {}
    if keep is not None and keep.dim() == 2:
        kwargs["attn_mask"] = ~keep
    elif keep is not None:
        kwargs["key_padding_mask"] = ~keep[:, 0, :]
    return attn(x_q, x_kv, x_kv, need_weights=False, **kwargs)[0]


def _randomize_norms(module: nn.Module) -> None:
    """LayerNorms start as weight 1, bias 0, so that swapping two would go unseen: make them differ."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


# --- structure ------------------------------------------------------------------------------

def _attn_params(d):
    return 4 * (d * d + d)


def _ffn_params(d, f):
    return 2 * d * f + d + f


ENC_PARTS = {"self_attn": "attention", "ffn": "ffn", "norm1": "norm", "norm2": "norm"}
DEC_PARTS = {"self_attn": "attention", "cross_attn": "attention", "ffn": "ffn",
             "norm1": "norm", "norm2": "norm", "norm3": "norm"}


def _expect_module(obj, what):
    if not isinstance(obj, nn.Module):
        fail(trf("{what} should be an nn.Module (a class deriving from nn.Module), got {type(obj).__name__}"))


def _expect_parts(layer, who, parts, d, f):
    names = ", ".join(parts)
    for name, kind in parts.items():
        part = getattr(layer, name, None)
        if part is None:
            extra = (tr(" Cross-attention needs a MultiHeadAttention of its own, with its own w_q, w_k, w_v, w_o.")
                     if name == "cross_attn" else "")
            fail(trf("{who} has no attribute `{name}`: name its parts {names} as in the chapter (the check copies "
                 "your weights into PyTorch's layer by these names, and the next chapters load saved "
                 "weights by them).{extra}"))
        if kind == "norm" and not isinstance(part, nn.LayerNorm):
            fail(trf("{who}.{name} should be an nn.LayerNorm(d_model), got {type(part).__name__}"))
        need = {"attention": ("w_q", "w_k", "w_v", "w_o"), "ffn": ("w_1", "w_2"), "norm": ()}[kind]
        for w in need:
            if not isinstance(getattr(part, w, None), nn.Linear):
                made = (tr("MultiHeadAttention(d_model, n_heads) from chapter 04") if kind == "attention"
                        else tr("FeedForward(d_model, d_ff, activation) from chapter 06"))
                fail(trf("{who}.{name} has no linear layer `{w}`: make it with {made}"))
    if "cross_attn" in parts:
        shared = {p.data_ptr() for p in layer.self_attn.parameters()}
        if layer.cross_attn is layer.self_attn or any(p.data_ptr() in shared for p in layer.cross_attn.parameters()):
            fail(trf("{who}: cross_attn shares its weights with self_attn: cross-attention is a second "
                 "MultiHeadAttention with its own w_q, w_k, w_v, w_o (its keys and values come from memory, "
                 "its queries from the decoder)"))
    n_attn = 2 if "cross_attn" in parts else 1
    n_norm = 3 if "cross_attn" in parts else 2
    want = n_attn * _attn_params(d) + _ffn_params(d, f) + n_norm * 2 * d
    got = sum(p.numel() for p in layer.parameters())
    if got != want:
        fail(trf("{who}(d_model={d}, d_ff={f}) has {got:,} parameters, expected {want:,}: {n_attn} x attention "
             "4(d_model² + d_model) = {_attn_params(d):,}, the FFN 2·d_model·d_ff + d_ff + d_model = "
             "{_ffn_params(d, f):,}, and {n_norm} LayerNorms of 2·d_model = {2 * d} each"))


def _first_match(got, variants, what):
    """Fail naming the variant (words, thunk) whose output equals got; when variants with
    different words match (they coincide on this input), say so rather than pick one."""
    matched = []
    for words, thunk in variants:
        try:
            with torch.no_grad():
                alt = thunk()
        except Exception:
            continue
        if alt.shape == got.shape and torch.allclose(got.detach(), alt, atol=ATOL, rtol=RTOL):
            matched += [words] if words not in matched else []
    if len(matched) == 1:
        fail(trf("{what}: {matched[0]}"))
    if matched:
        fail(trf("{what}: your output matches {len(matched)} different mistakes on this input, "
             "one of: ") + tr("; or ").join(matched))


def _flip(nf):
    return (tr("with norm_first=True (Pre-Norm, x + f(LN(x))) your layer computes Post-Norm LN(x + f(x)); "
            "residual(x, sublayer, norm, dropout, self.norm_first) from chapter 05 does either")
            if nf else
            tr("with norm_first=False (Post-Norm, LN(x + f(x)), the 2017 paper) your layer computes Pre-Norm "
            "x + f(LN(x)); residual(x, sublayer, norm, dropout, self.norm_first) from chapter 05 does either"))


def _expect_untouched(what, *named) -> None:
    """(name, tensor after the call, copy from before) for each input the layer must not change."""
    for name, arg, kept in named:
        if not torch.equal(arg, kept):
            fail(trf("{what} changed its input {name} in place (an in-place op such as `{name} += ...`); "
                 "compute new tensors instead: the caller still needs {name}"))


def _stack(x, sublayers, pre, residual=True, p=0.0, drop_at="output"):
    """Sublayers with residual connections, Pre- or Post-Norm; with p > 0, F.dropout at drop_at:
    "output" (right: each sublayer's output, before the residual add), "stream" (the residual
    stream itself), "input" (each sublayer's input)."""
    # contiguous: dropout draws its mask in memory order, and PyTorch's attention returns a
    # transposed view where ours (ending in a Linear) returns a contiguous tensor
    d = (lambda t: F.dropout(t.contiguous(), p, training=True)) if p > 0 else (lambda t: t)
    out, stream, inp = ((d, lambda t: t, lambda t: t) if drop_at == "output" else
                        (lambda t: t, d, lambda t: t) if drop_at == "stream" else
                        (lambda t: t, lambda t: t, d))
    for f, norm in sublayers:
        if not residual:
            x = f(norm(x)) if pre else norm(f(x))
        else:
            x = stream(x + out(f(inp(norm(x))))) if pre else stream(norm(x + out(f(inp(x)))))
    return x


DROP_HINT = (tr("dropout goes on each sublayer's output, before the residual add: Pre-Norm "
             "x + drop(f(LN(x))), Post-Norm LN(x + drop(f(x))), as residual(x, sublayer, norm, "
             "self.drop, self.norm_first) from chapter 05 does; nn.Dropout is the identity in eval mode"))


def _check_layer_dropout(cls, who: str, decoder: bool, seed: int) -> int:
    """Train vs eval, and where dropout goes: the learner's layer with dropout=0.5 against PyTorch's
    sublayers holding its weights, with F.dropout on each sublayer's output under the same seed
    (both draw the same masks in the same order)."""
    n, p, d, h, f, B, T, S = 0, 0.5, 16, 4, 24, 2, 4, 5
    for nf in (True, False):
        built = trf("{who}({d}, {h}, {f}, norm_first={nf}, dropout={p})")
        layer = call(cls, d, h, f, norm_first=nf, dropout=p, activation="relu")
        _expect_module(layer, built)
        _expect_parts(layer, built, DEC_PARTS if decoder else ENC_PARTS, d, f)
        _randomize_norms(layer)
        ref = torch_layer_from(layer, d, h, f, nf, "relu", decoder=decoder)
        x, memory = torch.randn(B, T, d), torch.randn(B, S, d)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        if decoder:       # causal self-attention, memory with padding
            args = (x, memory, causal, (torch.arange(S) < torch.tensor([S, 2])[:, None])[:, None, :])
        else:             # self-attention with padding
            args = (x, (torch.arange(T) < torch.tensor([T, 2])[:, None])[:, None, :])
        saved = [a.clone() for a in args[:2 if decoder else 1]]
        what = f"{built}(x {list(x.shape)}" + (trf(", memory {list(memory.shape)}, masks)") if decoder
                                               else tr(", mask)"))
        ffn = lambda t: ref.linear2(F.relu(ref.linear1(t)))
        if decoder:
            subs = [(lambda t: _torch_mha(ref.self_attn, t, t, args[2]), ref.norm1),
                    (lambda t: _torch_mha(ref.multihead_attn, t, memory, args[3]), ref.norm2),
                    (ffn, ref.norm3)]
        else:
            subs = [(lambda t: _torch_mha(ref.self_attn, t, t, args[1]), ref.norm1), (ffn, ref.norm2)]

        layer.eval()
        with torch.no_grad():
            a, b = call(layer, *args), call(layer, *args)
        expect_tensor(a, what)
        if not torch.equal(a, b):
            fail(trf("{what} in eval mode gave two different outputs: use nn.Dropout (self.drop), which "
                 "turns itself off in eval mode, not F.dropout(training=True)"))
        with torch.no_grad():
            want = _stack(x, subs, nf)
        expect_close(a, want, trf("{what} in eval mode (dropout off)"), atol=ATOL, rtol=RTOL,
                     hint=tr("In eval mode dropout is the identity"))
        n += 1

        layer.train()
        s = seed + 101
        with torch.no_grad(), seeded(s):
            got = call(layer, *args)
        _expect_untouched(what, *zip(("x", "memory"), args, saved))

        def seeded_stack(**kw):
            with torch.no_grad(), seeded(s):
                return _stack(x, subs, nf, p=p, **kw)

        if not torch.allclose(got, seeded_stack(), atol=ATOL, rtol=RTOL):
            _first_match(got, [
                (tr("your layer applies dropout to the residual stream itself, ")
                 + (tr("drop(x + f(LN(x)))") if nf else tr("drop(LN(x + f(x)))"))
                 + tr(", so the stream loses entries; ") + DROP_HINT, lambda: seeded_stack(drop_at="stream")),
                (tr("your layer applies dropout to each sublayer's input, f(drop(...)); ") + DROP_HINT,
                 lambda: seeded_stack(drop_at="input")),
                (tr("in train mode your layer gives its eval-mode output: dropout is missing; ") + DROP_HINT,
                 lambda: a),
            ], what + tr(" in train mode"))
            expect_close(got, seeded_stack(), what + tr(" in train mode"), atol=ATOL, rtol=RTOL,
                         hint=DROP_HINT[0].upper() + DROP_HINT[1:] + tr(". The oracle is PyTorch's "
                         "sublayers holding your weights, with F.dropout under the same seed"))
        with torch.no_grad():
            if torch.equal(call(layer, *args), call(layer, *args)):
                fail(trf("{what} in train mode gave the same output twice: dropout draws new masks "
                     "on each call"))
        n += 1
    return n


def _change_at(x, where, vocab_size=None):
    """A copy of x with new values at the positions where `where` [B, n] is True: random vectors, or for
    token ids [B, n] other ids below vocab_size."""
    y = x.clone()
    if vocab_size is None:
        fresh = torch.randn_like(x) * 3 + 1
    else:
        fresh = (x + torch.randint(1, vocab_size, x.shape)) % vocab_size
    y[where] = fresh[where]
    return y


# --- EncoderLayer ---------------------------------------------------------------------------

def check_EncoderLayer(cls, seed: int = 0) -> None:
    """EncoderLayer(d_model, n_heads, d_ff, norm_first, dropout, activation)(x, mask) against
    nn.TransformerEncoderLayer with the same weights, both norm placements."""
    who = name_of(cls)
    n = 0
    cases = [  # d_model, n_heads, d_ff, norm_first, activation, B, S, lengths (None: no mask)
        (16, 4, 24, True, "relu", 2, 5, [5, 3]),
        (16, 4, 24, False, "relu", 2, 5, [2, 5]),
        (12, 3, 20, False, "gelu", 1, 1, None),
        (8, 1, 12, True, "gelu", 3, 7, [7, 1, 4]),
    ]
    with seeded(seed):
        for d, h, f, nf, act, B, S, lengths in cases:
            built = trf("{who}({d}, {h}, {f}, norm_first={nf}, activation={act!r})")
            layer = call(cls, d, h, f, norm_first=nf, dropout=0.0, activation=act)
            _expect_module(layer, built)
            _expect_parts(layer, built, ENC_PARTS, d, f)
            _randomize_norms(layer)
            ref = torch_layer_from(layer, d, h, f, nf, act)
            x = torch.randn(B, S, d)
            keep = None if lengths is None else (torch.arange(S) < torch.tensor(lengths)[:, None])
            mask = None if keep is None else keep[:, None, :]                 # [B, 1, S]
            what = f"{built}(x {list(x.shape)}" + (trf(", mask {list(mask.shape)})") if mask is not None else ")")
            saved = x.clone()
            got = call(layer, x, mask)
            expect_tensor(got, what)
            _expect_untouched(what, ("x", x, saved))
            if tuple(got.shape) != (B, S, d):
                fail(trf("{what} has shape {list(got.shape)}, expected {[B, S, d]}: an encoder layer keeps the "
                     "shape of its input [B, S, d_model]"))
            if keep is not None and not keep.all():
                moved = (call(layer, _change_at(x, ~keep), mask) - got).abs()[keep]
                if moved.max() > ATOL:
                    fail(trf("{what}: changing the input at padded positions (mask False) changed the output at "
                         "real positions by up to {approx(moved.max().item(), 3)}: pass mask to the "
                         "self-attention, so that padded keys get zero weight"))
            with torch.no_grad():
                want = ref(x, src_key_padding_mask=None if keep is None else ~keep)
            if not torch.allclose(got.detach(), want, atol=ATOL, rtol=RTOL):
                act_fn = ref.activation
                attn = lambda t: _torch_mha(ref.self_attn, t, t, mask)
                ffn = lambda t: ref.linear2(act_fn(ref.linear1(t)))
                n1, n2 = ref.norm1, ref.norm2
                _first_match(got, [
                    (_flip(nf), lambda: _stack(x, [(attn, n1), (ffn, n2)], not nf)),
                    (tr("your layer has no residual connections: each sublayer's output is added to its input, "
                     "x + f(...)"), lambda: _stack(x, [(attn, n1), (ffn, n2)], nf, residual=False)),
                    (tr("your layer runs the FFN before self-attention: self-attention comes first, then the FFN"),
                     lambda: _stack(x, [(ffn, n2), (attn, n1)], nf)),
                    (tr("your layer uses norm1 for both sublayers: the FFN has its own LayerNorm, norm2"),
                     lambda: _stack(x, [(attn, n1), (ffn, n1)], nf)),
                    (tr("your norms are swapped: norm1 goes with self-attention, norm2 with the FFN"),
                     lambda: _stack(x, [(attn, n2), (ffn, n1)], nf)),
                ], what)
                expect_close(got, want, trf("{what} compared with nn.TransformerEncoderLayer holding your weights"),
                             atol=ATOL, rtol=RTOL)
            n += 1
        n += _check_layer_dropout(cls, who, decoder=False, seed=seed)
    passed(cls, n)


# --- DecoderLayer ---------------------------------------------------------------------------

def check_DecoderLayer(cls, seed: int = 0) -> None:
    """DecoderLayer(...)(x, memory, self_mask, memory_mask) against nn.TransformerDecoderLayer."""
    who = name_of(cls)
    n = 0
    cases = [  # d_model, n_heads, d_ff, norm_first, activation, B, T, S, memory lengths
        (16, 4, 24, True, "relu", 2, 3, 5, [5, 2]),
        (16, 4, 24, False, "relu", 2, 4, 4, [4, 3]),
        (12, 3, 20, False, "gelu", 1, 1, 4, None),
        (8, 2, 12, True, "relu", 3, 5, 1, None),
        (8, 1, 12, True, "gelu", 2, 6, 6, [6, 1]),
    ]
    with seeded(seed):
        for d, h, f, nf, act, B, T, S, lengths in cases:
            built = trf("{who}({d}, {h}, {f}, norm_first={nf}, activation={act!r})")
            layer = call(cls, d, h, f, norm_first=nf, dropout=0.0, activation=act)
            _expect_module(layer, built)
            _expect_parts(layer, built, DEC_PARTS, d, f)
            _randomize_norms(layer)
            ref = torch_layer_from(layer, d, h, f, nf, act, decoder=True)
            x, memory = torch.randn(B, T, d), torch.randn(B, S, d)
            self_mask = torch.ones(T, T, dtype=torch.bool).tril()
            keep = None if lengths is None else (torch.arange(S) < torch.tensor(lengths)[:, None])
            memory_mask = None if keep is None else keep[:, None, :]
            what = (trf("{built}(x {list(x.shape)}, memory {list(memory.shape)}, causal self_mask")
                    + (trf(", memory_mask {list(memory_mask.shape)})") if keep is not None else ")"))
            saved = x.clone(), memory.clone()
            try:
                got = call(layer, x, memory, self_mask, memory_mask)
            except CheckFailed as e:
                if S != T and "raised" in str(e):
                    raise CheckFailed(trf("{e}. Here x has T = {T} positions and memory S = {S}: cross-attention "
                                      "takes its queries from x (so its output has T positions, like x), its "
                                      "keys and values from memory, and its mask is memory_mask [B, 1, S]; the "
                                      "self-attention's mask is self_mask [T, T]")) from None
                raise
            expect_tensor(got, what)
            _expect_untouched(what, ("x", x, saved[0]), ("memory", memory, saved[1]))
            if tuple(got.shape) != (B, T, d):
                fail(trf("{what} has shape {list(got.shape)}, expected {[B, T, d]}: the output has one row per "
                     "decoder position; cross-attention takes its queries from x, its keys and values from memory"))
            if T > 1:
                j = T // 2
                later = torch.zeros(B, T, dtype=torch.bool)
                later[:, j:] = True
                moved = (call(layer, _change_at(x, later), memory, self_mask, memory_mask) - got)[:, :j].abs()
                if moved.max() > ATOL:
                    fail(trf("{what}: changing x at positions {j}.. changed the output at earlier positions by up to "
                         "{approx(moved.max().item(), 3)}: the decoder must be causal, so pass self_mask to the "
                         "masked self-attention"))
            if keep is not None and not keep.all():
                moved = (call(layer, x, _change_at(memory, ~keep), self_mask, memory_mask) - got).abs()
                if moved.max() > ATOL:
                    fail(trf("{what}: changing memory at padded positions (memory_mask False) changed the output by "
                         "up to {approx(moved.max().item(), 3)}: pass memory_mask to the cross-attention"))
            real = torch.ones(B, S, dtype=torch.bool) if keep is None else keep
            moved = (call(layer, x, _change_at(memory, real), self_mask, memory_mask) - got).abs()
            if moved.max() < 1e-6:
                fail(trf("{what}: your output does not depend on memory: cross-attention takes its keys and values "
                     "from memory, the encoder's output (projected by cross_attn's own w_k and w_v)"))
            with torch.no_grad():
                want = ref(x, memory, tgt_mask=~self_mask,
                           memory_key_padding_mask=None if keep is None else ~keep)
            if not torch.allclose(got.detach(), want, atol=ATOL, rtol=RTOL):
                act_fn = ref.activation
                sa = lambda t: _torch_mha(ref.self_attn, t, t, self_mask)
                ca = lambda t: _torch_mha(ref.multihead_attn, t, memory, memory_mask)
                ca_swapped = lambda t: _torch_mha(ref.multihead_attn, memory, t, None)
                ca_self_w = lambda t: _torch_mha(ref.self_attn, t, memory, memory_mask)
                ffn = lambda t: ref.linear2(act_fn(ref.linear1(t)))
                n1, n2, n3 = ref.norm1, ref.norm2, ref.norm3
                _first_match(got, [
                    (_flip(nf), lambda: _stack(x, [(sa, n1), (ca, n2), (ffn, n3)], not nf)),
                    (tr("your cross-attention takes its queries from memory and its keys and values from x: it is "
                     "the other way round, queries from the decoder (x), keys and values from memory"),
                     lambda: _stack(x, [(sa, n1), (ca_swapped, n2), (ffn, n3)], nf)),
                    (tr("your cross-attention uses self_attn's weights: use self.cross_attn, the layer's own "
                     "attention for memory"), lambda: _stack(x, [(sa, n1), (ca_self_w, n2), (ffn, n3)], nf)),
                    (tr("your layer has no residual connections: each sublayer's output is added to its input"),
                     lambda: _stack(x, [(sa, n1), (ca, n2), (ffn, n3)], nf, residual=False)),
                    (tr("your layer runs cross-attention before the masked self-attention: the order is masked "
                     "self-attention, cross-attention, FFN"),
                     lambda: _stack(x, [(ca, n2), (sa, n1), (ffn, n3)], nf)),
                    (tr("your layer runs cross-attention before the masked self-attention: the order is masked "
                     "self-attention, cross-attention, FFN (norm1, norm2, norm3 in that order)"),
                     lambda: _stack(x, [(ca, n1), (sa, n2), (ffn, n3)], nf)),
                    (tr("your layer uses norm1 for every sublayer: each has its own LayerNorm (norm1, norm2, norm3)"),
                     lambda: _stack(x, [(sa, n1), (ca, n1), (ffn, n1)], nf)),
                    (tr("your norms are mixed up: norm1 goes with self-attention, norm2 with cross-attention, "
                     "norm3 with the FFN"), lambda: _stack(x, [(sa, n1), (ca, n3), (ffn, n2)], nf)),
                    (tr("your norms are mixed up: norm1 goes with self-attention, norm2 with cross-attention, "
                     "norm3 with the FFN"), lambda: _stack(x, [(sa, n2), (ca, n1), (ffn, n3)], nf)),
                ], what)
                expect_close(got, want, trf("{what} compared with nn.TransformerDecoderLayer holding your weights"),
                             atol=ATOL, rtol=RTOL)
            n += 1
        n += _check_layer_dropout(cls, who, decoder=True, seed=seed)
    passed(cls, n)


# --- shift_right ----------------------------------------------------------------------------

def check_shift_right(fn, seed: int = 0) -> None:
    """shift_right(targets [B, T], bos_id) -> [B, T]: bos_id, then targets[:, :-1]; exact."""
    who = name_of(fn)
    with seeded(seed):
        rand = torch.randint(3, 50, (3, 7))
    cases = [
        (torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]), 1),
        (torch.tensor([[3]]), 0),
        (rand, 2),
        (torch.tensor([[4, 5, 6, 7, 8]], dtype=torch.int32), 1),
    ]
    for targets, bos in cases:
        B, T = targets.shape
        shown = targets.tolist() if targets.numel() <= 10 else trf("tensor of shape {[B, T]}")
        what = trf("{who}({shown}, bos_id={bos})")
        saved = targets.clone()
        got = call(fn, targets, bos)
        expect_tensor(got, what)
        if not torch.equal(targets, saved):
            fail(trf("{what} changed targets in place; build a new tensor (the loss still needs the targets)"))
        if tuple(got.shape) == (B, T + 1):
            fail(trf("{what} has shape {list(got.shape)}, expected {[B, T]}: you prepended bos_id but kept the last "
                 "target; the decoder input has the same length T as the targets, so drop targets[:, -1]"))
        if tuple(got.shape) == (B, T - 1):
            fail(trf("{what} has shape {list(got.shape)}, expected {[B, T]}: the decoder input is bos_id followed by "
                 "targets[:, :-1], T tokens in all"))
        if tuple(got.shape) != (B, T):
            fail(trf("{what} has shape {list(got.shape)}, expected {[B, T]}"))
        if got.dtype != targets.dtype:
            fail(trf("{what} has dtype {got.dtype}, expected {targets.dtype}, the dtype of targets (token ids are "
                 "integers; torch.full_like(targets[:, :1], bos_id) keeps it)"))
        got = got.cpu()
        want = torch.cat([torch.full_like(targets[:, :1], bos), targets[:, :-1]], dim=1)
        if torch.equal(got, want):
            continue
        if T > 1 and torch.equal(got, torch.roll(targets, 1, dims=1)):
            fail(trf("{what} gave {got.tolist()}: the first token is the *last* target, wrapped around (torch.roll); "
                 "the decoder input starts with bos_id, and the last target is dropped"))
        if T > 1 and torch.equal(got[:, :-1], targets[:, 1:]):
            fail(trf("{what} gave {got.tolist()}: you shifted left; teacher forcing shifts right, so that position t "
                 "sees targets before t: bos_id, then targets[:, :-1]"))
        if B > 1 and torch.equal(got[1:], targets[:-1]):
            fail(trf("{what} gave {got.tolist()}: you shifted along the batch dimension (dim 0); shift along time, dim 1"))
        if torch.equal(got[:, 1:], want[:, 1:]):
            fail(trf("{what} gave {got.tolist()}: the first column should be bos_id = {bos}"))
        fail(trf("{what} gave {got.tolist()}, expected {want.tolist()} (bos_id, then targets[:, :-1])"))
    passed(fn, len(cases))


# --- EncoderDecoder -------------------------------------------------------------------------

def _model_params(cfg, decoder_only=False):
    d, f, V, N = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
    enc = _attn_params(d) + _ffn_params(d, f) + 4 * d
    dec = 2 * _attn_params(d) + _ffn_params(d, f) + 6 * d
    final = 2 * d if cfg.norm_first else 0
    ends = V * d + d * V + V                                   # shared embedding table, lm_head
    if decoder_only:
        return ends + N * enc + final
    return ends + N * (enc + dec) + 2 * final


def _expect_stack(model, name, n_layers, what):
    stack = getattr(model, name, None)
    if stack is None:
        fail(trf("{what} has no attribute `{name}`: keep the layers in self.{name}, an nn.ModuleList"))
    if not isinstance(stack, (nn.ModuleList, nn.Sequential)):
        fail(trf("{what}.{name} should be an nn.ModuleList of layers (so that PyTorch sees their parameters), "
             "got {type(stack).__name__}"))
    if len(stack) != n_layers:
        layers = tr("1 layer") if len(stack) == 1 else trf("{len(stack)} layers")
        fail(trf("{what}.{name} has {layers}, expected cfg.n_layers = {n_layers} "
             "(the encoder and the decoder each stack n_layers layers)"))
    if len({id(layer) for layer in stack}) < len(stack):
        fail(trf("{what}.{name} holds one layer {len(stack)} times ([layer] * n_layers repeats the same module, "
             "so the layers share their weights): make a new layer for each position in the stack"))


def _expect_final_norms(model, nf, what):
    for name in ("enc_norm", "dec_norm"):
        norm = getattr(model, name, None)
        if norm is None:
            fail(trf("{what} has no attribute `{name}`: the final norm of each stack (nn.LayerNorm(d_model) for "
                 "Pre-Norm, nn.Identity() for Post-Norm)"))
        if nf and not isinstance(norm, nn.LayerNorm):
            fail(trf("{what}.{name} is {type(norm).__name__}: with norm_first=True (Pre-Norm) the residual stream is "
                 "never normalized inside the stack, so each stack ends with a final nn.LayerNorm(d_model)"))
        if not nf and any(True for _ in norm.parameters()):
            fail(trf("{what}.{name} is {type(norm).__name__} with parameters: with norm_first=False (Post-Norm) every "
                 "sublayer already ends with a LayerNorm, and the 2017 model adds no final norm: use nn.Identity()"))


def _config(**kw):
    from transformer_course.transformer import TransformerConfig   # the chapter's own config dataclass
    return TransformerConfig(**kw)


def check_EncoderDecoder(cls, seed: int = 0) -> None:
    """EncoderDecoder(cfg): shapes, causality, padding invariance, depth, and nn.Transformer's values."""
    who = name_of(cls)
    n = 0
    cases = [  # config, B, S, T, source lengths (None: no src_mask)
        (dict(vocab_size=13, d_model=16, n_heads=4, d_ff=24, n_layers=2, max_len=16, norm_first=True), 2, 5, 4, [5, 2]),
        (dict(vocab_size=7, d_model=12, n_heads=3, d_ff=20, n_layers=3, max_len=16, norm_first=False), 3, 6, 7, [6, 1, 3]),
        (dict(vocab_size=9, d_model=8, n_heads=2, d_ff=12, n_layers=1, max_len=8, norm_first=True,
              activation="gelu"), 1, 1, 1, None),
        (dict(vocab_size=11, d_model=8, n_heads=1, d_ff=16, n_layers=2, max_len=8, norm_first=False), 2, 3, 3, None),
    ]
    with seeded(seed):
        for kw, B, S, T, lengths in cases:
            cfg = _config(**kw)
            nf, V, D, N = cfg.norm_first, cfg.vocab_size, cfg.d_model, cfg.n_layers
            built = trf("{who}(cfg with n_layers={N}, d_model={D}, norm_first={nf})")
            model = call(cls, cfg)
            _expect_module(model, built)
            for name in ("embed", "lm_head"):
                if getattr(model, name, None) is None:
                    fail(trf("{built} has no attribute `{name}`: keep the given self.{name} = ... lines"))
            _expect_stack(model, "encoder", N, built)
            _expect_stack(model, "decoder", N, built)
            for i, layer in enumerate(model.encoder):
                _expect_parts(layer, f"{built}.encoder[{i}]", ENC_PARTS, D, cfg.d_ff)
            for i, layer in enumerate(model.decoder):
                _expect_parts(layer, f"{built}.decoder[{i}]", DEC_PARTS, D, cfg.d_ff)
            _expect_final_norms(model, nf, built)
            want_params = _model_params(cfg)
            got_params = sum(p.numel() for p in model.parameters())
            if got_params != want_params:
                fail(trf("{built} has {got_params:,} parameters, expected {want_params:,} (one embedding table, "
                     "n_layers encoder and n_layers decoder layers, final norms for Pre-Norm, lm_head)"))
            _randomize_norms(model)
            model.train()
            src, tgt = torch.randint(0, V, (B, S)), torch.randint(0, V, (B, T))
            keep = None if lengths is None else (torch.arange(S) < torch.tensor(lengths)[:, None])
            shown = trf("src {[B, S]}, tgt {[B, T]}") + (trf(", src_mask {[B, S]}") if keep is not None else "")

            # shapes, and forward = decode(encode)
            memory = call(model.encode, src, keep)
            what = trf("{built}.encode(src {[B, S]}") + (trf(", src_mask {[B, S]})") if keep is not None else ")")
            expect_tensor(memory, what)
            if tuple(memory.shape) != (B, S, D):
                fail(trf("{what} has shape {list(memory.shape)}, expected {[B, S, D]}: memory has one vector of "
                     "d_model per source position"))
            logits = call(model.decode, tgt, memory, keep)
            what = trf("{built}.decode(tgt {[B, T]}, memory {[B, S, D]}") + (tr(", src_mask)") if keep is not None else ")")
            expect_tensor(logits, what)
            if tuple(logits.shape) != (B, T, V):
                fail(trf("{what} has shape {list(logits.shape)}, expected {[B, T, V]}: one row of vocab_size logits per "
                     "target position"))
            whole = call(model, src, tgt, keep)
            expect_close(whole, logits, trf("{built}({shown}) compared with decode(tgt, encode(src, src_mask), src_mask)"))

            # causality and padding invariance
            if T > 1:
                j = T // 2
                later = torch.zeros(B, T, dtype=torch.bool)
                later[:, j:] = True
                moved = (call(model.decode, _change_at(tgt, later, V), memory, keep) - logits)[:, :j].abs()
                if moved.max() > ATOL:
                    fail(trf("{built}: changing target tokens {j}.. changed the logits at earlier positions by up to "
                         "{approx(moved.max().item(), 3)}: the decoder must be causal; pass causal_mask(T) "
                         "(on tgt's device) as every decoder layer's self_mask"))
            if keep is not None and not keep.all():
                src2 = _change_at(src, ~keep, V)
                moved = (call(model.encode, src2, keep) - memory).abs()[keep]
                if moved.max() > ATOL:
                    fail(trf("{built}.encode: changing a padded source token (src_mask False) changed memory at real "
                         "positions by up to {approx(moved.max().item(), 3)}: the encoder's self-attention must "
                         "hide padded keys: pass src_mask[:, None, :] to every encoder layer"))
                moved = (call(model.decode, tgt, call(model.encode, src2, keep), keep) - logits).abs()
                if moved.max() > ATOL:
                    fail(trf("{built}: changing a padded source token (src_mask False) changed the logits by up to "
                         "{approx(moved.max().item(), 3)}: the decoder's cross-attention must hide padded "
                         "memory positions: pass src_mask[:, None, :] as every decoder layer's memory_mask"))

            # values: nn.Transformer with the same weights
            ref = torch_transformer_from(model)
            causal = ~torch.ones(T, T, dtype=torch.bool).tril()
            pad = None if keep is None else ~keep
            with torch.no_grad():
                src_x, tgt_x = model.embed(src), model.embed(tgt)
                want_memory = ref.encoder(src_x, src_key_padding_mask=pad)
                if not torch.allclose(memory.detach(), want_memory, atol=ATOL, rtol=RTOL):
                    bare = torch_transformer_from(model, final_norms=False).encoder
                    _first_match(memory, [
                        (tr("your encoder stack is missing its final LayerNorm: with Pre-Norm the residual stream is "
                         "never normalized inside the stack, so apply enc_norm to the last layer's output"),
                         lambda: bare(src_x, src_key_padding_mask=pad)),
                        (tr("your encoder runs only its first layer: pass x through every layer of self.encoder in turn"),
                         lambda: model.enc_norm(bare.layers[0](src_x, src_key_padding_mask=pad))),
                        (tr("your encoder runs only its last layer: pass x through every layer of self.encoder in turn"),
                         lambda: model.enc_norm(bare.layers[-1](src_x, src_key_padding_mask=pad))),
                    ], f"{built}.encode")
                    expect_close(memory, want_memory, trf("{built}.encode(src, src_mask) compared with nn.Transformer's "
                                 "encoder holding your weights"), atol=ATOL, rtol=RTOL)
                want_logits = model.lm_head(ref.decoder(tgt_x, memory, tgt_mask=causal, memory_key_padding_mask=pad))
                if not torch.allclose(logits.detach(), want_logits, atol=ATOL, rtol=RTOL):
                    bare = torch_transformer_from(model, final_norms=False).decoder
                    _first_match(logits, [
                        (tr("your decoder stack is missing its final LayerNorm: with Pre-Norm apply dec_norm to the last "
                         "layer's output, before lm_head"),
                         lambda: model.lm_head(bare(tgt_x, memory, tgt_mask=causal, memory_key_padding_mask=pad))),
                        (tr("your decoder runs only its first layer: pass x through every layer of self.decoder in turn"),
                         lambda: model.lm_head(model.dec_norm(bare.layers[0](
                             tgt_x, memory, tgt_mask=causal, memory_key_padding_mask=pad)))),
                    ], f"{built}.decode")
                    expect_close(logits, want_logits, trf("{built}.decode(tgt, memory, src_mask) compared with "
                                 "nn.Transformer's decoder holding your weights, then lm_head"), atol=ATOL, rtol=RTOL)
                want = model.lm_head(ref(src_x, tgt_x, tgt_mask=causal, src_key_padding_mask=pad,
                                         memory_key_padding_mask=pad))
            expect_close(whole, want, trf("{built}({shown}) compared with nn.Transformer holding your weights"),
                         atol=ATOL, rtol=RTOL)
            n += 1

        # train vs eval: with dropout, training draws new masks each call, eval mode is deterministic
        cfg = _config(vocab_size=13, d_model=16, n_heads=4, d_ff=24, n_layers=2, max_len=16, dropout=0.3)
        model = call(cls, cfg)
        src, tgt = torch.randint(0, 13, (2, 5)), torch.randint(0, 13, (2, 4))
        what = trf("{who}(cfg with dropout=0.3)(src [2, 5], tgt [2, 4])")
        with torch.no_grad():
            model.eval()
            if not torch.equal(call(model, src, tgt), call(model, src, tgt)):
                fail(trf("{what} in eval mode gave two different outputs: dropout must switch off in eval "
                     "mode. F.dropout(x, p) drops even then (training=True is its default); use the "
                     "modules' own nn.Dropout (self.embed and the layers already have one)"))
            model.train()
            if torch.equal(call(model, src, tgt), call(model, src, tgt)):
                fail(trf("{what} in train mode gave the same output twice: the embedding's and the "
                     "layers' dropout should be active in training"))
        n += 1
    passed(cls, n)


# --- prefix_lm_mask (exercise) --------------------------------------------------------------

def check_prefix_lm_mask(fn, seed: int = 0) -> None:
    """prefix_lm_mask(n_prefix, n) -> bool [n, n], True where key j < n_prefix or j <= i."""
    who = name_of(fn)
    cases = [(3, 6), (0, 4), (5, 5), (1, 1), (2 + seed % 3, 7 + seed % 2)]
    for p, n in cases:
        what = f"{who}({p}, {n})"
        got = call(fn, p, n)
        expect_tensor(got, what)
        if tuple(got.shape) != (n, n):
            fail(trf("{what} has shape {list(got.shape)}, expected {[n, n]}"))
        if got.dtype != torch.bool:
            fail(trf("{what} has dtype {got.dtype}: dtype should be torch.bool (True = may attend)"))
        got = got.cpu()
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        want = (j <= i) | (j < p)
        if torch.equal(got, want):
            continue
        if n > 1 and torch.equal(got, ~want):
            fail(trf("{what}: your mask is inverted: True means *may attend*"))
        extra, missing = got & ~want, want & ~got
        if extra.any():
            a, b = torch.nonzero(extra)[0].tolist()
            fail(trf("{what}: query {a} may see key {b}, a target position after it: only the prefix "
                 "(keys 0..{p - 1}) is visible to everyone; the rest stays causal (j <= i)"))
        a, b = torch.nonzero(missing)[0].tolist()
        if b < p:
            fail(trf("{what}: query {a} cannot see key {b}, which is in the prefix (n_prefix = {p}): every query sees "
                 "the whole prefix, keys j < n_prefix, in both directions"))
        fail(trf("{what}: query {a} cannot see key {b} (b <= a): beyond the prefix the mask is causal, j <= i"))
    passed(fn, len(cases))


# --- count_parameters (exercise) ------------------------------------------------------------

def check_count_parameters(fn, seed: int = 0) -> None:
    """count_parameters(cfg, decoder_only=False) -> int, against PyTorch's modules' own counts."""
    who = name_of(fn)
    cases = [
        dict(vocab_size=100, d_model=16, n_heads=4, d_ff=64, n_layers=3, norm_first=True),
        dict(vocab_size=37, d_model=12, n_heads=3, d_ff=20, n_layers=1, norm_first=False),
        dict(vocab_size=1000 + seed, d_model=64, n_heads=8, d_ff=256, n_layers=2, norm_first=False),
    ]
    n = 0
    for kw in cases:
        cfg = _config(**kw)
        d, f, V, N = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stacks = nn.Transformer(d, cfg.n_heads, N, N, f, dropout=0.0, batch_first=True)
            enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, cfg.n_heads, f, batch_first=True), N)
        final = 2 * d if cfg.norm_first else 0
        ends = V * d + d * V + V
        oracle = {False: ends + sum(p.numel() for p in stacks.parameters()) - 4 * d + 2 * final,
                  True: ends + sum(p.numel() for p in enc.parameters()) + final}
        for decoder_only in (False, True):
            kind = "DecoderOnly" if decoder_only else "EncoderDecoder"
            what = (trf("{who}(cfg with vocab_size={V}, d_model={d}, d_ff={f}, n_layers={N}, "
                    "norm_first={cfg.norm_first}, decoder_only={decoder_only})"))
            got = call(fn, cfg, decoder_only=decoder_only)
            if not isinstance(got, int) or isinstance(got, bool):   # the docstring says -> int
                fail(trf("{what} returned {describe(got)}, expected a Python int (as the docstring "
                     "says)") + (tr(": call .item() on a one-element tensor")
                                 if isinstance(got, torch.Tensor) else ""))
            want = oracle[decoder_only]
            if got == want:
                n += 1
                continue
            layers = 1 if decoder_only else 2
            named = {
                want - (layers * N * (4 * d + 2 * d) if not decoder_only else N * 4 * d):
                    tr("you left out the biases of the attention projections"),
                want - (N * _attn_params(d) if not decoder_only else -N * (_attn_params(d) + 2 * d)):
                    (tr("you left out the decoder's cross-attention (4(d_model² + d_model) per decoder layer)")
                     if not decoder_only else
                     tr("a decoder-only layer has no cross-attention: it is an encoder layer with a causal mask")),
                want + V * d: tr("the source and the target share one embedding table (count it once)"),
                want - V * d - V: tr("you left out lm_head (d_model x vocab_size weights and vocab_size biases)"),
                want - V: tr("you left out lm_head's bias"),
                want - (N * (2 if decoder_only else 5) * 2 * d + layers * final):
                    tr("you left out the LayerNorms (2·d_model parameters each: weight and bias)"),
                want + (2 * d * layers if not cfg.norm_first else 0):
                    tr("with norm_first=False (Post-Norm) there are no final norms"),
                want - layers * final: tr("with norm_first=True each stack ends with a final LayerNorm (2·d_model)"),
            }
            if not decoder_only and N % 2 == 0:
                per = (want - ends - 2 * final) // N
                named.setdefault(ends + (N // 2) * per + 2 * final, tr("n_layers is per stack: the encoder and the "
                                 "decoder have n_layers layers each, 2 * n_layers in all"))
            if got in named and got != want:
                fail(trf("{what} returned {got:,}, expected {want:,}: {named[got]}"))
            fail(trf("{what} returned {got:,}, expected {want:,} (count the model of chapter 07: "
                 "sum(p.numel() for p in {kind}(cfg).parameters()))"))
    passed(fn, n)
