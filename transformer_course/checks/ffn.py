"""Checks for chapter 06 (feed-forward networks): FeedForward (ReLU or GELU), SwiGLU, the SwiGLU
hidden size of LLaMA, and the parameter count of a whole block.

The module checks take the learner's *class*, build it, and look at it in three ways: its layers
(names, shapes, biases, parameter count), its activation read off directly (with w_1 = w_2 = identity
and zero biases a FeedForward returns act(x), so the activation can be named), and its output on random
inputs against an oracle built from the learner's own weights with F.linear and F.relu / F.gelu /
F.silu. When the output is wrong, the usual mistakes are recomputed from the same weights (activation
missing or after w_2, gate on the wrong branch, sigmoid instead of SiLU, ...) and named if one matches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..i18n import tr, trf
from . import approx, call, describe, expect_close, expect_tensor, fail, name_of, passed, seeded

__all__ = ["check_FeedForward", "check_SwiGLU", "check_swiglu_d_ff", "check_block_param_count"]


# --- helpers -----------------------------------------------------------------------------------

def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


# Activations a learner might have used, by the words the messages use for them.
KNOWN = {
    "ReLU": F.relu,
    tr("GELU (exact, with erf)"): F.gelu,
    tr("GELU's tanh approximation"): _gelu_tanh,
    "SiLU": F.silu,
    tr("a sigmoid"): torch.sigmoid,
    "tanh": torch.tanh,
    tr("no activation at all (the identity)"): lambda x: x,
}
EXPECTED = {"relu": "ReLU", "gelu": tr("GELU (exact, with erf)")}


def _build(cls, args: tuple, kwargs: dict, who: str) -> nn.Module:
    m = call(cls, *args, **kwargs)
    if not isinstance(m, nn.Module):
        fail(trf("{who} should be an nn.Module (a class with __init__ and forward), got {type(m).__name__}"))
    return m


def _signature(cls, args, kwargs) -> str:
    shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{name_of(cls)}({', '.join(shown)})"


def _expect_linear(m: nn.Module, name: str, sizes: dict, d_in: str, d_out: str, bias: bool, who: str,
                   role: str) -> nn.Linear:
    """m.<name> must be nn.Linear(sizes[d_in], sizes[d_out], bias=bias)."""
    lin = getattr(m, name, None)
    want = trf("nn.Linear({d_in}, {d_out}") + (")" if bias else tr(", bias=False)"))
    if lin is None:
        fail(trf("{who} has no attribute {name}: {role}, so create self.{name} = {want} in __init__ "
             "(other chapters and these checks find the layer by this name)"))
    if not isinstance(lin, nn.Linear):
        fail(trf("{who}.{name} is a {type(lin).__name__}, expected {want} ({role})"))
    i, o = sizes[d_in], sizes[d_out]
    if (lin.in_features, lin.out_features) != (i, o):
        if (lin.in_features, lin.out_features) == (o, i):
            fail(trf("{who}.{name} maps {lin.in_features} -> {lin.out_features} features: input and output are "
                 "swapped. {name} {role}: {want} = nn.Linear({i}, {o}) here"))
        fail(trf("{who}.{name} maps {lin.in_features} -> {lin.out_features} features, expected {d_in} = {i} -> "
             "{d_out} = {o}: {name} {role}, {want}"))
    if bias and lin.bias is None:
        fail(trf("{who}.{name} has no bias: the FFN of the 2017 paper is max(0, x W_1 + b_1) W_2 + b_2, with "
             "biases b_1 and b_2 (nn.Linear's default bias=True)"))
    if not bias and lin.bias is not None:
        fail(trf("{who}.{name} has a bias: SwiGLU, as in PaLM and LLaMA, uses no biases; create it with "
             "{want}"))
    return lin


def _expect_param_count(m: nn.Module, want: int, formula: str, who: str, expected_names) -> None:
    got = sum(p.numel() for p in m.parameters())
    if got != want:
        extra = [n for n, _ in m.named_parameters() if n not in expected_names]
        fail(trf("{who} has {got:,} parameters, expected {formula} = {want:,}")
             + (trf("; unexpected parameters: {', '.join(extra)}") if extra else ""))


def _expect_output(got, x, what: str) -> torch.Tensor:
    expect_tensor(got, what)
    if tuple(got.shape) != tuple(x.shape):
        fail(trf("{what} has shape {list(got.shape)}, expected {list(x.shape)}: a feed-forward network maps "
             "[..., d_model] to [..., d_model], one vector per position in, one out"))
    if got.dtype != x.dtype:
        fail(trf("{what} has dtype {got.dtype}, expected {x.dtype} (the input's)"))
    return got


def _weights(m: nn.Module, names) -> dict:
    """The learner's weights in float64: w_1 -> (weight, bias or None)."""
    out = {}
    for n in names:
        lin = getattr(m, n)
        out[n] = (lin.weight.detach().double(), None if lin.bias is None else lin.bias.detach().double())
    return out


