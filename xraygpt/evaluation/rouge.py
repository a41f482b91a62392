"""ROUGE-1/2/L F1 per sample, as XrayGPT reports them, through Google's `rouge-score` package.

English: stemming on (Porter), rouge-score's own tokenizer (lower case, non-alphanumerics as
spaces), F-measure of each sample; the corpus figure is the mean over samples, on a 0-1 scale
(the paper's 0.3213 / 0.0912 / 0.1997 on MIMIC-CXR).  Texts are passed through `clean_text` first.

Any other language: the same F-measures over `text.rouge_tokens` (each CJK character a token,
other letter/digit runs words; jieba words with `cjk_tokenizer: jieba`), no stemming.
rouge-score's own tokenizer keeps only a-z0-9, so with it two identical Chinese texts score 0.
"""

from __future__ import annotations

import logging

import numpy as np

from xraygpt.evaluation.text import clean_text, rouge_tokens
from xraygpt.languages import DEFAULT_LANGUAGE

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class MissingPackageError(ImportError):
    """A package a metric needs is not installed (the message says how to install it)."""


class LanguageTokenizer:
    """rouge-score's tokenizer interface (`tokenize(text) -> list[str]`) over `text.rouge_tokens`."""

    def __init__(self, language: str, cjk_tokenizer: str = "characters"):
        self.language = language
        self.cjk_tokenizer = cjk_tokenizer

    def tokenize(self, text: str) -> list[str]:
        return rouge_tokens(text, self.language, self.cjk_tokenizer)


def make_scorer(language: str = DEFAULT_LANGUAGE, cjk_tokenizer: str = "characters"):
    """rouge-score's scorer for ROUGE_TYPES in `language` (English: Porter stemming and its own tokenizer;
    else `LanguageTokenizer`); raises MissingPackageError without the package."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise MissingPackageError("ROUGE needs the rouge-score package: pip install -e '.[eval]'") from exc
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs each scorer it builds
    if language == DEFAULT_LANGUAGE:
        return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=LanguageTokenizer(language, cjk_tokenizer))


def rouge_f1(predictions: list[str], references: list[str], languages: list[str] | None = None,
             cjk_tokenizer: str = "characters") -> np.ndarray:
    """(N, 3) ROUGE-1, ROUGE-2, ROUGE-L F1 of each prediction against its reference, each scored in its
    row's language (`languages`; None: all English)."""
    languages = languages if languages is not None else [DEFAULT_LANGUAGE] * len(predictions)
    scorers: dict = {}
    rows = []
    for pred, ref, language in zip(predictions, references, languages, strict=True):
        if language not in scorers:
            scorers[language] = make_scorer(language, cjk_tokenizer)
        scores = scorers[language].score(clean_text(ref), clean_text(pred))
        rows.append([scores[t].fmeasure for t in ROUGE_TYPES])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(ROUGE_TYPES))
