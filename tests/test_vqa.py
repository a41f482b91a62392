"""VQA-RAD and SLAKE (#19 item 2): fixtures in each release's exact format are read (bad entries
counted per reason), train in a stage-2 mix with summaries, and evaluate through evaluate.py into
metrics.json's `vqa` entry, whose arithmetic is checked on hand-made predictions."""

import json

import pytest
from PIL import Image

import evaluate
import train
from conftest import tiny_config, write_yaml
from xraygpt.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from xraygpt.data.collate import TrainCollator
from xraygpt.data.formats import DatasetError
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval
from xraygpt.data.vqa import VQA_FILES, build_slake, build_vqa_rad, read_vqa
from xraygpt.evaluation.vqa_metrics import answer_tokens, format_vqa_metrics, polarity, vqa_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VIS = {"train": {"name": "medclip_image_eval", "image_size": 112}, "eval": {"name": "medclip_image_eval", "image_size": 112}}


def vqa_rad_entry(qid, image, question, answer, answer_type, phrase_type="freeform", question_type="PRES"):
    """One record with every field of `VQA_RAD Dataset Public.json`, as released."""
    return {"qid": qid, "phrase_type": phrase_type, "qid_linked_id": f"0a1b2c3d-{qid:04d}",
            "image_case_url": f"https://medpix.nlm.nih.gov/case?id={qid}", "image_name": image, "image_organ": "CHEST",
            "evaluation": "not evaluated", "question": question, "question_rephrase": "NULL",
            "question_relation": "NULL", "question_frame": "NULL", "question_type": question_type, "answer": answer,
            "answer_type": answer_type}


def slake_entry(qid, img_id, question, answer, answer_type, q_lang="en", content_type="Abnormality"):
    """One record with every field of SLAKE's train/validate/test.json, as released."""
    return {"img_id": img_id, "img_name": f"xmlab{img_id}/source.jpg", "question": question, "answer": answer,
            "q_lang": q_lang, "location": "Lung", "modality": "X-Ray", "answer_type": answer_type, "base_type": "vqa",
            "content_type": content_type, "triple": ["vhead", "_", "_"], "qid": qid}


def _images(tiny_assets, count):
    return sorted((tiny_assets["train"] / "image").iterdir())[:count]


