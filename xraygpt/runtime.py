"""What every entry point sets up before it runs: the offline environment, logging, the device and
torchrun's process group (NCCL on GPU, gloo on CPU; a no-op without torchrun).

The library below the entry points (data, models, evaluation, training) takes these from here,
never from `training/`, so that evaluation, the demo and the data tools need nothing of training.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """`auto` -> this rank's CUDA device when CUDA is available, else CPU; or a torch device name."""
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def init_distributed(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(chosen, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, dev)


OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def offline_environment() -> None:
    """Tell Hugging Face libraries never to reach a hub (kept when the user set them otherwise).
    Call it before transformers or huggingface_hub are imported: they read it at import time."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def single_threaded_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: data workers decode and resize images; letting each also spawn a
    full set of torch threads oversubscribes the cores the main process needs (measured: 4x slower
    training steps on 2 cores)."""
    torch.set_num_threads(1)


class StderrHandler(logging.StreamHandler):
    """A StreamHandler writing to whatever `sys.stderr` is when a record is emitted, so a swapped
    stderr (pytest's capture, a notebook) gets the log instead of a stream closed since."""

    def __init__(self):
        logging.Handler.__init__(self)  # StreamHandler's would bind one stream

    @property
    def stream(self):
        return sys.stderr


def setup_logging(rank: int, level: int = logging.INFO) -> None:
    """Log at `level` on rank 0 and only warnings elsewhere, with one concise format, to the current stderr."""
    root = logging.getLogger()
    root.setLevel(level if rank == 0 else logging.WARNING)
    ours = [h for h in root.handlers if isinstance(h, StderrHandler)]
    handler = ours[0] if ours else StderrHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    if not ours:
        root.addHandler(handler)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor across ranks (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def all_gather_object(obj: object) -> list:
    """`obj` of every rank, in rank order, on every rank ([obj] when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
