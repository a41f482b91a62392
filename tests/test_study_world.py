"""The study world of the embedded default (xraygpt/embedded/study_world.py, lateral.py) and the study
proof's scoring (study_proof.py): lateral-only findings drawn on the lateral view only, changes against the
prior as drawn and as written, balance (chance 0.5 by construction), the training subjects recorded
without their prior (a declared fraction, balanced, comparison-free texts) and how texts written without a
prior are scored, deterministic bytes, the study reader and dataset take the file as written, bad input
refused."""

import dataclasses
import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from xraygpt.embedded import study_world
from xraygpt.embedded.anatomy import FINDINGS
from xraygpt.embedded.lateral import (LATERAL_FINDINGS, LATERAL_SLOT_WORDS, lateral_slot, render_lateral,
                                      sample_lateral)
from xraygpt.embedded.render import render
from xraygpt.embedded.slots import SLOT_WORDS
from xraygpt.embedded.study_proof import derangement, proof_lines, study_scores, verdict

SEED = 5
N_TRAIN = 32  # a quarter without the prior: 8 and 24 subjects, each a multiple of the 4 changes
CHANGE_WORDS = re.compile(r"\b(?:new|resolv\w*|unchanged|stable|no longer|change\w*|prior|compar\w*)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("study_world")
    study_world.generate_studies(root, num_train=N_TRAIN, num_val=4, num_test=8, seed=SEED)
    return root


def _hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(world, tmp_path):
    study_world.generate_studies(tmp_path / "again", num_train=N_TRAIN, num_val=4, num_test=8, seed=SEED)
    assert _hashes(tmp_path / "again") == _hashes(world)
    study_world.generate_studies(tmp_path / "other", num_train=N_TRAIN, num_val=4, num_test=8, seed=SEED + 1)
    other = _hashes(tmp_path / "other")
    assert other["train/image/train_000001_frontal.png"] != _hashes(world)["train/image/train_000001_frontal.png"]


def test_lateral_only_findings_are_invisible_on_the_frontal_and_visible_on_the_lateral():
    changes = {f: "unchanged" for f in FINDINGS}
    current, prior = study_world.subject_cases(changes, [SEED, 15, 0, 1, 3])
    frontal = np.asarray(render(current, 112))
    # the frontal case knows no lateral finding: the same subject's frontal is the same image whatever
    # its lateral view shows (the generator draws it from `subject_cases` alone)
    assert not set(LATERAL_FINDINGS) & set(current.findings)
    for finding in LATERAL_FINDINGS:
        case = sample_lateral(frozenset({finding}), np.random.default_rng(7))
        with_it = np.asarray(render_lateral(case, 112), dtype=np.float32)
        without = np.asarray(render_lateral(dataclasses.replace(case, findings=frozenset()), 112), dtype=np.float32)
        diff = np.abs(with_it - without).reshape(7, 16, 7, 16).mean(axis=(1, 3))
        assert diff.max() >= 8.0, finding  # clearly drawn on the lateral view
        slot = lateral_slot(case, 112, 7).split(" ")
        cells = [i for i, w in enumerate(slot) if w == LATERAL_SLOT_WORDS[finding]]
        assert cells and int(np.argmax(diff)) in cells
    assert np.array_equal(frontal, np.asarray(render(current, 112)))


def test_generated_frontals_do_not_depend_on_the_lateral_findings(world):
    labels = json.loads((world / "train" / study_world.LABELS_FILE).read_text())
    with_lateral = [k for k, v in labels.items() if v["lateral"]]
    assert with_lateral and len(with_lateral) < len(labels)
    for study in with_lateral[:3]:
        i = int(study.split("_")[1]) - 1
        current, prior = study_world.subject_cases(labels[study]["changes"], [SEED, 15, 0, 1, i])
        stored = (world / "train" / "image" / f"{study}_frontal.png").read_bytes()
        import io
        redrawn = io.BytesIO()
        render(current, 112).save(redrawn, format="PNG", compress_level=6)
        assert redrawn.getvalue() == stored  # drawn from the frontal case alone


def test_changes_labels_slots_and_text_agree(world):
    for split, n in (("train", N_TRAIN), ("val", 4), ("test", 8)):
        labels = json.loads((world / split / study_world.LABELS_FILE).read_text())
        slots = json.loads((world / split / study_world.SLOTS_FILE).read_text())
        rows = [json.loads(x) for x in (world / split / study_world.STUDIES_FILE).read_text().splitlines()]
        assert len(labels) == n and len(rows) == 2 * n
        assert [r["study_id"] for r in rows[:n]] == sorted(labels)  # current studies first
        for row in rows[:n]:
            label = labels[row["study_id"]]
            changes = label["changes"]
            assert label["current"] == sorted(f for f, c in changes.items() if c in ("new", "unchanged"))
            assert label["prior"] == sorted(f for f, c in changes.items() if c in ("resolved", "unchanged"))
            if label["prior_shown"]:
                assert study_world.read_study_text(row["summary"]) == (changes, frozenset(label["lateral"]))
                assert row["prior_study_id"] == f"{row['study_id']}_prior"
            else:  # recorded without its prior: the current findings, no comparison
                assert study_world.read_study_text(row["summary"]) == (
                    {f: study_world.PRESENT if f in label["current"] else "absent" for f in FINDINGS},
                    frozenset(label["lateral"]))
                assert row["prior_study_id"] is None
            assert [i["view"] for i in row["images"]] == ["PA", "LATERAL"]
            slot = slots[row["study_id"]]
            for role, findings in (("frontal", label["current"]), ("prior", label["prior"])):
                assert {w for w in slot[role].split(" ")} - {"o"} == {SLOT_WORDS[f] for f in findings}, role
            assert set(slot["lateral"].split(" ")) - {"o"} == {LATERAL_SLOT_WORDS[f] for f in label["lateral"]}
        assert all(r["prior_study_id"] is None for r in rows[n:])


def _groups(world, split):
    """The split's labels: all, those with their prior, those recorded without it."""
    labels = list(json.loads((world / split / study_world.LABELS_FILE).read_text()).values())
    return {"all": labels, "prior": [v for v in labels if v["prior_shown"]],
            "no prior": [v for v in labels if not v["prior_shown"]]}


def test_changes_are_balanced_so_a_reader_without_the_prior_is_at_chance(world):
    groups = _groups(world, "test")
    assert groups["all"] == groups["prior"]  # the held-out split: every study with its prior
    for split, group in (("test", "all"), ("train", "prior"), ("train", "no prior")):
        labels = _groups(world, split)[group]
        for finding in FINDINGS:
            counts = {c: sum(v["changes"][finding] == c for v in labels) for c in study_world.CHANGES}
            assert counts == {c: len(labels) // 4 for c in study_world.CHANGES}, (split, group, finding)
        texts = [study_world.study_text(v["changes"], frozenset(v["lateral"])) for v in labels]
        perfect = study_scores(texts, labels)
        assert perfect["change"]["accuracy"] == 1.0 and perfect["lateral"]["macro_f1"] == 1.0
        assert perfect["current"]["accuracy"] == 1.0
        # a reader who sees the current study exactly but not the prior: present -> "new", absent -> nothing
        blind = [study_world.study_text({f: ("new" if f in v["current"] else "absent") for f in FINDINGS},
                                        frozenset(v["lateral"])) for v in labels]
        assert study_scores(blind, labels)["change"]["accuracy"] == study_world.CHANCE
    labels = _groups(world, "train")["all"]
    for finding in LATERAL_FINDINGS:
        assert sum(finding in v["lateral"] for v in labels) == round(study_world.LATERAL_PREVALENCE * N_TRAIN)
    no_lateral = study_scores([study_world.study_text(v["changes"], frozenset()) for v in labels], labels)
    assert no_lateral["lateral"]["macro_f1"] == 0.0 and no_lateral["change"]["accuracy"] == 1.0


def test_a_declared_fraction_of_training_subjects_has_no_prior_and_the_test_split_is_as_without_it(world, tmp_path):
    for split, n in (("train", N_TRAIN), ("val", 4), ("test", 8)):
        groups = _groups(world, split)
        expected = round(study_world.NO_PRIOR_FRACTION * n) if split in study_world.NO_PRIOR_SPLITS else 0
        assert len(groups["no prior"]) == expected, split
    assert 0 < len(_groups(world, "train")["no prior"]) < N_TRAIN
    # the present findings of the subjects without a prior are balanced too (half of each present)
    for finding in FINDINGS:
        assert sum(finding in v["current"] for v in _groups(world, "train")["no prior"]) == N_TRAIN * 0.25 / 2
    study_world.generate_studies(tmp_path / "none", num_train=N_TRAIN, num_val=4, num_test=8, seed=SEED,
                                 no_prior_fraction=0.0)
    none, ours = _hashes(tmp_path / "none"), _hashes(world)
    assert {k: v for k, v in none.items() if k.startswith("test/")} == {k: v for k, v in ours.items() if k.startswith("test/")}
    assert none["train/" + study_world.STUDIES_FILE] != ours["train/" + study_world.STUDIES_FILE]
    assert not any(v["prior_shown"] is False for v in json.loads((tmp_path / "none" / "train" / study_world.LABELS_FILE).read_text()).values())


def test_comparison_free_texts_state_no_change():
    import itertools

    subsets = [frozenset(c) for k in range(len(FINDINGS) + 1) for c in itertools.combinations(FINDINGS, k)]
    laterals = [frozenset(c) for k in range(3) for c in itertools.combinations(LATERAL_FINDINGS, k)]
    for findings, lateral in itertools.product(subsets, laterals):
        text = study_world.finding_text(findings, lateral)
        assert not CHANGE_WORDS.search(text), text
        assert study_world.read_study_text(text) == (
            {f: study_world.PRESENT if f in findings else "absent" for f in FINDINGS}, lateral)
    with pytest.raises(ValueError, match="unknown findings"):
        study_world.finding_text(frozenset({"larger"}), frozenset())


def test_comparison_free_texts_in_the_files_state_no_change(world):
    for split in ("train", "val", "test"):
        labels = json.loads((world / split / study_world.LABELS_FILE).read_text())
        rows = [json.loads(x) for x in (world / split / study_world.STUDIES_FILE).read_text().splitlines()]
        free = [r for r in rows if r["study_id"] not in labels or not labels[r["study_id"]]["prior_shown"]]
        assert len(free) == len(rows) - sum(v["prior_shown"] for v in labels.values())  # priors + those without
        for row in free:
            assert not CHANGE_WORDS.search(row["summary"]), row["summary"]
        with_prior = [r for r in rows if r["study_id"] in labels and labels[r["study_id"]]["prior_shown"]]
        assert any(CHANGE_WORDS.search(r["summary"]) for r in with_prior)  # the pattern does see change words


def test_without_the_prior_the_exact_comparison_free_reader_scores_chance_and_invented_comparisons_count(world):
    labels = _groups(world, "test")["all"]
    exact = study_scores([study_world.finding_text(frozenset(v["current"]), frozenset(v["lateral"])) for v in labels],
                         labels)
    assert exact["change"]["accuracy"] == study_world.CHANCE
    assert exact["change"]["by_change"] == {"absent": 1.0, "new": 0.5, "resolved": 0.0, "unchanged": 0.5}
    assert exact["change"]["comparisons"] == 0 and exact["change"]["studies_with_comparison"] == 0
    assert exact["current"]["accuracy"] == 1.0 and exact["lateral"]["macro_f1"] == 1.0
    # the old no-prior failure: every present finding "has resolved" -> scored as stated, below chance
    resolved = study_scores([study_world.study_text({f: ("resolved" if f in v["current"] else "absent") for f in FINDINGS},
                                                    frozenset(v["lateral"])) for v in labels], labels)
    present_pairs = sum(len(v["current"]) for v in labels)
    assert resolved["change"]["comparisons"] == present_pairs > 0
    assert resolved["change"]["accuracy"] == 0.25 and resolved["current"]["accuracy"] == 0.5
    # invented comparisons that happen to be right are scored as stated too (1.0), so none is ignored
    lucky = study_scores([study_world.study_text(v["changes"], frozenset(v["lateral"])) for v in labels], labels)
    assert lucky["change"]["accuracy"] == 1.0 and lucky["change"]["comparisons"] == sum(
        c != "absent" for v in labels for c in v["changes"].values())
    # a comparison-free reader that gets every current finding wrong scores 0 on both
    wrong = study_scores([study_world.finding_text(frozenset(FINDINGS) - frozenset(v["current"]), frozenset())
                          for v in labels], labels)
    assert wrong["current"]["accuracy"] == 0.0 and wrong["change"]["accuracy"] == 0.0


def test_the_study_reader_and_dataset_take_the_file_as_written(world):
    from xraygpt.data.study_dataset import build_study_dataset
    from xraygpt.data.studies import read_studies

    studies = read_studies(world / "test" / study_world.STUDIES_FILE, verify_images=True)
    assert len(studies.records) == 16 and not studies.dropped
    assert set(studies.problems) == {"no indication", "no impression"}  # no prior nulled, no image missing
    assert sum(r.prior_study_id is not None for r in studies.records) == 8
    dataset = build_study_dataset("s", str(world / "test"), lambda image, rng: __import__("torch").zeros(3, 4, 4),
                                  str, "studies", None, None, "prompts/study_compare_{target}.txt", "summary", 2,
                                  True, False, False, 8, True, 50_000_000, "en")
    sample = dataset.get(0, random.Random(0))
    assert sample["views"] == ["PA", "LATERAL", "prior PA"] and sample["pixel_values"].shape[0] == 3
    assert sample["instruction"].startswith("Frontal (PA): <Img><ImageHere></Img> Lateral: <Img><ImageHere></Img> "
                                            "Prior frontal (PA): <Img><ImageHere></Img>")
    assert sample["caption"] == json.loads((world / "test" / study_world.STUDIES_FILE).read_text().splitlines()[0])["summary"]
    assert len(dataset) == 8


def test_read_study_text_reads_generated_wording():
    changes, lateral = study_world.read_study_text(
        "The pleural effusion is new. cardiomegaly has resolved; the pneumothorax is unchanged. "
        "Lateral view: no retrocardiac nodule. Small effusion in the posterior costophrenic recess.")
    assert changes == {"cardiomegaly": "resolved", "pleural_effusion": "new", "pneumothorax": "unchanged",
                       "nodule": "absent"}
    assert lateral == frozenset({"posterior_effusion"})
    assert study_world.read_study_text("Cardiomegaly. The pulmonary nodule. No pneumothorax.")[0] == {
        "cardiomegaly": study_world.PRESENT, "pleural_effusion": "absent", "pneumothorax": "absent",
        "nodule": study_world.PRESENT}
    # a finding's first statement counts: "present" then "new" stays present (half credit at most)
    assert study_world.read_study_text("There is cardiomegaly. Cardiomegaly is new.")[0]["cardiomegaly"] == "present"


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="split sizes"):
        study_world.generate_studies(tmp_path, num_train=-1)
    with pytest.raises(ValueError, match="multiple of the slot grid"):
        study_world.generate_studies(tmp_path, num_train=2, image_size=100)
    with pytest.raises(ValueError, match="without a prior"):
        study_world.generate_studies(tmp_path, num_train=2, no_prior_fraction=1.5)
    with pytest.raises(ValueError, match="unknown lateral findings"):
        sample_lateral(frozenset({"nodule"}), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown findings or changes"):
        study_world.study_text({"cardiomegaly": "larger"}, frozenset())
    with pytest.raises(ValueError, match="at least two"):
        derangement(1, 0)


def test_derangement_and_verdict():
    other = derangement(50, 3)
    assert sorted(other) == list(range(50)) and all(o != i for i, o in enumerate(other))
    good = {"image": {"lateral": {"macro_f1": 0.95}, "change": {"accuracy": 0.93}},
            "frontal_only": {"lateral": {"macro_f1": 0.10}, "change": {"accuracy": 0.9}},
            "no_prior": {"lateral": {"macro_f1": 0.9}, "change": {"accuracy": 0.52}},
            "shuffled_prior": {"lateral": {"macro_f1": 0.9}, "change": {"accuracy": 0.48}}, "chance": 0.5}
    assert verdict(good) == []
    bad = json.loads(json.dumps(good))
    bad["frontal_only"]["lateral"]["macro_f1"] = 0.7
    bad["shuffled_prior"]["change"]["accuracy"] = 0.8
    missed = verdict(bad)
    assert len(missed) == 2 and "above frontal-only" in missed[0] and "shuffled_prior" in missed[1]
    below = json.loads(json.dumps(good))
    below["no_prior"]["change"]["accuracy"] = 0.26  # errs below chance without the prior: not a guess
    assert verdict(below) == ["no_prior change accuracy 0.260 < 0.40"]
    below["shuffled_prior"]["change"]["accuracy"] = 0.3  # the floor is for the no-prior mode only
    assert verdict(below) == ["no_prior change accuracy 0.260 < 0.40"]


def test_stage0_shifts_the_filler_over_exactly_the_words_the_slots_hold(world):
    """tiny_study_stage0.yaml's `slot_words` (the shared filler offset's words) are the words this
    world writes in its slots, frontal and lateral alike: no finding left out of the offset, none extra."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "train_configs" / "tiny_study_stage0.yaml")
    written = set()
    for split in ("train", "val", "test"):
        for slot in json.loads((world / split / study_world.SLOTS_FILE).read_text()).values():
            written |= {w for text in slot.values() for w in text.split(" ")}
    assert cfg.model.slot_filler_shift > 0 and cfg.model.slot_filler_noise > 0
    assert set(cfg.model.slot_words) == written - {"o"} == set(SLOT_WORDS.values()) | set(LATERAL_SLOT_WORDS.values())


def test_stage0_conversations_leave_out_the_lateral_or_the_prior_slot_when_asked(world):
    """`study-stage0-check` asks the stage-0 LLM with the lateral or the prior slot left out: the other
    slots keep their words and order, the question and the answer stay the study's."""
    from xraygpt.embedded.study_proof import stage0_conversations

    split = world / "test"
    slots = json.loads((split / study_world.SLOTS_FILE).read_text())
    questions = ["Describe the study."]
    full = stage0_conversations(split, questions, SEED)
    frontal = stage0_conversations(split, questions, SEED, lateral=False)
    alone = stage0_conversations(split, questions, SEED, prior=False)
    assert [c["id"] for c in full] == [c["id"] for c in frontal] == [c["id"] for c in alone] == [
        f"{world.name}/{k}" for k in sorted(slots)]
    for a, f, n in zip(full, frontal, alone):
        s = slots[a["id"].split("/", 1)[1]]
        cells = [re.findall(r"<Img>(.*?)</Img>", c["turns"][0]["content"]) for c in (a, f, n)]
        assert cells == [[s["frontal"], s["lateral"], s["prior"]], [s["frontal"], s["prior"]], [s["frontal"], s["lateral"]]]
        assert "Lateral" not in f["turns"][0]["content"] and "Prior" not in n["turns"][0]["content"]
        assert all(c["turns"][0]["content"].endswith("Describe the study.") for c in (a, f, n))
        assert a["turns"][1] == f["turns"][1] == n["turns"][1]


def test_the_study_encoder_learns_both_views_from_the_pool(world, tiny_assets, tmp_path):
    """`encoder_examples` gives every current frontal, lateral and prior frontal of a split with its findings
    and slot cells, a lateral finding as the frontal finding of its slot word; `continue_tiny_encoder`
    continues the prepared encoder's pretraining on them and writes a MedCLIP-format folder that loads,
    leaving the prepared one as it was."""
    import torch

    from xraygpt.embedded.assets import continue_tiny_encoder
    from xraygpt.embedded.slots import FILLER
    from xraygpt.embedded.study_proof import encoder_examples
    from xraygpt.models.medclip_encoder import load_medclip_vision_encoder, read_state_dict

    split = world / "train"
    labels = json.loads((split / study_world.LABELS_FILE).read_text())
    slots = json.loads((split / study_world.SLOTS_FILE).read_text())
    source = tiny_assets["encoder"]
    before = read_state_dict(source / "pytorch_model.bin")
    encoder = load_medclip_vision_encoder(str(source), str(tiny_assets["swin_config"]), "patch", 64)
    images, targets, cells = encoder_examples(split, encoder.preprocessing)
    assert images.shape == (3 * N_TRAIN, 3, 112, 112) and targets.shape == (3 * N_TRAIN, len(FINDINGS))
    assert cells.shape == (3 * N_TRAIN, 49)
    words = [FILLER] + [SLOT_WORDS[f] for f in FINDINGS]
    lateral_rows = 0
    for i, (study, label) in enumerate(labels.items()):
        frontal, lateral, prior = 3 * i, 3 * i + 1, 3 * i + 2
        assert [words[c] for c in cells[frontal]] == slots[study]["frontal"].split(" ")
        assert [words[c] for c in cells[lateral]] == slots[study]["lateral"].split(" ")
        assert [words[c] for c in cells[prior]] == slots[study]["prior"].split(" ")
        assert {FINDINGS[j] for j in targets[frontal].nonzero().flatten().tolist()} == set(label["current"])
        assert {FINDINGS[j] for j in targets[prior].nonzero().flatten().tolist()} == set(label["prior"])
        shown = {FINDINGS[j] for j in targets[lateral].nonzero().flatten().tolist()}
        expected = {f for f in FINDINGS if SLOT_WORDS[f] in {LATERAL_SLOT_WORDS[x] for x in label["lateral"]}}
        assert shown == expected
        lateral_rows += bool(label["lateral"])
    assert 0 < lateral_rows < N_TRAIN  # both kinds of lateral view are in the examples

    out = continue_tiny_encoder(source, tmp_path / "study_encoder",
                                lambda preprocessing: encoder_examples(split, preprocessing), steps=2, seed=0)
    assert (out / "swin_config.json").read_text() == (source / "swin_config.json").read_text()
    after = read_state_dict(out / "pytorch_model.bin")
    vision = [k for k in before if k.startswith("vision_model.")]
    assert vision and set(vision) <= set(after)
    assert any(not torch.equal(before[k], after[k]) for k in vision), "the pretraining must change the weights"
    assert all(torch.equal(before[k], v) for k, v in read_state_dict(source / "pytorch_model.bin").items())
    load_medclip_vision_encoder(str(out), str(out / "swin_config.json"), "patch", 64)
