"""A chapter never depends on your answer to an earlier one: what later chapters load,
`load_or_train("dates" | "chars", device)`, is trained by the package's code, and chapter 08's
notebook never writes the course's checkpoints. Fast: tiny recipes, no real training.
"""

import contextlib
import io
import math
import threading
import time
from pathlib import Path

import pytest
import torch

from transformer_course import training
from transformer_course.tools.notebooks import EXPORT_RE, SOLUTIONS, read
from transformer_course.transformer import TransformerConfig

CHAPTER_08 = SOLUTIONS / "08_training.ipynb"


def _code_cells(exported: bool) -> list[str]:
    cells = [c.source for c in read(CHAPTER_08).cells if c.cell_type == "code"]
    return [s for s in cells if bool(EXPORT_RE.match(s.split("\n", 1)[0])) == exported]


def _tiny_dates_recipe():
    tok = training.CharTokenizer(training.DATE_CHARS)
    cfg = TransformerConfig(tok.vocab_size, d_model=16, n_heads=2, d_ff=32, n_layers=1, max_len=64)
    settings = training.TrainSettings(steps=4, batch_size=4, max_lr=1e-2, min_lr=1e-3,
                                      warmup_steps=2, label_smoothing=0.1)
    return tok, cfg, settings


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """The package's dates recipe shrunk to 4 steps of a tiny model, its cache in tmp_path."""
    monkeypatch.setenv("TRANSFORMER_COURSE_CACHE", str(tmp_path))
    monkeypatch.setattr(training, "dates_recipe", _tiny_dates_recipe)
    monkeypatch.setitem(training.RECIPES, "dates", (_tiny_dates_recipe, training.train_dates))
    return tmp_path


def _notebook_namespace(lr_at):
    """Chapter 08's exported cells run as a learner's notebook runs them (in __main__), with
    the learner's own, wrong lr_at in place of the solution's."""
    ns = {"__name__": "__main__"}
    for source in _code_cells(exported=True):
        exec(compile(source, str(CHAPTER_08), "exec"), ns)
    ns["lr_at"] = lr_at
    return ns


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_wrong_lr_at_in_the_notebook_cannot_change_what_load_or_train_returns(tiny):
    calls = []

    def lr_at(step, warmup_steps, max_steps, max_lr, min_lr):   # wrong: always the peak
        calls.append(step)
        return max_lr

    ns = _notebook_namespace(lr_at)
    # the notebook's own training really uses the wrong lr_at ...
    _, _, history = ns["train_dates"]("cpu", n_steps=2, progress=False)
    assert calls and history["lr"] == [1e-2, 1e-2], "the notebook should train with its own lr_at"
    calls.clear()
    # ... but its load_or_train trains with the package's code, and saves that
    model, _ = ns["load_or_train"]("dates", "cpu", progress=False)
    assert calls == [], "load_or_train called the notebook's lr_at"
    course, _, history = training.train_dates("cpu", progress=False)
    assert history["lr"][0] == 0.0, "the package's schedule starts its warmup at 0"
    assert _same_weights(model, course), "load_or_train returned another model than the course's"
    loaded = training.load_checkpoint(training.checkpoint_path("dates", "cpu"), "cpu")
    assert loaded is not None and _same_weights(loaded[0], course), "the saved checkpoint differs"


