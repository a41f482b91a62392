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
    export.json                format version, source run and checkpoint step
    metrics.json               the run's evaluation metrics (when there were any)
    README.md                  the model card (`xraygpt.models.model_card`)

Reading a folder (`check_model_folder`, `resolve_paths`, `verify_llm_reference`) refuses in one
line naming the missing or changed file; parsing `model.yaml` as config is the builders' job
(`builders.model_section_from_folder`).
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
            what = "the LLM folder it references" if key == ("llm", "path") and Path(value).is_absolute() else "missing"
            raise ModelFolderError(f"{path} is missing ({folder / MODEL_FILE}: model.{_key_name(key)}; {what})")
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