@pytest.fixture(scope="module")
def vqa_rad_root(tiny_assets, tmp_path_factory):
    """A VQA-RAD folder: `VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/synpic*.jpg`.

    Train (freeform/para): 6 usable questions and 7 bad ones; test (test_freeform/test_para): 4 usable."""
    root = tmp_path_factory.mktemp("vqa_rad")
    folder = root / "VQA_RAD Image Folder"
    folder.mkdir()
    for k, src in enumerate(_images(tiny_assets, 4)):
        Image.open(src).convert("L").save(folder / f"synpic{100 + k}.jpg", "JPEG")
    (folder / "synpic999.jpg").write_bytes(b"not a jpeg")
    entries = [
        vqa_rad_entry(0, "synpic100.jpg", "Is there a pleural effusion?", "Yes", "CLOSED"),
        vqa_rad_entry(1, "synpic100.jpg", "is there an effusion", "no ", "CLOSED ", "para"),   # odd case and spacing
        vqa_rad_entry(2, "synpic101.jpg", "How many nodules are there?", 2, "OPEN", question_type="COUNT"),  # a number
        vqa_rad_entry(3, "synpic101.jpg", "Where is the nodule?", "Left  upper lobe", "open", question_type="POS"),
        vqa_rad_entry(4, "synpic102.jpg", "Is this an MRI or an x-ray?", "x-ray", "CLOSED", question_type="MODALITY"),
        vqa_rad_entry(5, "synpic102.jpg", "How large is the heart?", "enlarged", "OPEN", question_type="SIZE"),
        # bad entries, one per reason
        vqa_rad_entry(6, "synpic100.jpg", "Is the heart enlarged?", "   ", "CLOSED"),            # empty answer
        vqa_rad_entry(7, "synpic404.jpg", "Is there a mass?", "no", "CLOSED"),                  # image missing
        vqa_rad_entry(8, "synpic100.jpg", "有胸腔积液吗?", "yes", "CLOSED"),                     # mixed scripts
        vqa_rad_entry(9, "synpic100.jpg", "Is there a mass?", "no", "MAYBE"),                   # unknown answer type
        vqa_rad_entry(0, "synpic101.jpg", "Is there a pneumothorax?", "no", "CLOSED"),          # duplicate qid
        vqa_rad_entry(10, "../outside.jpg", "Is there a mass?", "no", "CLOSED"),                # unsafe path
        vqa_rad_entry(11, "synpic999.jpg", "Is there a mass?", "no", "CLOSED"),                 # image unreadable
        "not an object",                                                                        # malformed
        # the test set
        vqa_rad_entry(20, "synpic103.jpg", "Is there a pleural effusion?", "yes", "CLOSED", "test_freeform"),
        vqa_rad_entry(21, "synpic103.jpg", "Is the heart normal in size?", "No", "CLOSED", "test_para"),
        vqa_rad_entry(22, "synpic102.jpg", "Where is the nodule?", "right lung", "OPEN", "test_freeform", "POS"),
        vqa_rad_entry(23, "synpic101.jpg", "What imaging modality is this?", "x-ray", "OPEN", "test_freeform", "MODALITY"),
    ]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(entries, indent=1), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def slake_root(tiny_assets, tmp_path_factory):
    """A SLAKE folder: train.json / validate.json / test.json + imgs/xmlab<N>/source.jpg, English and Chinese."""
    root = tmp_path_factory.mktemp("slake")
    for k, src in enumerate(_images(tiny_assets, 3)):
        (root / "imgs" / f"xmlab{k}").mkdir(parents=True)
        Image.open(src).convert("L").save(root / "imgs" / f"xmlab{k}" / "source.jpg", "JPEG")
    train_entries = [
        slake_entry(1, 0, "Does the picture contain lung?", "Yes", "CLOSED", content_type="Organ"),
        slake_entry(2, 0, "Where is the abnormality?", "Left Lung", "OPEN", content_type="Position"),
        slake_entry(3, 1, "图片中有胸腔积液吗?", "是", "CLOSED", "zh"),
        slake_entry(4, 1, "病变在哪里?", "左肺", "OPEN", "zh", "Position"),
        slake_entry(5, 2, "What modality is used?", "X-Ray", "OPEN", content_type="Modality"),
        # bad entries
        slake_entry(6, 2, "Is this a CT?", "", "CLOSED"),                            # empty answer
        slake_entry(7, 9, "Is there a nodule?", "No", "CLOSED"),                     # image missing (no xmlab9)
        slake_entry(8, 0, "Where is the 病变?", "Left Lung", "OPEN"),                # mixed scripts: en with CJK
        slake_entry(9, 0, "Where is the lesion?", "左肺", "OPEN", "zh"),             # mixed scripts: zh without CJK
        slake_entry(10, 0, "Where is the lesion?", "Left Lung", "OPEN", "fr"),       # unknown language
        {**slake_entry(11, 0, "Is it normal?", "Yes", "CLOSED"), "answer_type": None},  # unknown answer type
        {**slake_entry(12, 0, "Is it normal?", "Yes", "CLOSED"), "question": 42},      # malformed
    ]
    test_entries = [
        slake_entry(101, 0, "Is the lung healthy?", "No", "CLOSED"),
        slake_entry(102, 1, "Which organ is abnormal?", "Lung", "OPEN", content_type="Organ"),
        slake_entry(103, 2, "图片中有结节吗?", "否", "CLOSED", "zh"),
        slake_entry(104, 2, "这张图片的成像方式是什么?", "X光", "OPEN", "zh", "Modality"),
    ]
    for name, entries in (("train", train_entries), ("validate", test_entries[:2]), ("test", test_entries)):
        (root / f"{name}.json").write_text(json.dumps(entries, ensure_ascii=False, indent=1), encoding="utf-8")
    return root


# ---------------------------------------------------------------- readers


