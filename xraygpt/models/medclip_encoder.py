"""MedCLIP's vision tower rebuilt on transformers' Swin, loading MedCLIP's released checkpoint.

MedCLIP (Wang et al., 2022) pairs a Swin-T image encoder with a 768 -> 512 projection head.
Its PyPI package (0.0.3) cannot import under transformers 5 and downloads weights from a hub in
its constructors, so we rebuild the vision part here: `model` is a transformers `SwinModel`
built from an in-repo config (`configs/swin_tiny_medclip.json`, Swin-T) and `projection_head`
is `nn.Linear(768, 512, bias=False)`.  Parameter names match MedCLIP's released vision weights
(`vision_model.model.*`, `vision_model.projection_head.weight`) once the transformers 4.x Swin
names in that file are mapped to the 5.x names (`map_swin_v4_keys`).

Outputs (see `MedCLIPVisionEncoder.forward`):
- ``patch``  (default): the final-stage patch tokens, (B, 49, 768) for Swin-T at 224 px.
- ``pooled``: the paper's pooled, projected feature, (B, 1, 512).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers import SwinConfig, SwinModel

from xraygpt.data.transforms import MEDCLIP_PREPROCESSING, ImagePreprocessing

logger = logging.getLogger(__name__)

DEFAULT_SWIN_CONFIG = Path(__file__).parent / "configs" / "swin_tiny_medclip.json"
OUTPUT_MODES = ("patch", "pooled")
CHECKPOINT_FILENAMES = ("pytorch_model.bin", "model.safetensors", "pytorch_model.pt")

# THE map between transformers 4.x Swin parameter names (MedCLIP's released file) and 5.x names:
# (4.x fragment, 5.x fragment), applied in order by `map_swin_v4_keys`; `swin_v5_to_v4` applies
# the same pairs reversed, in reverse order.  The block-level `.output.dense.` (MLP fc2) comes
# after `.attention.output.dense.`, which it would otherwise also match.
SWIN_V4_TO_V5 = (
    (".attention.self.query.", ".attention.q_proj."),
    (".attention.self.key.", ".attention.k_proj."),
    (".attention.self.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
    (".attention.self.relative_position_bias_table", ".attention.relative_position_bias.relative_position_bias_table"),
    (".attention.self.relative_position_index", ".attention.relative_position_bias.relative_position_index"),
    (".intermediate.dense.", ".mlp.fc1."),
    (".output.dense.", ".mlp.fc2."),
)


def swin_v4_to_v5(key: str) -> str:
    """One 4.x Swin parameter name in 5.x names (a 5.x name passes through unchanged)."""
    for v4, v5 in SWIN_V4_TO_V5:
        key = key.replace(v4, v5)
    return key


def swin_v5_to_v4(key: str) -> str:
    """The inverse of `swin_v4_to_v5`, derived from the same table."""
    for v4, v5 in reversed(SWIN_V4_TO_V5):
        key = key.replace(v5, v4)
    return key


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

class EncoderCheckpointError(ValueError):
    """A MedCLIP checkpoint that is missing, unreadable or for another architecture."""


def map_swin_v4_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename transformers 4.x Swin keys to 5.x names; drop `relative_position_index` buffers.

    Keys already in 5.x names pass through unchanged, so the function is idempotent.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("relative_position_index"):
            continue  # a derived buffer, rebuilt by the module and no longer stored in 5.x
        mapped[swin_v4_to_v5(key)] = value
    return mapped


def resolve_checkpoint_file(path: str | os.PathLike) -> Path:
    """The weights file for `path`: the file itself, or the known file name inside a folder."""
    p = Path(path)
    if p.is_dir():
        for name in CHECKPOINT_FILENAMES:
            if (p / name).is_file():
                return p / name
        raise EncoderCheckpointError(
            f"MedCLIP checkpoint folder {p} holds none of {', '.join(CHECKPOINT_FILENAMES)}"
        )
    if not p.is_file():
        raise EncoderCheckpointError(f"MedCLIP checkpoint {p} does not exist")
    return p


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` or torch file, loaded safely (never unpickling objects)."""
    file = resolve_checkpoint_file(path)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file), device="cpu")
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted file, pickled objects, not a checkpoint at all
        raise EncoderCheckpointError(f"cannot read MedCLIP checkpoint {file}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderCheckpointError(f"MedCLIP checkpoint {file} is not a flat dict of tensors")
    return state


def extract_vision_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The vision-model part of a full MedCLIP state dict, with the `vision_model.` prefix removed.

    Text-model keys (`text_model.*`) and `logit_scale` are ignored and counted in the log.  A
    dict without any `vision_model.` key is taken to be a bare vision state dict.
    """
    if not any(k.startswith("vision_model.") for k in state):
        return dict(state)
    vision: dict[str, torch.Tensor] = {}
    ignored = 0
    for key, value in state.items():
        if key.startswith("vision_model."):
            vision[key[len("vision_model.") :]] = value
        elif key.startswith("text_model.") or key == "logit_scale":
            ignored += 1
        else:
            raise EncoderCheckpointError(
                f"MedCLIP checkpoint {source} has an unexpected key {key!r} "
                "(expected vision_model.*, text_model.* or logit_scale)"
            )
    if ignored:
        logger.info("MedCLIP checkpoint %s: ignored %d text-model/logit_scale tensors", source, ignored)
    return vision


def load_swin_config(path: str | os.PathLike | None) -> SwinConfig:
    """A SwinConfig from a JSON file; None gives the in-repo MedCLIP Swin-T config."""
    file = Path(path) if path is not None else DEFAULT_SWIN_CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"Swin config {file} does not exist")
    return SwinConfig.from_json_file(str(file))


class MedCLIPVisionEncoder(nn.Module):
    """Swin backbone (`model`) + MedCLIP projection head (`projection_head`, no bias).

    Args:
        swin_config: the backbone's architecture.
        projection_dim: output width of the projection head (MedCLIP: 512).
        output: ``patch`` -> (B, N, hidden) final-stage tokens, ``pooled`` -> (B, 1, projection_dim).
    """

    def __init__(self, swin_config: SwinConfig, projection_dim: int = 512, output: str = "patch"):
        super().__init__()
        if output not in OUTPUT_MODES:
            raise ValueError(f"encoder output must be one of {OUTPUT_MODES}, got {output!r}")
        self.output = output
        self.model = SwinModel(swin_config, add_pooling_layer=True)
        self.projection_head = nn.Linear(self.model.num_features, projection_dim, bias=False)
        grid = swin_config.image_size // swin_config.patch_size
        grid = -(-grid // 2 ** (len(swin_config.depths) - 1))  # ceil: Swin pads odd grids
        self.image_size: int = swin_config.image_size
        self.num_patch_tokens: int = grid * grid

    @property
    def preprocessing(self) -> ImagePreprocessing:
        """The images this encoder takes: its Swin config's image_size, MedCLIP's mean and std.
        Datasets and the chat build their image processors from it."""
        return dataclasses.replace(MEDCLIP_PREPROCESSING, image_size=self.image_size)

    @property
    def num_tokens(self) -> int:
        """Image tokens per image handed to the projector."""
        return self.num_patch_tokens if self.output == "patch" else 1

    @property
    def output_dim(self) -> int:
        """Width of each image token."""
        return self.model.num_features if self.output == "patch" else self.projection_head.out_features

    def weights_sha256(self) -> str:
        """SHA-256 of the weights as loaded (each tensor's name, dtype, shape and bytes, by name).

        Identifies the encoder a feature cache was made with: the same weights give the same
        hash whatever file held them (4.x or 5.x names, .bin or .safetensors).
        """
        return state_sha256(self.state_dict())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, num_tokens, output_dim) features."""
        out = self.model(pixel_values=pixel_values)
        if self.output == "patch":
            return out.last_hidden_state
        return self.projection_head(out.pooler_output).unsqueeze(1)

    def load_medclip_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a MedCLIP state dict (4.x or 5.x Swin names) strictly into this module."""
        vision = map_swin_v4_keys(extract_vision_state(state, source))
        expected = self.state_dict()
        missing = [k for k in expected if k not in vision]
        unexpected = [k for k in vision if k not in expected]
        if unexpected:
            raise EncoderCheckpointError(
                f"MedCLIP checkpoint {source} has {len(unexpected)} weights this Swin config does "
                f"not define, first: vision_model.{unexpected[0]} (a checkpoint for another architecture?)"
            )
        for key, value in vision.items():
            if key not in expected:
                continue
            if value.shape != expected[key].shape:
                raise EncoderCheckpointError(
                    f"MedCLIP checkpoint {source}: vision_model.{key} has shape {tuple(value.shape)}, "
                    f"this Swin config expects {tuple(expected[key].shape)} (another architecture?)"
                )
        if missing:
            raise EncoderCheckpointError(
                f"MedCLIP checkpoint {source} lacks {len(missing)} backbone weights, first: "
                f"vision_model.{missing[0]}"
            )
        self.load_state_dict(vision, strict=True)

    def medclip_state_dict(self, names: str = "v4") -> dict[str, torch.Tensor]:
        """This encoder's weights as MedCLIP releases them (`vision_model.` prefix, 4.x names).

        `names="v5"` keeps transformers 5 names.  Used to write checkpoints in the real format.
        """
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        if names == "v4":
            state = _to_v4_names(state, self)
        return {f"vision_model.{k}": v for k, v in state.items()}


def _to_v4_names(state: dict[str, torch.Tensor], encoder: MedCLIPVisionEncoder) -> dict[str, torch.Tensor]:
    """Inverse of `map_swin_v4_keys` (`swin_v5_to_v4`), re-adding the `relative_position_index`
    buffers 4.x stored."""
    out = {swin_v5_to_v4(key): value for key, value in state.items()}
    for name, buf in encoder.named_buffers():
        if name.endswith("relative_position_index"):
            out[swin_v5_to_v4(name)] = buf.clone()
    return out


def load_medclip_vision_encoder(
    checkpoint: str | None = None,
    swin_config: str | None = None,
    output: str = "patch",
    projection_dim: int = 512,
) -> MedCLIPVisionEncoder:
    """Build the encoder from a Swin config and load MedCLIP's released vision weights.

    Args:
        checkpoint: MedCLIP `pytorch_model.bin` / `.safetensors`, or the folder holding it.
            None keeps random weights (benchmarks only; logged as a warning).
        swin_config: a Swin config JSON; None = the in-repo MedCLIP Swin-T.
        output: ``patch`` or ``pooled`` (see module docstring).
        projection_dim: width of MedCLIP's projection head.
    """
    encoder = MedCLIPVisionEncoder(load_swin_config(swin_config), projection_dim, output)
    if checkpoint is None:
        logger.warning("MedCLIP encoder: no checkpoint given, weights are RANDOM")
        return encoder
    file = resolve_checkpoint_file(checkpoint)
    encoder.load_medclip_state(read_state_dict(file), str(file))
    logger.info("MedCLIP encoder loaded from %s (output=%s, %d tokens x %d)", file, output,
                encoder.num_tokens, encoder.output_dim)
    return encoder
