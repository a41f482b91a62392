"""Tests for the synthetic chest X-ray world of the embedded default (xraygpt.embedded: drawing, summaries,
their labeler, the dataset writer and its command line)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xraygpt.embedded.__main__ import main
from xraygpt.embedded.anatomy import FINDINGS
from xraygpt.embedded.dataset import generate_dataset
from xraygpt.embedded.labeler import findings_in_text
from xraygpt.embedded.render import draw_radiograph
from xraygpt.embedded.scores import finding_scores
from xraygpt.embedded.summaries import write_summary

ALL_SUBSETS = [frozenset(c) for r in range(len(FINDINGS) + 1) for c in itertools.combinations(FINDINGS, r)]
LOW = 112  # findings must survive downscaling to this size


def _small(findings: frozenset[str] | set[str], seed: int, size: int = 224) -> np.ndarray:
    """Draw at ``size`` and downscale to LOW px; float32 array in [0, 255]."""
    img = draw_radiograph(frozenset(findings), np.random.default_rng(seed), size)
    return np.asarray(img.resize((LOW, LOW), Image.BILINEAR), dtype=np.float32)


def _normalised(a: np.ndarray) -> np.ndarray:
    """Per-image intensity normalisation (5th..95th percentile -> 0..1)."""
    lo, hi = np.percentile(a, [5, 95])
    return (a - lo) / (hi - lo)


def _region(a: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Pixels of ``a`` inside a box given in normalised image coordinates ([-1, 1], y down)."""
    n = a.shape[0]

    def to_px(v: float) -> int:
        return int(round((v + 1.0) / 2.0 * n))

    return a[to_px(y0) : to_px(y1), to_px(x0) : to_px(x1)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------
# Dataset layout, formats, determinism
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("synthetic")
    counts = generate_dataset(root, num_train=24, num_val=6, num_test=8, seed=3, image_size=96)
    return root, counts


def test_layout_and_json_formats(small_dataset: tuple[Path, dict[str, int]]) -> None:
    root, counts = small_dataset
    assert counts == {"train": 24, "val": 6, "test": 8}
    for split, n in counts.items():
        cap = json.loads((root / split / "filter_cap.json").read_text())
        assert list(cap) == ["annotations"]
        anns = cap["annotations"]
        assert len(anns) == n
        labels = json.loads((root / split / "labels.json").read_text())
        assert len(labels) == n
        ids = [a["image_id"] for a in anns]
        assert len(set(ids)) == n
        assert set(labels) == set(ids)
        for i, ann in enumerate(anns):
            assert set(ann) == {"image_id", "caption"}
            assert ann["image_id"] == f"{split}_{i + 1:06d}"
            assert isinstance(ann["caption"], str) and ann["caption"].strip()
            found = labels[ann["image_id"]]
            assert found == sorted(found) and set(found) <= set(FINDINGS)
            # The caption is the ground truth in words.
            assert findings_in_text(ann["caption"]) == frozenset(found), ann["caption"]
            with Image.open(root / split / "image" / f"{ann['image_id']}.png") as img:
                assert img.format == "PNG"
                assert img.mode == "L"
                assert img.size == (96, 96)
        pngs = sorted(p.stem for p in (root / split / "image").glob("*.png"))
        assert pngs == sorted(ids)
        # Only the expected files, no temporary leftovers from the atomic writes.
        assert sorted(p.name for p in (root / split).iterdir()) == ["filter_cap.json", "image", "labels.json"]


def test_splits_are_disjoint(small_dataset: tuple[Path, dict[str, int]]) -> None:
    root, counts = small_dataset
    ids: dict[str, set[str]] = {}
    digests: dict[str, set[str]] = {}
    for split in counts:
        anns = json.loads((root / split / "filter_cap.json").read_text())["annotations"]
        ids[split] = {a["image_id"] for a in anns}
        digests[split] = {
            hashlib.sha256((root / split / "image" / f"{i}.png").read_bytes()).hexdigest() for i in ids[split]
        }
        assert len(digests[split]) == counts[split]  # no two identical images within a split
    for a, b in itertools.combinations(counts, 2):
        assert not ids[a] & ids[b]
        assert not digests[a] & digests[b]


def test_same_seed_gives_identical_files_and_different_seeds_differ(tmp_path: Path) -> None:
    kwargs = dict(num_train=6, num_val=2, num_test=2, image_size=64)
    generate_dataset(tmp_path / "a", seed=11, **kwargs)
    generate_dataset(tmp_path / "b", seed=11, **kwargs)
    generate_dataset(tmp_path / "c", seed=12, **kwargs)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert set(a) == set(c)
    assert a["train/filter_cap.json"] != c["train/filter_cap.json"]
    differing = [k for k in a if k.endswith(".png") and a[k] != c[k]]
    assert len(differing) == sum(k.endswith(".png") for k in a)


def test_regenerating_into_same_root_is_stable(tmp_path: Path) -> None:
    generate_dataset(tmp_path, num_train=4, num_val=1, num_test=1, seed=5, image_size=48)
    first = _files(tmp_path)
    generate_dataset(tmp_path, num_train=4, num_val=1, num_test=1, seed=5, image_size=48)
    assert _files(tmp_path) == first


def test_draw_radiograph_is_deterministic_and_varied() -> None:
    a = np.asarray(draw_radiograph(frozenset(), np.random.default_rng(1)))
    b = np.asarray(draw_radiograph(frozenset(), np.random.default_rng(1)))
    c = np.asarray(draw_radiograph(frozenset(), np.random.default_rng(2)))
    assert a.shape == (224, 224) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 2.0
    assert 20 < a.mean() < 235 and a.std() > 20  # not blank, has structure
    img = draw_radiograph(frozenset({"nodule"}), np.random.default_rng(0), size=112)
    assert img.mode == "L" and img.size == (112, 112)


def test_invalid_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        draw_radiograph(frozenset({"fracture"}), np.random.default_rng(0))
    with pytest.raises(ValueError):
        write_summary(frozenset({"fracture"}), np.random.default_rng(0))
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, num_train=1, num_val=0, num_test=0, prevalence=1.5)


