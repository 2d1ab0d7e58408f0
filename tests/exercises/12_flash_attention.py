"""Chapter 12 (flash attention): the exercises, their checks, and plausible wrong answers."""

import math

import torch

from exercises._case import Exercise
from transformer_course import flash
from transformer_course.checks import flash as checks

LOG2E = 1 / math.log(2)
INF = float("inf")


# --- flash_attention_forward: a tiled forward with one mistake -----------------------------------

def _forward(bug):
    def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
        n_q, n_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
        shift = 0 if bug == "top_left" else n_k - n_q
        if bug == "pad_unmasked" and n_k % block_k:  # pad the keys to whole blocks, no mask
            pad = block_k - n_k % block_k
            k = torch.cat([k, k.new_zeros(*k.shape[:-2], pad, d)], -2)
            v = torch.cat([v, v.new_zeros(*v.shape[:-2], pad, d)], -2)
        o = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=q.dtype)
        for i in range(0, n_q, block_q):
            q_i = q[..., i:i + block_q, :] / math.sqrt(d)
            rows = torch.arange(i, i + q_i.shape[-2])
            m = torch.full(q_i.shape[:-1], -INF, dtype=q.dtype)
            l, acc = torch.zeros_like(m), torch.zeros_like(q_i)
            end = min(k.shape[-2], i + q_i.shape[-2] + shift) if causal else k.shape[-2]
            if bug == "skip_short" and causal:  # skips the last key block its last query sees
                end -= block_k
            for j in range(0, end, block_k):
                if bug == "f32_scores":  # the scores in float32, whatever the inputs' dtype
                    s = (q_i.float() @ k[..., j:j + block_k, :].float().transpose(-2, -1)
                         ).to(q.dtype)
                else:
                    s = q_i @ k[..., j:j + block_k, :].transpose(-2, -1)
                if causal:
                    cols = torch.arange(j, j + s.shape[-1])
                    s = s.masked_fill(cols > rows[:, None] + shift, -INF)
                m_new = torch.maximum(m, s.amax(-1))
                m_safe = m_new if bug == "nan_rows" else m_new.masked_fill(m_new == -INF, 0.0)
                alpha = torch.exp(m - m_safe)
                p = torch.exp(s - m_safe[..., None])
                l = alpha * l + p.sum(-1)
                if bug == "no_rescale":
                    acc = acc + p @ v[..., j:j + block_k, :]
                else:
                    acc = alpha[..., None] * acc + p @ v[..., j:j + block_k, :]
                m = m_new
            if bug == "no_division":
                o[..., i:i + block_q, :] = acc
            else:
                o[..., i:i + block_q, :] = acc / torch.where(l > 0, l, 1.0)[..., None]
            lse[..., i:i + block_q] = m + torch.log(l)
        if bug == "base2":
            lse = lse * LOG2E
        return o, lse

    return flash_attention_forward


def forward_returns_only_o(q, k, v, causal=False, block_q=64, block_k=64):
    return flash.flash_attention_forward(q, k, v, causal, block_q, block_k)[0]


# --- flash_attention_backward --------------------------------------------------------------------

def _backward(bug):
    def flash_attention_backward(q, k, v, o, lse, do, causal=False, block_q=64, block_k=64):
        n_q, n_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
        scale = 1 / math.sqrt(d)
        shift = 0 if bug == "top_left" else n_k - n_q
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dtype = q.dtype
        if bug == "f32_inside":  # computes in float32, returns the inputs' dtype
            q, k, v, o, lse, do = (t.float() for t in (q, k, v, o, lse, do))
        D = do.sum(-1) if bug == "D_rowsum_dO" else (do * o).sum(-1)
        if bug != "nan_rows":
            lse = lse.masked_fill(lse == -INF, INF)
        s = (q @ k.transpose(-2, -1)) * scale
        if causal:
            mask = torch.ones(n_q, n_k, dtype=torch.bool).tril(shift)
            s = s.masked_fill(~mask, -INF)
        if bug == "base2":  # reads lse as if it were base 2
            p = torch.exp2(s * LOG2E - lse[..., None])
        else:
            p = torch.exp(s - lse[..., None])
        dv = p.transpose(-2, -1) @ do
        ds = p * (do @ v.transpose(-2, -1) - D[..., None])
        dq = ds @ k * (1.0 if bug == "dq_unscaled" else scale)
        dk = ds.transpose(-2, -1) @ q * (1.0 if bug == "dk_unscaled" else scale)
        return dq.to(dtype), dk.to(dtype), dv.to(dtype)

    return flash_attention_backward


