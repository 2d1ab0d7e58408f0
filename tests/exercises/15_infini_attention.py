"""Chapter 15 (Infini-attention): the exercises, their checks, and plausible wrong answers,
among them the known bugs of public reproductions (0/0 on the empty memory, sqrt(d_model),
the current segment in the memory, a reset that does nothing or empties M but not z, a
memory not detached or shared, a gate not per head, delta=True ignored)."""

import torch
import torch.nn.functional as F

from exercises._case import Exercise
from transformer_course import infini
from transformer_course.attention import causal_mask, scaled_dot_product_attention
from transformer_course.checks import infini as checks


def phi(x):
    return F.elu(x) + 1


# --- memory_retrieve ----------------------------------------------------------------------

def retrieve_zero_over_zero(q, M, z):
    return (phi(q) @ M) / (phi(q) @ z[..., None])


def retrieve_no_phi(q, M, z):
    den = q @ z[..., None]
    return torch.where(den == 0, 0.0, (q @ M) / torch.where(den == 0, 1.0, den))


def retrieve_eps(q, M, z):
    return (phi(q) @ M) / (phi(q) @ z[..., None] + 1e-6)


def retrieve_no_norm(q, M, z):
    return phi(q) @ M


# --- memory_update ------------------------------------------------------------------------

def _update(bug):
    def memory_update(k, v, M, z, delta=False):
        fk = phi(k)
        if delta:
            if bug == "delta_sign":
                v = v + infini.memory_retrieve(k, M, z)
            elif bug == "delta_no_norm":
                v = v - fk @ M
            elif bug == "delta_nan":
                v = v - (fk @ M) / (fk @ z[..., None])
            else:
                v = v - infini.memory_retrieve(k, M, z)
        if bug == "in_place":
            M += fk.transpose(-2, -1) @ v
            z += fk.sum(-2)
            return M, z
        z2 = z if bug == "no_z" else z + fk.sum(-2)
        return M + fk.transpose(-2, -1) @ v, z2

    return memory_update


def update_ignores_delta(k, v, M, z, delta=False):
    return infini.memory_update(k, v, M, z, delta=False)


# --- InfiniAttention ----------------------------------------------------------------------

_GLOBAL = {}


def _layer(bug):
    class InfiniAttention(infini.InfiniAttention):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if bug == "global":                      # one memory for the class
                _GLOBAL.clear()

        def reset_memory(self):
            if bug == "reset_noop":
                if self.M is not None:
                    self.M.clone().zero_()           # zeroes a copy: the memory stays
                return
            if bug == "global":
                _GLOBAL.clear()
            if bug == "reset_m_only":
                if self.M is not None:
                    self.M = torch.zeros_like(self.M)    # z is kept
                return
            self.M = self.z = None

        def forward(self, x):
            B, N, D = x.shape
            H, dh = self.n_heads, D // self.n_heads
            q, k, v = (lin(x).view(B, N, H, dh).transpose(1, 2)
                       for lin in (self.q, self.k, self.v))
            M, z = (_GLOBAL.get("M"), _GLOBAL.get("z")) if bug == "global" else (self.M,
                                                                                   self.z)
            if M is None:
                M, z = x.new_zeros(B, H, dh, dh), x.new_zeros(B, H, dh)
            beta = self.beta[:1].expand(H) if bug == "gate_head0" else self.beta
            gate = torch.sigmoid(beta).view(H, 1, 1)
            if bug == "gate_swapped":
                gate = 1 - gate
            out = []
            for s0 in range(0, N, self.segment):
                qs, ks, vs = (t[:, :, s0:s0 + self.segment] for t in (q, k, v))
                mask = causal_mask(qs.shape[-2])
                if bug == "sqrt_d_model":
                    local = (qs @ ks.transpose(-2, -1) / D ** 0.5).masked_fill(
                        ~mask, float("-inf")).softmax(-1) @ vs
                else:
                    local = scaled_dot_product_attention(qs, ks, vs, mask)
                if bug == "current":
                    M, z = infini.memory_update(ks, vs, M, z)
                if bug == "shared_heads":
                    mem = infini.memory_retrieve(qs, M.sum(1, keepdim=True),
                                                 z.sum(1, keepdim=True))
                else:
                    mem = infini.memory_retrieve(qs, M, z)
                if bug == "nan":
                    mem = (phi(qs) @ M) / (phi(qs) @ z[..., None])
                out.append(gate * mem + (1 - gate) * local)
                if bug == "ignore_delta":
                    M, z = infini.memory_update(ks, vs, M, z)     # delta=True ignored
                elif bug != "current":
                    M, z = infini.memory_update(ks, vs, M, z, self.delta)
            if bug == "no_carry":
                M = z = None
            elif bug != "no_detach":
                M, z = M.detach(), z.detach()
            if bug == "global":
                _GLOBAL.update(M=M, z=z)
            else:
                self.M, self.z = M, z
            return self.o(torch.cat(out, 2).transpose(1, 2).reshape(B, N, D))

    return InfiniAttention


EXERCISES = {
    "memory_retrieve": Exercise(
        check=checks.check_memory_retrieve,
        solution=infini.memory_retrieve,
        wrong=[
            (retrieve_zero_over_zero, "0/0 on the empty memory"),
            (retrieve_no_phi, "without sigma on the queries"),
            (retrieve_eps, "an eps added to the denominator"),
            (retrieve_no_norm, "the numerator sigma(Q) M alone"),
        ],
    ),
    "memory_update": Exercise(
        check=checks.check_memory_update,
        solution=infini.memory_update,
        wrong=[
            (_update("delta_sign"), "V + retrieved"),
            (_update("delta_no_norm"), "without the normalizer"),
            (_update("delta_nan"), "0/0 when the delta rule reads the empty memory"),
            (_update("no_z"), "your z did not change"),
            (_update("in_place"), "in place"),
            (update_ignores_delta, "your M is the linear update"),
        ],
    ),
    "InfiniAttention": Exercise(
        check=checks.check_InfiniAttention,
        solution=infini.InfiniAttention,
        wrong=[
            (_layer("sqrt_d_model"), "divided by sqrt(d_model)"),
            (_layer("current"), "already holds the current segment"),
            (_layer("gate_head0"), "one gate for all heads"),
            (_layer("gate_swapped"), "the wrong way round"),
            (_layer("shared_heads"), "one memory shared by all heads"),
            (_layer("nan"), "contains NaN"),
            (_layer("reset_noop"), "reset_memory() must empty the memory"),
            (_layer("reset_m_only"), "Empty both M and z"),
            (_layer("ignore_delta"), "what the linear write gives"),
            (_layer("no_carry"), "keep the memory (M, z) across calls"),
            (_layer("global"), "changed another layer's"),
            (_layer("no_detach"), "Store it detached"),
        ],
    ),
}
