"""Checks for chapter 18 (a modern small language model): Attention, Block, LM, from_hf_llama.

The oracles are written here from the formulas, in float64: RoPE as complex multiplication
(each pair (x[2i], x[2i+1]) is the complex number x[2i] + i x[2i+1], turned by e^{i angle}),
query head h reading K/V head h // (H / G) by explicit indexing, masks from positions. The
Hugging Face Llama oracle uses Llama's own convention (rotate_half: pairs (i, i + d/2)). When
the learner's answer differs, the check tries the known mistakes one by one and names the one
whose output matches.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

from ..i18n import tr, trf
from transformer_course.checks import (beside, call, describe, expect_close, expect_tensor,
                                       fail, name_of, passed, seeded)

__all__ = ["check_Attention", "check_Block", "check_LM", "check_from_hf_llama"]


def _cfg(**kw):
    from transformer_course.lm import LMConfig
    base = dict(vocab_size=37, d_model=24, n_layers=2, n_heads=4, n_kv_heads=2,
                max_seq_len=16, norm_eps=1e-6)
    return LMConfig(**{**base, **kw})


def _tables(cfg, positions):
    """float64 cos, sin [N, d_head/2] of the RoPE angles (the check's own)."""
    d = cfg.d_head
    inv = cfg.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.double()[:, None] * inv
    return angles.cos(), angles.sin()


def _rot_pairs(x, cos, sin):
    """RoPE on pairs (2i, 2i+1), as complex multiplication."""
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(z * torch.complex(cos, sin)).flatten(-2)


def _rot_half(x, cos, sin):
    """RoPE on pairs (i, i + d/2): Llama's rotate_half convention."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _weight(lin) -> torch.Tensor:
    return lin.weight.detach().double()


def _attention_oracle(mod, cfg, x, cos=None, sin=None, chunks=None, rope_v=False,
                      pairing="pairs", split="heads", kv="interleave", mask="bottom-right",
                      rope_site="after-split"):
    """Output [B, N, D] of attention on the full sequence x, with one mistake or none. chunks:
    the sizes the learner's calls fed (a KV cache in between), which only matter for masks."""
    B, N, _ = x.shape
    H, G, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    rot = _rot_pairs if pairing == "pairs" else _rot_half

    def proj(lin, n):
        y = x @ _weight(lin).T                                   # [B, N, n d]
        if split == "no-transpose":
            return y.reshape(B, n, N, d)
        if rope_site == "before-transpose" and cos is not None:  # [B, N, n, d]: axis -2 is heads
            return y.reshape(B, N, n, d)
        return y.reshape(B, N, n, d).transpose(1, 2)

    q, k, v = proj(mod.w_q, H), proj(mod.w_k, G), proj(mod.w_v, G)
    if cos is not None:
        if rope_site == "before-transpose":
            if N != 1 and (N != H or N != G):        # the learner's code would crash
                return None
            q, k = rot(q, cos, sin).transpose(1, 2), rot(k, cos, sin).transpose(1, 2)
            v = v.transpose(1, 2)
        else:
            q, k = rot(q, cos, sin), rot(k, cos, sin)
            if rope_v:
                v = rot(v, cos, sin)
    elif rope_site == "before-transpose":
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    idx = torch.arange(H) // (H // G) if kv == "interleave" else torch.arange(H) % G
    k, v = k[:, idx], v[:, idx]
    chunks = chunks or [N]
    visible = torch.zeros(N, N, dtype=torch.bool)
    start = 0
    for n in chunks:
        for p in range(start, start + n):
            j = torch.arange(N)
            seen = j < start + n                                 # what the cache holds by then
            if mask == "bottom-right":
                seen &= j <= p
                if cfg.window is not None:
                    seen &= p - j < cfg.window
            elif mask == "no-window":
                seen &= j <= p
            elif mask == "top-left":
                seen &= j <= p - start
            visible[p] = seen
        start += n
    s = q @ k.transpose(-2, -1) / math.sqrt(d)
    s = s.masked_fill(~visible, float("-inf"))
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, N, H * d)
    return o @ _weight(mod.w_o).T


