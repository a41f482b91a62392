"""run.report_to: tensorboard gets the same numbers as log.jsonl, and a resumed run rewrites what followed its checkpoint."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tiny_config, write_yaml
from test_train import _run_in_process
from xraygpt.training.runner import RunError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scalars(folder, tag):
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_scalars_equal_the_jsonl_log_and_resume_purges(tiny_assets, tmp_path):
    cfg = tiny_config(tiny_assets, tmp_path / "out", iters_per_epoch=4, save_freq_steps=2, sample_generations=0,
                      report_to=["tensorboard"])
    path = write_yaml(cfg, tmp_path / "c.yaml")
    _run_in_process(path)[1].train()
    records = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    loss = _scalars(tmp_path / "out" / "tensorboard", "train/loss")
    assert [s for s, _ in loss] == [r["step"] for r in records] == [1, 2, 3, 4]
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert [s for s, _ in _scalars(tmp_path / "out" / "tensorboard", "train/lr")] == [1, 2, 3, 4]

    half = tmp_path / "out" / "checkpoints" / "checkpoint_0000002.pt"
    _run_in_process(path, [f"run.resume_ckpt_path={half}"])[1].train()
    resumed = _scalars(tmp_path / "out" / "tensorboard", "train/loss")
    assert [s for s, _ in resumed] == [1, 2, 3, 4]  # steps 3-4 of the first run purged, not doubled
    assert [v for _, v in resumed] == pytest.approx([v for _, v in loss], rel=1e-5)


def test_an_unknown_dashboard_is_refused(tiny_assets, tmp_path):
    cfg = tiny_config(tiny_assets, tmp_path / "out", report_to=["wandb"])
    with pytest.raises(RunError, match=r"run.report_to: unknown dashboard 'wandb'; choose from \('tensorboard',\)"):
        _run_in_process(write_yaml(cfg, tmp_path / "c.yaml"))
