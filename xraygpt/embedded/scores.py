"""Finding-level precision / recall / F1 of generated summaries (the synthetic learnability task).

A summary's findings are read with `labeler.findings_in_text` (negation-aware);
references come from the split's `labels.json`.  Per finding: TP/FP/FN over the test set, then
P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2PR/(P+R) (0 when undefined); macro F1 = the mean of the
per-finding F1s.  Written here because it is ten lines over the task's own label reader.
"""

from __future__ import annotations

from xraygpt.embedded.anatomy import FINDINGS
from xraygpt.embedded.labeler import findings_in_text


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
    per = {}
    for f in FINDINGS:
        tp = sum(f in p and f in t for p, t in zip(predicted, truth))
        fp = sum(f in p and f not in t for p, t in zip(predicted, truth))
        fn = sum(f not in p and f in t for p, t in zip(predicted, truth))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per[f] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
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