def _lin(x, wb):
    return F.linear(x, wb[0], wb[1])


def _first_match(got: torch.Tensor, candidates: dict, atol=1e-5, rtol=1e-4):
    g = got.detach().double()
    for words, value in candidates.items():
        if value is not None and value.shape == g.shape and torch.allclose(g, value, atol=atol, rtol=rtol):
            return words
    return None


def _check_positions(m, d_model: int, who: str) -> None:
    """Changing the input at one position must change no other position's output."""
    x = torch.randn(2, 6, d_model)
    x2 = x.clone()
    x2[0, 3] = torch.randn(d_model)
    with torch.no_grad():
        a, b = call(m, x), call(m, x2)
    expect_tensor(a, trf("{who}(x of shape [2, 6, {d_model}])"))
    if tuple(a.shape) != (2, 6, d_model):
        return  # the oracle comparison reports the shape
    diff = (a - b).abs().amax(-1)
    diff[0, 3] = 0.0
    if (diff > 1e-6).any():
        s, t = torch.nonzero(diff > 1e-6)[0].tolist()
        fail(trf("{who} mixes positions: changing the input at sequence 0, position 3 changed the output at "
             "sequence {s}, position {t} (by {approx(diff[s, t].item(), 3)}). A feed-forward network "
             "transforms each position on its own: apply the linear layers to the last dimension only, "
             "and do not reduce over (or reshape) the other dimensions"))


def _check_gradients(m, x, who: str) -> None:
    m.zero_grad()
    out = call(m, x)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in m.named_parameters():
        if p.grad is None or not p.grad.abs().sum() > 0:
            fail(trf("no gradient reached {who}.{name}: the output must be computed from the layers with "
                 "ordinary differentiable operations (no .detach(), .data, .item() or torch.no_grad())"))
    m.zero_grad()


def _probe_activation(m: nn.Module, d: int, who: str) -> torch.Tensor:
    """With w_1 = w_2 = identity and zero biases, a FeedForward's output is act(x), elementwise."""
    x = torch.linspace(-4.0, 4.0, 7 * d).reshape(7, d)
    with torch.no_grad():
        for name in ("w_1", "w_2"):
            lin = getattr(m, name)
            lin.weight.copy_(torch.eye(d))
            lin.bias.zero_()
        return x, call(m, x.clone())


# --- FeedForward -------------------------------------------------------------------------------

FF_HINT = tr("Expected w_2(act(w_1(x))), with act = self.activation between the two layers")


