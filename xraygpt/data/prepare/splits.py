"""Train/val/test splits: MIMIC-CXR's official split names, and seeded splits by group (OpenI reports).

Split names are train, val and test everywhere (MIMIC-CXR's "validate" becomes val).  A seeded
split sorts the groups, shuffles them with random.Random(seed) and cuts the order at the
fractions (rounded), so a group's samples all land in one split and the same seed and groups
always give the same split.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Iterable

SPLITS = ("train", "val", "test")
MIMIC_SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}


def split_by_group(groups: Iterable[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """{group: split} for the distinct `groups`, with (train, val, test) `fractions` summing to 1."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    order = sorted(set(groups))
    random.Random(seed).shuffle(order)
    n_train = round(len(order) * fractions[0])
    n_val = round(len(order) * fractions[1])
    return {group: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, group in enumerate(order)}


def leaked_groups(assignments: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """{group: sorted splits} for every group whose (group, split) pairs name more than one split."""
    splits: dict[str, set[str]] = defaultdict(set)
    for group, split in assignments:
        splits[group].add(split)
    return {group: sorted(names) for group, names in splits.items() if len(names) > 1}
