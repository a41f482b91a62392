"""MIMIC-CXR and OpenI preparation on small fixtures written here in the releases' shapes."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from xraygpt.data.prepare.__main__ import main as prepare_main
from xraygpt.data.prepare.mimic import prepare_mimic
from xraygpt.data.prepare.openi import prepare_openi
from xraygpt.data.prepare.pipeline import PrepareError

FINDINGS = "The heart size is normal. The lungs are clear without focal consolidation, effusion or pneumothorax."
IMPRESSION = "No acute cardiopulmonary process."


def _report(findings=FINDINGS, impression=IMPRESSION, extra=""):
    text = "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
    text += " INDICATION:  ___M with cough\n\n COMPARISON:  ___\n\n"
    if findings is not None:
        text += f" FINDINGS:\n\n {findings}\n\n"
    if impression is not None:
        text += f" IMPRESSION:\n\n {impression}\n"
    return text + extra


def _image(path, value=100, size=(24, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)


def _csv(path, header, rows):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _mimic(tmp_path):
    """Reports + MIMIC-CXR-JPG fixture; returns (reports root, images root)."""
    reports, jpg = tmp_path / "mimic-cxr", tmp_path / "mimic-cxr-jpg"
    # study -> (subject, report text or bytes or None for no file, [(dicom, view, split or None, image: ok|missing|garbage)])
    studies = {
        "50000001": ("10000001", _report(), [("d1a", "PA", "train", "ok"), ("d1b", "LATERAL", "train", "ok")]),
        "50000002": ("10000002", "FINDINGS AND IMPRESSION: " + FINDINGS, [("d2", "AP", "validate", "ok")]),
        "50000003": ("10000003", "FINDINGS: " + FINDINGS + "\nCONCLUSION: Normal chest radiograph.", [("d3", "PA", "test", "ok")]),
        "50000004": ("10000004", _report(impression=None), [("d4", "PA", "train", "ok")]),
        "50000005": ("10000005", _report(findings="Heart normal. Lungs clear."), [("d5", "PA", "train", "ok")]),
        "50000006": ("10000006", _report(impression="Normal."), [("d6", "PA", "train", "ok")]),
        "50000007": ("10000007", "the lungs are clear and the heart is normal", [("d7", "PA", "train", "ok")]),
        "50000008": ("10000008", _report().encode("utf-8") + b"\xff\xfe bad bytes", [("d8", "PA", "train", "ok")]),
        "50000009": ("10000009", _report(), [("d9", "PA", "train", "missing")]),
        "50000010": ("10000010", _report(), [("d10", "PA", "train", "garbage")]),
        "50000011": ("10000011", None, [("d11", "PA", "train", "ok")]),
        "50000012": ("10000012", _report(), [("d12", "PA", None, "ok")]),
        "50000013": ("10000013", _report(), []),  # a report without images
        "50000014": ("10000014", _report(findings="Compared to ___, the effusion is unchanged. " + FINDINGS,
                                         impression="Stable. No acute process."), [("d14", "AP", "train", "ok")]),
    }
    metadata, splits = [], []
    for study, (subject, text, images) in studies.items():
        if text is not None:
            path = reports / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        for dicom, view, split, state in images:
            image = jpg / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
            if state == "ok":
                _image(image)
            elif state == "garbage":
                image.parent.mkdir(parents=True, exist_ok=True)
                image.write_bytes(b"this is not a jpeg")
            metadata.append([dicom, subject, study, "", view, "3000", "2500"])
            if split:
                splits.append([dicom, study, subject, split])
    metadata.append(["d1a", "10000001", "50000001", "", "PA", "3000", "2500"])  # duplicate row
    metadata.append(["", "10000099", "50000099", "", "PA", "3000", "2500"])  # malformed row
    _csv(jpg / "mimic-cxr-2.0.0-metadata.csv",
         ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns"],
         metadata)
    _csv(jpg / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], splits)
    return reports, jpg


def _annotations(out, split):
    return {a["image_id"]: a for a in json.loads((out / split / "filter_cap.json").read_text())["annotations"]}


def _reasons(stats, unit):
    return {d["id"]: d["reason"] for d in stats["dropped"] if d["unit"] == unit}


def test_mimic_preparation_filters_splits_and_reports_every_drop(tmp_path):
    reports, jpg = _mimic(tmp_path)
    out = tmp_path / "out"
    stats = prepare_mimic(reports, jpg, out, frontal_only=False, image_mode="link", verify_images=True)
    train, val, test = (_annotations(out, s) for s in ("train", "val", "test"))
    assert sorted(train) == ["d14", "d1a", "d1b"] and sorted(val) == ["d2"] and sorted(test) == ["d3"]
    assert train["d1a"]["caption"] == train["d1b"]["caption"] == f"{FINDINGS} {IMPRESSION}"
    assert train["d1a"]["report_id"] == "s50000001"
    assert val["d2"]["caption"] == FINDINGS  # merged section counted once
    assert test["d3"]["caption"] == f"{FINDINGS} Normal chest radiograph."
    # the comparison is rewritten out and the finding kept; a sentence that is only a comparison goes
    assert train["d14"]["caption"] == f"The effusion. {FINDINGS} No acute process."
    # images are links to the sources; raw sections kept for re-summarising
    link = out / "train" / "image" / "d1a.jpg"
    assert link.is_symlink() and link.resolve() == (jpg / "files/p10/p10000001/s50000001/d1a.jpg").resolve()
    raw = json.loads((out / "train" / "reports.json").read_text())["s50000014"]
    assert raw["sections"]["findings"].startswith("Compared to ___") and raw["sections"]["comparison"] == "___"
    assert raw["image_ids"] == ["d14"]

    report_reasons, image_reasons = _reasons(stats, "report"), _reasons(stats, "image")
    assert report_reasons == {
        "s50000004": "no impression", "s50000005": "findings shorter than 10 words",
        "s50000006": "impression shorter than 2 words", "s50000007": "no recognisable sections",
        "s50000008": report_reasons["s50000008"], "s50000009": "no usable image", "s50000010": "no usable image",
        "s50000011": "report file missing", "s50000012": "no usable image", "s50000013": "no image in the metadata",
    }
    assert report_reasons["s50000008"].startswith("not UTF-8 text: ")
    assert image_reasons["d9"] == "image file missing" and image_reasons["d10"] == "image unreadable"
    assert image_reasons["d12"] == "not in the split file" and image_reasons["d4"] == "report dropped (no impression)"
    assert image_reasons["mimic-cxr-2.0.0-metadata.csv line 17"] == "malformed metadata row"
    assert [d["reason"] for d in stats["dropped"] if d["id"] == "d1a"] == ["duplicate image id"]
    # nothing silently lost
    for unit, total in stats["totals"].items():
        assert total["in"] == total["out"] + total["dropped"], unit
    assert stats["totals"]["image"] == {"in": 16, "out": 5, "dropped": 11}
    assert stats["outputs"] == {"train": {"reports": 2, "images": 3}, "val": {"reports": 1, "images": 1},
                                "test": {"reports": 1, "images": 1}}
    assert stats["removed_sentences"] == {"repeated sentence": 2, "comparison only": 1}
    assert stats["rewrite_rules"]["comparison: phrase"] == 1 and stats["guard"] == {}
    assert stats["fidelity"]["positives_kept"] == 1.0 and stats["fidelity"]["summaries_with_comparison"] == 0
    edits = raw["edits"]
    assert edits[0]["before"] == "Compared to ___, the effusion is unchanged." and edits[0]["after"] == "The effusion."
    assert {"before": "Stable.", "after": "", "reason": "comparison only"}.items() <= edits[-1].items()
    assert json.loads((out / "stats.json").read_text()) == stats


def test_mimic_frontal_only_and_copy(tmp_path):
    reports, jpg = _mimic(tmp_path)
    stats = prepare_mimic(reports, jpg, tmp_path / "out", frontal_only=True, image_mode="copy", verify_images=False)
    assert sorted(_annotations(tmp_path / "out", "train")) == ["d10", "d14", "d1a"]  # no header check: d10 stays
    assert _reasons(stats, "image")["d1b"] == "not frontal (ViewPosition LATERAL)"
    assert not (tmp_path / "out" / "train" / "image" / "d1a.jpg").is_symlink()


def test_mimic_bad_inputs_fail_with_one_line(tmp_path):
    reports, jpg = _mimic(tmp_path)
    (jpg / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id\nd1a,50000001\n")
    with pytest.raises(PrepareError, match="has no column 'split'"):
        prepare_mimic(reports, jpg, tmp_path / "out", False, "link", False)
    with pytest.raises(PrepareError, match="does not exist"):
        prepare_mimic(tmp_path / "nowhere", jpg, tmp_path / "out", False, "link", False)


OPENI_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <meta type="rr"/>
  <uId id="CXR{n}"/>
  <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
    <Article PubModel="Electronic">
      <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
      <Abstract>
        <AbstractText Label="COMPARISON">None.</AbstractText>
        <AbstractText Label="INDICATION">XXXX-year-old with chest pain.</AbstractText>
        {findings}
        <AbstractText Label="IMPRESSION">{impression}</AbstractText>
      </Abstract>
    </Article>
  </MedlineCitation>
  {images}
</eCitation>
"""


