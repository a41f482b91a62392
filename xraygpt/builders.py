"""Builders: the only code that reads the validated config and the registry.

They turn config sections into objects through plain constructors with typed arguments:
`build_distributed`, `build_model`, `build_datasets`, `build_runner`, and for
`python cache_features.py` `build_feature_cache_job` (the encoder alone + one
dataset's images).

`load_job_config` is the one way a config file comes in for train.py, evaluate.py and demo.py
(and for the test of every YAML in the repo): the job is the one the file declares by its own
section (`run`, `evaluation` or `demo`), and the config is validated for that job as far as
it can be without reading weights or data (see its docstring).  With `model_folder` (an
entry point's `--model FOLDER`) the `model` section is an exported model folder's
(`model_section_from_folder`, the same section `XrayGPT.from_pretrained` builds).
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from xraygpt import components, registry
from xraygpt.config import ConfigError, load_config, read_yaml, settings_arguments
from xraygpt.data.datasets import MixedDataset, mixing_ratios
from xraygpt.data.formats import DatasetError, capabilities_of, dataset_format
from xraygpt.data.shards import ShardDataset
from xraygpt.data.transforms import ImagePreprocessing
from xraygpt.errors import first_line
from xraygpt.evaluation import evaluator
from xraygpt.models.assemble import assemble_model
from xraygpt.models.model_folder import read_model_section, read_projection
from xraygpt.ui.settings import demo_settings, load_demo_config
from xraygpt.serving.settings import load_serve_config, serve_settings

logger = logging.getLogger(__name__)


def _kwargs(section: Any) -> dict:
    """A config section as a plain, mutable dict."""
    return dict(OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section)


def build_processor(section: Any, preprocessing: ImagePreprocessing | None = None, key: str = "vis_processor"):
    """A registered processor from {name, ...kwargs}.

    An image processor (one taking `preprocessing`) gets the encoder's `preprocessing` when given;
    an `image_size` set in the section must then equal the encoder's (ConfigError naming both keys).
    """
    kwargs = _kwargs(section)
    cls = registry.get("processor", kwargs.pop("name"))
    if preprocessing is not None and "preprocessing" in inspect.signature(cls).parameters:
        size = kwargs.pop("image_size", None)
        if size is not None and size != preprocessing.image_size:
            raise ConfigError(f"{key}.image_size is {size} but the encoder takes {preprocessing.image_size}-pixel "
                              f"images (image_size in the Swin config of model.encoder.swin_config); remove "
                              f"{key}.image_size (the encoder sets it) or make the two agree")
        kwargs["preprocessing"] = preprocessing
    return cls(**kwargs)


def build_model(model_cfg: Any, seed: int = 0):
    """The registered model: builds each CONFIG_SECTIONS entry, then the model, then loads `ckpt`.

    `seed` seeds torch first, so the trainable weights start identically in every run.
    """
    components.register_all()
    torch.manual_seed(seed)
    kwargs = _kwargs(model_cfg)
    cls = registry.get("model", kwargs["arch"])
    ckpt = kwargs.get("ckpt")
    model = assemble_model(cls, kwargs)
    if ckpt:
        model.load_trainable_state_dict(read_trainable_weights(ckpt, model.trainable_state_dict()), ckpt)
        logger.info("initialised trainable weights from %s", ckpt)
    return model


def read_trainable_weights(path: str | Path, template: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The trained weights `model.ckpt` names: a training checkpoint's `model` entry (`.pt`), a
    sharded (FSDP) checkpoint folder (its weights for the keys and shapes of `template`, the
    model's `trainable_state_dict()`), or an exported model folder's `projection.safetensors`."""
    from xraygpt.training.sharded_checkpoint import is_sharded_checkpoint, read_sharded_weights

    if is_sharded_checkpoint(path):
        if template is None:
            raise ConfigError(f"{path} is a sharded checkpoint: reading it needs the model's trainable weights as a template")
        return read_sharded_weights(path, template)
    if str(path).endswith(".safetensors"):
        return read_projection(path)
    from xraygpt.training.checkpoint import read_checkpoint

    return read_checkpoint(path)["model"]


