"""Studies in the model (#15 item 2): the splice with several images per row, study samples and their
prompts, batch loss and batched generation with different image counts per row, training from a
studies.jsonl, bad input; and single-image training and evaluation unchanged (a recorded reference)."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import random

import pytest
import torch

from conftest import REPO, evaluate_split, tiny_config, write_yaml
from study_fixtures import write_study_folder
from xraygpt.constants import IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID
from xraygpt.data.collate import GenerationCollator, TrainCollator
from xraygpt.data.datasets import MixedDataset
from xraygpt.data.formats import DatasetError
from xraygpt.data.prepare.rewrite import COMPARISON
from xraygpt.data.study_dataset import build_mimic_studies, build_openi_studies
from xraygpt.data.study_prompts import (TARGETS, guess_views, sections_text, split_sections, study_instruction,
                                        view_tag)
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval
from xraygpt.languages import written_in
from xraygpt.models.generation import GenerationSettings
from xraygpt.models.multimodal import ImageTokenCountError, splice_image_embeddings
from xraygpt.prompting import PromptFileError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values", "image_counts")


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    m = tiny_model_factory(seed=2)
    torch.nn.init.normal_(m.projector.proj.weight, std=0.05)
    return m.eval()


@pytest.fixture(scope="module")
def study_folder(tiny_assets, tmp_path_factory):
    return write_study_folder(tiny_assets, tmp_path_factory.mktemp("studies"))


def studies(folder, **kwargs):
    kwargs = {"max_images": 3, "use_prior": True, **kwargs}
    return build_openi_studies(str(folder), MedCLIPImageEval(112), CaptionProcessor(), **kwargs)


# ---------------------------------------------------------------------------------------------- unchanged


def test_single_image_training_and_evaluation_unchanged(tmp_path):
    """The shipped stage1/stage2/eval_mimic configs on small local inputs give exactly the batches,
    per-step losses, trained projection, generation inputs and predictions recorded before the
    multi-image changes (scripts/single_image_reference.py at a278db6)."""
    spec = importlib.util.spec_from_file_location("single_image_reference", REPO / "scripts" / "single_image_reference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    want = json.loads((REPO / "tests" / "data" / "single_image_reference.json").read_text())
    got = json.loads(json.dumps(script.compute(tmp_path)))
    assert got["inputs"] == want["inputs"], (
        "the reference's inputs changed (the tiny asset factory, xraygpt/embedded/assets.py, or prompts/alignment.txt), "
        "so this comparison says nothing: remake the reference with scripts/single_image_reference.py from a checkout "
        "whose model, collate and generation code are a278db6's")
    for part in ("stage1", "stage2", "evaluation"):
        for key in want[part]:
            assert got[part][key] == want[part][key], f"{part}.{key} differs from the single-image reference"
    assert len(want["stage1"]["step_losses"]) == 3 and "image_counts" not in want["stage1"]["batches"][0]


# ---------------------------------------------------------------------------------------------- splice


def test_splice_fills_each_row_with_its_images_in_order():
    s = IMAGE_TOKEN_ID
    ids = torch.tensor([[1, s, s, s, s, 2], [s, s, 3, 4, 5, 6], [7, 8, 9, 1, 2, 3]])
    images = torch.arange(3 * 2 * 2, dtype=torch.float32).reshape(3, 2, 2) + 1  # T=3 images of N=2 tokens
    out = splice_image_embeddings(ids, torch.zeros(3, 6, 2), images, image_counts=torch.tensor([2, 1, 0]))
    assert torch.equal(out[0, 1:5], torch.cat([images[0], images[1]]))  # row 0: its two images in order
    assert torch.equal(out[1, 0:2], images[2]) and torch.equal(out[2], torch.zeros(6, 2))
    one_each = splice_image_embeddings(ids[1:2], torch.zeros(1, 6, 2), images[2:3])  # no counts: one image per row
    assert torch.equal(one_each, out[1:2])
    with pytest.raises(ImageTokenCountError, match=r"\[4, 2, 0\] image positions.*\[1, 2, 0\] images per row"):
        splice_image_embeddings(ids, torch.zeros(3, 6, 2), images, image_counts=[1, 2, 0])
    with pytest.raises(ImageTokenCountError):  # counts that do not add up to the images given
        splice_image_embeddings(ids, torch.zeros(3, 6, 2), images[:2], image_counts=[2, 1, 0])
    with pytest.raises(ImageTokenCountError):  # one image per row assumed, but rows hold 2, 1, 0
        splice_image_embeddings(ids, torch.zeros(3, 6, 2), images)


# ---------------------------------------------------------------------------------------------- prompts


def test_study_prompt_layout():
    text = study_instruction(["PA", "LATERAL"], "Describe it.", "cough", ["AP"], "Findings: clear.")
    assert text == ("Frontal (PA): <Img><ImageHere></Img> Lateral: <Img><ImageHere></Img> Prior frontal (AP): "
                    "<Img><ImageHere></Img> Indication: cough. Prior report: Findings: clear. Describe it.")
    assert study_instruction(["unknown"], "Q?") == "Unknown view: <Img><ImageHere></Img> Q?"
    assert study_instruction(["PA"], "请描述。", "咳嗽。") == "Frontal (PA): <Img><ImageHere></Img> Indication: 咳嗽。 请描述。"
    assert view_tag("AP AXIAL") == "View (AP AXIAL)" and view_tag("LL", prior=True) == "Prior lateral (LL)"
    assert guess_views(3) == ["FRONTAL", "LATERAL", "unknown"] and guess_views(1) == ["FRONTAL"]
    assert split_sections(sections_text("A b.", "C.")) == ("A b.", "C.")
    assert split_sections("Impression: none") == ("", "none") and split_sections("free text") == ("", "")



def test_chinese_study_prompt_tags_labels_and_sections():
    """In Chinese the view tags, the labels and the sections' labels are Chinese; any other language
    without labels of its own gets the English ones; either language's sections read back."""
    text = study_instruction(["PA", "LATERAL"], "请描述。", "咳嗽", ["AP"], "影像所见：无异常。", language="zh")
    assert text == ("正位（后前位）：<Img><ImageHere></Img> 侧位：<Img><ImageHere></Img> 既往正位（前后位）："
                    "<Img><ImageHere></Img> 临床指征：咳嗽。 既往报告：影像所见：无异常。 请描述。")
    assert study_instruction(["PA"], "Q?", "cough", language="zh-hans").startswith("正位（后前位）：")
    assert study_instruction(["PA"], "Q?", "cough", language="fr") == study_instruction(["PA"], "Q?", "cough")
    assert view_tag("AP AXIAL", language="zh") == "体位（AP AXIAL）" and view_tag("unknown", language="zh") == "未知体位"
    assert view_tag("LL", prior=True, language="zh") == "既往侧位（左侧位）"
    with pytest.raises(ValueError, match="language must be a language code"):
        view_tag("PA", language="../x")
    both = sections_text("双肺清晰。", "未见异常。", "zh")
    assert both == "影像所见：双肺清晰。 诊断意见：未见异常。" and split_sections(both) == ("双肺清晰。", "未见异常。")
    assert sections_text("", "未见异常。", "zh") == "诊断意见：未见异常。"
    assert split_sections("检查所见：心影增大。 印象：心脏增大。") == ("心影增大。", "心脏增大。")
    assert split_sections("影像表现: 少量积液 影像诊断：胸腔积液") == ("少量积液", "胸腔积液")
    assert split_sections("印象深刻的病例") == ("", "")  # a header only with its colon
    assert split_sections(sections_text("影像表现：双肺清晰。", "诊断意见：未见异常。", "zh")) == ("双肺清晰。", "未见异常。")