def test_balance_of_findings(tmp_path: Path) -> None:
    n, p = 400, 0.35
    generate_dataset(tmp_path, num_train=n, num_val=0, num_test=0, seed=0, image_size=32, prevalence=p)
    labels = json.loads((tmp_path / "train" / "labels.json").read_text())
    assert len(labels) == n
    counts = {f: sum(f in v for v in labels.values()) for f in FINDINGS}
    sd = (n * p * (1 - p)) ** 0.5
    for f, k in counts.items():
        assert abs(k - n * p) <= 3 * sd, counts
    assert max(counts.values()) - min(counts.values()) <= 0.1 * n * p, counts
    # Findings are independent: normal studies and full combinations both occur.
    normal = sum(not v for v in labels.values())
    assert abs(normal - n * (1 - p) ** 4) <= 4 * (n * (1 - p) ** 4) ** 0.5, normal
    assert sum(len(v) >= 2 for v in labels.values()) > 0.1 * n
    for split in ("val", "test"):
        assert json.loads((tmp_path / split / "filter_cap.json").read_text()) == {"annotations": []}


def test_cli_main(tmp_path: Path) -> None:
    root = tmp_path / "cli"
    rc = main(["data", "--root", str(root), "--num-train", "3", "--num-val", "1", "--num-test", "2",
               "--seed", "4", "--image-size", "40"])
    assert rc == 0
    assert len(list((root / "train" / "image").glob("*.png"))) == 3
    assert len(json.loads((root / "test" / "filter_cap.json").read_text())["annotations"]) == 2


# --------------------------------------------------------------------------------------
# Summaries and their inverse
# --------------------------------------------------------------------------------------


