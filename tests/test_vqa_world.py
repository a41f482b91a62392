"""The VQA proof's questions (xraygpt/embedded/vqa_world.py) and its scoring helpers (vqa_proof.py).

Answers agree with labels.json and with the sides and zones the captions name; yes/no is balanced
per finding and language; every question exists in English and Chinese; the release loads
through xraygpt/data/vqa.py with nothing dropped; the tokenizer makes Chinese answers pieces;
the shuffled ablation moves every question to another image; the bars are applied per language.
"""

import collections
import json
from pathlib import Path

import pytest

from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval
from xraygpt.data.vqa import build_slake
from xraygpt.embedded import vqa_proof, vqa_world
from xraygpt.embedded.anatomy import FINDINGS
from xraygpt.embedded.dataset import generate_dataset

GENERATOR_SEED = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa_world")
    source = root / "data" / "mimic"
    generate_dataset(source, num_train=40, num_val=6, num_test=12, seed=GENERATOR_SEED, image_size=112, slot_grid=7)
    questions = vqa_world.write_release(root / "vqa" / "mimic", source, GENERATOR_SEED, seed=0)
    return {"root": root, "source": source, "release": root / "vqa" / "mimic", "questions": questions}


def _labels(world, split):
    return json.loads((world["source"] / split / "labels.json").read_text())


def _captions(world, split):
    data = json.loads((world["source"] / split / "filter_cap.json").read_text())
    return {a["image_id"]: a["caption"] for a in data["annotations"]}


def test_presence_answers_agree_with_the_labels_and_are_balanced(world):
    for split, questions in world["questions"].items():
        labels = _labels(world, split)
        counts = collections.Counter()
        for q in questions:
            if q.kind != "presence":
                continue
            present = q.finding in labels[q.image_id]
            assert q.answer == vqa_world.YES_NO[q.language][0 if present else 1], q
            counts[(q.finding, q.language, present)] += 1
        for finding in FINDINGS:
            for language in vqa_world.LANGUAGES:
                assert counts[(finding, language, True)] == counts[(finding, language, False)] > 0, (split, finding)
        heart = [q for q in questions if q.kind == "size"]
        assert heart and all((q.answer in ("enlarged", "增大")) == ("cardiomegaly" in labels[q.image_id]) for q in heart)


def test_sides_and_zones_are_the_ones_the_captions_name(world):
    """The impression of every caption names the side (and a single nodule's zone) of each finding."""
    zh_side = {"右侧": "right", "左侧": "left", "右肺": "right", "左肺": "left", "双肺": "both"}
    checked = collections.Counter()
    for split, questions in world["questions"].items():
        labels, captions = _labels(world, split), _captions(world, split)
        for q in questions:
            caption = captions[q.image_id].lower()
            if q.kind == "side":
                assert q.finding in labels[q.image_id]
                side = zh_side.get(q.answer, q.answer)
                if q.finding == "nodule":
                    names = (["bilateral pulmonary nodules"] if side == "both" else
                             [f"{side} pulmonary nodules"] + [f"{side} {zone} zone pulmonary nodule"
                                                              for zone in vqa_world.ZONE_ORDER])
                    assert any(name in caption for name in names), (q, caption)
                else:
                    name = "pleural effusion" if q.finding == "pleural_effusion" else "pneumothorax"
                    assert f"{side} {name}" in caption, (q, caption)
                checked[q.finding] += 1
            elif q.kind == "where" and q.language == "en" and "pulmonary nodules" not in caption:
                assert f"{q.answer} pulmonary nodule" in caption, (q, caption)  # one site: its side and zone
                checked["where"] += 1
    assert len(checked) == 4 and min(checked.values()) > 0, checked


def test_every_question_is_asked_in_both_languages(world):
    questions = world["questions"]["train"]
    by_language = collections.defaultdict(dict)
    for q in questions:
        by_language[q.language][(q.image_id, q.kind, q.finding)] = q
    assert by_language["en"].keys() == by_language["zh"].keys()
    translate = {"yes": "是", "no": "否", "enlarged": "增大", "normal": "正常", "right": ("右侧", "右肺"),
                 "left": ("左侧", "左肺"), "both": "双肺"}
    for key, en in by_language["en"].items():
        zh = by_language["zh"][key]
        assert any(c >= "\u4e00" for c in zh.question) and en.question.isascii()
        if en.kind not in ("where", "abnormality"):
            assert zh.answer in translate[en.answer], (en, zh)


