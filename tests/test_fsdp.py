"""run.strategy: fsdp (FSDP2 on CPU with gloo): equality with one process, sharded checkpoints,
resume (also on another number of ranks), stage 0's export, and the refusals."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from conftest import DIAGNOSTIC_ENV, REPO, run_torchrun, tiny_config, write_yaml
from test_stage0 import stage0_config
from xraygpt import builders
from xraygpt.config import load_config
from xraygpt.runtime import DistInfo
from xraygpt.training.checkpoint import read_checkpoint
from xraygpt.training.runner import RunError
from xraygpt.training.sharded_checkpoint import read_sharded_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _runner(cfg_path, options=()):
    cfg = load_config(cfg_path, list(options))
    model = builders.build_model(cfg.model, cfg.run.seed)
    train_set = builders.build_datasets(cfg.datasets, cfg.run.seed, "train", model.prompt_tokenizer,
                                        model.image_preprocessing)
    eval_set = builders.build_datasets(cfg.datasets, cfg.run.seed, "eval", model.prompt_tokenizer,
                                       model.image_preprocessing)
    return model, builders.build_runner(cfg, model, train_set, eval_set, DistInfo())


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def _weights(out, model):
    """The trained weights of the run in `out` (a .pt or a sharded checkpoint_last), as plain tensors."""
    ckpt = out / "checkpoints"
    if (ckpt / "checkpoint_last.pt").is_file():
        return read_checkpoint(ckpt / "checkpoint_last.pt")["model"]
    return read_sharded_weights(ckpt / "checkpoint_last", model.trainable_state_dict())


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol, rtol=0), (key, float((a[key] - b[key]).abs().max()))


def _stage0(tiny_assets, tmp_path, name, **run):
    cfg = stage0_config(tiny_assets["llm"], tiny_assets["train"], tmp_path / name, finetune="full", **run)
    return write_yaml(cfg, tmp_path / f"{name}.yaml")


def test_stage0_full_two_ranks_fsdp_equals_one_process_and_export_equals(tiny_assets, tmp_path):
    """2 ranks x batch 2 (FSDP, gloo) == 1 process x batch 4 (DDP strategy): loss curve, final
    weights (1e-5), the hf_model export (1e-5) and the samples generated after training."""
    common = dict(iters_per_epoch=3, sample_generations=1)
    two = _stage0(tiny_assets, tmp_path, "two", strategy="fsdp", batch_size_train=2, **common)
    run_torchrun(REPO / "train.py", 29611, "--cfg-path", str(two))
    model, runner = _runner(_stage0(tiny_assets, tmp_path, "one", batch_size_train=4, **common))
    runner.train()
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), abs=1e-5)
    folder = tmp_path / "two" / "checkpoints" / "checkpoint_0000003"
    assert (tmp_path / "two" / "checkpoints" / "checkpoint_last").resolve() == folder.resolve()
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [
        "shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    _assert_close(_weights(tmp_path / "two", model), _weights(tmp_path / "one", model), 1e-5)
    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "two" / "hf_model"), local_files_only=True)
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path / "one" / "hf_model"), local_files_only=True)
    _assert_close(exported.state_dict(), reference.state_dict(), 1e-5)
    sample = lambda out: [json.loads(line)["prediction"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sample(tmp_path / "two") == sample(tmp_path / "one")


def test_stage1_with_a_sharded_frozen_llm_equals_one_process(tiny_assets, tmp_path):
    """Stage 1 (launched by scripts/launch.sh) with the frozen LLM and encoder sharded, with
    gradient accumulation, clipping, gradient checkpointing and length-grouped batches: the
    projection trains as in one process,
    the checkpoint holds only trainable weights, and stage 2 starts from the sharded checkpoint.
    The projector centres its tokens (`layernorm_center`): the running mean it keeps is summed over
    the ranks, so it too equals one process's and travels in the sharded checkpoint."""
    common = dict(iters_per_epoch=3, sample_generations=1, accum_grad_iters=2, grad_clip=0.05,
                  gradient_checkpointing=True, group_by_length=True)

    def centred(cfg):
        cfg["model"]["projector_norm"] = "layernorm_center"
        return cfg

    two = write_yaml(centred(tiny_config(tiny_assets, tmp_path / "two", strategy="fsdp", batch_size_train=2, **common)),
                     tmp_path / "two.yaml")
    launched = subprocess.run(  # through the multi-node launcher, as one node of two ranks
        ["bash", str(REPO / "scripts" / "launch.sh"), "--cfg-path", str(two)], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, **DIAGNOSTIC_ENV, "OMP_NUM_THREADS": "1", "NPROC_PER_NODE": "2", "RDZV_ENDPOINT": "127.0.0.1:29623",
             "PYTHON": sys.executable}, timeout=300)
    assert launched.returncode == 0, launched.stderr[-6000:]
    model, runner = _runner(write_yaml(centred(tiny_config(tiny_assets, tmp_path / "one", batch_size_train=4, **common)),
                                       tmp_path / "one.yaml"))
    runner.train()
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), abs=1e-5)
    _assert_close(_weights(tmp_path / "two", model), _weights(tmp_path / "one", model), 1e-5)
    folder = tmp_path / "two" / "checkpoints" / "checkpoint_last"
    saved = set()
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            saved |= {k.split(".", 1)[1] for k in f.keys() if k.startswith("model.")}
    assert saved == set(model.trainable_state_dict())  # the projection, its flag and mean, nothing frozen
    assert {"projector.token_mean", "projector.token_count"} <= saved
    assert (tmp_path / "two" / "samples.jsonl").read_text().count("\n") == 1
    cfg = centred(tiny_config(tiny_assets, tmp_path / "s2", iters_per_epoch=1, sample_generations=0))
    cfg["model"]["ckpt"] = str(folder)
    stage2, _ = _runner(write_yaml(cfg, tmp_path / "s2.yaml"))
    _assert_close(stage2.trainable_state_dict(), _weights(tmp_path / "one", model), 1e-5)