def _openi_report(folder, n, images, findings=FINDINGS, impression=IMPRESSION):
    folder.mkdir(parents=True, exist_ok=True)
    findings_node = f'<AbstractText Label="FINDINGS">{findings}</AbstractText>' if findings else ""
    nodes = "\n  ".join(f'<parentImage id="{name}"><figureId>F{k}</figureId></parentImage>' for k, name in enumerate(images, 1))
    (folder / f"{n}.xml").write_text(OPENI_XML.format(n=n, findings=findings_node, impression=impression, images=nodes))


def _openi(tmp_path, good_reports=20):
    xml, png = tmp_path / "ecgen-radiology", tmp_path / "NLMCXR_png"
    png.mkdir(parents=True)
    for n in range(1, good_reports + 1):
        names = [f"CXR{n}_IM-{n:04d}-1001", f"CXR{n}_IM-{n:04d}-2001"]
        _openi_report(xml, n, names)
        for name in names:
            _image(png / f"{name}.png", value=n)
    # report 1384: a 16-bit and an RGBA image, both kept
    _openi_report(xml, 1384, ["CXR1384_IM-0001-1001", "CXR1384_IM-0001-2001"])
    Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 100).save(png / "CXR1384_IM-0001-1001.png")
    Image.new("RGBA", (20, 20), (200, 200, 200, 128)).save(png / "CXR1384_IM-0001-2001.png")
    _openi_report(xml, 900, ["CXR900_IM-0001-1001"], findings=None)                  # no findings
    _openi_report(xml, 901, ["CXR901_IM-0001-1001", "CXR901_IM-0001-1001"])            # image listed twice
    _image(png / "CXR901_IM-0001-1001.png")
    _openi_report(xml, 902, ["CXR902_IM-0001-1001"])                                   # image file missing
    (xml / "903.xml").write_text("<eCitation><Abstract><AbstractText Label='FINDINGS'>x</eCitation>")  # malformed
    (xml / "904.xml").write_bytes(OPENI_XML.format(n=904, findings="", impression="Caf\xe9 normal",
                                                   images="").encode("latin-1"))     # not UTF-8
    return xml, png


