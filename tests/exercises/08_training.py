"""Chapter 08 (training): the exercises, their checks, and plausible wrong answers."""

import math

import torch

from exercises._case import Exercise
from transformer_course import training
from transformer_course.checks import training as checks


# --- label_smoothed_cross_entropy --------------------------------------------------------------

def _ls(kind):
    """A label-smoothed cross-entropy with one mistake."""

    def label_smoothed_cross_entropy(logits, targets, smoothing, ignore_index=-100):
        V = logits.shape[-1]
        if kind == "log of softmax":
            log_p = torch.log(torch.softmax(logits.float(), -1))
        else:
            log_p = torch.log_softmax(logits.float(), -1)
        keep = targets != (-100 if kind == "hardcoded -100" else ignore_index)
        safe = targets.masked_fill(~keep, 0)
        nll = -log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        uniform = -log_p.mean(-1)
        if kind == "others":                     # eps over the V - 1 other classes
            loss = (1 - smoothing) * nll + smoothing * (-log_p.sum(-1) - nll) / (V - 1)
        elif kind == "no uniform":
            loss = (1 - smoothing) * nll
        elif kind == "summed uniform":
            loss = (1 - smoothing) * nll + smoothing * -log_p.sum(-1)
        elif kind == "no smoothing":
            loss = nll
        else:
            loss = (1 - smoothing) * nll + smoothing * uniform
        if kind == "ignored in mean":
            return (loss * keep).sum() / keep.numel()
        if kind == "per position":
            return loss * keep
        if kind == "item":
            return torch.tensor(loss[keep].mean().item())
        return loss[keep].mean()

    return label_smoothed_cross_entropy


def _ls_gather_ignored(logits, targets, smoothing, ignore_index=-100):
    """Gathers at the ignored targets too: -100 is not a valid index."""
    log_p = torch.log_softmax(logits, -1)
    nll = -log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    loss = (1 - smoothing) * nll + smoothing * -log_p.mean(-1)
    return loss[targets != ignore_index].mean()


LS_WRONG = [
    (_ls("others"), "spread ε over the V - 1 *other* classes"),
    (_ls("no uniform"), "you computed only (1 - ε)·(-log p_y)"),
    (_ls("summed uniform"), "should average them"),
    (_ls("no smoothing"), "equals the plain cross-entropy"),
    (_ls("ignored in mean"), "the ignored positions count in your mean"),
    (_ls("hardcoded -100"), "rather than those equal to the ignore_index"),
    (_ls("log of softmax"), "Use torch.log_softmax"),
    (_ls("per position"), "returned one loss per position"),
    (_ls("item"), "without a gradient"),
    (_ls_gather_ignored, "raised RuntimeError"),
]


# --- lr_at -------------------------------------------------------------------------------------

def _schedule(warmup="ok", decay="cosine", start="warmup", floor=True):
    def lr_at(step, warmup_steps, max_steps, max_lr, min_lr):
        if step < warmup_steps:
            if warmup == "ahead":
                return max_lr * (step + 1) / warmup_steps
            if warmup == "plus one":
                return max_lr * (step + 1) / (warmup_steps + 1)
            if warmup == "from min_lr":
                return min_lr + (max_lr - min_lr) * step / warmup_steps
            if warmup == "none":
                return max_lr
            return max_lr * step / warmup_steps
        if floor and step >= max_steps:
            return min_lr
        p = (step - warmup_steps) / (max_steps - warmup_steps) if start == "warmup" else step / max_steps
        if decay == "linear":
            return max_lr - (max_lr - min_lr) * p
        if decay == "to zero":
            return 0.5 * max_lr * (1 + math.cos(math.pi * p))
        if decay == "offset":
            return min_lr + 0.5 * max_lr * (1 + math.cos(math.pi * p))
        return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * p))
    return lr_at


def _lr_torch(step, warmup_steps, max_steps, max_lr, min_lr):
    """Right values, but a 0-dim tensor where the docstring asks for a float."""
    return torch.tensor(_schedule()(step, warmup_steps, max_steps, max_lr, min_lr))