def test_study_samples_views_prior_and_targets(study_folder):
    ds = studies(study_folder, target="findings", keep_comparisons=True)
    by_id = {ds[k]["image_id"]: ds[k] for k in range(len(ds))}
    s1, s2, s3, s4 = (by_id[k] for k in ("s1", "s2", "s3", "s4"))
    assert s1["views"] == ["PA", "LATERAL"] and s1["pixel_values"].shape == (2, 3, 112, 112)
    assert s1["instruction"].startswith("Frontal (PA): <Img><ImageHere></Img> Lateral: <Img><ImageHere></Img> "
                                        "Indication: Cough and fever. ")
    # reading order (frontal first), then the prior's frontal image; no indication -> none in the prompt
    assert s2["views"] == ["PA", "AP", "LATERAL", "prior PA"] and s2["instruction"].count(IMAGE_PLACEHOLDER) == 4
    assert "Prior frontal (PA): <Img><ImageHere></Img>" in s2["instruction"] and "Indication" not in s2["instruction"]
    assert s2["caption"] == "Stable mild cardiomegaly. The lungs are clear."  # prior shown + keep_comparisons
    # no prior shown: comparisons removed by the preparation's rules, whatever keep_comparisons says
    assert s1["caption"] == "Heart size is normal. Small left pleural effusion. No pneumothorax."
    assert not COMPARISON.search(s1["caption"]) and s3["views"] == ["FRONTAL"]
    assert s4["views"] == ["PA", "unknown"] and "Unknown view: <Img>" in s4["instruction"]  # prior of p1 for p3: dropped
    without = studies(study_folder, target="sections")  # keep_comparisons off: comparison-free with the prior shown
    s2_clean = next(without[k] for k in range(len(without)) if without[k]["image_id"] == "s2")
    assert s2_clean["caption"] == "Findings: Mild cardiomegaly. The lungs are clear. Impression: No acute process."
    summary = studies(study_folder, keep_comparisons=True)  # the summary target is always the record's summary
    assert summary[1]["caption"] == "Mild cardiomegaly. The lungs are clear. No acute process."
    prior_report = studies(study_folder, prior_report=True)
    assert "Prior report: Findings: Heart size is normal. New small left pleural effusion." in prior_report[1]["instruction"]


