"""Generated from solutions/00_the_machine.ipynb by `bash tasks.sh sync`: edit the notebook, not this file."""

import os
import random

import numpy as np
import torch


def pick_device(verbose: bool = True) -> torch.device:
    """The device every chapter computes on, chosen once at the top: a CUDA GPU when there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if verbose:
        name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
        print(f"device: {device.type}{name}")
    return device


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (every device) so that runs repeat."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_triton():
    """Import Triton: compiled for the GPU when there is one, else in its CPU interpreter.

    Returns the `triton` module, or None where Triton cannot be installed (macOS, Windows).
    The interpreter must be chosen before any kernel is defined, hence this function.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        import triton
    except ImportError:
        return None
    return triton
