"""Generated from solutions/08_training.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

# Training: the tokenizer and data of chapter 08's two tasks, the loss, the schedule,
# the training loop, and the checkpoints that later chapters load.
import contextlib
import datetime
import hashlib
import importlib.resources
import json
import math
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from transformer_course.tokens import load_corpus
from transformer_course.transformer import (
    DecoderOnly,
    EncoderDecoder,
    TransformerConfig,
    shift_right,
)

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen"
    " fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "- - twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINAL = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
MONTHS = (
    "january february march april may june july august september october november "
    "december"
).split()
FIRST_DAY, LAST_DAY = datetime.date(1900, 1, 1), datetime.date(2099, 12, 31)


def number_words(n: int) -> str:
    """0..99 in words: 7 -> 'seven', 42 -> 'forty-two'."""
    if not 0 <= n < 100:
        raise ValueError(f"n must lie in 0..99, got {n}")
    return (
        _ONES[n] if n < 20 else _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    )


def ordinal_words(n: int) -> str:
    """1..99 as an ordinal: 3 -> 'third', 20 -> 'twentieth', 23 -> 'twenty-third'."""
    head, _, last = number_words(n).rpartition("-")
    last = _ORDINAL.get(last) or (
        last[:-1] + "ieth" if last.endswith("y") else last + "th"
    )
    return f"{head}-{last}" if head else last


def year_words(year: int) -> str:
    """1994 -> 'nineteen ninety-four', 1905 -> 'nineteen oh five', 2007 -> 'two thousand
    and seven'."""
    century, rest = divmod(year, 100)
    if year == 2000:
        return "two thousand"
    if 2000 < year < 2010:
        return f"two thousand and {_ONES[rest]}"
    if rest == 0:
        return f"{number_words(century)} hundred"
    if rest < 10:
        return f"{number_words(century)} oh {_ONES[rest]}"
    return f"{number_words(century)} {number_words(rest)}"


def date_in_words(day: datetime.date, style: int) -> str:
    """A date in words, in one of three styles: 0 'twenty-third of march nineteen
    ninety-four', 1 'march twenty-third, nineteen ninety-four', 2 'twenty-three march
    nineteen ninety-four'."""
    month, year = MONTHS[day.month - 1], year_words(day.year)
    if style == 0:
        return f"{ordinal_words(day.day)} of {month} {year}"
    if style == 1:
        return f"{month} {ordinal_words(day.day)}, {year}"
    if style == 2:
        return f"{number_words(day.day)} {month} {year}"
    raise ValueError(f"style must be 0, 1 or 2, got {style!r}")


def is_held_out(day: datetime.date) -> bool:
    """Every tenth day of the calendar is kept out of training: the held-out (test)
    dates."""
    return day.toordinal() % 10 == 0


