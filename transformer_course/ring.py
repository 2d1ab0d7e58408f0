"""Generated from solutions/17_ring_attention.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


def block_attention(q, k, v, q_pos=None, k_pos=None, causal: bool = False):
    """(o [..., n_q, d], lse [..., n_q]) of q over the keys k, v, with natural-log lse.

    Causal compares global positions: query at q_pos[i] sees key at k_pos[j] when
    k_pos[j] <= q_pos[i]. Only the rows and columns with a visible pair are computed;
    rows that see no key get o = 0 and lse = -inf."""
    if q.shape[-1] != k.shape[-1] or k.shape != v.shape or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"expected q [..., n_q, d], k and v [..., n_k, d], got "
                         f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    o = torch.zeros_like(q)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)
    if not causal:
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        lse = torch.logsumexp(s, -1)
        return torch.softmax(s, -1) @ v, lse
    mask = k_pos[None, :] <= q_pos[:, None]
    rows, cols = mask.any(1), mask.any(0)
    if not rows.any():
        return o, lse
    qr, kc, vc = q[..., rows, :], k[..., cols, :], v[..., cols, :]
    s = qr @ kc.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~mask[rows][:, cols], float("-inf"))
    lse[..., rows] = torch.logsumexp(s, -1)
    o[..., rows, :] = torch.softmax(s, -1) @ vc
    return o, lse


def merge_partial_attention(o1, lse1, o2, lse2):
    """(o, lse) of attention over the keys of two parts, from each part's (o, lse).

    o1, o2: [..., n_q, d]; lse1, lse2: [..., n_q], natural log, -inf where a part had no
    visible key."""
    if o1.shape != o2.shape or lse1.shape != lse2.shape or lse1.shape != o1.shape[:-1]:
        raise ValueError(f"expected o1, o2 [..., n_q, d] and lse1, lse2 [..., n_q], "
                         f"got {list(o1.shape)}, {list(o2.shape)}, {list(lse1.shape)}, "
                         f"{list(lse2.shape)}")
    lse = torch.logaddexp(lse1, lse2)
    # no key in either part: subtract 0 so that both weights are exp(-inf) = 0, not NaN
    safe = lse.masked_fill(lse == float("-inf"), 0.0)
    w1, w2 = torch.exp(lse1 - safe)[..., None], torch.exp(lse2 - safe)[..., None]
    return w1 * o1 + w2 * o2, lse


def block_positions(rank: int, size: int, n_local: int, layout: str = "contiguous"):
    """Global positions of the n_local tokens rank holds, out of size * n_local."""
    if layout == "contiguous":
        return torch.arange(rank * n_local, (rank + 1) * n_local)
    if layout == "zigzag":
        if n_local % 2:
            raise ValueError(f"zigzag needs an even block length, got {n_local}")
        h = n_local // 2
        late = 2 * size - 1 - rank
        return torch.cat([torch.arange(rank * h, (rank + 1) * h),
                          torch.arange(late * h, (late + 1) * h)])
    raise ValueError(f"layout must be 'contiguous' or 'zigzag', got {layout!r}")


def split_sequence(x, size: int, layout: str = "contiguous", dim: int = -2) -> list:
    """The blocks of x (positions along dim) that ranks 0..size-1 hold."""
    n = x.shape[dim]
    if n % (size * (2 if layout == "zigzag" else 1)):
        raise ValueError(f"length {n} must be a multiple of {size} ranks"
                         + (" times 2 for zigzag" if layout == "zigzag" else ""))
    pos = [block_positions(r, size, n // size, layout) for r in range(size)]
    return [x.index_select(dim, p.to(x.device)) for p in pos]


def gather_sequence(parts: list, layout: str = "contiguous", dim: int = -2):
    """Inverse of split_sequence: put every rank's block back at its positions."""
    size, n_local = len(parts), parts[0].shape[dim]
    pos = torch.cat([block_positions(r, size, n_local, layout) for r in range(size)])
    order = torch.argsort(pos).to(parts[0].device)
    return torch.cat(parts, dim).index_select(dim, order)


class _Pending:
    def __init__(self, buf, reqs):
        self.buf, self.reqs = buf, reqs

    def wait(self):
        for r in self.reqs:
            r.wait()
        return self.buf