def test_vqa_rad_reads_the_release_and_counts_every_bad_entry(vqa_rad_root):
    samples, dropped, total, path = read_vqa("vqa_rad", "vqa_rad", vqa_rad_root, None, None, "train", None, True)
    assert path == vqa_rad_root / "VQA_RAD Dataset Public.json" and total == 14
    assert [s.sample_id for s in samples] == [f"vqa_rad:{q}" for q in range(6)]
    by_id = {s.sample_id: s for s in samples}
    assert (by_id["vqa_rad:1"].answer, by_id["vqa_rad:1"].answer_type) == ("no", "closed")
    assert (by_id["vqa_rad:2"].answer, by_id["vqa_rad:2"].answer_type) == ("2", "open")
    assert by_id["vqa_rad:3"].answer == "Left upper lobe" and by_id["vqa_rad:3"].question_type == "POS"
    assert {s.language for s in samples} == {"en"}
    assert by_id["vqa_rad:0"].image == vqa_rad_root / "VQA_RAD Image Folder" / "synpic100.jpg"
    assert {reason: ids for reason, ids in dropped.items() if ids} == {
        "malformed entry": ["#13"], "empty answer": ["vqa_rad:6"], "image missing": ["vqa_rad:7"],
        "mixed scripts": ["vqa_rad:8"], "unknown answer type": ["vqa_rad:9"], "duplicate id": ["vqa_rad:0"],
        "unsafe image path": ["vqa_rad:10"], "image unreadable": ["vqa_rad:11"]}
    test, dropped, total, _ = read_vqa("vqa_rad", "vqa_rad", vqa_rad_root, None, None, "test", None, True)
    assert [s.sample_id for s in test] == ["vqa_rad:20", "vqa_rad:21", "vqa_rad:22", "vqa_rad:23"] and total == 4
    assert not any(dropped.values())
    assert len(read_vqa("vqa_rad", "vqa_rad", vqa_rad_root, None, None, "all", None, True)[0]) == 10
    with pytest.raises(DatasetError, match="split 'val' is not one of train, test, all"):
        read_vqa("vqa_rad", "vqa_rad", vqa_rad_root, None, None, "val", None, True)


def test_slake_reads_each_split_file_with_its_languages(slake_root):
    samples, dropped, total, path = read_vqa("slake", "slake", slake_root, None, None, "train", None, True)
    assert path == slake_root / "train.json" and total == 12
    assert [(s.sample_id, s.language, s.answer_type) for s in samples] == [
        ("slake:1", "en", "closed"), ("slake:2", "en", "open"), ("slake:3", "zh", "closed"), ("slake:4", "zh", "open"),
        ("slake:5", "en", "open")]
    assert samples[0].image == slake_root / "imgs" / "xmlab0" / "source.jpg" and samples[1].question_type == "Position"
    assert {reason: ids for reason, ids in dropped.items() if ids} == {
        "empty answer": ["slake:6"], "image missing": ["slake:7"], "mixed scripts": ["slake:8", "slake:9"],
        "unknown language": ["slake:10"], "unknown answer type": ["slake:11"], "malformed entry": ["slake:12"]}
    zh = read_vqa("slake", "slake", slake_root, None, None, "train", ["zh"], True)[0]
    assert [s.sample_id for s in zh] == ["slake:3", "slake:4"]
    assert len(read_vqa("slake", "slake", slake_root, None, None, "val", None, True)[0]) == 2  # validate.json
    assert len(read_vqa("slake", "slake", slake_root, None, None, "test", None, True)[0]) == 4


def test_a_source_with_nothing_usable_is_refused_in_one_line_naming_the_file(slake_root, vqa_rad_root, tmp_path):
    with pytest.raises(DatasetError) as err:
        build_slake(str(slake_root), MedCLIPImageEval(112), CaptionProcessor(), split="train", languages=["zh"],
                    max_samples=0, ann_file="validate.json")
    message = str(err.value)
    assert "\n" not in message and str(slake_root / "validate.json") in message and "no usable question" in message
    bad = tmp_path / "bad"
    (bad / "VQA_RAD Image Folder").mkdir(parents=True)
    (bad / "VQA_RAD Dataset Public.json").write_text(json.dumps(
        [vqa_rad_entry(1, "a.jpg", "Is it?", "", "CLOSED"), vqa_rad_entry(2, "b.jpg", "Is it?", "yes", "CLOSED")]))
    with pytest.raises(DatasetError) as err:
        build_vqa_rad(str(bad), MedCLIPImageEval(112), CaptionProcessor())
    assert "\n" not in str(err.value) and "VQA_RAD Dataset Public.json" in str(err.value)
    assert "1 empty answer, 1 image missing" in str(err.value)
    (bad / "VQA_RAD Dataset Public.json").write_text('{"qid": 1}')
    with pytest.raises(DatasetError, match="is not a JSON list of questions"):
        build_vqa_rad(str(bad), MedCLIPImageEval(112), CaptionProcessor())
    with pytest.raises(DatasetError, match="'fr' is not one of en, zh"):
        build_slake(str(slake_root), MedCLIPImageEval(112), CaptionProcessor(), languages=["fr"])


