"""Every exercise's cases through the bridge: the check runs in one place, the learner's code in
another, and only plain data passes between them (transformer_course.tools.bridge). The grader
scores this way, so each check must give the same verdict and message through it as in one process:
the solution passes, the stub is "not implemented yet", every wrong answer fails with its message.

Both ends run in this process here (the sandbox's in a thread: `loopback`); tests/test_grading.py
runs the real sandbox.
"""

import contextlib
import io

import pytest
import torch

from test_checks import EXERCISES, _stub
from transformer_course.checks import CheckFailed, NotImplementedYet
from transformer_course.tools.bridge import BridgeError, Mirror, loopback


def through_bridge(name, obj):
    torch.manual_seed(0)  # checks that tell a global-generator draw from the learner's generator need a fixed start
    return loopback({name: obj}).request("get", name)


@pytest.mark.parametrize("key", EXERCISES, ids="/".join)
def test_every_case_through_the_bridge(key):
    ex, name = EXERCISES[key], key[1]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        ex.check(through_bridge(name, ex.solution))
    assert "\u2713" in out.getvalue()
    with pytest.raises(NotImplementedYet):
        ex.check(through_bridge(name, _stub(name)))
    for wrong, fragment in ex.wrong:
        with pytest.raises(CheckFailed) as err, contextlib.redirect_stdout(io.StringIO()):
            ex.check(through_bridge(name, wrong))
        assert not isinstance(err.value, NotImplementedYet)
        assert fragment in str(err.value), f"message was: {err.value}"


def test_what_crosses_the_boundary():
    """Values come back as values; in-place changes, gradients and the random state come back too."""
    def learner(x, w):
        x.mul_(2)                       # changes its argument in place
        return (x * w).sum(), torch.randn(2), {"n": 3, "t": (1.5, None)}

    fn = through_bridge("learner", learner)
    torch.manual_seed(0)
    x, w = torch.ones(3), torch.full((3,), 2.0, requires_grad=True)
    s, r, d = fn(x, w)
    assert torch.equal(x, torch.full((3,), 2.0)) and d == {"n": 3, "t": (1.5, None)}
    torch.manual_seed(0)
    assert torch.equal(r, torch.randn(2))   # drawn from the grader's generator state
    assert torch.rand(1).item() == (torch.manual_seed(0), torch.randn(2), torch.rand(1))[2].item()
    s.backward()
    assert torch.equal(w.grad, torch.full((3,), 2.0))


def test_attribute_reads_see_every_change():
    """A check's repeated reads are answered without a round trip, until anything may have changed."""
    m = through_bridge("m", torch.nn.Linear(2, 3))
    assert m.weight.dtype == torch.float32 and m.weight is m.weight   # the second read: no round trip
    m.double()                                   # a call: the sandbox's module changed
    assert m.weight.dtype == torch.float64
    m.tag = "set"                                # setattr
    assert m.tag == "set"
    with torch.no_grad():
        m.bias.zero_()                           # in place on a weight, forwarded to the sandbox
    assert torch.equal(m.bias, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(m(torch.ones(1, 2, dtype=torch.float64)), m.weight.sum(1)[None])


def test_objects_stay_in_the_sandbox():
    """Modules are proxies that look like modules; their weights are tensors whose in-place changes
    are made in the sandbox; exceptions keep their type and the learner's line."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x)

    Proxy = through_bridge("Net", Net)
    net = Proxy()
    assert isinstance(net, torch.nn.Module) and isinstance(net.lin, torch.nn.Linear)
    assert isinstance(Proxy, type) and issubclass(Proxy, torch.nn.Module)
    with torch.no_grad():
        net.lin.weight.copy_(torch.eye(2))
        net.lin.bias.zero_()
    assert torch.equal(net(torch.tensor([[1.0, 2.0]])), torch.tensor([[1.0, 2.0]]))
    assert type(net.lin.weight) is Mirror
    net(torch.ones(1, 2)).sum().backward()
    assert torch.equal(net.lin.weight.grad, torch.ones(2, 2))   # the parameters' gradients, in the sandbox
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        net(torch.ones(1, 3))


def test_the_sandbox_sends_only_plain_data():
    """A message that names anything but plain data, or a tensor whose bytes do not match, is refused."""
    from transformer_course.tools.bridge import _pack, _recv, decode
    grader = loopback({})
    with pytest.raises(BridgeError):
        decode({"t": "pickle", "v": "cos\nsystem\n"}, [], grader)
    with pytest.raises(BridgeError):
        decode({"t": "tensor", "dtype": "float32", "shape": [4], "b": 0, "rg": False}, [b"\0" * 3], grader)
    with pytest.raises(BridgeError):
        decode({"t": "local", "id": 12345}, [], grader)
    assert _pack and _recv
