"""Sharded data parallelism with PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`).

`run.strategy: fsdp` shards every parameter of the model across the ranks instead of
replicating it (DDP): each decoder layer of the LLM is one FSDP group, and the root group holds
everything else (embeddings, final norm, LM head, the image encoder, the projection).  A rank
keeps 1/N of the parameters, of their gradients and of the AdamW state; each layer's full
weights exist only while that layer runs (all-gathered before, freed after, again for the
backward pass), and gradients are reduce-scattered.  Frozen and trainable parameters may share
a group (only trainable ones get gradients), so stage 0 (full or LoRA) and stages 1-2 (frozen
LLM sharded, projection trained) use the same code.

The model's own forward must be the entry (FSDP's root hooks gather the root group there):
`XrayGPT.forward` and `LLMSFT.forward` are; generation and export run on an unsharded replica
built after training (`xraygpt.training.runner`).

On GPU, parameters are gathered and computed in the LLM's half dtype when it has one, and
gradients are reduced in float32 (`MixedPrecisionPolicy`); `cpu_offload` keeps the sharded
parameters, gradients and optimizer state in host memory (`CPUOffloadPolicy`).  On CPU (gloo)
everything stays float32, which is what the tests compare against one process.  Not yet run on
a GPU.

In a single process (no torchrun) there is nothing to shard: the model stays as it is, and
checkpoints are still written in the sharded format, so a run can move between 1 and N ranks.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from xraygpt.models.llm import decoder_layers

logger = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")


def shard_model(model: nn.Module, device: torch.device, compute_dtype: torch.dtype | None = None,
                cpu_offload: bool = False) -> int:
    """`fully_shard` each LLM decoder layer of `model.llm`, then `model` itself; returns the number of groups.

    Args:
        model: a model with an `llm` attribute (a Hugging Face causal LM, possibly peft-wrapped),
            already on `device`; changed in place (its parameters become sharded DTensors).
        device: this rank's device.
        compute_dtype: dtype parameters are gathered and computed in (GPU mixed precision); None =
            their own dtype.  Gradients are reduced in float32 when it is set.
        cpu_offload: keep sharded parameters, gradients and optimizer state on the CPU.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    policy = (MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
              if compute_dtype is not None else MixedPrecisionPolicy())
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    layers = decoder_layers(model.llm)
    for layer in layers:
        fully_shard(layer, mp_policy=policy, offload_policy=offload)
    fully_shard(model, mp_policy=policy, offload_policy=offload)
    logger.info("FSDP2: %d decoder layers + the root sharded over %d ranks (compute dtype %s, cpu offload %s)",
                len(layers), torch.distributed.get_world_size(), compute_dtype, cpu_offload)
    return len(layers) + 1


def is_sharded(model: nn.Module) -> bool:
    """Whether `fully_shard` was applied to `model`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Reduce-scatter gradients after this backward (`sync`) or keep accumulating them unsharded."""
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor of `tensor`'s global value (a DTensor is gathered; anything else is returned)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
