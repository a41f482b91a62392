"""Finding-level precision / recall / F1 of generated summaries (the synthetic learnability task).

A summary's findings are read with `labeler.findings_in_text` (negation-aware); references come
from the split's `labels.json`.  Per finding: TP/FP/FN summed over the test set, then P, R and F1
by `evaluation.clinical`'s `sample_counts` and `prf`, the project's one P/R/F1 (P = TP/(TP+FP),
R = TP/(TP+FN), F1 = 2PR/(P+R), 0 when undefined); macro F1 = the mean of the per-finding F1s.
Scores are plain floats in [0, 1]; supports are counts of images.
"""

from __future__ import annotations

import numpy as np

from xraygpt.embedded.anatomy import FINDINGS
from xraygpt.embedded.labeler import findings_in_text
from xraygpt.evaluation.clinical import prf, sample_counts


def _present(finding_sets: list[frozenset[str]]) -> np.ndarray:
    """(N, len(FINDINGS)) bool: which findings each image has."""
    return np.array([[f in s for f in FINDINGS] for s in finding_sets], dtype=bool).reshape(-1, len(FINDINGS))


def finding_scores(predictions: list[str], references: list[frozenset[str] | set[str] | list[str]]) -> dict:
    """{"per_finding": {finding: {precision, recall, f1, support}}, "macro_f1", "predicted_positive_rate"}.

    Args:
        predictions: generated summaries (free text).
        references: the true findings of each image.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    predicted = [findings_in_text(p) for p in predictions]
    truth = [frozenset(r) for r in references]
    counts = sample_counts(_present(predicted), _present(truth)).sum(axis=0)  # (len(FINDINGS), 3): TP, FP, FN
    precision, recall, f1 = prf(counts[:, 0], counts[:, 1], counts[:, 2])
    per = {f: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
               "support": int(counts[k, 0] + counts[k, 2])}
           for k, f in enumerate(FINDINGS)}
    positives = sum(len(p) for p in predicted)
    return {
        "per_finding": per,
        "macro_f1": sum(v["f1"] for v in per.values()) / len(FINDINGS),
        "predicted_positive_rate": positives / (len(predicted) * len(FINDINGS)) if predicted else 0.0,
    }


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table: one row per finding (+ macro F1), one P/R/F1 column group per condition."""
    conditions = list(results)
    header = f"{'finding':<18}" + "".join(f"{c:>24}" for c in conditions)
    sub = f"{'':<18}" + "".join(f"{'P':>8}{'R':>8}{'F1':>8}" for _ in conditions)
    lines = [header, sub]
    for f in FINDINGS:
        row = f"{f:<18}"
        for c in conditions:
            v = results[c]["per_finding"][f]
            row += f"{v['precision']:>8.2f}{v['recall']:>8.2f}{v['f1']:>8.2f}"
        lines.append(row)
    lines.append(f"{'macro F1':<18}" + "".join(f"{results[c]['macro_f1']:>24.3f}" for c in conditions))
    lines.append(f"{'findings/image':<18}" + "".join(
        f"{results[c]['predicted_positive_rate'] * len(FINDINGS):>24.2f}" for c in conditions))
    return "\n".join(lines)
