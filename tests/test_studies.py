"""Study files: `prepare mimic|openi` write studies.jsonl (views, priors, sections), the study-file and
ReXrank readers, and every bad input of issue 15's data side counted (with ../shared/data: the real
OpenI reports)."""

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from xraygpt.data.prepare.__main__ import main as prepare_main
from xraygpt.data.prepare.mimic import prepare_mimic
from xraygpt.data.prepare.openi import image_key, prepare_openi
from xraygpt.data.prepare.study_files import parse_study_time
from xraygpt.data.rexrank import parse_context, read_rexrank, rule_summary
from xraygpt.data.studies import (
    StudyFileError, StudyImage, StudyRecord, canonical_view, limit_images, order_images, read_studies, write_studies,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OPENI_REPORTS = SHARED / "openi-reports" / "ecgen-radiology"

FINDINGS = "The heart size is normal. The lungs are clear without focal consolidation, effusion or pneumothorax."
IMPRESSION = "No acute cardiopulmonary process."
META_HEADER = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
               "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
               "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]


def _image(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (24, 20), value).save(path)


def _csv(path, header, rows):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _mimic_report(indication="INDICATION:  ___M with cough", comparison="___", findings=FINDINGS, impression=IMPRESSION):
    text = "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
    text += f" {indication}\n\n" if indication else ""
    text += f" COMPARISON:  {comparison}\n\n" if comparison else ""
    text += f" FINDINGS:\n\n {findings}\n\n"
    return text + (f" IMPRESSION:\n\n {impression}\n" if impression else "")


# study -> (report text, [(dicom, subject, view, date, time, split, image state)])
A, B, C, D = "10000001", "10000002", "10000003", "10000004"
MIMIC_STUDIES = {
    # subject A, one day: times that lost their leading zeros; 09:35:12 ("93512.0") before 10:10:10
    "50000010": (_mimic_report(), [("a10lat", A, "LATERAL", "21800101", "101010.5", "train", "ok"),
                                   ("a10pa", A, "PA", "21800101", "101010.5", "train", "ok")]),
    "50000011": (_mimic_report(indication="HISTORY:  Fever.", comparison="Chest radiograph ___."),
                 [("a11ll", A, "LL", "21800101", "93512.0", "train", "ok"),
                  ("a11x", A, "", "21800101", "93512.0", "train", "ok"),          # empty ViewPosition: unknown
                  ("a11ap", A, "AP", "21800101", "93512.0", "train", "ok")]),
    "50000012": (_mimic_report(indication=None, comparison=None),                       # no indication
                 [("a12", A, "AP", "21800101", "0.187", "train", "ok")]),               # 00:00:00.187
    # the next day, same time: ties broken by study id (50000009 before 50000013)
    "50000013": (_mimic_report(), [("a13", A, "PA", "21800102", "93512.0", "train", "ok")]),
    "50000009": (_mimic_report(), [("a09", A, "PA", "21800102", "93512.0", "train", "ok")]),
    # subject B: a study without time, a dropped previous study, a previous study in another split
    "50000020": (_mimic_report(), [("b20", B, "PA", "21790505", "120000", "train", "ok")]),
    "50000021": (_mimic_report(), [("b21", B, "PA", "21790506", "", "train", "ok")]),
    "50000022": (_mimic_report(impression=None), [("b22", B, "PA", "21790507", "80000", "train", "ok")]),
    "50000023": (_mimic_report(), [("b23", B, "PA", "21790508", "90000", "train", "ok")]),
    "50000024": (_mimic_report(), [("b24", B, "AP", "21790509", "90000", "val", "ok")]),
    # one study whose rows name two subjects (C and D): neither given nor used as a prior
    "50000030": (_mimic_report(), [("c30a", C, "PA", "21800301", "100000", "train", "ok"),
                                   ("c30b", D, "LATERAL", "21800301", "100000", "train", "ok")]),
    "50000031": (_mimic_report(), [("c31", C, "PA", "21800302", "100000", "train", "ok")]),
    # a study with no readable image: dropped, counted
    "50000040": (_mimic_report(), [("c40", C, "PA", "21800401", "100000", "train", "garbage")]),
}


def _mimic(tmp_path, studies=MIMIC_STUDIES, header=META_HEADER):
    reports, jpg = tmp_path / "mimic-cxr", tmp_path / "mimic-cxr-jpg"
    metadata, splits = [], []
    for study, (text, images) in studies.items():
        subject = images[0][1]
        path = reports / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for dicom, subject, view, date, time, split, state in images:
            image = jpg / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
            if state == "ok":
                _image(image)
            else:
                image.parent.mkdir(parents=True, exist_ok=True)
                image.write_bytes(b"not a jpeg")
            row = [dicom, subject, study, "CHEST (PA AND LAT)", view, "3000", "2500", date, time, "", "", ""]
            metadata.append(row[:len(header)])
            splits.append([dicom, study, subject, {"val": "validate"}.get(split, split)])
    _csv(jpg / "mimic-cxr-2.0.0-metadata.csv", header, metadata)
    _csv(jpg / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], splits)
    return reports, jpg


