"""Annotation formats on disk, read into samples (image id, image file, caption).

XrayGPT (`format: xraygpt`):

    <root>/filter_cap.json   {"annotations": [{"image_id": "1384_1", "caption": "...", ...}, ...]}
    <root>/image/<image_id>.png|.jpg|.dcm|...

R2Gen (`format: r2gen`; one file holds every split):

    <root>/annotation.json   {"train": [{"id": "CXR1384_IM-0001", "report": "...",
                                         "image_path": ["CXR1384_IM-0001/0.png", ...], "split": "train"}],
                              "val": [...], "test": [...]}
    <root>/images/<image_path>

An R2Gen entry with several images (multi-view) gives one sample per image, all with the
entry's report: ids `<id>_<k>` (k = 1, 2, ... in `image_path` order); a one-image entry keeps
`<id>`.  Shards (`format: webdataset`) are read by `xraygpt.data.shards`.

Each format is registered (kind `dataset_format`) with its default files and its declared
`Capabilities`; a dataset object declares the capabilities of what it reads in a `capabilities`
attribute, and callers ask `capabilities_of(dataset)` instead of checking its type.

Readers never stop at a bad entry: malformed entries, empty captions, duplicate ids (the first
is kept), image paths that would leave the image folder (absolute, `..`: refused, never read;
`xraygpt.data.paths`), missing images and (with `verify_images`) files whose header cannot be
read (`xraygpt.data.images`; DICOM included) are returned in `dropped` ({reason: [ids]}), to be logged or written to a report by the
caller.
"""

from __future__ import annotations

import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from xraygpt import registry
from xraygpt.data.paths import UnsafePath, confined
from xraygpt.data.images import DECODE_ERRORS, read_header

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")



@dataclass(frozen=True)
class Capabilities:
    """What a dataset can do, declared by the dataset and asked by its callers.

    Attributes:
        map_style: samples are listed up front and read by index (exact resume, evaluation by
            image id, a member of MixedDataset that trains); False: a stream (shards).
        group_by_length: each draw's token length is known before it is loaded (run.group_by_length).
        cache_features: its images can be encoded into a feature cache (cache_features.py).
        reads_features: its samples carry cached encoder features instead of pixels.
    """

    map_style: bool
    group_by_length: bool
    cache_features: bool
    reads_features: bool

    def __and__(self, other: "Capabilities") -> "Capabilities":
        """What two datasets can both do."""
        return Capabilities(self.map_style and other.map_style, self.group_by_length and other.group_by_length,
                            self.cache_features and other.cache_features, self.reads_features and other.reads_features)


NO_CAPABILITIES = Capabilities(map_style=False, group_by_length=False, cache_features=False, reads_features=False)
IMAGE_FILES = Capabilities(map_style=True, group_by_length=True, cache_features=True, reads_features=False)
IMAGE_STREAM = Capabilities(map_style=False, group_by_length=False, cache_features=True, reads_features=False)


def capabilities_of(dataset: object) -> Capabilities:
    """The capabilities `dataset` declares (its `capabilities` attribute); one that declares none
    (a plain torch dataset) is granted none."""
    return getattr(dataset, "capabilities", NO_CAPABILITIES)


@dataclass(frozen=True)
class DatasetFormat:
    """A `format:` of the dataset builders: its default files (relative to the root) and what the
    dataset read from it can do."""

    name: str
    ann_file: str
    image_dir: str
    capabilities: Capabilities


def _register_format(fmt: DatasetFormat) -> DatasetFormat:
    return registry.register("dataset_format", fmt.name)(fmt)


XRAYGPT = _register_format(DatasetFormat("xraygpt", "filter_cap.json", "image", IMAGE_FILES))
R2GEN = _register_format(DatasetFormat("r2gen", "annotation.json", "images", IMAGE_FILES))
WEBDATASET = _register_format(DatasetFormat("webdataset", "shards.json", "", IMAGE_STREAM))


def dataset_format(name: str, where: str = "") -> DatasetFormat:
    """The registered format `name`; an unknown one raises DatasetError listing the known ones."""
    known = registry.registered("dataset_format")
    if name not in known:
        raise DatasetError(f"{where + ': ' if where else ''}unknown dataset format {name!r}; known: {', '.join(known)}")
    return known[name]

Sample = tuple[str, Path, str]  # (image_id, image file, caption)


class DatasetError(ValueError):
    """A dataset that cannot be used at all (missing file, malformed JSON, no usable sample)."""


def read_json(path: Path, what: str) -> object:
    """Parsed JSON of `path`; a missing, non-UTF-8 or malformed file raises DatasetError naming it."""
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{what} {path} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise DatasetError(f"{what} {path} is nested too deeply to read") from exc
    except OSError as exc:
        raise DatasetError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc


def read_annotations(path: Path) -> list[dict]:
    """The `annotations` list of an XrayGPT `filter_cap.json`."""
    data = read_json(path, "annotation file")
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


def _dropped() -> dict[str, list[str]]:
    return {"malformed entry": [], "empty caption": [], "duplicate id": [], "unsafe image path": [], "image missing": [],
            "image unreadable": []}


def _reason(image_id: str, caption: str, image_found: bool, seen: set[str]) -> str | None:
    """Why a well-formed entry is dropped (None: kept, and its id recorded in `seen`)."""
    if not caption.strip():
        return "empty caption"
    if image_id in seen:
        return "duplicate id"
    if not image_found:
        return "image missing"
    seen.add(image_id)
    return None


