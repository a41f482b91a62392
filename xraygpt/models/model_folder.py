"""One folder per trained model: what `python -m xraygpt.export` writes and `XrayGPT.from_pretrained` reads.

Layout of an exported folder (every relative path in `model.yaml` is relative to the folder, so
the folder can be copied or moved as a whole):

    model.yaml                 the run's resolved `model` config section, paths rewritten:
                                 ckpt: projection.safetensors
                                 encoder.checkpoint: encoder/model.safetensors
                                 encoder.swin_config: encoder/swin_config.json
                                 llm.path: llm   (or the referenced folder's absolute path)
    projection.safetensors     the trained weights (`XrayGPT.trainable_state_dict`: the projection
                               and its normalisation flag), as in the run's checkpoint_last.pt
    encoder/model.safetensors  the MedCLIP vision weights as released (`vision_model.*` names; the
                               text tower and logit_scale of a full MedCLIP file are left out)
    encoder/swin_config.json   the encoder's Swin config
    llm/                       the LLM folder (config, weights, tokenizer), copied; or instead
    llm_reference.json         {"sha256": {file name: hex digest}} of the config, weight and
                               tokenizer files of the folder `llm.path` names, checked at each load
    export.json                format version, the source run and its checkpoint
    metrics.json               the run's evaluation metrics (when there were any)
    README.md                  the model card (`xraygpt.models.model_card`)

Reading a folder (`read_model_section`: `model.yaml` validated as a model config section, its
paths resolved and checked, an LLM reference verified; `build_from_folder`: the model) refuses in
one line naming the missing or changed file.  This module sits below the builders (which
`XrayGPT.from_pretrained` cannot import without an import circle): `builders.model_section_from_folder`
is `read_model_section`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
import yaml

from xraygpt.atomic import atomic_folder

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.yaml"
PROJECTION_FILE = "projection.safetensors"
ENCODER_WEIGHTS = "encoder/model.safetensors"
ENCODER_CONFIG = "encoder/swin_config.json"
LLM_DIR = "llm"
LLM_REFERENCE = "llm_reference.json"
EXPORT_FILE = "export.json"
METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"

# (section, key) of every path in the model section; a relative one is relative to the folder
PATH_KEYS = ((None, "ckpt"), ("encoder", "checkpoint"), ("encoder", "swin_config"), ("llm", "path"))
# the LLM files a reference hashes: config, weights (and their index), tokenizer
REFERENCED_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".tiktoken")
# the only trained weights an export holds: the projection (stages 1 and 2)
TRAINED_PREFIX = "projector."


class ModelFolderError(ValueError):
    """A folder that is not a complete export, a changed LLM reference, or a run that cannot be exported."""


# ---------------------------------------------------------------------------------------- reading
def _get(section: dict, key: tuple[str | None, str]):
    sub, name = key
    node = section if sub is None else section.get(sub) or {}
    return node.get(name)


def _set(section: dict, key: tuple[str | None, str], value) -> None:
    sub, name = key
    (section if sub is None else section.setdefault(sub, {}))[name] = value


def _key_name(key: tuple[str | None, str]) -> str:
    return ".".join(k for k in key if k)


def check_model_folder(folder: str | os.PathLike) -> Path:
    """The folder, when it holds `model.yaml`; ModelFolderError naming what is missing otherwise."""
    path = Path(folder)
    if not path.is_dir():
        raise ModelFolderError(f"model folder {path} does not exist")
    if not (path / MODEL_FILE).is_file():
        raise ModelFolderError(f"{path / MODEL_FILE} is missing: {path} is not a model folder written by "
                               "python -m xraygpt.export")
    return path


def resolve_paths(section: dict, folder: str | os.PathLike) -> dict:
    """`section` (a model config section read from `folder`/model.yaml) with every relative path made
    relative to `folder` and checked to exist; ModelFolderError naming the first missing file."""
    folder = Path(folder)
    out = json.loads(json.dumps(section))  # a deep copy of plain data
    for key in PATH_KEYS:
        value = _get(out, key)
        if value is None:
            continue
        path = Path(value) if Path(value).is_absolute() else folder / value
        if not path.exists():
            if key == ("llm", "path") and (folder / LLM_REFERENCE).is_file():
                raise ModelFolderError(f"LLM folder {path} referenced by {folder / LLM_REFERENCE} does not exist")
            raise ModelFolderError(f"{path} is missing ({folder / MODEL_FILE}: model.{_key_name(key)})")
        _set(out, key, str(path))
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def llm_file_digests(llm_folder: str | os.PathLike) -> dict[str, str]:
    """{file name: sha256} of the LLM folder's config, weight and tokenizer files (top level, not hidden)."""
    folder = Path(llm_folder)
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.endswith(REFERENCED_SUFFIXES)}


