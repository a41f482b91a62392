"""Evaluation on studies (#15 item 3): a ReXrank-style file through evaluate.py, one prediction per
study keyed by study id, findings and impression scored on their own, the blank ablation."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

import evaluate
from conftest import REPO, tiny_config, write_yaml
from study_fixtures import write_rexrank_file, write_study_folder
from xraygpt.data.datasets import MixedDataset
from xraygpt.data.study_dataset import build_openi_studies
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval
from xraygpt.evaluation.chexpert_rules import ChexpertRuleLabeler
from xraygpt.evaluation.evaluator import section_rows
from xraygpt.evaluation.generate import blank_image, load_samples
from xraygpt.evaluation.report_metrics import compute_metrics
from xraygpt.training.checkpoint import atomic_save

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_model_factory, tmp_path_factory):
    model = tiny_model_factory(seed=1)
    torch.nn.init.normal_(model.projector.proj.weight, std=0.05)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint_last.pt"
    atomic_save({"model": model.trainable_state_dict(), "step": 1}, path)
    return path


def test_rexrank_file_evaluates_end_to_end(tiny_assets, checkpoint, tmp_path, capsys):
    ann = write_rexrank_file(tiny_assets, tmp_path / "rexrank")
    cfg = yaml.safe_load((REPO / "eval_configs" / "eval_rexrank.yaml").read_text())  # the shipped config
    cfg["model"] = {**tiny_config(tiny_assets, tmp_path)["model"], "ckpt": str(checkpoint)}
    cfg["datasets"]["rexrank"].update(root=str(ann.parent), ann_file=ann.name, image_root=str(ann.parent / "files"),
                                      vis_processor={"eval": {"name": "medclip_image_eval", "image_size": 112}})
    out = tmp_path / "out"
    cfg["evaluation"].update(output_dir=str(out), batch_size=2, max_new_tokens=8, bootstrap_resamples=20,
                             progress=False, device="cpu")
    path = write_yaml(cfg, tmp_path / "eval.yaml")
    assert evaluate.main(["--cfg-path", str(path)]) == 0
    table = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in rows] == ["50000001", "50000002", "50000003"]  # one prediction per study
    assert [r["study_id"] for r in rows] == [r["image_id"] for r in rows] == [r["report_id"] for r in rows]
    assert [r["views"] for r in rows] == [["PA", "LATERAL"], ["FRONTAL"], ["AP", "LATERAL"]]  # max_images 2, frontal first
    assert rows[2]["image_ids"][0].endswith("/1.jpg") or rows[2]["image_ids"][0].endswith("/1.png")
    assert rows[0]["reference"] == "Findings: The heart is normal in size. Small right effusion."  # NaN impression
    assert rows[2]["reference"] == "Findings: Left basilar opacity. Impression: Possible pneumonia."  # comparison out
    assert "Indication: Cough." in rows[0]["instruction"] and "Indication" not in rows[1]["instruction"]
    with (out / "predictions.csv").open() as f:
        assert [r["study_id"] for r in csv.DictReader(f)] == ["50000001", "50000002", "50000003"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_scored"] == 3 and set(metrics["sections"]) == {"findings", "impression"}
    assert metrics["sections"]["findings"]["num_scored"] == 3
    assert metrics["sections"]["impression"]["num_scored"] == 2  # the study without an impression is skipped for it
    assert "findings only:" in table and "impression only:" in table
    # run again: every study already has its prediction (resume by study id)
    before = (out / "predictions.jsonl").read_text()
    assert evaluate.main(["--cfg-path", str(path)]) == 0
    assert (out / "predictions.jsonl").read_text() == before


def test_findings_and_impression_are_scored_on_their_own():
    labeler = ChexpertRuleLabeler()
    rows = [{"image_id": f"s{k}", "prediction": f"Findings: {f} Impression: Normal chest.",
             "reference": f"Findings: {f} Impression: {i}"}
            for k, (f, i) in enumerate([("Small left pleural effusion.", "Left effusion."),
                                        ("The lungs are clear.", "No acute disease."),
                                        ("Mild cardiomegaly.", "Cardiomegaly without edema.")])]
    findings = compute_metrics(section_rows(rows, 0), labeler, resamples=0)
    impression = compute_metrics(section_rows(rows, 1), labeler, resamples=0)
    whole = compute_metrics(rows, labeler, resamples=0)
    assert findings["rouge"]["rougeL"] == pytest.approx(1.0)
    assert impression["rouge"]["rougeL"] < 0.5 < whole["rouge"]["rougeL"] < 1.0
    assert section_rows([{"image_id": "x", "prediction": "no labels here", "reference": "Impression: Fine."}], 0)[0][
        "prediction"] == ""


def test_blank_ablation_gives_a_study_as_many_blank_images(tiny_assets, tmp_path):
    folder = write_study_folder(tiny_assets, tmp_path / "studies")
    dataset = MixedDataset([build_openi_studies(str(folder), MedCLIPImageEval(112), CaptionProcessor(), max_images=3)],
                           seed=0)
    blank = blank_image(MedCLIPImageEval(112), 112)
    sample = load_samples(dataset, [1], "blank", blank)[0]
    assert sample["pixel_values"].shape == (3, 3, 112, 112) and sample["image_source"] == "blank"
    assert all(torch.equal(image, blank) for image in sample["pixel_values"])
    with pytest.raises(ValueError, match="not available for studies"):
        load_samples(dataset, [0], "shuffled")


def test_a_target_empty_without_comparisons_is_skipped(tiny_assets, tmp_path, tiny_model_factory):
    """An impression that is only a comparison ("No change from prior.") has no target without the prior:
    training draws the next study instead, evaluation skips it as an empty reference without generating."""
    from conftest import evaluate_split
    from study_fixtures import STUDIES

    studies = [STUDIES[0], ("s9", "p9", [("PA", 8)], "", "Clear lungs.", "No change from prior.", "Clear lungs.", None)]
    folder = write_study_folder(tiny_assets, tmp_path / "studies", studies)
    ds = build_openi_studies(str(folder), MedCLIPImageEval(112), CaptionProcessor(), target="impression")
    assert [s[0] for s in ds.samples] == ["s1", "s9"] and ds.samples[1][2] == ""
    assert ds[1]["image_id"] == "s1" and ds.counts["empty target without comparisons (study skipped)"] == 1
    model = tiny_model_factory(seed=1).eval()
    rows, _ = evaluate_split(model, MixedDataset([ds], seed=0), tmp_path / "out", batch_size=2)
    assert [r["image_id"] for r in rows] == ["s1"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["skipped"]["by_reason"] == {"empty reference": ["s9"]} and metrics["num_scored"] == 1


def test_vllm_backend_on_studies_gives_the_transformers_answers(tiny_assets, tmp_path, tiny_model_factory, monkeypatch):
    """Against the stand-in of vLLM's API (tests/test_vllm_engine.py): each study's spliced prompt
    (several images) reaches the engine, and the answers equal the transformers backend's."""
    import importlib.machinery
    import sys
    import types

    from conftest import evaluate_split
    from test_vllm_engine import StandInLLM, StandInSamplingParams

    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = StandInLLM, StandInSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    StandInLLM.prompts.clear()
    model = tiny_model_factory(seed=2)
    torch.nn.init.normal_(model.projector.proj.weight, std=0.05)
    folder = write_study_folder(tiny_assets, tmp_path / "studies")
    dataset = MixedDataset([build_openi_studies(str(folder), MedCLIPImageEval(112), CaptionProcessor(), max_images=3,
                                                use_prior=True)], seed=0)
    reference, _ = evaluate_split(model.eval(), dataset, tmp_path / "hf", batch_size=4)
    rows, _ = evaluate_split(model, dataset, tmp_path / "vllm", batch_size=4, backend="vllm")
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in reference]
    assert len(StandInLLM.prompts) == 4  # one prompt per study; s2 shows 3 images + its prior's
    assert max(len(p["prompt_embeds"]) for p in StandInLLM.prompts) > 4 * model.encoder.num_tokens


