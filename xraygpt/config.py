"""Configuration: defaults from constructor signatures + the user's YAML + `--options key=value`.

Each default is defined once, in the signature of the constructor or builder that uses it; the
schema of each config section is derived from that signature (`signature_schema`).  Sections:

    model:    arch (a registered model) + the model constructor's arguments, plus one
              sub-section per entry of the model's CONFIG_SECTIONS (encoder, llm, prompt),
              plus `ckpt` (trainable weights to start from, e.g. stage 1 for stage 2).
    datasets: {name: builder arguments + vis_processor/text_processor: {train|eval: {name, ...}}}
    run:      task, runner, lr_sched: {name, ...} + the runner's arguments.

Entry points other than training (`evaluate.py`, `demo.py`) read `model` (and `datasets` when
they need data) plus one section of their own, whose schema is the signature of the settings
class they pass as `settings={"evaluation": EvaluationSettings}`; `required` names the sections
that must be present (training: model, datasets, run).

A constructor argument that takes a settings object (a dataclass: `GenerationSettings` for the
evaluator's and the runner's `generation`) shows that object's fields as flat keys of its section
(`evaluation.max_new_tokens`, `run.num_beams`); `settings_arguments` gathers them back into the
object for the constructor, and `load_config` already builds it once, so its checks fail early.

`load_config` merges and validates; any unknown key, missing required key or wrong type exits
through `ConfigError` with a one-line message naming the key (and the closest valid key).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from xraygpt import components, registry
from xraygpt.errors import first_line

# Constructor arguments that builders pass as objects, never read from config.
INJECTED = {
    "encoder", "llm", "tokenizer", "prompt_format", "vis_processor", "text_processor",
    "model", "datasets", "task", "lr_schedule", "config", "prompt_tokenizer", "self", "dist", "preprocessing",
    "model_factory",
}


class ConfigError(ValueError):
    """A config problem, described in one line naming the key."""


def _normalise_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _normalise_type(args[0]) if len(args) == 1 else Any
        return Optional[inner] if type(None) in typing.get_args(tp) else inner
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return list[_normalise_type(args[0])] if args else list
    if origin is dict:
        return dict
    if tp in (str, int, float, bool, Any):
        return tp
    return Any


def _config_parameters(fn: Callable) -> list[tuple[str, inspect.Parameter, Any]]:
    """(name, parameter, type hint) of each argument of `fn` (or its class's __init__) that config sets."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    hints = typing.get_type_hints(target)
    return [(pname, param, hints.get(pname, Any)) for pname, param in inspect.signature(target).parameters.items()
            if pname not in INJECTED and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL)]


def _settings_object(tp: Any) -> bool:
    """Whether an argument of this type is a settings object (a dataclass, e.g. GenerationSettings) whose
    fields are flat keys of the section (`evaluation.max_new_tokens`), not a sub-section."""
    return inspect.isclass(tp) and dataclasses.is_dataclass(tp)


