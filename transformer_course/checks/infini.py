"""Checks for chapter 15 (Infini-attention): the compressive memory's read and write, and the
InfiniAttention layer.

The oracles are independent of the learner's segment loop: the memory read of a whole
sequence is linear attention (phi = elu + 1) under the mask "key in a strictly earlier
segment", and the local attention is softmax attention under the mask "same segment, j <= i",
both written as [N, N] matrices in float64. When an output is wrong, the check recomputes what
each known mistake gives (sqrt(d_model) scaling, the current segment in the memory, a gate
shared by the heads, a memory shared by the heads, 0/0 on an empty memory...) and names the
one that matches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..i18n import tr, trf
from . import call, expect_tensor, fail, name_of, passed, seeded

__all__ = ["check_memory_retrieve", "check_memory_update", "check_InfiniAttention"]


def _phi(x):
    return F.elu(x) + 1


def _close(got, want, tol) -> bool:
    g = got.detach().double().cpu()
    return g.shape == want.shape and bool(((g - want).abs() <= tol * (1 + want.abs())).all())


def _tol(dtype):
    return 1e-10 if dtype == torch.float64 else 1e-5


def _randn(g, *shape, dtype):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _memory(g, batch, d_k, d_v, n_stored, dtype):
    """A memory (M, z) that holds n_stored random pairs."""
    k = _randn(g, *batch, n_stored, d_k, dtype=torch.float64)
    v = _randn(g, *batch, n_stored, d_v, dtype=torch.float64)
    M, z = _phi(k).transpose(-2, -1) @ v, _phi(k).sum(-2)
    return M.to(dtype), z.to(dtype)


# --- memory_retrieve ----------------------------------------------------------------------

def retrieve_ref(q, M, z, bug=None):
    q, M, z = (t.detach().double().cpu() for t in (q, M, z))
    fq = q if bug == "no_phi" else _phi(q)
    num = fq @ M
    if bug == "no_norm":
        return num
    den = fq @ z[..., None]
    if bug == "eps":
        return num / (den + 1e-6)
    return torch.where(den != 0, num / torch.where(den != 0, den, 1), 0.0)


RETRIEVE_BUGS = {
    "no_phi": tr("your output is what you get without sigma on the queries: the read is "
              "sigma(Q) M / (sigma(Q) z) with sigma = elu + 1"),
    "no_norm": tr("your output is the numerator sigma(Q) M alone: divide by sigma(Q) z, so "
               "that the read is a weighted average of the stored values"),
    "eps": tr("your output is what an eps added to the denominator gives: sigma > 0 makes "
           "sigma(Q) z > 0 whenever the memory holds anything; treat only z = 0 apart"),
}


def _retrieve_cases(seed):
    with seeded(seed):
        n = int(torch.randint(5, 30, ())) | 1
    # batch, N, d_k, d_v, stored pairs, dtype
    return [((2,), 7, 4, 3, 5, torch.float64), ((1, 3), 1, 5, 2, 1, torch.float64),
            ((2, 2), n, 8, 6, 40, torch.float32)]


def check_memory_retrieve(fn, seed: int = 0) -> None:
    """fn(q, M, z) must be sigma(q) M / (sigma(q) z), sigma = elu + 1, and zeros when z = 0."""
    who, n_cases = name_of(fn), 0
    for i, (batch, n, d_k, d_v, stored, dtype) in enumerate(_retrieve_cases(seed)):
        g = torch.Generator().manual_seed(seed + i)
        q = _randn(g, *batch, n, d_k, dtype=dtype)
        M, z = _memory(g, batch, d_k, d_v, stored, dtype)
        head = (f"{who}(q {list(q.shape)}, M {list(M.shape)}, z {list(z.shape)}, "
                f"{str(dtype).removeprefix('torch.')})")
        M0, z0 = M.clone(), z.clone()
        out = call(fn, q, M, z)
        expect_tensor(out, head)
        want = [*batch, n, d_v]
        if list(out.shape) != want:
            fail(trf("{head} has shape {list(out.shape)}, expected {want} = [..., N, d_v]: one "
                 "row per query, as wide as the values"))
        if out.dtype != dtype:
            fail(trf("{head} has dtype {out.dtype}, expected the inputs' dtype {dtype}"))
        if not (torch.equal(M, M0) and torch.equal(z, z0)):
            fail(trf("{head} changed M or z in place: a read must leave the memory as it is"))
        if not _close(out, retrieve_ref(q, M, z), _tol(dtype)):
            for bug, msg in RETRIEVE_BUGS.items():
                if _close(out, retrieve_ref(q, M, z, bug), 1e-9 if bug == "eps" else 1e-4):
                    fail(trf("{head}: {msg}"))
            err = (out.detach().double().cpu() - retrieve_ref(q, M, z)).abs().max().item()
            fail(trf("{head} differs from sigma(q) M / (sigma(q) z) by up to {err:.3g}"))
        n_cases += 1
    # the empty memory: z = 0 and M = 0 must read as zeros, not 0/0 = NaN
    for dtype in (torch.float64, torch.float32):
        q = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(seed)).to(dtype)
        M, z = torch.zeros(2, 3, 4, 6, dtype=dtype), torch.zeros(2, 3, 4, dtype=dtype)
        head = trf("{who}(q {list(q.shape)}, an empty memory M = 0, z = 0)")
        out = call(fn, q, M, z)
        expect_tensor(out, head)
        if list(out.shape) != [2, 3, 5, 6]:
            fail(trf("{head} has shape {list(out.shape)}, expected [2, 3, 5, 6]"))
        if torch.isnan(out).any():
            fail(trf("{head} contains NaN: 0/0 on the empty memory. Before the first segment "
                 "has been written the memory holds nothing: return zeros where "
                 "sigma(q) z = 0"))
        if not torch.equal(out, torch.zeros_like(out)):
            fail(trf("{head} is not all zeros: an empty memory has nothing to return"))
        n_cases += 1
    passed(fn, n_cases)


# --- memory_update ------------------------------------------------------------------------

def update_ref(k, v, M, z, delta, bug=None):
    k, v, M, z = (t.detach().double().cpu() for t in (k, v, M, z))
    fk = _phi(k)
    if delta:
        if bug == "delta_no_norm":
            old = fk @ M
        else:
            old = retrieve_ref(k, M, z)
        new = v + old if bug == "delta_sign" else v - old
    else:
        new = v
    M2 = M + fk.transpose(-2, -1) @ new
    z2 = z if bug == "no_z" else z + (k.sum(-2) if bug == "z_raw" else fk.sum(-2))
    return M2, z2


UPDATE_BUGS = {
    "delta_sign": tr("your M is what V + retrieved gives: the delta rule writes only what the "
                  "memory does not already return, V - sigma(K) M / (sigma(K) z)"),
    "delta_no_norm": tr("your M is what V - sigma(K) M gives, without the normalizer: "
                     "subtract the memory's read, sigma(K) M / (sigma(K) z)"),
    "no_z": tr("your z did not change: z + sum over the segment's positions of sigma(k_t)"),
    "z_raw": tr("your z adds the raw keys: z + sum_t sigma(k_t), sigma = elu + 1"),
}


def _update_cases(seed):
    with seeded(seed):
        n = int(torch.randint(5, 30, ())) | 1
    return [((2,), 7, 4, 3, 5, torch.float64), ((1, 3), 1, 5, 2, 1, torch.float64),
            ((2,), 4, 3, 5, 0, torch.float64), ((2, 2), n, 8, 6, 40, torch.float32)]


def check_memory_update(fn, seed: int = 0) -> None:
    """fn(k, v, M, z, delta) -> (M', z'), the linear or delta-rule write of one segment."""
    who, n_cases = name_of(fn), 0
    for i, (batch, n, d_k, d_v, stored, dtype) in enumerate(_update_cases(seed)):
        g = torch.Generator().manual_seed(seed + i)
        k, v = _randn(g, *batch, n, d_k, dtype=dtype), _randn(g, *batch, n, d_v, dtype=dtype)
        M, z = _memory(g, batch, d_k, d_v, stored, dtype)
        if stored == 0:
            M, z = torch.zeros_like(M), torch.zeros_like(z)
        empty = tr("an empty memory, ") if stored == 0 else ""
        for delta in (False, True):
            head = (trf("{who}(k {list(k.shape)}, v {list(v.shape)}, M {list(M.shape)}, "
                    "{empty}delta={delta})"))
            M0, z0 = M.clone(), z.clone()
            got = call(fn, k, v, M, z, delta=delta)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                fail(trf("{head} returned {type(got).__name__}, expected a pair (M, z)"))
            M2, z2 = got
            expect_tensor(M2, head + ": M")
            expect_tensor(z2, head + ": z")
            if list(M2.shape) != list(M.shape) or list(z2.shape) != list(z.shape):
                fail(trf("{head} returned M {list(M2.shape)}, z {list(z2.shape)}, expected "
                     "{list(M.shape)}, {list(z.shape)}: the memory's size never changes"))
            if not (torch.equal(M, M0) and torch.equal(z, z0)):
                fail(trf("{head} changed the M or z passed in, in place (M += ...): return "
                     "new tensors (M = M + ...)"))
            if torch.isnan(M2).any():
                fail(trf("{head}: M contains NaN: 0/0 when the delta rule reads the empty "
                     "memory? An empty memory reads as zeros"))
            want_m, want_z = update_ref(k, v, M, z, delta)
            tol = _tol(dtype)
            if not (_close(M2, want_m, tol) and _close(z2, want_z, tol)):
                for bug, msg in UPDATE_BUGS.items():
                    if bug.startswith("delta") and not delta:
                        continue
                    bm, bz = update_ref(k, v, M, z, delta, bug)
                    if _close(M2, bm, 1e-4) and _close(z2, bz, 1e-4) and not (
                            _close(M2, want_m, 1e-4) and _close(z2, want_z, 1e-4)):
                        fail(trf("{head}: {msg}"))
                if delta and _close(M2, update_ref(k, v, M, z, False)[0], 1e-4):
                    fail(trf("{head}: your M is the linear update: with delta=True subtract "
                         "what the memory already returns for these keys"))
                if not delta and _close(M2, update_ref(k, v, M, z, True)[0], 1e-4):
                    fail(trf("{head}: your M is the delta rule's although delta=False"))
                what = "M" if not _close(M2, want_m, tol) else "z"
                fail(trf("{head}: {what} differs from M + sigma(K)^T "
                     "{'(V - sigma(K) M / (sigma(K) z))' if delta else 'V'}, "
                     "z + sum_t sigma(k_t)"))
            n_cases += 1
    # the delta rule's exact property: writing a stored pair again leaves M unchanged
    g = torch.Generator().manual_seed(seed + 10)
    k, v = _randn(g, 3, 1, 6, dtype=torch.float64), _randn(g, 3, 1, 4, dtype=torch.float64)
    M, z = _phi(k).transpose(-2, -1) @ v, _phi(k).sum(-2)
    M2, _ = call(fn, k, v, M, z, delta=True)
    if not _close(M2, M.double(), 1e-10):
        fail(trf("{who}(a pair already stored, written again, delta=True) changed M by up to "
             "{(M2.double() - M).abs().max().item():.3g}: the memory already returns v "
             "for k, so V - sigma(K) M / (sigma(K) z) = 0 and nothing is written"))
    passed(fn, n_cases + 1)


# --- InfiniAttention ----------------------------------------------------------------------

def infini_ref(x, wq, wk, wv, wo, beta, n_heads, segment, bug=None):
    """The layer on a whole sequence, as [N, N] masks, float64. x [B, N, d_model]."""
    x, wq, wk, wv, wo, beta = (t.detach().double().cpu() for t in (x, wq, wk, wv, wo, beta))
    B, N, D = x.shape
    dh = D // n_heads
    q, k, v = (t.view(B, N, n_heads, dh).transpose(1, 2) for t in (x @ wq.T, x @ wk.T, x @ wv.T))
    s = torch.arange(N) // segment
    same = (s[:, None] == s[None, :]) & (torch.arange(N)[:, None] >= torch.arange(N)[None, :])
    scale = D ** 0.5 if bug == "sqrt_d_model" else dh ** 0.5
    scores = (q @ k.transpose(-2, -1) / scale).masked_fill(~same, float("-inf"))
    local = scores.softmax(-1) @ v
    earlier = s[None, :] <= s[:, None] if bug == "current" else s[None, :] < s[:, None]
    fq, fk = _phi(q), _phi(k)
    if bug == "shared_heads":
        kv = torch.einsum("bhjd,bhje->bjde", fk, v)               # summed over heads
        kk = fk.sum(1)                                             # [B, N, dh]
        e = earlier.double()
        M = torch.einsum("ij,bjde->bide", e, kv)                   # [B, N, dh, dh]
        z = torch.einsum("ij,bjd->bid", e, kk)
        num = torch.einsum("bhid,bide->bhie", fq, M)
        den = torch.einsum("bhid,bid->bhi", fq, z)[..., None]
    else:
        a = (fq @ fk.transpose(-2, -1)) * earlier
        num, den = a @ v, a.sum(-1, keepdim=True)
    mem = torch.where(den > 0, num / torch.where(den > 0, den, 1), 0.0)
    gb = beta.expand(n_heads) if bug != "gate_head0" else beta[:1].expand(n_heads)
    g = torch.sigmoid(gb).view(1, n_heads, 1, 1)
    if bug == "gate_swapped":
        g = 1 - g
    out = g * mem + (1 - g) * local
    return out.transpose(1, 2).reshape(B, N, D) @ wo.T


def infini_delta_ref(x, wq, wk, wv, wo, beta, n_heads, segment, delta=True):
    """The layer segment by segment in float64, written with update_ref's rule (the delta
    rule when delta=True): the reference for InfiniAttention(..., delta=True)."""
    x, wq, wk, wv, wo, beta = (t.detach().double().cpu() for t in (x, wq, wk, wv, wo, beta))
    B, N, D = x.shape
    dh = D // n_heads
    q, k, v = (t.view(B, N, n_heads, dh).transpose(1, 2) for t in (x @ wq.T, x @ wk.T, x @ wv.T))
    M = torch.zeros(B, n_heads, dh, dh, dtype=torch.float64)
    z = torch.zeros(B, n_heads, dh, dtype=torch.float64)
    g = torch.sigmoid(beta).view(1, n_heads, 1, 1)
    out = []
    for s0 in range(0, N, segment):
        qs, ks, vs = (t[:, :, s0:s0 + segment] for t in (q, k, v))
        n = qs.shape[-2]
        lower = torch.ones(n, n, dtype=torch.bool).tril()
        scores = (qs @ ks.transpose(-2, -1) / dh ** 0.5).masked_fill(~lower, float("-inf"))
        out.append(g * retrieve_ref(qs, M, z) + (1 - g) * (scores.softmax(-1) @ vs))
        M, z = update_ref(ks, vs, M, z, delta)
    return torch.cat(out, 2).transpose(1, 2).reshape(B, N, D) @ wo.T


LAYER_BUGS = {
    "sqrt_d_model": tr("your output is what scores divided by sqrt(d_model) give: scale the "
                    "local attention by sqrt(d_head), the size of the vectors compared"),
    "current": tr("your output is what a memory that already holds the current segment gives: "
               "read the memory first (earlier segments only), then write the segment"),
    "gate_head0": tr("your output is what one gate for all heads gives (beta[0]): the gate "
                  "beta has one value per head, sigmoid(beta[h]) for head h"),
    "gate_swapped": tr("your output has the gate the wrong way round: out = sigmoid(beta) "
                    "A_mem + (1 - sigmoid(beta)) A_local"),
    "shared_heads": tr("your output is what one memory shared by all heads gives: each head "
                    "has its own M [d_head, d_head] and z [d_head]"),
}


def _params(m):
    for name in ("q", "k", "v", "o"):
        lin = getattr(m, name, None)
        if not isinstance(lin, torch.nn.Linear):
            fail(trf("{type(m).__name__} needs nn.Linear projections q, k, v, o (as the "
                 "given __init__ makes them)"))
    return m.q.weight, m.k.weight, m.v.weight, m.o.weight, m.beta


def check_InfiniAttention(cls, seed: int = 0) -> None:
    """cls(d_model, n_heads, segment, delta=False): segments, local causal attention, the
    memory of earlier segments, the per-head gate, the memory kept across calls and reset."""
    who, n_cases = name_of(cls), 0
    with seeded(seed):
        n_long = int(torch.randint(12, 20, ())) | 1
    # d_model, heads, segment, N, batch
    for d_model, n_heads, segment, n, batch in [(12, 3, 4, n_long, 2), (8, 2, 5, 5, 1),
                                                 (6, 1, 3, 10, 1), (12, 4, 7, 3, 2)]:
        with seeded(seed + n):
            m = call(cls, d_model, n_heads, segment).double()
            with torch.no_grad():
                m.beta.copy_(torch.randn(n_heads) * 1.5)
            x = torch.randn(batch, n, d_model, dtype=torch.float64)
        head = (trf("{who}(d_model={d_model}, n_heads={n_heads}, segment={segment}) on x "
                "{list(x.shape)}"))
        if list(m.beta.shape) != [n_heads]:
            fail(trf("{head}: beta has shape {list(m.beta.shape)}, expected [{n_heads}]: one "
                 "gate per head"))
        out = call(m, x)
        expect_tensor(out, head)
        if list(out.shape) != list(x.shape):
            fail(trf("{head}: output shape {list(out.shape)}, expected {list(x.shape)}"))
        if torch.isnan(out).any():
            fail(trf("{head}: the output contains NaN: 0/0 when the first segment reads the "
                 "empty memory? An empty memory reads as zeros"))
        w = _params(m)
        want = infini_ref(x, *w, n_heads, segment)
        if not _close(out, want, 1e-9):
            for bug, msg in LAYER_BUGS.items():
                if _close(out, infini_ref(x, *w, n_heads, segment, bug), 1e-8):
                    fail(trf("{head}: {msg}"))
            if _close(out, infini_ref(x, *w, n_heads, n), 1e-8):
                fail(trf("{head}: your output is one segment of plain causal attention: cut x "
                     "into segments of {segment} positions"))
            err = (out.detach().double() - want).abs().max().item()
            fail(trf("{head}: differs from the reference by up to {err:.3g} (local causal "
                 "attention inside each segment, the memory of the earlier segments, "
                 "gated per head)"))
        n_cases += 1
    # delta=True: the layer writes with the delta rule (4 segments, the last one short)
    with seeded(seed + 3):
        m = call(cls, 12, 3, 4, delta=True).double()
        with torch.no_grad():
            m.beta.copy_(torch.tensor([0.8, -0.5, 1.6]))
        x = torch.randn(2, 15, 12, dtype=torch.float64)
    head = trf("{who}(d_model=12, n_heads=3, segment=4, delta=True) on x [2, 15, 12]")
    out = call(m, x)
    expect_tensor(out, head)
    w = _params(m)
    if not _close(out, infini_delta_ref(x, *w, 3, 4), 1e-9):
        if _close(out, infini_delta_ref(x, *w, 3, 4, delta=False), 1e-8):
            fail(trf("{head}: your output is what the linear write gives: with delta=True "
                 "write each segment with the delta rule (pass delta=self.delta to "
                 "memory_update)"))
        if torch.isnan(out.detach()).any():
            fail(trf("{head}: the output contains NaN: 0/0 when the delta rule reads the empty "
                 "memory? An empty memory reads as zeros"))
        err = (out.detach().double() - infini_delta_ref(x, *w, 3, 4)).abs().max().item()
        fail(trf("{head}: differs from the reference by up to {err:.3g} (each segment: read the "
             "memory, then write the segment with the delta rule, M + sigma(K)^T (V - "
             "sigma(K) M / (sigma(K) z)))"))
    n_cases += 1
    # one segment, gate closed: plain causal multi-head attention
    with seeded(seed):
        m = call(cls, 8, 2, 6).double()
        x = torch.randn(2, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        m.beta.fill_(-1e4)
    wq, wk, wv, wo, _ = _params(m)
    q, k, v = (t.view(2, 6, 2, 4).transpose(1, 2) for t in (x @ wq.T, x @ wk.T, x @ wv.T))
    plain = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    plain = plain.transpose(1, 2).reshape(2, 6, 8) @ wo.T
    if not _close(call(m, x), plain.detach(), 1e-9):
        fail(trf("{who}: one segment with the gate closed (beta = -1e4) is not plain causal "
             "attention (F.scaled_dot_product_attention, is_causal=True)"))
    n_cases += 1
    # the memory carries across calls, and segment by segment equals one call
    with seeded(seed + 1):
        m = call(cls, 8, 2, 3).double()
        with torch.no_grad():
            m.beta.copy_(torch.tensor([0.7, -0.4]))
        x = torch.randn(1, 9, 8, dtype=torch.float64)
    whole = call(m, x).detach()
    # reset really empties
    call(m.reset_memory)
    again = call(m, x[:, :3]).detach()
    if not _close(again, whole[:, :3].double(), 1e-9):
        fail(trf("{who}: after reset_memory() the first segment's output differs from a fresh "
             "layer's: reset_memory() must empty the memory (a no-op, or a memory "
             "zeroed in a copy?)"))
    # ... all of it: after a reset, one call on two segments is a fresh layer's
    call(m.reset_memory)
    again = call(m, x[:, :6]).detach()
    if not _close(again, whole[:, :6].double(), 1e-9):
        fail(trf("{who}: after reset_memory() the first segment is right but the second "
             "differs from a fresh layer's, within one call: reset_memory() emptied only "
             "part of the memory. Empty both M and z (self.M = self.z = None): a z left "
             "from the earlier calls still divides every read"))
    n_cases += 1
    call(m.reset_memory)
    parts = torch.cat([call(m, x[:, i:i + 3]).detach() for i in (0, 3, 6)], 1)
    if not _close(parts, whole.double(), 1e-9):
        fail(trf("{who}: three calls of one segment each (after reset_memory()) differ from "
             "one call on the 9 positions: keep the memory (M, z) across calls, so that "
             "a stream can be fed segment by segment"))
    n_cases += 1
    # two layers, two memories
    with seeded(seed + 2):
        a = call(cls, 8, 2, 3).double()
        b = call(cls, 8, 2, 3).double()
    first_b = call(b, x[:, :3]).detach()
    call(b.reset_memory)
    call(a, x[:, 3:9])
    if not _close(call(b, x[:, :3]).detach(), first_b.double(), 1e-9):
        fail(trf("{who}: writing to one layer's memory changed another layer's: each "
             "InfiniAttention keeps its own memory (self.M, not a class attribute or a "
             "global)"))
    n_cases += 1
    # the memory carried across calls is detached: a second call can be backpropagated
    m = call(cls, 8, 2, 3)
    x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(seed))
    call(m, x).sum().backward()
    try:
        m(x).sum().backward()
    except RuntimeError as e:
        if "second time" in str(e) or "freed" in str(e):
            fail(trf("{who}: backward through a second call failed ('{str(e)[:60]}...'): "
                 "the memory kept for the next call still holds the first call's graph. "
                 "Store it detached (M.detach())"))
        raise
    passed(cls, n_cases + 1)