ATTENTION_MISTAKES = [  # (what to change in the oracle, the message)
    (dict(rope_v=True), tr("you rotate the values too: RoPE turns queries and keys only (the "
                        "values carry content, not position)")),
    (dict(pairing="half"), tr("you pair dimension i with i + d_head/2 (Llama's rotate_half); this "
                           "model turns the pairs (2i, 2i+1), as positions.rotate_pairs does")),
    (dict(rope_site="before-transpose"), tr("you apply RoPE before moving the heads axis: on "
     "[B, N, heads, d_head] the axis RoPE reads as positions is the heads. Split the heads "
     "first ([B, heads, N, d_head]), then rotate")),
    (dict(split="no-transpose"), tr("your head split mixes positions and heads: view(B, N, heads, "
                                 "d_head) then transpose(1, 2), not view(B, heads, N, d_head)")),
    (dict(kv="tile"), tr("query head h must read K/V head h // (n_heads / n_kv_heads) "
                      "(repeat_interleave, as gqa.repeat_kv), yours reads h % n_kv_heads "
                      "(the tile order of .repeat)")),
    (dict(mask="none"), tr("your attention has no causal mask: token p must not see keys after p")),
    (dict(mask="no-window"), tr("your attention ignores cfg.window: with a window W, position p "
                             "sees only keys p - W + 1 .. p (long_attention.window_mask)")),
    (dict(mask="top-left"), tr("with a cache the new queries are the LAST positions: the causal "
                            "mask must be aligned bottom-right (kv_cache.decode_mask(N, n_k)); "
                            "yours is top-left, as F.scaled_dot_product_attention's is_causal")),
]


def _diagnose(got, want, oracle_kwargs, make, what):
    if torch.allclose(got.double(), want, atol=1e-9, rtol=1e-7):
        return
    for change, message in ATTENTION_MISTAKES:
        try:
            cand = make(**{**oracle_kwargs, **change})
        except Exception:
            continue
        if cand is not None and cand.shape == got.shape and torch.allclose(
                got.double(), cand, atol=1e-9, rtol=1e-7):
            fail(trf("{what}: {message}"))
    expect_close(got, want, what, atol=1e-9, rtol=1e-7)


def _run_chunks(mod, x, chunks, ropes, n_layers, layer):
    """Runs where the learner's code runs: feed x chunk by chunk through one KVCache."""
    from transformer_course.kv_cache import KVCache
    cache, out, start = KVCache(n_layers), [], 0
    for n, rope in zip(chunks, ropes):
        out.append(mod(x[:, start:start + n], rope, cache, layer))
        start += n
    held = cache.k[layer]
    return torch.cat(out, dim=1), 0 if held is None else held.shape[-2]


def _randomize(mod, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in mod.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3 + (
                1.0 if p.dim() == 1 else 0.0))


def _expect_linear(mod, name, shape, who):
    lin = getattr(mod, name, None)
    if not isinstance(lin, nn.Module) or not hasattr(lin, "weight"):
        fail(trf("{who} should have a part {name} (an nn.Linear), got {describe(lin)}"))
    if tuple(lin.weight.shape) != shape:
        fail(trf("{who}.{name}.weight has shape {list(lin.weight.shape)}, expected {list(shape)} "
             "(nn.Linear(in, out) stores [out, in])"))
    if getattr(lin, "bias", None) is not None:
        fail(trf("{who}.{name} has a bias: Llama-style projections have none (bias=False)"))


ATTENTION_CASES = [  # (cfg changes, B, N, chunks or None, rope)
    (dict(n_heads=4, n_kv_heads=4), 2, 4, None, True),      # N = H = G: RoPE's axis matters
    (dict(d_model=36, n_heads=6, n_kv_heads=2), 1, 7, None, True),
    (dict(d_model=36, n_heads=6, n_kv_heads=3), 2, 9, [5, 1, 3], True),
    (dict(n_heads=4, n_kv_heads=1, window=3), 2, 8, None, True),
    (dict(n_heads=4, n_kv_heads=2, window=3), 1, 9, [4, 2, 3], True),
    (dict(n_heads=2, n_kv_heads=2), 2, 5, [2, 3], False),
]


