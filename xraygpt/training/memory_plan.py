"""Per-rank GPU memory of a training config before launching it: `train.py --print-memory-plan`.

Counts come from the configured model built on PyTorch's meta device (shapes only: no weights
are read, nothing is allocated), from `model.llm.path`'s config.json and the encoder's Swin config.
Bytes (B = bytes per element of the training dtype: 4 for float32, 2 for bfloat16/float16):

    weights          every parameter, B each                     (frozen ones too)
    gradients        each trainable parameter, B
    AdamW state      each trainable parameter, 2 x B (exp_avg, exp_avg_sq, kept in the parameter's dtype)
    -> full fine-tuning costs 4 x B per parameter: 16 bytes in float32, 8 in bfloat16

    ddp              every rank holds all of the above
    fsdp             each rank holds 1/N of it, plus the unsharded weights of the two largest FSDP
                     groups (the one computing and the one being gathered next)
    fsdp + offload   the shards live in host memory; the GPU holds the gathered groups

    activations      an estimate for one micro-batch of `batch_size_train` x `seq_len` tokens:
                     34 x h x B per token and decoder layer (Korthikanti et al. 2022, "Reducing
                     Activation Recomputation in Large Transformer Models", for fused attention), or
                     with gradient checkpointing B x h per token and layer plus one layer's 34 x h x B;
                     plus the logits, batch x seq_len x vocab x (B + 4) (the loss is taken in float32)

The activations are an estimate (they depend on kernels and the allocator); everything else is
exact for the parameters the run trains.  A plan "fits" when the total stays under the given GPU
memory less a 10% reserve for the CUDA context, the allocator's fragmentation and temporaries.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

GIB = 1024**3
RESERVE = 0.10
ACTIVATION_FACTOR = 34  # bytes per token per hidden unit per layer / B (Korthikanti et al., fused attention)


class MemoryPlanError(ValueError):
    """A config whose model cannot be sized (e.g. no config.json in model.llm.path)."""


@dataclasses.dataclass(frozen=True)
class ModelCounts:
    """Parameter counts of a configured model."""

    total: int
    trainable: int
    largest_group: int  # parameters of the largest FSDP group (the root or one decoder layer)
    hidden: int
    layers: int
    vocab: int
    image_tokens: int = 0  # LLM positions the image takes (0 for stage 0)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank (GPU unless noted)."""

    counts: ModelCounts
    strategy: str
    world_size: int
    dtype: torch.dtype
    cpu_offload: bool
    weights: int
    gradients: int
    optimizer: int
    gathered: int
    activations: int
    host: int  # per rank, in host memory (cpu offload)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.gathered + self.activations

    def fits(self, gpu_bytes: float) -> bool:
        return self.total <= gpu_bytes * (1.0 - RESERVE)


def _element_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _llm_on_meta(path: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise MemoryPlanError(f"model.llm.path {path} has no config.json: the plan sizes the LLM from it")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config), config


def _lora_count(llm: torch.nn.Module, r: int, targets: list[str]) -> int:
    """LoRA A (r x in) + B (out x r) per targeted linear layer."""
    return sum(r * (m.in_features + m.out_features) for name, m in llm.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets)


def count_parameters(model_cfg) -> ModelCounts:
    """Parameter counts of `model_cfg` (a validated `model` section) without reading any weight."""
    from xraygpt.models.llm import decoder_layers

    llm, config = _llm_on_meta(model_cfg.llm.path)
    llm_total = sum(p.numel() for p in llm.parameters())
    layers = decoder_layers(llm)
    layer_size = sum(p.numel() for p in layers[0].parameters())
    root = llm_total - layer_size * len(layers)
    hidden = int(config.hidden_size)
    image_tokens = 0
    if model_cfg.arch == "llm_sft":
        if model_cfg.finetune == "full":
            trainable = llm_total
        else:
            trainable = _lora_count(llm, int(model_cfg.lora_r), list(model_cfg.lora_target_modules))
            layer_size += trainable // max(len(layers), 1)
        total = llm_total + (0 if model_cfg.finetune == "full" else trainable)
    else:
        from xraygpt.models.medclip_encoder import MedCLIPVisionEncoder, load_swin_config

        enc = model_cfg.encoder
        with torch.device("meta"):
            encoder = MedCLIPVisionEncoder(load_swin_config(enc.swin_config), int(enc.projection_dim), str(enc.output))
        encoder_size = sum(p.numel() for p in encoder.parameters())
        features = int(enc.projection_dim) if enc.output == "pooled" else int(encoder.model.num_features)
        trainable = features * hidden + hidden  # the projection: one nn.Linear
        image_tokens = encoder.num_tokens
        total = llm_total + encoder_size + trainable
        root += encoder_size + trainable
    return ModelCounts(total=total, trainable=trainable, largest_group=max(root, layer_size), hidden=hidden,
                       layers=len(layers), vocab=int(config.vocab_size), image_tokens=image_tokens)