def _lines(path):
    return {r["study_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_mimic_study_files_views_priors_and_sections(tmp_path):
    reports, jpg = _mimic(tmp_path)
    out = tmp_path / "out"
    stats = prepare_mimic(reports, jpg, out, frontal_only=False, image_mode="link", verify_images=True)
    train, val = _lines(out / "train" / "studies.jsonl"), _lines(out / "val" / "studies.jsonl")
    assert sorted(train) == ["s500000" + s for s in ("09", "10", "11", "12", "13", "20", "21", "23", "30", "31")]
    assert sorted(val) == ["s50000024"]
    # frontal first: PA, AP, then LATERAL/LL, then unknown; paths are the split's links
    assert [(i["image_id"], i["view"]) for i in train["s50000010"]["images"]] == [("a10pa", "PA"), ("a10lat", "LATERAL")]
    assert [(i["image_id"], i["view"]) for i in train["s50000011"]["images"]] == [
        ("a11ap", "AP"), ("a11ll", "LL"), ("a11x", "unknown")]
    assert train["s50000011"]["images"][0]["path"] == "image/a11ap.jpg"
    assert (out / "train" / "image" / "a11ap.jpg").resolve() == (
        jpg / "files/p10/p10000001/s50000011/a11ap.jpg").resolve()
    # priors by StudyDate + StudyTime (zero-padded), ties by study id
    priors = {sid: r["prior_study_id"] for sid, r in {**train, **val}.items()}
    assert priors == {
        "s50000012": None, "s50000011": "s50000012", "s50000010": "s50000011", "s50000009": "s50000010",
        "s50000013": "s50000009",
        "s50000020": None, "s50000021": None, "s50000023": None, "s50000024": None,
        "s50000030": None, "s50000031": None,
    }
    # sections: INDICATION, else HISTORY; COMPARISON; raw findings and impression; the summary of filter_cap.json
    assert train["s50000010"]["indication"] == "___M with cough" and train["s50000010"]["comparison"] == "___"
    assert train["s50000011"]["indication"] == "Fever." and train["s50000011"]["comparison"] == "Chest radiograph ___."
    assert train["s50000012"]["indication"] == "" and train["s50000012"]["comparison"] == ""
    record = train["s50000010"]
    assert (record["findings"], record["impression"], record["subject_id"]) == (FINDINGS, IMPRESSION, A)
    captions = {a["report_id"]: a["caption"] for a in json.loads((out / "train" / "filter_cap.json").read_text())["annotations"]}
    assert all(r["summary"] == captions[sid] for sid, r in train.items())
    assert record["summary"] == f"{FINDINGS} {IMPRESSION}"

    block = stats["studies"]
    assert block["studies"] == 11 and block["splits"] == {"train": 10, "val": 1}
    assert block["images_per_study"] == {"1": 8, "2": 2, "3": 1}
    assert block["views"] == {"PA": 8, "AP": 3, "LATERAL": 2, "LL": 1, "unknown": 1}
    assert block["with_prior"] == 4 and block["without_indication"] == 1
    assert block["without_prior"] == {"first study of its subject": 3, "no study time": 1, "previous study dropped": 1,
                                      "previous study in another split": 1, "study under two subjects": 1}
    assert block["dropped"] == {"no impression": 1, "no usable image": 1}
    assert block["problems"] == {"study under two subjects": 1, "unknown view": 1}
    assert json.loads((out / "stats.json").read_text())["studies"] == block

    # the written file reads back unchanged (all images there, priors valid, nothing dropped)
    studies = read_studies(out / "train" / "studies.jsonl", verify_images=True)
    assert [r.study_id for r in studies.records] == list(train) and not studies.dropped
    assert {k: n for k, n in studies.problems.items() if k.startswith("prior")} == {}
    assert studies.problems == {"unknown view": 1, "no indication": 1}
    first = studies.by_id()["s50000011"]
    assert first.images[0].path == out / "train" / "image" / "a11ap.jpg" and first.prior_study_id == "s50000012"
    # more images than a model shows: all recorded, the first frontal ones taken
    assert [i.image_id for i in limit_images(first.images, 2)] == ["a11ap", "a11ll"]


def test_mimic_metadata_without_study_times_gives_no_priors(tmp_path):
    reports, jpg = _mimic(tmp_path, header=META_HEADER[:7])  # the columns the summary layout needs, no dates
    stats = prepare_mimic(reports, jpg, tmp_path / "out", False, "link", False)  # no header check: 50000040 stays
    assert stats["studies"]["with_prior"] == 0
    assert stats["studies"]["without_prior"] == {"no study time": 11, "study under two subjects": 1}


@pytest.mark.parametrize("date,time,expected", [
    ("21800101", "0.187", ("21800101", 0.187)),
    ("21800101", "93512.0", ("21800101", 9 * 3600 + 35 * 60 + 12)),
    ("21800101", "101010", ("21800101", 10 * 3600 + 10 * 60 + 10)),
    ("21800101", "235959.999", ("21800101", 86399.999)),
    ("21800101.0", "5", ("21800101", 5.0)),
    ("21800101", "", None), ("21800101", "246000", None), ("21800101", "1234567", None),
    ("21800101", "12:00", None), ("21801301", "120000", None), ("2180011", "120000", None), ("", "120000", None),
])
def test_study_time_reads_lost_leading_zeros(date, time, expected):
    parsed = parse_study_time(date, time)
    if expected is None:
        assert parsed is None
    else:
        assert parsed[0] == expected[0] and parsed[1] == pytest.approx(expected[1])


OPENI_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">{comparison}</AbstractText>
<AbstractText Label="INDICATION">{indication}</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
{images}
</eCitation>
"""


def _openi(tmp_path, reports):
    xml, png = tmp_path / "ecgen-radiology", tmp_path / "NLMCXR_png"
    xml.mkdir()
    png.mkdir()
    for n, (names, indication) in reports.items():
        nodes = "".join(f'<parentImage id="{name}"/>' for name in names)
        (xml / f"{n}.xml").write_text(OPENI_XML.format(comparison="None.", indication=indication, findings=FINDINGS,
                                                       impression=IMPRESSION, images=nodes))
        for name in names:
            _image(png / f"{name}.png")
    return xml, png


OPENI_REPORTS_FIXTURE = {
    1: (["CXR1_IM-0001-3001", "CXR1_IM-0001-4001"], "Positive TB test"),     # lateral listed first
    2: (["CXR2_IM-0652-1001", "CXR2_IM-0652-2001"], "Chest pain"),
    3: (["CXR3_IM-1384-1001"], ""),                                          # empty INDICATION element
    4: (["CXR4_IM-2050-1001", "CXR4_IM-2050-2001"], "XXXX-year-old with cough"),
}
PROJECTIONS = [
    ["1", "1_IM-0001-4001.dcm.png", "Frontal"], ["1", "1_IM-0001-3001.dcm.png", "Lateral"],   # Kaggle's names
    ["2", "CXR2_IM-0652-1001.png", "Frontal"], ["2", "2_IM-0652-2001.dcm.png", "Oblique"],    # unknown projection
    ["4", "4_IM-2050-1001.dcm.png", "Frontal"], ["4", "4_IM-2050-1001.dcm.png", "Lateral"],   # conflicting rows
    ["99", "99_IM-9999-1001.dcm.png", "Frontal"],                                             # no such image
]                                                                                             # report 3: no row


def _openi_studies(out):
    return {sid: r for split in ("train", "val", "test") if (out / split / "studies.jsonl").is_file()
            for sid, r in _lines(out / split / "studies.jsonl").items()}


def test_openi_study_files_with_and_without_projections(tmp_path, capsys):
    xml, png = _openi(tmp_path, OPENI_REPORTS_FIXTURE)
    projections = tmp_path / "indiana_projections.csv"
    _csv(projections, ["uid", "filename", "projection"], PROJECTIONS)
    assert image_key("CXR1_IM-0001-4001") == image_key("1_IM-0001-4001.dcm.png") == "1_IM-0001-4001"

    without = prepare_openi(xml, png, tmp_path / "plain", (0.5, 0.25, 0.25), 0, "link", True)
    plain = _openi_studies(tmp_path / "plain")
    assert sorted(plain) == ["1", "2", "3", "4"]
    assert {i["view"] for r in plain.values() for i in r["images"]} == {"unknown"}
    assert [i["image_id"] for i in plain["1"]["images"]] == ["1_1", "1_2"]  # source order when nothing is known
    assert without["studies"]["views"] == {"unknown": 7} and without["studies"]["problems"] == {"unknown view": 7}
    assert without["studies"]["without_prior"] == {"no subject in the source": 4}

    assert prepare_main(["openi", "--reports", str(xml), "--images", str(png), "--out", str(tmp_path / "views"),
                         "--projections", str(projections), "--fractions", "0.5", "0.25", "0.25"]) == 0
    assert "studies: 4 (0 with a prior, 1 without indication)" in capsys.readouterr().out
    views = _openi_studies(tmp_path / "views")
    assert [(i["image_id"], i["view"]) for i in views["1"]["images"]] == [("1_2", "FRONTAL"), ("1_1", "LATERAL")]
    assert [(i["image_id"], i["view"]) for i in views["2"]["images"]] == [("2_1", "FRONTAL"), ("2_2", "unknown")]
    assert [i["view"] for i in views["3"]["images"]] == ["unknown"]
    assert [i["view"] for i in views["4"]["images"]] == ["unknown", "unknown"]  # 4_1's rows disagree; 4_2 has none
    assert views["1"]["indication"] == "Positive TB test" and views["1"]["comparison"] == "None."
    assert views["3"]["indication"] == "" and views["1"]["summary"] == f"{FINDINGS} {IMPRESSION}"
    stats = json.loads((tmp_path / "views" / "stats.json").read_text())
    assert stats["inputs"]["projections"] == str(projections)
    assert stats["studies"]["views"] == {"FRONTAL": 2, "LATERAL": 1, "unknown": 4}
    assert stats["studies"]["problems"] == {"unknown view": 4, "image without projection row": 2,
                                            "unknown projection": 1, "conflicting projections": 1,
                                            "projection rows matching no kept image": 1}
    # the summary layout is the same with or without projections
    for split in ("train", "val", "test"):
        for name in ("filter_cap.json", "reports.json"):
            assert (tmp_path / "views" / split / name).read_bytes() == (tmp_path / "plain" / split / name).read_bytes()

    assert prepare_main(["openi", "--reports", str(xml), "--images", str(png), "--out", str(tmp_path / "o3"),
                         "--projections", str(tmp_path / "nowhere.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"error: projections file {tmp_path / 'nowhere.csv'} does not exist"
    (tmp_path / "bad.csv").write_text("uid,file,view\n1,a.png,Frontal\n")
    assert prepare_main(["openi", "--reports", str(xml), "--images", str(png), "--out", str(tmp_path / "o4"),
                         "--projections", str(tmp_path / "bad.csv")]) == 2
    assert "has no column 'filename'" in capsys.readouterr().err


@pytest.mark.skipif(not OPENI_REPORTS.is_dir(), reason="../shared/data/openi-reports is not beside the project")
def test_real_openi_reports_give_complete_study_records(tmp_path, capsys):
    from test_summary_fidelity import placeholder_images

    images = placeholder_images(OPENI_REPORTS, tmp_path / "png")
    out = tmp_path / "openi"
    assert prepare_main(["openi", "--reports", str(OPENI_REPORTS), "--images", str(images), "--out", str(out),
                         "--no-verify-images"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    total = 0
    for split in ("train", "val", "test"):
        reports = json.loads((out / split / "reports.json").read_text())
        studies = read_studies(out / split / "studies.jsonl")
        assert not studies.dropped and len(studies.records) == len(reports)
        for record in studies.records:
            report = reports[record.study_id]
            assert [i.image_id for i in record.images] == report["image_ids"]
            assert all(i.path.is_file() for i in record.images)
            assert record.findings and record.impression and record.summary == report["summary"]
            assert record.findings == report["sections"]["findings"]
            assert record.indication == report["sections"].get("indication", "")
            assert record.comparison == report["sections"].get("comparison", "")
        total += len(studies.records)
    block = stats["studies"]
    assert block["studies"] == total == stats["totals"]["report"]["out"]
    assert sum(block["images_per_study"].values()) == total
    assert sum(int(n) * c for n, c in block["images_per_study"].items()) == stats["totals"]["image"]["out"]
    with capsys.disabled():
        print(f"\nreal OpenI reports: {total} study records; images per study {block['images_per_study']}; "
              f"without indication {block['without_indication']}, without comparison {block['without_comparison']}; "
              f"views {block['views']}; dropped {block['dropped']}")


def _rexrank_fixture(tmp_path):
    """A ReXrank-style file in the released fields (IU X-ray, MIMIC-CXR and CheXpert Plus records) with one
    record per bad input."""
    root = tmp_path / "rexrank"
    for name in ("CXR38_IM-1911/0.png", "CXR38_IM-1911/1.png", "p10/p10046166/s50051329/lat.jpg",
                 "p10/p10046166/s50051329/front.jpg", "valid/patient64620/study1/view1_frontal.png",
                 "erect/0.png", "partial/0.png"):
        _image(root / name)
    (root / "garbage").mkdir()
    (root / "garbage" / "0.png").write_bytes(b"not a png")
    records = {
        "CXR38_IM-1911": {  # IU X-ray: the key image is the second listed
            "key_image_path": "CXR38_IM-1911/1.png", "image_path": ["CXR38_IM-1911/0.png", "CXR38_IM-1911/1.png"],
            "report": "Findings: Lungs are clear. Impression: No acute process.",
            "section_findings": "Lungs are clear. There is no pneumothorax or pleural effusion.",
            "section_impression": "No acute cardiopulmonary process.", "split": "test",
            "frontal_lateral": ["Lateral", "Frontal"],
            "context": "Indication: XXXX, XXXX and shortness of breath for 3 days Comparison: XXXX"},
        "50051329": {  # MIMIC-CXR: paths with a leading "/", NaN impression, age and gender in the context
            "image_path": ["/p10/p10046166/s50051329/lat.jpg", "/p10/p10046166/s50051329/front.jpg"],
            "section_findings": "The lungs are low in volume.\nA 1.2-cm calcified granuloma is unchanged from prior study.",
            "section_impression": math.nan, "frontal_lateral": ["lateral", "antero-posterior"], "split": "test",
            "subject_id": 10046166, "key_image_path": "/p10/p10046166/s50051329/front.jpg",
            "context": "Age:50-60.Gender:M.Indication: ___-year-old male with confusion.Comparison: Chest radiograph ___."},
        "patient64620_study1": {  # CheXpert Plus: ap_pa, age/sex fields, "Indication:nan"
            "image_path": ["valid/patient64620/study1/view1_frontal.png"],
            "report": "Findings: None. Impression: 1. SMALL RIGHT PLEURAL EFFUSION REMAINS.",
            "context": "Age:77.0.Gender:F.Indication:nanComparison: None.", "section_findings": math.nan,
            "section_impression": "\n1. SMALL RIGHT PLEURAL\nEFFUSION REMAINS.\n", "frontal_lateral": ["Frontal"],
            "ap_pa": ["AP"], "age": 77.0, "sex": "Female", "key_image_path": "valid/patient64620/study1/view1_frontal.png"},
        "unknown-view": {"image_path": ["erect/0.png"], "frontal_lateral": ["erect"],
                         "section_findings": FINDINGS, "section_impression": IMPRESSION},
        "partial": {"image_path": ["partial/0.png", "partial/missing.png", "../outside.png"],
                    "key_image_path": "partial/elsewhere.png",
                    "frontal_lateral": ["Frontal", "Lateral", "Lateral"], "section_findings": FINDINGS,
                    "section_impression": IMPRESSION, "context": "Indication: Cough."},
        "missing-images": {"image_path": ["gone/0.png", "gone/1.png"], "frontal_lateral": ["Frontal", "Lateral"],
                           "section_findings": FINDINGS, "section_impression": IMPRESSION},
        "unreadable": {"image_path": ["garbage/0.png"], "frontal_lateral": ["Frontal"], "section_findings": FINDINGS},
        "no-images": {"image_path": [], "section_findings": FINDINGS, "section_impression": IMPRESSION},
        "not-a-record": "just a string",
    }
    path = root / "ReXRank_test.json"
    path.write_text(json.dumps(records, indent=4))  # NaN written as ReXrank's files write it
    assert "NaN" in path.read_text()
    return path, root


def test_rexrank_file_loads_into_study_records(tmp_path, caplog):
    path, root = _rexrank_fixture(tmp_path)
    with caplog.at_level("INFO", logger="xraygpt.data.studies"):
        studies = read_rexrank(path, verify_images=True)
    assert str(path) in caplog.text and "9 study records, 5 kept" in caplog.text
    by_id = studies.by_id()
    assert list(by_id) == ["CXR38_IM-1911", "50051329", "patient64620_study1", "unknown-view", "partial"]
    iu = by_id["CXR38_IM-1911"]
    assert [(i.image_id, i.view) for i in iu.images] == [("CXR38_IM-1911/1.png", "FRONTAL"),
                                                         ("CXR38_IM-1911/0.png", "LATERAL")]
    assert iu.images[0].path == root / "CXR38_IM-1911" / "1.png"
    assert iu.indication == "XXXX, XXXX and shortness of breath for 3 days" and iu.comparison == "XXXX"
    assert iu.findings == "Lungs are clear. There is no pneumothorax or pleural effusion."
    assert iu.impression == "No acute cardiopulmonary process." and iu.subject_id == "" and iu.prior_study_id is None
    assert iu.summary == rule_summary(iu.findings, iu.impression) != ""
    mimic = by_id["50051329"]
    assert [(i.image_id, i.view) for i in mimic.images] == [("p10/p10046166/s50051329/front.jpg", "AP"),
                                                            ("p10/p10046166/s50051329/lat.jpg", "LATERAL")]
    assert mimic.images[0].path == root / "p10" / "p10046166" / "s50051329" / "front.jpg"
    assert (mimic.subject_id, mimic.age, mimic.sex) == ("10046166", "50-60", "M")
    assert mimic.indication == "___-year-old male with confusion." and mimic.comparison == "Chest radiograph ___."
    assert mimic.impression == "" and mimic.findings.startswith("The lungs are low in volume. A 1.2-cm")
    assert "unchanged" not in mimic.summary and "calcified granuloma" in mimic.summary  # comparison-free summary
    chexpert = by_id["patient64620_study1"]
    assert [i.view for i in chexpert.images] == ["AP"]
    assert (chexpert.age, chexpert.sex, chexpert.indication, chexpert.comparison) == ("77", "F", "", "None.")
    assert chexpert.findings == "" and chexpert.impression == "1. SMALL RIGHT PLEURAL EFFUSION REMAINS."
    assert [i.view for i in by_id["unknown-view"].images] == ["unknown"]
    assert [i.image_id for i in by_id["partial"].images] == ["partial/0.png"]

    assert studies.read == 9
    assert studies.dropped == {"no readable image": 2, "no image listed": 1, "malformed record": 1}
    assert studies.problems == {"image missing": 3, "image unreadable": 1, "unsafe image path": 1, "unknown view": 1,
                                "key image not among the images": 1, "no indication": 2, "no findings": 1,
                                "no impression": 1}

    # without image checks (reading the texts only) the records with missing files stay
    texts = read_rexrank(path, check_image_files=False)
    assert len(texts.records) == 7 and texts.dropped == {"no image listed": 1, "malformed record": 1}
    # another image root, and the list layout
    moved = tmp_path / "moved"
    (root).rename(moved)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"study_id": "CXR38_IM-1911", **json.loads((moved / "ReXRank_test.json").read_text(),
                                                                              parse_constant=lambda c: None)["CXR38_IM-1911"]},
                                  {"id": "x", "image_path": ["CXR38_IM-1911/0.png"]}, {"image_path": ["a.png"]}]))
    as_list = read_rexrank(listed, image_root=moved)
    assert [r.study_id for r in as_list.records] == ["CXR38_IM-1911", "x"] and as_list.dropped == {"no study id": 1}
    assert as_list.records[0].images[0].path == moved / "CXR38_IM-1911" / "1.png"


def test_rexrank_file_with_nothing_usable_is_refused_in_one_line(tmp_path):
    path = tmp_path / "ReXRank_empty.json"
    path.write_text(json.dumps({"a": {"image_path": ["gone.png"], "frontal_lateral": ["Frontal"]}, "b": "x"}))
    with pytest.raises(StudyFileError) as info:
        read_rexrank(path)
    assert str(info.value) == f"{path} holds no usable study record (malformed record 1, no readable image 1)"
    for text, expected in (("{not json", "is not JSON"), ("42", "is not a ReXrank-style file"), ("{}", "the file holds no record")):
        path.write_text(text)
        with pytest.raises(StudyFileError, match=expected) as info:
            read_rexrank(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(StudyFileError, match="does not exist"):
        read_rexrank(tmp_path / "nowhere.json")


def test_study_file_bad_inputs_are_counted(tmp_path):
    folder = tmp_path / "split"
    for name in ("a_pa", "a_lat", "b1", "b2", "b3", "b4", "b5", "c", "d", "e", "f", "g"):
        _image(folder / "image" / f"{name}.png")

    def image(name, view):
        return StudyImage(name, folder / "image" / f"{name}.png", view)

    records = [
        StudyRecord("A", "1", [image("a_pa", "PA"), image("a_lat", "LATERAL")], indication="Cough.", findings=FINDINGS,
                    impression=IMPRESSION, summary="s"),
        # more images than a model shows (all recorded), written out of order: read back frontal first
        StudyRecord("B", "1", [image("b1", "LL"), image("b2", "AP"), image("b3", "unknown"), image("b4", "PA"),
                               image("b5", "SWIMMERS")], indication="", prior_study_id="A"),
        StudyRecord("C", "2", [image("c", "PA")], indication="x", prior_study_id="A"),       # prior of another subject
        StudyRecord("D", "1", [image("d", "PA")], indication="x", prior_study_id="nowhere"),  # prior not in the file
        StudyRecord("E", "3", [image("e", "PA")], indication="x", prior_study_id="E"),        # itself
        StudyRecord("F", "4", [image("f", "PA")], indication="x", prior_study_id="G"),        # a loop F -> G -> F
        StudyRecord("G", "4", [image("g", "PA")], indication="x", prior_study_id="F"),
    ]
    path = folder / "studies.jsonl"
    write_studies(path, records)
    with path.open("a") as f:
        f.write('{"study_id": "A", "images": [{"path": "image/a_pa.png"}]}\n')           # duplicate id
        f.write("{torn line\n")                                                           # malformed line
        f.write('{"study_id": "H", "images": [{"path": "image/gone.png", "view": "PA"}]}\n')  # no readable image
        f.write('{"study_id": "I", "images": [{"path": "../../etc/passwd", "view": "PA"}]}\n')  # unsafe: no image
        f.write('{"images": [{"path": "image/c.png"}]}\n')                                   # no study id
        f.write('{"study_id": "J", "images": [{"path": "image/c.png", "view": "OBLIQUE"}]}\n')  # unknown view
    studies = read_studies(path)
    by_id = studies.by_id()
    assert list(by_id) == ["A", "B", "C", "D", "E", "F", "G", "J"]
    assert [i.view for i in by_id["B"].images] == ["PA", "AP", "LL", "SWIMMERS", "unknown"]
    assert [i.image_id for i in limit_images(by_id["B"].images, 2)] == ["b4", "b2"]
    assert by_id["B"].prior_study_id == "A" and by_id["F"].prior_study_id == "G"
    assert [by_id[k].prior_study_id for k in "CDEG"] == [None, None, None, None]
    assert by_id["J"].images[0].view == "unknown" and by_id["A"].images[0].path == folder / "image" / "a_pa.png"
    assert studies.dropped == {"duplicate study id": 1, "malformed line": 1, "no readable image": 1,
                               "no image listed": 1, "no study id": 1}
    assert studies.problems == {"prior from another subject": 1, "prior not in the file": 1,
                                "prior is the study itself": 1, "prior chain loops": 1, "image missing": 1,
                                "unsafe image path": 1, "unknown view": 2, "no indication": 2, "no findings": 7,
                                "no impression": 7}
    # what is written reads back as written
    rewritten = tmp_path / "again" / "studies.jsonl"
    with pytest.raises(StudyFileError, match="is not under"):
        write_studies(rewritten, studies.records)
    write_studies(path.with_name("copy.jsonl"), studies.records)
    assert read_studies(path.with_name("copy.jsonl")).records == studies.records
    with pytest.raises(ValueError, match="at least 1"):
        limit_images(by_id["B"].images, 0)


def test_views_and_context():
    assert [canonical_view(v) for v in ("Frontal", "Lateral", "postero-anterior", "antero-posterior", "left lateral",
                                        " ap ", "LL", "AP AXIAL", "erect", "", None, 3)] == [
        "FRONTAL", "LATERAL", "PA", "AP", "LL", "AP", "LL", "AP AXIAL", "unknown", "unknown", "unknown", "unknown"]
    images = [StudyImage(v, Path(v), v) for v in ("unknown", "LL", "SWIMMERS", "LATERAL", "FRONTAL", "AP", "PA")]
    assert [i.view for i in order_images(images)] == ["PA", "AP", "FRONTAL", "LATERAL", "LL", "SWIMMERS", "unknown"]
    assert parse_context("Age:77.0.Gender:F.Indication:nanComparison: None.") == {"age": "77.0", "sex": "F",
                                                                                  "comparison": "None."}
    assert parse_context("Indication: Pain.\nComparison: PA and lateral chest x-XXXX dated XXXX.") == {
        "indication": "Pain.", "comparison": "PA and lateral chest x-XXXX dated XXXX."}
    assert parse_context(float("nan")) == {} and parse_context("no labels here") == {}