def test_openi_preparation_ids_splits_and_bad_input(tmp_path):
    xml, png = _openi(tmp_path)
    out = tmp_path / "out"
    stats = prepare_openi(xml, png, out, (0.6, 0.2, 0.2), seed=1, image_mode="link", verify_images=True)
    splits = {s: _annotations(out, s) for s in ("train", "val", "test")}
    where = {image_id: s for s, anns in splits.items() for image_id in anns}
    # id mapping: report 1384's first image is "1384_1", CXR1384_IM-0001-1001.png
    assert where.keys() >= {"1384_1", "1384_2", "1_1", "1_2", "20_2", "901_1"}
    split_1384 = out / where["1384_1"] / "image"
    assert (split_1384 / "1384_1.png").resolve().name == "CXR1384_IM-0001-1001.png"
    assert (split_1384 / "1384_2.png").resolve().name == "CXR1384_IM-0001-2001.png"
    # no leakage: each report's images in one split; splits by report with the fractions
    report_split = {}
    for split, anns in splits.items():
        for ann in anns.values():
            assert report_split.setdefault(ann["report_id"], split) == split, ann["report_id"]
    assert sorted(stats["outputs"][s]["reports"] for s in ("train", "val", "test")) == [4, 5, 13]
    reasons = {**_reasons(stats, "report"), **_reasons(stats, "image")}
    assert reasons["900"] == "no findings" and reasons["900_1"] == "report dropped (no findings)"
    assert reasons["901_2"] == "duplicate image (CXR901_IM-0001-1001.png listed before)"
    assert reasons["902_1"] == "image file missing" and reasons["902"] == "no usable image"
    assert reasons["903"].startswith("malformed XML: ") and reasons["904"].startswith("malformed XML: ")
    for total in stats["totals"].values():
        assert total["in"] == total["out"] + total["dropped"]
    # the same seed gives the same split, another seed another one
    again = prepare_openi(xml, png, tmp_path / "again", (0.6, 0.2, 0.2), seed=1, image_mode="link", verify_images=False)
    prepare_openi(xml, png, tmp_path / "other", (0.6, 0.2, 0.2), seed=2, image_mode="link", verify_images=False)
    assert _annotations(tmp_path / "again", "test") == splits["test"]
    assert _annotations(tmp_path / "other", "test") != splits["test"]
    assert again["outputs"] == stats["outputs"]


def test_cli_writes_stats_and_refuses_a_used_output(tmp_path, capsys):
    xml, png = _openi(tmp_path, good_reports=3)
    out = tmp_path / "out"
    assert prepare_main(["openi", "--reports", str(xml), "--images", str(png), "--out", str(out), "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "reports: 9 in, 5 out, 4 dropped" in printed and f"report: {out / 'stats.json'}" in printed
    assert prepare_main(["openi", "--reports", str(xml), "--images", str(png), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: output folder {out} is not empty; choose a new --out"
    assert prepare_main(["openi", "--reports", str(xml), "--images", str(png), "--out", str(tmp_path / "o2"),
                         "--fractions", "0.5", "0.5", "0.5"]) == 2
    assert "summing to 1" in capsys.readouterr().err