def test_a_question_trains_as_one_turn_of_the_template(slake_root, tiny_model_factory):
    """`<Img><ImageHere></Img> {question}` -> the answer: loss on the answer and end symbol only."""
    model = tiny_model_factory()
    dataset = build_slake(str(slake_root), MedCLIPImageEval(112), CaptionProcessor(), question_template="{question} Answer briefly.")
    assert dataset.capabilities == VQA_FILES and not dataset.capabilities.group_by_length
    sample = dataset[1]
    assert sample["instruction"] == "<Img><ImageHere></Img> Where is the abnormality? Answer briefly."
    assert sample["caption"] == "Left Lung" and sample["vqa"] == {
        "answer_type": "open", "language": "en", "question_type": "Position", "source": "slake"}
    batch = TrainCollator(model.prompt_tokenizer)([sample, dataset[3]])
    tok = model.prompt_tokenizer.tokenizer
    for row, answer, question in ((0, "Left Lung", "Where is the abnormality?"), (1, "左肺", "病变在哪里?")):
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        assert ids.count(IMAGE_TOKEN_ID) == model.prompt_tokenizer.num_image_tokens
        target = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
        assert tok.decode(target).replace(" ", "") == (answer + "###").replace(" ", "")
        prompt = tok.decode([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX and t != IMAGE_TOKEN_ID],
                            skip_special_tokens=True)
        assert question.replace(" ", "") in prompt.replace(" ", "")


# ---------------------------------------------------------------- metrics


def _row(image_id, prediction, reference, answer_type, language, source="slake"):
    return {"image_id": image_id, "prediction": prediction, "reference": reference,
            "vqa": {"answer_type": answer_type, "language": language, "question_type": "", "source": source}}