def verify_llm_reference(folder: str | os.PathLike, llm_path: str | os.PathLike) -> None:
    """When `folder` holds an LLM reference, check that `llm_path` still has the recorded files, byte
    for byte; ModelFolderError in one line naming the first file that is missing, changed or new."""
    reference = Path(folder) / LLM_REFERENCE
    if not reference.is_file():
        return
    try:
        recorded = json.loads(reference.read_text(encoding="utf-8"))["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFolderError(f"{reference} is not an LLM reference written by python -m xraygpt.export: {exc}") from None
    llm = Path(llm_path)
    if not llm.is_dir():
        raise ModelFolderError(f"LLM folder {llm} referenced by {reference} does not exist")
    current = llm_file_digests(llm)
    hint = "re-export the run (or export with the LLM copied, without --llm-reference)"
    for name, digest in recorded.items():
        if name not in current:
            raise ModelFolderError(f"LLM folder {llm} referenced by {reference} has no {name} any more; {hint}")
        if current[name] != digest:
            raise ModelFolderError(f"{llm / name} has changed since the export ({reference} records sha256 "
                                   f"{digest[:12]}..., the file has {current[name][:12]}...); {hint}")
    extra = sorted(set(current) - set(recorded))
    if extra:
        raise ModelFolderError(f"LLM folder {llm} referenced by {reference} has a file the export did not record: "
                               f"{extra[0]}; {hint}")
    logger.info("LLM folder %s matches %s (%d files)", llm, reference, len(recorded))


def read_model_section(folder: str | os.PathLike) -> dict:
    """The `model` config section of an exported folder: `model.yaml` validated like a config file's
    `model` (every default filled in), its paths absolute (relative ones are relative to the
    folder) and checked to exist, the referenced LLM (if any) checked against its recorded sha256.
    Opens no weights.  ModelFolderError in one line naming the folder's file."""
    from omegaconf import OmegaConf

    from xraygpt.config import read_yaml, validate
    from xraygpt.errors import first_line

    path = check_model_folder(folder)
    raw = read_yaml(path / MODEL_FILE)
    try:
        section = validate(OmegaConf.create({"model": raw}), required=("model",)).model
    except ValueError as exc:
        raise ModelFolderError(f"{path / MODEL_FILE}: {first_line(exc)}") from None
    resolved = resolve_paths(OmegaConf.to_container(section, resolve=True), path)
    verify_llm_reference(path, resolved["llm"]["path"])
    return resolved


def read_projection(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The trained weights of a folder's projection.safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from xraygpt.errors import first_line

    if not Path(path).is_file():
        raise ModelFolderError(f"trained weights {path} do not exist")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelFolderError(f"cannot read trained weights {path}: {first_line(exc)}") from None


def build_from_folder(cls, folder: str | os.PathLike):
    """`cls` (a model class with CONFIG_SECTIONS, e.g. XrayGPT) built from an exported folder, with its
    trained weights loaded: what `builders.build_model` does with the folder's section (the builders
    sit above the model classes, so `from_pretrained` comes here)."""
    from xraygpt import registry
    from xraygpt.models.assemble import assemble_model

    section = read_model_section(folder)
    if registry.get("model", section["arch"]) is not cls:
        raise ModelFolderError(f"{Path(folder) / MODEL_FILE}: model.arch {section['arch']} is not {cls.__name__}")
    model = assemble_model(cls, section)
    model.load_trainable_state_dict(read_projection(section["ckpt"]), section["ckpt"])
    logger.info("loaded %s from %s", cls.__name__, folder)
    return model


# ---------------------------------------------------------------------------------------- writing
def _refuse_unless(condition: bool, message: str) -> None:
    if not condition:
        raise ModelFolderError(message)


def _vision_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The vision part of a MedCLIP checkpoint, in its own names (`vision_model.*`, or a bare vision dict)."""
    from xraygpt.models.medclip_encoder import read_state_dict

    state = read_state_dict(checkpoint)
    if any(k.startswith("vision_model.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith("vision_model.")}
    return {k: v.detach().clone().contiguous() for k, v in state.items()}  # safetensors refuses shared storage


def _out_is_free(out: Path, force: bool, sources: dict[str, Path]) -> None:
    target = out.resolve()
    for what, source in sources.items():
        where = source.resolve()
        if target == where or target in where.parents:
            raise ModelFolderError(f"--out {out} holds the {what} it exports ({source}); write the folder elsewhere")
    if out.exists() and not out.is_dir():
        raise ModelFolderError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ModelFolderError(f"--out {out} exists and is not empty (--force replaces it)")


def export_run(run: str | os.PathLike, config: dict, checkpoint: str | os.PathLike, trained: dict[str, torch.Tensor],
               out: str | os.PathLike, llm_reference: bool = False, metrics: str | os.PathLike | None = None,
               force: bool = False) -> Path:
    """Write the model folder of a training run (layout: module docstring); returns `out`.

    Args:
        run: the run's output_dir (config.yaml, log.jsonl, samples.jsonl, metrics.json).
        config: the run's config.yaml, validated (a plain dict with `model`, `datasets`, `run`);
            its relative paths are relative to the working directory, as in training.
        checkpoint: the run's last checkpoint (recorded as the source) and `trained`, its trained
            weights (`builders.read_trainable_weights`: the builders read training checkpoints).
        out: the folder to write: new, empty, or (with `force`) replaced once the new one is complete.
        llm_reference: record the LLM folder's path and the sha256 of its files instead of copying it.
        metrics: a metrics.json to copy and summarise; default `run`/metrics.json when present.
    The folder is written under a temporary name and renamed when complete (`atomic_folder`): a
    failed or killed export leaves no folder.  Refused in one line naming the path (ModelFolderError):
    a run without checkpoint, a model without encoder weights or LLM folder, an `out` in use.
    """
    from safetensors.torch import save_file

    from xraygpt.models import model_card
    from xraygpt.models.medclip_encoder import DEFAULT_SWIN_CONFIG, load_swin_config, resolve_checkpoint_file

    run, out = Path(run), Path(out)
    model = json.loads(json.dumps(config["model"]))
    source = f"{run / 'config.yaml'}: model"
    _refuse_unless("encoder" in model and "llm" in model,
                   f"{source}.arch {model.get('arch')} has no image encoder and LLM to export (a stage-0 run? "
                   "its LLM is its hf_model folder, which stages 1-2 load)")
    encoder = model["encoder"]
    _refuse_unless(bool(encoder.get("checkpoint")), f"{source}.encoder.checkpoint is not set (random encoder "
                                                    "weights cannot be exported)")
    _refuse_unless(Path(encoder["checkpoint"]).exists(),
                   f"encoder weights {encoder['checkpoint']} do not exist ({source}.encoder.checkpoint)")
    swin_config = Path(encoder["swin_config"]) if encoder.get("swin_config") else DEFAULT_SWIN_CONFIG
    _refuse_unless(swin_config.is_file(), f"Swin config {swin_config} does not exist ({source}.encoder.swin_config)")
    llm = Path(model["llm"]["path"])
    _refuse_unless(llm.is_dir(), f"LLM folder {llm} does not exist ({source}.llm.path)")
    metrics_file = Path(metrics) if metrics is not None else run / METRICS_FILE
    _refuse_unless(metrics is None or metrics_file.is_file(), f"metrics file {metrics_file} does not exist")
    metrics_data = None
    if metrics_file.is_file():
        try:
            metrics_data = json.loads(metrics_file.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise ModelFolderError(f"metrics file {metrics_file} cannot be read as JSON: {exc}") from None
    _out_is_free(out, force, {"run": run, "checkpoint": Path(checkpoint), "LLM folder": llm, "Swin config": swin_config,
                              "encoder weights": Path(encoder["checkpoint"]), "metrics file": metrics_file})

    other = [k for k in trained if not k.startswith(TRAINED_PREFIX)]
    _refuse_unless(not other, f"{checkpoint} holds trained weights other than the projection, first {other[:1]}: "
                              "export writes models whose only trained part is the projection")
    encoder_file = resolve_checkpoint_file(encoder["checkpoint"])
    swin = load_swin_config(swin_config)

    card = model_card.CardFacts(
        name=str(out), model=config["model"], run=config.get("run") or {},
        datasets=[model_card.dataset_facts(n, ds) for n, ds in (config.get("datasets") or {}).items()],
        trained={k: list(v.shape) for k, v in trained.items()},
        log=model_card.log_facts(run), metrics=metrics_data,
        samples=model_card.sample_facts(run),
        llm=model_card.llm_facts(llm, copied=not llm_reference),
        encoder={"source": str(encoder_file), "image_size": swin.image_size, "output": encoder.get("output")},
        source_run=str(run))

    model["ckpt"] = PROJECTION_FILE
    model["encoder"].update(checkpoint=ENCODER_WEIGHTS, swin_config=ENCODER_CONFIG)
    model["llm"]["path"] = str(llm.resolve()) if llm_reference else LLM_DIR
    trash = out.with_name(f".{out.name}.{os.getpid()}.replaced")
    try:
        with atomic_folder(out) as tmp:
            save_file({k: v.contiguous() for k, v in trained.items()}, str(tmp / PROJECTION_FILE),
                      metadata={"source": str(checkpoint)})
            (tmp / "encoder").mkdir()
            save_file(_vision_weights(encoder_file), str(tmp / ENCODER_WEIGHTS), metadata={"source": str(encoder_file)})
            shutil.copyfile(swin_config, tmp / ENCODER_CONFIG)
            if llm_reference:
                digests = llm_file_digests(llm)
                (tmp / LLM_REFERENCE).write_text(json.dumps({"sha256": digests}, indent=1))  # the path: model.yaml's llm.path
            else:
                shutil.copytree(llm, tmp / LLM_DIR, ignore=shutil.ignore_patterns(".*"))
            header = ("# The model section of the run this folder was exported from (python -m xraygpt.export).\n"
                      "# Relative paths are relative to this folder. Load with XrayGPT.from_pretrained(folder)\n"
                      "# or --model FOLDER (evaluate.py, demo.py, serve.py).\n")
            (tmp / MODEL_FILE).write_text(header + yaml.safe_dump(model, sort_keys=False, allow_unicode=True))
            (tmp / EXPORT_FILE).write_text(json.dumps({
                "format_version": FORMAT_VERSION, "run": str(run), "checkpoint": str(checkpoint),
                "llm": "reference" if llm_reference else "copied"}, indent=1))
            if metrics_data is not None:
                shutil.copyfile(metrics_file, tmp / METRICS_FILE)
            (tmp / CARD_FILE).write_text(model_card.render_card(card), encoding="utf-8")
            if out.exists():  # empty, or replaced with --force: moved aside only now that the new one is whole
                os.rename(out, trash)
    except BaseException:
        if trash.exists() and not out.exists():
            os.rename(trash, out)
        raise
    if trash.exists():
        shutil.rmtree(trash)
    logger.info("exported %s (%s) to %s (LLM %s)", run, checkpoint, out,
                "referenced" if llm_reference else "copied")
    return out