def ring_rank(group=None) -> int:
    return group.rank if hasattr(group, "shift") else dist.get_rank(group)


def ring_size(group=None) -> int:
    return group.size if hasattr(group, "shift") else dist.get_world_size(group)


def ring_shift(t, group=None, tag: int = 0):
    """Start sending t to rank + 1 and receiving from rank - 1 (mod size); returns a
    handle whose wait() gives the received tensor. Messages of one tag arrive in
    order."""
    if hasattr(group, "shift"):  # a SimulatedRank: one queue, kept in order
        return group.shift(t)
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    if group is not None:
        nxt, prv = dist.get_global_rank(group, nxt), dist.get_global_rank(group, prv)
    t = t.contiguous()
    buf = torch.empty_like(t)
    reqs = [dist.isend(t, nxt, group=group, tag=tag),
            dist.irecv(buf, prv, group=group, tag=tag)]
    return _Pending(buf, reqs)


def ring_attention(q, k, v, causal: bool = False, group=None,
                   layout: str = "contiguous"):
    """This rank's (o [..., n, d], lse [..., n]) of attention over the whole sequence,
    whose blocks of n positions are spread over the ranks of group (see
    block_positions).

    K/V blocks travel around the ring with ring_shift; partial results merge by their
    log-sum-exp (natural log)."""
    if q.shape != k.shape or k.shape != v.shape:
        raise ValueError(f"expected q, k, v of one shape [..., n, d], got "
                         f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    rank, size, n = ring_rank(group), ring_size(group), q.shape[-2]
    q_pos = block_positions(rank, size, n, layout).to(q.device)
    o = torch.zeros_like(q)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)
    kv = torch.stack([k, v])
    for step in range(size):
        pending = ring_shift(kv, group) if step < size - 1 else None
        src = (rank - step) % size  # whose block we hold after `step` hops
        k_pos = block_positions(src, size, n, layout).to(q.device)
        if not causal or bool((k_pos.min() <= q_pos).any()):  # skip blocks nobody sees
            o_b, lse_b = block_attention(q, kv[0], kv[1], q_pos, k_pos, causal)
            o, lse = merge_partial_attention(o, lse, o_b, lse_b)
        if pending is not None:
            kv = pending.wait()
    return o, lse


class SimulatedRank:
    """A rank of a ring simulated by threads in one process: shift() passes tensors."""

    def __init__(self, rank: int, size: int, inboxes: list, timeout: float):
        self.rank, self.size, self.inboxes, self.timeout = rank, size, inboxes, timeout
        self.sent = 0  # messages this rank has sent

    def shift(self, t):
        self.sent += 1
        self.inboxes[(self.rank + 1) % self.size].put(t.clone())
        box, timeout = self.inboxes[self.rank], self.timeout

        class Received:
            def wait(self):
                try:
                    got = box.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError("no block came from the previous rank") from None
                if got is None:  # another rank failed
                    raise RuntimeError("another simulated rank failed")
                return got

        return Received()


def simulate_ring(fn, q, k, v, size: int, causal: bool = False,
                  layout: str = "contiguous", timeout: float = 20.0,
                  count: bool = False):
    """Run fn(q_r, k_r, v_r, causal=, group=SimulatedRank, layout=) on `size` simulated
    ranks; return (o, lse) gathered into sequence order, and with count=True also the
    number of messages each rank sent."""
    parts = [split_sequence(t, size, layout) for t in (q, k, v)]
    inboxes = [queue.Queue() for _ in range(size)]
    groups = [SimulatedRank(r, size, inboxes, timeout) for r in range(size)]
    out, errors = [None] * size, []

    def run(r):
        try:
            group = groups[r]
            q_r, k_r, v_r = (p[r] for p in parts)
            out[r] = fn(q_r, k_r, v_r, causal=causal, group=group, layout=layout)
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller)
            errors.append(e)
            for box in inboxes:  # release the ranks waiting for a block from this one
                box.put(None)

    threads = [threading.Thread(target=run, args=(r,), daemon=True)
               for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"simulated ring of {size} ranks did not finish")
    for r, res in enumerate(out):
        if not isinstance(res, (tuple, list)) or len(res) != 2:
            raise TypeError(f"rank {r} returned {type(res).__name__}, "
                            "expected (o, lse)")
    o = gather_sequence([res[0] for res in out], layout)
    lse = gather_sequence([res[1] for res in out], layout, dim=-1)
    return (o, lse, [g.sent for g in groups]) if count else (o, lse)