def make_dates(n: int, seed: int = 0, split: str = "test") -> list[tuple[str, str]]:
    """n random (words, iso) pairs, e.g. ('march twenty-third, nineteen ninety-four',
    '1994-03-23'), dates from 1900 to 2099. split="test" draws only held-out dates
    (never trained on), "train" only the others. The same (n, seed, split) gives the
    same pairs."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng, pairs = random.Random(seed), []
    while len(pairs) < n:
        day = datetime.date.fromordinal(
            rng.randint(FIRST_DAY.toordinal(), LAST_DAY.toordinal())
        )
        if is_held_out(day) == (split == "test"):
            pairs.append((date_in_words(day, rng.randrange(3)), day.isoformat()))
    return pairs


class CharTokenizer:
    """Characters <-> ids. Ids 0, 1, 2 are the special tokens <pad>, <bos>, <eos>; then
    one id per character of `chars`, in sorted order. encode(text) adds no special
    tokens; decode(ids) drops them."""

    specials = ("<pad>", "<bos>", "<eos>")
    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.vocab_size = len(self.specials) + len(self.chars)
        self._ids = {c: i + len(self.specials) for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} is not in this tokenizer's vocabulary"
            ) from None

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        n = len(self.specials)
        return "".join(self.chars[i - n] for i in ids if i >= n)

    def __repr__(self) -> str:
        return (
            f"CharTokenizer({len(self.chars)} characters + {len(self.specials)}"
            f" specials = {self.vocab_size} ids)"
        )


DATE_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 -,"


def dates_batch(pairs, tok: CharTokenizer, device=None):
    """Tensors for a list of (words, iso) pairs: src [B, S] (padded with pad_id),
    src_mask [B, S] (True at real characters) and labels [B, T] = the ISO characters
    followed by eos."""
    src = [tok.encode(words) for words, _ in pairs]
    S = max(map(len, src))
    src = torch.tensor([s + [tok.pad_id] * (S - len(s)) for s in src], device=device)
    labels = torch.tensor(
        [tok.encode(iso) + [tok.eos_id] for _, iso in pairs], device=device
    )
    return src, src != tok.pad_id, labels


def label_smoothed_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    smoothing: float,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean over the positions whose target is not ignore_index of -sum_v q_v log
    softmax(logits)_v, where q = (1 - smoothing) * onehot(target) + smoothing / V (V
    = logits.shape[-1]).

    logits [..., V] (float), targets [...] (integer class ids or ignore_index) -> a
    scalar tensor. smoothing = 0 gives the plain cross-entropy; as
    F.cross_entropy(..., label_smoothing=smoothing)."""
    if (
        not isinstance(logits, torch.Tensor)
        or logits.dim() < 1
        or not logits.is_floating_point()
    ):
        raise ValueError("logits must be a floating-point tensor [..., V]")
    if (
        not isinstance(targets, torch.Tensor)
        or targets.shape != logits.shape[:-1]
        or targets.is_floating_point()
    ):
        got = (
            f"{targets.dtype} {list(targets.shape)}"
            if isinstance(targets, torch.Tensor)
            else type(targets).__name__
        )
        raise ValueError(
            f"targets must be an integer tensor of shape {list(logits.shape[:-1])} "
            f"(logits without the last dimension), got {got}"
        )
    if not 0 <= smoothing <= 1:
        raise ValueError(f"smoothing must lie in [0, 1], got {smoothing}")
    log_p = torch.log_softmax(logits.float(), dim=-1)  # [..., V], stable
    keep = targets != ignore_index  # the positions that count
    safe = targets.masked_fill(~keep, 0)  # any valid id where ignored
    nll = -log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # -log p_y
    uniform = -log_p.mean(dim=-1)  # (1/V) sum_v -log p_v
    loss = (1 - smoothing) * nll + smoothing * uniform
    return loss[keep].mean()


def lr_at(
    step: int, warmup_steps: int, max_steps: int, max_lr: float, min_lr: float
) -> float:
    """The learning rate of step `step` (counted from 0): linear warmup from 0 (at step
    0) to max_lr (at step warmup_steps), then a half-cosine decay to min_lr (reached
    at step max_steps), then min_lr."""
    if step < 0 or warmup_steps < 0 or max_steps <= warmup_steps:
        raise ValueError(
            f"need step >= 0 and 0 <= warmup_steps < max_steps, got step={step}, "
            f"warmup_steps={warmup_steps}, max_steps={max_steps}"
        )
    if not 0 <= min_lr <= max_lr:
        raise ValueError(
            f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}"
        )
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step >= max_steps:
        return min_lr
    # 0 -> 1 over the decay
    progress = (step - warmup_steps) / (
        max_steps - warmup_steps
    )
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def precision(device) -> str:
    """The arithmetic `train` uses on device: bf16 autocast on CUDA, else fp32."""
    return "bf16-autocast" if torch.device(device).type == "cuda" else "fp32"


@dataclass
class TrainSettings:
    steps: int  # optimizer steps; the schedule decays to min_lr at the last one
    batch_size: int
    max_lr: float
    min_lr: float
    warmup_steps: int
    clip_norm: float | None = 1.0  # None: no clipping
    label_smoothing: float = 0.0
    weight_decay: float = 0.01
    seed: int = 0


