"""Image-summary datasets in XrayGPT's layout, and the `mimic` / `openi` dataset builders.

Layout of a dataset root (XrayGPT's):

    <root>/filter_cap.json     {"annotations": [{"image_id": "...", "caption": "..."}, ...]}
    <root>/image/<image_id>.{jpg,png,...}

At construction the annotation file is validated and the image folder is listed once:
annotations without an image, with a missing id or an empty caption, or (with
`verify_images`) whose file PIL cannot identify from its header, are counted, logged once
per reason with the first ids, and dropped; zero usable samples is an error.  An image that fails to
decode during training is logged with its path and replaced by the next sample, so an epoch
never crashes hours in.  Random choices (instruction, augmentation) come from a per-draw RNG
seeded by (seed, key), which makes data order and content reproducible across workers and
across a resume.
"""

from __future__ import annotations

import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from xraygpt.conversation import load_instructions
from xraygpt.registry import register

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset that cannot be used at all (missing file, malformed JSON, no usable sample)."""


def read_annotations(path: Path) -> list[dict]:
    """The `annotations` list of an XrayGPT `filter_cap.json`."""
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"annotation file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"annotation file {path} has no 'annotations' list")
    return data["annotations"]


def list_images(folder: Path) -> dict[str, str]:
    """{image_id (file stem): file name} for the image files in `folder` (one directory listing)."""
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    found: dict[str, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in IMAGE_SUFFIXES:
                found.setdefault(stem, entry.name)
    return found


class CaptionDataset(torch.utils.data.Dataset):
    """Image + summary samples of one source.

    Args:
        name: source name for messages (e.g. "mimic").
        samples: list of (image_id, image file path, caption).
        vis_processor: PIL image, rng -> (3, H, W) tensor.
        text_processor: caption -> cleaned caption.
        instructions: instructions to sample from (each holds `<ImageHere>`).
    """

    def __init__(
        self,
        name: str,
        samples: list[tuple[str, Path, str]],
        vis_processor: Callable,
        text_processor: Callable[[str], str],
        instructions: list[str],
    ):
        self.name = name
        self.samples = samples
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.instructions = instructions
        self.decode_failures = 0

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """Decoded image of sample `index` (raises OSError/ValueError when it does not decode)."""
        with Image.open(self.samples[index][1]) as img:
            img.load()
            return img.copy()

    def get(self, index: int, rng: random.Random) -> dict:
        """Sample `index` as {image_id, pixel_values (3, H, W), instruction, caption, source}.

        An undecodable image is logged and replaced by the next one (at most len(self) tries).
        """
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            image_id, path, caption = self.samples[i]
            try:
                image = self.load_image(i)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                self.decode_failures += 1
                logger.warning("%s: image %s does not decode (%s); using the next sample", self.name, path, exc)
                continue
            return {
                "image_id": image_id,
                "pixel_values": self.vis_processor(image, rng),
                "instruction": rng.choice(self.instructions),
                "caption": self.text_processor(caption),
                "source": self.name,
            }
        raise DatasetError(f"{self.name}: no image in the dataset decodes")

    def __getitem__(self, index: int) -> dict:
        return self.get(index, random.Random(index))


def readable_header(path: Path) -> bool:
    """True when PIL recognises the file as an image (reads the header only, not the pixels)."""
    try:
        with Image.open(path):
            return True
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def build_caption_dataset(
    name: str,
    root: str,
    ann_file: str,
    image_dir: str,
    prompt_path: str,
    max_samples: int,
    verify_images: bool,
    vis_processor: Callable,
    text_processor: Callable[[str], str],
) -> CaptionDataset:
    """Validate an XrayGPT-layout folder and build its dataset (see module docstring)."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetError(f"{name}: dataset root {root_path} does not exist")
    annotations = read_annotations(root_path / ann_file)
    images = list_images(root_path / image_dir)
    instructions = load_instructions(prompt_path)
    samples: list[tuple[str, Path, str]] = []
    dropped: dict[str, list[str]] = {"malformed entry": [], "empty caption": [], "image missing": [], "image unreadable": []}
    for n, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), (str, int)) or not isinstance(ann.get("caption"), str):
            dropped["malformed entry"].append(f"#{n}")
            continue
        image_id = str(ann["image_id"])
        if not ann["caption"].strip():
            dropped["empty caption"].append(image_id)
        elif image_id not in images:
            dropped["image missing"].append(image_id)
        else:
            samples.append((image_id, root_path / image_dir / images[image_id], ann["caption"]))
    if verify_images and samples:
        with ThreadPoolExecutor(max_workers=8) as pool:  # header reads are I/O-bound
            readable = list(pool.map(readable_header, [s[1] for s in samples]))
        dropped["image unreadable"] = [s[0] for s, ok in zip(samples, readable) if not ok]
        samples = [s for s, ok in zip(samples, readable) if ok]
    for reason, ids in dropped.items():
        if ids:
            logger.warning("%s: skipped %d of %d annotations (%s), first: %s", name, len(ids),
                           len(annotations), reason, ", ".join(ids[:5]))
    if not samples:
        raise DatasetError(f"{name}: no usable sample in {root_path / ann_file} (images looked up in {root_path / image_dir})")
    if max_samples > 0:
        samples = samples[:max_samples]
    logger.info("%s: %d samples from %s", name, len(samples), root_path)
    return CaptionDataset(name, samples, vis_processor, text_processor, instructions)


def _caption_source(name: str, description: str) -> Callable[..., CaptionDataset]:
    """Register the dataset builder of one source in XrayGPT's layout under `name`."""

    def builder(
        root: str,
        vis_processor: Callable,
        text_processor: Callable[[str], str],
        ann_file: str = "filter_cap.json",
        image_dir: str = "image",
        prompt_path: str = "prompts/alignment.txt",
        max_samples: int = 0,
        verify_images: bool = True,
    ) -> CaptionDataset:
        return build_caption_dataset(name, root, ann_file, image_dir, prompt_path, max_samples, verify_images,
                                     vis_processor, text_processor)

    builder.__name__ = builder.__qualname__ = f"build_{name}"
    builder.__doc__ = description
    return register("dataset", name)(builder)


build_mimic = _caption_source("mimic", "MIMIC-CXR image-summary pairs in XrayGPT's layout (stage 1).")
build_openi = _caption_source("openi", "OpenI image-summary pairs in XrayGPT's layout (stage 2); ids are `<report>_<view>`.")


class MixedDataset(torch.utils.data.Dataset):
    """Several datasets addressed by draw keys from `ResumableSampler`.

    A key k selects sample k % len(self) of the concatenation and seeds that draw's RNG with
    (seed, k), so the same key always gives the same instruction and augmentation.
    """

    def __init__(self, datasets: list[CaptionDataset], seed: int):
        if not datasets:
            raise DatasetError("no dataset configured")
        self.datasets = datasets
        self.seed = seed
        self.offsets = []
        total = 0
        for ds in datasets:
            self.offsets.append(total)
            total += len(ds)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, key: int) -> dict:
        index = key % self.total
        for ds, offset in zip(reversed(self.datasets), reversed(self.offsets)):
            if index >= offset:
                return ds.get(index - offset, random.Random(f"{self.seed}:{key}"))
        raise IndexError(key)
