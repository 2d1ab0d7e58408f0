"""Generated from solutions/16_rwkv.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# RWKV-4: the WKV operator in its recurrent and parallel forms, and a small RWKV model.
# What later chapters use:
#   wkv_recurrent(w, u, k, v), wkv_parallel(w, u, k, v)   [B, N, C] -> [B, N, C]
#   wkv_step(w, u, k, v, state)        one token: (out [B, C], state (a, b, p))
#   RWKVConfig, RWKV                   forward(ids) -> logits; step(ids, state)
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_wkv_inputs(w, u, k, v) -> None:
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"k and v must be [B, N, C] of the same shape, got k "
                         f"{list(k.shape)}, v {list(v.shape)}")
    if w.shape != k.shape[-1:] or u.shape != k.shape[-1:]:
        raise ValueError(f"w and u must be [C] = [{k.shape[-1]}], got w "
                         f"{list(w.shape)}, u {list(u.shape)}")


def wkv_exponents(w, u, k) -> torch.Tensor:
    """[B, N, N + 1, C]: the exponent of the weight of v_i (i < N) and of v_t (last) in
    wkv_t; -inf where i >= t."""
    t = k.shape[1]
    i = torch.arange(t, device=k.device)
    lag = (i[:, None] - 1 - i[None, :]).to(k.dtype)[None, :, :, None]   # t - 1 - i
    past = (k[:, None, :, :] - lag * w).masked_fill(
        (i[None, :] >= i[:, None])[None, :, :, None], float("-inf"))
    return torch.cat([past, (u + k)[:, :, None, :]], dim=2)


def wkv_naive(w, u, k, v) -> torch.Tensor:
    """WKV straight from its formula: correct while every e^exponent fits the dtype."""
    check_wkv_inputs(w, u, k, v)
    weights = wkv_exponents(w, u, k).exp()                  # [B, N, N + 1, C]
    values = torch.cat([v[:, None].expand(-1, k.shape[1], -1, -1), v[:, :, None]],
                       dim=2)
    return (weights * values).sum(2) / weights.sum(2)


def wkv_step(w, u, k, v, state=None):
    """One token of RWKV-4's WKV, stabilized with the running maximum p of the
    exponents: w >= 0 (decay e^-w per step), u (bonus of the current token) [C]; k, v
    [B, C] of token t; state (a, b, p) [B, C] each, None at the start -> (wkv_t [B, C],
    the state after token t)."""
    if state is None:
        state = (torch.zeros_like(k), torch.zeros_like(k),
                 torch.full_like(k, float("-inf")))
    a, b, p = state
    q = torch.maximum(p, u + k)                                 # output: past + bonus
    e1, e2 = torch.exp(p - q), torch.exp(u + k - q)
    out = (e1 * a + e2 * v) / (e1 * b + e2)
    q = torch.maximum(p - w, k)                                 # update: decay, add k_t
    e1, e2 = torch.exp(p - w - q), torch.exp(k - q)
    return out, (e1 * a + e2 * v, e1 * b + e2, q)


def wkv_recurrent(w, u, k, v) -> torch.Tensor:
    """RWKV-4's WKV token by token, wkv_step with the state carried: w, u [C]; k, v
    [B, N, C] -> [B, N, C]."""
    check_wkv_inputs(w, u, k, v)
    state, out = None, []
    for t in range(k.shape[1]):
        o, state = wkv_step(w, u, k[:, t], v[:, t], state)
        out.append(o)
    return torch.stack(out, dim=1)


def wkv_parallel(w, u, k, v) -> torch.Tensor:
    """RWKV-4's WKV from the [N, N + 1] matrix of exponents per channel, stabilized by
    each row's maximum. w >= 0, u [C]; k, v [B, N, C] -> [B, N, C]."""
    check_wkv_inputs(w, u, k, v)
    e = wkv_exponents(w, u, k)                               # [B, N, N + 1, C]
    e = (e - e.amax(dim=2, keepdim=True)).exp()              # <= 1, the largest is 1
    values = torch.cat([v[:, None].expand(-1, k.shape[1], -1, -1), v[:, :, None]],
                       dim=2)
    return (e * values).sum(2) / e.sum(2)


