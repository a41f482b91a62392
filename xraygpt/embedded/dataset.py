"""The synthetic chest X-ray dataset in XrayGPT's on-disk layout: `generate_dataset(root, ...)`.

Writes, for split in train/val/test, ``<root>/<split>/filter_cap.json`` (``{"annotations":
[{"image_id", "caption"}]}``), ``<root>/<split>/image/<image_id>.png`` (size x size 8-bit
grayscale) and ``<root>/<split>/labels.json`` (image_id -> sorted findings), the layout the data
pipeline reads; with ``slot_grid`` also ``<root>/<split>/slots.json`` (image_id -> where each
finding is drawn, as words on the encoder's token grid, `slots.finding_slot`), stage 0's context.

Why it exists: the real MIMIC-CXR / OpenI data need credentials and large downloads; the stack
must still run and be tested end to end offline.  It is a *learnability task*: every caption is a
deterministic function of what was drawn (which findings, which side, which lung zone) while the
wording is sampled from several templates, so a model can only write the right summary by looking
at the image; a text-only model can at best learn the marginal distribution of findings.
`labeler.findings_in_text` maps a generated summary back to findings to score it against
``labels.json``.  Output bytes depend only on the arguments (same seed -> identical files).
"""

from __future__ import annotations

import json
import logging
import os
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from xraygpt.atomic import atomic_write_text
from xraygpt.embedded.anatomy import FINDINGS, sample_case
from xraygpt.embedded.render import render
from xraygpt.embedded.slots import finding_slot
from xraygpt.embedded.summaries import case_summary

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")


def _assign_findings(n: int, prevalence: float, rng: np.random.Generator) -> list[frozenset[str]]:
    """Per-image finding sets: each finding on exactly round(prevalence * n) random images.

    Findings are assigned independently of each other (one random subset per finding), so
    every image has each finding with probability ``prevalence`` and the per-finding counts
    are exactly balanced.
    """
    k = int(round(prevalence * n))
    sets: list[set[str]] = [set() for _ in range(n)]
    for finding in FINDINGS:
        for i in rng.permutation(n)[:k]:
            sets[int(i)].add(finding)
    return [frozenset(s) for s in sets]


def _without(case, rng_key: list[int]):
    """finding -> `case` without it: resampled from the same rng state (so the same anatomy, pose
    and noise; the heart's size depends on cardiomegaly), keeping the drawn nodules' positions."""
    def case_without(finding: str):
        other = sample_case(case.findings - {finding}, np.random.default_rng(rng_key))
        return dataclasses.replace(other, nodules=case.nodules)
    return case_without


def _write_json(path: Path, obj: Any) -> None:
    """`obj` as indented ASCII JSON plus a newline, written whole or not at all."""
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=True) + "\n")


def generate_dataset(
    root: str | os.PathLike,
    num_train: int = 1200,
    num_val: int = 100,
    num_test: int = 200,
    seed: int = 0,
    image_size: int = 224,
    prevalence: float = 0.35,
    slot_grid: int = 0,
) -> dict[str, int]:
    """Writes root/<split>/filter_cap.json + root/<split>/image/<image_id>.png + root/<split>/labels.json for split in train/val/test; returns {split: count}.

    Layout (XrayGPT's): ``filter_cap.json`` is ``{"annotations": [{"image_id": str,
    "caption": str}, ...]}``; images are ``image_size`` x ``image_size`` 8-bit grayscale
    (mode "L") PNGs named ``<image_id>.png``; ``labels.json`` maps each image_id to its
    sorted list of findings.  Image ids are ``<split>_<6-digit index from 1>`` so splits
    are disjoint.  Each finding is present on exactly ``round(prevalence * n)`` images of
    a split (chosen independently per finding).  Output bytes depend only on the
    arguments (same seed -> identical files).  Existing files of the same names are
    overwritten; other files under ``root`` are left alone.  ``slot_grid`` > 0 also writes
    ``slots.json``: per image, ``slot_grid``**2 words in raster order (rendered at
    ``image_size``, which it must divide).
    """
    counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
    if any(v < 0 for v in counts.values()):
        raise ValueError(f"split sizes must be >= 0, got {counts}")
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence}")
    root = Path(root)
    started = time.perf_counter()
    for split_index, split in enumerate(SPLITS):
        n = counts[split]
        split_dir = root / split
        image_dir = split_dir / "image"
        image_dir.mkdir(parents=True, exist_ok=True)
        assign_rng = np.random.default_rng([seed, split_index, 0])
        finding_sets = _assign_findings(n, prevalence, assign_rng)
        annotations: list[dict[str, str]] = []
        labels: dict[str, list[str]] = {}
        slots: dict[str, str] = {}
        for i, findings in enumerate(finding_sets):
            image_id = f"{split}_{i + 1:06d}"
            rng = np.random.default_rng([seed, split_index, 1, i])
            case = sample_case(findings, rng)
            image = render(case, image_size)
            caption = case_summary(case, rng)
            image.save(image_dir / f"{image_id}.png", format="PNG", compress_level=6)
            annotations.append({"image_id": image_id, "caption": caption})
            labels[image_id] = sorted(findings)
            if slot_grid > 0:
                slots[image_id] = finding_slot(case, _without(case, [seed, split_index, 1, i]), image_size, slot_grid)
        _write_json(split_dir / "labels.json", labels)
        _write_json(split_dir / "filter_cap.json", {"annotations": annotations})
        if slot_grid > 0:
            _write_json(split_dir / "slots.json", slots)
        logger.info("wrote %d %s images to %s", n, split, split_dir)
    logger.info("synthetic dataset written to %s in %.1f s", root, time.perf_counter() - started)
    return counts