def check_FeedForward(cls, seed: int = 0) -> None:
    """FeedForward(d_model, d_ff, activation): layers, activation (read off with identity weights), and
    the output against F.linear(act(F.linear(x, W_1, b_1)), W_2, b_2) from the learner's own weights."""
    who = name_of(cls)
    n = 0
    with seeded(seed):
        # 1. the layers: w_1 [d_ff <- d_model], w_2 [d_model <- d_ff], with biases
        d_model, d_ff = 6, 10
        for act in ("relu", "gelu"):
            args, kwargs = (d_model, d_ff), {"activation": act}
            sig = _signature(cls, args, kwargs)
            m = _build(cls, args, kwargs, sig)
            sizes = {"d_model": d_model, "d_ff": d_ff}
            _expect_linear(m, "w_1", sizes, "d_model", "d_ff", True, sig, tr("maps each position up to d_ff"))
            _expect_linear(m, "w_2", sizes, "d_ff", "d_model", True, sig, tr("maps back down to d_model"))
            _expect_param_count(m, 2 * d_model * d_ff + d_ff + d_model,
                                trf("2·d_model·d_ff + d_ff + d_model = 2·{d_model}·{d_ff} + {d_ff} + {d_model}"),
                                sig, {"w_1.weight", "w_1.bias", "w_2.weight", "w_2.bias"})
            n += 1

        # 2. each position on its own
        m = _build(cls, (8, 12), {"activation": "gelu"}, _signature(cls, (8, 12), {"activation": "gelu"}))
        _check_positions(m, 8, who)
        n += 1

        # 3. the activation itself, with identity weights: the output is act(x)
        d = 5
        for act in ("relu", "gelu"):
            args, kwargs = (d, d), {"activation": act}
            sig = _signature(cls, args, kwargs)
            m = _build(cls, args, kwargs, sig)
            x, got = _probe_activation(m, d, sig)
            what = trf("{sig} with w_1 = w_2 = identity and zero biases")
            _expect_output(got, x, what)
            want = EXPECTED[act]
            if torch.allclose(got.double(), KNOWN[want](x.double()), atol=1e-6, rtol=1e-5):
                n += 1
                continue
            found = _first_match(got, {k: f(x.double()) for k, f in KNOWN.items()}, atol=1e-6, rtol=1e-5)
            if found is None and torch.allclose(got.double(), KNOWN[want](KNOWN[want](x.double())), atol=1e-6,
                                                rtol=1e-5):
                fail(trf("{what} computes act(act(x)): you apply the activation after w_2 as well. The FFN ends "
                     "with the linear layer w_2 (its output goes into the residual sum). {FF_HINT}"))
            if found == tr("no activation at all (the identity)"):
                fail(trf("{what} returns its input unchanged: there is no nonlinearity between w_1 and w_2. "
                     "Apply self.activation to w_1(x); without it the two layers collapse into one linear map"))
            if found == tr("GELU's tanh approximation"):
                fail(trf("{what} computes GELU's tanh approximation, F.gelu(x, approximate='tanh') (it differs "
                     "from the exact GELU by up to 4.7e-4). This course's 'gelu' is the exact x·Φ(x) with "
                     "erf, the default of F.gelu and nn.GELU: use self.activation"))
            if found is not None and found in EXPECTED.values():
                other = [k for k, v in EXPECTED.items() if v == found][0]
                fail(trf("{what} computes {found} although activation={act!r}: it ignores the activation "
                     "argument. Call self.activation (chosen in __init__ from ACTIVATIONS), not a fixed "
                     "F.{other}"))
            if found is not None:
                fail(trf("{what} computes {found} between the layers, expected {want}: use self.activation"))
            i = int((got.double() - KNOWN[want](x.double())).abs().argmax())
            xi, gi = x.flatten()[i].item(), got.flatten()[i].item()
            fail(trf("{what} should return {want} of its input, elementwise: at x = {xi:.3g} you give "
                 "{gi:.6g}, expected {KNOWN[want](torch.tensor(xi, dtype=torch.float64)).item():.6g}. ")
                 + FF_HINT)

        # 4. random weights, ordinary and awkward shapes, against the oracle from the learner's weights
        cases = [  # (d_model, d_ff, input shape, activation)
            (8, 32, (2, 5, 8), "relu"),
            (8, 32, (2, 5, 8), "gelu"),
            (1, 1, (3, 1), "relu"),               # d_model = d_ff = 1, no batch dimension
            (5, 3, (1, 1, 5), "gelu"),            # d_ff < d_model, a single position
            (6, 20, (2, 3, 4, 6), "relu"),        # extra leading dimensions
            (16, 64, (7, 16), "gelu"),
        ]
        for d_model, d_ff, shape, act in cases:
            args, kwargs = (d_model, d_ff), {"activation": act}
            sig = _signature(cls, args, kwargs)
            m = _build(cls, args, kwargs, sig)
            with torch.no_grad():          # biases of a typical size, so that forgetting one shows
                for name in ("w_1", "w_2"):
                    if getattr(getattr(m, name, None), "bias", None) is not None:
                        getattr(m, name).bias.normal_()
            x = torch.randn(shape)
            saved = x.clone()
            what = trf("{sig}(x of shape {list(shape)})")
            got = _expect_output(call(m, x), x, what)
            if not torch.equal(x, saved):
                fail(trf("{what} changed its input x in place; compute new tensors instead (the residual "
                     "connection around the FFN still needs x)"))
            w = _weights(m, ("w_1", "w_2"))
            f = KNOWN[EXPECTED[act]]
            xd = x.double()
            h = _lin(xd, w["w_1"])
            want = _lin(f(h), w["w_2"])
            if not torch.allclose(got.detach().double(), want, atol=1e-5, rtol=1e-4):
                no_b = ((w["w_1"][0], None), (w["w_2"][0], None))
                found = _first_match(got, {
                    tr("no activation"): _lin(h, w["w_2"]),
                    tr("activation after w_2"): f(_lin(h, w["w_2"])),
                    tr("activation after w_2 as well"): f(want),
                    tr("no biases"): _lin(f(_lin(xd, no_b[0])), no_b[1]),
                })
                if found == tr("no activation"):
                    fail(trf("{what}: your output is w_2(w_1(x)), with no activation between the layers. "
                         "{FF_HINT}"))
                if found in (tr("activation after w_2"), tr("activation after w_2 as well")):
                    fail(trf("{what}: your output is passed through the activation after w_2. The FFN ends with "
                         "the linear layer w_2 (its output goes into the residual sum and may be negative). "
                         "{FF_HINT}"))
                if found == tr("no biases"):
                    fail(trf("{what}: your output ignores the biases of w_1 and w_2; call the layers, "
                         "self.w_1(x), rather than multiplying by their weights"))
                expect_close(got, want.float(), what, hint=FF_HINT)
            n += 1

        # 5. gradients reach every parameter
        m = _build(cls, (8, 12), {"activation": "gelu"}, _signature(cls, (8, 12), {"activation": "gelu"}))
        _check_gradients(m, torch.randn(3, 4, 8), who)
        n += 1
    passed(cls, n)


