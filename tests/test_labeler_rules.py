"""The CheXpert-style rule labeler: cues and their order, sentences, lists, No Finding, phrase files, speed."""

import json
import math
import shutil
import time

import numpy as np
import pytest

from conftest import SHARED_OPENI
from xraygpt.evaluation import chexpert_rules
from xraygpt.evaluation.chexpert_rules import (
    DEFAULT_PHRASES_DIR, NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN, ChexpertRuleLabeler, PhraseFileError,
    label_distribution, sentences,
)


@pytest.fixture(scope="module")
def labeler():
    return ChexpertRuleLabeler()


def labels(labeler, text: str) -> dict:
    """{observation: label} of the mentioned observations (NaN ones left out)."""
    row = labeler.label(text)
    return {obs: float(v) for obs, v in zip(OBSERVATIONS, row) if not math.isnan(v)}


@pytest.mark.parametrize("text,expected", [
    # negation, before and after the finding
    ("No pleural effusion.", {"Pleural Effusion": NEGATIVE, "No Finding": POSITIVE}),
    ("A pneumothorax is not seen on this film.", {"Pneumothorax": NEGATIVE, "No Finding": POSITIVE}),
    ("The lungs are clear without focal consolidation or pulmonary edema.",
     {"Consolidation": NEGATIVE, "Edema": NEGATIVE, "No Finding": POSITIVE}),
    # uncertainty: the opacity is certain, its cause is not
    ("The left basilar opacity may reflect atelectasis.", {"Lung Opacity": POSITIVE, "Atelectasis": UNCERTAIN}),
    ("Pneumonia is possible in the right lower lobe.", {"Pneumonia": UNCERTAIN}),
    # CheXpert order, side 1: pre-negation uncertainty wins over the negation word it contains
    ("Pneumonia cannot be excluded.", {"Pneumonia": UNCERTAIN}),
    ("We cannot rule out a tiny apical pneumothorax.", {"Pneumothorax": UNCERTAIN}),
    # CheXpert order, side 2: negation wins over a post-negation uncertainty cue
    ("No radiographic findings to suggest pneumonia.", {"Pneumonia": NEGATIVE, "No Finding": POSITIVE}),
    ("There is no suspicious pulmonary nodule.", {"Lung Lesion": NEGATIVE, "No Finding": POSITIVE}),
    # a negation inside the mention ("*" took it)
    ("The heart is not enlarged.", {"Cardiomegaly": NEGATIVE, "No Finding": POSITIVE}),
    # scope ends at "but" / "there is"
    ("No pneumothorax, but there is a small left pleural effusion.", {"Pneumothorax": NEGATIVE, "Pleural Effusion": POSITIVE}),
    # pseudo-negation and exclusions
    ("No change in the moderate cardiomegaly.", {"Cardiomegaly": POSITIVE}),
    ("Small pericardial effusion.", {"No Finding": POSITIVE}),
    # decimals do not cut a sentence: "no" still reaches the nodule
    ("No 1.5 cm nodule is identified.", {"Lung Lesion": NEGATIVE, "No Finding": POSITIVE}),
    # a finding reported gone is negated; one partly resolved is still there
    ("The right pleural effusion has resolved.", {"Pleural Effusion": NEGATIVE, "No Finding": POSITIVE}),
    ("Resolution of the left pneumothorax.", {"Pneumothorax": NEGATIVE, "No Finding": POSITIVE}),
    ("The right pleural effusion has partially resolved.", {"Pleural Effusion": POSITIVE}),
    ("The left pneumothorax has not completely resolved.", {"Pneumothorax": POSITIVE}),
    ("Incompletely resolved right lower lobe pneumonia.", {"Pneumonia": POSITIVE}),
    ("Near complete resolution of the right pleural effusion.", {"Pleural Effusion": POSITIVE}),
])
def test_sentences(labeler, text, expected):
    assert labels(labeler, text) == expected


def test_multi_sentence_report_and_aggregation(labeler):
    report = ("Stable cardiomegaly. No pneumothorax. There is no effusion on the right.\n"
              "A small left pleural effusion is present; possible left lower lobe pneumonia.")
    assert labels(labeler, report) == {
        "Cardiomegaly": POSITIVE, "Pneumothorax": NEGATIVE, "Pleural Effusion": POSITIVE,  # positive beats negative
        "Pneumonia": UNCERTAIN,
    }


