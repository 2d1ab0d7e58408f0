"""Generated from solutions/15_infini_attention.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# Infini-attention: a compressive memory (a linear-attention state) read and written
# once per segment, next to causal softmax attention inside the segment. It provides:
#   memory_retrieve(q, M, z)          sigma(q) M / (sigma(q) z); zeros when empty
#   memory_update(k, v, M, z, delta)  the linear or delta-rule write of one segment
#   InfiniAttention(d_model, n_heads, segment, delta)  the layer, memory kept across
#                                     calls
import torch
import torch.nn as nn

from transformer_course.attention import causal_mask, scaled_dot_product_attention
from transformer_course.long_attention import phi


def check_memory(M, z, d_k: int) -> None:
    """Raise a clear error unless M [..., d_k, d_v] and z [..., d_k] fit keys of size
    d_k."""
    if not isinstance(M, torch.Tensor) or not isinstance(z, torch.Tensor):
        raise ValueError("M and z must be tensors")
    if M.dim() < 2 or M.shape[-2] != d_k or z.shape != M.shape[:-1]:
        raise ValueError(f"expected M [..., d_k, d_v] and z [..., d_k] with d_k = "
                         f"{d_k}, got M {list(M.shape)}, z {list(z.shape)}")


def memory_retrieve(q, M, z) -> torch.Tensor:
    """A_mem = sigma(q) M / (sigma(q) z), sigma = elu + 1: q [..., N, d_k], M [..., d_k,
    d_v], z [..., d_k] -> [..., N, d_v]; zeros where the memory is empty (z = 0)."""
    check_memory(M, z, q.shape[-1])
    fq = phi(q)
    num = fq @ M                                              # [..., N, d_v]
    den = fq @ z[..., None]                          # [..., N, 1], > 0 unless z = 0
    empty = den == 0
    return torch.where(empty, 0.0, num / torch.where(empty, 1.0, den))


def memory_update(k, v, M, z, delta: bool = False):
    """Write one segment: k [..., N, d_k], v [..., N, d_v] into M [..., d_k, d_v],
    z [..., d_k] -> (M', z'), new tensors. delta=True: the delta rule."""
    check_memory(M, z, k.shape[-1])
    if v.shape[:-1] != k.shape[:-1] or v.shape[-1] != M.shape[-1]:
        raise ValueError(f"expected k [..., N, d_k], v [..., N, d_v] for M [..., d_k, "
                         f"d_v], got k {list(k.shape)}, v {list(v.shape)}, "
                         f"M {list(M.shape)}")
    fk = phi(k)
    if delta:
        v = v - memory_retrieve(k, M, z)     # only what the memory does not return yet
    return M + fk.transpose(-2, -1) @ v, z + fk.sum(-2)


class InfiniAttention(nn.Module):
    """Infini-attention over x [B, N, d_model]: segments of `segment` positions, local
    causal attention inside each, the compressive memory of all earlier segments (and
    earlier calls), mixed by a gate per head. delta=True writes with the delta rule."""

    def __init__(self, d_model: int, n_heads: int, segment: int, delta: bool = False):
        super().__init__()
        if d_model % n_heads or segment < 1:
            raise ValueError(f"need d_model divisible by n_heads and segment >= 1, got "
                             f"d_model={d_model}, n_heads={n_heads}, segment={segment}")
        self.n_heads, self.segment, self.delta = n_heads, segment, delta
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model, bias=False)
                                          for _ in range(4))
        self.beta = nn.Parameter(torch.zeros(n_heads))   # sigmoid(0) = 1/2: half each
        self.M = self.z = None                           # the memory, empty

    def reset_memory(self) -> None:
        """Forget everything: the next call starts from an empty memory."""
        self.M = self.z = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.q.in_features:
            raise ValueError(f"expected x [B, N, {self.q.in_features}], "
                             f"got {list(x.shape)}")
        B, N, D = x.shape
        H, dh = self.n_heads, D // self.n_heads
        q, k, v = (lin(x).view(B, N, H, dh).transpose(1, 2)
                   for lin in (self.q, self.k, self.v))          # [B, H, N, d_head]
        M, z = self.M, self.z
        if M is None:
            M, z = x.new_zeros(B, H, dh, dh), x.new_zeros(B, H, dh)
        gate = torch.sigmoid(self.beta).view(H, 1, 1)           # one per head
        out = []
        for s0 in range(0, N, self.segment):
            qs, ks, vs = (t[:, :, s0:s0 + self.segment] for t in (q, k, v))
            mask = causal_mask(qs.shape[-2]).to(x.device)
            local = scaled_dot_product_attention(qs, ks, vs, mask)   # / sqrt(d_head)
            mem = memory_retrieve(qs, M, z)                  # earlier segments only
            out.append(gate * mem + (1 - gate) * local)
            M, z = memory_update(ks, vs, M, z, self.delta)   # then write this segment
        self.M, self.z = M.detach(), z.detach()              # kept, without the graph
        return self.o(torch.cat(out, dim=2).transpose(1, 2).reshape(B, N, D))
