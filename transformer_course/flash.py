"""Generated from solutions/12_flash_attention.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# Flash attention: exact attention in tiles, never storing the [n_q, n_k] score matrix.
import math
import os

import torch

from transformer_course.machine import load_triton


def validate_qkv(q, k, v) -> None:
    """Raise a clear error unless q [..., n_q, d], k and v [..., n_k, d] share batch
    dims, d and a float dtype."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() < 2 or not t.is_floating_point():
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a float tensor of shape [..., n, d], "
                             f"got {got}")
    if k.shape != v.shape or q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"expected q [..., n_q, d] and k, v [..., n_k, d] with the "
                         f"same batch dims and d, got q {list(q.shape)}, "
                         f"k {list(k.shape)}, v {list(v.shape)}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")


def visible(n_q: int, n_k: int, causal: bool, device=None) -> torch.Tensor:
    """Bool [n_q, n_k]: may query i see key j? Causal is bottom-right:
    j <= i + n_k - n_q."""
    mask = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    return mask.tril(n_k - n_q) if causal else mask


def naive_attention(q, k, v, causal: bool = False):
    """Attention with the whole score matrix S = QK^T/sqrt(d) in memory: (o, lse).

    A query that sees no key (causal with n_q > n_k) gets o = 0 and lse = -inf."""
    validate_qkv(q, k, v)
    mask = visible(q.shape[-2], k.shape[-2], causal, q.device)
    has_key = mask.any(-1)                                   # [n_q]
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    # a row with no key would be all -inf, and exp(-inf - (-inf)) is NaN: zeros instead
    s = s.masked_fill(~mask, float("-inf")).masked_fill(~has_key[:, None], 0.0)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None]) * has_key[:, None]
    return p @ v, lse.masked_fill(~has_key, float("-inf"))


def flash_attention_forward(q, k, v, causal: bool = False, block_q: int = 64,
                            block_k: int = 64):
    """Exact attention tile by tile with an online softmax: (o [..., n_q, d],
    lse [..., n_q]).

    lse is the natural log of each query's softmax normalizer, log sum_j exp(s_ij) with
    s = QK^T/sqrt(d): all the backward needs to rebuild P. A query that sees no key gets
    o = 0 and lse = -inf. Causal aligns bottom-right: query i sees key j when
    j <= i + n_k - n_q."""
    validate_qkv(q, k, v)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be >= 1, got block_q={block_q}, "
                         f"block_k={block_k}")
    n_q, n_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    o = torch.empty_like(q)
    lse = torch.empty(q.shape[:-1], dtype=q.dtype, device=q.device)
    for i in range(0, n_q, block_q):
        q_i = q[..., i:i + block_q, :] / math.sqrt(d)
        rows = torch.arange(i, i + q_i.shape[-2], device=q.device)
        m = torch.full(q_i.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)
        l = torch.zeros_like(m)        # running sum of exp(s - m)
        acc = torch.zeros_like(q_i)    # running sum of exp(s - m) v
        # causal: key blocks past the last key this query block sees are never computed
        end = min(n_k, i + q_i.shape[-2] + n_k - n_q) if causal else n_k
        for j in range(0, end, block_k):
            s = q_i @ k[..., j:j + block_k, :].transpose(-2, -1)
            if causal:
                cols = torch.arange(j, j + s.shape[-1], device=q.device)
                s = s.masked_fill(cols > rows[:, None] + n_k - n_q, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            # a row that has seen no key yet: subtract 0, not -inf (then exp gives 0)
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)
            rho = torch.exp(m - m_safe)  # rescales what was summed under the old max
            p = torch.exp(s - m_safe[..., None])
            l = rho * l + p.sum(-1)
            acc = rho[..., None] * acc + p @ v[..., j:j + block_k, :]
            m = m_new
        o[..., i:i + block_q, :] = acc / torch.where(l > 0, l, 1.0)[..., None]
        lse[..., i:i + block_q] = m + torch.log(l)  # -inf + log 0 = -inf when no key
    return o, lse