def signature_schema(fn: Callable, name: str, extra: dict[str, tuple[Any, Any]] | None = None) -> type:
    """A dataclass whose fields are `fn`'s config arguments (typed, with `fn`'s defaults).

    Arguments in INJECTED are skipped; an argument that takes a settings object (a dataclass such
    as `GenerationSettings`) contributes that object's fields, with the defaults of `fn`'s default
    object (`settings_arguments` gathers them back); `extra` adds fields as {name: (type, default)}.
    """
    fields = []
    for pname, param, hint in _config_parameters(fn):
        if _settings_object(hint):
            default_object = hint() if param.default is inspect.Parameter.empty else param.default
            field_hints = typing.get_type_hints(hint)
            fields += [(f.name, _normalise_type(field_hints[f.name]), dataclasses.field(default=getattr(default_object, f.name)))
                       for f in dataclasses.fields(hint)]
            continue
        tp = _normalise_type(hint)
        default = MISSING if param.default is inspect.Parameter.empty else param.default
        if isinstance(default, (list, dict)):
            fields.append((pname, tp, dataclasses.field(default_factory=lambda d=default: type(d)(d))))
        else:
            fields.append((pname, tp, dataclasses.field(default=default)))
    for fname, (tp, default) in (extra or {}).items():
        fields.append((fname, tp, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(name, fields)


def settings_arguments(fn: Callable, section: Any, path: str = "") -> dict:
    """A validated config section (flat keys) as keyword arguments of `fn`: the keys of each settings
    object `fn` takes (see `signature_schema`) are gathered into that object.

    Raises ConfigError naming the key (`{path}.{key}`) when the object refuses a value.
    """
    kwargs = dict(OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section)
    for pname, _, hint in _config_parameters(fn):
        if not _settings_object(hint):
            continue
        names = [f.name for f in dataclasses.fields(hint)]
        try:
            kwargs[pname] = hint(**{k: kwargs.pop(k) for k in names if k in kwargs})
        except (TypeError, ValueError) as exc:
            key = getattr(exc, "key", None)
            where = f"{path}.{key}" if path and key else (key or path)
            reason = getattr(exc, "reason", None) or first_line(exc)
            raise ConfigError(f"config key {where!r} {reason}" if key else f"bad value in config section {where!r}: {reason}") from None
    return kwargs


def _fail(exc: Exception, prefix: str, node: Any) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or ""
    full = f"{prefix}.{key}" if prefix and key else (prefix or str(key))
    if isinstance(exc, ConfigKeyError):
        bad = str(key).split(".")[-1]
        valid = list(node.keys()) if isinstance(node, DictConfig) else []
        hint = registry.closest(bad, valid)
        parent = full.rsplit(".", 1)[0] + "." if "." in full else ""
        hint_text = f" (did you mean '{parent}{hint}'?)" if hint else f" (valid keys: {', '.join(valid)})"
        return ConfigError(f"unknown config key {full!r}{hint_text}")
    if isinstance(exc, MissingMandatoryValue):
        return ConfigError(f"missing required config key {full!r}")
    msg = first_line(exc)
    return ConfigError(f"bad value for config key {full!r}: {msg}")


def _validate(node: Any, schema: type, path: str) -> DictConfig:
    """Merge `node` (dict-like) over `schema`'s defaults, checking keys, types and required keys."""
    base = OmegaConf.structured(schema)
    if node is None:
        node = {}
    if not isinstance(node, (dict, DictConfig)):
        raise ConfigError(f"config key {path!r} must be a mapping, got {type(node).__name__}")
    try:
        merged = OmegaConf.merge(base, node)
        OmegaConf.to_container(merged, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise _fail(exc, path, base) from None
    return merged


def _named(node: Any, kind: str, path: str, extra: dict | None = None) -> DictConfig:
    """Validate a `{name: <registered kind>, ...kwargs}` section against that entry's signature."""
    if not isinstance(node, (dict, DictConfig)) or "name" not in node:
        raise ConfigError(f"missing required config key '{path}.name' (one of: {', '.join(registry.names(kind))})")
    try:
        entry = registry.get(kind, node["name"])
    except registry.RegistryError as exc:
        raise ConfigError(f"{path}.name: {exc}") from None
    schema = signature_schema(entry, f"{kind}_{node['name']}", {"name": (str, MISSING), **(extra or {})})
    return _validate(node, schema, path)


def _split(node: DictConfig | dict, keys: tuple[str, ...]) -> tuple[dict, dict]:
    rest = {k: v for k, v in node.items() if k not in keys}
    picked = {k: node[k] for k in keys if k in node}
    return picked, rest


TRAINING_SECTIONS = ("model", "datasets", "run")


def validate(cfg: DictConfig, required: tuple[str, ...] = TRAINING_SECTIONS,
             settings: dict[str, Callable] | None = None) -> DictConfig:
    """Check a merged config (see module docstring); returns it with every default filled in.

    Args:
        required: top-level sections that must be present (`model` always is).
        settings: extra top-level sections of an entry point: {name: class or function whose
            signature is the section's schema}.
    """
    components.register_all()
    settings = settings or {}
    allowed = list(dict.fromkeys(["model", *required, *settings])) if settings else list(TRAINING_SECTIONS)
    for top in cfg.keys():
        if top not in allowed:
            hint = registry.closest(str(top), allowed)
            raise ConfigError(f"unknown config key {top!r}" + (f" (did you mean {hint!r})" if hint else "")
                              + f"; this entry point reads: {', '.join(allowed)}")
    for top in required:
        if top in settings and cfg.get(top) is None:
            raise ConfigError(f"missing required config key {top!r}")
    out: dict[str, Any] = {}

    model = cfg.get("model")
    if model is None or "arch" not in model:
        raise ConfigError(f"missing required config key 'model.arch' (one of: {', '.join(registry.names('model'))})")
    try:
        model_cls = registry.get("model", model.arch)
    except registry.RegistryError as exc:
        raise ConfigError(f"model.arch: {exc}") from None
    sections = getattr(model_cls, "CONFIG_SECTIONS", {})
    picked, rest = _split(model, tuple(sections))
    top_schema = signature_schema(model_cls, "model", {"arch": (str, MISSING), "ckpt": (Optional[str], None)})
    out_model = OmegaConf.to_container(_validate(rest, top_schema, "model"))
    for sec, fn in sections.items():
        out_model[sec] = OmegaConf.to_container(_validate(picked.get(sec), signature_schema(fn, sec), f"model.{sec}"))
    out["model"] = out_model

    for name, fn in settings.items():
        out[name] = OmegaConf.to_container(_validate(cfg.get(name), signature_schema(fn, name), name))
        settings_arguments(fn, out[name], name)

    datasets = cfg.get("datasets")
    if not datasets:
        if "datasets" not in required:
            return OmegaConf.create(out)
        raise ConfigError("missing required config key 'datasets' (e.g. datasets.mimic.root)")
    out["datasets"] = {}
    for ds_name, ds_node in datasets.items():
        path = f"datasets.{ds_name}"
        try:
            builder = registry.get("dataset", ds_name)
        except registry.RegistryError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        ds_node = ds_node or {}
        params = inspect.signature(builder).parameters
        proc_keys = tuple(k for k in ("vis_processor", "text_processor") if k in params)
        picked, rest = _split(ds_node, proc_keys)
        extra = {"eval_root": (Optional[str], None)} if "root" in params else {}
        extra["sample_ratio"] = (Optional[float], None)  # how training mixes it (builders.build_datasets)
        ds_out = OmegaConf.to_container(_validate(rest, signature_schema(builder, f"dataset_{ds_name}", extra), path))
        procs = {
            "vis_processor": {"train": {"name": "medclip_image_train"}, "eval": {"name": "medclip_image_eval"}},
            "text_processor": {"train": {"name": "caption"}, "eval": {"name": "caption"}},
        }
        for pkey in proc_keys:
            default = procs[pkey]
            given = picked.get(pkey) or {}
            for split in given:
                if split not in ("train", "eval"):
                    raise ConfigError(f"unknown config key '{path}.{pkey}.{split}' (expected train or eval)")
            ds_out[pkey] = {
                split: OmegaConf.to_container(_named(given.get(split, default[split]), "processor", f"{path}.{pkey}.{split}"))
                for split in ("train", "eval")
            }
        out["datasets"][ds_name] = ds_out
    try:
        from xraygpt.data.datasets import mixing_ratios
        mixing_ratios({name: ds["sample_ratio"] for name, ds in out["datasets"].items()})
    except ValueError as exc:
        raise ConfigError(first_line(exc)) from None

    run = cfg.get("run")
    if run is None and "run" not in required:
        return OmegaConf.create(out)
    if run is None:
        raise ConfigError("missing required config key 'run' (run.output_dir at least)")
    runner_name = run.get("runner", "runner_iter")
    task_name = run.get("task", "image_text_pretrain")
    try:
        runner_cls = registry.get("runner", runner_name)
        registry.get("task", task_name)  # tasks take no config arguments; validated by name
    except registry.RegistryError as exc:
        raise ConfigError(f"run: {exc}") from None
    picked, rest = _split(run, ("lr_sched",))
    run_schema = signature_schema(runner_cls, "run", {
        "runner": (str, runner_name), "task": (str, task_name),
        "device": (str, "auto"), "dist_backend": (str, "auto"),
    })
    out_run = OmegaConf.to_container(_validate(rest, run_schema, "run"))
    settings_arguments(runner_cls, out_run, "run")
    out_run["lr_sched"] = OmegaConf.to_container(
        _named(picked.get("lr_sched", {"name": "linear_warmup_cosine"}), "lr_schedule", "run.lr_sched")
    )
    out["run"] = out_run
    return OmegaConf.create(out)


def read_yaml(cfg_path: str | Path | DictConfig) -> DictConfig:
    """A config file as written (no defaults, no overrides); ConfigError naming the file when it is
    missing, not YAML, or not a mapping of sections.  A config already read (a DictConfig, e.g. a
    file whose `model` `builders.load_job_config` replaced with an exported model's) is returned as is."""
    if isinstance(cfg_path, DictConfig):
        return cfg_path
    path = Path(cfg_path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        user = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {first_line(exc)}") from None
    if not isinstance(user, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of sections (model: ..., run: ...), "
                          f"not a {type(user).__name__}")
    return user


def load_config(cfg_path: str | Path | DictConfig, options: list[str] | None = None,
                required: tuple[str, ...] = TRAINING_SECTIONS, settings: dict[str, Callable] | None = None) -> DictConfig:
    """Load a YAML file, apply `key=value` overrides, validate (see module docstring and `validate`)."""
    user = read_yaml(cfg_path)
    if options:
        bad = [o for o in options if "=" not in o]
        if bad:
            raise ConfigError(f"--options expects key=value pairs, got {bad[0]!r}")
        try:
            user = OmegaConf.merge(user, OmegaConf.from_dotlist(list(options)))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"bad --options: {first_line(exc)}") from None
    cfg = validate(user, required, settings)
    for key, interpolation in env_interpolations(OmegaConf.to_container(user, resolve=False)):
        OmegaConf.update(cfg, key, interpolation, force_add=True)
    return cfg


def env_interpolations(node: object, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every value of a raw config that reads an environment variable
    (`${oc.env:VAR}`).  `load_config` puts these back, unresolved, into the validated config:
    they resolve when read, and the YAML written to config.yaml and to checkpoints keeps the
    interpolation, not the value (a secret in an environment variable stays off disk)."""
    if isinstance(node, dict):
        return [pair for key, value in node.items() for pair in env_interpolations(value, f"{prefix}{key}.")]
    if isinstance(node, str) and "${oc.env:" in node:
        return [(prefix.rstrip("."), node)]
    return []
