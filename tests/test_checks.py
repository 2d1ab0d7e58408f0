"""Every exercise check passes on the solution, fails on the stub, and fails on each wrong answer.

The cases live in tests/exercises/<chapter>.py (see tests/exercises/_case.py).
"""

import importlib
import pkgutil

import pytest

import exercises
from transformer_course.checks import CheckFailed, NotImplementedYet
from transformer_course.tools.notebooks import read, solution_notebooks


def _load():
    found = {}
    for info in pkgutil.iter_modules(exercises.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"exercises.{info.name}")
        for name, ex in mod.EXERCISES.items():
            found[(info.name, name)] = ex
    return found


EXERCISES = _load()
WRONG = [(key, i) for key, ex in EXERCISES.items() for i in range(len(ex.wrong))]


def _stub(name):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    stub.__name__ = stub.__qualname__ = name
    return stub


@pytest.mark.parametrize("key", EXERCISES, ids="/".join)
def test_solution_passes(key, capsys):
    ex = EXERCISES[key]
    ex.check(ex.solution)
    assert "\u2713" in capsys.readouterr().out, "a passing check should say so"


@pytest.mark.parametrize("key", EXERCISES, ids="/".join)
def test_stub_fails_clearly(key):
    with pytest.raises(NotImplementedYet, match="not implemented yet"):
        EXERCISES[key].check(_stub(key[1]))


@pytest.mark.parametrize("key,i", WRONG, ids=[f"{c}/{n}/{i}" for (c, n), i in WRONG])
def test_wrong_answer_fails(key, i):
    wrong, fragment = EXERCISES[key].wrong[i]
    with pytest.raises(CheckFailed) as err:
        EXERCISES[key].check(wrong)
    assert not isinstance(err.value, NotImplementedYet)
    assert fragment in str(err.value), f"message was: {err.value}"


def test_every_exercise_has_cases():
    """Each solution cell in solutions/ is an exercise with a check and two wrong answers."""
    chapters = {}
    for path in solution_notebooks():
        for cell in read(path).cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("solution"):
                chapters.setdefault(path.stem, set()).add(meta["grade_id"])
    for chapter, names in chapters.items():
        for name in names:
            assert (chapter, name) in EXERCISES, f"{chapter}: exercise {name} has no entry in tests/exercises/{chapter}.py"
            assert len(EXERCISES[chapter, name].wrong) >= 2, f"{chapter}/{name}: fewer than two wrong answers"