def model_section_from_folder(folder: str | Path) -> dict:
    """The `model` config section of an exported model folder (written by `python -m xraygpt.export`).

    Reads `<folder>/model.yaml`, validates it as a model section (every default filled in, like
    a config file's `model`), makes its paths (the projection `ckpt`, `encoder.checkpoint`,
    `encoder.swin_config`, `llm.path`) absolute, relative ones being relative to the folder, and
    checks that each exists; when the folder references its LLM instead of holding a copy, checks
    the referenced folder's files against the sha256 the export recorded.  Opens no weights.

    Returns a plain dict for `build_model` (or to put in a config's `model` section: see
    `load_job_config(model_folder=...)`, which the entry points' `--model FOLDER` uses).
    Raises `ModelFolderError` (a ValueError) in one line naming the missing or changed file.
    (`xraygpt.models.model_folder.read_model_section`, below the model classes, so that
    `XrayGPT.from_pretrained` reads the same section.)
    """
    return read_model_section(folder)


def build_datasets(datasets_cfg: Any, seed: int, split: str = "train", prompt_tokenizer=None,
                   preprocessing: ImagePreprocessing | None = None) -> MixedDataset | ShardDataset | None:
    """All configured datasets for `split` ("train": each `root`; "eval": each `eval_root`).

    Image processors take the encoder's `preprocessing` (`model.image_preprocessing`; image size,
    mean, std) when given; a `vis_processor.*.image_size` that differs from it is refused.

    Builders that take `prompt_tokenizer` (text datasets, which validate lengths at start-up)
    get the model's.  For "eval", a dataset with an `eval_split` (R2Gen format) reads that split,
    and `feature_cache` is ignored (held-out sets read images).
    A dataset in shards (`format: webdataset`) is streamed for training: it must be the only
    training dataset and is returned as is (the runner splits it across ranks and workers).
    Training datasets read either all or none from a feature cache (a batch holds one kind).
    Training datasets are mixed by their `sample_ratio` when every one sets it (none: by size;
    `MixedDataset`); held-out sets are read whole, ratios ignored.
    Returns None for "eval" when no dataset has an `eval_root`.
    """
    components.register_all()
    built, names, ratios = [], [], {}
    for name, section in _kwargs(datasets_cfg).items():
        kwargs = dict(section)
        ratios[name] = kwargs.pop("sample_ratio", None)
        builder = registry.get("dataset", name)
        params = inspect.signature(builder).parameters
        for proc in ("vis_processor", "text_processor"):
            if proc in kwargs:
                kwargs[proc] = build_processor(kwargs[proc][split], preprocessing, f"datasets.{name}.{proc}.{split}")
        if "prompt_tokenizer" in params:
            kwargs["prompt_tokenizer"] = prompt_tokenizer
        eval_root = kwargs.pop("eval_root", None)
        if split == "eval":
            if not eval_root:
                continue
            kwargs["root"] = eval_root
            if "feature_cache" in kwargs:
                kwargs["feature_cache"] = None
            if "eval_split" in kwargs:
                kwargs["split"] = kwargs["eval_split"]
        built.append(builder(**kwargs))
        names.append(name)
    if not built:
        return None
    cached = [capabilities_of(ds).reads_features for ds in built]
    if any(cached) and not all(cached):
        raise DatasetError(f"datasets {', '.join(names)}: either all or none of the training datasets must set "
                           "feature_cache (a batch holds either images or cached features)")
    if split == "train" and not all(capabilities_of(ds).map_style for ds in built):
        if len(built) > 1:
            raise DatasetError(f"datasets {', '.join(names)}: a dataset in shards (format: webdataset) must be the "
                               "only training dataset; write one shard set from all sources instead")
        return built[0]
    if split != "train":
        return MixedDataset(built, seed)
    try:
        return MixedDataset(built, seed, ratios=mixing_ratios({name: ratios[name] for name in names}))
    except ValueError as exc:
        raise ConfigError(first_line(exc)) from None