def test_vqa_metrics_arithmetic_per_answer_type_language_and_source():
    rows = [
        # English closed, yes/no: 2 of 3 right
        _row("e1", "Yes, there is.", "Yes", "closed", "en", "vqa_rad"),
        _row("e2", "Yes", "no", "closed", "en", "vqa_rad"),
        _row("e3", "There is no effusion.", "No ", "closed", "en", "vqa_rad"),
        # English closed, other answers: exact after normalisation, 1 of 2
        _row("e4", "MRI.", "mri", "closed", "en", "vqa_rad"),
        _row("e5", "the left side", "left", "closed", "en", "vqa_rad"),
        # English open: exact 2 of 3, recall (1 + 1/2 + 1) / 3
        _row("e6", "Left lower lobe", "left lower lobe", "open", "en"),
        _row("e7", "effusion", "pleural effusion", "open", "en"),
        _row("e8", "2", "two", "open", "en"),
        # Chinese closed: 1 of 2
        _row("z1", "是的，有。", "是", "closed", "zh"),
        _row("z2", "是", "否", "closed", "zh"),
        # Chinese open, characters as tokens: exact 1 of 3, recall (1 + 1/2 + 0) / 3
        _row("z3", "左肺", "左肺", "open", "zh"),
        _row("z4", "心", "心脏", "open", "zh"),
        _row("z5", "", "右肺下叶", "open", "zh"),
        # skipped
        _row("z3", "左肺", "左肺", "open", "zh"),                                   # duplicate id
        _row("s1", "yes", "  ", "closed", "en"),                                  # empty reference
        {**_row("s2", "yes", "yes", "closed", "en"), "vqa": {"answer_type": "yes/no", "language": "en"}},  # malformed
        {"image_id": "s3", "prediction": None, "reference": "yes", "vqa": {"answer_type": "closed", "language": "en"}},
    ]
    m = vqa_metrics(rows)
    assert m["num_scored"] == 13
    assert m["skipped"] == {"count": 4, "by_reason": {"duplicate id": ["z3"], "empty reference": ["s1"],
                                                      "malformed row": ["s2", "s3"]}}
    assert m["empty_predictions"] == {"count": 1, "ids": ["z5"]}
    en, zh = m["by_language"]["en"], m["by_language"]["zh"]
    assert en["count"] == 8 and zh["count"] == 5
    assert en["closed"]["yes_no"] == {"count": 3, "accuracy": pytest.approx(2 / 3)}
    assert en["closed"]["other"] == {"count": 2, "accuracy": pytest.approx(1 / 2)}
    assert en["closed"]["count"] == 5 and en["closed"]["accuracy"] == pytest.approx(3 / 5)
    assert en["open"] == {"count": 3, "exact_match": pytest.approx(2 / 3), "token_recall": pytest.approx(2.5 / 3)}
    assert zh["closed"] == {"count": 2, "accuracy": 0.5, "yes_no": {"count": 2, "accuracy": 0.5},
                            "other": {"count": 0, "accuracy": None}}
    assert zh["open"] == {"count": 3, "exact_match": pytest.approx(1 / 3), "token_recall": pytest.approx(0.5)}
    everything = m["all"]
    assert everything["closed"]["accuracy"] == pytest.approx(4 / 7)
    assert everything["open"]["exact_match"] == pytest.approx(3 / 6)
    assert everything["open"]["token_recall"] == pytest.approx(4 / 6)
    assert m["by_source"]["vqa_rad"]["closed"]["accuracy"] == pytest.approx(3 / 5)
    assert m["by_source"]["vqa_rad"]["open"]["count"] == 0 and m["by_source"]["vqa_rad"]["open"]["exact_match"] is None
    assert m["by_source"]["slake"]["count"] == 8
    table = format_vqa_metrics(m)
    assert "13 questions scored; 4 skipped" in table and "lang zh" in table and "src vqa_rad" in table


def test_answer_normalisation_tokens_and_polarity():
    assert answer_tokens("左肺下叶") == ["左", "肺", "下", "叶"]
    assert answer_tokens("The  Two nodules, 2.5 cm.") == ["2", "nodules", "2.5", "cm"]
    assert answer_tokens("右肺 MRI。") == ["右", "肺", "mri"]
    assert [polarity(p) for p in ("YES.", "No, none", "there is no mass", "maybe", "不是", "没有积液", "是的", "")] == [
        "yes", "no", "no", None, "no", "no", "yes", None]
    assert polarity("yes and no") == "yes" and polarity("it could be yes or no") is None


# ---------------------------------------------------------------- train and evaluate


@pytest.fixture(scope="module")
def stage2_vqa_run(tiny_assets, vqa_rad_root, slake_root, tmp_path_factory):
    """Two steps of a stage 2 mixing OpenI summaries with VQA-RAD and SLAKE questions, through train.py."""
    out = tmp_path_factory.mktemp("stage2_vqa") / "out"
    cfg = tiny_config(tiny_assets, out, iters_per_epoch=2, batch_size_train=4, sample_generations=0)
    summaries = cfg["datasets"].pop("mimic")
    summaries.pop("eval_root")
    cfg["datasets"] = {"openi": {**summaries, "max_samples": 8}, "vqa_rad": {"root": str(vqa_rad_root), "vis_processor": VIS},
                       "slake": {"root": str(slake_root), "vis_processor": VIS}}
    assert train.main(["--cfg-path", str(write_yaml(cfg, out.parent / "stage2_vqa.yaml"))]) == 0
    return out


def test_stage2_trains_on_summaries_and_questions_together(stage2_vqa_run, tiny_assets, vqa_rad_root, slake_root):
    from omegaconf import OmegaConf

    from xraygpt import builders

    records = [json.loads(line) for line in (stage2_vqa_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] == r["loss"] for r in records)
    assert (stage2_vqa_run / "checkpoints" / "checkpoint_last.pt").is_file()
    cfg = OmegaConf.load(stage2_vqa_run / "config.yaml")
    mixed = builders.build_datasets(cfg.datasets, 7, "train", None, None)
    assert [len(ds) for ds in mixed.datasets] == [8, 6, 5]  # the mix is by size: 8 summaries, 11 questions
    assert [mixed[k]["source"] for k in (0, 8, 14)] == ["openi", "vqa_rad", "slake"]


