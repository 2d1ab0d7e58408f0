"""Chapter 17: ring attention's forward and backward rings, in simulated ranks (threads),
in real processes (gloo on the CPU) and launched by torchrun, each with a time limit."""

import queue
import socket
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from transformer_course.machine import free_port
from transformer_course.ring import (RingAttention, SimulatedRank, block_attention,
                                     gather_sequence, ring_attention, run_ring,
                                     simulate_ring, split_sequence)


def inputs(n, seed=0):
    """q, k, v, do [2, 3, n, 8] and dlse [2, 3, n] in float64."""
    g = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64)
                   for _ in range(4))
    return q, k, v, do, torch.randn(2, 3, n, generator=g, dtype=torch.float64)


def reference(q, k, v, do, dlse, causal):
    """o, lse, dq, dk, dv of attention over the whole sequence, by autograd."""
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    pos = torch.arange(q.shape[-2])
    out = block_attention(*leaves, pos, pos, causal)
    torch.autograd.backward(out, (do, dlse))
    return [t.detach() for t in out] + [t.grad for t in leaves]


@pytest.mark.parametrize("size, layout, causal", [(1, "contiguous", True),
                                                  (2, "contiguous", False),
                                                  (3, "contiguous", True),
                                                  (4, "zigzag", True)])
def test_backward_ring_on_simulated_ranks_equals_autograd(size, layout, causal):
    q, k, v, do, dlse = inputs(24)
    want = reference(q, k, v, do, dlse, causal)
    parts = [split_sequence(t, size, layout) for t in (q, k, v, do)]
    parts.append(split_sequence(dlse, size, layout, dim=-1))
    inboxes, got = [queue.Queue() for _ in range(size)], [None] * size

    def rank(r):
        leaves = [p[r].clone().requires_grad_() for p in parts[:3]]
        o, lse = RingAttention.apply(*leaves, causal, SimulatedRank(r, size, inboxes, 10.0),
                                     layout)
        torch.autograd.backward((o, lse), (parts[3][r], parts[4][r]))
        got[r] = [o.detach(), lse.detach()] + [t.grad for t in leaves]

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(g is not None for g in got), "a simulated rank failed or hung"
    for i, name in enumerate(("o", "lse", "dq", "dk", "dv")):
        mine = gather_sequence([g[i] for g in got], layout, dim=-1 if i == 1 else -2)
        err = (mine - want[i]).abs().max().item()
        assert err < 1e-12, f"{name} of the ring differs from autograd by {err:.1e}"


@pytest.mark.parametrize("size", [1, 2, 4])
def test_simulated_ring_counts_p_minus_one_messages_per_rank(size):
    q, k, v, *_ = inputs(8 * size)
    o, lse, sent = simulate_ring(ring_attention, q, k, v, size, causal=True, count=True)
    assert sent == [size - 1] * size, sent
    want = reference(q, k, v, *inputs(8 * size)[3:], causal=True)
    assert (o - want[0]).abs().max() < 1e-12 and (lse - want[1]).abs().max() < 1e-12


@pytest.mark.parametrize("send_first", [True, False])
def test_four_gloo_processes_equal_single_process_attention_and_gradients(send_first):
    q, k, v, do, dlse = inputs(24)
    want = reference(q, k, v, do, dlse, causal=True)
    run = run_ring(q, k, v, 4, causal=True, layout="zigzag", timeout=120,
                   grads_out=(do, dlse), repeats=2, send_first=send_first)
    assert [r["rank"] for r in run.reports] == [0, 1, 2, 3]
    assert run.reports[0]["backend"] == "gloo"
    assert all(len(r["seconds"]) == 2 and r["bytes_counted"] > 0 for r in run.reports)
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), (run.o, run.lse, *run.grads),
                          want):
        assert (a - b).abs().max() < 1e-12, f"ring {name} differs from attention"


def test_torchrun_launch_checks_forward_and_backward():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", "-m", "transformer_course.ring", "--causal",
           "--length", "64"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "ring attention, 2 processes (gloo), N = 64, causal, contiguous"
    errs = dict(part.split() for part in lines[1].split(": ")[1].split(","))
    assert set(errs) == {"o", "lse", "dq", "dk", "dv"}
    assert all(float(e) < 1e-12 for e in errs.values()), errs


def test_main_refuses_to_run_without_torchrun():
    done = subprocess.run([sys.executable, "-m", "transformer_course.ring"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "start it with torchrun" in done.stderr


def test_free_port_is_kept_from_other_pickers_but_not_from_its_server():
    """Two test workers (or notebooks) that pick a port at once must not get the same one: the
    port free_port returns is refused to a plain bind (what picking by port 0 does), while the
    torch.distributed store and a ZeroMQ socket (a kernel's) that bind it by number get it."""
    import zmq

    port = free_port()
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as s, pytest.raises(OSError):
            s.bind((host, port))
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=10))
    client = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=10))
    client.set("rank 1", "here")
    assert store.get("rank 1") == b"here"
    del client, store
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(f"tcp://127.0.0.1:{free_port()}")
        sock.close(linger=0)
    finally:
        ctx.term()
