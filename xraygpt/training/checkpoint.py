"""Training checkpoints: trainable weights + optimizer + step + RNG, written atomically.

Files are plain `torch.save` dicts of tensors and primitives, read back with
`torch.load(weights_only=True)` (nothing is unpickled).  A write goes to a temporary file in
the same folder, is flushed to disk, then renamed over the target, so a kill mid-write never
leaves a truncated checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from xraygpt.atomic import atomic_write
from xraygpt.errors import first_line


class CheckpointError(ValueError):
    """A checkpoint that is missing or unreadable."""


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states in weights_only-loadable form."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of `rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: dict, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename over `path` (`xraygpt.atomic`)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by the runner (or any dict with a `model` entry of tensors)."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file} does not exist")
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {file}: {first_line(exc)}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"checkpoint {file} has no 'model' weights")
    return ckpt