LR_WRONG = [
    (_schedule(start="zero"), "your decay starts at step 0"),
    (_schedule(decay="linear"), "your decay is linear"),
    (_schedule(warmup="ahead"), "your warmup is one step ahead"),
    (_schedule(warmup="plus one"), "your warmup is (step + 1) / (warmup_steps + 1)"),
    (_schedule(warmup="from min_lr"), "your warmup starts at min_lr"),
    (_schedule(warmup="none"), "the warmup is missing"),
    (_schedule(floor=False), "yours climbs back"),
    (_schedule(decay="to zero"), "your cosine decays to 0 instead of min_lr"),
    (_schedule(decay="offset"), "max_lr + min_lr"),
    (_lr_torch, "returned a tensor; return a Python float"),
]


# --- clip_grad_norm ----------------------------------------------------------------------------

def _clip(kind):
    def clip_grad_norm(parameters, max_norm):
        if kind != "generator twice":
            parameters = list(parameters)
        grads = [p.grad for p in parameters if p.grad is not None]
        if kind == "per parameter":
            total = torch.stack([g.norm() for g in grads]).norm()
            for g in grads:
                g.mul_(min(1.0, max_norm / (g.norm().item() + 1e-6)))
            return total
        norm = torch.stack([g.norm() for g in grads]).norm()
        if kind == "sum of norms":
            norm = sum(g.norm() for g in grads)
        factor = max_norm / (norm + 1e-6)
        if kind != "always":
            factor = factor.clamp(max=1.0)
        if kind == "rebind":
            for g in grads:
                g = g * factor                   # noqa: F841 (the mistake: a new tensor, not the .grad)
            return norm
        if kind == "generator twice":
            for p in parameters:                 # the generator is exhausted: nothing happens
                if p.grad is not None:
                    p.grad.mul_(factor)
            return norm
        for g in grads:
            g.mul_(factor)
        if kind == "after":
            return torch.stack([g.norm() for g in grads]).norm()
        if kind == "squared":
            return norm ** 2
        if kind == "float":
            return norm.item()
        return norm
    return clip_grad_norm


def _clip_none(parameters, max_norm):
    """Forgets that some parameters have no gradient."""
    parameters = list(parameters)
    norm = torch.stack([p.grad.norm() for p in parameters]).norm()
    for p in parameters:
        p.grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))
    return norm


CLIP_WRONG = [
    (_clip("per parameter"), "you clipped each parameter's gradient by its own norm"),
    (_clip("always"), "is already below max_norm"),
    (_clip("after"), "the norm after clipping"),
    (_clip("squared"), "the squared norm"),
    (_clip("sum of norms"), "the sum of the parameters' norms"),
    (_clip("rebind"), "the gradients did not change"),
    (_clip("generator twice"), "model.parameters() can be iterated only once"),
    (_clip_none, "raised AttributeError"),
    (_clip("float"), "return the global norm as a 0-dim tensor"),
]


# --- token_accuracy ----------------------------------------------------------------------------

def _acc(kind):
    def token_accuracy(logits, labels, ignore_index=-100):
        keep = labels != (-100 if kind == "hardcoded -100" else ignore_index)
        right = (logits.argmax(-1) == labels) & keep
        if kind == "tensor":
            return right.sum() / keep.sum()
        if kind == "count":
            return float(right.sum())
        if kind == "all positions":
            return right.sum().item() / labels.numel()
        return right.sum().item() / keep.sum().item()
    return token_accuracy


def _acc_in_place(logits, labels, ignore_index=-100):
    """Right value, but overwrites the caller's ignored labels."""
    keep = labels != ignore_index
    labels[~keep] = -1
    return (logits.argmax(-1) == labels).sum().item() / keep.sum().item()


ACC_WRONG = [
    (_acc("tensor"), "return a Python float"),
    (_acc("count"), "a fraction lies in [0, 1]"),
    (_acc("all positions"), "the ignored positions count in your denominator"),
    (_acc("hardcoded -100"), "rather than those equal to the ignore_index"),
    (_acc_in_place, "changed its input in place"),
]


EXERCISES = {
    "label_smoothed_cross_entropy": Exercise(
        check=checks.check_label_smoothed_cross_entropy,
        solution=training.label_smoothed_cross_entropy,
        wrong=LS_WRONG,
    ),
    "lr_at": Exercise(check=checks.check_lr_at, solution=training.lr_at, wrong=LR_WRONG),
    "clip_grad_norm": Exercise(check=checks.check_clip_grad_norm, solution=training.clip_grad_norm,
                               wrong=CLIP_WRONG),
    "token_accuracy": Exercise(check=checks.check_token_accuracy, solution=training.token_accuracy,
                               wrong=ACC_WRONG),
}