def test_write_summary_round_trip_all_subsets() -> None:
    for findings in ALL_SUBSETS:
        for seed in range(150):
            text = write_summary(findings, np.random.default_rng(seed))
            assert findings_in_text(text) == findings, (sorted(findings), text)
            sentences = [s for s in re.split(r"(?<=\.)\s+", text) if s]
            assert 2 <= len(sentences) <= 5, text
            assert all(s[0].isupper() and s.endswith(".") for s in sentences), text


def test_dataset_captions_round_trip_all_subsets(tmp_path: Path) -> None:
    # Captions with side/zone words (as written into the dataset) over many draws.
    generate_dataset(tmp_path, num_train=300, num_val=0, num_test=0, seed=9, image_size=32, prevalence=0.5)
    labels = json.loads((tmp_path / "train" / "labels.json").read_text())
    anns = json.loads((tmp_path / "train" / "filter_cap.json").read_text())["annotations"]
    seen = set()
    for ann in anns:
        truth = frozenset(labels[ann["image_id"]])
        seen.add(truth)
        assert findings_in_text(ann["caption"]) == truth, ann["caption"]
    assert len(seen) == 16  # every combination occurs


def test_normal_summary_is_normal() -> None:
    for seed in range(50):
        text = write_summary(frozenset(), np.random.default_rng(seed)).lower()
        assert findings_in_text(text) == frozenset()
        assert any(w in text for w in ("normal", "clear", "no acute")), text


def test_summary_varies_with_rng() -> None:
    texts = {write_summary(frozenset({"pleural_effusion"}), np.random.default_rng(s)) for s in range(40)}
    assert len(texts) >= 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No pleural effusion.", set()),
        ("There is no pneumothorax.", set()),
        ("Negative for pneumothorax.", set()),
        ("The lungs are free of nodules.", set()),
        ("Without evidence of cardiomegaly.", set()),
        ("No pleural effusion, pneumothorax, or nodule.", set()),
        ("Heart size is normal. The lungs are clear.", set()),
        ("The heart is not enlarged.", set()),
        ("Pneumothorax is not seen.", set()),
        ("Small pericardial effusion.", set()),
        ("CARDIOMEGALY.", {"cardiomegaly"}),
        ("Enlarged cardiac silhouette.", {"cardiomegaly"}),
        ("The heart is mildly enlarged.", {"cardiomegaly"}),
        ("Small left effusion.", {"pleural_effusion"}),
        ("Blunting of the right costophrenic angle.", {"pleural_effusion"}),
        ("Nodular opacity in the right upper lobe.", {"nodule"}),
        ("A 1.5 cm nodule in the left lung", {"nodule"}),
        ("Tiny right apical pneumothorax", {"pneumothorax"}),
        ("Cardiomegaly without pleural effusion.", {"cardiomegaly"}),
        ("No effusion, but there is a small right pneumothorax.", {"pneumothorax"}),
        ("No pneumothorax. Left pleural effusion.", {"pleural_effusion"}),
        ("no nodule; large pneumothorax on the left", {"pneumothorax"}),
    ],
)
def test_findings_in_text_free_text(text: str, expected: set[str]) -> None:
    assert findings_in_text(text) == frozenset(expected)


# --------------------------------------------------------------------------------------
# The findings are visible (after downscaling to 112 px)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("finding", FINDINGS)
def test_finding_changes_image_more_than_normal_variation(finding: str) -> None:
    """Same base drawing with vs without the finding: a clear, localised change.

    The change, measured on the pixels it affects, must be much larger than the difference
    between two different normal images on those same pixels.
    """
    strengths, ratios = [], []
    for seed in range(8):
        without = _small(frozenset(), seed)
        with_f = _small({finding}, seed)
        other_normal = _small(frozenset(), 500 + seed)
        diff = np.abs(with_f - without)
        changed = diff > 20.0
        # A nodule of radius >= 3 % of the image covers >= ~30 px at 112 px.
        assert changed.sum() >= 25, (finding, seed, int(changed.sum()))
        effect = diff[changed].mean()
        baseline = np.abs(other_normal - without)[changed].mean()
        strengths.append(effect)
        ratios.append(effect / max(baseline, 1.0))
    assert np.median(strengths) > 35.0, strengths
    assert np.median(ratios) > 1.5, ratios