def test_chapter_08_never_writes_the_course_checkpoints(tiny):
    """Run every non-exported cell of chapter 08 that saves or loads a checkpoint, with tiny
    models in place of the trained ones: the course's checkpoint files must stay absent."""
    cells = [s for s in _code_cells(exported=False)
             if any(f in s for f in ("save_checkpoint", "load_checkpoint", "load_or_train",
                                     "checkpoint_path"))]
    assert cells, "chapter 08 should save the learner's models (found no such cell)"
    torch.manual_seed(0)
    tok, cfg, _ = _tiny_dates_recipe()
    ns = dict(vars(training))
    ns.update(dates_model=training.EncoderDecoder(cfg).eval(), date_tok=tok,
              char_model=training.DecoderOnly(cfg).eval(), char_tok=tok, device="cpu",
              torch=torch, math=math, print=lambda *a, **k: None)
    for source in cells:
        exec(compile(source, str(CHAPTER_08), "exec"), ns)
    written = sorted(p.relative_to(tiny).as_posix() for p in tiny.rglob("*.pt"))
    assert written, "the learner's models were saved nowhere"
    for device in ("cpu", "cuda"):
        for name in ("dates",):
            course = training.checkpoint_path(name, device)
            assert not course.exists(), f"chapter 08 wrote the course's checkpoint {course.name}"
    assert all(p.startswith("yours/") for p in written), f"unexpected files: {written}"


def test_the_checkpoint_key_holds_device_type_and_precision(tiny):
    cpu, cuda = (training.checkpoint_path("dates", d) for d in ("cpu", "cuda"))
    assert cpu != cuda and cpu.name.startswith("dates-cpu-") and cuda.name.startswith("dates-cuda-")
    assert training.precision("cpu") == "fp32" and training.precision("cuda") == "bf16-autocast"
    assert training.checkpoint_path("dates", "cpu") == cpu, "the key must be deterministic"
    # a changed recipe is another file
    def other():
        tok, cfg, settings = _tiny_dates_recipe()
        settings.steps = 5
        return tok, cfg, settings
    training.RECIPES["dates"] = (other, training.train_dates)
    assert training.checkpoint_path("dates", "cpu") != cpu


def test_load_or_train_loads_without_training_and_retrains_a_broken_file(tiny, monkeypatch):
    model, _, _ = training.train_dates("cpu", progress=False)
    path = training.checkpoint_path("dates", "cpu")
    training.save_checkpoint(path, model, training.CharTokenizer(training.DATE_CHARS))

    def no_training(*args, **kwargs):
        raise AssertionError("load_or_train trained although a checkpoint exists")

    monkeypatch.setitem(training.RECIPES, "dates", (_tiny_dates_recipe, no_training))
    loaded, tok = training.load_or_train("dates", "cpu")
    assert _same_weights(loaded, model) and not loaded.training
    assert isinstance(loaded, training.EncoderDecoder) and tok.chars == training.CharTokenizer(
        training.DATE_CHARS).chars
    path.write_bytes(b"truncated")                  # a broken file is retrained and replaced
    monkeypatch.setitem(training.RECIPES, "dates", (_tiny_dates_recipe, training.train_dates))
    again, _ = training.load_or_train("dates", "cpu", progress=False)
    assert _same_weights(again, model)
    assert training.load_checkpoint(path) is not None


def test_callers_that_miss_the_checkpoint_at_once_train_it_once(tiny, monkeypatch):
    """Two notebooks (or two test workers) that need a missing model at the same time: one
    trains, the others wait for its lock and load what it saved."""
    trained = []

    def slow_training(device, progress=True):
        trained.append(device)
        time.sleep(0.5)                 # the others miss the file meanwhile
        return training.train_dates(device, progress=False)

    monkeypatch.setitem(training.RECIPES, "dates", (_tiny_dates_recipe, slow_training))
    got = [None] * 3

    def caller(i):
        got[i] = training.load_or_train("dates", "cpu", progress=False)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(g is not None for g in got), "a caller failed or hung"
    assert len(trained) == 1, f"trained {len(trained)} times instead of once"
    assert all(_same_weights(g[0], got[0][0]) for g in got)