def flash_attention_backward(q, k, v, o, lse, do, causal: bool = False,
                             block_q: int = 64, block_k: int = 64):
    """Gradients (dq, dk, dv) of o = attention(q, k, v) given dL/do, recomputing P tile
    by tile from lse (natural log, as flash_attention_forward returns it)."""
    validate_qkv(q, k, v)
    if o.shape != q.shape or do.shape != q.shape or lse.shape != q.shape[:-1]:
        raise ValueError(f"expected o and do of q's shape {list(q.shape)} and lse of "
                         f"shape {list(q.shape[:-1])}, got o {list(o.shape)}, "
                         f"do {list(do.shape)}, lse {list(lse.shape)}")
    n_q, n_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1 / math.sqrt(d)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    D = (do * o).sum(-1)  # rowsum(dO ∘ O) = rowsum(P ∘ dP), one number per query
    # a query that saw no key has lse = -inf; +inf makes its recomputed P exactly 0
    lse = lse.masked_fill(lse == float("-inf"), float("inf"))
    for j in range(0, n_k, block_k):
        k_j, v_j = k[..., j:j + block_k, :], v[..., j:j + block_k, :]
        cols = torch.arange(j, j + k_j.shape[-2], device=q.device)
        # causal: the first query that sees key j is j - (n_k - n_q)
        start = max(0, j - (n_k - n_q)) // block_q * block_q if causal else 0
        for i in range(start, n_q, block_q):
            q_i, do_i = q[..., i:i + block_q, :], do[..., i:i + block_q, :]
            s = (q_i @ k_j.transpose(-2, -1)) * scale
            if causal:
                rows = torch.arange(i, i + q_i.shape[-2], device=q.device)
                s = s.masked_fill(cols > rows[:, None] + n_k - n_q, float("-inf"))
            p = torch.exp(s - lse[..., i:i + block_q, None])
            dv[..., j:j + block_k, :] += p.transpose(-2, -1) @ do_i
            dp = do_i @ v_j.transpose(-2, -1)
            ds = p * (dp - D[..., i:i + block_q, None])
            dq[..., i:i + block_q, :] += (ds @ k_j) * scale
            dk[..., j:j + block_k, :] += (ds.transpose(-2, -1) @ q_i) * scale
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """Attention whose backward recomputes P from (q, k, lse): it saves O(N) per head,
    not N²."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False, block_q=64, block_k=64):
        o, lse = flash_attention_forward(q, k, v, causal, block_q, block_k)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (causal, block_q, block_k)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        grads = flash_attention_backward(q, k, v, o, lse, do.contiguous(), *ctx.args)
        return *grads, None, None, None


def flash_attention(q, k, v, causal: bool = False, block_q: int = 64,
                    block_k: int = 64) -> torch.Tensor:
    """softmax(QK^T/sqrt(d)) V by tiles, differentiable; causal aligned bottom-right."""
    return FlashAttention.apply(q, k, v, causal, block_q, block_k)


triton = load_triton()
if triton is not None:
    import triton.language as tl

INTERPRETED = triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:
    @triton.jit
    def flash_forward_kernel(Q, K, V, O, LSE, n_q, n_k, d, scale, CAUSAL: tl.constexpr,
                             BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
                             BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
        """One program: BLOCK_Q queries of one (batch, head), program_id(1); q, o are
        contiguous [BH, n_q, d], k, v [BH, n_k, d], lse [BH, n_q] (fp32, natural
        log)."""
        bh = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        dims = tl.arange(0, BLOCK_D)
        q = tl.load(Q + bh * n_q * d + rows[:, None] * d + dims[None, :],
                    mask=(rows[:, None] < n_q) & (dims[None, :] < d), other=0.0)
        m = tl.full([BLOCK_Q], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_Q], tl.float32)
        acc = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
        scale2 = scale * 1.4426950408889634  # exp(x) = exp2(x log2 e): exp2 is fast
        end = n_k
        if CAUSAL:  # skip the key blocks no query of this block sees
            end = tl.minimum(n_k, tl.program_id(0) * BLOCK_Q + BLOCK_Q + n_k - n_q)
        for start in range(0, end, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            kv_mask = (cols[:, None] < n_k) & (dims[None, :] < d)
            offsets = bh * n_k * d + cols[:, None] * d + dims[None, :]
            k = tl.load(K + offsets, mask=kv_mask, other=0.0)
            v = tl.load(V + offsets, mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale2
            seen = cols[None, :] < n_k  # keys past n_k were loaded as 0: not real
            if CAUSAL:
                seen = seen & (cols[None, :] <= rows[:, None] + n_k - n_q)
            s = tl.where(seen, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            rho = tl.exp2(m - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l = l * rho + tl.sum(p, 1)
            pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            acc = acc * rho[:, None] + pv
            m = m_new
        o = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(O + bh * n_q * d + rows[:, None] * d + dims[None, :],
                 o.to(O.dtype.element_ty),
                 mask=(rows[:, None] < n_q) & (dims[None, :] < d))
        # back to the natural log: lse = (m + log2 l) ln 2; -inf for a query with no key
        lse = (m + tl.log2(tl.where(l > 0, l, 1.0))) * 0.6931471805599453
        lse = tl.where(l > 0, lse, float("-inf"))
        tl.store(LSE + bh * n_q + rows, lse, mask=rows < n_q)


def flash_forward_triton(q, k, v, causal: bool = False):
    """(o, lse) by flash_forward_kernel, one program per (query block, batch·head)."""
    validate_qkv(q, k, v)
    if triton is None:
        raise RuntimeError("Triton is not available on this machine (it needs Linux)")
    n_q, n_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if d > 256:
        raise ValueError(f"d must be at most 256 (one tile holds a whole row), got {d}")
    q3, k3, v3 = (t.reshape(-1, t.shape[-2], d).contiguous() for t in (q, k, v))
    o = torch.empty_like(q3)
    lse = torch.empty(q3.shape[:-1], dtype=torch.float32, device=q.device)
    block_q, block_k = (32, 32) if INTERPRETED else (128, 64)
    grid = (triton.cdiv(n_q, block_q), q3.shape[0])
    flash_forward_kernel[grid](
        q3, k3, v3, o, lse, n_q, n_k, d, 1 / math.sqrt(d), CAUSAL=causal,
        BLOCK_Q=block_q, BLOCK_K=block_k, BLOCK_D=max(16, triton.next_power_of_2(d)),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    return o.reshape(q.shape), lse.reshape(q.shape[:-1])


def flash_attention_triton(q, k, v, causal: bool = False, return_lse: bool = False):
    """Attention by flash_forward_kernel: o, or with return_lse=True (o, lse), the lse
    the backward (FlashAttentionTriton) receives."""
    o, lse = flash_forward_triton(q, k, v, causal)
    return (o, lse) if return_lse else o


if triton is not None:
    @triton.jit
    def flash_backward_kernel(Q, K, V, DO, LSE, D, DQ, DK, DV, n_q, n_k, d, scale,
                              CAUSAL: tl.constexpr, BLOCK_Q: tl.constexpr,
                              BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                              PRECISION: tl.constexpr):
        """One program: BLOCK_K keys of one (batch, head), program_id(1). It loops over
        the query blocks that see them, keeps dk and dv in registers and adds its share
        of dq atomically (DQ is fp32). LSE and D = rowsum(dO ∘ O) are [BH, n_q] fp32."""
        bh = tl.program_id(1).to(tl.int64)
        cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
        dims = tl.arange(0, BLOCK_D)
        kv_offsets = bh * n_k * d + cols[:, None] * d + dims[None, :]
        kv_mask = (cols[:, None] < n_k) & (dims[None, :] < d)
        k = tl.load(K + kv_offsets, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_offsets, mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
        start = 0
        if CAUSAL:  # the first query that sees key j is j - (n_k - n_q)
            start = tl.maximum(0, tl.program_id(0) * BLOCK_K - (n_k - n_q))
            start = start // BLOCK_Q * BLOCK_Q
        for i in range(start, n_q, BLOCK_Q):
            rows = i + tl.arange(0, BLOCK_Q)
            q_offsets = bh * n_q * d + rows[:, None] * d + dims[None, :]
            q_mask = (rows[:, None] < n_q) & (dims[None, :] < d)
            q = tl.load(Q + q_offsets, mask=q_mask, other=0.0)
            do = tl.load(DO + q_offsets, mask=q_mask, other=0.0)
            lse = tl.load(LSE + bh * n_q + rows, mask=rows < n_q, other=float("inf"))
            lse = tl.where(lse == float("-inf"), float("inf"), lse)  # no key: P = 0
            delta = tl.load(D + bh * n_q + rows, mask=rows < n_q, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            seen = (rows[:, None] < n_q) & (cols[None, :] < n_k)
            if CAUSAL:
                seen = seen & (cols[None, :] <= rows[:, None] + n_k - n_q)
            p = tl.where(seen, tl.exp(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None]) * scale
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
            dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            tl.atomic_add(DQ + q_offsets, dq, mask=q_mask)
        tl.store(DK + kv_offsets, dk.to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + kv_offsets, dv.to(DV.dtype.element_ty), mask=kv_mask)



def flash_attention_triton_backward(q, k, v, o, lse, do, causal: bool = False):
    """(dq, dk, dv) by flash_backward_kernel, given lse (natural log, [..., n_q])."""
    validate_qkv(q, k, v)
    if triton is None:
        raise RuntimeError("Triton is not available on this machine (it needs Linux)")
    n_q, n_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    q3, k3, v3, do3 = (t.reshape(-1, t.shape[-2], d).contiguous()
                       for t in (q, k, v, do))
    lse2 = lse.reshape(-1, n_q).float().contiguous()
    delta = (do.float() * o.float()).sum(-1).reshape(-1, n_q).contiguous()
    dq = torch.zeros(q3.shape, dtype=torch.float32, device=q.device)
    dk, dv = torch.empty_like(k3), torch.empty_like(v3)
    block_q, block_k = (32, 32) if INTERPRETED else (64, 64)
    grid = (triton.cdiv(n_k, block_k), q3.shape[0])
    flash_backward_kernel[grid](
        q3, k3, v3, do3, lse2, delta, dq, dk, dv, n_q, n_k, d, 1 / math.sqrt(d),
        CAUSAL=causal, BLOCK_Q=block_q, BLOCK_K=block_k,
        BLOCK_D=max(16, triton.next_power_of_2(d)),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    return dq.to(q.dtype).reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


class FlashAttentionTriton(torch.autograd.Function):
    """Attention by the two Triton kernels, saving (q, k, v, o, lse)."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        o, lse = flash_forward_triton(q, k, v, causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        grads = flash_attention_triton_backward(q, k, v, o, lse, do, ctx.causal)
        return *grads, None


def peak_rss_increase(fn) -> int:
    """Bytes by which this process's resident memory rose above its level before fn(),
    at its peak. Linux only: resets the kernel's high-water mark (VmHWM) through
    /proc/self/clear_refs."""
    def status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
        raise RuntimeError(f"no {field} in /proc/self/status")

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS:")
    fn()
    return status("VmHWM:") - before


def merge_attention(o1, lse1, o2, lse2):
    """(o, lse) of attention over the keys of two parts, from each part's (o, lse)."""
    if o1.shape != o2.shape or lse1.shape != lse2.shape or lse1.shape != o1.shape[:-1]:
        raise ValueError(f"expected o1, o2 [..., n_q, d] and lse1, lse2 [..., n_q], "
                         f"got {list(o1.shape)}, {list(o2.shape)}, {list(lse1.shape)}, "
                         f"{list(lse2.shape)}")
    lse = torch.logaddexp(lse1, lse2)
    # no key in either part: subtract 0, so that both weights are exp(-inf) = 0
    safe = lse.masked_fill(lse == float("-inf"), 0.0)
    w1, w2 = torch.exp(lse1 - safe)[..., None], torch.exp(lse2 - safe)[..., None]
    return w1 * o1 + w2 * o2, lse