def build_feature_cache_job(cfg: DictConfig, dataset: str | None = None):
    """What `python cache_features.py` encodes: (encoder, images, source record).

    The encoder is the model's `encoder` section alone (no LLM is loaded).  The images are
    dataset `dataset`'s `root` (the only dataset when None) in its format, read with its
    `vis_processor.eval` and `text_processor.eval` and without a feature cache.  The source
    record (dataset, root, format, split, vis_processor, encoder checkpoint) goes into the
    cache's manifest.
    """
    components.register_all()
    model_cfg = _kwargs(cfg.model)
    sections = getattr(registry.get("model", model_cfg["arch"]), "CONFIG_SECTIONS", {})
    if "encoder" not in sections:
        raise ValueError(f"model.arch {model_cfg['arch']} has no image encoder to cache features of")
    datasets = _kwargs(cfg.datasets)
    if dataset is None:
        if len(datasets) != 1:
            raise ValueError(f"the config lists datasets {', '.join(datasets)}; name one with --dataset")
        dataset = next(iter(datasets))
    if dataset not in datasets:
        raise ValueError(f"dataset {dataset!r} is not in the config (datasets: {', '.join(datasets)})")
    kwargs = dict(datasets[dataset])
    kwargs.pop("sample_ratio", None)  # how training mixes it, not how it is read
    if "vis_processor" not in kwargs:
        raise ValueError(f"datasets.{dataset} has no images to encode")
    if not dataset_format(kwargs["format"], f"datasets.{dataset}").capabilities.cache_features:
        raise ValueError(f"datasets.{dataset}: format {kwargs['format']} cannot be encoded into a feature cache")
    encoder = sections["encoder"](**model_cfg["encoder"])
    processor = dict(kwargs["vis_processor"]["eval"])
    kwargs["vis_processor"] = build_processor(processor, encoder.preprocessing, f"datasets.{dataset}.vis_processor.eval")
    processor["image_size"] = kwargs["vis_processor"].image_size  # as used: the encoder's
    kwargs["text_processor"] = build_processor(kwargs["text_processor"]["eval"])
    kwargs.pop("eval_root", None)
    kwargs["feature_cache"] = None
    images = registry.get("dataset", dataset)(**kwargs)
    source = {"dataset": dataset, "root": kwargs["root"], "format": kwargs["format"], "split": kwargs["split"],
              "vis_processor": processor, "checkpoint": model_cfg["encoder"].get("checkpoint")}
    return encoder, images, source


def build_lr_schedule(section: Any):
    """A registered LR schedule from {name, ...kwargs}."""
    kwargs = _kwargs(section)
    return registry.get("lr_schedule", kwargs.pop("name"))(**kwargs)


def build_runner(cfg: DictConfig, model, train_set, eval_set, dist):
    """The registered runner named by run.runner, with the run section's arguments."""
    components.register_all()
    run = _kwargs(cfg.run)
    run.pop("device")
    run.pop("dist_backend")
    cls = registry.get("runner", run.pop("runner"))
    run = settings_arguments(cls, run, "run")
    task = registry.get("task", run.pop("task"))()
    schedule = build_lr_schedule(run.pop("lr_sched"))
    return cls(
        model=model, datasets=(train_set, eval_set), task=task, lr_schedule=schedule,
        config=OmegaConf.to_yaml(cfg), dist=dist, model_factory=lambda: build_model(cfg.model, cfg.run.seed), **run,
    )


def build_distributed(cfg: DictConfig):
    """Join torchrun's process group (if any) on run.device with run.dist_backend."""
    from xraygpt.runtime import init_distributed

    return init_distributed(cfg.run.device, cfg.run.dist_backend)


def load_eval_config(path: str | Path, options: list[str] | None = None) -> DictConfig:
    """An evaluation config: `model`, `datasets` (each `root` is the split evaluated) and `evaluation`."""
    return load_config(path, options, required=("model", "datasets", "evaluation"),
                       settings={"evaluation": evaluator.ReportEvaluator})


def evaluated_splits(cfg: DictConfig) -> dict:
    """The `datasets` section with each `root` (and `split`) as the held-out split `build_datasets` reads."""
    datasets = OmegaConf.to_container(cfg.datasets, resolve=True)
    for name, ds in datasets.items():
        if ds["eval_root"]:
            raise ValueError(f"datasets.{name}.eval_root is not read by evaluate.py: put the split to evaluate in "
                             f"datasets.{name}.root")
        ds.update(eval_root=ds["root"], **({"eval_split": ds["split"]} if "split" in ds else {}))  # studies: no split
    return datasets