def _chapter_18_payloads(monkeypatch, tmp_path) -> set:
    """The names of the files chapter 18 loads through training.cached (its tokenized corpus,
    main model and draft), found in the package's checkpoints/ with nothing trained: the
    training functions raise if called."""
    from transformer_course import lm

    monkeypatch.setenv("TRANSFORMER_COURSE_CACHE", str(tmp_path))
    asked, real = set(), training.shipped

    def shipped(path):
        asked.add(Path(path).name)
        return real(path)

    def no_training(*args, **kwargs):
        raise AssertionError("a chapter 18 payload is not shipped: remake it (CONTRIBUTING.md)")

    monkeypatch.setattr(training, "shipped", shipped)
    monkeypatch.setattr(lm, "train", no_training)
    monkeypatch.setattr(lm, "train_bpe", no_training)
    lm.lm_data(lm.MAIN.vocab_size)
    for load in (lm.load_main, lm.load_draft):
        model, history = load(progress=False)
        assert history["val_bpb"][-1] < history["val_bpb"][0]
    return asked


def test_the_package_ships_the_current_cpu_checkpoints(monkeypatch, tmp_path):
    """The shipped checkpoints are the current recipes' (a changed recipe must ship its new
    file: the old name would never be asked for again), and they load."""
    folder = training.shipped("any.pt").parent
    want = {training.checkpoint_path(name, "cpu").name for name in training.RECIPES}
    shipped = {p.name for p in folder.glob("*.pt")}
    lm_payloads = _chapter_18_payloads(monkeypatch, tmp_path)
    assert lm_payloads <= shipped, f"not shipped: {sorted(lm_payloads - shipped)}"
    assert {n for n in shipped if n.startswith(tuple(f"{r}-" for r in training.RECIPES))} == want, (
        "remake them: TRANSFORMER_COURSE_CACHE=$(mktemp -d) and load_or_train(name, 'cpu') for each "
        "recipe, then copy the files into transformer_course/checkpoints/ (CONTRIBUTING.md)")
    for name in want:
        model, tok = training.load_checkpoint(folder / name)
        assert model.cfg.vocab_size == tok.vocab_size
    for name in shipped - want:  # what chapters keep with training.cached: the suite needs them
        assert isinstance(torch.load(folder / name, weights_only=True), dict), name