def test_abnormality_answers_name_each_drawn_finding_once_in_each_language(world):
    """One open abnormality question per image and language; its answer names exactly the labelled
    findings (in FINDINGS order, with each language's words), "none" / 无 for a normal image."""
    findings_named = {lang: {v: k for k, v in names.items()} for lang, names in vqa_world.FINDING_NAMES.items()}
    kinds = collections.Counter()
    for split, questions in world["questions"].items():
        labels = _labels(world, split)
        asked = collections.Counter((q.image_id, q.language) for q in questions if q.kind == "abnormality")
        assert set(asked) == {(i, lang) for i in labels for lang in vqa_world.LANGUAGES} and set(asked.values()) == {1}
        for q in questions:
            if q.kind != "abnormality":
                continue
            assert q.answer_type == "open" and q.finding == vqa_world.ALL_FINDINGS
            expected = [f for f in FINDINGS if f in labels[q.image_id]]
            lang = q.language
            named = ([] if q.answer == vqa_world.NO_ABNORMALITY[lang] else
                     [findings_named[lang][n] for n in q.answer.split(vqa_world.NAME_JOINERS[lang])])
            assert named == expected, q
            kinds["normal" if not expected else "several" if len(expected) > 1 else "one"] += 1
    assert set(kinds) == {"normal", "one", "several"}, kinds


def test_the_release_loads_through_the_slake_reader_with_nothing_dropped(world, caplog):
    for split, reader_split in (("train", "train"), ("val", "validate"), ("test", "test")):
        entries = json.loads((world["release"] / vqa_world.RELEASE_FILES[split]).read_text())
        dataset = build_slake(str(world["release"]), MedCLIPImageEval(112), CaptionProcessor(), split=reader_split)
        assert len(dataset) == len(entries) == len(world["questions"][split])
        assert {s.language for s in dataset.samples} == {"en", "zh"}
        assert {s.answer_type for s in dataset.samples} == {"closed", "open"}
        sample = dataset[0]
        assert sample["pixel_values"].shape == (3, 112, 112) and sample["vqa"]["language"] in ("en", "zh")
        assert sample["instruction"].endswith(entries[0]["question"])
    assert "skipped" not in caplog.text


def test_a_changed_generator_seed_is_refused(world):
    with pytest.raises(vqa_world.CaseMismatch, match="does not give its caption"):
        vqa_world.image_cases(world["source"] / "test", GENERATOR_SEED + 1, "test")


def test_sided_slots_name_each_lung_finding_with_its_side(world):
    slots = json.loads((world["source"] / "train" / "slots.json").read_text())
    sided = json.loads((world["release"] / vqa_world.SIDED_SLOTS_FILE).read_text())
    assert set(sided) == {i for split in ("train", "val", "test") for i in _labels(world, split)}
    cases = vqa_world.image_cases(world["source"] / "train", GENERATOR_SEED, "train")
    seen = collections.Counter()
    for image_id, slot in slots.items():
        plain, with_side = slot.split(" "), sided[image_id].split(" ")
        assert len(with_side) == len(plain) == 49
        for n, (word, item) in enumerate(zip(plain, with_side)):
            if word not in vqa_world.SIDED_WORDS:
                assert item == word  # o and cardiomegaly unchanged
                continue
            side = {"r": "right", "l": "left"}[item[0]]
            assert item[1:] == word
            case = cases[image_id]
            if word == "effusion":
                assert side == case.effusion_side
            elif word == "pneumothorax":
                assert side == case.ptx_side
            else:
                assert side in {s for s, _ in case.nodule_sites()}
                if len({s for s, _ in case.nodule_sites()}) == 2:  # both lungs: the cell's half of the image decides
                    col = n % 7
                    assert col == 3 or side == ("right" if col < 3 else "left"), (image_id, n, item)
            seen[item] += 1
    assert {"reffusion", "leffusion", "rpneumothorax", "lpneumothorax", "rnodule", "lnodule"} <= set(seen), seen


def test_stage0_conversations_put_the_slot_words_in_the_image_slot(world):
    slots = json.loads((world["release"] / vqa_world.SIDED_SLOTS_FILE).read_text())
    questions = world["questions"]["train"]
    conversations = vqa_world.stage0_conversations(questions, slots, seed=0)
    assert len(conversations) == len({(q.image_id, q.language) for q in questions})
    asked = collections.Counter()
    for conversation in conversations:
        image_id, language = conversation["id"].split(":")
        turns = conversation["turns"]
        users, answers = turns[0::2], turns[1::2]
        assert users[0]["content"].startswith(f"<Img>{slots[image_id]}</Img> ")
        assert all("<Img>" not in u["content"] for u in users[1:])
        mine = {(q.question, q.answer) for q in questions if q.image_id == image_id and q.language == language}
        pairs = [(users[0]["content"].split("</Img> ", 1)[1], answers[0]["content"])]
        pairs += [(u["content"], a["content"]) for u, a in zip(users[1:], answers[1:])]
        assert set(pairs) == mine and len(pairs) == len(mine)
        asked[language] += len(pairs)
    assert asked["en"] == asked["zh"] == len(questions) // 2


