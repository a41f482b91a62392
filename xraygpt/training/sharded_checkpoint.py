"""Sharded checkpoints (`run.strategy: fsdp`) with `torch.distributed.checkpoint` (DCP).

A checkpoint is a folder ``checkpoints/checkpoint_<step>/``:

    shard-<rank>-model-00001-of-00001.safetensors   each rank's shards of the trained weights and
                                                     of their AdamW state, with DCP's offsets in the
                                                     safetensors header (JSON)
    meta.pt                                          step, planned steps, the RNG state of every rank,
                                                     the resolved config, the run identity and the
                                                     optimizer's param groups (tensors and primitives,
                                                     read with torch.load(weights_only=True))

``checkpoints/checkpoint_last`` is a symbolic link to the newest folder.  Storage is DCP's
Hugging Face (safetensors) writer and reader, not its default pickle-based format, so reading a
checkpoint never unpickles anything.  Only trainable weights are saved (`ignore_frozen_params`),
as for DDP checkpoints.  A checkpoint can be loaded by any number of ranks (DCP reshards by the
recorded offsets): saved on 2, resumed on 1, and the reverse.

Atomic: every rank writes into ``.checkpoint_<step>.tmp/``; once all are done (DCP's save ends
with a collective), rank 0 writes meta.pt, syncs the folder and renames it into place, then
replaces the ``checkpoint_last`` link (a rename, atomic too).  A run killed mid-save leaves only
a ``.tmp`` folder, which is never read and is cleared by the next save of that step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from xraygpt.errors import first_line
from xraygpt.training.checkpoint import CheckpointError, atomic_save

logger = logging.getLogger(__name__)

META = "meta.pt"
LAST_LINK = "checkpoint_last"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by `save_sharded`."""
    return Path(path).is_dir() and (Path(path) / META).is_file()


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _collective() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextlib.contextmanager
def _one_process_quietly():
    """DCP warns that it assumes one process when there is no process group: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _barrier() -> None:
    if _collective():
        torch.distributed.barrier()


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict, is_main: bool) -> Path:
    """Write `folder` (see module docstring); called on every rank.  `meta` holds primitives and tensors."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    with _one_process_quietly():
        dcp.save({"model": model_state, "optimizer": optim_state["state"]},
                 storage_writer=HuggingFaceStorageWriter(str(tmp), save_distributed=True))
    if is_main:
        atomic_save({**meta, "param_groups": optim_state["param_groups"]}, tmp / META)
        _fsync_dir(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        link = folder.parent / f".{LAST_LINK}.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(folder.name)
        os.replace(link, folder.parent / LAST_LINK)
        _fsync_dir(folder.parent)
    _barrier()
    return folder


def read_meta(folder: str | os.PathLike) -> dict:
    """meta.pt of a sharded checkpoint (step, rng, config, identity, param_groups)."""
    path = Path(folder) / META
    if not path.is_file():
        raise CheckpointError(f"checkpoint {folder} is not a sharded checkpoint folder (no {META})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(exc)}") from exc


def load_sharded(folder: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load the weights and AdamW state of `folder` into `model` (sharded or not) and `optimizer`; returns meta."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    meta = read_meta(folder)
    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    state = {"model": model_state, "optimizer": optim_state["state"]}
    try:
        with _one_process_quietly():
            dcp.load(state, storage_reader=HuggingFaceStorageReader(str(folder)))
    except Exception as exc:  # DCP wraps each rank's failure (a missing key, another model's shapes)
        raise CheckpointError(f"cannot load checkpoint {folder} into this model: {first_line(exc)}") from exc
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict={"state": state["optimizer"], "param_groups": meta["param_groups"]},
                   options=_options())
    return meta


def read_sharded_weights(folder: str | os.PathLike, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights of `folder` for the keys of `template` ({name: tensor of the
    right shape}, e.g. a model's `trainable_state_dict()`), in one process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    read_meta(folder)
    weights = {"model": {k: torch.empty_like(v, device="cpu") for k, v in template.items()}}
    try:
        dcp.load(weights, storage_reader=HuggingFaceStorageReader(str(folder)), no_dist=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read the weights of checkpoint {folder}: {first_line(exc)}") from exc
    return weights["model"]
