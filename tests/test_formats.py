"""Dataset formats read by the builders: XrayGPT filter_cap.json and R2Gen annotation.json."""

import json
import logging

import pytest
from PIL import Image

from xraygpt import builders
from xraygpt.data.datasets import build_openi
from xraygpt.data.formats import DatasetError, read_samples
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval


def _r2gen(root):
    """An IU-X-ray-shaped R2Gen folder: multi-view entries, one single-view entry, bad entries."""
    images = root / "images"
    for folder, n in (("CXR1_1_IM-0001", 2), ("CXR2_IM-0002", 1), ("CXR3_IM-0003", 2), ("CXR4_IM-0004", 2)):
        (images / folder).mkdir(parents=True)
        for k in range(n):
            Image.new("L", (16, 12), 30 * k + 10).save(images / folder / f"{k}.png")
    (images / "CXR4_IM-0004" / "1.png").write_bytes(b"not a png")
    data = {
        "train": [
            {"id": "CXR1_1_IM-0001", "report": "The heart is normal. Lungs clear.",
             "image_path": ["CXR1_1_IM-0001/0.png", "CXR1_1_IM-0001/1.png"], "split": "train"},
            {"id": "CXR2_IM-0002", "report": "Small effusion.", "image_path": ["CXR2_IM-0002/0.png"], "split": "train"},
            {"id": "CXR9_IM-0009", "report": "Gone.", "image_path": ["CXR9_IM-0009/0.png"], "split": "train"},
            {"id": "CXR2_IM-0002", "report": "Again.", "image_path": ["CXR2_IM-0002/0.png"], "split": "train"},
            {"id": "CXR5", "report": "No images listed.", "image_path": [], "split": "train"},
            {"id": "CXR4_IM-0004", "report": "Normal.", "image_path": ["CXR4_IM-0004/0.png", "CXR4_IM-0004/1.png"],
             "split": "train"},
        ],
        "val": [{"id": "CXR3_IM-0003", "report": "Cardiomegaly.", "image_path": ["CXR3_IM-0003/0.png", "CXR3_IM-0003/1.png"],
                 "split": "val"}],
        "test": [],
    }
    (root / "annotation.json").write_text(json.dumps(data))
    return root


def test_r2gen_one_sample_per_image_and_bad_entries(tmp_path):
    root = _r2gen(tmp_path)
    samples, dropped, total = read_samples("r2gen", root, None, None, "train", verify_images=True)
    assert [(s[0], s[1].relative_to(root).as_posix(), s[2]) for s in samples] == [
        ("CXR1_1_IM-0001_1", "images/CXR1_1_IM-0001/0.png", "The heart is normal. Lungs clear."),
        ("CXR1_1_IM-0001_2", "images/CXR1_1_IM-0001/1.png", "The heart is normal. Lungs clear."),
        ("CXR2_IM-0002", "images/CXR2_IM-0002/0.png", "Small effusion."),
        ("CXR4_IM-0004_1", "images/CXR4_IM-0004/0.png", "Normal."),
    ]
    assert dropped == {"malformed entry": ["#4"], "empty caption": [], "duplicate id": ["CXR2_IM-0002"], "unsafe image path": [],
                       "image missing": ["CXR9_IM-0009"], "image unreadable": ["CXR4_IM-0004_2"]}
    assert total == len(samples) + sum(len(ids) for ids in dropped.values())
    with pytest.raises(DatasetError, match=r"has no split 'validate' \(splits: 'train', 'val', 'test'\)"):
        read_samples("r2gen", root, None, None, "validate", verify_images=False)


def test_builder_reads_r2gen_and_build_datasets_uses_eval_split(tmp_path, repo, caplog):
    root = _r2gen(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = build_openi(str(root), MedCLIPImageEval(32), CaptionProcessor(), format="r2gen",
                         prompt_path=str(repo / "prompts" / "alignment.txt"))
    assert len(ds) == 4 and ds[0]["pixel_values"].shape == (3, 32, 32)
    assert "skipped 1 of 8 annotations (duplicate id), first: CXR2_IM-0002" in caplog.text
    section = {"root": str(root), "eval_root": str(root), "format": "r2gen", "split": "train", "eval_split": "val",
               "prompt_path": str(repo / "prompts" / "alignment.txt"),
               "vis_processor": {"train": {"name": "medclip_image_eval", "image_size": 32},
                                 "eval": {"name": "medclip_image_eval", "image_size": 32}},
               "text_processor": {"train": {"name": "caption"}, "eval": {"name": "caption"}}}
    train = builders.build_datasets({"openi": section}, seed=0, split="train")
    held_out = builders.build_datasets({"openi": section}, seed=0, split="eval")
    assert len(train) == 4
    assert [held_out[k]["image_id"] for k in range(len(held_out))] == ["CXR3_IM-0003_1", "CXR3_IM-0003_2"]


def test_xraygpt_duplicate_ids_and_unknown_format(tmp_path, repo, caplog):
    (tmp_path / "image").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "image" / "1_1.png")
    anns = [{"image_id": "1_1", "caption": "first"}, {"image_id": "1_1", "caption": "second"}]
    (tmp_path / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    with caplog.at_level(logging.WARNING):
        ds = build_openi(str(tmp_path), MedCLIPImageEval(8), CaptionProcessor(), prompt_path=str(repo / "prompts" / "alignment.txt"))
    assert [s[2] for s in ds.samples] == ["first"]
    assert "skipped 1 of 2 annotations (duplicate id), first: 1_1" in caplog.text
    with pytest.raises(DatasetError, match="unknown dataset format 'coco'; known: xraygpt, r2gen, webdataset"):
        build_openi(str(tmp_path), MedCLIPImageEval(8), CaptionProcessor(), format="coco")
