"""Chapter 06 (feed-forward networks): the exercises, their checks, and plausible wrong answers."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from exercises._case import Exercise
from transformer_course import ffn
from transformer_course.checks import ffn as checks

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


# --- FeedForward -------------------------------------------------------------------------------

def _ff(forward, bias=True, w_1=lambda d, f: (d, f), w_2=lambda d, f: (f, d), choose=None):
    """A FeedForward with one mistake: in its forward, its layer sizes, or its biases."""

    class FeedForward(nn.Module):
        def __init__(self, d_model, d_ff, activation="relu"):
            super().__init__()
            if activation not in ACTIVATIONS:
                raise ValueError(activation)
            self.activation = ACTIVATIONS[activation] if choose is None else choose(activation)
            self.w_1 = nn.Linear(*w_1(d_model, d_ff), bias=bias)
            self.w_2 = nn.Linear(*w_2(d_model, d_ff), bias=bias)

        def forward(self, x):
            return forward(self, x)

    return FeedForward


FF_WRONG = [
    # ignores the activation argument: always ReLU
    (_ff(lambda m, x: m.w_2(F.relu(m.w_1(x)))), "computes ReLU although activation='gelu'"),
    # GELU's tanh approximation (GPT-2's "gelu_new") where the exact one is expected
    (_ff(lambda m, x: m.w_2(m.activation(m.w_1(x))),
         choose=lambda a: (lambda h: F.gelu(h, approximate="tanh")) if a == "gelu" else F.relu),
     "GELU's tanh approximation"),
    # no activation: two linear layers in a row
    (_ff(lambda m, x: m.w_2(m.w_1(x))), "there is no nonlinearity between w_1 and w_2"),
    # the activation after w_2 instead of between the layers
    (_ff(lambda m, x: m.activation(m.w_2(m.w_1(x)))), "passed through the activation after w_2"),
    # the activation after w_2 as well
    (_ff(lambda m, x: m.activation(m.w_2(m.activation(m.w_1(x))))), "after w_2"),
    # no biases
    (_ff(lambda m, x: m.w_2(m.activation(m.w_1(x))), bias=False), "w_1 has no bias"),
    # w_1 goes d_ff -> d_model: sizes swapped
    (_ff(lambda m, x: m.w_1(m.activation(m.w_2(x))), w_1=lambda d, f: (f, d), w_2=lambda d, f: (d, f)),
     "input and output are swapped"),
    # hidden layer of width d_model, ignoring d_ff
    (_ff(lambda m, x: m.w_2(m.activation(m.w_1(x))), w_1=lambda d, f: (d, d), w_2=lambda d, f: (d, d)),
     "expected d_model = 6 -> d_ff = 10"),
    # "normalizes" over the sequence: mixes positions
    (_ff(lambda m, x: m.w_2(m.activation(m.w_1(x - x.mean(-2, keepdim=True)))) if x.dim() == 3
         else m.w_2(m.activation(m.w_1(x)))), "mixes positions"),
]


# --- SwiGLU ------------------------------------------------------------------------------------

def _swiglu(forward, bias=False, swap_23=False):
    class SwiGLU(nn.Module):
        def __init__(self, d_model, d_ff):
            super().__init__()
            self.w_1 = nn.Linear(d_model, d_ff, bias=bias)
            if swap_23:   # LLaMA's names mixed up: w_2 as the value branch, w_3 as the output layer
                self.w_2 = nn.Linear(d_model, d_ff, bias=bias)
                self.w_3 = nn.Linear(d_ff, d_model, bias=bias)
            else:
                self.w_3 = nn.Linear(d_model, d_ff, bias=bias)
                self.w_2 = nn.Linear(d_ff, d_model, bias=bias)

        def forward(self, x):
            return forward(self, x)

    return SwiGLU


SWIGLU_WRONG = [
    (_swiglu(lambda m, x: m.w_2(F.silu(m.w_3(x)) * m.w_1(x))), "you apply SiLU to w_3's branch"),
    (_swiglu(lambda m, x: m.w_2(torch.sigmoid(m.w_1(x)) * m.w_3(x))), "your gate is a sigmoid"),
    (_swiglu(lambda m, x: m.w_2(m.w_1(x) * m.w_3(x))), "'bilinear' GLU variant"),
    (_swiglu(lambda m, x: m.w_2(F.gelu(m.w_1(x)) * m.w_3(x))), "that is GEGLU"),
    (_swiglu(lambda m, x: m.w_2(F.silu(m.w_1(x) * m.w_3(x)))), "you apply SiLU to the product"),
    (_swiglu(lambda m, x: m.w_2(F.silu(m.w_1(x)) + m.w_3(x))), "you add the two branches"),
    (_swiglu(lambda m, x: m.w_2(F.silu(m.w_1(x)) * m.w_3(x)), bias=True), "w_1 has a bias"),
    (_swiglu(lambda m, x: m.w_3(F.silu(m.w_1(x)) * m.w_2(x)), swap_23=True), "the roles are the other way round"),
]


# --- swiglu_d_ff -------------------------------------------------------------------------------

def _d_ff(rule):
    def swiglu_d_ff(d_model, multiple_of=256):
        return rule(d_model, multiple_of)
    return swiglu_d_ff


D_FF_WRONG = [
    (_d_ff(lambda d, m: int(8 * d / 3)), "is only the first step"),                          # no rounding
    (_d_ff(lambda d, m: m * (int(8 * d / 3) // m)), "rounded 10922 down"),
    (_d_ff(lambda d, m: m * round(int(8 * d / 3) / m)), "or to the nearest multiple"),
    (_d_ff(lambda d, m: m * math.ceil(int(2 * d / 3) / m)), "start from the usual d_ff = 4 · d_model"),
    (_d_ff(lambda d, m: float(m * math.ceil(int(8 * d / 3) / m))), "returned the float 11008.0"),
    (_d_ff(lambda d, m: torch.tensor(m * math.ceil(int(8 * d / 3) / m))), "call .item()"),
]


# --- block_param_count -------------------------------------------------------------------------

def _count(plain, llama):
    def block_param_count(d_model, d_ff, swiglu=False):
        return llama(d_model, d_ff) if swiglu else plain(d_model, d_ff)
    return block_param_count


def _right_plain(d, f):
    return 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d


def _right_llama(d, f):
    return 4 * d * d + 3 * d * f + 2 * d


COUNT_WRONG = [
    (_count(lambda d, f: 4 * d * d + 2 * d * f + 4 * d, _right_llama), "you left out the biases"),
    (_count(lambda d, f: 4 * d * d + 4 * d + 2 * d * f + f + d, _right_llama), "left out the two LayerNorms"),
    (_count(lambda d, f: 4 * d * d + 4 * d + 2 * d * f + f + d + 2 * d, _right_llama), "a weight *and* a bias"),
    (_count(lambda d, f: 3 * d * d + 3 * d + 2 * d * f + f + d + 4 * d, _right_llama), "four d_model x d_model"),
    (_count(_right_plain, lambda d, f: 4 * d * d + 2 * d * f + 2 * d), "SwiGLU has three matrices"),
    (_count(_right_plain, lambda d, f: 4 * d * d + 3 * d * f + 4 * d), "an RMSNorm has a weight but no bias"),
    (_count(_right_plain, lambda d, f: 4 * d * d + 3 * d * f), "left out the two RMSNorms"),
    (_count(lambda d, f: torch.tensor(_right_plain(d, f)), _right_llama),
     "expected a Python int (as the docstring says): call .item()"),
    (_count(lambda d, f: float(_right_plain(d, f)), _right_llama), "returned 3152384.0, expected a Python int"),
]


EXERCISES = {
    "FeedForward": Exercise(check=checks.check_FeedForward, solution=ffn.FeedForward, wrong=FF_WRONG),
    "SwiGLU": Exercise(check=checks.check_SwiGLU, solution=ffn.SwiGLU, wrong=SWIGLU_WRONG),
    "swiglu_d_ff": Exercise(check=checks.check_swiglu_d_ff, solution=ffn.swiglu_d_ff, wrong=D_FF_WRONG),
    "block_param_count": Exercise(check=checks.check_block_param_count, solution=ffn.block_param_count,
                                  wrong=COUNT_WRONG),
}