@pytest.mark.parametrize(
    ("finding", "unchanged_rows"),
    [
        ("cardiomegaly", slice(0, 80)),  # lung apices and above
        ("pleural_effusion", slice(0, 80)),
        ("pneumothorax", slice(200, 224)),  # below the diaphragm
    ],
)
def test_findings_are_local(finding: str, unchanged_rows: slice) -> None:
    """With the same rng state, a finding only changes its own part of the image."""
    for seed in range(5):
        base = np.asarray(draw_radiograph(frozenset(), np.random.default_rng(seed)))
        with_f = np.asarray(draw_radiograph(frozenset({finding}), np.random.default_rng(seed)))
        assert np.array_equal(base[unchanged_rows], with_f[unchanged_rows])
        assert not np.array_equal(base, with_f)


def _cardiomegaly_feature(a: np.ndarray) -> float:
    # Brightness just left (patient's) of a normal heart border, at mid-heart height.
    return float(_region(a, 0.28, 0.62, 0.12, 0.32).mean())


def _effusion_feature(a: np.ndarray) -> float:
    # Brightest of the two lateral lung bases (just above the costophrenic angles).
    return max(float(_region(a, 0.45, 0.68, 0.30, 0.44).mean()), float(_region(a, -0.68, -0.45, 0.30, 0.44).mean()))


def _pneumothorax_feature(a: np.ndarray) -> float:
    # Darkest of the two lung apices (negated so that "larger = finding present").
    return -min(float(_region(a, 0.30, 0.55, -0.55, -0.40).mean()), float(_region(a, -0.55, -0.30, -0.55, -0.40).mean()))


@pytest.mark.parametrize(
    ("finding", "feature"),
    [
        ("cardiomegaly", _cardiomegaly_feature),
        ("pleural_effusion", _effusion_feature),
        ("pneumothorax", _pneumothorax_feature),
    ],
)
def test_finding_is_detectable_from_simple_image_statistics(finding: str, feature) -> None:
    """Independent images (different seeds) with vs without the finding, at 112 px."""
    pos = np.array([feature(_normalised(_small({finding}, 1000 + s))) for s in range(30)])
    neg = np.array([feature(_normalised(_small(frozenset(), 2000 + s))) for s in range(30)])
    pooled = np.sqrt((pos.var() + neg.var()) / 2)
    assert (pos.mean() - neg.mean()) / pooled > 3.0, (pos, neg)
    threshold = (pos.mean() + neg.mean()) / 2
    accuracy = ((pos > threshold).mean() + (neg <= threshold).mean()) / 2
    assert accuracy >= 0.9


def test_nodule_is_a_small_bright_blob_inside_a_lung() -> None:
    for seed in range(10):
        base = _small(frozenset(), seed)
        nod = _small({"nodule"}, seed)
        diff = nod - base
        assert diff.max() > 50.0  # bright
        assert diff.min() > -5.0  # only adds density
        ys, xs = np.nonzero(diff > 20.0)
        # Small: one or two blobs of radius ~4-6 % of the image -> under 3 % of pixels.
        assert 20 <= len(ys) <= 0.03 * LOW * LOW
        # Inside a lung field: lateral to the mediastinum, above the diaphragm.
        xn = (xs + 0.5) / LOW * 2 - 1
        yn = (ys + 0.5) / LOW * 2 - 1
        assert np.all(np.abs(xn) > 0.12) and np.all(np.abs(xn) < 0.8)
        assert np.all(yn > -0.7) and np.all(yn < 0.55)


