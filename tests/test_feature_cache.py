"""The frozen-feature cache: layout and manifest, training from it = training from images (fp32
exactly; fp16 = images whose features are rounded to fp16), refusals, shards as the source."""

import json
import random

import pytest
import torch

import train
from conftest import tiny_config, write_yaml
from test_train import _run_in_process
from xraygpt import builders
from xraygpt.config import load_config
import cache_features
from xraygpt.data import feature_cache
from xraygpt.data.formats import DatasetError
from xraygpt.data.prepare.to_shards import prepare_shards
from xraygpt.embedded.assets import write_tiny_encoder
from xraygpt.training.checkpoint import read_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _make_cache(cfg_path, out, *extra):
    return cache_features.main(["--cfg-path", str(cfg_path), "--out", str(out), "--shard-size", "24",
                               "--num-workers", "0", *extra])


@pytest.fixture(scope="module")
def caches(tiny_assets, tmp_path_factory):
    base = tmp_path_factory.mktemp("caches")
    cfg_path = write_yaml(tiny_config(tiny_assets, base / "unused"), base / "images.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for dtype in ("float32", "float16"):
        assert _make_cache(cfg_path, base / dtype, "--dtype", dtype) == 0
    torch.set_num_threads(threads)
    return {"base": base, "cfg": cfg_path, "float32": base / "float32", "float16": base / "float16"}


def _train(tiny_assets, out, cache=None, patch_encoder=None, **run):
    cfg = tiny_config(tiny_assets, out, iters_per_epoch=3, sample_generations=0, **run)
    if cache:
        cfg["datasets"]["mimic"]["feature_cache"] = str(cache)
    model, runner = _run_in_process(write_yaml(cfg, out.parent / f"{out.name}.yaml"))
    if patch_encoder:
        plain = model.encoder.forward
        model.encoder.forward = lambda pixels: patch_encoder(plain(pixels))
    runner.train()
    losses = [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines()]
    return losses, read_checkpoint(out / "checkpoints" / "checkpoint_last.pt")["model"]


def test_layout_manifest_and_rows(caches, tiny_model_factory):
    model = tiny_model_factory()
    cfg = load_config(caches["cfg"])
    images = builders.build_datasets(cfg.datasets, 0, "train").datasets[0]
    manifest = json.loads((caches["float32"] / "manifest.json").read_text())
    assert manifest["encoder"] == {"weights_sha256": model.encoder.weights_sha256(), "output": "patch",
                                   "num_tokens": 49, "dim": 128}
    assert [s["samples"] for s in manifest["shards"]] == [24, 24, 16] and manifest["dropped"] == {}
    assert manifest["source"]["vis_processor"] == {"name": "medclip_image_eval", "image_size": 112}
    assert [tuple(s) for s in manifest["samples"]] == [(i, c) for i, _, c in images.samples]
    assert not [p for p in caches["base"].iterdir() if p.name.startswith(".")]  # no temporary folder left
    cache32, cache16 = feature_cache.FeatureCache(caches["float32"]), feature_cache.FeatureCache(caches["float16"])
    for row in (0, 30, 63):  # rows across the shards
        with torch.no_grad():
            expected = model.encoder(images[row]["pixel_values"][None])[0]
        assert cache32.features(row).dtype == torch.float32 and cache16.features(row).dtype == torch.float16
        assert torch.allclose(cache32.features(row), expected, atol=1e-5)
        assert torch.equal(cache16.features(row), expected.half())


def test_training_from_an_fp32_cache_gives_the_losses_of_training_from_images(caches, tiny_assets, tmp_path):
    from_images, w_images = _train(tiny_assets, tmp_path / "images")
    from_cache, w_cache = _train(tiny_assets, tmp_path / "cache", caches["float32"])
    assert len(from_images) == 3 and max(abs(a - b) for a, b in zip(from_images, from_cache)) < 1e-4
    for key in w_images:
        assert torch.allclose(w_images[key], w_cache[key], atol=1e-5), key


def test_an_fp16_cache_gives_the_losses_of_images_with_features_rounded_to_fp16(caches, tiny_assets, tmp_path):
    rounded, _ = _train(tiny_assets, tmp_path / "rounded", patch_encoder=lambda f: f.half().float())
    from_cache, _ = _train(tiny_assets, tmp_path / "cache16", caches["float16"])
    assert max(abs(a - b) for a, b in zip(rounded, from_cache)) < 1e-4
    exact, _ = _train(tiny_assets, tmp_path / "exact")
    assert max(abs(a - b) for a, b in zip(exact, from_cache)) < 1e-4  # fp16 storage vs none: 2e-6 measured here


def test_training_from_the_cache_with_grouped_batches_and_a_data_worker(caches, tiny_assets, tmp_path):
    losses, _ = _train(tiny_assets, tmp_path / "grouped", caches["float16"], group_by_length=True, num_workers=1)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("change,message", [
    ("encoder", "was made by another encoder"),
    ("pooled", "holds patch features (49 x 128) but model.encoder.output is pooled"),
])
def test_a_cache_of_another_encoder_or_mode_is_refused_in_one_line(caches, tiny_assets, tmp_path, capsys, change, message):
    cfg = tiny_config(tiny_assets, tmp_path / "out", iters_per_epoch=1, sample_generations=0)
    cfg["datasets"]["mimic"]["feature_cache"] = str(caches["float16"])
    if change == "encoder":
        cfg["model"]["encoder"]["checkpoint"] = str(write_tiny_encoder(tmp_path / "other", seed=1))
    else:
        cfg["model"]["encoder"]["output"] = "pooled"
    assert train.main(["--cfg-path", str(write_yaml(cfg, tmp_path / "c.yaml"))]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0] and str(caches["float16"]) in err[0]
    assert not (tmp_path / "out").exists()


def test_a_cache_from_shards_holds_the_same_features(caches, tiny_assets, tmp_path):
    prepare_shards("xraygpt", tiny_assets["train"], tmp_path / "shards", "train", None, None, 20, 10**9, False)
    cfg = tiny_config(tiny_assets, tmp_path / "unused")
    cfg["datasets"]["mimic"].update(root=str(tmp_path / "shards"), format="webdataset")
    assert _make_cache(write_yaml(cfg, tmp_path / "s.yaml"), tmp_path / "cache", "--dtype", "float32") == 0
    from_shards, from_files = feature_cache.FeatureCache(tmp_path / "cache"), feature_cache.FeatureCache(caches["float32"])
    assert sorted(from_shards.samples) == sorted(from_files.samples)
    rows = {image_id: k for k, (image_id, _) in enumerate(from_files.samples)}
    for k in random.Random(0).sample(range(len(from_shards)), 8):
        other = from_files.features(rows[from_shards.samples[k][0]])
        assert torch.allclose(from_shards.features(k), other, atol=1e-5)


def test_bad_caches_and_outputs_are_refused_in_one_line(caches, tiny_assets, tmp_path, capsys):
    assert _make_cache(caches["cfg"], caches["float16"]) == 2  # the folder exists
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "already exists" in err[0]
    (tmp_path / "empty").mkdir()
    cfg = load_config(write_yaml(tiny_config(tiny_assets, tmp_path / "o"), tmp_path / "c.yaml"),
                      [f"datasets.mimic.feature_cache={tmp_path / 'empty'}"])
    with pytest.raises(DatasetError, match="has no manifest.json") as exc:
        builders.build_datasets(cfg.datasets, 0, "train")
    assert "\n" not in str(exc.value)
    assert builders.build_datasets(cfg.datasets, 0, "eval").datasets[0].samples[0][1].is_file()  # eval: images
    mixed = tiny_config(tiny_assets, tmp_path / "o")
    mixed["datasets"]["openi"] = dict(mixed["datasets"]["mimic"], feature_cache=str(caches["float16"]))
    cfg = load_config(write_yaml(mixed, tmp_path / "m.yaml"))
    with pytest.raises(DatasetError, match="either all or none of the training datasets"):
        builders.build_datasets(cfg.datasets, 0, "train")


def test_a_killed_builds_temporary_folder_is_removed_by_the_next_build(caches, tmp_path, caplog):
    """A killed feature_cache left a hidden temporary folder beside the cache for ever."""
    stale = tmp_path / ".cache.abc123.tmp"
    stale.mkdir()
    (stale / ".features-000000.safetensors.tmp").write_bytes(b"half a shard")
    unrelated = tmp_path / ".other.abc123.tmp"
    unrelated.mkdir()
    with caplog.at_level("WARNING"):
        assert _make_cache(caches["cfg"], tmp_path / "cache") == 0
    assert not stale.exists() and unrelated.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc123.tmp", "cache"]
    assert "the unfinished build of a killed run" in caplog.text


def test_a_manifest_listing_a_shard_outside_its_folder_is_refused(caches, tmp_path):
    import shutil

    from xraygpt.data.feature_cache import FeatureCacheError, FeatureCache

    cache = tmp_path / "cache"
    shutil.copytree(caches["float32"], cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(cache / manifest["shards"][0]["file"], outside)
    manifest["shards"][0]["file"] = "../elsewhere.safetensors"
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureCacheError, match="lists a shard outside its folder"):
        FeatureCache(cache)
