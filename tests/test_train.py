"""End-to-end training through train.py / the runner on the tiny model (CPU)."""

import hashlib
import json

import pytest
import torch
from omegaconf import OmegaConf

import train
from conftest import REPO, run_torchrun, run_until_checkpoint_then_kill, tiny_config, write_yaml
from xraygpt import builders
from xraygpt.config import load_config
from xraygpt.training.checkpoint import read_checkpoint
from xraygpt.runtime import DistInfo


def _digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _run_in_process(cfg_path, options=()):
    cfg = load_config(cfg_path, list(options))
    model = builders.build_model(cfg.model, cfg.run.seed)
    train_set = builders.build_datasets(cfg.datasets, cfg.run.seed, "train", model.prompt_tokenizer)
    eval_set = builders.build_datasets(cfg.datasets, cfg.run.seed, "eval", model.prompt_tokenizer)
    runner = builders.build_runner(cfg, model, train_set, eval_set, DistInfo())
    return model, runner


@pytest.fixture(scope="module")
def stage1_run(tiny_assets, tmp_path_factory):
    """One tiny stage-1 run shared by several tests: (model before/after digests, output dir)."""
    out = tmp_path_factory.mktemp("stage1") / "out"
    cfg_path = write_yaml(tiny_config(tiny_assets, out, iters_per_epoch=3, max_epoch=2), out.parent / "s1.yaml")
    model, runner = _run_in_process(cfg_path)
    before = {"encoder": _digest(model.encoder), "llm": _digest(model.llm)}
    proj_before = model.projector.proj.weight.detach().clone()
    result = runner.train()
    after = {"encoder": _digest(model.encoder), "llm": _digest(model.llm)}
    return {"out": out, "before": before, "after": after, "model": model, "proj_before": proj_before, "result": result}


def test_outputs_written(stage1_run):
    out = stage1_run["out"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert {"step", "epoch", "loss", "lr", "grad_norm", "samples_per_s"} <= set(records[0])
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "config.yaml").is_file()
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    assert ckpts == ["checkpoint_0000003.pt", "checkpoint_0000006.pt", "checkpoint_last.pt"]
    assert not list((out / "checkpoints").glob(".*tmp"))
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all({"image_id", "prediction", "reference"} <= set(s) for s in samples)


def test_checkpoint_holds_only_trainable_weights(stage1_run):
    ckpt = read_checkpoint(stage1_run["out"] / "checkpoints" / "checkpoint_last.pt")
    # the trainable weights and the projector's normalisation flag (a scalar), nothing frozen
    assert set(ckpt["model"]) == {"projector.proj.weight", "projector.proj.bias", "projector.input_norm"}
    assert ckpt["model"]["projector.input_norm"].numel() == 1
    assert ckpt["step"] == 6 and "optimizer" in ckpt and "rng" in ckpt
    assert torch.equal(ckpt["model"]["projector.proj.weight"], stage1_run["model"].projector.proj.weight)


def test_frozen_weights_bit_identical_and_projection_moved(stage1_run):
    assert stage1_run["before"] == stage1_run["after"]
    assert not torch.equal(stage1_run["proj_before"], stage1_run["model"].projector.proj.weight)


def test_stage2_initialises_from_stage1(stage1_run, tiny_assets, tmp_path):
    cfg = tiny_config(tiny_assets, tmp_path / "s2", iters_per_epoch=1, sample_generations=0)
    cfg["model"]["ckpt"] = str(stage1_run["out"] / "checkpoints" / "checkpoint_last.pt")
    cfg["datasets"] = {"openi": {**cfg["datasets"].pop("mimic")}}
    model, _ = _run_in_process(write_yaml(cfg, tmp_path / "s2.yaml"))
    assert torch.equal(model.projector.proj.weight, stage1_run["model"].projector.proj.weight)


def test_refuses_to_overwrite_a_previous_run(stage1_run, tiny_assets, tmp_path):
    cfg_path = write_yaml(tiny_config(tiny_assets, stage1_run["out"]), tmp_path / "again.yaml")
    with pytest.raises(ValueError, match="already holds checkpoints"):
        _run_in_process(cfg_path)


