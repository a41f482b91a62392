"""Every report metric of a set of prediction rows, with bootstrap intervals, as one JSON-ready dict.

Rows are {image_id, prediction, reference, ...} (predictions.jsonl).  A row is skipped and
counted, by reason, when it has no id or a non-text prediction/reference ("malformed row"),
repeats an id ("duplicate id"), or has a reference that is empty once cleaned, e.g. only
Unicode junk ("empty reference").  An empty prediction is scored (zero overlap, no finding)
and counted.  Metrics (see each module for its definition):

    ROUGE-1/2/L     `rouge`: F1 per sample, stemmed, mean over samples
    BLEU-1..4       `caption_metrics`: corpus level, R2Gen-normalised text
    CIDEr-D         `caption_metrics`: idf from the test references, mean over samples
    CE              `clinical`: P/R/F1 of the CheXpert-style rule labels (`chexpert_rules`),
                    micro and macro over 14 and 5 observations, positives only and uncertain
                    as positive

`HEADLINE` metrics get percentile-bootstrap intervals (`bootstrap`).  All values are on a
0-1 scale except CIDEr-D (0-10).
"""

from __future__ import annotations

import numpy as np

from xraygpt.evaluation.bootstrap import bootstrap_intervals
from xraygpt.evaluation.caption_metrics import MAX_N, bleu_statistics, cider_d_scores, corpus_bleu
from xraygpt.evaluation.chexpert_rules import OBSERVATIONS, POSITIVE, ChexpertRuleLabeler
from xraygpt.evaluation.clinical import binarise, clinical_efficacy, group_scores, sample_counts
from xraygpt.evaluation.rouge import rouge_f1
from xraygpt.evaluation.text import clean_text, r2gen_tokens

HEADLINE = ("ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D",
            "CE micro F1 (14)", "CE macro F1 (14)", "CE micro F1 (5)", "CE macro F1 (5)")
LABELER_NAME = "chexpert_rules: a CheXpert-style rule approximation (not the CheXpert labeler or CheXbert)"


def scoreable(rows: list[dict]) -> tuple[list[dict], dict[str, list[str]]]:
    """(rows that can be scored, {skip reason: [ids]}) (see module docstring)."""
    kept, skipped, seen = [], {}, set()
    for n, row in enumerate(rows):
        image_id = row.get("image_id")
        if image_id is None or not isinstance(row.get("prediction"), str) or not isinstance(row.get("reference"), str):
            reason, image_id = "malformed row", str(image_id if image_id is not None else f"#{n}")
        elif str(image_id) in seen:
            reason = "duplicate id"
        elif not clean_text(row["reference"]):
            reason = "empty reference"
        else:
            seen.add(str(image_id))
            kept.append(row)
            continue
        skipped.setdefault(reason, []).append(str(image_id))
    return kept, skipped


class SampleScores:
    """Per-sample statistics of N scored rows, from which every metric (and each resample) follows.

    Attributes: rouge (N, 3), bleu (N, 2 + 2 x MAX_N), cider (N,), predicted / reference labels
    (N, 14), ce_counts (N, 14, 3) TP/FP/FN with positives only.
    """

    def __init__(self, predictions: list[str], references: list[str], labeler: ChexpertRuleLabeler):
        hyp_tokens = [r2gen_tokens(p) for p in predictions]
        ref_tokens = [r2gen_tokens(r) for r in references]
        self.rouge = rouge_f1(predictions, references)
        self.bleu = bleu_statistics(hyp_tokens, ref_tokens)
        self.cider = cider_d_scores(hyp_tokens, ref_tokens)
        self.predicted_labels = labeler.label_many([clean_text(p) for p in predictions])
        self.reference_labels = labeler.label_many([clean_text(r) for r in references])
        self.ce_counts = sample_counts(binarise(self.predicted_labels, False), binarise(self.reference_labels, False))

    def headline(self, idx: np.ndarray) -> dict[str, float]:
        """The HEADLINE metrics over the samples `idx` (indices, repeats allowed)."""
        rouge = self.rouge[idx].mean(axis=0)
        bleu = corpus_bleu(self.bleu[idx])
        ce = group_scores(self.ce_counts[idx].sum(axis=0))
        values = [*rouge, *bleu, self.cider[idx].mean(),
                  *(ce[group][average]["f1"] for group in ("all_14", "top_5") for average in ("micro", "macro"))]
        return {name: float(v) for name, v in zip(HEADLINE, values)}