def question_lines(file) -> list[str]:
    return [line.strip() for line in file.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("target", TARGETS)
def test_chinese_study_questions(study_folder, target, caplog):
    """A study source with `language: zh` asks the questions of prompts/zh/study_{target}.txt (Chinese, not
    the English file's), after Chinese view tags and labels; zh has comparison rules (no warning), and they
    are Chinese, so this English text is its target as written, with the sections' labels in Chinese
    (tests/test_zh_comparisons.py: Chinese sections)."""
    want = question_lines(REPO / "prompts" / "zh" / f"study_{target}.txt")
    english = question_lines(REPO / "prompts" / f"study_{target}.txt")
    assert len(want) >= 3 and all(written_in(q, "zh") and not written_in(q, "en") for q in want)
    with caplog.at_level("WARNING", logger="xraygpt.data.study_dataset"):
        zh = studies(study_folder, target=target, language="zh")
    assert "no comparison rules" not in caplog.text
    en = studies(study_folder, target=target)
    assert zh.instructions == want and en.instructions == english and not set(want) & set(english)
    # study s1 (PA + lateral, an indication): Chinese tags and label, the indication as written, a Chinese question
    head = "正位（后前位）：<Img><ImageHere></Img> 侧位：<Img><ImageHere></Img> 临床指征：Cough and fever. "
    asked = {zh.get(0, random.Random(seed))["instruction"] for seed in range(40)}
    assert asked == {head + q for q in want}  # every question of the file is drawn, and nothing else
    english_head = "Frontal (PA): <Img><ImageHere></Img> Lateral: <Img><ImageHere></Img> Indication: Cough and fever. "
    assert en[0]["instruction"] in {english_head + q for q in english}
    # the target: the Chinese rules find no Chinese comparison in s1's English sections (s1 shows no prior)
    record = zh.records[0]
    written = {"summary": record.summary, "findings": record.findings, "impression": record.impression,
               "sections": f"影像所见：{record.findings} 诊断意见：{record.impression}"}[target]
    assert zh[0]["caption"] == written
    assert (en[0]["caption"] == written) == (target == "summary")  # English removes s1's comparisons


def test_a_study_source_in_a_language_without_study_prompts_is_refused_in_one_line(study_folder, tmp_path):
    with pytest.raises(PromptFileError) as err:
        studies(study_folder, language="fr")
    message = str(err.value)
    assert message.startswith("datasets.openi_studies: no study prompts for language 'fr' (target 'summary'): ")
    assert "prompts/fr/study_summary.txt does not exist" in message and "\n" not in message
    # a language folder holding some targets' files only: the missing target's file is named
    (tmp_path / "zh").mkdir()
    (tmp_path / "zh" / "study_summary.txt").write_text("请描述这组胸片。\n", encoding="utf-8")
    prompt_path = str(tmp_path / "study_{target}.txt")
    assert studies(study_folder, language="zh", prompt_path=prompt_path).instructions == ["请描述这组胸片。"]
    with pytest.raises(PromptFileError) as err:
        studies(study_folder, language="zh", prompt_path=prompt_path, target="findings")
    assert str(err.value).startswith("datasets.openi_studies: no study prompts for language 'zh' (target 'findings'): "
                                     f"{tmp_path / 'zh' / 'study_findings.txt'} does not exist")


# ---------------------------------------------------------------------------------------------- the model


def test_study_batch_loss_is_the_mean_of_per_study_losses(model, study_folder):
    ds = studies(study_folder, target="sections")
    samples = [ds[k] for k in range(len(ds))]
    collate = TrainCollator(model.prompt_tokenizer)
    batch = collate(samples)
    assert batch["image_counts"].tolist() == [2, 4, 1, 2] and batch["pixel_values"].shape[0] == 9
    with torch.no_grad():
        out = model(**{k: batch[k] for k in MODEL_KEYS})
        singles = torch.stack([model(**{k: v for k, v in collate([s]).items() if k in MODEL_KEYS})["loss"]
                               for s in samples])
        # each row reads its own images: blanking row 1's images changes row 1's loss only
        blanked = batch["pixel_values"].clone()
        blanked[2:6] = 0
        moved = model(**{**{k: batch[k] for k in MODEL_KEYS}, "pixel_values": blanked})["sample_loss"]
    assert abs(float(out["loss"]) - float(singles.mean())) < 1e-6
    assert torch.allclose(out["sample_loss"], singles, atol=1e-6, rtol=0)
    changed = (moved - out["sample_loss"]).abs() > 1e-6
    assert changed.tolist() == [False, True, False, False]
    with pytest.raises(ImageTokenCountError):  # counts that do not match the prompts
        model(**{**{k: batch[k] for k in MODEL_KEYS}, "image_counts": torch.tensor([4, 2, 1, 2])})


def test_batched_study_generation_equals_one_at_a_time(model, study_folder, tmp_path):
    dataset = MixedDataset([studies(study_folder, target="sections")], seed=0)
    batched, generation = evaluate_split(model, dataset, tmp_path / "b4", batch_size=4)
    single = evaluate_split(model, dataset, tmp_path / "b1", batch_size=1)[0]
    assert [r["prediction"] for r in batched] == [r["prediction"] for r in single]
    assert len({r["prediction"] for r in batched}) > 1  # the answers depend on the images shown
    assert [r["image_id"] for r in batched] == ["s1", "s2", "s3", "s4"] and generation["final_batch_size"] == 4
    # directly, as the chat and server call it: one batch of rows with 2, 4, 1, 2 images
    samples = [dataset[k] for k in range(len(dataset))]
    settings = GenerationSettings(max_new_tokens=12)
    gen = GenerationCollator(model.prompt_tokenizer)
    b = gen(samples)
    together = model.generate(b["pixel_values"], b["input_ids"], b["attention_mask"], settings, b["image_counts"])
    apart = []
    for s in samples:
        one = gen([s])
        apart += model.generate(one["pixel_values"], one["input_ids"], one["attention_mask"], settings, one["image_counts"])
    assert together == apart


# ---------------------------------------------------------------------------------------------- training


def study_run_config(tiny_assets, cfg_file, out, name, root, **dataset):
    """A shipped study config with the tiny model and `root`, 3 small steps."""
    import yaml

    cfg = yaml.safe_load(cfg_file.read_text())
    tiny = tiny_config(tiny_assets, out)
    cfg["model"] = {**tiny["model"], "ckpt": None}
    cfg["datasets"][name].update(root=str(root), eval_root=str(root), **dataset,
                                 vis_processor=tiny["datasets"]["mimic"]["vis_processor"])
    cfg["run"].update({**tiny["run"], "iters_per_epoch": 3, "batch_size_train": 3, "save_freq_steps": 0,
                       "amp": False, "group_by_length": False})
    return write_yaml(cfg, out.parent / f"{out.name}.yaml")


@pytest.mark.parametrize("config,name", [("stage2_studies.yaml", "openi_studies"), ("stage1_studies.yaml", "mimic_studies")])
def test_studies_jsonl_trains_end_to_end(tiny_assets, study_folder, tmp_path, config, name):
    import train

    out = tmp_path / "run"
    cfg = study_run_config(tiny_assets, REPO / "train_configs" / config, out, name, study_folder, max_images=3)
    assert train.main(["--cfg-path", str(cfg)]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert (out / "checkpoints" / "checkpoint_last.pt").is_file()
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in rows] == ["s1", "s2"]  # generated per study (sample_generations: 2)
    assert all(r["instruction"].startswith("Frontal (PA): <Img>") for r in rows)


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_study_input_is_counted_never_a_crash(tiny_assets, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    folder = write_study_folder(tiny_assets, tmp_path / "bad")
    lines = [json.loads(line) for line in (folder / "studies.jsonl").read_text().splitlines()]
    lines.append({"study_id": "s5", "subject_id": "p5", "images": [{"image_id": "g", "path": "image/gone.png", "view": "PA"}],
                  "findings": "Clear.", "impression": "Normal.", "summary": "Clear."})  # its image does not exist
    lines.append({"study_id": "s6", "subject_id": "p6", "images": [{"image_id": "t", "path": "image/junk.png",
                                                                    "view": "PA"}],
                  "findings": "Clear.", "summary": "Clear."})  # no impression; an image that is not one
    (folder / "image" / "junk.png").write_bytes(b"not an image at all")
    png = (folder / "image" / "s1_0.png").read_bytes()
    (folder / "image" / "s3_0.png").write_bytes(png[:len(png) // 2])  # s3's only image: the study is replaced
    (folder / "image" / "s1_1.png").write_bytes(png[:60])  # s1's lateral: left out of s1
    (folder / "studies.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    ds = studies(folder, target="impression", max_images=2, verify_images=False)
    ids = [s[0] for s in ds.samples]
    assert ids == ["s1", "s2", "s3", "s4"]  # s5: no readable image (dropped by the reader); s6: no impression
    assert ds.counts["no impression (study dropped)"] == 1
    assert ds.counts["studies with more images than max_images"] == 1 and ds.counts["images left out (max_images)"] == 1
    assert ds.counts["no indication"] == 1 and ds.counts["prior shown"] == 1 and ds.counts["no prior shown"] == 3
    s1 = ds[0]
    assert s1["views"] == ["PA"] and s1["instruction"].count(IMAGE_PLACEHOLDER) == 1 and ds.decode_failures == 1
    replaced = ds[2]  # s3 does not decode: the next study
    assert replaced["image_id"] == "s4" and ds.decode_failures == 2
    assert replaced["views"] == ["PA", "unknown"] and "Unknown view: <Img>" in replaced["instruction"]
    assert "prior from another subject" in caplog.text and "no readable image" in caplog.text

    summary = studies(folder, max_images=2, verify_images=True)  # header checks drop s6 when reading
    assert [s[0] for s in summary.samples] == ["s1", "s2", "s3", "s4"]
    unchecked = studies(folder, max_images=2, verify_images=False)  # unchecked, s6 fails to decode and is replaced
    assert unchecked[4]["image_id"] == "s1"
    (folder / "studies.jsonl").write_text(json.dumps(lines[4]) + "\n")
    with pytest.raises(DatasetError, match="no usable study record"):
        studies(folder)
    with pytest.raises(DatasetError, match="max_images must be at least 1"):
        studies(study_folder_ok(tiny_assets, tmp_path), max_images=0)
    with pytest.raises(ValueError, match="unknown study target"):
        build_mimic_studies(str(folder), MedCLIPImageEval(112), CaptionProcessor(), target="report")


def study_folder_ok(tiny_assets, tmp_path):
    return write_study_folder(tiny_assets, tmp_path / "ok")


OPENI_REPORTS = REPO.parent / "shared" / "data" / "openi-reports" / "ecgen-radiology"


@pytest.mark.skipif(not OPENI_REPORTS.is_dir(), reason="../shared/data/openi-reports is not beside the project")
def test_real_openi_study_targets_hold_no_comparison(tmp_path, capsys):
    """On the shared OpenI reports (placeholder images), every study target shown without a prior is free
    of comparison wording, though the raw sections hold it; the counts are printed."""
    from test_summary_fidelity import placeholder_images
    from xraygpt.data.prepare.__main__ import main as prepare_main

    out = tmp_path / "openi"
    assert prepare_main(["openi", "--reports", str(OPENI_REPORTS), "--images",
                         str(placeholder_images(OPENI_REPORTS, tmp_path / "png")), "--out", str(out),
                         "--no-verify-images"]) == 0
    capsys.readouterr()
    lines = []
    for target in ("summary", "findings", "impression", "sections"):
        ds = studies(out / "train", target=target, max_images=2, use_prior=False, verify_images=False)
        samples = ds.samples
        raw = [s[1].findings + " " + s[1].impression if target in ("summary", "sections") else getattr(s[1], target)
               for s in samples]
        assert not [s[0] for s in samples if COMPARISON.search(s[2])]
        assert sum(bool(COMPARISON.search(text)) for text in raw) > 100  # the rules had work to do
        lines.append(f"{target}: {len(samples)} studies, raw sections with comparison wording "
                     f"{sum(bool(COMPARISON.search(t)) for t in raw)}, targets with it 0, empty targets "
                     f"{sum(not s[2] for s in samples)}; {dict(sorted(ds.counts.items()))}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