def _torchrun_until(cfg_path, checkpoint, port, timeout=240):
    """Start a 2-rank torchrun of train.py and SIGKILL its whole process group once `checkpoint` exists."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
         str(REPO / "train.py"), "--cfg-path", str(cfg_path)],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.time() + timeout
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), f"the run never wrote {checkpoint}"


def test_fsdp_kill_and_resume_on_the_same_and_on_another_number_of_ranks(tiny_assets, tmp_path):
    """Killed at N/2 and resumed on 2 ranks: the uninterrupted run's weights (1e-6).  Its 2-rank
    checkpoint resumed on 1 rank (batch 4), and a 1-process FSDP checkpoint resumed on 2 ranks:
    the same weights within 1e-5 (another reduction order).  One process with strategy fsdp
    trains exactly as with ddp."""
    n = 4
    common = dict(strategy="fsdp", iters_per_epoch=n, save_freq_steps=n // 2, sample_generations=0)
    straight = _stage0(tiny_assets, tmp_path, "straight", batch_size_train=2, **common)
    run_torchrun(REPO / "train.py", 29631, "--cfg-path", str(straight))
    model = builders.build_model(load_config(straight).model)  # for the weights' names and shapes
    reference = _weights(tmp_path / "straight", model)

    killed = _stage0(tiny_assets, tmp_path, "killed", batch_size_train=2, **common)
    half = tmp_path / "killed" / "checkpoints" / f"checkpoint_{n // 2:07d}"
    _torchrun_until(killed, half, 29637)
    assert not (tmp_path / "killed" / "checkpoints" / f"checkpoint_{n:07d}").exists()
    run_torchrun(REPO / "train.py", 29641, "--cfg-path", str(killed), "--options", f"run.resume_ckpt_path={half}")
    _assert_close(_weights(tmp_path / "killed", model), reference, 1e-6)

    on_one = _stage0(tiny_assets, tmp_path, "on_one", batch_size_train=4, **common)
    _, runner = _runner(on_one, [f"run.resume_ckpt_path={half}"])
    runner.train()
    _assert_close(_weights(tmp_path / "on_one", model), reference, 1e-5)

    single = _stage0(tiny_assets, tmp_path, "single", batch_size_train=4, **common)
    _, runner = _runner(single)
    runner.train()
    _assert_close(_weights(tmp_path / "single", model), reference, 1e-5)
    plain = _stage0(tiny_assets, tmp_path, "plain", batch_size_train=4, **{**common, "strategy": "ddp"})
    _, runner = _runner(plain)
    runner.train()
    _assert_close(_weights(tmp_path / "single", model), _weights(tmp_path / "plain", model), 0.0)

    from_one = _stage0(tiny_assets, tmp_path, "from_one", batch_size_train=2, **common)
    one_half = tmp_path / "single" / "checkpoints" / f"checkpoint_{n // 2:07d}"
    run_torchrun(REPO / "train.py", 29647, "--cfg-path", str(from_one), "--options", f"run.resume_ckpt_path={one_half}")
    _assert_close(_weights(tmp_path / "from_one", model), reference, 1e-5)


def test_a_checkpoint_of_the_other_strategy_is_refused_in_one_line(tiny_assets, tmp_path):
    common = dict(iters_per_epoch=2, save_freq_steps=1, sample_generations=0)
    ddp = write_yaml(tiny_config(tiny_assets, tmp_path / "ddp", **common), tmp_path / "ddp.yaml")
    _runner(ddp)[1].train()
    fsdp = write_yaml(tiny_config(tiny_assets, tmp_path / "fsdp", strategy="fsdp", **common), tmp_path / "fsdp.yaml")
    _runner(fsdp)[1].train()
    pt = tmp_path / "ddp" / "checkpoints" / "checkpoint_0000001.pt"
    folder = tmp_path / "fsdp" / "checkpoints" / "checkpoint_0000001"
    with pytest.raises(RunError, match=r"written with run.strategy ddp .*resume it with run.strategy=ddp") as err:
        _runner(fsdp, [f"run.resume_ckpt_path={pt}", f"run.output_dir={tmp_path / 'x'}"])
    assert "\n" not in str(err.value) and str(pt) in str(err.value)
    with pytest.raises(RunError, match=r"is a sharded checkpoint \(run.strategy fsdp\)") as err:
        _runner(ddp, [f"run.resume_ckpt_path={folder}", f"run.output_dir={tmp_path / 'y'}"])
    assert "\n" not in str(err.value) and str(folder) in str(err.value)
    with pytest.raises(RunError, match="already holds checkpoints; set run.resume_ckpt_path=.*checkpoint_last to continue"):
        _runner(fsdp)
    with pytest.raises(RunError, match="run.strategy must be one of"):
        _runner(ddp, ["run.strategy=zero", f"run.output_dir={tmp_path / 'z'}"])
    with pytest.raises(RunError, match="run.fsdp_cpu_offload needs run.strategy: fsdp"):
        _runner(ddp, ["run.fsdp_cpu_offload=true", f"run.output_dir={tmp_path / 'z'}"])
    with pytest.raises(RunError, match="run.fsdp_cpu_offload moves the shards .* needs a CUDA device"):
        _runner(fsdp, ["run.fsdp_cpu_offload=true", f"run.output_dir={tmp_path / 'z'}"])
    assert not list((tmp_path / "fsdp" / "checkpoints").glob(".*tmp"))


def test_stage0_lora_two_ranks_fsdp_equals_one_process(tiny_assets, tmp_path):
    """LoRA adapters on a sharded frozen LLM: the adapters (only they are saved) and the merged
    hf_model export equal the 1-process run's."""
    common = dict(iters_per_epoch=3, sample_generations=0)
    cfg = stage0_config(tiny_assets["llm"], tiny_assets["train"], tmp_path / "two", finetune="lora",
                        strategy="fsdp", batch_size_train=2, **common)
    run_torchrun(REPO / "train.py", 29653, "--cfg-path", str(write_yaml(cfg, tmp_path / "two.yaml")))
    cfg = stage0_config(tiny_assets["llm"], tiny_assets["train"], tmp_path / "one", finetune="lora",
                        batch_size_train=4, **common)
    model, runner = _runner(write_yaml(cfg, tmp_path / "one.yaml"))
    template = builders.build_model(load_config(tmp_path / "one.yaml").model)  # the export merges `model`'s adapters
    runner.train()
    two, one = _weights(tmp_path / "two", template), _weights(tmp_path / "one", template)
    assert two and all("lora_" in k for k in two)
    _assert_close(two, one, 1e-5)
    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "two" / "hf_model"), local_files_only=True)
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path / "one" / "hf_model"), local_files_only=True)
    _assert_close(exported.state_dict(), reference.state_dict(), 1e-5)
