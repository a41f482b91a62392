"""Bad input: a one-line error naming the path/key, a non-zero exit, nothing written to output_dir."""

import shutil

import train
from conftest import tiny_config, write_yaml


def _main(cfg, tmp_path, capsys, options=()):
    path = write_yaml(cfg, tmp_path / "cfg.yaml")
    argv = ["--cfg-path", str(path)] + (["--options", *options] if options else [])
    code = train.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _assert_fails_cleanly(code, err, needle, out_dir):
    assert code != 0
    assert err and err[-1].startswith("error: ") and needle in err[-1], err
    assert not out_dir.exists(), "nothing may be written to output_dir on bad input"


def test_missing_llm_folder(tiny_assets, tmp_path, capsys):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["model"]["llm"]["path"] = str(tmp_path / "no_llm_here")
    _assert_fails_cleanly(*_main(cfg, tmp_path, capsys), "no_llm_here", tmp_path / "out")


def test_tokenizer_folder_without_tokenizer_model(tiny_assets, tmp_path, capsys):
    llm = tmp_path / "llm"
    shutil.copytree(tiny_assets["llm"], llm)
    for name in ("tokenizer.model", "tokenizer.json"):
        (llm / name).unlink(missing_ok=True)
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["model"]["llm"]["path"] = str(llm)
    code, err = _main(cfg, tmp_path, capsys)
    _assert_fails_cleanly(code, err, "has no tokenizer.model", tmp_path / "out")
    assert str(llm) in err[-1]


def test_missing_encoder_weights(tiny_assets, tmp_path, capsys):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["model"]["encoder"]["checkpoint"] = str(tmp_path / "medclip" / "pytorch_model.bin")
    _assert_fails_cleanly(*_main(cfg, tmp_path, capsys), "medclip/pytorch_model.bin", tmp_path / "out")


def test_checkpoint_for_another_architecture(tiny_assets, tmp_path, capsys):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["model"]["encoder"]["swin_config"] = None  # full Swin-T, but the tiny checkpoint
    _assert_fails_cleanly(*_main(cfg, tmp_path, capsys), "another architecture", tmp_path / "out")


def test_config_typo(tiny_assets, tmp_path, capsys):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["run"]["batch_size_trian"] = 2
    _assert_fails_cleanly(*_main(cfg, tmp_path, capsys), "run.batch_size_train", tmp_path / "out")


def test_options_typo(tiny_assets, tmp_path, capsys):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    _assert_fails_cleanly(*_main(cfg, tmp_path, capsys, ["model.llm.pth=x"]), "model.llm.path", tmp_path / "out")


def test_dataset_without_usable_samples(tiny_assets, tmp_path, capsys):
    root = tmp_path / "data"
    (root / "image").mkdir(parents=True)
    shutil.copy(tiny_assets["train"] / "filter_cap.json", root / "filter_cap.json")
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["datasets"]["mimic"]["root"] = str(root)
    _assert_fails_cleanly(*_main(cfg, tmp_path, capsys), "no usable sample", tmp_path / "out")


def test_missing_stage1_checkpoint(tiny_assets, tmp_path, capsys):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["model"]["ckpt"] = str(tmp_path / "stage1" / "checkpoint_last.pt")
    _assert_fails_cleanly(*_main(cfg, tmp_path, capsys), "stage1/checkpoint_last.pt", tmp_path / "out")


def test_unreadable_image_found_at_start_up(tiny_assets, tmp_path, capsys, caplog):
    root = tmp_path / "data"
    shutil.copytree(tiny_assets["train"], root)
    victim = sorted((root / "image").iterdir())[0]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n garbage, not an image")
    cfg = tiny_config(tiny_assets, tmp_path / "out", iters_per_epoch=2, sample_generations=0)
    cfg["datasets"]["mimic"]["root"] = str(root)
    code, err = _main(cfg, tmp_path, capsys)
    assert code == 0, err
    assert f"(image unreadable), first: {victim.stem}" in caplog.text


def test_image_that_fails_mid_training_is_skipped_not_fatal(tiny_assets, tmp_path, capsys, caplog):
    root = tmp_path / "data"
    shutil.copytree(tiny_assets["train"], root)
    victim = sorted((root / "image").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])  # valid header, truncated pixel data
    cfg = tiny_config(tiny_assets, tmp_path / "out", iters_per_epoch=16, batch_size_train=4, sample_generations=0)
    cfg["datasets"]["mimic"]["root"] = str(root)
    code, err = _main(cfg, tmp_path, capsys)
    assert code == 0, err
    assert victim.name in caplog.text and "does not decode" in caplog.text