# --- SwiGLU ------------------------------------------------------------------------------------

SWIGLU_HINT = tr("Expected w_2(F.silu(w_1(x)) * w_3(x)): w_1 is the gate (through SiLU), w_3 the value")


def check_SwiGLU(cls, seed: int = 0) -> None:
    """SwiGLU(d_model, d_ff): three bias-free layers, output against
    F.linear(F.silu(F.linear(x, W_1)) * F.linear(x, W_3), W_2) from the learner's own weights."""
    who = name_of(cls)
    n = 0
    with seeded(seed):
        # 1. the layers: w_1 (gate) and w_3 (value) d_model -> d_ff, w_2 d_ff -> d_model, no biases
        d_model, d_ff = 6, 10
        sig = _signature(cls, (d_model, d_ff), {})
        m = _build(cls, (d_model, d_ff), {}, sig)
        sizes = {"d_model": d_model, "d_ff": d_ff}
        w2 = getattr(m, "w_2", None)
        w3 = getattr(m, "w_3", None)
        if (isinstance(w2, nn.Linear) and isinstance(w3, nn.Linear)
                and (w2.in_features, w2.out_features) == (d_model, d_ff)
                and (w3.in_features, w3.out_features) == (d_ff, d_model)):
            fail(trf("{sig}: your w_2 maps d_model -> d_ff and your w_3 maps d_ff -> d_model: the roles are "
                 "the other way round. As in LLaMA's code, w_2 is the output layer, nn.Linear(d_ff, d_model, "
                 "bias=False), and w_3 the value branch, nn.Linear(d_model, d_ff, bias=False): "
                 "w_2(silu(w_1(x)) * w_3(x))"))
        _expect_linear(m, "w_1", sizes, "d_model", "d_ff", False, sig, tr("is the gate, d_model -> d_ff"))
        _expect_linear(m, "w_3", sizes, "d_model", "d_ff", False, sig, tr("is the value branch, d_model -> d_ff"))
        _expect_linear(m, "w_2", sizes, "d_ff", "d_model", False, sig, tr("maps back down, d_ff -> d_model"))
        _expect_param_count(m, 3 * d_model * d_ff, trf("3·d_model·d_ff = 3·{d_model}·{d_ff}"), sig,
                            {"w_1.weight", "w_2.weight", "w_3.weight"})
        n += 1

        # 2. each position on its own
        m = _build(cls, (8, 12), {}, _signature(cls, (8, 12), {}))
        _check_positions(m, 8, who)
        n += 1

        # 3. random weights, ordinary and awkward shapes, against the oracle from the learner's weights
        cases = [  # (d_model, d_ff, input shape)
            (8, 24, (2, 5, 8)),
            (1, 1, (3, 1)),
            (5, 3, (1, 1, 5)),
            (6, 16, (2, 3, 4, 6)),
            (16, 43, (7, 16)),
        ]
        for d_model, d_ff, shape in cases:
            sig = _signature(cls, (d_model, d_ff), {})
            m = _build(cls, (d_model, d_ff), {}, sig)
            x = torch.randn(shape)
            saved = x.clone()
            what = trf("{sig}(x of shape {list(shape)})")
            got = _expect_output(call(m, x), x, what)
            if not torch.equal(x, saved):
                fail(trf("{what} changed its input x in place; compute new tensors instead"))
            w = _weights(m, ("w_1", "w_2", "w_3"))
            xd = x.double()
            g, v = _lin(xd, w["w_1"]), _lin(xd, w["w_3"])
            want = _lin(F.silu(g) * v, w["w_2"])
            if not torch.allclose(got.detach().double(), want, atol=1e-5, rtol=1e-4):
                down = lambda h: _lin(h, w["w_2"])  # noqa: E731
                found = _first_match(got, {
                    "swapped": down(F.silu(v) * g),
                    "sigmoid": down(torch.sigmoid(g) * v),
                    tr("sigmoid swapped"): down(torch.sigmoid(v) * g),
                    "bilinear": down(g * v),
                    "GEGLU": down(F.gelu(g) * v),
                    "ReGLU": down(F.relu(g) * v),
                    tr("silu both"): down(F.silu(g) * F.silu(v)),
                    tr("silu of product"): down(F.silu(g * v)),
                    "sum": down(F.silu(g) + v),
                    tr("after w_2"): F.silu(want),
                })
                msgs = {
                    "swapped": tr("you apply SiLU to w_3's branch: w_1 is the gate, SiLU(x W_1), and w_3 the "
                               "value, x W_3, that the gate scales"),
                    "sigmoid": tr("your gate is a sigmoid, σ(x W_1): that is the original GLU of Dauphin et al. "
                               "SwiGLU's gate is SiLU(z) = z·σ(z), F.silu"),
                    tr("sigmoid swapped"): tr("your gate is a sigmoid, and on w_3's branch: SwiGLU's gate is "
                                       "SiLU(x W_1) = F.silu(w_1(x))"),
                    "bilinear": tr("you multiply w_1(x) * w_3(x) with no SiLU: that is the 'bilinear' GLU "
                                "variant; apply F.silu to the gate w_1(x)"),
                    "GEGLU": tr("your gate uses GELU: that is GEGLU, a sibling of SwiGLU; use F.silu"),
                    "ReGLU": tr("your gate uses ReLU: that is ReGLU, a sibling of SwiGLU; use F.silu"),
                    tr("silu both"): tr("you apply SiLU to both branches; only the gate w_1(x) goes through SiLU"),
                    tr("silu of product"): tr("you apply SiLU to the product; it goes on the gate alone: "
                                       "F.silu(w_1(x)) * w_3(x)"),
                    "sum": tr("you add the two branches; a gated unit multiplies them, elementwise"),
                    tr("after w_2"): tr("you apply SiLU after w_2 as well; the output is w_2 of the gated product, "
                                 "with nothing after it"),
                }
                if found is not None:
                    fail(trf("{what}: {msgs[found]}. {SWIGLU_HINT}"))
                expect_close(got, want.float(), what, hint=SWIGLU_HINT)
            n += 1

        # 4. gradients reach every parameter
        m = _build(cls, (8, 12), {}, _signature(cls, (8, 12), {}))
        _check_gradients(m, torch.randn(3, 4, 8), who)
        n += 1
    passed(cls, n)