def compute_metrics(rows: list[dict], labeler: ChexpertRuleLabeler, resamples: int = 1000, level: float = 0.95,
                    seed: int = 0, skipped: dict[str, list[str]] | None = None) -> dict:
    """metrics.json content for `rows`; `skipped` adds skips counted upstream ({reason: [ids]})."""
    kept, own_skips = scoreable(rows)
    reasons = {**(skipped or {})}
    for reason, ids in own_skips.items():
        reasons.setdefault(reason, []).extend(ids)
    out: dict = {
        "num_scored": len(kept),
        "skipped": {"count": sum(len(v) for v in reasons.values()), "by_reason": reasons},
    }
    empty = [str(r["image_id"]) for r in kept if not clean_text(r["prediction"])]
    out["empty_predictions"] = {"count": len(empty), "ids": empty}
    if not kept:
        return out
    predictions, references = [r["prediction"] for r in kept], [r["reference"] for r in kept]
    scores = SampleScores(predictions, references, labeler)
    everything = np.arange(len(kept))
    bleu = corpus_bleu(scores.bleu)
    out["headline"] = scores.headline(everything)
    out["confidence_intervals"] = {
        "level": level, "resamples": resamples, "method": "percentile bootstrap over samples",
        **bootstrap_intervals(scores.headline, len(kept), resamples, level, seed),
    }
    out["rouge"] = {"rouge1": float(scores.rouge[:, 0].mean()), "rouge2": float(scores.rouge[:, 1].mean()),
                    "rougeL": float(scores.rouge[:, 2].mean()), "definition": "F1 per sample (rouge-score, Porter stemmer), mean"}
    out["bleu"] = {f"bleu{n}": float(bleu[n - 1]) for n in range(1, MAX_N + 1)}
    out["cider_d"] = float(scores.cider.mean())
    out["clinical_efficacy"] = {
        "labeler": LABELER_NAME,
        **clinical_efficacy(scores.predicted_labels, scores.reference_labels),
        "positive_counts": {side: {obs: int((labels[:, k] == POSITIVE).sum()) for k, obs in enumerate(OBSERVATIONS)}
                            for side, labels in (("prediction", scores.predicted_labels),
                                                 ("reference", scores.reference_labels))},
    }
    return out


def _skip_summary(metrics: dict) -> str:
    skipped = metrics["skipped"]
    detail = ", ".join(f"{len(ids)} {reason}" for reason, ids in skipped["by_reason"].items() if ids)
    return (f"{metrics['num_scored']} samples scored; {skipped['count']} skipped" + (f" ({detail})" if detail else "")
            + f"; {metrics['empty_predictions']['count']} empty predictions")


def format_metrics(metrics: dict) -> str:
    """A readable table of `compute_metrics` output (with plug-in results when present)."""
    lines = [_skip_summary(metrics)]
    if "headline" not in metrics:
        return "\n".join(lines + ["nothing to score"])
    ci = metrics["confidence_intervals"]
    lines.append(f"{'metric':<20}{'value':>9}   {int(round(ci['level'] * 100))}% CI ({ci['resamples']} bootstrap resamples)")
    for name, value in metrics["headline"].items():
        interval = f"[{ci[name][0]:.4f}, {ci[name][1]:.4f}]" if name in ci else ""
        lines.append(f"{name:<20}{value:>9.4f}   {interval}")
    ce = metrics["clinical_efficacy"]
    lines += ["", f"Clinical efficacy, {ce['labeler']}",
              f"{'labels':<24}{'observations':<14}" + "".join(f"{h:>9}" for h in (
                  "micro P", "micro R", "micro F1", "macro P", "macro R", "macro F1"))]
    for variant in ("positive_only", "uncertain_as_positive"):
        for group, label in (("all_14", "14"), ("top_5", "5")):
            g = ce[variant][group]
            lines.append(f"{variant.replace('_', ' '):<24}{label:<14}" + "".join(
                f"{g[avg][m]:>9.4f}" for avg in ("micro", "macro") for m in ("precision", "recall", "f1")))
    for name, result in metrics.get("plugins", {}).items():
        if isinstance(result, str):
            lines.append(f"{name}: {result}")
        else:
            shown = {k: v for k, v in result.items() if isinstance(v, float)}
            if name == "chexbert":
                shown = {f"micro F1 ({g.split('_')[1]})": result["positive_only"][g]["micro"]["f1"] for g in ("all_14", "top_5")}
            lines.append(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    return "\n".join(lines)


def format_comparison(results: dict[str, dict]) -> str:
    """Side-by-side HEADLINE table: one column per named `compute_metrics` result."""
    names = list(results)
    width = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'metric':<20}" + "".join(f"{n:>{width}}" for n in names)]
    for metric in HEADLINE:
        lines.append(f"{metric:<20}" + "".join(
            f"{results[n]['headline'][metric]:>{width}.4f}" if "headline" in results[n] else f"{'-':>{width}}" for n in names))
    lines.append(f"{'scored':<20}" + "".join(f"{results[n]['num_scored']:>{width}}" for n in names))
    lines.append(f"{'skipped':<20}" + "".join(f"{results[n]['skipped']['count']:>{width}}" for n in names))
    lines.append(f"{'empty predictions':<20}" + "".join(f"{results[n]['empty_predictions']['count']:>{width}}" for n in names))
    return "\n".join(lines)