def check_Attention(cls, seed: int = 0) -> None:
    """Attention(cfg): projections, RoPE on q and k in pairs (2i, 2i+1), GQA head mapping,
    causal (and windowed) mask aligned bottom-right with a KV cache."""
    who, n = name_of(cls), 0
    for i, (changes, B, N, chunks, rope) in enumerate(ATTENTION_CASES):
        cfg = _cfg(**changes)
        H, G, d, D = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
        shown = (trf("{who}(cfg with d_model={D}, n_heads={H}, n_kv_heads={G}")
                 + (trf(", window={cfg.window}") if cfg.window else "") + ")")
        mod = call(cls, cfg)
        if not isinstance(mod, nn.Module):
            fail(trf("{shown} should be an nn.Module, got {describe(mod)}"))
        for name, shape in (("w_q", (H * d, D)), ("w_k", (G * d, D)), ("w_v", (G * d, D)),
                            ("w_o", (D, H * d))):
            _expect_linear(mod, name, shape, shown)
        mod = mod.double()
        _randomize(mod, seed * 100 + i)
        with seeded(seed * 100 + i):
            x = torch.randn(B, N, D, dtype=torch.float64)
        cos, sin = _tables(cfg, torch.arange(N)) if rope else (None, None)
        what = trf("{shown} on x [{B}, {N}, {D}]") + ("" if rope else tr(" with rope=None"))
        if chunks is None:
            got = call(mod, x, None if cos is None else (cos, sin))
        else:
            what += trf(", fed in chunks of {chunks} through a KVCache")
            ropes, start = [], 0
            for c in chunks:
                ropes.append(None if cos is None else (cos[start:start + c],
                                                       sin[start:start + c]))
                start += c
            got, cached = beside(_run_chunks, mod)(x, chunks, ropes, 3, 1)
            if cached != N:
                fail(trf("{what}: the cache holds {cached} positions afterwards, expected {N}: "
                     "append the new keys and values with cache.update(layer, k, v)"))
        expect_tensor(got, what)
        if tuple(got.shape) != (B, N, D):
            fail(trf("{what} has shape {list(got.shape)}, expected {[B, N, D]}"))
        kw = dict(cos=cos, sin=sin, chunks=chunks)
        make = lambda **k: _attention_oracle(mod, cfg, x, **k)
        _diagnose(got, make(**kw), kw, make, what)
        n += 1
    passed(cls, n)


# --- Block ------------------------------------------------------------------------------------

def _block_oracle(block, x, rope, pre=True, swap=False, wiring=None):
    a_norm, f_norm = (block.ffn_norm, block.attn_norm) if swap else (block.attn_norm,
                                                                      block.ffn_norm)
    attn = lambda h: block.attn(h, rope)
    wiring = wiring or ("pre" if pre else "post")
    if wiring == "pre":
        x = x + attn(a_norm(x))
        return x + block.ffn(f_norm(x))
    if wiring == "post":
        x = a_norm(x + attn(x))
        return f_norm(x + block.ffn(x))
    if wiring == "branch":                      # norm on the branch's output
        x = x + a_norm(attn(x))
        return x + f_norm(block.ffn(x))
    if wiring == "no-residual":
        x = attn(a_norm(x))
        return block.ffn(f_norm(x))


def _run_block_cached(block, x, rope, n_layers, layer):
    from transformer_course.kv_cache import KVCache
    cache = KVCache(n_layers)
    block(x, rope, cache, layer)
    return [0 if k is None else k.shape[-2] for k in cache.k]


