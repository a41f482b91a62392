"""ROUGE-1/2/L F1 per sample, as XrayGPT reports them, through Google's `rouge-score` package.

Stemming on (Porter), rouge-score's own tokenizer (lower case, non-alphanumerics as spaces),
F-measure of each sample; the corpus figure is the mean over samples, on a 0-1 scale (the
paper's 0.3213 / 0.0912 / 0.1997 on MIMIC-CXR).  Texts are passed through `clean_text` first.
"""

from __future__ import annotations

import logging

import numpy as np

from xraygpt.evaluation.text import clean_text

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class MissingPackageError(ImportError):
    """A package a metric needs is not installed (the message says how to install it)."""


def make_scorer():
    """rouge-score's scorer for ROUGE_TYPES with stemming (raises MissingPackageError without the package)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise MissingPackageError("ROUGE needs the rouge-score package: pip install -e '.[eval]'") from exc
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs each scorer it builds
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_f1(predictions: list[str], references: list[str]) -> np.ndarray:
    """(N, 3) ROUGE-1, ROUGE-2, ROUGE-L F1 of each prediction against its reference."""
    scorer = make_scorer()
    rows = []
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(clean_text(ref), clean_text(pred))
        rows.append([scores[t].fmeasure for t in ROUGE_TYPES])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(ROUGE_TYPES))