def token_shift(x, last=None):
    """x [B, N, C] -> the previous token's x at each position; last [B, C] is the input
    before x (zeros at the start of a text)."""
    first = torch.zeros_like(x[:, :1]) if last is None else last[:, None]
    return torch.cat([first, x[:, :-1]], dim=1)


class TimeMix(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.mix = nn.Parameter(torch.full((3, d), 0.5))          # for k, v, r
        self.time_decay = nn.Parameter(torch.linspace(-3.0, 1.0, d))  # w = e^time_decay
        self.time_first = nn.Parameter(torch.zeros(d))            # the bonus u
        self.key, self.value, self.receptance, self.output = (
            nn.Linear(d, d, bias=False) for _ in range(4))

    def _kvr(self, x, prev):
        mk, mv, mr = self.mix
        return (self.key(x * mk + prev * (1 - mk)),
                self.value(x * mv + prev * (1 - mv)),
                torch.sigmoid(self.receptance(x * mr + prev * (1 - mr))))

    def forward(self, x):
        k, v, r = self._kvr(x, token_shift(x))
        w, u = self.time_decay.exp(), self.time_first
        return self.output(r * wkv_parallel(w, u, k, v))

    def step(self, x, state=None):
        """x [B, C]; state (previous x, a, b, p) or None -> (out [B, C], state)."""
        prev, wkv_state = (torch.zeros_like(x), None) if state is None else (
            state[0], state[1:])
        k, v, r = self._kvr(x, prev)
        w, u = self.time_decay.exp(), self.time_first
        out, wkv_state = wkv_step(w, u, k, v, wkv_state)
        return self.output(r * out), (x, *wkv_state)


class ChannelMix(nn.Module):
    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.mix = nn.Parameter(torch.full((2, d), 0.5))          # for k, r
        self.key = nn.Linear(d, d_ff, bias=False)
        self.value = nn.Linear(d_ff, d, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)

    def forward(self, x, prev=None):
        """x [B, N, C] (prev None) or one token x [B, C] with the previous one, prev."""
        prev = token_shift(x) if prev is None else prev
        mk, mr = self.mix
        k = torch.relu(self.key(x * mk + prev * (1 - mk))) ** 2
        return torch.sigmoid(self.receptance(x * mr + prev * (1 - mr))) * self.value(k)


@dataclass
class RWKVConfig:
    vocab_size: int
    d_model: int = 64
    d_ff: int = 224
    n_layers: int = 2
    max_len: int = 64       # the training window only: RWKV has no position table


class RWKVBlock(nn.Module):
    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.att, self.ffn = TimeMix(cfg.d_model), ChannelMix(cfg.d_model, cfg.d_ff)

    def forward(self, x):
        x = x + self.att(self.ln1(x))
        return x + self.ffn(self.ln2(x))

    def step(self, x, state=None):
        att_state, ffn_prev = (None, None) if state is None else state
        y, att_state = self.att.step(self.ln1(x), att_state)
        x = x + y
        h = self.ln2(x)
        x = x + self.ffn(h, torch.zeros_like(h) if ffn_prev is None else ffn_prev)
        return x, (att_state, h)


class RWKV(nn.Module):
    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.ln0, self.ln_out = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.blocks = nn.ModuleList(RWKVBlock(cfg) for _ in range(cfg.n_layers))
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, ids):
        """ids [B, N] -> logits [B, N, |V|], all positions in parallel."""
        x = self.ln0(self.emb(ids))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_out(x))

    def step(self, ids, state=None):
        """ids [B] (one token each) -> (logits [B, |V|], state): decoding as an RNN."""
        x = self.ln0(self.emb(ids))
        state = state or [None] * len(self.blocks)
        new = []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s)
            new.append(s)
        return self.head(self.ln_out(x)), new
