"""The README's main job (scripts/quickstart.sh) step by step, in a scratch working directory."""

import json
import os
import time

import pytest

import train
from xraygpt import embedded


@pytest.fixture
def workdir(tmp_path, repo, monkeypatch):
    for name in ("prompts", "train_configs"):
        os.symlink(repo / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_quickstart_pipeline_under_five_minutes_and_stage1_loss_falls(workdir, capsys):
    start = time.perf_counter()
    assert embedded.main(["prepare", "--out", "dataset/embedded"]) == 0
    assert train.main(["--cfg-path", "train_configs/tiny_stage0.yaml"]) == 0
    assert train.main(["--cfg-path", "train_configs/tiny_stage1.yaml"]) == 0
    assert train.main(["--cfg-path", "train_configs/tiny_stage2.yaml"]) == 0
    capsys.readouterr()
    assert embedded.main(["report", "output/embedded/stage1", "output/embedded/stage2"]) == 0
    elapsed = time.perf_counter() - start
    report = capsys.readouterr().out
    print(report)
    print(f"quickstart steps took {elapsed:.0f} s")
    assert elapsed < 300

    log = [json.loads(x) for x in (workdir / "output/embedded/stage1/log.jsonl").read_text().splitlines()]
    first, last = log[0]["loss"], log[-1]["loss"]
    assert last <= 0.7 * first, (first, last)
    samples = [json.loads(x) for x in (workdir / "output/embedded/stage2/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and sum(bool(s["prediction"]) for s in samples) >= 5
    for s in samples:
        assert s["reference"] in report and s["prediction"] in report
    assert "loss.png" in report and "checkpoints" in report
    # stage 2 started from stage 1's projection
    s2_config = (workdir / "output/embedded/stage2/config.yaml").read_text()
    assert "output/embedded/stage1/checkpoints/checkpoint_last.pt" in s2_config