def test_cached_makes_once_finds_shipped_copies_and_never_trains_under_test(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORMER_COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TRANSFORMER_COURSE_SHIPPED_ONLY", raising=False)
    made = []

    def make():
        made.append(1)
        return {"state_dict": {"w": torch.ones(2) * len(made)}, "history": [1.0, 0.5]}

    a, b = (training.cached("toy", {"steps": 3}, make) for _ in range(2))
    assert len(made) == 1 and torch.equal(a["state_dict"]["w"], b["state_dict"]["w"])
    assert b["history"] == [1.0, 0.5]
    training.cached("toy", {"steps": 4}, make)              # another recipe: another file
    assert len(made) == 2
    # the package's copy is found by its name, in a cache that never saw it
    package = tmp_path / "checkpoints"
    package.mkdir()
    for p in (tmp_path / "cache").glob("toy-cpu-*.pt"):
        p.rename(package / p.name)
    monkeypatch.setattr(training, "shipped", lambda p: package / p.name)
    assert torch.equal(training.cached("toy", {"steps": 3}, make)["state_dict"]["w"], a["state_dict"]["w"])
    assert len(made) == 2
    # under test, what would have to be made is an error that says what to ship
    monkeypatch.setenv("TRANSFORMER_COURSE_SHIPPED_ONLY", "1")
    with pytest.raises(FileNotFoundError, match="not shipped"):
        training.cached("toy", {"steps": 5}, make)
    assert len(made) == 2


def _chapter_08_shell():
    """Chapter 08's cells as a learner's kernel runs them, up to the one that defines
    train_chars: the setup, the exported code, `trained` and the small demos (no training)."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    for cell in read(CHAPTER_08).cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or "colab-setup" in tags:
            continue
        if "skip-when-grading" in tags and "def trained(" not in cell.source:
            continue
        result = shell.run_cell(cell.source, silent=True)
        assert result.success, (cell.source[:200], result.error_in_exec or result.error_before_exec)
        if "def train_chars(" in cell.source:
            assert "trained" in shell.user_ns, "chapter 08 defines trained() after train_chars"
            return shell
    raise AssertionError("chapter 08 defines no train_chars()")


def test_a_run_is_kept_under_the_code_it_ran_and_only_that(tmp_path, monkeypatch):
    """Chapter 08's trained(train_fn, device) keys a run by the source of the notebook's cells
    that train_fn reaches: another lr_at is another run; a new unrelated function is not."""
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("TRANSFORMER_COURSE_CACHE", str(tmp_path))
    monkeypatch.delenv("TRANSFORMER_COURSE_SHIPPED_ONLY", raising=False)
    shell = _chapter_08_shell()
    try:
        ns = shell.user_ns
        code = ns["notebook_code"]
        dates = code(ns["train_dates"])
        for reached in ("def lr_at(", "def label_smoothed_cross_entropy(", "def train(",
                        "def make_dates(", "class CharTokenizer", "def dates_recipe("):
            assert reached in dates, f"the dates run's key misses {reached}"
        for not_reached in ("def char_corpus(", "def clip_grad_norm(", "def default_embedding_init("):
            assert not_reached not in dates, f"the dates run's key holds {not_reached}"
        assert "def char_corpus(" in code(ns["train_chars"])
        shell.run_cell("def unrelated():\n    return 1")
        assert code(ns["train_dates"]) == dates, "a function the run never calls changed its key"
        shell.run_cell("_right = lr_at\n\ndef lr_at(*args):\n    return _right(*args)")
        assert code(ns["train_dates"]) != dates, "a new lr_at kept the old run's key"

        # a run is made once, then loaded: the same weights, history and tokenizer
        shell.run_cell(
            "def tiny_run(device):\n"
            "    tok, cfg, _ = dates_recipe()\n"
            "    torch.manual_seed(0)\n"
            "    model = EncoderDecoder(TransformerConfig(tok.vocab_size, d_model=8, n_heads=2,\n"
            "                                             d_ff=16, n_layers=1, max_len=16))\n"
            "    return model.eval(), tok, {'loss': [3.0, 2.0], 'lr': [0.0, 1e-3]}\n")
        runs = []
        for _ in range(2):
            with capture() as out:
                runs.append(ns["trained"](ns["tiny_run"], torch.device("cpu")))
            runs[-1] += (out.getvalue(),)
        (first, tok, history, said), (again, tok2, history2, said2) = runs
        assert said.startswith("trained ") and said2.startswith("loaded the kept run of this code"), (said, said2)
        assert _same_weights(first, again) and not again.training
        assert history == history2 == {"loss": [3.0, 2.0], "lr": [0.0, 1e-3]} and tok.chars == tok2.chars
        assert len(list(tmp_path.glob("08_tiny_run-cpu-*.pt"))) == 1

        # run_once (chapter 05's grids): computed once per code and arguments, then loaded
        shell.run_cell("from transformer_course.tools.once import run_once\ncalls = []\n\n"
                       "def grid(n):\n    calls.append(n)\n    return {(n, True): ([float(n)], torch.ones(n))}")
        got, said = [], []
        for n in (2, 2, 3):
            with capture() as out:
                got.append(shell.ev(f"run_once('t', grid, {n})"))
            said.append(out.getvalue())
        assert ns["calls"] == [2, 3] and torch.equal(got[1][2, True][1], torch.ones(2)) and got[2][3, True][0] == [3.0]
        assert [s[:s.index(" s of CPU time (")].rstrip("0123456789.") for s in said] == [
            "t: ran in ", "t: loaded the kept run, which took ", "t: ran in "], said
        shell.run_cell("def grid(n):\n    calls.append(-n)\n    return {}")
        assert shell.ev("run_once('t', grid, 2)") == {} and ns["calls"] == [2, 3, -2], "new code, same key"
    finally:
        InteractiveShell.clear_instance()


@contextlib.contextmanager
def capture():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield out
