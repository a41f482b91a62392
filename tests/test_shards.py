"""webdataset shards: json -> shards -> samples round trips, bad data, rank/worker splits, training."""

import io
import json
import logging
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, SHARED_OPENI, run_torchrun, tiny_config, write_yaml
from xraygpt.data.datasets import build_openi
from xraygpt.data.formats import DatasetError
from xraygpt.data.prepare.to_shards import prepare_shards
from xraygpt.data.shards import ShardDataset
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval

PROMPTS = str(REPO / "prompts" / "alignment.txt")


def _build(root, **kw):
    return build_openi(str(root), MedCLIPImageEval(32), CaptionProcessor(), prompt_path=PROMPTS, **kw)


def _folder(root, n=6):
    """An XrayGPT folder with 8-bit, 16-bit, RGBA and JPEG images; one id holds a dot."""
    rng = np.random.default_rng(0)
    (root / "image").mkdir(parents=True)
    anns = []
    for i in range(n):
        image_id = f"{i}_1" if i else "a.b_1"
        noise = rng.integers(0, 255, (20 + i, 24), dtype=np.uint8)
        kind = i % 4
        if kind == 0:
            Image.fromarray(noise).save(root / "image" / f"{image_id}.png")
        elif kind == 1:
            Image.fromarray(noise.astype(np.uint16) * 200).save(root / "image" / f"{image_id}.png")
        elif kind == 2:
            Image.fromarray(np.dstack([noise] * 3 + [noise[::-1]]), "RGBA").save(root / "image" / f"{image_id}.png")
        else:
            Image.fromarray(noise).convert("RGB").save(root / "image" / f"{image_id}.jpg", quality=90)
        anns.append({"image_id": image_id, "caption": f"Summary {i}: the heart is normal, café ✓."})
    (root / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    return root


def _shards(src, out, maxcount=2, **kw):
    stats = prepare_shards(kw.pop("format", "xraygpt"), src, out, kw.pop("split", "train"), None, None, maxcount,
                           10**9, True)
    return stats


def _take(dataset, n):
    it = iter(dataset)
    return [next(it) for _ in range(n)]


def test_round_trip_json_shards_samples_identical(tmp_path):
    src = _folder(tmp_path / "json")
    stats = _shards(src, tmp_path / "shards")
    assert stats["outputs"]["shards"] == {"shards": 3, "samples": 6} and stats["totals"]["sample"]["dropped"] == 0
    files, shards = _build(src), _build(tmp_path / "shards", format="webdataset")
    assert isinstance(shards, ShardDataset) and len(shards) == len(files) == 6
    expected = {files[k]["image_id"]: files[k] for k in range(len(files))}
    # stored bytes are the source files' bytes
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert members["000000000.png"] == (src / "image" / "a.b_1.png").read_bytes()
    assert json.loads(members["000000000.json"]) == {"image_id": "a.b_1", "caption": expected["a.b_1"]["caption"]}
    # in order (held-out use) and streamed (training): same pixels and captions as from the files
    in_order = [shards[k] for k in range(len(shards))]
    streamed = _take(shards.for_rank(0, 1, 0, seed=0, start=0), 18)
    assert [s["image_id"] for s in in_order] == [s[0] for s in files.samples]
    assert {s["image_id"] for s in streamed} == set(expected)
    for sample in in_order + streamed:
        assert torch.equal(sample["pixel_values"], expected[sample["image_id"]]["pixel_values"]), sample["image_id"]
        assert sample["caption"] == expected[sample["image_id"]]["caption"]


def test_r2gen_to_shards(tmp_path):
    root = tmp_path / "iu"
    (root / "images" / "CXR1_IM-0001").mkdir(parents=True)
    for k in range(2):
        Image.new("L", (10, 10), 40 * k).save(root / "images" / "CXR1_IM-0001" / f"{k}.png")
    entry = {"id": "CXR1_IM-0001", "report": "Lungs clear.", "image_path": ["CXR1_IM-0001/0.png", "CXR1_IM-0001/1.png"]}
    (root / "annotation.json").write_text(json.dumps({"train": [], "val": [], "test": [entry]}))
    _shards(root, tmp_path / "shards", format="r2gen", split="test")
    shards = _build(tmp_path / "shards", format="webdataset")
    assert [(shards[k]["image_id"], shards[k]["caption"]) for k in range(2)] == [
        ("CXR1_IM-0001_1", "Lungs clear."), ("CXR1_IM-0001_2", "Lungs clear.")]
    assert shards[1]["pixel_values"].mean() > shards[0]["pixel_values"].mean()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png(value):
    buf = io.BytesIO()
    Image.new("L", (12, 12), value).save(buf, "PNG")
    return buf.getvalue()


def _meta(image_id):
    return json.dumps({"image_id": image_id, "caption": f"caption of {image_id}"}).encode()


def test_bad_shard_data_is_counted_and_skipped(tmp_path, caplog):
    root = tmp_path / "shards"
    root.mkdir()
    _tar(root / "a.tar", [("0.json", _meta("good_a")), ("0.png", _png(10)),
                          ("1.json", _meta("broken_image")), ("1.png", b"\x89PNG not really"),
                          ("2.json", _meta("no_image")),
                          ("3.json", b"\xff\xfe{"), ("3.png", _png(20)),
                          ("4.json", _meta("truncated")), ("4.png", _png(30)[:40])])
    _tar(root / "b.tar", [("0.json", _meta("good_b")), ("0.png", _png(40)),
                          ("1.json", _meta("cut")), ("1.png", bytes(20000))])
    with tarfile.open(root / "b.tar") as tar:
        cut = tar.getmember("1.png").offset_data + 10000
    (root / "b.tar").write_bytes((root / "b.tar").read_bytes()[:cut])  # a shard truncated inside a member
    manifest = {"shards": [{"file": "a.tar", "samples": 5}, {"file": "b.tar", "samples": 2},
                           {"file": "gone.tar", "samples": 3}], "samples": 10}
    (root / "shards.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        ds = _build(root, format="webdataset")
        assert len(ds) == 7 and "1 listed shards are missing, first: gone.tar" in caplog.text
        stream = ds.for_rank(0, 1, 0, seed=0, start=0)
        seen = {s["image_id"] for s in _take(stream, 20)}  # each shard is re-read several times
        assert caplog.text.count("key 3: bad json") == 1  # logged once per process
        assert "(image broken_image)" in caplog.text and "a.tar key 2: sample without image or json" in caplog.text
        assert "corrupt shard data" in caplog.text and "b.tar" in caplog.text
        in_order = [ds[k]["image_id"] for k in range(len(ds))]
    assert seen == {"good_a", "good_b"}
    assert set(in_order) == {"good_a", "good_b"}
    (root / "shards.json").write_text(json.dumps({"shards": [{"file": "b.tar", "samples": 2}], "samples": 2}))
    (root / "b.tar").write_bytes((root / "b.tar").read_bytes()[:700])  # nothing usable left
    with pytest.raises(DatasetError, match="openi: no sample in the shards decodes"):
        _take(_build(root, format="webdataset").for_rank(0, 1, 0, seed=0, start=0), 1)
    assert set(stream.failures) == {"image does not decode", "sample without image or json", "bad json",
                                    "corrupt shard data"}


def test_pixel_cap_applies_to_shards(tmp_path):
    src = _folder(tmp_path / "json", n=2)
    _shards(src, tmp_path / "shards")
    ds = _build(tmp_path / "shards", format="webdataset", max_image_pixels=21 * 24 - 1)  # the 21x24 image is too big
    stream = ds.for_rank(0, 1, 0, seed=0, start=0)
    assert {s["image_id"] for s in _take(stream, 6)} == {"a.b_1"} and stream.failures["image does not decode"] > 0


def test_ranks_and_workers_read_disjoint_shards(tmp_path):
    src = _folder(tmp_path / "json", n=8)
    _shards(src, tmp_path / "shards")  # 4 shards of 2
    ds = _build(tmp_path / "shards", format="webdataset")
    shard_of = {ds[k]["image_id"]: k // 2 for k in range(8)}
    ranks = [{s["image_id"] for s in _take(ds.for_rank(r, 2, 0, seed=5, start=0), 12)} for r in range(2)]
    assert {shard_of[i] for i in ranks[0]} == {0, 2} and {shard_of[i] for i in ranks[1]} == {1, 3}
    loader = torch.utils.data.DataLoader(ds.for_rank(0, 1, 2, seed=5, start=0), batch_size=1, num_workers=2,
                                         collate_fn=lambda batch: batch[0]["image_id"])
    ids = [i for i, _ in zip(loader, range(16))]
    assert {shard_of[i] for i in ids[0::2]} == {0, 2} and {shard_of[i] for i in ids[1::2]} == {1, 3}
    with pytest.raises(DatasetError, match="4 shards cannot feed 2 ranks x 3 data workers; write at least 6 shards"):
        ds.for_rank(0, 2, 3, seed=0, start=0)


def test_stream_is_endless_and_seeded_by_seed_and_start(tmp_path):
    src = _folder(tmp_path / "json", n=6)
    _shards(src, tmp_path / "shards")
    ds = _build(tmp_path / "shards", format="webdataset")

    def ids(seed, start):
        return [s["image_id"] for s in _take(ds.for_rank(0, 1, 0, seed=seed, start=start), 30)]

    assert ids(1, 0) == ids(1, 0)
    assert ids(1, 0) != ids(1, 8) and ids(1, 0) != ids(2, 0)


@pytest.mark.skipif(not SHARED_OPENI.is_dir(), reason="../shared/data/openi-sample is not present")
def test_shared_openi_sample_through_shards(tmp_path):
    stats = _shards(SHARED_OPENI, tmp_path / "shards", maxcount=4)
    total = len(json.loads((SHARED_OPENI / "filter_cap.json").read_text())["annotations"])
    assert stats["totals"]["sample"] == {"in": total, "out": 6, "dropped": total - 6}
    assert stats["dropped_by_reason"] == {"sample": {"image missing": total - 6}}
    files, shards = _build(SHARED_OPENI), _build(tmp_path / "shards", format="webdataset")
    assert len(shards) == 6
    for k in range(6):
        assert shards[k]["image_id"] == files[k]["image_id"]
        assert torch.equal(shards[k]["pixel_values"], files[k]["pixel_values"])
        assert shards[k]["caption"] == files[k]["caption"]


def _shard_config(tiny_assets, tmp_path, out, **run):
    shards = tmp_path / "train_shards"
    if not shards.is_dir():
        _shards(tiny_assets["train"], shards, maxcount=8)  # 64 samples -> 8 shards
    cfg = tiny_config(tiny_assets, out, **run)
    cfg["datasets"]["mimic"].pop("eval_root")
    cfg["datasets"]["mimic"].update(root=str(shards), format="webdataset", shuffle_buffer=8)
    return cfg, shards


def test_training_from_shards_resumes_at_the_checkpoint_step(tiny_assets, tmp_path):
    from test_train import _run_in_process
    from xraygpt.training.checkpoint import read_checkpoint

    common = dict(iters_per_epoch=2, save_freq_steps=1, sample_generations=1, log_freq=1)
    cfg, _ = _shard_config(tiny_assets, tmp_path, tmp_path / "out", **common)
    path = write_yaml(cfg, tmp_path / "shards.yaml")
    _, runner = _run_in_process(path)
    assert isinstance(runner.train_set, ShardDataset)
    runner.train()
    half = tmp_path / "out" / "checkpoints" / "checkpoint_0000001.pt"
    _, runner = _run_in_process(path, [f"run.resume_ckpt_path={half}"])
    runner.train()
    assert read_checkpoint(tmp_path / "out" / "checkpoints" / "checkpoint_last.pt")["step"] == 2
    steps = [json.loads(line)["step"] for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert len((tmp_path / "out" / "samples.jsonl").read_text().splitlines()) == 1  # generated from the shards


PROBE = """
import json, os, sys
import train
from xraygpt.training import tasks

seen = []
train_step = tasks.ImageTextPretrainTask.train_step


def spy(self, model, batch):
    seen.extend(batch["image_ids"])
    return train_step(self, model, batch)


tasks.ImageTextPretrainTask.train_step = spy
code = train.main(sys.argv[1:])
with open(os.path.join(sys.argv[-1].rsplit("=", 1)[1], "seen_%s.json" % os.environ["RANK"]), "w") as f:
    json.dump(seen, f)
sys.exit(code)
"""


def test_torchrun_two_ranks_train_on_different_shards(tiny_assets, tmp_path):
    out = tmp_path / "two"
    cfg, shards = _shard_config(tiny_assets, tmp_path, out, iters_per_epoch=3, batch_size_train=2, sample_generations=0)
    path = write_yaml(cfg, tmp_path / "two.yaml")
    (tmp_path / "probe.py").write_text(PROBE)
    run_torchrun(tmp_path / "probe.py", 29531, "--cfg-path", str(path), "--options", f"run.output_dir={out}",
                 env={"PYTHONPATH": str(REPO)})
    assert (out / "checkpoints" / "checkpoint_last.pt").is_file()
    seen = [json.loads((out / f"seen_{rank}.json").read_text()) for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 6
    assert not set(seen[0]) & set(seen[1])
    ds = _build(shards, format="webdataset")
    shard_of = {ds[k]["image_id"]: k // 8 for k in range(len(ds))}
    assert {shard_of[i] % 2 for i in seen[0]} == {0} and {shard_of[i] % 2 for i in seen[1]} == {1}
