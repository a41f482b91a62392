"""Clinical efficacy (CE): P/R/F1 of the observations a labeler reads in generated reports
against those it reads in the references, as report-generation papers report it.

Labels are (N, 14) arrays in CheXpert's convention and order (`chexpert_rules.OBSERVATIONS`:
1 positive, 0 negative, -1 uncertain, NaN not mentioned).  Two binarisations:
`positive_only` (only 1 counts as present, the usual CE) and `uncertain_as_positive` (1 or -1).
Per observation, over samples: TP, FP, FN; P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2PR/(P+R), each
0 when undefined (scikit-learn's zero_division=0).  Per group of observations (all 14; the
five of `TOP5`): micro = P/R/F1 of the TP/FP/FN summed over the group; macro = the mean of the
per-observation P, R and F1.  Per-sample counts (`sample_counts`) are summed, so a bootstrap
resample is a re-sum.
"""

from __future__ import annotations

import numpy as np

from xraygpt.evaluation.chexpert_rules import OBSERVATIONS, POSITIVE, TOP5, UNCERTAIN

VARIANTS = ("positive_only", "uncertain_as_positive")
GROUPS = {"all_14": tuple(range(len(OBSERVATIONS))), "top_5": tuple(OBSERVATIONS.index(o) for o in TOP5)}


def binarise(labels: np.ndarray, uncertain_as_positive: bool) -> np.ndarray:
    """(N, 14) bool: present or not under the chosen binarisation."""
    present = labels == POSITIVE
    return present | (labels == UNCERTAIN) if uncertain_as_positive else present


def sample_counts(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N, 14, 3) int: per sample and observation, TP, FP, FN (from (N, 14) bool arrays)."""
    return np.stack([predicted & reference, predicted & ~reference, ~predicted & reference], axis=-1).astype(np.int64)


def prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (arrays or scalars), 0 where undefined."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    return precision, recall, f1


def group_scores(counts: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
    """{group: {micro|macro: {precision, recall, f1}}} from (14, 3) summed counts."""
    out = {}
    for group, idx in GROUPS.items():
        sub = counts[list(idx)]
        micro = prf(*sub.sum(axis=0))
        macro = [x.mean() for x in prf(sub[:, 0], sub[:, 1], sub[:, 2])]
        out[group] = {name: {"precision": float(v[0]), "recall": float(v[1]), "f1": float(v[2])}
                      for name, v in (("micro", micro), ("macro", macro))}
    return out


def clinical_efficacy(predicted_labels: np.ndarray, reference_labels: np.ndarray) -> dict:
    """{variant: {all_14, top_5, per_observation}} for both binarisations (see module docstring)."""
    out = {}
    for variant in VARIANTS:
        uncertain = variant == "uncertain_as_positive"
        counts = sample_counts(binarise(predicted_labels, uncertain), binarise(reference_labels, uncertain)).sum(axis=0)
        p, r, f = prf(counts[:, 0], counts[:, 1], counts[:, 2])
        out[variant] = {
            **group_scores(counts),
            "per_observation": {obs: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
                                      "support": int(counts[k, 0] + counts[k, 2])}
                                for k, obs in enumerate(OBSERVATIONS)},
        }
    return out