def _check_evaluation(cfg: DictConfig) -> None:
    """What evaluate.py refuses before loading anything: no checkpoint, an `eval_root`, a bad setting."""
    if not cfg.model.ckpt:
        raise ConfigError("model.ckpt is not set: evaluation needs the trained projection checkpoint")
    evaluated_splits(cfg)
    evaluator.check_settings(cfg.evaluation.batch_size, cfg.evaluation.image_mode, cfg.evaluation.backend)


# job: (the section that declares it, its entry point, its loader, its checks after loading)
JOBS = {
    "training": ("run", "train.py", load_config, None),
    "evaluation": ("evaluation", "evaluate.py", load_eval_config, _check_evaluation),
    "demo": ("demo", "demo.py", load_demo_config, demo_settings),
    "serve": ("serve", "serve.py", load_serve_config, serve_settings),
}


def declared_job(path: str | Path, user: DictConfig | None = None) -> str | None:
    """The job a config file declares by its sections (`run`: training, `evaluation`, `demo`); None
    when it declares none; ConfigError naming the file when it declares more than one."""
    user = read_yaml(path) if user is None else user
    declared = [job for job, (section, *_) in JOBS.items() if section in user]
    if len(declared) > 1:
        sections = " and ".join(f"{JOBS[job][0]!r} ({JOBS[job][1]})" for job in declared)
        raise ConfigError(f"{path}: declares {len(declared)} jobs, sections {sections}; a config file holds one job")
    return declared[0] if declared else None


def load_job_config(cfg_path: str | Path | None, options: list[str] | None = None,
                    job: str | None = None, model_folder: str | Path | None = None) -> tuple[str, DictConfig]:
    """(job, validated config) of a config file, every default filled in.

    The job is the one the file declares (`declared_job`): `run` -> training (train.py),
    `evaluation` -> evaluation (evaluate.py), `demo` -> demo (demo.py). An entry point passes
    its own `job`: a file declaring another job is refused, one declaring none is read as that
    job (a demo config's `demo` section is optional). Without `job` a file must declare one.

    Validation is everything the entry point checks before loading weights or data: the file's
    sections, unknown keys, types and required keys of every section (`config.load_config` with
    the job's sections), plus for evaluation `model.ckpt` set, no `eval_root`, and the values
    `ReportEvaluator` refuses, and for the demo the values `DemoSettings` refuses. Paths are not
    opened: a checkpoint, LLM folder or dataset that is not there yet fails when it is built.

    `model_folder` (an exported model folder, an entry point's `--model FOLDER`): its model
    section (`model_section_from_folder`) replaces the file's `model` before `options` apply
    (`--options model.llm.quantization=8bit` still works); `cfg_path` may then be None for a job
    that needs no other section (the demo: a config is the file's sections, here none).

    Raises ConfigError in one line `<file>: <problem naming the key>` (a model folder's own
    problems: `ModelFolderError`, naming the folder's file).
    """
    if cfg_path is None and model_folder is None:
        raise ValueError("load_job_config needs a config file, a model folder or both")
    path = Path(cfg_path) if cfg_path is not None else Path(model_folder)
    user = read_yaml(path) if cfg_path is not None else OmegaConf.create({})
    if model_folder is not None:
        user["model"] = model_section_from_folder(model_folder)
    declared = declared_job(path, user)
    known = ", ".join(f"{section!r} ({entry})" for section, entry, *_ in JOBS.values())
    if job is not None and job not in JOBS:
        raise ValueError(f"unknown job {job!r} (known: {', '.join(JOBS)})")
    if declared is None and job is None:
        raise ConfigError(f"{path}: declares no job; a config file holds one of the sections {known}")
    if job is not None and declared not in (None, job):
        section, entry = JOBS[declared][:2]
        raise ConfigError(f"{path}: declares the {declared} job (section {section!r}), which {JOBS[job][1]} does "
                          f"not run; run it with {entry}")
    job = job or declared
    _, _, load, check = JOBS[job]
    try:
        cfg = load(path if model_folder is None else user, options)  # load_config takes a file or what was read
        if check is not None:
            check(cfg)
    except ValueError as exc:
        raise ConfigError(f"{path}: {first_line(exc)}") from None
    return job, cfg