def test_every_slot_item_is_one_token_of_the_proofs_tokenizer(world, tmp_path):
    from xraygpt.embedded.assets import write_tiny_llm

    slots = json.loads((world["release"] / vqa_world.SIDED_SLOTS_FILE).read_text())
    conversations = vqa_world.stage0_conversations(world["questions"]["train"], slots)
    texts = vqa_world.conversation_texts(conversations)
    assert texts[0].startswith("###Doctor: <Img>") and texts[0].endswith("###") and "###Assistant: " in texts[0]
    train_slots = [v for k, v in sorted(slots.items()) if k.startswith("train_")]
    write_tiny_llm(tmp_path / "llm", texts + train_slots * 2, seed=0)
    assert vqa_proof.check_slot_tokens(tmp_path / "llm", slots) == []


def test_the_tokenizer_makes_chinese_answers_pieces(world, tmp_path):
    import sentencepiece
    from transformers import AutoTokenizer

    from xraygpt.embedded.assets import train_tokenizer

    questions = [q for qs in world["questions"].values() for q in qs]
    train_tokenizer(vqa_world.template_texts(questions), tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    spm = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "tokenizer.model"))
    for q in questions:
        if q.language != "zh":
            continue
        answer = tokenizer.convert_ids_to_tokens(tokenizer(q.answer, add_special_tokens=False)["input_ids"])
        assert not any(p.startswith("<0x") for p in answer), (q.answer, answer)  # no byte fallback
        assert len(answer) <= len(q.answer) + 1, (q.answer, answer)
        ids = tokenizer(q.question, add_special_tokens=False)["input_ids"]
        question = tokenizer.convert_ids_to_tokens(ids)
        # every character is a piece, the full-width question mark too (the fast tokenizer applies no NFKC,
        # so SentencePiece is trained without it), and the fast tokenizer agrees with SentencePiece itself
        assert not any(p.startswith("<0x") for p in question), (q.question, question)
        assert ids == spm.encode(q.question), (q.question, question)
    assert "？" in "".join(tokenizer.convert_ids_to_tokens(range(len(tokenizer))))


def test_shuffled_images_move_every_question_to_another_image(tmp_path):
    files = [tmp_path / f"{i % 7}.png" for i in range(30)]  # several questions per image
    other = vqa_proof.shuffled_images(files, seed=3)
    assert sorted(other) == sorted(other.values()) == sorted(set(files))
    assert all(other[f] != f for f in files)
    assert other == vqa_proof.shuffled_images(list(reversed(files)), seed=3)  # seeded, order-free
    with pytest.raises(ValueError):
        vqa_proof.shuffled_images(files[:1], seed=0)


def _metrics(closed: dict, open_exact: float = 0.5) -> dict:
    """A vqa_metrics.json with closed accuracy per (mode, language)."""
    def block(acc):
        return {"closed": {"count": 100, "accuracy": acc}, "open": {"count": 10, "exact_match": open_exact}}
    return {mode: {"by_language": {lang: block(closed[mode][lang]) for lang in ("en", "zh")}} for mode in closed}


def test_the_bars_are_applied_per_language(tmp_path):
    good = {"image": {"en": 0.95, "zh": 0.93}, "shuffled": {"en": 0.5, "zh": 0.55}, "blank": {"en": 0.5, "zh": 0.5}}
    weak_zh = {**good, "image": {"en": 0.95, "zh": 0.88}, "shuffled": {"en": 0.5, "zh": 0.61}}
    files = []
    for name, metrics in (("good", good), ("weak", weak_zh)):
        path = tmp_path / name / "vqa_metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps(_metrics(metrics)))
        files.append(path)
    lines = vqa_proof.proof_lines(files).splitlines()
    assert len(lines) == 6
    assert lines[1].split()[1:4] == ["en", "0.950", "0.500"] and lines[1].endswith("all met")
    assert lines[2].endswith("all met") and lines[3].endswith("all met")
    assert "with the image 0.88 < 0.9" in lines[4] and "shuffled images 0.61 > 0.6" in lines[4]
    assert lines[5].endswith("NOT every bar met")
    assert vqa_proof.proof_lines(files[:1]).endswith("every bar met")


def test_stage0_shifts_the_filler_over_exactly_the_sided_words_the_slots_hold(world):
    """tiny_vqa_stage0.yaml's `slot_words` (the shared filler offset's words) are the words of the
    sided slots stage 0 reads: every lung finding with each side, and cardiomegaly."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "train_configs" / "tiny_vqa_stage0.yaml")
    sided = json.loads((world["release"] / vqa_world.SIDED_SLOTS_FILE).read_text())
    written = {w for text in sided.values() for w in text.split(" ")} - {"o"}
    assert cfg.model.slot_filler_shift > 0 and cfg.model.slot_filler_noise > 0
    assert set(cfg.model.slot_words) == written