# --- swiglu_d_ff -------------------------------------------------------------------------------

def _llama_d_ff(d_model: int, multiple_of: int) -> int:
    hidden = int(2 * (4 * d_model) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def check_swiglu_d_ff(fn, seed: int = 0) -> None:
    """swiglu_d_ff(d_model, multiple_of) -> int: int(2/3 · 4 · d_model), rounded up to multiple_of.
    Oracle: LLaMA's published sizes (11008, 13824, 17920, 22016) and the rule itself."""
    who = name_of(fn)
    cases = [(4096, 256, 11008), (5120, 256, 13824), (6656, 256, 17920), (8192, 256, 22016),
             (512, 1, 1365), (768, 64, 2048), (100, 8, 272), (3, 1, 8)]
    with seeded(seed):
        d = int(torch.randint(1, 2000, ()).item())
        m = int(torch.randint(1, 100, ()).item())
    cases.append((d, m, _llama_d_ff(d, m)))
    for d_model, multiple_of, want in cases:
        what = trf("{who}({d_model}, multiple_of={multiple_of})")
        got = call(fn, d_model, multiple_of=multiple_of)   # -> int, as the docstring says
        if isinstance(got, bool) or not isinstance(got, int):
            if isinstance(got, float) and got.is_integer():
                fail(trf("{what} returned the float {got}: a layer size must be an int (nn.Linear needs one)"))
            if not isinstance(got, float):
                fail(trf("{what} returned {describe(got)}, expected a Python int (as the docstring says)")
                     + (tr(": call .item() on a one-element tensor") if isinstance(got, torch.Tensor) else ""))
        if got == want:
            continue
        hidden = int(8 * d_model / 3)
        if math.isclose(got, 8 * d_model / 3) or got == hidden:
            fail(trf("{what} is {got}, expected {want}: 2/3 · 4 · d_model = {hidden} is only the first step; "
                 "round it up to a multiple of {multiple_of} (the GPU likes sizes that are multiples of "
                 "64 or 256)"))
        if got == multiple_of * (hidden // multiple_of):
            # rounding to the nearest multiple fails exactly where it rounds down, so the two look alike
            fail(trf("{what} is {got}, expected {want}: you rounded {hidden} down (or to the nearest multiple, "
                 "which here is the same) to a multiple of {multiple_of}; LLaMA rounds up, "
                 "multiple_of · ceil(hidden / multiple_of), so that d_ff never falls below 2/3 · 4 · d_model"))
        if got in (multiple_of * math.ceil(int(2 * d_model / 3) / multiple_of), int(2 * d_model / 3)):
            fail(trf("{what} is {got}, expected {want}: start from the usual d_ff = 4 · d_model = "
                 "{4 * d_model} and take 2/3 of it, {hidden}, then round up to a multiple of {multiple_of}"))
        fail(trf("{what} is {got}, expected {want} = {multiple_of} · ceil({hidden} / {multiple_of}), where "
             "{hidden} = int(2/3 · 4 · {d_model})"))
    passed(fn, len(cases))


# --- block_param_count -------------------------------------------------------------------------

class _RMSNormWeight(nn.Module):
    """An RMSNorm's parameters: one weight per feature, no bias (the oracle only counts them)."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d))


def _oracle_block(d_model: int, d_ff: int, swiglu: bool) -> int:
    """Parameters of a real block, built on the meta device (no memory), counted with numel()."""
    with torch.device("meta"):
        if not swiglu:   # PyTorch's own encoder layer: attention, ReLU FFN, two LayerNorms, biases
            block = nn.TransformerEncoderLayer(d_model, 1, d_ff, dropout=0.0)
        else:            # a LLaMA block: bias-free projections, SwiGLU, two RMSNorms
            block = nn.ModuleList([nn.Linear(d_model, d_model, bias=False) for _ in range(4)]
                                  + [nn.Linear(d_model, d_ff, bias=False) for _ in range(2)]
                                  + [nn.Linear(d_ff, d_model, bias=False), _RMSNormWeight(d_model),
                                     _RMSNormWeight(d_model)])
    return sum(p.numel() for p in block.parameters())


def check_block_param_count(fn, seed: int = 0) -> None:
    """block_param_count(d_model, d_ff, swiglu=False) -> int; oracle: the parameters of a real block,
    nn.TransformerEncoderLayer (swiglu=False) or a LLaMA-style block (swiglu=True), counted with numel()."""
    who = name_of(fn)
    cases = [(512, 2048, False), (512, 1365, True), (4096, 11008, True), (768, 3072, False),
             (1, 1, False), (3, 5, True), (7, 2, False)]
    with seeded(seed):
        d, f = (int(v) for v in torch.randint(1, 300, (2,)))
    cases += [(d, f, False), (d, f, True)]
    for d_model, d_ff, swiglu in cases:
        what = trf("{who}({d_model}, {d_ff}, swiglu={swiglu})")
        got = call(fn, d_model, d_ff, swiglu=swiglu)   # -> int, as the docstring says
        if isinstance(got, bool) or not isinstance(got, int):
            fail(trf("{what} returned {describe(got)}, expected a Python int (as the docstring says)")
                 + (tr(": call .item() on a one-element tensor") if isinstance(got, torch.Tensor) else ""))
        want = _oracle_block(d_model, d_ff, swiglu)
        if got == want:
            continue
        d, f = d_model, d_ff
        if not swiglu:
            attn, ffn, norms = 4 * d * d + 4 * d, 2 * d * f + f + d, 4 * d
            named = {
                4 * d * d + 2 * d * f: tr("you left out the biases and the two LayerNorms"),
                4 * d * d + 2 * d * f + 4 * d: tr("you left out the biases of the linear layers: attention has "
                                               "4·d_model of them, the FFN d_ff + d_model"),
                attn + ffn: tr("you left out the two LayerNorms, with a weight and a bias of d_model each (4·d_model)"),
                attn + ffn + 2 * d: tr("each LayerNorm has a weight *and* a bias, 2·d_model per norm"),
                3 * d * d + 3 * d + ffn + norms: tr("attention has four d_model x d_model projections, W_Q, W_K, "
                                                 "W_V and the output W_O (4·d_model² + 4·d_model)"),
                attn + d * f + f + d + norms: tr("the FFN has two matrices, d_model x d_ff and d_ff x d_model"),
                attn + 3 * d * f + norms: tr("this is the ReLU FFN with biases (swiglu=False): two matrices "
                                          "plus biases, 2·d_model·d_ff + d_ff + d_model"),
            }
        else:
            attn, ffn, norms = 4 * d * d, 3 * d * f, 2 * d
            named = {
                attn + ffn: tr("you left out the two RMSNorms, with a weight of d_model each"),
                attn + 2 * d * f + norms: tr("SwiGLU has three matrices, w_1, w_3 (d_model x d_ff) and w_2 "
                                          "(d_ff x d_model): 3·d_model·d_ff"),
                attn + ffn + 2 * norms: tr("an RMSNorm has a weight but no bias: d_model per norm"),
                attn + ffn + norms + 4 * d + 2 * f + d: tr("the LLaMA-style block has no biases at all"),
                attn + ffn + norms + 4 * d: tr("the LLaMA-style block has no biases, in attention either"),
                3 * d * d + ffn + norms: tr("attention has four d_model x d_model projections, W_Q, W_K, W_V "
                                         "and the output W_O"),
            }
        named.pop(want, None)
        if got in named:
            fail(trf("{what} is {got:,}, expected {want:,}: {named[got]}"))
        fail(trf("{what} is {got:,}, expected {want:,}, the number of parameters of ")
             + (tr("nn.TransformerEncoderLayer(d_model, nhead, d_ff), counted with sum(p.numel()): attention "
                "4·d² + 4·d, FFN 2·d·d_ff + d_ff + d, two LayerNorms 4·d") if not swiglu else
                tr("a LLaMA block: attention 4·d², SwiGLU 3·d·d_ff, two RMSNorms 2·d, no biases")))
    passed(fn, len(cases))