def _eval_config(tiny_assets, ckpt, out, vqa_rad_root, slake_root, **datasets):
    model = tiny_config(tiny_assets, out)["model"]
    model["ckpt"] = str(ckpt)
    vis = {"eval": VIS["eval"]}
    return {"model": model,
            "datasets": {"vqa_rad": {"root": str(vqa_rad_root), "split": "test", "vis_processor": vis},
                         "slake": {"root": str(slake_root), "split": "test", "vis_processor": vis}, **datasets},
            "evaluation": {"output_dir": str(out), "batch_size": 4, "max_new_tokens": 4, "bootstrap_resamples": 0,
                           "progress": False}}


def test_evaluate_py_writes_vqa_metrics_per_type_and_language(stage2_vqa_run, tiny_assets, vqa_rad_root, slake_root,
                                                              tmp_path, capsys):
    out = tmp_path / "eval"
    summaries = {"openi": {"root": str(tiny_assets["val"]), "prompt_path": str(tiny_assets["prompts"]),
                           "vis_processor": {"eval": VIS["eval"]}, "max_samples": 3}}
    cfg = _eval_config(tiny_assets, stage2_vqa_run / "checkpoints" / "checkpoint_last.pt", out, vqa_rad_root, slake_root,
                       **summaries)
    assert evaluate.main(["--cfg-path", str(write_yaml(cfg, tmp_path / "eval_vqa.yaml"))]) == 0
    table = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 + 4 + 4
    questions = [r for r in rows if "vqa" in r]
    assert {r["image_id"] for r in questions} == {"vqa_rad:20", "vqa_rad:21", "vqa_rad:22", "vqa_rad:23",
                                                  "slake:101", "slake:102", "slake:103", "slake:104"}
    assert next(r for r in questions if r["image_id"] == "slake:104")["vqa"] == {
        "answer_type": "open", "language": "zh", "question_type": "Modality", "source": "slake"}
    assert next(r for r in questions if r["image_id"] == "slake:104")["reference"] == "X光"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_scored"] == 3  # the summaries alone carry the report metrics
    vqa = metrics["vqa"]
    assert vqa == json.loads(json.dumps(vqa_metrics(questions)))  # metrics.json agrees with its predictions
    assert vqa["num_scored"] == 8 and vqa["all"]["closed"]["count"] == 4 and vqa["all"]["open"]["count"] == 4
    assert {lang: (b["closed"]["count"], b["open"]["count"]) for lang, b in vqa["by_language"].items()} == {
        "en": (3, 3), "zh": (1, 1)}
    assert {src: b["count"] for src, b in vqa["by_source"].items()} == {"slake": 4, "vqa_rad": 4}
    assert "VQA: 8 questions scored" in table and "ROUGE-L" in table


def test_evaluate_py_refuses_a_vqa_split_with_nothing_usable(stage2_vqa_run, tiny_assets, vqa_rad_root, slake_root,
                                                             tmp_path, capsys):
    cfg = _eval_config(tiny_assets, stage2_vqa_run / "checkpoints" / "checkpoint_last.pt", tmp_path / "out",
                       vqa_rad_root, slake_root)
    cfg["datasets"]["slake"]["languages"] = ["zh"]
    cfg["datasets"]["slake"]["ann_file"] = "validate.json"  # English questions only
    assert evaluate.main(["--cfg-path", str(write_yaml(cfg, tmp_path / "c.yaml"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert errors == [err[-1]] and "no usable question in" in err[-1] and "validate.json" in err[-1]
    assert not (tmp_path / "out").exists()


def test_the_vqa_configs_validate(repo):
    from xraygpt.builders import load_job_config

    job, cfg = load_job_config(repo / "train_configs" / "stage2_vqa.yaml")
    assert job == "training" and set(cfg.datasets) == {"openi", "vqa_rad", "slake"}
    job, cfg = load_job_config(repo / "eval_configs" / "eval_vqa.yaml")
    assert job == "evaluation" and cfg.datasets.vqa_rad.split == "test" and cfg.datasets.slake.split == "test"
