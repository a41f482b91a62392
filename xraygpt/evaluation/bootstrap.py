"""Percentile bootstrap confidence intervals over test samples.

A resample draws N sample indices with replacement; the statistic is recomputed on it (corpus
metrics such as BLEU from re-summed per-sample statistics, CIDEr-D's idf kept from the full
test set); the interval is the (1 - level)/2 and (1 + level)/2 quantiles of the resampled
values (Efron & Tibshirani's percentile method).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def bootstrap_intervals(statistic: Callable[[np.ndarray], dict[str, float]], num_samples: int, resamples: int,
                        level: float, seed: int) -> dict[str, list[float]]:
    """{name: [low, high]} for each value `statistic(indices)` returns.

    Args:
        statistic: (K,) int indices into the test samples -> {name: value}.
        num_samples: N, the number of test samples.
        resamples: bootstrap resamples (0: no intervals, {} returned).
        level: confidence level in (0, 1), e.g. 0.95.
        seed: seeds the resampling.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    if resamples <= 0 or num_samples == 0:
        return {}
    rng = np.random.default_rng(seed)
    draws = [statistic(rng.integers(0, num_samples, num_samples)) for _ in range(resamples)]
    tails = [(1 - level) / 2, (1 + level) / 2]
    return {name: [float(q) for q in np.quantile([d[name] for d in draws], tails)] for name in draws[0]}