def plan(counts: ModelCounts, strategy: str, world_size: int, dtype: torch.dtype, batch_size: int, seq_len: int,
         gradient_checkpointing: bool = False, cpu_offload: bool = False) -> MemoryPlan:
    """Bytes per rank for `counts` trained with `strategy` on `world_size` ranks (see module docstring)."""
    b = _element_bytes(dtype)
    weights, gradients, optimizer = counts.total * b, counts.trainable * b, counts.trainable * 2 * b
    gathered, host = 0, 0
    if strategy == "fsdp" and world_size > 1:
        weights, gradients, optimizer = (-(-x // world_size) for x in (weights, gradients, optimizer))
        gathered = 2 * counts.largest_group * b
        if cpu_offload:
            host = weights + gradients + optimizer
            weights = gradients = optimizer = 0
    tokens = batch_size * seq_len
    per_layer = ACTIVATION_FACTOR * counts.hidden * b * tokens
    if gradient_checkpointing:
        layer_activations = counts.layers * counts.hidden * b * tokens + per_layer
    else:
        layer_activations = counts.layers * per_layer
    activations = layer_activations + tokens * counts.vocab * (b + 4)
    return MemoryPlan(counts, strategy, world_size, dtype, cpu_offload, weights, gradients, optimizer, gathered,
                      activations, host)


def plan_for_config(cfg, world_size: int) -> MemoryPlan:
    """The plan of a validated training config on GPUs: its model, run.strategy,
    run.fsdp_cpu_offload, run.batch_size_train, run.gradient_checkpointing; the training dtype is
    model.llm.dtype (`auto` = bfloat16, as on a GPU that has it); the sequence length is the
    longest a sample can take: a dataset's `max_len` for stage 0, else model.prompt.max_txt_len +
    the image tokens + 64 template tokens."""
    from xraygpt.models.llm import DTYPES

    counts = count_parameters(cfg.model)
    name = str(cfg.model.llm.dtype)
    dtype = torch.bfloat16 if name == "auto" else DTYPES[name]
    lengths = [int(ds.max_len) for ds in cfg.datasets.values() if "max_len" in ds]
    if cfg.model.arch == "llm_sft" and lengths:
        seq_len = max(lengths)
    else:
        seq_len = int(cfg.model.prompt.max_txt_len) + 64 + counts.image_tokens
    return plan(counts, str(cfg.run.strategy), world_size, dtype, int(cfg.run.batch_size_train), seq_len,
                bool(cfg.run.gradient_checkpointing), bool(cfg.run.fsdp_cpu_offload))


def format_plan(p: MemoryPlan, gpu_gb: float) -> str:
    """A table of the plan's bytes in GiB and whether it fits `gpu_gb` GB (decimal, as cards are sold)."""
    gpu_bytes = gpu_gb * 1e9
    rows = [("weights", p.weights), ("gradients", p.gradients), ("AdamW state", p.optimizer),
            ("gathered FSDP groups", p.gathered), ("activations (estimate)", p.activations), ("total per GPU", p.total)]
    lines = [f"parameters: {p.counts.total:,} ({p.counts.trainable:,} trainable); {p.strategy} on {p.world_size} "
             f"rank(s), {str(p.dtype).replace('torch.', '')}{', cpu offload' if p.cpu_offload else ''}"]
    lines += [f"  {name:<24}{value / GIB:>10.2f} GiB" for name, value in rows]
    if p.host:
        lines.append(f"  {'host memory per rank':<24}{p.host / GIB:>10.2f} GiB")
    verdict = "fits" if p.fits(gpu_bytes) else "does NOT fit"
    lines.append(f"{verdict} in {gpu_gb:g} GB per GPU ({gpu_bytes * (1 - RESERVE) / GIB:.1f} GiB usable after a "
                 f"{RESERVE:.0%} reserve)")
    return "\n".join(lines)