def train(
    model: nn.Module,
    get_batch,
    loss_fn,
    settings: TrainSettings,
    device,
    n_steps: int | None = None,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Train model with AdamW under the warmup-cosine schedule of `settings`.

    get_batch(step) -> a batch (on device); loss_fn(model, batch) -> scalar loss.
    n_steps stops the run early (the schedule is still the one of settings.steps).
    Autocast to bf16 on CUDA. Returns the history {"loss", "lr", "grad_norm"}, one
    entry per step; the model is left in eval mode."""
    device = torch.device(device)
    model.to(device).train()
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=settings.max_lr,
        betas=(0.9, 0.98),
        weight_decay=settings.weight_decay,
    )
    history = {"loss": [], "lr": [], "grad_norm": []}
    n_steps = settings.steps if n_steps is None else n_steps
    bar = tqdm(range(n_steps), disable=not progress, desc="training", leave=False)
    for step in bar:
        lr = lr_at(
            step,
            settings.warmup_steps,
            settings.steps,
            settings.max_lr,
            settings.min_lr,
        )
        for group in opt.param_groups:
            group["lr"] = lr
        batch = get_batch(step)
        with torch.autocast(
            device.type, torch.bfloat16, enabled=precision(device) != "fp32"
        ):
            loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), settings.clip_norm or math.inf
        )
        opt.step()
        history["loss"].append(loss.item())
        history["lr"].append(lr)
        history["grad_norm"].append(norm.item())
        if step % 10 == 0 or step == n_steps - 1:
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", lr=f"{lr:.1e}")
    model.eval()
    return history


def dates_recipe() -> tuple[CharTokenizer, TransformerConfig, TrainSettings]:
    """The tokenizer, model configuration and training settings of chapter 08's dates
    run."""
    tok = CharTokenizer(DATE_CHARS)
    cfg = TransformerConfig(
        tok.vocab_size, d_model=64, n_heads=4, d_ff=256, n_layers=2, max_len=64
    )
    settings = TrainSettings(
        steps=250,
        batch_size=64,
        max_lr=1e-2,
        min_lr=1e-3,
        warmup_steps=30,
        clip_norm=1.0,
        label_smoothing=0.1,
    )
    return tok, cfg, settings


def dates_loss(
    model: EncoderDecoder, batch, smoothing: float, bos_id: int = CharTokenizer.bos_id
) -> torch.Tensor:
    """Teacher forcing: the decoder reads shift_right(labels) and is scored on labels.
    """
    src, src_mask, labels = batch
    logits = model(src, shift_right(labels, bos_id), src_mask)
    return label_smoothed_cross_entropy(logits, labels, smoothing)


def dates_batches(tok: CharTokenizer, settings: TrainSettings, device):
    """get_batch(step) for the dates run: batch_size fresh training pairs, a different
    seed per step."""

    def get_batch(step: int):
        pairs = make_dates(
            settings.batch_size, seed=settings.seed * 1_000_003 + step, split="train"
        )
        return dates_batch(pairs, tok, device)

    return get_batch


def train_dates(
    device,
    settings: TrainSettings | None = None,
    n_steps: int | None = None,
    progress: bool = True,
):
    """Build and train the dates model as chapter 08 does -> (model, tokenizer,
    history)."""
    tok, cfg, default = dates_recipe()
    settings = settings or default
    torch.manual_seed(settings.seed)
    model = EncoderDecoder(cfg)
    history = train(
        model,
        dates_batches(tok, settings, device),
        lambda m, b: dates_loss(m, b, settings.label_smoothing, tok.bos_id),
        settings,
        device,
        n_steps=n_steps,
        progress=progress,
    )
    return model, tok, history


@torch.no_grad()
def greedy_translate(
    model: EncoderDecoder, tok: CharTokenizer, sentences: list[str], max_len: int = 12
) -> list[str]:
    """Greedy decoding: the encoder runs once, then the decoder appends its most likely
    token max_len times (everything after the first eos is dropped)."""
    device = next(model.parameters()).device
    src, src_mask, _ = dates_batch([(s, "") for s in sentences], tok, device)
    memory = model.encode(src, src_mask)
    out = torch.full((len(sentences), 1), tok.bos_id, device=device)
    for _ in range(max_len):
        next_id = model.decode(out, memory, src_mask)[:, -1].argmax(-1)
        out = torch.cat([out, next_id[:, None]], dim=1)
    texts = []
    for row in out[:, 1:].tolist():
        texts.append(
            tok.decode(row[: row.index(tok.eos_id)] if tok.eos_id in row else row)
        )
    return texts


def exact_match(model: EncoderDecoder, tok: CharTokenizer, pairs) -> float:
    """The fraction of (words, iso) pairs that greedy_translate gets exactly right."""
    got = greedy_translate(model, tok, [w for w, _ in pairs])
    return sum(g == iso for g, (_, iso) in zip(got, pairs)) / len(pairs)


def char_corpus() -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    """The tokenizer and the ids of load_corpus(): (tok, train_ids, val_ids), the last
    10% for validation."""
    text = load_corpus()
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text))
    split = int(0.9 * len(ids))
    return tok, ids[:split], ids[split:]


def chars_recipe() -> tuple[CharTokenizer, TransformerConfig, TrainSettings]:
    """The tokenizer, model configuration and training settings of chapter 08's
    character model. The model reads windows of cfg.max_len characters."""
    tok, _, _ = char_corpus()
    cfg = TransformerConfig(
        tok.vocab_size, d_model=128, n_heads=4, d_ff=512, n_layers=2, max_len=64
    )
    settings = TrainSettings(
        steps=600,
        batch_size=32,
        max_lr=6e-3,
        min_lr=6e-4,
        warmup_steps=60,
        clip_norm=1.0,
        label_smoothing=0.0,
    )
    return tok, cfg, settings


def char_windows(ids: torch.Tensor, starts: torch.Tensor, context: int, device=None):
    """Inputs ids[s : s + context] and labels ids[s + 1 : s + context + 1] for each
    start s: [B, context] each."""
    windows = torch.stack([ids[s : s + context + 1] for s in starts.tolist()]).to(
        device
    )
    return windows[:, :-1], windows[:, 1:]


def chars_loss(model: DecoderOnly, batch, smoothing: float = 0.0) -> torch.Tensor:
    x, y = batch
    return label_smoothed_cross_entropy(model(x), y, smoothing)


@torch.no_grad()
def evaluate_chars(model: DecoderOnly, ids: torch.Tensor, n_windows: int = 64) -> float:
    """Mean cross-entropy (nats per character) on n_windows evenly spaced windows of
    ids."""
    device, context = next(model.parameters()).device, model.cfg.max_len
    starts = torch.linspace(0, len(ids) - context - 1, n_windows).long()
    x, y = char_windows(ids, starts, context, device)
    return nn.functional.cross_entropy(
        model(x).flatten(0, 1).float(), y.flatten()
    ).item()


def train_chars(
    device,
    settings: TrainSettings | None = None,
    n_steps: int | None = None,
    progress: bool = True,
):
    """Build and train the character model as chapter 08 does -> (model, tokenizer,
    history)."""
    tok, cfg, default = chars_recipe()
    _, train_ids, _ = char_corpus()
    settings = settings or default
    torch.manual_seed(settings.seed)
    model = DecoderOnly(cfg)

    def get_batch(step):
        g = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        starts = torch.randint(
            0, len(train_ids) - cfg.max_len - 1, (settings.batch_size,), generator=g
        )
        return char_windows(train_ids, starts, cfg.max_len, device)

    history = train(
        model,
        get_batch,
        lambda m, b: chars_loss(m, b, settings.label_smoothing),
        settings,
        device,
        n_steps=n_steps,
        progress=progress,
    )
    return model, tok, history


CHECKPOINT_VERSION = 2
RECIPES = {"dates": (dates_recipe, train_dates), "chars": (chars_recipe, train_chars)}
MODELS = {"EncoderDecoder": EncoderDecoder, "DecoderOnly": DecoderOnly}


def cache_dir() -> Path:
    """Where checkpoints live: $TRANSFORMER_COURSE_CACHE, else
    ~/.cache/transformer-course."""
    folder = os.environ.get("TRANSFORMER_COURSE_CACHE", "~/.cache/transformer-course")
    return Path(folder).expanduser()


def checkpoint_path(name: str, device) -> Path:
    """The course's checkpoint of recipe `name` trained on `device`; its name carries a
    hash of all that determines the trained model, the device type and the arithmetic
    included."""
    if name not in RECIPES:
        raise ValueError(f"unknown model {name!r}: choose one of {sorted(RECIPES)}")
    tok, cfg, settings = RECIPES[name][0]()
    device = torch.device(device)
    spec = {
        "name": name,
        "version": CHECKPOINT_VERSION,
        "config": asdict(cfg),
        "settings": asdict(settings),
        "chars": tok.chars,
        "device": device.type,
        "precision": precision(device),
    }
    if name == "chars":
        spec["corpus"] = hashlib.sha256(load_corpus().encode()).hexdigest()
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"{name}-{device.type}-{digest}.pt"


def shipped(path: Path) -> Path:
    """The copy of checkpoint `path` that comes with the package: the course's CPU
    checkpoints, trained by load_or_train on a CPU, so that no CPU trains them again."""
    package = Path(str(importlib.resources.files("transformer_course")))
    return package / "checkpoints" / Path(path).name


def save_checkpoint(path: Path, model: nn.Module, tok: CharTokenizer) -> Path:
    """Save model and tokenizer to path (atomically: write a temporary file, then
    rename)."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "state_dict": state,
        "config": asdict(model.cfg),
        "chars": tok.chars,
        "model": type(model).__name__,
    }
    return save_atomic(path, payload)