def check_Block(cls, seed: int = 0) -> None:
    """Block(cfg): pre-norm x + f(norm(x)) or post-norm norm(x + f(x)), attn then FFN, with the
    norm and FFN the config names, the cache and layer passed on to attention."""
    from transformer_course.blocks import RMSNorm
    from transformer_course.ffn import FeedForward, SwiGLU
    who, n = name_of(cls), 0
    cases = [dict(), dict(norm="layer", norm_position="post", ffn="relu"),
             dict(norm="layer"), dict(norm_position="post", d_ff=40)]
    for i, changes in enumerate(cases):
        cfg = _cfg(**changes)
        shown = (trf("{who}(cfg with norm={cfg.norm!r}, norm_position={cfg.norm_position!r}, "
                 "ffn={cfg.ffn!r})"))
        block = call(cls, cfg)
        if not isinstance(block, nn.Module):
            fail(trf("{shown} should be an nn.Module, got {describe(block)}"))
        norm_type = RMSNorm if cfg.norm == "rms" else nn.LayerNorm
        ffn_type = SwiGLU if cfg.ffn == "swiglu" else FeedForward
        for name, want in (("attn_norm", norm_type), ("ffn_norm", norm_type),
                           ("ffn", ffn_type)):
            part = getattr(block, name, None)
            if getattr(part, "__class__", type(part)).__name__ != want.__name__:
                fail(trf("{shown}.{name} should be a {want.__name__} (make_norm / make_ffn of "
                     "the config), got {describe(part)}"))
        if not isinstance(getattr(block, "attn", None), nn.Module):
            fail(trf("{shown} should have a part attn (Attention(cfg))"))
        block = block.double()
        _randomize(block, seed * 10 + i)
        with seeded(seed * 10 + i):
            x = torch.randn(2, 6, cfg.d_model, dtype=torch.float64)
        rope = _tables(cfg, torch.arange(6))
        what = trf("{shown} on x [2, 6, {cfg.d_model}]")
        got = call(block, x, rope)
        expect_tensor(got, what)
        if tuple(got.shape) != tuple(x.shape):
            fail(trf("{what} has shape {list(got.shape)}, expected {list(x.shape)}"))
        pre = cfg.norm_position == "pre"
        with torch.no_grad():
            want = _block_oracle(block, x, rope, pre)
            if not torch.allclose(got.double(), want, atol=1e-9, rtol=1e-7):
                other = "post" if pre else "pre"
                hints = [
                    (dict(wiring=other),
                     tr("you normalize after the residual sum, norm(x + f(x)): that is "
                     "post-norm; pre-norm is x + f(norm(x))") if pre else
                     tr("you wrote pre-norm x + f(norm(x)); post-norm (2017) is norm(x + f(x))")),
                    (dict(wiring="branch"), tr("you normalize the sublayer's output, x + "
                     "norm(f(x)); pre-norm normalizes its input: x + f(norm(x))")),
                    (dict(swap=True), tr("attn_norm and ffn_norm are swapped: attn_norm goes "
                                      "with attention, ffn_norm with the FFN")),
                    (dict(wiring="no-residual"), tr("the residual connections are missing: "
                                                 "add the sublayer's input back")),
                ]
                for change, message in hints:
                    cand = _block_oracle(block, x, rope, pre, **change)
                    if torch.allclose(got.double(), cand, atol=1e-9, rtol=1e-7):
                        fail(trf("{what}: {message}"))
                expect_close(got, want, what, atol=1e-9, rtol=1e-7,
                             hint=tr("The oracle calls your block's own parts in the order "
                                  "the config names"))
        n += 1
        lengths = beside(_run_block_cached, block)(x, rope, 3, 2)
        if lengths != [0, 0, 6]:
            fail(trf("{what} with cache=KVCache(3), layer=2: the cache's layers hold "
                 "{lengths} positions, expected [0, 0, 6]: pass cache and layer on to "
                 "self.attn"))
        n += 1
    passed(cls, n)


# --- LM ---------------------------------------------------------------------------------------

