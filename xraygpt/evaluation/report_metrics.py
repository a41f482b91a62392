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

Languages: a row's `language` (default `en`; the evaluator writes its dataset's) picks the
tokenizer of its ROUGE / BLEU / CIDEr-D (`text.metric_tokens`, `rouge`: characters for Chinese,
or jieba words with `cjk_tokenizer`).  Clinical efficacy reads English only (the labeler's
phrase lists are English words): rows in another language are left out of it, and when no row is
English `clinical_efficacy` is `{"skipped": "no phrase lists for language zh"}` and the headline
has no CE entry.  metrics.json also gets `languages` (rows per language), `tokenization` (what
each language's metrics counted), `other_script_predictions` (predictions visibly in another
script than their row's language, e.g. an English answer in a Chinese evaluation: counted and
scored) and, with several languages, `by_language` (the headline over each language's rows).
"""

from __future__ import annotations

import numpy as np

from xraygpt.evaluation.bootstrap import bootstrap_intervals
from xraygpt.evaluation.caption_metrics import MAX_N, bleu_statistics, cider_d_scores, corpus_bleu
from xraygpt.evaluation.chexpert_rules import OBSERVATIONS, POSITIVE, ChexpertRuleLabeler
from xraygpt.evaluation.clinical import binarise, clinical_efficacy, group_scores, sample_counts
from xraygpt.evaluation.rouge import rouge_f1
from xraygpt.evaluation.text import clean_text, metric_tokens
from xraygpt.languages import DEFAULT_LANGUAGE, written_in

HEADLINE = ("ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D",
            "CE micro F1 (14)", "CE macro F1 (14)", "CE micro F1 (5)", "CE macro F1 (5)")
LABELER_NAME = "chexpert_rules: a CheXpert-style rule approximation (not the CheXpert labeler or CheXbert)"
CE_LANGUAGES = (DEFAULT_LANGUAGE,)  # languages the labeler's phrase lists are written in


def row_language(row: dict) -> str:
    """The row's language (`en` when it has none)."""
    return row.get("language") or DEFAULT_LANGUAGE


def tokenization(language: str, cjk_tokenizer: str = "characters") -> str:
    """What the text metrics of `language` count, for metrics.json."""
    if language == DEFAULT_LANGUAGE:
        return ("ROUGE: rouge-score's tokenizer with the Porter stemmer; BLEU/CIDEr-D: R2Gen-normalised words "
                "(a CJK character a token of its own)")
    if cjk_tokenizer == "jieba":
        return "jieba words for CJK text, letter/digit runs as words; lower case, punctuation dropped, no stemming"
    return "each CJK character a token, letter/digit runs as words; lower case, punctuation dropped, no stemming"


def scoreable(rows: list[dict]) -> tuple[list[dict], dict[str, list[str]]]:
    """(rows that can be scored, {skip reason: [ids]}) (see module docstring)."""
    kept, skipped, seen = [], {}, set()
    for n, row in enumerate(rows):
        image_id = row.get("image_id")
        if (image_id is None or not isinstance(row.get("prediction"), str) or not isinstance(row.get("reference"), str)
                or not isinstance(row.get("language", DEFAULT_LANGUAGE), (str, type(None)))):
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

    Attributes: rouge (N, 3), bleu (N, 2 + 2 x MAX_N), cider (N,), ce_rows (N,) bool (rows in a
    language of CE_LANGUAGES), predicted / reference labels (N, 14) (NaN outside ce_rows), ce_counts
    (N, 14, 3) TP/FP/FN with positives only (0 outside ce_rows).  Each row is tokenized in its
    `languages` entry (None: all English).
    """

    def __init__(self, predictions: list[str], references: list[str], labeler: ChexpertRuleLabeler,
                 languages: list[str] | None = None, cjk_tokenizer: str = "characters"):
        languages = languages if languages is not None else [DEFAULT_LANGUAGE] * len(predictions)
        hyp_tokens = [metric_tokens(p, lang, cjk_tokenizer) for p, lang in zip(predictions, languages, strict=True)]
        ref_tokens = [metric_tokens(r, lang, cjk_tokenizer) for r, lang in zip(references, languages, strict=True)]
        self.rouge = rouge_f1(predictions, references, languages, cjk_tokenizer)
        self.bleu = bleu_statistics(hyp_tokens, ref_tokens)
        self.cider = cider_d_scores(hyp_tokens, ref_tokens)
        self.ce_rows = np.array([lang in CE_LANGUAGES for lang in languages], dtype=bool)
        labelled = np.flatnonzero(self.ce_rows)
        self.predicted_labels = np.full((len(predictions), len(OBSERVATIONS)), np.nan)
        self.reference_labels = np.full((len(predictions), len(OBSERVATIONS)), np.nan)
        self.predicted_labels[labelled] = labeler.label_many([clean_text(predictions[i]) for i in labelled])
        self.reference_labels[labelled] = labeler.label_many([clean_text(references[i]) for i in labelled])
        self.ce_counts = sample_counts(binarise(self.predicted_labels, False), binarise(self.reference_labels, False))
        self.ce_counts[~self.ce_rows] = 0

    def headline(self, idx: np.ndarray, clinical: bool | None = None) -> dict[str, float]:
        """The HEADLINE metrics over the samples `idx` (indices, repeats allowed); the CE entries only
        with `clinical` (None: when the whole set has a row in a CE language)."""
        rouge = self.rouge[idx].mean(axis=0)
        bleu = corpus_bleu(self.bleu[idx])
        ce = group_scores(self.ce_counts[idx].sum(axis=0))
        values = [*rouge, *bleu, self.cider[idx].mean(),
                  *(ce[group][average]["f1"] for group in ("all_14", "top_5") for average in ("micro", "macro"))]
        names = HEADLINE if (self.ce_rows.any() if clinical is None else clinical) else HEADLINE[:len(values) - 4]
        return {name: float(v) for name, v in zip(names, values)}


def compute_metrics(rows: list[dict], labeler: ChexpertRuleLabeler, resamples: int = 1000, level: float = 0.95,
                    seed: int = 0, skipped: dict[str, list[str]] | None = None, cjk_tokenizer: str = "characters") -> dict:
    """metrics.json content for `rows`; `skipped` adds skips counted upstream ({reason: [ids]});
    `cjk_tokenizer` (`characters` or `jieba`) cuts the text of languages other than English."""
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
    languages = [row_language(r) for r in kept]
    counts = {lang: languages.count(lang) for lang in sorted(set(languages))}
    out["languages"] = counts
    out["tokenization"] = {lang: tokenization(lang, cjk_tokenizer) for lang in counts}
    other = [str(r["image_id"]) for r, lang in zip(kept, languages) if not written_in(r["prediction"], lang)]
    out["other_script_predictions"] = {"count": len(other), "ids": other}
    scores = SampleScores(predictions, references, labeler, languages, cjk_tokenizer)
    everything = np.arange(len(kept))
    bleu = corpus_bleu(scores.bleu)
    out["headline"] = scores.headline(everything)
    out["confidence_intervals"] = {
        "level": level, "resamples": resamples, "method": "percentile bootstrap over samples",
        **bootstrap_intervals(scores.headline, len(kept), resamples, level, seed),
    }
    out["rouge"] = {"rouge1": float(scores.rouge[:, 0].mean()), "rouge2": float(scores.rouge[:, 1].mean()),
                    "rougeL": float(scores.rouge[:, 2].mean()),
                    "definition": "F1 per sample (rouge-score; English: Porter stemmer; other languages: see "
                                  "tokenization), mean"}
    out["bleu"] = {f"bleu{n}": float(bleu[n - 1]) for n in range(1, MAX_N + 1)}
    out["cider_d"] = float(scores.cider.mean())
    if len(counts) > 1:
        out["by_language"] = {lang: scores.headline(np.flatnonzero(np.array(languages) == lang), lang in CE_LANGUAGES)
                              for lang in counts}
    no_lists = [lang for lang in counts if lang not in CE_LANGUAGES]
    if not scores.ce_rows.any():
        out["clinical_efficacy"] = {"skipped": f"no phrase lists for language {', '.join(no_lists)}"}
        return out
    out["clinical_efficacy"] = {
        "labeler": LABELER_NAME,
        **({"rows": int(scores.ce_rows.sum()),
            "left_out": f"{len(kept) - int(scores.ce_rows.sum())} rows: no phrase lists for language "
                        f"{', '.join(no_lists)}"} if no_lists else {}),
        **clinical_efficacy(scores.predicted_labels[scores.ce_rows], scores.reference_labels[scores.ce_rows]),
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
    if len(metrics.get("languages", {})) > 1 or set(metrics.get("languages", {})) - {DEFAULT_LANGUAGE}:
        lines.append("languages: " + ", ".join(f"{lang} {n} rows" for lang, n in metrics["languages"].items())
                     + f"; {metrics['other_script_predictions']['count']} predictions in another script")
    ce = metrics["clinical_efficacy"]
    if "skipped" in ce:
        lines += ["", f"Clinical efficacy: skipped ({ce['skipped']})"]
    else:
        lines += _clinical_lines(ce)
    for name, result in metrics.get("plugins", {}).items():
        if isinstance(result, str):
            lines.append(f"{name}: {result}")
        else:
            shown = {k: v for k, v in result.items() if isinstance(v, float)}
            if name == "chexbert":
                shown = {f"micro F1 ({g.split('_')[1]})": result["positive_only"][g]["micro"]["f1"] for g in ("all_14", "top_5")}
            lines.append(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    return "\n".join(lines)


def _clinical_lines(ce: dict) -> list[str]:
    """The clinical-efficacy table of `format_metrics`."""
    lines = ["", f"Clinical efficacy, {ce['labeler']}" + (f" ({ce['left_out']})" if "left_out" in ce else ""),
             f"{'labels':<24}{'observations':<14}" + "".join(f"{h:>9}" for h in (
                 "micro P", "micro R", "micro F1", "macro P", "macro R", "macro F1"))]
    for variant in ("positive_only", "uncertain_as_positive"):
        for group, label in (("all_14", "14"), ("top_5", "5")):
            g = ce[variant][group]
            lines.append(f"{variant.replace('_', ' '):<24}{label:<14}" + "".join(
                f"{g[avg][m]:>9.4f}" for avg in ("micro", "macro") for m in ("precision", "recall", "f1")))
    return lines


def format_comparison(results: dict[str, dict]) -> str:
    """Side-by-side HEADLINE table: one column per named `compute_metrics` result."""
    names = list(results)
    width = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'metric':<20}" + "".join(f"{n:>{width}}" for n in names)]
    for metric in HEADLINE:
        lines.append(f"{metric:<20}" + "".join(
            f"{results[n]['headline'][metric]:>{width}.4f}" if metric in results[n].get("headline", {})
            else f"{'-':>{width}}" for n in names))
    lines.append(f"{'scored':<20}" + "".join(f"{results[n]['num_scored']:>{width}}" for n in names))
    lines.append(f"{'skipped':<20}" + "".join(f"{results[n]['skipped']['count']:>{width}}" for n in names))
    lines.append(f"{'empty predictions':<20}" + "".join(f"{results[n]['empty_predictions']['count']:>{width}}" for n in names))
    return "\n".join(lines)