# --- flash_attention_triton: the kernel with one mistake, run like the solution ------------------

triton = flash.triton
if triton is not None:
    import triton.language as tl

    @triton.jit
    def _buggy_kernel(Q, K, V, O, LSE, n_q, n_k, d, scale, CAUSAL: tl.constexpr,
                      BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                      BUG: tl.constexpr):
        # BUG: 1 no rescale, 2 no division, 3 top-left causal, 4 padding keys unmasked,
        # 5 exp of base-2 scores, 6 unmasked key loads, 7 lse stored in base 2,
        # 8 causal key loop stops one block early
        bh = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        dims = tl.arange(0, BLOCK_D)
        q = tl.load(Q + bh * n_q * d + rows[:, None] * d + dims[None, :],
                    mask=(rows[:, None] < n_q) & (dims[None, :] < d), other=0.0)
        m = tl.full([BLOCK_Q], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_Q], tl.float32)
        acc = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
        scale2 = scale * 1.4426950408889634
        shift = n_k - n_q
        if BUG == 3:
            shift = 0
        end = n_k
        if BUG == 8:
            if CAUSAL:
                end = tl.minimum(n_k, tl.program_id(0) * BLOCK_Q + BLOCK_Q + shift) - BLOCK_K
        for start in range(0, end, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            kv_mask = (cols[:, None] < n_k) & (dims[None, :] < d)
            if BUG == 6:
                k = tl.load(K + bh * n_k * d + cols[:, None] * d + dims[None, :])
            else:
                k = tl.load(K + bh * n_k * d + cols[:, None] * d + dims[None, :], mask=kv_mask,
                            other=0.0)
            v = tl.load(V + bh * n_k * d + cols[:, None] * d + dims[None, :], mask=kv_mask,
                        other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale2
            seen = cols[None, :] < n_k
            if BUG == 4:
                seen = cols[None, :] >= 0
            if CAUSAL:
                seen = seen & (cols[None, :] <= rows[:, None] + shift)
            s = tl.where(seen, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            if BUG == 5:
                alpha = tl.exp(m - m_safe)
                p = tl.exp(s - m_safe[:, None])
            else:
                alpha = tl.exp2(m - m_safe)
                p = tl.exp2(s - m_safe[:, None])
            l = l * alpha + tl.sum(p, 1)
            if BUG == 1:
                acc = acc + tl.dot(p, v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            m = m_new
        if BUG == 2:
            o = acc
        else:
            o = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(O + bh * n_q * d + rows[:, None] * d + dims[None, :], o,
                 mask=(rows[:, None] < n_q) & (dims[None, :] < d))
        lse = m + tl.log2(tl.where(l > 0, l, 1.0))  # base 2
        if BUG != 7:
            lse = lse * 0.6931471805599453
        lse = tl.where(l > 0, lse, float("-inf"))
        tl.store(LSE + bh * n_q + rows, lse, mask=rows < n_q)


def _triton(bug):
    def flash_attention_triton(q, k, v, causal=False, return_lse=False):
        n_q, n_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
        q3, k3, v3 = (t.reshape(-1, t.shape[-2], d).contiguous() for t in (q, k, v))
        o = torch.empty_like(q3)
        lse = torch.empty(q3.shape[:-1], dtype=torch.float32, device=q.device)
        grid = (triton.cdiv(n_q, 32), q3.shape[0])
        _buggy_kernel[grid](q3, k3, v3, o, lse, n_q, n_k, d, 1 / math.sqrt(d), CAUSAL=causal,
                            BLOCK_Q=32, BLOCK_K=32, BLOCK_D=max(16, triton.next_power_of_2(d)),
                            BUG=bug)
        o = o.reshape(q.shape)
        return (o, lse.reshape(q.shape[:-1])) if return_lse else o

    return flash_attention_triton


def triton_returns_fp64(q, k, v, causal=False, return_lse=False):
    o, lse = flash.flash_forward_triton(q, k, v, causal)
    return (o.double(), lse) if return_lse else o.double()


TRITON_WRONG = [
    (_triton(1), "rescale acc and l by rho"),
    (_triton(2), "forget the final division by the running sum l"),
    (_triton(3), "aligned top-left"),
    (_triton(4), "extra zero keys"),
    (_triton(5), "exp and exp2"),
    (_triton(6), "outside the tensors"),
    (_triton(7), "the lse your kernel stores is in base 2"),
    (_triton(8), "your causal key loop stops too early"),
    (triton_returns_fp64, "dtype"),
] if triton is not None else [
    (_forward("base2"), "Triton is not available"),
    (triton_returns_fp64, "Triton is not available"),
]

EXERCISES = {
    "flash_attention_forward": Exercise(
        check=checks.check_flash_attention_forward,
        solution=flash.flash_attention_forward,
        wrong=[
            (_forward("base2"), "your lse is in base 2"),
            (_forward("no_rescale"), "rescale what was summed under the old max"),
            (_forward("no_division"), "forget the final division by the running sum l"),
            (_forward("top_left"), "aligned top-left"),
            (_forward("pad_unmasked"), "extra zero keys"),
            (_forward("nan_rows"), "o is NaN at the first 30 queries"),
            (_forward("skip_short"), "your causal key loop stops too early"),
            (_forward("f32_scores"), "your o agrees with attention only to float32 precision"),
            (forward_returns_only_o, "expected a pair (o, lse)"),
        ],
    ),
    "flash_attention_backward": Exercise(
        check=checks.check_flash_attention_backward,
        solution=flash.flash_attention_backward,
        wrong=[
            (_backward("D_rowsum_dO"), "D = rowsum(dO ∘ O) (not rowsum(dO))"),
            (_backward("dk_unscaled"), "your dk is the right one times sqrt(d)"),
            (_backward("dq_unscaled"), "your dq is the right one times sqrt(d)"),
            (_backward("top_left"), "aligned top-left"),
            (_backward("base2"), "so your recomputed P is"),
            (_backward("nan_rows"), "make their P 0"),
            (_backward("f32_inside"), "only to float32 precision"),
        ],
    ),
    "flash_attention_triton": Exercise(
        check=checks.check_flash_attention_triton,
        solution=flash.flash_attention_triton,
        wrong=TRITON_WRONG,
    ),
}


# --- merge_attention -----------------------------------------------------------------------------

def merge_average(o1, lse1, o2, lse2):
    return (o1 + o2) / 2, torch.logaddexp(lse1, lse2)


def merge_overflowing(o1, lse1, o2, lse2):
    e1, e2 = torch.exp(lse1), torch.exp(lse2)
    return (e1[..., None] * o1 + e2[..., None] * o2) / (e1 + e2)[..., None], torch.log(e1 + e2)


def merge_nan_when_empty(o1, lse1, o2, lse2):
    lse = torch.logaddexp(lse1, lse2)
    return torch.exp(lse1 - lse)[..., None] * o1 + torch.exp(lse2 - lse)[..., None] * o2, lse


def merge_lse_max(o1, lse1, o2, lse2):
    o, _ = flash.merge_attention(o1, lse1, o2, lse2)
    return o, torch.maximum(lse1, lse2)


EXERCISES["merge_attention"] = Exercise(
    check=checks.check_merge_attention,
    solution=flash.merge_attention,
    wrong=[
        (merge_average, "plain average of o1 and o2"),
        (merge_overflowing, "exp(lse) overflows"),
        (merge_nan_when_empty, "saw no key in either part"),
        (merge_lse_max, "torch.logaddexp"),
    ],
)