def test_study_source_errors_are_one_line(tiny_assets, checkpoint, tmp_path, capsys):
    ann = write_rexrank_file(tiny_assets, tmp_path / "rexrank")
    cfg = yaml.safe_load((REPO / "eval_configs" / "eval_rexrank.yaml").read_text())
    cfg["model"] = {**tiny_config(tiny_assets, tmp_path)["model"], "ckpt": str(checkpoint)}
    cfg["datasets"]["rexrank"].update(root=str(ann.parent), ann_file=None, image_root=None)
    cfg["evaluation"].update(output_dir=str(tmp_path / "out"), progress=False, device="cpu")
    for change, words in (({}, "format rexrank needs ann_file"),
                          ({"ann_file": "nope.json"}, "nope.json does not exist"),
                          ({"ann_file": ann.name, "format": "studies", "image_root": "x"}, "image_root is for format rexrank"),
                          ({"ann_file": ann.name, "format": "xraygpt"}, "unknown study format 'xraygpt'"),
                          ({"ann_file": ann.name, "target": "report"}, "unknown study target 'report'")):
        cfg["datasets"]["rexrank"].update(change)
        path = write_yaml(cfg, tmp_path / "eval.yaml")
        assert evaluate.main(["--cfg-path", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        last = err.splitlines()[-1]
        assert last.startswith("error: ") and words in last and "Traceback" not in err, last