def test_finding_scores_count_per_finding_and_average_over_findings() -> None:
    predictions = ["There is cardiomegaly. No pleural effusion.", "Normal chest radiograph.",
                   "A right pneumothorax. Cardiomegaly."]
    scores = finding_scores(predictions, [["cardiomegaly"], ["cardiomegaly"], ["pneumothorax"]])
    per = scores["per_finding"]
    assert per["cardiomegaly"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}  # TP 1, FP 1, FN 1
    assert per["pneumothorax"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert per["nodule"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}  # undefined -> 0
    assert scores["macro_f1"] == 0.375 and scores["predicted_positive_rate"] == 0.25
    assert json.loads(json.dumps(scores)) == scores  # plain JSON types
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        finding_scores(predictions[:2], [[]])


def test_slots_mirror_where_each_finding_is_drawn(tmp_path: Path) -> None:
    """slots.json: grid*grid one-word items per image, exactly the image's findings (each at least
    once) and the filler elsewhere; an effusion's cells lie on its side of the image (patient right
    = viewer left); a normal image's slot is all filler."""
    from xraygpt.embedded.anatomy import sample_case
    from xraygpt.embedded.slots import FILLER, SLOT_WORDS

    generate_dataset(tmp_path, num_train=60, num_val=0, num_test=0, seed=7, image_size=112, slot_grid=7)
    labels = json.loads((tmp_path / "train" / "labels.json").read_text())
    slots = json.loads((tmp_path / "train" / "slots.json").read_text())
    assert slots.keys() == labels.keys()
    sides_checked = 0
    for i, (image_id, findings) in enumerate(labels.items()):
        items = slots[image_id].split(" ")
        assert len(items) == 49
        assert set(items) - {FILLER} == {SLOT_WORDS[f] for f in findings}, image_id
        if "pleural_effusion" in findings:
            case = sample_case(frozenset(findings), np.random.default_rng([7, 0, 1, i]))
            columns = [k % 7 for k, w in enumerate(items) if w == "effusion"]
            assert (np.mean(columns) < 3) == (case.effusion_side == "right"), image_id
            sides_checked += 1
    assert sides_checked >= 10
    assert any(not f for f in labels.values())


def test_slot_grid_must_divide_the_image_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a multiple of the slot grid 5"):
        generate_dataset(tmp_path, num_train=2, num_val=0, num_test=0, seed=0, image_size=112, slot_grid=5)


def test_encoder_pretraining_reads_each_tokens_own_finding_from_slots(tmp_path: Path, monkeypatch) -> None:
    """`load_slot_cells` turns slots.json into per-token classes (0 filler, 1 + FINDINGS index), and
    `write_tiny_encoder` pretrains with them when its split has slots.json (blank images: all 0)."""
    from xraygpt.embedded import assets
    from xraygpt.embedded.slots import FILLER, SLOT_WORDS

    generate_dataset(tmp_path / "data", num_train=12, num_val=0, num_test=0, seed=3, image_size=112, slot_grid=7)
    split = tmp_path / "data" / "train"
    cells = assets.load_slot_cells(split)
    slots = json.loads((split / "slots.json").read_text())
    assert cells.shape == (12, 49)
    for row, items in zip(cells.tolist(), slots.values()):
        words = [FILLER] + [SLOT_WORDS[f] for f in FINDINGS]
        assert [words[c] for c in row] == items.split(" ")
    seen = {}

    def fake_pretrain(encoder, images, labels, steps, seed, cells=None):
        seen.update(images=len(images), cells=cells)
        return 1.0

    monkeypatch.setattr(assets, "pretrain_tiny_encoder", fake_pretrain)
    assets.write_tiny_encoder(tmp_path / "enc", seed=0, train_split=split, steps=1)
    assert seen["cells"] is not None and seen["cells"].shape == (seen["images"], 49)
    assert torch.equal(seen["cells"][:12], cells) and not seen["cells"][12:].any()  # blank images: filler
    (split / "slots.json").unlink()
    assets.write_tiny_encoder(tmp_path / "enc2", seed=0, train_split=split, steps=1)
    assert seen["cells"] is None
