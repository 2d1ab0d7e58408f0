"""Chapter 17: ring attention in real processes (gloo on the CPU), with a time limit."""

import torch

from transformer_course.ring import block_attention, run_ring


def test_four_gloo_processes_equal_single_process_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 24, 8, generator=g) for _ in range(3))
    want_o, want_lse = block_attention(q.double(), k.double(), v.double(),
                                       torch.arange(24), torch.arange(24), causal=True)
    o, lse, reports = run_ring(q, k, v, 4, causal=True, layout="zigzag", timeout=120)
    assert [r[0] for r in reports] == [0, 1, 2, 3] and reports[0][1] == "gloo"
    assert (o.double() - want_o).abs().max() < 1e-5, "ring output differs from attention"
    assert (lse.double() - want_lse).abs().max() < 1e-5, "ring lse differs from attention"
