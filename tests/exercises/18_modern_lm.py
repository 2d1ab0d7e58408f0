"""Chapter 18 (a modern small language model): the exercises, their checks, and plausible wrong
answers, among them the known bugs of issue 18 (RoPE on values, RoPE before the head split or in
the wrong pairing, norm after the residual, GQA tile mapping, untied weights, a top-left causal
mask with a cache, the missing q/k permutation of a Hugging Face Llama)."""

import torch
import torch.nn.functional as F

from exercises._case import Exercise
from transformer_course import lm
from transformer_course.checks import lm as checks
from transformer_course.gqa import repeat_kv
from transformer_course.kv_cache import decode_mask
from transformer_course.long_attention import window_mask
from transformer_course.positions import half_split_permutation, rotate_pairs


# --- Attention ---------------------------------------------------------------------------------

def _rotate_half(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _attention(mistake):
    class Attention(lm.Attention):
        def forward(self, x, rope=None, cache=None, layer=0):
            cfg, (B, N, _) = self.cfg, x.shape
            H, G, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
            rot = _rotate_half if mistake == "half" else rotate_pairs
            if mistake == "no-transpose":
                q = self.w_q(x).view(B, H, N, d)
                k, v = self.w_k(x).view(B, G, N, d), self.w_v(x).view(B, G, N, d)
            elif mistake == "before-transpose":
                q = self.w_q(x).view(B, N, H, d)
                k, v = self.w_k(x).view(B, N, G, d), self.w_v(x).view(B, N, G, d)
                if rope is not None:
                    q, k = rot(q, *rope), rot(k, *rope)
                q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            else:
                q = self.w_q(x).view(B, N, H, d).transpose(1, 2)
                k = self.w_k(x).view(B, N, G, d).transpose(1, 2)
                v = self.w_v(x).view(B, N, G, d).transpose(1, 2)
            if rope is not None and mistake != "before-transpose":
                q, k = rot(q, *rope), rot(k, *rope)
                if mistake == "rope-v":
                    v = rot(v, *rope)
            if cache is not None and mistake != "no-cache":
                k, v = cache.update(layer, k, v)
            n_k = k.shape[-2]
            if mistake == "tile":
                k, v = k.repeat(1, H // G, 1, 1), v.repeat(1, H // G, 1, 1)
            else:
                k, v = repeat_kv(k, H // G), repeat_kv(v, H // G)
            if mistake == "is-causal":
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif mistake == "no-mask":
                o = F.scaled_dot_product_attention(q, k, v)
            else:
                mask = (decode_mask(N, n_k) if cfg.window is None or mistake == "no-window"
                        else window_mask(N, n_k, cfg.window))
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.w_o(o.transpose(1, 2).reshape(B, N, H * d))

    return Attention


ATTENTION_WRONG = [
    (_attention("rope-v"), "you rotate the values too"),
    (_attention("half"), "you pair dimension i with i + d_head/2"),
    (_attention("before-transpose"), "you apply RoPE before moving the heads axis"),
    (_attention("no-transpose"), "your head split mixes positions and heads"),
    (_attention("tile"), "yours reads h % n_kv_heads"),
    (_attention("is-causal"), "yours is top-left"),
    (_attention("no-mask"), "has no causal mask"),
    (_attention("no-window"), "ignores cfg.window"),
    (_attention("no-cache"), "append the new keys and values with cache.update"),
]


# --- Block -------------------------------------------------------------------------------------

def _block(mistake):
    class Block(lm.Block):
        def forward(self, x, rope=None, cache=None, layer=0):
            attend = lambda h: self.attn(h, rope, None if mistake == "no-cache" else cache,
                                         layer)
            a_norm, f_norm = self.attn_norm, self.ffn_norm
            if mistake == "swap":
                a_norm, f_norm = f_norm, a_norm
            if mistake == "post-always" or (mistake == "flip" and self.pre):
                x = a_norm(x + attend(x))                  # norm after the residual
                return f_norm(x + self.ffn(x))
            if mistake == "branch":
                x = x + a_norm(attend(x))
                return x + f_norm(self.ffn(x))
            if mistake == "no-residual":
                return self.ffn(f_norm(attend(a_norm(x))))
            x = x + attend(a_norm(x))
            return x + self.ffn(f_norm(x))

    return Block


BLOCK_WRONG = [
    (_block("post-always"), "you normalize after the residual sum"),
    (_block("branch"), "you normalize the sublayer's output"),
    (_block("swap"), "attn_norm and ffn_norm are swapped"),
    (_block("no-residual"), "the residual connections are missing"),
    (_block("no-cache"), "pass cache and layer on to self.attn"),
    (_block("pre-always"), "you wrote pre-norm x + f(norm(x)); post-norm (2017)"),
]


# --- LM ----------------------------------------------------------------------------------------

def _lm(mistake):
    class LM(lm.LM):
        def __init__(self, cfg):
            super().__init__(cfg)
            if mistake == "untied" and cfg.tie_embeddings:
                self.head = torch.nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
            if mistake == "always-tied":
                self.head.weight = self.embed.weight

        def forward(self, ids, cache=None, hidden=None):
            cfg, (B, N) = self.cfg, ids.shape
            start = 0 if cache is None or mistake == "positions-from-0" else len(cache)
            positions = torch.arange(start, start + N)
            x, rope = self.embed(ids), None
            if cfg.positions == "learned" and mistake != "no-positions":
                x = x + self.pos(positions)
            if cfg.positions == "sinusoidal" and mistake != "no-positions":
                x = x + self.pe[positions]
            if cfg.positions == "rope":
                rope = self.rope_cos[positions], self.rope_sin[positions]
            if hidden is not None and mistake != "no-hidden":
                hidden.append(x)
            for i, block in enumerate(self.layers):
                x = block(x, rope, cache, i)
                if hidden is not None and mistake != "no-hidden":
                    hidden.append(x)
            return self.head(x if mistake == "no-final-norm" else self.norm(x))

    return LM


LM_WRONG = [
    (_lm("untied"), "tie_embeddings means one Parameter used twice"),
    (_lm("always-tied"), "but tie_embeddings is False"),
    (_lm("positions-from-0"), "start the positions at len(cache)"),
    (_lm("no-final-norm"), "apply self.norm then self.head"),
    (_lm("no-positions"), "plus the learned position of each token"),
    (_lm("no-hidden"), "expected 3 (after the embedding and after each block)"),
]


# --- from_hf_llama -----------------------------------------------------------------------------

def _mapping(mistake):
    def from_hf_llama(state_dict, cfg):
        sd = lm.from_hf_llama(state_dict, cfg)
        H, G, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        within = lambda w, n: w.reshape(n, d, -1)[:, half_split_permutation(d)].reshape(n * d, -1)
        for i in range(cfg.n_layers):
            hf, us = f"model.layers.{i}.", f"layers.{i}."
            q, k = state_dict[hf + "self_attn.q_proj.weight"], state_dict[hf + "self_attn.k_proj.weight"]
            if mistake == "no-permutation":
                sd[us + "attn.w_q.weight"], sd[us + "attn.w_k.weight"] = q, k
            if mistake == "across-heads":
                sd[us + "attn.w_q.weight"] = q[half_split_permutation(H * d)]
                sd[us + "attn.w_k.weight"] = k[half_split_permutation(G * d)]
            if mistake == "q-only":
                sd[us + "attn.w_k.weight"] = k
            if mistake == "v-too":
                sd[us + "attn.w_v.weight"] = within(state_dict[hf + "self_attn.v_proj.weight"], G)
            if mistake == "gate-up":
                sd[us + "ffn.w_1.weight"] = state_dict[hf + "mlp.up_proj.weight"]
                sd[us + "ffn.w_3.weight"] = state_dict[hf + "mlp.gate_proj.weight"]
            if mistake == "norms":
                sd[us + "attn_norm.weight"] = state_dict[hf + "post_attention_layernorm.weight"]
                sd[us + "ffn_norm.weight"] = state_dict[hf + "input_layernorm.weight"]
        if mistake == "lm-head":
            sd["head.weight"] = state_dict["lm_head.weight"]
        return sd

    return from_hf_llama


HF_WRONG = [
    (_mapping("no-permutation"), "you copied q_proj and k_proj as they are"),
    (_mapping("across-heads"), "across all heads at once"),
    (_mapping("q-only"), "only one of them is"),
    (_mapping("v-too"), "you permuted W_V's rows too"),
    (_mapping("gate-up"), "gate_proj and up_proj are swapped"),
    (_mapping("norms"), "input_layernorm is attn_norm"),
    (_mapping("lm-head"), "lm_head.weight"),
]


EXERCISES = {
    "Attention": Exercise(check=checks.check_Attention, solution=lm.Attention,
                          wrong=ATTENTION_WRONG),
    "Block": Exercise(check=checks.check_Block, solution=lm.Block, wrong=BLOCK_WRONG),
    "LM": Exercise(check=checks.check_LM, solution=lm.LM, wrong=LM_WRONG),
    "from_hf_llama": Exercise(check=checks.check_from_hf_llama, solution=lm.from_hf_llama,
                              wrong=HF_WRONG),
}
