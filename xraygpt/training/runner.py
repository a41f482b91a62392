"""The iteration-based training runner (registered as `runner_iter`).

One "iteration" is one optimizer step over `accum_grad_iters` micro-batches of
`batch_size_train` samples per rank; an epoch is `iters_per_epoch` iterations.  AdamW updates
only parameters with requires_grad (the projection); the schedule is a pure function of the
step.  Everything a resume needs (trainable weights, optimizer, step, RNG) is checkpointed; the
data position is derived from the step, so `resume_ckpt_path` continues a killed run exactly.
(A training set in shards is a stream that resumes at the step with a fresh seeded draw; see
`xraygpt.data.shards`.)

Speed (all off by default except what cannot change results): `group_by_length` reads
micro-batches of draws of similar token length (`LengthGroupedSampler`: the same global batch
size and draws, far less padding; per-sample losses do not depend on the batch); a training set
with `feature_cache` reads cached encoder outputs (checked against the model's encoder here,
before anything is written); `gradient_checkpointing` and `compile` act on the LLM's decoder
layers (`xraygpt.models.llm`); on GPU, `amp` autocasts to the LLM's half dtype and batches are
copied from pinned memory without blocking.  Only trainable parameters get gradients and
optimizer state.

`strategy: fsdp` shards the model, its gradients and its AdamW state over the ranks with FSDP2
instead of replicating them (DDP): see `xraygpt.training.sharding`; its checkpoints are folders
(`xraygpt.training.sharded_checkpoint`) that any number of ranks can resume, and what runs after
training (samples, stage 0's export) runs on rank 0 on an unsharded replica built by
`model_factory` that holds the gathered trained weights.

Outputs under `output_dir`:
    checkpoints/checkpoint_<step>.pt, checkpoints/checkpoint_last.pt   (trainable weights only; DDP)
    checkpoints/checkpoint_<step>/, checkpoints/checkpoint_last -> ...  (the same, sharded; FSDP)
    log.jsonl         one JSON object per logged step
    loss.png          the loss curve
    config.yaml       the fully resolved config
    samples.jsonl     a few generated answers next to their references (end of training)
    (and whatever the task's `after_training` writes, e.g. stage 0's hf_model/)
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from xraygpt.atomic import atomic_write_text
from xraygpt.constants import IGNORE_INDEX
from xraygpt.data.formats import capabilities_of
from xraygpt.data.sampler import LengthGroupedSampler, ResumableSampler
from xraygpt.models.generation import GenerationSettings
from xraygpt.models.llm import checkpoint_decoder_layers, compile_decoder_layers
from xraygpt.registry import register
from xraygpt import runtime
from xraygpt.training import sharding
from xraygpt.training.checkpoint import atomic_save, read_checkpoint, rng_state, set_rng_state
from xraygpt.training.sharded_checkpoint import is_sharded_checkpoint, load_sharded, read_meta, save_sharded
from xraygpt.training.metrics_log import REPORTERS, JsonlLog, TensorBoardLog, plot_loss

logger = logging.getLogger(__name__)


class RunError(ValueError):
    """A run that cannot start (e.g. output_dir already holds another run)."""


def _to_device(batch: dict, device: torch.device) -> dict:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def run_identity(config_yaml: str, model) -> dict:
    """What a checkpoint must share with the run that resumes it: the task, the model class and
    the training data (each dataset's root)."""
    try:
        cfg = yaml.safe_load(config_yaml) or {}
    except yaml.YAMLError:
        cfg = {}
    datasets = cfg.get("datasets") if isinstance(cfg.get("datasets"), dict) else {}
    return {"task": (cfg.get("run") or {}).get("task"), "model": type(model).__name__,
            "datasets": {name: (ds or {}).get("root") for name, ds in sorted(datasets.items())}}


@register("runner", "runner_iter")
class IterRunner:
    """Trains `model` on `datasets[0]`; then the task's `after_training` (samples from `datasets[1]`, or [0]).

    Args (besides the objects built by `xraygpt.builders`):
        output_dir: where checkpoints, logs, plots and samples go.
        init_lr: peak learning rate (the schedule scales from it).
        weight_decay: AdamW weight decay on matrices (not biases).
        beta2: AdamW's second-moment decay.
        max_epoch, iters_per_epoch: the run lasts max_epoch * iters_per_epoch optimizer steps.
        batch_size_train: micro-batch size per rank.
        accum_grad_iters: micro-batches per optimizer step.
        grad_clip: max global gradient norm (0 = no clipping).
        amp: autocast to the LLM's half dtype on GPU (ignored on CPU).
        seed: seeds torch and the data order.
        num_workers: DataLoader worker processes per rank.
        log_freq: log every this many steps (and the first and last).
        save_freq_steps: also checkpoint every this many steps (0 = only at epoch ends).
        resume_ckpt_path: a checkpoint of this run to continue from (refused when another run wrote
            it: other task, model class or training data; or when it is at the last step).
        sample_generations: summaries generated at the end and written to samples.jsonl.
        generation: the decoding settings of those samples; in a config, its fields are keys of
            the `run` section.
        group_by_length: micro-batches of draws of similar token length (map-style training sets).
        gradient_checkpointing: recompute the LLM's layers in the backward pass (less memory, more time).
        compile: torch.compile backend for the LLM's decoder layers (`inductor`); None = not compiled.
        strategy: `ddp` (every rank holds the whole model) or `fsdp` (FSDP2: parameters, gradients
            and optimizer state sharded over the ranks; one process = not sharded).
        fsdp_cpu_offload: with `fsdp`, keep the shards and the optimizer state in host memory.
        report_to: dashboards fed with each logged record besides log.jsonl: `tensorboard`
            (output_dir/tensorboard/); None = none.
        model_factory: builds a fresh, unsharded copy of the model (given by the builders); with
            `fsdp` under torchrun, samples and exports after training run on it.
    """

    def __init__(
        self,
        model,
        datasets: tuple,
        task,
        lr_schedule,
        config: str,
        dist: runtime.DistInfo,
        output_dir: str,
        init_lr: float = 1e-4,
        weight_decay: float = 0.05,
        beta2: float = 0.999,
        max_epoch: int = 1,
        iters_per_epoch: int = 100,
        batch_size_train: int = 8,
        accum_grad_iters: int = 1,
        grad_clip: float = 1.0,
        amp: bool = True,
        seed: int = 42,
        num_workers: int = 2,
        log_freq: int = 10,
        save_freq_steps: int = 0,
        resume_ckpt_path: str | None = None,
        sample_generations: int = 4,
        generation: GenerationSettings = GenerationSettings(),
        group_by_length: bool = False,
        gradient_checkpointing: bool = False,
        compile: Optional[str] = None,
        strategy: str = "ddp",
        fsdp_cpu_offload: bool = False,
        report_to: Optional[list[str]] = None,
        model_factory: Optional[Callable[[], torch.nn.Module]] = None,
    ):
        for name, value in (("max_epoch", max_epoch), ("iters_per_epoch", iters_per_epoch),
                            ("batch_size_train", batch_size_train), ("accum_grad_iters", accum_grad_iters),
                            ("log_freq", log_freq)):
            if value < 1:
                raise RunError(f"run.{name} must be >= 1, got {value}")
        if strategy not in sharding.STRATEGIES:
            raise RunError(f"run.strategy must be one of {sharding.STRATEGIES}, got {strategy!r}")
        if fsdp_cpu_offload and strategy != "fsdp":
            raise RunError("run.fsdp_cpu_offload needs run.strategy: fsdp")
        if fsdp_cpu_offload and dist.device.type != "cuda":
            raise RunError(f"run.fsdp_cpu_offload moves the shards from the GPU to host memory: it needs a CUDA device "
                           f"(this run is on {dist.device.type})")
        unknown = [name for name in (report_to or []) if name not in REPORTERS]
        if unknown:
            raise RunError(f"run.report_to: unknown dashboard {unknown[0]!r}; choose from {REPORTERS}")
        self.report_to = list(report_to or [])
        if "tensorboard" in self.report_to:
            TensorBoardLog.writer_class()
        self.strategy = strategy
        self.sharded = strategy == "fsdp" and dist.distributed
        if self.sharded and model_factory is None:
            raise RunError("run.strategy fsdp under torchrun needs a model_factory (train.py's builders give one)")
        self.model_factory = model_factory
        self.model = model
        self.train_set, self.eval_set = datasets
        self.task = task
        self.schedule = lr_schedule
        self.config_yaml = config
        self.dist = dist
        self.output_dir = Path(output_dir)
        self.init_lr = init_lr
        self.max_epoch = max_epoch
        self.iters_per_epoch = iters_per_epoch
        self.total_steps = max_epoch * iters_per_epoch
        self.batch_size = batch_size_train
        self.accum = accum_grad_iters
        self.grad_clip = grad_clip
        self.seed = seed
        self.num_workers = num_workers
        self.log_freq = log_freq
        self.save_freq_steps = save_freq_steps
        self.resume_ckpt_path = resume_ckpt_path
        self.sample_generations = sample_generations
        self.generation = generation
        self.group_by_length = group_by_length
        self.device = dist.device
        self.amp_dtype = model.llm_dtype if (amp and self.device.type == "cuda" and model.llm_dtype != torch.float32) else None
        self.ckpt_dir = self.output_dir / "checkpoints"
        self.identity = run_identity(config, model)
        self.resume_state = self._read_resume(resume_ckpt_path) if resume_ckpt_path else None
        if self.resume_state is not None:
            self._check_resumable(self.resume_state)
        if self.resume_state is None and self.ckpt_dir.is_dir() and any(self.ckpt_dir.glob("checkpoint_*")):
            last = "checkpoint_last" if strategy == "fsdp" else "checkpoint_last.pt"
            raise RunError(
                f"output_dir {self.output_dir} already holds checkpoints; set run.resume_ckpt_path="
                f"{self.ckpt_dir / last} to continue it, or choose another run.output_dir"
            )
        train_caps = capabilities_of(self.train_set)
        if group_by_length and not train_caps.group_by_length:
            raise RunError("run.group_by_length needs a map-style training set of image summaries (format xraygpt "
                           "or r2gen, or a feature_cache); a dataset in shards streams and cannot be grouped")
        if train_caps.reads_features:
            for cache in self.train_set.feature_caches():
                cache.check_encoder(model.encoder)
        if gradient_checkpointing:
            logger.info("gradient checkpointing: %d LLM layers recomputed in the backward pass",
                        checkpoint_decoder_layers(model.llm))
        if compile:
            logger.info("torch.compile (%s): %d LLM layers", compile, compile_decoder_layers(model.llm, compile))
        if self.sharded:
            model.to(self.device)
            # on GPU with amp: gathered and computed in the LLM's half dtype (bfloat16 for a float32
            # LLM, whose float32 shards are then the master weights); gradients reduced in float32
            compute = None
            if amp and self.device.type == "cuda":
                compute = self.amp_dtype or torch.bfloat16
            sharding.shard_model(model, self.device, compute, fsdp_cpu_offload)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise RunError("the model has no trainable parameter")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.params = params
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=init_lr, betas=(0.9, beta2),
        )
        self.log = JsonlLog(self.output_dir / "log.jsonl")

    # ------------------------------------------------------------------ checkpoints
    def _save(self, step: int) -> Path | None:
        """Called on every rank (each rank's RNG state is gathered); rank 0 writes the checkpoint
        (with `fsdp`, every rank writes its shards)."""
        rng = runtime.all_gather_object(rng_state())
        if self.strategy == "fsdp":
            meta = {"step": step, "total_steps": self.total_steps, "rng": rng, "config": self.config_yaml,
                    "identity": self.identity, "world_size": self.dist.world_size}
            folder = save_sharded(self.ckpt_dir / f"checkpoint_{step:07d}", self.model, self.optimizer, meta,
                                  self.dist.is_main)
            logger.info("sharded checkpoint written: %s", folder)
            return folder if self.dist.is_main else None
        if not self.dist.is_main:
            return None
        state = {
            "model": {k: v.detach().cpu() for k, v in self.model.trainable_state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "total_steps": self.total_steps,
            "rng": rng,  # one state per rank, in rank order
            "config": self.config_yaml,
            "identity": self.identity,
        }
        path = self.ckpt_dir / f"checkpoint_{step:07d}.pt"
        atomic_save(state, path)
        atomic_save(state, self.ckpt_dir / "checkpoint_last.pt")
        logger.info("checkpoint written: %s", path)
        return path

    def _read_resume(self, path: str) -> dict:
        """What resuming `path` needs before the model is built into the loop (for `fsdp`, the
        checkpoint's meta; its weights are loaded into the sharded model in `_restore`)."""
        sharded = is_sharded_checkpoint(path)
        if self.strategy == "fsdp" and not sharded and Path(path).is_file():
            raise RunError(f"checkpoint {path} was written with run.strategy ddp (one .pt file) and this run uses fsdp: "
                           f"resume it with run.strategy=ddp, or start from its weights with model.ckpt={path}")
        if self.strategy == "ddp" and sharded:
            raise RunError(f"checkpoint {path} is a sharded checkpoint (run.strategy fsdp): resume it with "
                           f"run.strategy=fsdp (on any number of ranks), or start from its weights with model.ckpt={path}")
        return read_meta(path) if self.strategy == "fsdp" else read_checkpoint(path)

    def _check_resumable(self, state: dict) -> None:
        """Refuse a checkpoint of another run (task, model, data) or one with nothing left to train."""
        theirs = state.get("identity")
        if not isinstance(theirs, dict) and isinstance(state.get("config"), str):
            theirs = run_identity(state["config"], self.model)  # checkpoints written before identities
        if isinstance(theirs, dict):
            changed = [key for key in ("task", "model", "datasets") if theirs.get(key) != self.identity[key]]
            if changed:
                key = changed[0]
                raise RunError(f"checkpoint {self.resume_ckpt_path} was written by another run ({key} {theirs.get(key)}, "
                               f"this run: {self.identity[key]}); run.resume_ckpt_path continues the run that wrote it: "
                               f"to start this run from its weights, set model.ckpt instead")
        step = int(state.get("step", 0))
        if step >= self.total_steps:
            raise RunError(f"checkpoint {self.resume_ckpt_path} is at step {step} and this run plans {self.total_steps} "
                           f"steps (run.max_epoch x run.iters_per_epoch): nothing is left to train")

    def _restore(self) -> int:
        state = self.resume_state
        if self.strategy == "fsdp":
            load_sharded(self.resume_ckpt_path, self.model, self.optimizer)
        else:
            self.model.load_trainable_state_dict(state["model"], str(self.resume_ckpt_path))
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("total_steps", self.total_steps) != self.total_steps:
            logger.warning("resuming a run planned for %s steps with %s steps", state.get("total_steps"), self.total_steps)
        rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # older checkpoints: rank 0's only
        if len(rng) != self.dist.world_size:
            logger.warning("checkpoint %s holds RNG states for %d ranks, this run has %d: every rank restores rank 0's, "
                           "so random layers do not replay exactly", self.resume_ckpt_path, len(rng), self.dist.world_size)
        set_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0])
        step = int(state["step"])
        if self.dist.is_main:
            self.log.truncate_after(step)
        logger.info("resumed from %s at step %d", self.resume_ckpt_path, step)
        return step

    # ------------------------------------------------------------------ the loop
    def _loader(self, start_step: int):
        consumed = start_step * self.accum * self.batch_size  # samples this rank drew before start_step
        if not capabilities_of(self.train_set).map_style:
            # shards: the stream splits itself by rank and worker (see xraygpt.data.shards)
            dataset = self.train_set.for_rank(self.dist.rank, self.dist.world_size, self.num_workers, self.seed, consumed)
            sampler = None
        elif self.group_by_length:
            dataset = self.train_set.with_instructions_by_key()
            sampler = LengthGroupedSampler(dataset.draw_lengths(self.model.prompt_tokenizer), len(dataset),
                                           self.batch_size, self.dist.rank, self.dist.world_size, self.seed, start=consumed)
        else:
            dataset = self.train_set
            sampler = ResumableSampler(len(self.train_set), self.dist.rank, self.dist.world_size, self.seed, start=consumed)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self.task.train_collator(self.model),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.num_workers > 0,
            worker_init_fn=runtime.single_threaded_worker,
            # Its own generator: iter() draws the workers' base seed from it, not from the global
            # RNG, whose state a checkpoint restores per rank (a resumed run then replays the
            # same draws, e.g. NEFTune noise, as the run it continues).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _wrapped_model(self):
        if not self.dist.distributed or self.sharded:
            return self.model
        frozen = [n for n, p in self.model.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in self.model.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, frozen)
        return DistributedDataParallel(
            self.model,
            device_ids=[self.device] if self.device.type == "cuda" else None,
            broadcast_buffers=False,
        )

    def _unsharded_model(self):
        """The trained model as one module on rank 0 (None elsewhere): the model itself, or with
        `fsdp` under torchrun a replica from `model_factory` holding the gathered trained weights
        (a collective: every rank calls it)."""
        if not self.sharded:
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                         ignore_frozen_params=True))
        if not self.dist.is_main:
            return None
        replica = self.model_factory()
        wanted = replica.trainable_state_dict()
        replica.load_trainable_state_dict({k: full[k] for k in wanted if k in full}, "the gathered FSDP shards")
        return replica.to(self.device)

    def train(self) -> dict:
        """Run to `total_steps`; returns {"final_loss", "steps", "checkpoint"}."""
        torch.manual_seed(self.seed + self.dist.rank)  # ranks draw different noise (dropout, NEFTune)
        start_step = self._restore() if self.resume_state is not None else 0
        dashboards = []
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / "config.yaml", self.config_yaml)
            if "tensorboard" in self.report_to:
                purge = start_step + 1 if start_step else None  # a resumed run rewrites what followed its checkpoint
                dashboards.append(TensorBoardLog(self.output_dir / "tensorboard", purge_step=purge))
        if not self.sharded:
            self.model.to(self.device)  # a sharded model is already placed (and may be offloaded to the CPU)
        self.model.train()
        wrapped = self._wrapped_model()
        batches = iter(self._loader(start_step))
        bar = tqdm(total=self.total_steps, initial=start_step, disable=not self.dist.is_main, desc="train", dynamic_ncols=True)
        last_ckpt: Path | None = None
        loss_value = float("nan")
        window_start, window_samples = time.perf_counter(), 0
        for step in range(start_step, self.total_steps):
            lr = self.schedule(step, self.total_steps, self.init_lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), device=self.device)
            tokens = real = slots = 0
            for micro in range(self.accum):
                host = next(batches)  # counted on the host: no device sync per micro-batch
                real += int(host["attention_mask"].sum())
                slots += host["attention_mask"].numel()
                tokens += int((host["labels"][:, 1:] != IGNORE_INDEX).sum())
                batch = _to_device(host, self.device)
                sync = micro == self.accum - 1 or not self.dist.distributed
                sharding.set_gradient_sync(wrapped, sync)
                with (contextlib.nullcontext() if sync or self.sharded else wrapped.no_sync()):
                    with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                        out = self.task.train_step(wrapped, batch)
                    (out["loss"] / self.accum).backward()
                step_loss += out["loss"].detach() / self.accum
                window_samples += len(batch["image_ids"]) * self.dist.world_size
            # max_norm inf measures the norm and leaves the gradients as they are (a factor of 1)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip if self.grad_clip > 0 else math.inf)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            done = step + 1
            bar.update(1)
            if done % self.log_freq == 0 or done == start_step + 1 or done == self.total_steps:
                loss_value = float(runtime.all_reduce_mean(step_loss))
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss is {loss_value} at step {done}")
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": done, "epoch": step // self.iters_per_epoch, "loss": loss_value, "lr": lr,
                    "grad_norm": float(sharding.full_value(grad_norm)), "target_tokens": tokens, "real_token_fraction": real / slots,
                    "samples_per_s": window_samples / elapsed if elapsed > 0 else None,
                }
                window_start, window_samples = time.perf_counter(), 0
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                if self.dist.is_main:
                    self.log.write(record)
                    for dashboard in dashboards:
                        dashboard.write(record)
            if done % self.iters_per_epoch == 0 or (self.save_freq_steps and done % self.save_freq_steps == 0):
                last_ckpt = self._save(done) or last_ckpt
                runtime.barrier()
        bar.close()
        for dashboard in dashboards:
            dashboard.close()
        trained = self._unsharded_model()
        if self.dist.is_main:
            plot = plot_loss(self.log.read(), self.output_dir / "loss.png", title=str(self.output_dir))
            logger.info("log: %s, loss plot: %s", self.log.path, plot)
            held_out = self.eval_set if self.eval_set is not None else self.train_set
            self.task.after_training(trained, held_out, self.output_dir, self.sample_generations, self.generation, self.amp_dtype)
        runtime.barrier()
        last = "checkpoint_last" if self.strategy == "fsdp" else "checkpoint_last.pt"
        return {"final_loss": loss_value, "steps": self.total_steps, "checkpoint": str(self.ckpt_dir / last)}
