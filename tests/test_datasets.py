import json
import logging
import random

import pytest
import torch

from conftest import SHARED_OPENI
from xraygpt.data.datasets import DatasetError, MixedDataset, build_mimic, build_openi
from xraygpt.data.sampler import ResumableSampler
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval


def _build(root, builder=build_mimic, **kw):
    return builder(str(root), MedCLIPImageEval(64), CaptionProcessor(), **kw)


def _layout(tmp_path, annotations, images=()):
    (tmp_path / "image").mkdir(parents=True, exist_ok=True)
    (tmp_path / "filter_cap.json").write_text(json.dumps({"annotations": annotations}))
    from PIL import Image

    for name in images:
        Image.new("L", (40, 30), 100).save(tmp_path / "image" / name)
    return tmp_path


def test_missing_images_and_bad_entries_are_counted_and_skipped(tmp_path, caplog, repo):
    anns = [{"image_id": "1_1", "caption": "a"}, {"image_id": "2_1", "caption": "b"},
            {"image_id": "3_1", "caption": " "}, {"caption": "no id"}, {"image_id": "4_1", "caption": "c"}]
    root = _layout(tmp_path, anns, ["1_1.png", "4_1.jpg", "3_1.png"])
    with caplog.at_level(logging.WARNING):
        ds = _build(root, prompt_path=str(repo / "prompts" / "alignment.txt"))
    assert [s[0] for s in ds.samples] == ["1_1", "4_1"]
    assert "skipped 1 of 5 annotations (image missing), first: 2_1" in caplog.text
    assert "(empty caption), first: 3_1" in caplog.text and "(malformed entry), first: #3" in caplog.text
    item = ds.get(1, random.Random(0))
    assert item["image_id"] == "4_1" and item["pixel_values"].shape == (3, 64, 64)
    assert "<ImageHere>" in item["instruction"]


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ('{"images": []}', "no 'annotations' list"),
])
def test_malformed_annotation_files(tmp_path, content, match):
    (tmp_path / "image").mkdir()
    (tmp_path / "filter_cap.json").write_text(content)
    with pytest.raises(DatasetError, match=match):
        _build(tmp_path)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        _build(tmp_path / "nowhere")


def test_mixed_dataset_keys_are_deterministic(tiny_assets):
    ds = _build(tiny_assets["train"], prompt_path=str(tiny_assets["prompts"]))
    mixed = MixedDataset([ds, ds], seed=1)
    assert len(mixed) == 2 * len(ds)
    a, b = mixed[5], mixed[5]
    assert a["instruction"] == b["instruction"] and torch.equal(a["pixel_values"], b["pixel_values"])
    assert mixed[len(mixed) + 5]["image_id"] == a["image_id"]  # next pass, same sample


def test_sampler_resume_and_rank_sharding():
    full = ResumableSampler(10, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(25)]
    resumed = iter(ResumableSampler(10, seed=3, start=13))
    assert [next(resumed) for _ in range(12)] == first[13:]
    assert sorted(k % 10 for k in first[:10]) == list(range(10))
    ranks = [iter(ResumableSampler(10, rank=r, world_size=2, seed=3)) for r in range(2)]
    shards = [[next(it) for _ in range(5)] for it in ranks]
    assert sorted(shards[0] + shards[1]) == sorted(first[:10])
    # rank r takes every W-th element of the global order
    assert shards[0] == first[0:10:2] and shards[1] == first[1:10:2]


@pytest.mark.skipif(not SHARED_OPENI.is_dir(), reason="../shared/data/openi-sample is not present")
def test_shared_openi_sample_loads_through_the_openi_builder(caplog, repo):
    with caplog.at_level(logging.WARNING):
        ds = _build(SHARED_OPENI, build_openi, prompt_path=str(repo / "prompts" / "alignment.txt"))
    total = len(json.loads((SHARED_OPENI / "filter_cap.json").read_text())["annotations"])
    assert len(ds) == 6
    assert f"skipped {total - 6} of {total} annotations (image missing)" in caplog.text
    item = ds.get(0, random.Random(0))
    assert item["pixel_values"].shape == (3, 64, 64) and len(item["caption"].split()) >= 10