def save_atomic(path: Path, payload: dict) -> Path:
    """torch.save(payload) to path: a temporary file, then a rename, so that readers
    see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path, device=None):
    """(model, tokenizer) from a checkpoint file, in eval mode on device; None if the
    file is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = MODELS[payload["model"]](TransformerConfig(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except Exception:  # truncated, or from an incompatible version of the code
        return None
    return model.to(device or "cpu").eval(), CharTokenizer(payload["chars"])


@contextlib.contextmanager
def checkpoint_lock(path: Path):
    """Hold an exclusive lock on the file path + ".lock" while the block runs: one
    process at a time (others wait). The OS releases it if the process dies; where
    fcntl is missing (Windows) it does nothing."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_or_train(name: str, device=None, progress: bool = True):
    """The course's model `name` -> (model, tokenizer), in eval mode on device (default:
    CUDA when available, else the CPU). "dates": the EncoderDecoder from dates in
    words to ISO dates (source = the encoded words; decoder output = bos, the ISO
    characters, eos); "chars": the DecoderOnly character model. Loads the course's
    checkpoint, or trains the model as chapter 08 does, with the package's code, and
    saves it."""
    # Always the package's functions, even when this function was defined in a notebook
    # whose lr_at or train is a learner's own: what later chapters load never depends on
    # an answer.
    from transformer_course import training as course

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = course.checkpoint_path(name, device)
    loaded = course.load_checkpoint(path, device)
    if loaded is None:  # the package's copy: same name, so same recipe and device
        loaded = course.load_checkpoint(course.shipped(path), device)
    if loaded is not None:
        return loaded
    # Processes that miss the file at once (two notebooks, two test workers) train it
    # once: the first to get the lock trains and saves, the others then load.
    with course.checkpoint_lock(path):
        loaded = course.load_checkpoint(path, device)
        if loaded is not None:
            return loaded
        model, tok, _ = course.RECIPES[name][1](device, progress=progress)
        course.save_checkpoint(path, model, tok)
    return model.eval(), tok


def cached(kind: str, recipe: dict, make, device="cpu") -> dict:
    """What make() returns (a dict of tensors, numbers, strings and lists: a state dict,
    a loss history), made once per recipe and kept as
    cache_dir()/"<kind>-<device>-<hash>.pt", the hash over `recipe` (JSON: all that
    determines the result, code version included), the device type and its arithmetic.
    Found in the package's checkpoints/ too, like load_or_train's models; processes that
    miss it at once make it once. Later chapters keep what they train with it. With
    $TRANSFORMER_COURSE_SHIPPED_ONLY set (the tests set it), a payload that would have
    to be made is an error instead."""
    from transformer_course import training as course

    device = torch.device(device)
    spec = {"kind": kind, "recipe": recipe, "device": device.type,
            "precision": precision(device)}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    path = course.cache_dir() / f"{kind}-{device.type}-{digest[:12]}.pt"

    def read(p):
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # missing, truncated, or from another version of the code
            return None

    payload = read(path) or read(course.shipped(path))
    if payload is None and os.environ.get("TRANSFORMER_COURSE_SHIPPED_ONLY"):
        # the test suite: what a CPU trains ships with the package (CONTRIBUTING.md)
        raise FileNotFoundError(f"{path.name} is not shipped: make it, then copy it "
                                "into transformer_course/checkpoints/")
    if payload is None:
        with course.checkpoint_lock(path):
            payload = read(path)
            if payload is None:
                payload = make()
                course.save_atomic(path, payload)
    return payload


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Scale the gradients of `parameters` in place so that their global L2 norm is at
    most max_norm; return the global norm from before clipping (a 0-dim tensor).
    Parameters without .grad are skipped."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g) for g in grads])
    )
    factor = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor)
    return norm


def token_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> float:
    """The fraction of positions with labels != ignore_index where logits.argmax(-1)
    equals the label. logits [..., V], labels [...] -> a float in [0, 1]."""
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {list(logits.shape[:-1])} (logits without the last"
            " dimension)"
        )
    keep = labels != ignore_index
    return (logits.argmax(-1) == labels)[keep].float().mean().item()