def block_attention_backward(q, k, v, o, lse, do, dlse, q_pos=None, k_pos=None,
                             causal: bool = False):
    """(dq, dk, dv): one key block's share of the gradients of attention whose final
    output and lse (over all blocks) are o [..., n_q, d] and lse [..., n_q]."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    # a query that saw no key at all has lse = -inf: +inf makes its p exactly 0
    p = torch.exp(s - lse.masked_fill(lse == float("-inf"), float("inf"))[..., None])
    if causal:
        p = p.masked_fill(k_pos[None, :] > q_pos[:, None], 0.0)
    D = (do * o).sum(-1, keepdim=True)  # rowsum(dO ∘ O), as in chapter 12
    ds = p * (do @ v.transpose(-2, -1) - D + dlse[..., None])
    scale = 1 / math.sqrt(q.shape[-1])
    return ds @ k * scale, ds.transpose(-2, -1) @ q * scale, p.transpose(-2, -1) @ do


def ring_attention_backward(q, k, v, o, lse, do, dlse, causal: bool = False,
                            group=None, layout: str = "contiguous"):
    """This rank's (dq, dk, dv) for its blocks, from its o, lse and their gradients do,
    dlse: the K/V blocks go around the ring again, their dk, dv accumulating with
    them."""
    rank, size, n = ring_rank(group), ring_size(group), q.shape[-2]
    q_pos = block_positions(rank, size, n, layout).to(q.device)
    dq = torch.zeros_like(q)
    kv = torch.stack([k, v])
    dkv = torch.zeros_like(kv)
    for step in range(size):
        pending = ring_shift(kv, group) if step < size - 1 else None
        k_pos = block_positions((rank - step) % size, size, n, layout).to(q.device)
        if not causal or bool((k_pos.min() <= q_pos).any()):
            dq_b, dk_b, dv_b = block_attention_backward(q, kv[0], kv[1], o, lse, do,
                                                        dlse, q_pos, k_pos, causal)
            dq = dq + dq_b
            dkv = dkv + torch.stack([dk_b, dv_b])
        if pending is not None:
            kv = pending.wait()
        # the block's gradients follow the block (after the last step: back home); a
        # tag of their own, so they cannot be taken for the next K/V block
        dkv = ring_shift(dkv, group, tag=1).wait()
    return dq, dkv[0], dkv[1]


class RingAttention(torch.autograd.Function):
    """ring_attention with its backward ring: (o, lse) = RingAttention.apply(q, k, v,
    causal, group, layout), differentiable in q, k, v on every rank."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False, group=None, layout="contiguous"):
        o, lse = ring_attention(q, k, v, causal, group, layout)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (causal, group, layout)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        grads = ring_attention_backward(*ctx.saved_tensors, do, dlse, *ctx.args)
        return (*grads, None, None, None)


def join_ring(rank: int, size: int, gpu: int | None = None) -> torch.device:
    """Join the default process group (address from the environment): NCCL on GPU `gpu`
    when given (every rank needs its own), else gloo on the CPU. Returns the device."""
    if gpu is None:
        dist.init_process_group("gloo", rank=rank, world_size=size,
                                timeout=timedelta(seconds=60))
        return torch.device("cpu")
    torch.cuda.set_device(gpu)
    dist.init_process_group("nccl", rank=rank, world_size=size,
                            timeout=timedelta(seconds=60))
    return torch.device("cuda", gpu)


class SendAfterCompute:
    """A group for ring_shift that starts each transfer only when its result is waited
    for, so a block's compute runs before its send instead of beside it: the ring
    without overlap, to measure what starting the send first buys."""

    def __init__(self):
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def shift(self, t):
        class Later:
            def wait(self):
                return ring_shift(t).wait()

        return Later()