def _r2gen_entry_ok(entry: object) -> bool:
    """An R2Gen entry has an id, a report string and a non-empty list of image paths."""
    return (isinstance(entry, dict) and isinstance(entry.get("id"), (str, int)) and isinstance(entry.get("report"), str)
            and isinstance(entry.get("image_path"), list) and len(entry["image_path"]) > 0
            and all(isinstance(p, str) for p in entry["image_path"]))


def read_xraygpt(root: Path, ann_file: str, image_dir: str) -> tuple[list[Sample], dict[str, list[str]], int]:
    """(samples, dropped, number of annotations) of an XrayGPT-layout folder."""
    annotations = read_annotations(root / ann_file)
    images = list_images(root / image_dir)
    samples: list[Sample] = []
    dropped = _dropped()
    seen: set[str] = set()
    for n, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), (str, int)) or not isinstance(ann.get("caption"), str):
            dropped["malformed entry"].append(f"#{n}")
            continue
        image_id = str(ann["image_id"])
        reason = _reason(image_id, ann["caption"], image_id in images, seen)
        if reason:
            dropped[reason].append(image_id)
        else:
            samples.append((image_id, root / image_dir / images[image_id], ann["caption"]))
    return samples, dropped, len(annotations)


def read_r2gen(root: Path, ann_file: str, image_dir: str, split: str) -> tuple[list[Sample], dict[str, list[str]], int]:
    """(samples, dropped, number of image references) of one split of an R2Gen annotation file."""
    path = root / ann_file
    data = read_json(path, "annotation file")
    if not isinstance(data, dict) or not isinstance(data.get(split), list):
        # quoted, so a blank or whitespace-only split name shows as one
        known = ", ".join(repr(k) for k, v in data.items() if isinstance(v, list)) if isinstance(data, dict) else "none"
        raise DatasetError(f"annotation file {path} has no split {split!r} (splits: {known or 'none'})")
    samples: list[Sample] = []
    dropped = _dropped()
    seen: set[str] = set()
    references = 0
    for n, entry in enumerate(data[split]):
        if not _r2gen_entry_ok(entry):
            references += 1
            dropped["malformed entry"].append(f"#{n}")
            continue
        paths = entry["image_path"]
        references += len(paths)
        ids = [str(entry["id"])] if len(paths) == 1 else [f"{entry['id']}_{k}" for k in range(1, len(paths) + 1)]
        for image_id, rel in zip(ids, paths):
            try:
                file = confined(root / image_dir, rel)
            except UnsafePath:
                dropped["unsafe image path"].append(image_id)
                continue
            reason = _reason(image_id, entry["report"], file.is_file(), seen)
            if reason:
                dropped[reason].append(image_id)
            else:
                samples.append((image_id, file, entry["report"]))
    return samples, dropped, references


def readable_header(path: Path) -> bool:
    """True when the file's header reads as an image (`xraygpt.data.images.read_header`: PNG, JPEG,
    ..., or DICOM whose pixels can be decoded here); no pixel is decoded."""
    try:
        read_header(path)
        return True
    except DECODE_ERRORS:  # ImageReadError, or what a damaged header makes a reader raise
        return False


def drop_unreadable(samples: list[Sample], dropped: dict[str, list[str]]) -> list[Sample]:
    """`samples` whose image header reads; the others are added to dropped["image unreadable"]."""
    with ThreadPoolExecutor(max_workers=8) as pool:  # header reads are I/O-bound
        readable = list(pool.map(readable_header, [s[1] for s in samples]))
    dropped["image unreadable"] += [s[0] for s, ok in zip(samples, readable) if not ok]
    return [s for s, ok in zip(samples, readable) if ok]


def read_samples(format: str, root: Path, ann_file: str | None, image_dir: str | None, split: str,
                 verify_images: bool) -> tuple[list[Sample], dict[str, list[str]], int]:
    """(samples, dropped, entries read) of a JSON-format dataset (`xraygpt` or `r2gen`).

    `ann_file` / `image_dir` None take the format's defaults (its DatasetFormat); `split` is used by
    `r2gen` only.
    """
    if format not in (XRAYGPT.name, R2GEN.name):
        raise DatasetError(f"unknown JSON dataset format {format!r}; known: xraygpt, r2gen")
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist")
    fmt = dataset_format(format)
    ann_file, image_dir = ann_file or fmt.ann_file, image_dir or fmt.image_dir
    if format == "xraygpt":
        samples, dropped, total = read_xraygpt(root, ann_file, image_dir)
    else:
        samples, dropped, total = read_r2gen(root, ann_file, image_dir, split)
    if verify_images and samples:
        samples = drop_unreadable(samples, dropped)
    return samples, dropped, total


def log_dropped(name: str, dropped: dict[str, list[str]], total: int) -> None:
    """One warning per reason with the count and the first ids."""
    for reason, ids in dropped.items():
        if ids:
            logger.warning("%s: skipped %d of %d annotations (%s), first: %s", name, len(ids), total, reason,
                           ", ".join(ids[:5]))


def image_text_sample(image_id: str, image: Image.Image, caption: str, source: str, vis_processor: Callable,
                      text_processor: Callable[[str], str], instructions: list[str], rng: random.Random) -> dict:
    """The sample every image-text dataset yields: {image_id, pixel_values (3, H, W), instruction, caption, source}."""
    return {
        "image_id": image_id,
        "pixel_values": vis_processor(image, rng),
        "instruction": rng.choice(instructions),
        "caption": text_processor(caption),
        "source": source,
    }
