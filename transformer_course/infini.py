"""Generated from solutions/15_infini_attention.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# Infini-attention: a compressive memory (a linear-attention state) read and written
# once per segment, next to causal softmax attention inside the segment. It provides:
#   memory_retrieve(q, M, z)          sigma(q) M / (sigma(q) z); zeros when empty
#   memory_update(k, v, M, z, delta)  the linear or delta-rule write of one segment
#   InfiniAttention(d_model, n_heads, segment, delta)  the layer, memory kept across
#                                     calls
#   passkey_batch, PasskeyModel, train_passkey  the chapter's passkey experiment (a tiny
#                                     model that must read the memory), for
#                                     benchmarks/infini_passkey.py
#   load_or_train_passkey(**recipe)   train_passkey, cached by recipe
import contextlib
import hashlib
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

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


DIGITS, FILLERS = 10, 20            # tokens 0-9: digits; 10-29: filler
QUERY = DIGITS + FILLERS            # token 30 asks for the passkey
SEGMENT = 16                        # the segment length N_seg


def passkey_batch(n, segments, g, where=0):
    """n sequences of `segments` segments of SEGMENT tokens: filler, one digit (the
    passkey)
    at a random position of segment `where` (never its last), the query last.
    -> (x [n, segments * SEGMENT], passkey [n])."""
    x = torch.randint(DIGITS, QUERY, (n, segments * SEGMENT), generator=g)
    key = torch.randint(0, DIGITS, (n,), generator=g)
    place = torch.randint(0, SEGMENT - 1, (n,), generator=g)
    x[torch.arange(n), where * SEGMENT + place] = key
    x[:, -1] = QUERY
    return x, key


class PasskeyModel(nn.Module):
    """Embedding -> InfiniAttention + residual -> LayerNorm -> the 10 digits, read at
    the last position; the memory emptied for every batch."""

    def __init__(self, d_model=32, n_heads=2, delta=False):
        super().__init__()
        self.embed = nn.Embedding(QUERY + 1, d_model)
        self.attn = InfiniAttention(d_model, n_heads, SEGMENT, delta)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, DIGITS)

    def forward(self, x):                                     # [B, N] -> [B, DIGITS]
        self.attn.reset_memory()
        h = self.embed(x)
        h = h + self.attn(h)
        return self.out(self.norm(h[:, -1]))


@contextlib.contextmanager
def one_thread():
    """Run the block in one torch thread: at this model's size a second thread only adds
    overhead (on a busy machine, ten times the CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def passkey_accuracy(model, x, key) -> float:
    with one_thread():
        return (model(x).argmax(-1) == key).float().mean().item()


def train_passkey(memory=True, beta0=0.0, gate_lr=10.0, delta=False, seed=0, steps=300,
                  progress=False):
    """Train a PasskeyModel on 4 segments; memory=False: the baseline (gate closed and
    frozen). -> (model, history: step, held-out accuracy, sigmoid(beta) per head).
    progress: a tqdm bar over the steps."""
    torch.manual_seed(seed)
    model = PasskeyModel(delta=delta)
    with torch.no_grad():
        model.attn.beta.fill_(beta0 if memory else -1e4)
    model.attn.beta.requires_grad_(memory)
    rest = [p for name, p in model.named_parameters() if name != "attn.beta"]
    gate = [{"params": [model.attn.beta], "lr": 3e-3 * gate_lr}] if memory else []
    opt = torch.optim.Adam([{"params": rest}] + gate, lr=3e-3)
    g = torch.Generator().manual_seed(seed)                  # the same batches for all
    x_val, key_val = passkey_batch(1000, 4, torch.Generator().manual_seed(10**4 + seed))
    history = {"step": [], "accuracy": [], "gate": []}
    with one_thread():
        bar = tqdm(range(steps + 1), disable=not progress, leave=False,
                   desc=f"passkey, {'memory' if memory else 'baseline'}, seed {seed}")
        for step in bar:
            if step % 25 == 0:
                history["step"].append(step)
                history["accuracy"].append(passkey_accuracy(model, x_val, key_val))
                history["gate"].append(torch.sigmoid(model.attn.beta).tolist())
            if step < steps:
                x, key = passkey_batch(64, 4, g)
                loss = F.cross_entropy(model(x), key)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model, history


def load_or_train_passkey(progress=True, **recipe):
    """(model, history) of train_passkey(**recipe), trained once and kept by
    `training.cached` (the package ships the CPU runs), under a name that hashes the
    recipe and this module's code; history["cpu_seconds"]: what training cost. The
    package's code trains, as load_or_train does."""
    from transformer_course import infini as course
    from transformer_course.training import cached

    code = hashlib.sha256(open(course.__file__, "rb").read()).hexdigest()

    def make():
        start = time.process_time()
        model, history = course.train_passkey(progress=progress, **recipe)
        history["cpu_seconds"] = time.process_time() - start
        return {"state_dict": model.state_dict(), "history": history}

    payload = cached("passkey", {"recipe": recipe, "code": code}, make)
    model = course.PasskeyModel(delta=recipe.get("delta", False))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload["history"]
