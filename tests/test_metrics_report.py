"""Report metrics against values computed by hand: ROUGE, BLEU, CIDEr-D, clinical efficacy, bootstrap, clean-up."""

import math

import numpy as np
import pytest

from xraygpt.evaluation.bootstrap import bootstrap_intervals
from xraygpt.evaluation.caption_metrics import bleu_statistics, cider_d_scores, corpus_bleu
from xraygpt.evaluation.chexpert_rules import OBSERVATIONS, ChexpertRuleLabeler
from xraygpt.evaluation.clinical import clinical_efficacy
from xraygpt.evaluation.report_metrics import HEADLINE, compute_metrics, format_comparison, format_metrics
from xraygpt.evaluation.rouge import rouge_f1
from xraygpt.evaluation.text import clean_text, r2gen_normalise, r2gen_tokens

NAN = float("nan")


def test_rouge_hand_computed():
    # pred 4 words, ref 5, 4 common unigrams: P 1, R 4/5 -> F 8/9; bigrams 2 common of 3 / 4 -> F 4/7; LCS 4 -> 8/9
    out = rouge_f1(["The heart is normal."], ["The heart size is normal."])
    assert np.allclose(out, [[8 / 9, 4 / 7, 8 / 9]])
    # the stemmer is on: "effusions" matches "effusion"
    assert np.allclose(rouge_f1(["pleural effusions"], ["pleural effusion"]), [[1.0, 1.0, 1.0]])
    assert np.allclose(rouge_f1([""], ["pleural effusion"]), [[0.0, 0.0, 0.0]])


def _bleu(pairs):
    return corpus_bleu(bleu_statistics([h.split() for h, _ in pairs], [r.split() for _, r in pairs]))


def test_bleu_hand_computed():
    # p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0 (smoothed to ~1e-15), equal lengths -> no brevity penalty
    b = _bleu([("the cat sat on the mat", "the cat is on the mat")])
    assert np.allclose(b[:3], [5 / 6, math.sqrt(5 / 6 * 3 / 5), (5 / 6 * 3 / 5 / 4) ** (1 / 3)])
    assert b[3] < 1e-3
    # brevity: 2 words against 6 -> BP = exp(1 - 6/2)
    assert np.allclose(_bleu([("the cat", "the cat is on the mat")])[:2], [math.exp(-2)] * 2)


def test_bleu_is_corpus_level_not_a_mean_of_sentences():
    # matches 2 + 1 over 2 + 4 hypothesis words: 0.5 (the mean of sentence BLEU-1 would be 0.625)
    assert np.isclose(_bleu([("a b", "a b"), ("c d e f", "c x y z")])[0], 0.5)


def test_cider_d_hand_computed():
    # 2 samples: idf = log 2 for an n-gram in one reference, 0 for one in both
    # identical 2-word texts: n = 1 and 2 similarities 1, n = 3 and 4 empty -> 10 x 2/4
    assert np.allclose(cider_d_scores([["a", "b"], ["c", "d"]], [["a", "b"], ["c", "d"]]), [5.0, 5.0])
    # "x" is in both references: idf 0; "c" is in none: it cannot match "b"
    assert np.allclose(cider_d_scores([["x", "a"], ["x", "c"]], [["x", "a"], ["x", "b"]]), [5.0, 0.0])
    # term frequency clipping and the length penalty: hyp "a b a b" against ref "a b"
    # n=1: sum min(2ln2, ln2) ln2 x 2 / (2 sqrt2 ln2 x sqrt2 ln2) = 1/2
    # n=2: "a b" twice (clipped to 1), "b a" not in the ref: ln2^2 / (sqrt5 ln2 x ln2) = 1/sqrt5
    penalty = math.exp(-((4 - 2) ** 2) / (2 * 6.0 ** 2))
    expected = 10 * (0.5 + 1 / math.sqrt(5)) / 4 * penalty
    out = cider_d_scores([["a", "b", "a", "b"], ["c", "d"]], [["a", "b"], ["c", "d"]])
    assert np.isclose(out[0], expected) and np.isclose(out[1], 5.0)


def test_r2gen_normalisation_and_clean_text():
    assert r2gen_normalise("1. The heart is normal. 2. No x-ray effusion; 2.5 cm nodule!") == \
        "the heart is normal . no xray effusion 25 cm nodule ."
    assert r2gen_tokens("Heart normal.") == ["heart", "normal", "."]
    assert r2gen_normalise("...") == "" and r2gen_tokens("") == []
    assert clean_text("No\u00a0effusion\u200b\ufffd\x00 \ufeff.") == "No effusion ."
    assert clean_text("\u200b\ufffd\ufeff \x07") == ""


def _labels(rows):
    """(N, 14) labels from {observation: value} dicts."""
    out = np.full((len(rows), len(OBSERVATIONS)), NAN)
    for i, row in enumerate(rows):
        for obs, v in row.items():
            out[i, OBSERVATIONS.index(obs)] = v
    return out


