"""What a check says when the learner's code crashes: the inputs by what they are, and the line."""

import textwrap

import pytest
import torch
from torch import nn

from transformer_course.checks import CheckFailed, call, describe


def _learners_module(tmp_path, source: str) -> dict:
    """Functions defined in a file of the learner's own, as a script or an exported module has them."""
    path = tmp_path / "my_answers.py"
    path.write_text(textwrap.dedent(source))
    ns = {"__name__": "my_answers"}
    exec(compile(path.read_text(), str(path), "exec"), ns)
    return ns


def test_crash_names_the_learners_line(tmp_path):
    ns = _learners_module(tmp_path, """
        import torch

        def pick(x, i):
            first = x[0]
            return first[i + 10]
    """)
    with pytest.raises(CheckFailed) as err:
        call(ns["pick"], torch.zeros(3, 4), 2)
    msg = str(err.value)
    assert msg.startswith("pick(tensor of shape [3, 4] (float32), 2) raised IndexError")
    assert f"at {tmp_path / 'my_answers.py'}, line 6:  return first[i + 10]" in msg, msg


def test_crash_inside_torch_points_at_the_learners_call(tmp_path):
    """The error is raised inside PyTorch; the line shown is the learner's, not PyTorch's."""
    ns = _learners_module(tmp_path, """
        import torch.nn.functional as F

        def project(x, w):
            return F.linear(x, w)
    """)
    with pytest.raises(CheckFailed) as err:
        call(ns["project"], torch.zeros(2, 3), torch.zeros(4, 5))
    msg = str(err.value)
    assert "raised RuntimeError" in msg and "line 5:  return F.linear(x, w)" in msg, msg


def test_crash_in_a_notebook_cell_names_the_cell():
    """In Jupyter the line is named as IPython names it, "Cell In[n], line k"."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        result = shell.run_cell("def halve(x):\n    return x.reshape(3, -1) / 2\n", store_history=True)
        assert result.success
        n = result.execution_count
        with pytest.raises(CheckFailed) as err:
            call(shell.user_ns["halve"], torch.zeros(4))
    finally:
        InteractiveShell.clear_instance()
    msg = str(err.value)
    assert f"at Cell In[{n}], line 2:  return x.reshape(3, -1) / 2" in msg, msg


def test_no_learners_frame_no_location():
    """A crash entirely inside PyTorch (the learner passed torch's own function) shows no line."""
    with pytest.raises(CheckFailed) as err:
        call(torch.matmul, torch.zeros(2, 3), torch.zeros(4, 5))
    assert "\n  at " not in str(err.value)
    assert "matmul(tensor of shape [2, 3] (float32), tensor of shape [4, 5] (float32))" in str(err.value)


class PrefixHashLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)

    def forward(self, ids):
        return self.emb(ids)[99]


def test_arguments_are_described_by_what_they_are():
    assert describe(PrefixHashLM()) == "PrefixHashLM (nn.Module, 40 parameters)"
    assert describe(torch.ones(2, 3, dtype=torch.bool)) == "tensor of shape [2, 3] (bool)"
    assert describe(describe) == "function describe" and describe(nn.Linear) == "class Linear"
    assert describe([torch.zeros(2), 3]) == "[tensor of shape [2] (float32), 3]"
    assert describe(list(range(10))) == "list of length 10"
    assert describe(object()) == "a object object"
    assert describe(0.5) == "0.5" and describe("abc") == "'abc'"


def test_model_argument_in_a_crash_message():
    def evaluate(model, ids):
        return model(ids)

    with pytest.raises(CheckFailed) as err:
        call(evaluate, PrefixHashLM(), torch.zeros(2, 3, dtype=torch.long))
    msg = str(err.value)
    assert "evaluate(PrefixHashLM (nn.Module, 40 parameters), tensor of shape [2, 3] (int64))" in msg
    assert "0x" not in msg
    assert "line" in msg and "return self.emb(ids)[99]" in msg, msg
