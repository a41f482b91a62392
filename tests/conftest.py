"""Shared, session-scoped fixtures: tiny local assets built once (no downloads, ever)."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_OPENI = REPO.parent / "shared" / "data" / "openi-sample"
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> dict:
    """Synthetic data (64 train / 8 val), a tiny MedCLIP-format Swin and a tiny LLaMA + tokenizer."""
    from xraygpt.embedded.assets import conversation_texts, write_tiny_encoder, write_tiny_llm
    from xraygpt.embedded.dataset import generate_dataset
    from xraygpt.prompting import load_instructions

    root = tmp_path_factory.mktemp("tiny_assets")
    generate_dataset(root / "data", num_train=64, num_val=8, num_test=8, seed=3, image_size=112)
    write_tiny_encoder(root / "encoder", seed=0)
    captions = [a["caption"] for a in json.loads((root / "data" / "train" / "filter_cap.json").read_text())["annotations"]]
    texts = conversation_texts(captions, load_instructions(REPO / "prompts" / "alignment.txt"), random.Random(0))
    write_tiny_llm(root / "llm", texts, seed=0)
    return {
        "root": root,
        "train": root / "data" / "train",
        "val": root / "data" / "val",
        "encoder": root / "encoder",
        "swin_config": root / "encoder" / "swin_config.json",
        "llm": root / "llm",
        "prompts": REPO / "prompts" / "alignment.txt",
    }


def tiny_config(assets: dict, output_dir: Path, **run_overrides) -> dict:
    """A small stage-1 config dict over `assets` (override run keys with keyword arguments)."""
    run = {
        "output_dir": str(output_dir), "init_lr": 3e-3, "max_epoch": 1, "iters_per_epoch": 4,
        "batch_size_train": 4, "num_workers": 0, "log_freq": 1, "seed": 7, "sample_generations": 2,
        "max_new_tokens": 12, "weight_decay": 0.0,
        "lr_sched": {"name": "linear_warmup_cosine", "warmup_steps": 1, "warmup_lr": 1e-4, "min_lr": 1e-4},
    }
    run.update(run_overrides)
    return {
        "model": {
            "arch": "xraygpt",
            "encoder": {"checkpoint": str(assets["encoder"]), "swin_config": str(assets["swin_config"]), "projection_dim": 64},
            "llm": {"path": str(assets["llm"]), "dtype": "float32"},
            "prompt": {"max_txt_len": 64},
        },
        "datasets": {
            "mimic": {
                "root": str(assets["train"]),
                "eval_root": str(assets["val"]),
                "prompt_path": str(assets["prompts"]),
                "vis_processor": {"train": {"name": "medclip_image_eval", "image_size": 112},
                                  "eval": {"name": "medclip_image_eval", "image_size": 112}},
            }
        },
        "run": run,
    }


def write_yaml(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_model_factory(tiny_assets):
    """Builds a fresh tiny XrayGPT (seeded) from the shared assets."""
    from xraygpt import builders
    from xraygpt.config import validate
    from omegaconf import OmegaConf

    def make(seed: int = 0, **model_overrides):
        cfg = tiny_config(tiny_assets, tiny_assets["root"] / "unused")
        for key, value in model_overrides.items():
            if isinstance(value, dict):
                cfg["model"][key] = {**cfg["model"].get(key, {}), **value}
            else:
                cfg["model"][key] = value
        return builders.build_model(validate(OmegaConf.create(cfg)).model, seed)

    return make


def run_until_checkpoint_then_kill(cfg_path: Path, checkpoint: Path, timeout: float = 240) -> None:
    """Start train.py on `cfg_path` in a subprocess and SIGKILL it once `checkpoint` exists."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--cfg-path", str(cfg_path)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), f"the run never wrote {checkpoint}"


# A rank that dies by a signal (an intermittent SIGABRT of a 2-rank gloo launch under load has been seen
# once) prints every thread's Python stack and the C++ frames of a torch error, so the failing test's
# stderr says where it happened.
DIAGNOSTIC_ENV = {"PYTHONFAULTHANDLER": "1", "TORCH_SHOW_CPP_STACKTRACES": "1"}


def run_torchrun(script: Path, port: int, *args: str, env: dict | None = None):
    """`python -m torch.distributed.run --nproc-per-node 2 script args...` on the CPU (one OpenMP
    thread per rank) from the repository root; asserts it exits 0 and returns the CompletedProcess."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
         str(script), *args],
        cwd=REPO, env={**os.environ, **DIAGNOSTIC_ENV, "OMP_NUM_THREADS": "1", **(env or {})}, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def one_torch_thread():
    """One torch thread for tests of tiny models: they gain nothing from threads, and on a shared
    2-core machine two OpenMP threads fighting for busy cores made them up to 40x slower
    (measured); the previous count is restored afterwards.  Use with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def val_dataset(tiny_assets):
    """The tiny assets' 8-image validation split as evaluation reads it (112 px, instructions by key)."""
    from xraygpt.data.datasets import MixedDataset, build_openi
    from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval

    return MixedDataset([build_openi(str(tiny_assets["val"]), MedCLIPImageEval(112), CaptionProcessor(),
                                     prompt_path=str(tiny_assets["prompts"]))], seed=0)


def evaluate_split(model, dataset, out: Path, **settings) -> tuple[list[dict], dict]:
    """ReportEvaluator over `dataset` on the CPU (16 new tokens, no bootstrap): (predictions.jsonl rows,
    metrics.json's `generation`)."""
    from xraygpt.evaluation.evaluator import ReportEvaluator
    from xraygpt.models.generation import GenerationSettings

    evaluator = ReportEvaluator(model, str(out), generation=GenerationSettings(max_new_tokens=16), bootstrap_resamples=0,
                                progress=False, device="cpu", **settings)
    assert evaluator.run(dataset) is not None
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "metrics.json").read_text())["generation"]