def test_negated_and_uncertain_mentions_aggregate_to_uncertain(labeler):
    assert labels(labeler, "No focal consolidation. Possible consolidation at the left base.") == {"Consolidation": UNCERTAIN}


@pytest.mark.parametrize("report", [
    "1. No pneumothorax. 2. Small left pleural effusion.",
    "1. No pneumothorax 2. Small left pleural effusion",
    "1) No pneumothorax\n2) Small left pleural effusion",
])
def test_numbered_lists_keep_each_item_apart(labeler, report):
    assert labels(labeler, report) == {"Pneumothorax": NEGATIVE, "Pleural Effusion": POSITIVE}


def test_sentence_splitting():
    assert sentences("1. Heart normal. 2. Lungs clear; no effusion. A 2.5 cm nodule.") == [
        "Heart normal", "Lungs clear", "no effusion", "A 2.5 cm nodule"]


@pytest.mark.parametrize("text,no_finding", [
    ("Normal chest radiograph.", POSITIVE),
    ("No acute cardiopulmonary abnormality.", POSITIVE),
    ("Endotracheal tube in place. The lungs are clear.", POSITIVE),  # devices are not findings
    ("Possible pneumonia.", None),  # uncertain blocks No Finding
    ("Mild atelectasis at the bases.", None),
    ("No pneumothorax. Cardiomegaly.", None),
    ("", None),  # nothing said: no label at all
])
def test_no_finding(labeler, text, no_finding):
    row = labeler.label(text)
    assert (math.isnan(row[0]) if no_finding is None else row[0] == no_finding)
    if not text:
        assert np.isnan(row).all()


def test_label_many_shape_and_distribution(labeler):
    out = labeler.label_many(["No effusion.", "Cardiomegaly.", "Possible edema."])
    assert out.shape == (3, 14)
    dist = label_distribution(out)
    assert dist["No Finding"]["positive"] == 1 and dist["Cardiomegaly"]["positive"] == 1
    assert dist["Edema"]["uncertain"] == 1 and dist["Pleural Effusion"]["negative"] == 1
    assert labeler.label_many([]).shape == (0, 14)


def test_phrase_files_are_replaceable(tmp_path):
    folder = tmp_path / "phrases"
    shutil.copytree(DEFAULT_PHRASES_DIR, folder)
    assert math.isnan(ChexpertRuleLabeler().label("Big heart.")[OBSERVATIONS.index("Cardiomegaly")])
    with (folder / "mention" / "cardiomegaly.txt").open("a") as f:
        f.write("big heart\n")
    assert ChexpertRuleLabeler(str(folder)).label("Big heart.")[OBSERVATIONS.index("Cardiomegaly")] == POSITIVE


def test_bad_phrase_files(tmp_path):
    folder = tmp_path / "phrases"
    shutil.copytree(DEFAULT_PHRASES_DIR, folder)
    (folder / "negation_after.txt").write_text("not seen\n* absent\n")
    with pytest.raises(PhraseFileError, match=r"negation_after.txt:2: a phrase needs a word first and last"):
        ChexpertRuleLabeler(str(folder))
    (folder / "negation_after.txt").unlink()
    with pytest.raises(PhraseFileError, match=r"negation_after.txt does not exist"):
        ChexpertRuleLabeler(str(folder))


def test_cli_prints_the_distribution(tmp_path, capsys):
    reports = tmp_path / "reports.txt"
    reports.write_text("No pleural effusion.\nCardiomegaly. Possible edema.\nNormal chest.\n")
    assert chexpert_rules.main([str(reports)]) == 0
    out = capsys.readouterr().out
    assert "labelled 3 reports" in out and "most common positive label: No Finding" in out
    assert chexpert_rules.main([str(tmp_path / "missing.json")]) == 2
    assert "error: report file" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_OPENI / "filter_cap.json").is_file(), reason="../shared/data/openi-sample is absent")
def test_openi_summaries_fast_and_mostly_normal(labeler):
    captions = [a["caption"] for a in json.loads((SHARED_OPENI / "filter_cap.json").read_text())["annotations"]]
    assert len(captions) == 6423
    start = time.process_time()  # CPU time of this one process: the bound is for one core
    out = labeler.label_many(captions)
    assert time.process_time() - start < 30
    positives = {obs: c["positive"] for obs, c in label_distribution(out).items()}
    assert max(positives, key=positives.get) == "No Finding"
    assert positives["No Finding"] > len(captions) / 2