def _lm_oracle(lm, cfg, ids, start=0):
    N = ids.shape[1]
    positions = torch.arange(start, start + N)
    x = F.embedding(ids, lm.embed.weight.detach())
    rope = None
    if cfg.positions == "learned":
        x = x + lm.pos.weight.detach()[positions]
    if cfg.positions == "sinusoidal":
        x = x + lm.pe.detach()[positions]
    if cfg.positions == "rope":
        rope = lm.rope_cos.detach()[positions], lm.rope_sin.detach()[positions]
    hidden = [x]
    for i in range(cfg.n_layers):
        x = lm.layers[i](x, rope)
        hidden.append(x)
    return lm.head(lm.norm(x)), hidden


def _run_lm(lm, ids, chunks):
    """Runs where the learner's code runs: full pass (with hidden states) and chunked pass."""
    from transformer_course.kv_cache import KVCache
    hidden = []
    full = lm(ids, None, hidden)
    cache, out, start = KVCache(lm.cfg.n_layers), [], 0
    for n in chunks:
        out.append(lm(ids[:, start:start + n], cache))
        start += n
    return full, hidden, torch.cat(out, dim=1)


def check_LM(cls, seed: int = 0) -> None:
    """LM(cfg): embeddings and positions, the blocks, the final norm, the head (tied to the
    embedding when asked), the cache's positions, hidden states."""
    who, n = name_of(cls), 0
    cases = [dict(), dict(tie_embeddings=False, positions="learned"),
             dict(positions="sinusoidal", norm_position="post", norm="layer", ffn="relu"),
             dict(n_layers=3, window=4, tie_embeddings=False)]
    for i, changes in enumerate(cases):
        cfg = _cfg(**changes)
        shown = (trf("{who}(cfg with positions={cfg.positions!r}, tie_embeddings="
                 "{cfg.tie_embeddings}, norm_position={cfg.norm_position!r})"))
        lm = call(cls, cfg)
        if not isinstance(lm, nn.Module):
            fail(trf("{shown} should be an nn.Module, got {describe(lm)}"))
        tied = lm.head.weight.data_ptr() == lm.embed.weight.data_ptr()
        if cfg.tie_embeddings and not tied:
            fail(trf("{shown}: head.weight and embed.weight are two matrices; tie_embeddings "
                 "means one Parameter used twice (self.head.weight = self.embed.weight)"))
        if not cfg.tie_embeddings and tied:
            fail(trf("{shown}: head.weight is embed.weight, but tie_embeddings is False"))
        from transformer_course.lm import LM as Course
        want_n = sum(p.numel() for p in Course(cfg).parameters())
        got_n = sum(p.numel() for p in lm.parameters())
        if got_n != want_n:
            fail(trf("{shown} has {got_n:,} parameters, expected {want_n:,}")
                 + (tr(" (a tied matrix counts once)") if cfg.tie_embeddings else ""))
        lm = lm.double()
        _randomize(lm, seed * 10 + i)
        with seeded(seed * 10 + i):
            ids = torch.randint(0, cfg.vocab_size, (2, 11))
        what = trf("{shown} on ids [2, 11]")
        full, hidden, chunked = beside(_run_lm, lm)(ids, [5, 1, 5])
        expect_tensor(full, what)
        if tuple(full.shape) != (2, 11, cfg.vocab_size):
            fail(trf("{what} gives shape {list(full.shape)}, expected {[2, 11, cfg.vocab_size]}"))
        with torch.no_grad():
            want, want_hidden = _lm_oracle(lm, cfg, ids)
        if not torch.allclose(full.double(), want, atol=1e-9, rtol=1e-7):
            if len(hidden) == cfg.n_layers + 1 and torch.allclose(
                    hidden[-1].double(), want_hidden[-1], atol=1e-9, rtol=1e-7):
                fail(trf("{what}: the residual stream is right, the logits are not: apply "
                     "self.norm then self.head to the last block's output"))
            if hidden and not torch.allclose(hidden[0].double(), want_hidden[0],
                                             atol=1e-9, rtol=1e-7):
                fail(trf("{what}: the input of the first block is wrong: the token embedding")
                     + ("" if cfg.positions == "rope" else
                        trf(" plus the {cfg.positions} position of each token"))
                     + (tr(" (RoPE acts inside attention: add nothing)")
                        if cfg.positions == "rope" else ""))
            expect_close(full, want, what, atol=1e-9, rtol=1e-7)
        if len(hidden) != cfg.n_layers + 1:
            fail(trf("{what} with hidden=[]: it got {len(hidden)} entries, expected "
                 "{cfg.n_layers + 1} (after the embedding and after each block)"))
        for j, (h, w) in enumerate(zip(hidden, want_hidden)):
            if not torch.allclose(h.double(), w, atol=1e-9, rtol=1e-7):
                fail(trf("{what}: hidden[{j}] is not the residual stream ")
                     + (tr("after the embedding") if j == 0 else trf("after block {j - 1}")))
        if not torch.allclose(chunked.double(), want, atol=1e-9, rtol=1e-7):
            fail(trf("{what}, fed in chunks of [5, 1, 5] through a KVCache: the logits differ "
                 "from one full pass. The new tokens sit at positions len(cache), ..., "
                 "len(cache) + N - 1: start the positions at len(cache), not 0"))
        n += 3
    passed(cls, n)