def test_clinical_efficacy_hand_computed():
    pred = _labels([{"Cardiomegaly": 1, "Edema": -1}, {"Cardiomegaly": 1}, {"No Finding": 1}])
    ref = _labels([{"Cardiomegaly": 1, "Edema": 1}, {"Pleural Effusion": 1}, {"No Finding": 1, "Edema": 0}])
    ce = clinical_efficacy(pred, ref)
    pos = ce["positive_only"]
    # positives only: Cardiomegaly TP 1 FP 1; Edema FN 1; Pleural Effusion FN 1; No Finding TP 1
    # micro over 14: TP 2, FP 1, FN 2 -> P 2/3, R 1/2, F1 4/7
    assert np.allclose([pos["all_14"]["micro"][k] for k in ("precision", "recall", "f1")], [2 / 3, 1 / 2, 4 / 7])
    # macro over 14: per-observation F1: Cardiomegaly 2/3, No Finding 1, others 0 -> (5/3) / 14
    assert np.isclose(pos["all_14"]["macro"]["f1"], (2 / 3 + 1) / 14)
    # top 5 (no No Finding): TP 1, FP 1, FN 2 -> P 1/2, R 1/3, F1 2/5; macro F1 = (2/3) / 5
    assert np.allclose([pos["top_5"]["micro"][k] for k in ("precision", "recall", "f1")], [1 / 2, 1 / 3, 2 / 5])
    assert np.isclose(pos["top_5"]["macro"]["f1"], (2 / 3) / 5)
    assert pos["per_observation"]["Edema"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # uncertain as positive: the uncertain Edema of sample 0 becomes a TP
    unc = ce["uncertain_as_positive"]
    assert unc["per_observation"]["Edema"]["f1"] == 1.0
    assert np.allclose([unc["top_5"]["micro"][k] for k in ("precision", "recall", "f1")], [2 / 3, 2 / 3, 2 / 3])


def test_bootstrap_intervals():
    values = np.arange(100, dtype=float)
    stat = lambda idx: {"mean": float(values[idx].mean())}  # noqa: E731
    a = bootstrap_intervals(stat, 100, 400, 0.95, seed=1)
    assert a == bootstrap_intervals(stat, 100, 400, 0.95, seed=1)
    low, high = a["mean"]
    assert low < 49.5 < high and 40 < low and high < 60
    narrow = bootstrap_intervals(stat, 100, 400, 0.5, seed=1)["mean"]
    assert low < narrow[0] < narrow[1] < high
    assert bootstrap_intervals(lambda idx: {"c": 3.0}, 10, 50, 0.95, seed=0) == {"c": [3.0, 3.0]}
    assert bootstrap_intervals(stat, 100, 0, 0.95, seed=0) == {}
    with pytest.raises(ValueError, match="confidence level"):
        bootstrap_intervals(stat, 100, 10, 95, seed=0)


def test_compute_metrics_counts_skips_and_scores_the_rest():
    rows = [
        {"image_id": "a", "prediction": "No pleural effusion. Mild cardiomegaly.",
         "reference": "Mild cardiomegaly. No effusion."},
        {"image_id": "b", "prediction": "", "reference": "Small right pneumothorax."},  # empty prediction: scored, counted
        {"image_id": "c", "prediction": "Normal.", "reference": "\u200b\ufffd \ufeff"},  # unicode junk only: skipped
        {"image_id": "d", "prediction": None, "reference": "x"},  # malformed: skipped
        {"image_id": "a", "prediction": "again", "reference": "again"},  # duplicate: skipped
        {"image_id": "e", "prediction": "Heart normal.\u200b", "reference": "The heart is normal.\ufffd"},  # junk around words
    ]
    m = compute_metrics(rows, ChexpertRuleLabeler(), resamples=50, seed=0, skipped={"image does not decode": ["z"]})
    assert m["num_scored"] == 3
    assert m["skipped"] == {"count": 4, "by_reason": {"image does not decode": ["z"], "malformed row": ["d"],
                                                      "duplicate id": ["a"], "empty reference": ["c"]}}
    assert m["empty_predictions"] == {"count": 1, "ids": ["b"]}
    assert set(m["headline"]) == set(HEADLINE) and set(HEADLINE) <= set(m["confidence_intervals"])
    assert all(0.0 <= v <= 10.0 for v in m["headline"].values())
    expected_rouge1 = rouge_f1([rows[0]["prediction"], "", rows[5]["prediction"]],
                               [rows[0]["reference"], rows[1]["reference"], rows[5]["reference"]])[:, 0].mean()
    assert np.isclose(m["headline"]["ROUGE-1"], expected_rouge1)
    assert m["clinical_efficacy"]["positive_counts"]["reference"]["Pneumothorax"] == 1
    table = format_metrics(m)
    assert "3 samples scored; 4 skipped" in table and "ROUGE-L" in table and "uncertain as positive" in table
    assert "CIDEr-D" in format_comparison({"A": m, "B": m})


def test_nothing_scoreable_still_reports_counts():
    m = compute_metrics([{"image_id": "a", "prediction": "x", "reference": ""}], ChexpertRuleLabeler(), resamples=10)
    assert m["num_scored"] == 0 and m["skipped"]["count"] == 1 and "headline" not in m
    assert "nothing to score" in format_metrics(m)
