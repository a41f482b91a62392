"""Image-summary datasets and the `mimic` / `openi` dataset builders (one per source, same arguments).

A builder reads its source in one of three formats (`format:`): `xraygpt` (filter_cap.json +
image folder), `r2gen` (annotation.json with train/val/test lists, one sample per image) or
`webdataset` (a folder of tar shards + shards.json); see `xraygpt.data.formats` and
`xraygpt.data.shards` for the layouts.

JSON formats give a map-style `CaptionDataset`: at construction the annotations are validated
and the images located once; entries without an image, with a missing id, a duplicate id or an
empty caption, or (with `verify_images`) whose file PIL cannot identify from its header, are
counted, logged once per reason with the first ids, and dropped; zero usable samples is an
error.  An image that fails to decode during training (truncated, corrupt, more than
`max_image_pixels` pixels) is logged with its path and replaced by the next sample, so an
epoch never crashes hours in.  Random choices (instruction, augmentation) come from a per-draw
RNG seeded by (seed, key), which makes data order and content reproducible across workers and
across a resume.  Shards give a streaming `ShardDataset` instead (see `xraygpt.data.shards`
for how it splits across ranks and resumes).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image

from xraygpt.conversation import load_instructions
from xraygpt.data.formats import FORMAT_FILES, DatasetError, image_text_sample, log_dropped, read_samples
from xraygpt.data.shards import ShardDataset, read_manifest
from xraygpt.data.transforms import DECODE_ERRORS, decode_image
from xraygpt.registry import register

logger = logging.getLogger(__name__)

FORMATS = tuple(FORMAT_FILES)


class CaptionDataset(torch.utils.data.Dataset):
    """Image + summary samples of one source, read from files.

    Args:
        name: source name for messages (e.g. "mimic").
        samples: list of (image_id, image file path, caption).
        vis_processor: PIL image, rng -> (3, H, W) tensor.
        text_processor: caption -> cleaned caption.
        instructions: instructions to sample from (each holds `<ImageHere>`).
        max_pixels: images with more pixels do not decode (checked from the header).
    """

    def __init__(
        self,
        name: str,
        samples: list[tuple[str, Path, str]],
        vis_processor: Callable,
        text_processor: Callable[[str], str],
        instructions: list[str],
        max_pixels: int,
    ):
        self.name = name
        self.samples = samples
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.instructions = instructions
        self.max_pixels = max_pixels
        self.decode_failures = 0

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """Decoded image of sample `index` (raises one of DECODE_ERRORS when it does not decode)."""
        return decode_image(self.samples[index][1], self.max_pixels)

    def get(self, index: int, rng: random.Random) -> dict:
        """Sample `index` as {image_id, pixel_values (3, H, W), instruction, caption, source}.

        An undecodable image is logged and replaced by the next one (at most len(self) tries).
        """
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            image_id, path, caption = self.samples[i]
            try:
                image = self.load_image(i)
            except DECODE_ERRORS as exc:
                self.decode_failures += 1
                logger.warning("%s: image %s does not decode (%s); using the next sample", self.name, path, exc)
                continue
            return image_text_sample(image_id, image, caption, self.name, self.vis_processor, self.text_processor,
                                     self.instructions, rng)
        raise DatasetError(f"{self.name}: no image in the dataset decodes")

    def __getitem__(self, index: int) -> dict:
        return self.get(index, random.Random(index))


def build_caption_dataset(
    name: str,
    root: str,
    format: str,
    split: str,
    ann_file: str | None,
    image_dir: str | None,
    prompt_path: str,
    max_samples: int,
    verify_images: bool,
    max_image_pixels: int,
    shuffle_buffer: int,
    vis_processor: Callable,
    text_processor: Callable[[str], str],
) -> CaptionDataset | ShardDataset:
    """Validate a dataset folder in `format` and build its dataset (see module docstring)."""
    if format not in FORMATS:
        raise DatasetError(f"{name}: unknown dataset format {format!r}; known: {', '.join(FORMATS)}")
    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetError(f"{name}: dataset root {root_path} does not exist")
    instructions = load_instructions(prompt_path)
    if format == "webdataset":
        if max_samples > 0:
            raise DatasetError(f"{name}: max_samples is not supported with format webdataset (write fewer shards)")
        shards, total = read_manifest(root_path, ann_file or FORMAT_FILES[format][0])
        logger.info("%s: %d samples in %d shards from %s", name, total, len(shards), root_path)
        return ShardDataset(name, shards, total, vis_processor, text_processor, instructions, max_image_pixels,
                            shuffle_buffer)
    samples, dropped, total = read_samples(format, root_path, ann_file, image_dir, split, verify_images)
    log_dropped(name, dropped, total)
    if not samples:
        raise DatasetError(f"{name}: no usable sample in {root_path} (format {format})")
    if max_samples > 0:
        samples = samples[:max_samples]
    logger.info("%s: %d samples from %s", name, len(samples), root_path)
    return CaptionDataset(name, samples, vis_processor, text_processor, instructions, max_image_pixels)


def _caption_source(name: str, description: str) -> Callable[..., CaptionDataset | ShardDataset]:
    """Register the dataset builder of one source under `name` (arguments: see README "datasets")."""

    def builder(
        root: str,
        vis_processor: Callable,
        text_processor: Callable[[str], str],
        format: str = "xraygpt",
        split: str = "train",
        eval_split: str = "val",
        ann_file: Optional[str] = None,
        image_dir: Optional[str] = None,
        prompt_path: str = "prompts/alignment.txt",
        max_samples: int = 0,
        verify_images: bool = True,
        max_image_pixels: int = 50_000_000,
        shuffle_buffer: int = 256,
    ) -> CaptionDataset | ShardDataset:
        # eval_split (r2gen) is read by xraygpt.builders.build_datasets, which passes it as `split`
        # when building the held-out set; it is a builder argument so that the config schema has it.
        del eval_split
        return build_caption_dataset(name, root, format, split, ann_file, image_dir, prompt_path, max_samples,
                                     verify_images, max_image_pixels, shuffle_buffer, vis_processor, text_processor)

    builder.__name__ = builder.__qualname__ = f"build_{name}"
    builder.__doc__ = description
    return register("dataset", name)(builder)


build_mimic = _caption_source("mimic", "MIMIC-CXR image-summary pairs (stage 1).")
build_openi = _caption_source("openi", "OpenI image-summary pairs (stage 2); ids are `<report>_<view>`.")


class MixedDataset(torch.utils.data.Dataset):
    """Several datasets addressed by draw keys from `ResumableSampler`.

    A key k selects sample k % len(self) of the concatenation and seeds that draw's RNG with
    (seed, k), so the same key always gives the same instruction and augmentation.  A
    ShardDataset member is read in shard order (held-out sets; training streams shards directly).
    """

    def __init__(self, datasets: list[CaptionDataset | ShardDataset], seed: int):
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