# --- from_hf_llama ----------------------------------------------------------------------------

def _hf_state(cfg, seed, tied):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.3
    D, H, G, d, F_ = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.ffn_width
    sd = {"model.embed_tokens.weight": r(cfg.vocab_size, D),
          "model.norm.weight": 1 + r(D)}
    if not tied:
        sd["lm_head.weight"] = r(cfg.vocab_size, D)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        sd.update({p + "self_attn.q_proj.weight": r(H * d, D),
                   p + "self_attn.k_proj.weight": r(G * d, D),
                   p + "self_attn.v_proj.weight": r(G * d, D),
                   p + "self_attn.o_proj.weight": r(D, H * d),
                   p + "mlp.gate_proj.weight": r(F_, D), p + "mlp.up_proj.weight": r(F_, D),
                   p + "mlp.down_proj.weight": r(D, F_),
                   p + "input_layernorm.weight": 1 + r(D),
                   p + "post_attention_layernorm.weight": 1 + r(D)})
    return sd


def llama_reference(sd: dict, cfg, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a Llama with Hugging Face's state dict names and conventions (rotate_half
    RoPE, repeat_kv, RMSNorm, SwiGLU), float64, written from the formulas; its RoPE tables
    are computed in float32 as transformers computes them (lm.rope_tables)."""
    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

    from transformer_course.lm import rope_tables
    B, N = ids.shape
    H, G, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    cos, sin = (t[:N].double() for t in rope_tables(cfg))  # float32 tables, as Llama's
    x = sd["model.embed_tokens.weight"][ids]
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(B, N, H, d).transpose(1, 2)
        k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(B, N, G, d).transpose(1, 2)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(B, N, G, d).transpose(1, 2)
        q, k = _rot_half(q, cos, sin), _rot_half(k, cos, sin)
        k, v = k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1)
        s = (q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(~causal, float("-inf"))
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, N, H * d)
        x = x + o @ sd[p + "self_attn.o_proj.weight"].T
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        gate, up = h @ sd[p + "mlp.gate_proj.weight"].T, h @ sd[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return rms(x, sd["model.norm.weight"]) @ head.T


def _same(a, b):
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.equal(a.double(), b)


def check_from_hf_llama(fn, seed: int = 0) -> None:
    """from_hf_llama(state_dict, cfg) -> a state dict the course's LM loads, whose logits equal
    a Llama's (rotate_half RoPE) in float64."""
    from transformer_course.lm import LM
    from transformer_course.positions import half_split_permutation
    who, n = name_of(fn), 0
    cases = [(dict(n_heads=4, n_kv_heads=2), False), (dict(d_model=36, n_heads=6,
             n_kv_heads=3, n_layers=3), True), (dict(n_heads=2, n_kv_heads=1, d_ff=40), False)]
    for i, (changes, tied) in enumerate(cases):
        cfg = _cfg(tie_embeddings=tied, **changes)
        H, G, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        hf = _hf_state(cfg, seed * 10 + i, tied)
        what = (trf("{who}(a Llama state dict with n_heads={H}, n_kv_heads={G}, d_head={d}")
                + (tr(", no lm_head (tied)") if tied else "") + tr(", cfg)"))
        got = call(fn, dict(hf), cfg)
        if not isinstance(got, dict):
            fail(trf("{what} should return a dict (a state dict), got {describe(got)}"))
        model = LM(cfg).double()
        keys = set(model.state_dict())
        missing, extra = sorted(keys - set(got)), sorted(set(got) - keys)
        if missing or extra:
            fail(trf("{what}: the keys do not match LM(cfg).state_dict()'s: ")
                 + (trf("missing {missing[:4]}") if missing else "")
                 + (tr(" and ") if missing and extra else "")
                 + (trf("unexpected {extra[:4]}") if extra else ""))
        for key in sorted(keys):
            want_shape = tuple(model.state_dict()[key].shape)
            if not isinstance(got[key], torch.Tensor) or tuple(got[key].shape) != want_shape:
                fail(trf("{what}: {key} should be a tensor of shape {list(want_shape)}, got "
                     "{describe(got[key])}"))
        perm = half_split_permutation(d)
        q_hf = hf["model.layers.0.self_attn.q_proj.weight"]
        k_hf = hf["model.layers.0.self_attn.k_proj.weight"]
        v_hf = hf["model.layers.0.self_attn.v_proj.weight"]
        q, k, v = (got[f"layers.0.attn.w_{c}.weight"] for c in "qkv")
        within = lambda w, n_: w.view(n_, d, -1)[:, perm].reshape(n_ * d, -1)
        if _same(q, q_hf) and _same(k, k_hf):
            fail(trf("{what}: you copied q_proj and k_proj as they are. Llama's RoPE turns the "
                 "pairs (i, i + d_head/2) of each head (rotate_half), this model the pairs "
                 "(2i, 2i+1): reorder the rows of W_Q and W_K within each head with "
                 "half_split_permutation(d_head) (chapter 02's exercise)"))
        if _same(q, q_hf[half_split_permutation(H * d)]):
            fail(trf("{what}: you permuted W_Q's rows across all heads at once "
                 "(half_split_permutation(n_heads * d_head)); the pairs live within each "
                 "head: permute each head's d_head rows"))
        if _same(q, within(q_hf, H)) != _same(k, within(k_hf, G)):
            fail(trf("{what}: permute the rows of both W_Q and W_K (both are rotated); "
                 "only one of them is"))
        if _same(v, within(v_hf, G)) and not _same(v, v_hf):
            fail(trf("{what}: you permuted W_V's rows too: RoPE turns queries and keys only, "
                 "so v_proj is copied as it is"))
        if _same(got["layers.0.ffn.w_1.weight"], hf["model.layers.0.mlp.up_proj.weight"]):
            fail(trf("{what}: gate_proj and up_proj are swapped: gate_proj is w_1 (inside "
                 "SiLU), up_proj is w_3 (the value it multiplies)"))
        if _same(got["layers.0.attn_norm.weight"],
                 hf["model.layers.0.post_attention_layernorm.weight"]):
            fail(trf("{what}: input_layernorm is attn_norm (before attention), "
                 "post_attention_layernorm is ffn_norm (before the FFN)"))
        try:
            model.load_state_dict(got)
        except Exception as e:
            fail(trf("{what}: LM(cfg).load_state_dict rejected it: {e}"))
        with seeded(seed * 10 + i):
            ids = torch.randint(0, cfg.vocab_size, (2, 9))
        with torch.no_grad():
            expect_close(model(ids), llama_reference(hf, cfg, ids),
                         trf("{what}: the logits of LM(cfg) with your state dict"),
                         atol=1e-10, rtol=1e-9,
                         hint=tr("The oracle is a Llama written from the formulas, in float64"))
        n += 1
    passed(fn, n)
