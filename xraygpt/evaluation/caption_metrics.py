"""BLEU-1..4 and CIDEr-D as the captioning and report-generation literature computes them.

Written here from the published definitions because the reference implementation,
coco-caption (pycocoevalcap), needs Java for its PTB tokenizer; report-generation papers
(R2Gen and those after it) skip that tokenizer and score R2Gen-normalised text
(`xraygpt.evaluation.text.r2gen_tokens`), which is what the callers here pass in for English;
for another language they pass `text.metric_tokens` (each CJK character a token, or jieba
words), so that Chinese n-grams are characters, not whole sentences.  One reference per sample.

BLEU (Papineni et al., 2002), corpus level with coco-caption's conventions: for n = 1..4,
p_n = (sum of clipped n-gram matches + 1e-15) / (sum of hypothesis n-grams + 1e-9) over the
whole test set; BLEU-N = (p_1 ... p_N)^(1/N) x BP, with BP = exp(1 - r/c) when the total
hypothesis length c is below the total reference length r (each smoothed like p_n), else 1.
Per-sample statistics (`bleu_statistics`) are summed, so a bootstrap resample is a re-sum.

CIDEr-D (Vedantam et al., 2015), as coco-caption's `Cider` scorer: n-grams n = 1..4 weighted
by tf-idf, with document frequencies counted over the test set's references and
idf = log(number of samples) - log(max(1, df)); for each n the similarity is
sum_g min(h_g, r_g) r_g / (|h| |r|) (clipped counts) times the length penalty
exp(-(len_h - len_r)^2 / (2 sigma^2)), sigma = 6; the score is 10 x the mean over n.
The corpus score is the mean of the per-sample scores.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

MAX_N = 4
_TINY, _SMALL = 1e-15, 1e-9
CIDER_SIGMA = 6.0


def ngrams(tokens: list[str], n: int) -> Counter:
    """Counts of the n-grams (tuples) of `tokens`."""
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu_statistics(hypotheses: list[list[str]], references: list[list[str]]) -> np.ndarray:
    """(N, 2 + 2 x MAX_N) per sample: hypothesis length, reference length, clipped matches for
    n = 1..MAX_N, hypothesis n-gram counts for n = 1..MAX_N."""
    rows = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        matches, totals = [], []
        for n in range(1, MAX_N + 1):
            h, r = ngrams(hyp, n), ngrams(ref, n)
            matches.append(sum(min(c, r[g]) for g, c in h.items()))
            totals.append(max(0, len(hyp) - n + 1))
        rows.append([len(hyp), len(ref), *matches, *totals])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 2 + 2 * MAX_N)


def corpus_bleu(stats: np.ndarray) -> np.ndarray:
    """(MAX_N,) BLEU-1..MAX_N from summed `bleu_statistics` rows (see module docstring)."""
    total = stats.sum(axis=0)
    hyp_len, ref_len = total[0], total[1]
    precisions = (total[2:2 + MAX_N] + _TINY) / (total[2 + MAX_N:] + _SMALL)
    ratio = (hyp_len + _TINY) / (ref_len + _SMALL)
    penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    return np.array([np.prod(precisions[:n]) ** (1 / n) * penalty for n in range(1, MAX_N + 1)])


def _tfidf(tokens: list[str], log_docs: float, df: Counter) -> list[tuple[dict, float]]:
    """Per n: ({n-gram: tf x idf}, vector norm)."""
    out = []
    for n in range(1, MAX_N + 1):
        vec = {g: c * (log_docs - math.log(max(1.0, df[g]))) for g, c in ngrams(tokens, n).items()}
        out.append((vec, math.sqrt(sum(v * v for v in vec.values()))))
    return out


def cider_d_scores(hypotheses: list[list[str]], references: list[list[str]], sigma: float = CIDER_SIGMA) -> np.ndarray:
    """(N,) CIDEr-D of each sample, with the idf taken from these N references."""
    df: Counter = Counter()
    for ref in references:
        df.update({g for n in range(1, MAX_N + 1) for g in ngrams(ref, n)})
    log_docs = math.log(float(max(1, len(references))))
    scores = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        h_vecs, r_vecs = _tfidf(hyp, log_docs, df), _tfidf(ref, log_docs, df)
        penalty = math.exp(-((len(hyp) - len(ref)) ** 2) / (2 * sigma ** 2))
        per_n = []
        for (h, h_norm), (r, r_norm) in zip(h_vecs, r_vecs):
            dot = sum(min(v, r.get(g, 0.0)) * r.get(g, 0.0) for g, v in h.items())
            per_n.append(dot / (h_norm * r_norm) * penalty if h_norm and r_norm else 0.0)
        scores.append(10.0 * sum(per_n) / MAX_N)
    return np.asarray(scores, dtype=np.float64)
