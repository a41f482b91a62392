"""The fault corpus: crafted files and paths a careless or hostile input brings, and what must
happen to them (issue: trust and faults). Each test names the attack it repeats."""

import csv
import errno
import json

import pytest
from PIL import Image

import train
from conftest import tiny_config, write_yaml
from xraygpt.atomic import AtomicWriteError, append_lines
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


def _train(cfg: dict, path, capsys, *options: str) -> tuple[int, str]:
    code = train.main(["--cfg-path", str(write_yaml(cfg, path)), *(["--options", *options] if options else [])])
    return code, capsys.readouterr().err.strip().splitlines()[-1] if code else ""


@pytest.fixture(scope="module")
def finished_run(tiny_assets, tmp_path_factory):
    """A 4-step tiny stage-1 run: (config dict, output_dir)."""
    out = tmp_path_factory.mktemp("stage1") / "out"
    cfg = tiny_config(tiny_assets, out)
    assert train.main(["--cfg-path", str(write_yaml(cfg, out.parent / "c.yaml"))]) == 0
    return cfg, out


def test_resuming_another_stage_is_refused_not_a_silent_zero_step_run(finished_run, tiny_assets, tmp_path, capsys):
    """Resuming stage 2 from a stage-1 checkpoint trained 0 steps, exited 0 and left only config.yaml."""
    cfg, out = finished_run
    ckpt = out / "checkpoints" / "checkpoint_last.pt"
    stage2 = tiny_config(tiny_assets, tmp_path / "stage2")
    stage2["datasets"]["openi"] = stage2["datasets"].pop(next(iter(stage2["datasets"])))
    stage2["datasets"]["openi"]["root"] = str(tiny_assets["val"])
    code, err = _train(stage2, tmp_path / "s2.yaml", capsys, f"run.resume_ckpt_path={ckpt}")
    assert code == 2 and "was written by another run (datasets" in err and "set model.ckpt instead" in err
    assert not (tmp_path / "stage2").exists()
    code, err = _train(cfg, tmp_path / "same.yaml", capsys, f"run.resume_ckpt_path={ckpt}",
                       f"run.output_dir={tmp_path / 'again'}")
    assert code == 2 and err.endswith("this run plans 4 steps (run.max_epoch x run.iters_per_epoch): nothing is left to train")
    # starting stage 2 from the stage-1 weights is model.ckpt, and trains
    assert _train(stage2, tmp_path / "s2.yaml", capsys, f"model.ckpt={ckpt}")[0] == 0


def test_a_checkpoint_with_frozen_weights_is_refused(finished_run, tiny_assets, tmp_path, capsys):
    """A model.ckpt also carrying a zeroed llm.model.embed_tokens.weight loaded silently."""
    cfg, out = finished_run
    import torch

    state = torch.load(out / "checkpoints" / "checkpoint_last.pt", weights_only=True)
    state["model"]["llm.model.embed_tokens.weight"] = torch.zeros(8, 8)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    code, err = _train(tiny_config(tiny_assets, tmp_path / "o"), tmp_path / "c.yaml", capsys, f"model.ckpt={bad}")
    assert code == 2 and "keeps frozen, first llm.model.embed_tokens.weight" in err and "hf_model" in err


def test_empty_checkpoint_is_one_line(tiny_assets, tmp_path, capsys):
    """A zero-byte checkpoint raised IndexError."""
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for option in (f"model.ckpt={empty}", f"run.resume_ckpt_path={empty}"):
        code, err = _train(tiny_config(tiny_assets, tmp_path / "o"), tmp_path / "c.yaml", capsys, option)
        assert code == 2 and err.startswith(f"error: cannot read checkpoint {empty}: ")