def ring_worker(rank, size, port, q, k, v, causal, layout, results, repeats=1,
                grads_out=None, send_first=True):
    """Run by each spawned process: join the group, run ring_attention on this rank's
    block (a warm-up call, one that measures memory, then `repeats` timed calls) and,
    given grads_out = (do, dlse), the backward ring; put (rank, backend, o, lse, seconds
    of each call, bytes counted, bytes measured, (dq, dk, dv) or None) on results.
    The measurement counts the tensors a call allocates when each has its own mapping
    (glibc: MALLOC_MMAP_THRESHOLD_=65536, as benchmarks/ring_attention.py sets)."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dev = join_ring(rank, size, rank if torch.cuda.device_count() >= size else None)
    group = None if send_first else SendAfterCompute()
    try:
        q_r, k_r, v_r = (split_sequence(t, size, layout)[rank].to(dev)
                         for t in (q, k, v))

        def call():
            return ring_attention(q_r, k_r, v_r, causal, group, layout)

        call()  # warm-up
        measured = None  # how far resident memory rose during one call (Linux)
        if dev.type == "cpu" and os.path.exists("/proc/self/clear_refs"):
            from transformer_course.flash import peak_rss_increase
            try:
                measured = peak_rss_increase(call)
            except OSError:  # /proc/self/clear_refs not writable here
                call()
        seconds = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            o, lse = call()
            seconds.append(time.perf_counter() - start)
        n = q_r.shape[-2]
        # counted from the shapes: o, the stacked K/V in hand (2) and arriving (2), lse,
        # one [n, n] score block per head
        counted = (q_r.numel() * 5 + lse.numel() + lse.numel() * n) * q_r.element_size()
        grads = None
        if grads_out is not None:
            do, dlse = (split_sequence(t, size, layout, dim)[rank].to(dev)
                        for t, dim in zip(grads_out, (-2, -1)))
            leaves = [t.detach().requires_grad_() for t in (q_r, k_r, v_r)]
            out = RingAttention.apply(*leaves, causal, None, layout)
            torch.autograd.backward(out, (do, dlse))
            grads = tuple(t.grad.cpu().numpy() for t in leaves)
        # numpy arrays travel by value (a tensor would travel as a handle to this
        # process's shared memory, gone once it exits)
        results.put((rank, dist.get_backend(), o.cpu().numpy(), lse.cpu().numpy(),
                     seconds, counted, measured, grads))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@dataclass
class RingRun:
    """What run_ring brings back, in sequence order: o, lse, the gradients (dq, dk, dv)
    when asked for, and per rank a dict: rank, backend, seconds (of each call), bytes
    counted from the shapes, bytes measured (peak RSS rise of one call; None off
    Linux and on GPUs)."""
    o: torch.Tensor
    lse: torch.Tensor
    grads: tuple | None
    reports: list


def run_ring(q, k, v, size: int, causal: bool = False, layout: str = "contiguous",
             timeout: float = 60.0, repeats: int = 1, grads_out=None,
             send_first: bool = True) -> RingRun:
    """Spawn `size` processes running ring_worker on the blocks of q, k, v [..., N, d]
    (and of grads_out = (do [..., N, d], dlse [..., N]) for the backward ring). With
    send_first=False each block is sent after its compute (no overlap). Raises
    TimeoutError if they do not finish within timeout seconds (and terminates them)."""
    import sys

    import torch.multiprocessing as mp

    # the packaged worker: the ranks' processes can import it
    from transformer_course import ring
    from transformer_course.machine import free_port

    split_sequence(q, size, layout)  # length check before any process starts
    # a fork server imports torch once and forks each rank from that clean process (it
    # has run no PyTorch threads, so forking is safe); without one (Windows), spawn
    forkserver = "forkserver" in mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if forkserver else "spawn")
    if forkserver:
        ctx.set_forkserver_preload(["transformer_course.ring"])  # before it starts
    results = ctx.Queue()
    args = (size, free_port(), q, k, v, causal, layout, results, repeats, grads_out,
            send_first)
    # children must not re-run the notebook's __main__
    main = sys.modules.get("__main__")
    hidden = vars(main).pop("__file__", None) if main is not None else None
    try:
        procs = [ctx.Process(target=ring.ring_worker, args=(r, *args))
                 for r in range(size)]
        for p in procs:
            p.start()
    finally:
        if hidden is not None:
            main.__file__ = hidden
    reports, deadline = [], time.monotonic() + timeout
    try:
        for _ in range(size):
            reports.append(results.get(timeout=max(1.0, deadline - time.monotonic())))
        for p in procs:
            p.join(max(1.0, deadline - time.monotonic()))
    except queue.Empty:
        raise TimeoutError(f"{size} processes: no result in {timeout} s") from None
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
    reports.sort(key=lambda r: r[0])

    def gather(arrays, dim=-2):  # the ranks' numpy blocks, in sequence order
        return gather_sequence([torch.from_numpy(a) for a in arrays], layout, dim)

    grads = None if grads_out is None else tuple(
        gather([r[7][j] for r in reports]) for j in range(3))
    keys = ("rank", "backend", "seconds", "bytes_counted", "bytes_measured")
    return RingRun(gather([r[2] for r in reports]), gather([r[3] for r in reports], -1),
                   grads, [dict(zip(keys, (*r[:2], *r[4:7]))) for r in reports])


def main(argv=None) -> None:
    """Run in the processes torchrun starts: ring attention's forward and backward on
    every rank, checked against attention over the whole sequence (float64)."""
    import argparse

    ap = argparse.ArgumentParser(prog="torchrun ... -m transformer_course.ring",
                                 description=main.__doc__)
    ap.add_argument("--length", type=int, default=256, help="sequence length N")
    ap.add_argument("--heads", type=int, default=2, help="heads H")
    ap.add_argument("--d-head", type=int, default=32)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--layout", default="contiguous", choices=("contiguous", "zigzag"))
    args = ap.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        ap.error("start it with torchrun (see the chapter), not with python")
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    gpus_enough = torch.cuda.device_count() >= int(os.environ["LOCAL_WORLD_SIZE"])
    dev = join_ring(rank, size, local if gpus_enough else None)
    try:
        g = torch.Generator().manual_seed(0)  # the same sequence on every rank
        shape = (1, args.heads, args.length, args.d_head)
        q, k, v, do = (torch.randn(shape, generator=g, dtype=torch.float64)
                       for _ in range(4))
        dlse = torch.randn(shape[:-1], generator=g, dtype=torch.float64)
        everything = [t.clone().requires_grad_() for t in (q, k, v)]
        pos = torch.arange(args.length)
        want = block_attention(*everything, pos, pos, args.causal)
        torch.autograd.backward(want, (do, dlse))
        want = [*want, *(t.grad for t in everything)]

        def block(t):  # this rank's positions of a [..., N, d] or [..., N] tensor
            dim = -1 if t.dim() == 3 else -2
            return split_sequence(t.detach(), size, args.layout, dim)[rank].to(dev)

        mine = [block(t).requires_grad_() for t in (q, k, v)]
        got = RingAttention.apply(*mine, args.causal, None, args.layout)
        torch.autograd.backward(got, (block(do), block(dlse)))
        got = [*got, *(t.grad for t in mine)]
        err = torch.stack([(a.detach() - block(b)).abs().max()
                           for a, b in zip(got, want)])
        dist.all_reduce(err, op=dist.ReduceOp.MAX)
        if rank == 0:
            names = ("o", "lse", "dq", "dk", "dv")
            mask = "causal" if args.causal else "full"
            print(f"ring attention, {size} processes ({dist.get_backend()}), "
                  f"N = {args.length}, {mask}, {args.layout}")
            print("largest difference from attention: "
                  + ", ".join(f"{n} {e:.0e}" for n, e in zip(names, err.tolist())))
        if err.max() > 1e-10:
            raise SystemExit(f"rank {rank}: ring attention differs from attention")
    finally:
        dist.destroy_process_group()


# `python -m` (which torchrun runs) sets __spec__; a notebook's __main__ has none
if __name__ == "__main__" and __spec__ is not None:
    main()


def ring_flops(n: int, size: int, d: int, layout: str = "contiguous",
               causal: bool = True) -> list:
    """FLOPs of QK^T and PV that each rank's ring_attention computes for one head."""
    n_local, flops = n // size, []
    for rank in range(size):
        q_pos, total = block_positions(rank, size, n_local, layout), 0
        for step in range(size):
            k_pos = block_positions((rank - step) % size, size, n_local, layout)
            mask = (k_pos[None, :] <= q_pos[:, None]) if causal else torch.ones(
                n_local, n_local, dtype=torch.bool)
            total += 4 * int(mask.any(1).sum()) * int(mask.any(0).sum()) * d
        flops.append(total)
    return flops
