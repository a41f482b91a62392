"""The fault corpus: crafted files and paths a careless or hostile input brings, and what must
happen to them (issue: trust and faults). Each test names the attack it repeats."""

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from xraygpt.data.formats import DatasetError, read_json, read_samples
from xraygpt.data.paths import UnsafePath, confined, safe_name
from xraygpt.data.prepare.__main__ import main as prepare_main
from xraygpt.data.shards import read_manifest

FINDINGS = "The heart size is normal. The lungs are clear without focal consolidation, effusion or pneumothorax."


@pytest.mark.parametrize("relative", ["../x.png", "a/../../x.png", "/etc/passwd", "/proc/self/environ",
                                      "..\\..\\x.png", "C:\\x.png", "", "a\x00b"])
def test_confined_refuses_escapes(tmp_path, relative):
    with pytest.raises(UnsafePath):
        confined(tmp_path, relative)


def test_confined_and_safe_name_accept_plain_paths(tmp_path):
    assert confined(tmp_path, "a/b/c.png") == tmp_path / "a" / "b" / "c.png"
    assert confined(tmp_path, "a\\b.png") == tmp_path / "a" / "b.png"
    assert safe_name("CXR1_IM-0001-1001") == "CXR1_IM-0001-1001"
    for bad in ("../x", "a/b", "..", ".", "", "a\\b"):
        with pytest.raises(UnsafePath):
            safe_name(bad)


def test_mimic_dicom_id_cannot_write_outside_out(tmp_path):
    """A dicom_id of ../../.../victim made `prepare mimic --image-mode copy` overwrite a file outside --out."""
    reports, jpg, out = tmp_path / "reports", tmp_path / "jpg", tmp_path / "a" / "b" / "c" / "out"
    # Six ".." from the image folder (jpg/files/p10/p10000001/s50000001) reach tmp_path's parent, from
    # out/train/image they reach tmp_path: the id copies tmp_path/victim.jpg over tmp_path/<name>/victim.jpg.
    evil = f"../../../../../../{tmp_path.name}/victim"
    Image.new("L", (8, 8), 200).save(tmp_path / "victim.jpg")
    (tmp_path / tmp_path.name).mkdir()
    victim = tmp_path / tmp_path.name / "victim.jpg"
    victim.write_bytes(b"precious")
    report = reports / "files" / "p10" / "p10000001" / "s50000001.txt"
    report.parent.mkdir(parents=True)
    report.write_text(f"FINDINGS: {FINDINGS}\nIMPRESSION: No acute process.\n")
    folder = jpg / "files" / "p10" / "p10000001" / "s50000001"
    folder.mkdir(parents=True)
    Image.new("L", (8, 8), 50).save(folder / "good.jpg")
    assert (folder / f"{evil}.jpg").resolve() == (tmp_path / "victim.jpg").resolve()
    with (jpg / "mimic-cxr-2.0.0-metadata.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["dicom_id", "subject_id", "study_id", "ViewPosition"],
                                 ["good", "10000001", "50000001", "PA"], [evil, "10000001", "50000001", "PA"]])
    with (jpg / "mimic-cxr-2.0.0-split.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["dicom_id", "study_id", "subject_id", "split"],
                                 ["good", "50000001", "10000001", "train"], [evil, "50000001", "10000001", "train"]])
    assert prepare_main(["mimic", "--reports", str(reports), "--images", str(jpg), "--out", str(out),
                         "--image-mode", "copy"]) == 0
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in (out / "train" / "image").iterdir()) == ["good.jpg"]
    stats = json.loads((out / "stats.json").read_text())
    reasons = [d["reason"] for d in stats["dropped"] if d["unit"] == "image"]
    assert len(reasons) == 1 and reasons[0].startswith("malformed metadata row: unsafe name")


def test_openi_parent_image_id_cannot_link_outside_images(tmp_path):
    """An OpenI parentImage id of ../outside/secret linked a file from outside --images."""
    reports, images, out = tmp_path / "reports", tmp_path / "images", tmp_path / "out"
    for folder in (reports, images, tmp_path / "outside"):
        folder.mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "outside" / "secret.png")
    Image.new("L", (8, 8)).save(images / "CXR1_IM-0001-1001.png")
    (reports / "1.xml").write_text(
        '<?xml version="1.0"?><eCitation><Abstract>'
        f'<AbstractText Label="FINDINGS">{FINDINGS}</AbstractText>'
        '<AbstractText Label="IMPRESSION">No acute disease.</AbstractText></Abstract>'
        '<parentImage id="CXR1_IM-0001-1001"/><parentImage id="../outside/secret"/></eCitation>')
    assert prepare_main(["openi", "--reports", str(reports), "--images", str(images), "--out", str(out),
                         "--fractions", "1", "0", "0"]) == 0
    assert [p.name for p in (out / "train" / "image").iterdir()] == ["1_1.png"]
    stats = json.loads((out / "stats.json").read_text())
    assert {d["id"]: d["reason"] for d in stats["dropped"]}["1_2"].startswith("unsafe parentImage id")


def test_r2gen_image_paths_cannot_read_outside_the_root(tmp_path):
    """An R2Gen image_path of ../../etc/passwd, /etc/passwd or /proc/self/environ was read and packed into shards."""
    root = tmp_path / "iu"
    (root / "images" / "ok").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "images" / "ok" / "0.png")
    (tmp_path / "secret.png").write_bytes((root / "images" / "ok" / "0.png").read_bytes())
    entries = [{"id": "ok", "report": "Normal.", "image_path": ["ok/0.png"]},
               {"id": "up", "report": "Normal.", "image_path": ["../../secret.png"]},
               {"id": "abs", "report": "Normal.", "image_path": ["/etc/passwd"]},
               {"id": "proc", "report": "Normal.", "image_path": ["/proc/self/environ"]},
               {"id": "win", "report": "Normal.", "image_path": ["..\\..\\secret.png"]}]
    (root / "annotation.json").write_text(json.dumps({"train": entries}))
    samples, dropped, total = read_samples("r2gen", root, None, None, "train", verify_images=False)
    assert [s[0] for s in samples] == ["ok"] and total == 5
    assert dropped["unsafe image path"] == ["up", "abs", "proc", "win"]
    out = tmp_path / "shards"
    assert prepare_main(["shards", "--root", str(root), "--out", str(out), "--format", "r2gen", "--no-verify-images"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["outputs"]["shards"]["samples"] == 1
    assert stats["dropped_by_reason"]["sample"] == {"unsafe image path": 4}
    manifest = json.loads((out / "shards.json").read_text())
    manifest["shards"].append({"file": "../../secret.tar", "samples": 5})
    (tmp_path / "secret.tar").write_bytes(b"")
    (out / "shards.json").write_text(json.dumps(manifest))
    files, n = read_manifest(out, "shards.json")
    assert files == [out / manifest["shards"][0]["file"]] and n == 1


def test_json_nested_too_deep_is_one_clean_error(tmp_path):
    """A JSON file nested 200k deep raised RecursionError."""
    path = tmp_path / "filter_cap.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(DatasetError, match="nested too deeply"):
        read_json(path, "annotation file")