def test_a_full_disk_leaves_nothing_partial(tmp_path, monkeypatch):
    """A full disk while saving raised 'RuntimeError ... unexpected pos' and left a 0-byte config.yaml."""
    import torch

    from xraygpt.atomic import atomic_write
    from xraygpt.training.checkpoint import atomic_save

    def fills_the_disk(handle):
        handle.write(b"run: {}\n" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "config.yaml"
    with pytest.raises(AtomicWriteError, match=f"cannot write {target}: No space left on device"):
        atomic_write(target, fills_the_disk)
    assert list(tmp_path.iterdir()) == []
    target.write_text("the previous config\n")
    with pytest.raises(AtomicWriteError):
        atomic_write(target, fills_the_disk)
    assert target.read_text() == "the previous config\n" and list(tmp_path.iterdir()) == [target]

    def torch_save_on_a_full_disk(obj, handle):
        handle.write(b"PK" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 3456 vs 3344")

    monkeypatch.setattr(torch, "save", torch_save_on_a_full_disk)
    with pytest.raises(AtomicWriteError, match="cannot write .*checkpoint.pt: .*unexpected pos"):
        atomic_save({"model": {}}, tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == [target]


def test_torn_log_line_does_not_block_resume(tmp_path, caplog):
    """A torn last line in log.jsonl blocked resume with an error that did not name the file."""
    from xraygpt.training.metrics_log import JsonlLog

    log = JsonlLog(tmp_path / "log.jsonl")
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step})
    with (tmp_path / "log.jsonl").open("a") as handle:
        handle.write('{"step": 4, "lo')
    log.truncate_after(2)
    assert [r["step"] for r in log.read()] == [1, 2]
    with (tmp_path / "log.jsonl").open("a") as handle:
        handle.write('{"step": 3, "lo')
    log.write({"step": 3, "loss": 0.3})
    assert [r["step"] for r in log.read()] == [1, 2, 3]
    append_lines(tmp_path / "x.jsonl", ["a"])
    assert (tmp_path / "x.jsonl").read_text() == "a\n"


def test_control_characters_are_removed_from_captions_and_counted(tmp_path):
    """NUL/ESC/bidi control characters in reports were kept in captions and echoed to logs."""
    from test_summary_fidelity import NORMAL, _xml, placeholder_images

    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "1.xml").write_bytes(_xml(1, NORMAL.replace("heart", "he\u202eart") + " \u2066No effusion.",
                                         "No acute \u200bdisease."))
    out = tmp_path / "out"
    assert prepare_main(["openi", "--reports", str(reports), "--images", str(placeholder_images(reports, tmp_path / "png")),
                         "--out", str(out), "--fractions", "1", "0", "0"]) == 0
    caption = json.loads((out / "train" / "filter_cap.json").read_text())["annotations"][0]["caption"]
    assert not any(ch in caption for ch in "\u2066\u202e\u200b")
    assert json.loads((out / "stats.json").read_text())["control_characters_removed"] == {"reports": 1, "characters": 3}
    # text reports (MIMIC-CXR) can carry any byte: NUL and terminal escapes go too
    from xraygpt.data.prepare.sections import remove_controls

    sections = {"findings": "Small\x00 left \x1b[31meffusion.\tNo pneumothorax.", "impression": "Effusion."}
    assert remove_controls(sections) == 2
    assert sections == {"findings": "Small left [31meffusion. No pneumothorax.", "impression": "Effusion."}


def test_environment_values_stay_off_disk(tiny_assets, tmp_path, monkeypatch, capsys):
    """`${oc.env:VAR}` values were written resolved into config.yaml and every checkpoint."""
    import torch
    import yaml

    out = tmp_path / "secret-output-folder"
    monkeypatch.setenv("XRAYGPT_TEST_OUT", str(out))
    cfg = tiny_config(tiny_assets, out)
    cfg["run"]["output_dir"] = "${oc.env:XRAYGPT_TEST_OUT}"
    assert train.main(["--cfg-path", str(write_yaml(cfg, tmp_path / "c.yaml"))]) == 0
    written = (out / "config.yaml").read_text()
    assert "secret-output-folder" not in written and "${oc.env:XRAYGPT_TEST_OUT}" in written
    assert yaml.safe_load(written)["run"]["output_dir"] == "${oc.env:XRAYGPT_TEST_OUT}"
    ckpt = torch.load(out / "checkpoints" / "checkpoint_last.pt", weights_only=True)
    assert "secret-output-folder" not in ckpt["config"]
