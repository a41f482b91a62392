"""What produced an evaluation folder's predictions: the model, the split and the generation settings.

`fingerprint.json` beside the predictions holds

    {"model": {"trainable_sha256": ..., "encoder_sha256": ..., "llm": {"path": ..., "config_sha256": ...}},
     "split": {"images": N, "sha256": ...},          ids and references, in split order
     "generation": {"backend", "image_mode", "seed", "max_new_tokens", "num_beams", ...}}

`trainable_sha256` hashes the weights the checkpoint brought (the projection), `encoder_sha256`
every encoder weight; the LLM is named by its folder and config (hashing billions of frozen
weights would cost more than the evaluation).  A resumed evaluation must have the same
fingerprint as the folder's: otherwise its old predictions belong to another run, and scoring
them under the new settings would report stale metrics (`differences` names what changed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from xraygpt.models.medclip_encoder import state_sha256

FINGERPRINT = "fingerprint.json"


def model_fingerprint(model) -> dict:
    """The model's identity (see module docstring); `model` is an `XrayGPT`."""
    config = model.llm.config.to_dict()
    config.pop("_name_or_path", None)
    return {
        "trainable_sha256": state_sha256(model.trainable_state_dict()),
        "encoder_sha256": model.encoder.weights_sha256(),
        "llm": {"path": str(getattr(model.llm.config, "_name_or_path", "")),
                "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()},
    }


def split_fingerprint(ids: list[str], references: list[str]) -> dict:
    """The split's size and a hash of its (id, reference) pairs in order."""
    digest = hashlib.sha256(json.dumps(list(zip(ids, references)), ensure_ascii=False).encode("utf-8"))
    return {"images": len(ids), "sha256": digest.hexdigest()}


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two fingerprints."""
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def read_fingerprint(folder: Path) -> dict | None:
    """The folder's fingerprint.json, or None when it has none or it cannot be read."""
    path = folder / FINGERPRINT
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