def test_resume_after_kill_matches_uninterrupted(tiny_assets, tmp_path):
    """N steps straight == N/2 steps, SIGKILL, resume for the other N/2 (projection to 1e-6)."""
    n = 8
    common = dict(iters_per_epoch=n, sample_generations=0, save_freq_steps=n // 2, log_freq=2)
    straight_cfg = write_yaml(tiny_config(tiny_assets, tmp_path / "straight", **common), tmp_path / "straight.yaml")
    _, runner = _run_in_process(straight_cfg)
    runner.train()
    straight = read_checkpoint(tmp_path / "straight" / "checkpoints" / "checkpoint_last.pt")["model"]

    killed_out = tmp_path / "killed"
    killed_cfg = write_yaml(tiny_config(tiny_assets, killed_out, **common), tmp_path / "killed.yaml")
    half = killed_out / "checkpoints" / f"checkpoint_{n // 2:07d}.pt"
    run_until_checkpoint_then_kill(killed_cfg, half)

    _, runner = _run_in_process(killed_cfg, [f"run.resume_ckpt_path={half}"])
    runner.train()
    resumed = read_checkpoint(killed_out / "checkpoints" / "checkpoint_last.pt")
    assert resumed["step"] == n
    for key in straight:
        assert torch.allclose(straight[key], resumed["model"][key], atol=1e-6, rtol=0), key
    steps = [json.loads(line)["step"] for line in (killed_out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == n


def test_main_returns_zero_and_writes_outputs(tiny_assets, tmp_path):
    cfg_path = write_yaml(tiny_config(tiny_assets, tmp_path / "out", iters_per_epoch=2, sample_generations=1), tmp_path / "c.yaml")
    assert train.main(["--cfg-path", str(cfg_path), "--options", "run.accum_grad_iters=2"]) == 0
    assert (tmp_path / "out" / "checkpoints" / "checkpoint_last.pt").is_file()


def assert_torchrun_matches_one_process(tiny_assets, tmp_path, master_port: int, **run_options) -> None:
    """Train 2 ranks x batch 2 under torchrun (gloo, DDP) into tmp_path/two and 1 process x
    batch 4 into tmp_path/one; assert the trained weights agree (same samples, averaged gradients)."""
    common = dict(iters_per_epoch=3, sample_generations=0, **run_options)
    two = write_yaml(tiny_config(tiny_assets, tmp_path / "two", batch_size_train=2, **common), tmp_path / "two.yaml")
    run_torchrun(REPO / "train.py", master_port, "--cfg-path", str(two))
    one = write_yaml(tiny_config(tiny_assets, tmp_path / "one", batch_size_train=4, **common), tmp_path / "one.yaml")
    _, runner = _run_in_process(one)
    runner.train()
    a = read_checkpoint(tmp_path / "two" / "checkpoints" / "checkpoint_last.pt")["model"]
    b = read_checkpoint(tmp_path / "one" / "checkpoints" / "checkpoint_last.pt")["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_torchrun_two_processes_on_cpu_matches_one_process(tiny_assets, tmp_path):
    """2 ranks x batch 2 (gloo, DDP) == 1 process x batch 4: same samples, averaged gradients."""
    assert_torchrun_matches_one_process(tiny_assets, tmp_path, 29517)
    assert len((tmp_path / "two" / "log.jsonl").read_text().splitlines()) == 3
    assert OmegaConf.load(tmp_path / "two" / "config.yaml").run.batch_size_train == 2


def test_logging_goes_to_the_stderr_of_the_moment(monkeypatch):
    """setup_logging twice (as entry points called in one process do) keeps one handler, and each record goes
    to the stderr current when it is logged, never to an earlier one that has been closed since."""
    import io
    import logging
    import sys

    from xraygpt import runtime

    first, second = io.StringIO(), io.StringIO()
    log = logging.getLogger("xraygpt.tests.logging")
    monkeypatch.setattr(sys, "stderr", first)
    runtime.setup_logging(0)
    log.info("to the first")
    monkeypatch.setattr(sys, "stderr", second)
    runtime.setup_logging(0)
    first_text = first.getvalue()
    first.close()
    log.info("to the second")
    assert "to the first" in first_text and "to the second" not in first_text
    assert "to the second" in second.getvalue() and "Logging error" not in second.getvalue()
    assert sum(isinstance(h, runtime.StderrHandler) for h in logging.getLogger().handlers) == 1
