"""The benchmark scripts run at their smallest settings and print their tables (figures are not checked:
they are timings; what is checked is that each script runs, prints every row, and refuses what it cannot do)."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, SHARED_OPENI

needs_openi = pytest.mark.skipif(not SHARED_OPENI.is_dir(), reason="../shared/data/openi-sample is not present")


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)


def load_script(name: str):
    """A benchmark script as a module (its `main(argv)` runs in this process)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_prints_both_modes_and_the_vllm_row():
    proc = bench("generate.py", "--images", "4", "--batch-size", "2", "--rounds", "1", "--max-new-tokens", "4",
                 "--single-images", "3", "--vllm")
    assert proc.returncode == 0, proc.stderr
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(  # on CUDA a peak-memory column follows
        r"^(one at a time|batched \(2\))\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s+([\d.]+)x(\s+[\d.]+)?$",
        proc.stdout, re.M)}
    assert set(rows) == {"one at a time", "batched (2)"}, proc.stdout
    assert rows["one at a time"][0] == "3" and rows["batched (2)"][0] == "4"
    assert all(float(r[2]) > 0 for r in rows.values())  # output tokens were counted
    assert "batched (2): greedy outputs identical to one at a time for 3 of 3 images" in proc.stdout
    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        assert re.search(r"^vllm\s+skipped: evaluation.backend vllm needs", proc.stdout, re.M)
    else:
        assert re.search(r"^vllm\s+4\s", proc.stdout, re.M)


@pytest.mark.parametrize("args, needle, without_cuda", [
    (["--size", "7b"], "--size 7b needs a CUDA GPU", True),
    (["--size", "7b", "--vllm"], "--vllm needs an LLM folder", False),
])
def test_generate_refuses_what_it_cannot_run(args, needle, without_cuda, capsys):
    if without_cuda and torch.cuda.is_available():
        pytest.skip("checks the refusal of a machine without CUDA")
    assert load_script("generate").main(args) == 2
    assert needle in capsys.readouterr().err


def test_train_step_prints_every_mode_and_equal_losses_from_cache_and_images():
    proc = bench("train_step.py", "--size", "tiny", "--steps", "1", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    for mode in ("padded", "grouped", "images"):
        assert re.search(rf"^{mode}\s+[\d.]+\s+\d+\s+[\d.]+", proc.stdout, re.M), proc.stdout
    assert re.search(r"max \|per-sample loss difference\|: fp32 features 0\.00e\+00", proc.stdout)
    assert "counted FLOPs: Swin-T forward" in proc.stdout


def test_train_step_runs_on_synthetic_summaries_and_refuses_7b_on_the_cpu(tmp_path, capsys):
    proc = bench("train_step.py", "--size", "tiny", "--steps", "1", "--batch-size", "2",
                 "--captions", str(tmp_path / "absent.json"))
    assert proc.returncode == 0, proc.stderr
    assert "summaries (synthetic)" in proc.stdout  # the tokenizer fits the synthetic summaries' small vocabulary
    assert load_script("train_step").main(["--size", "7b", "--device", "cpu"]) == 2
    assert "--size 7b needs a CUDA GPU" in capsys.readouterr().err


@needs_openi
@pytest.mark.parametrize("script, columns", [("data.py", ("files", "mimic-jpg", "cache")),
                                             ("dataloader_throughput.py", ("json+files", "shards"))])
def test_data_benchmarks_print_every_pipeline(script, columns):
    proc = bench(script, "--images", "8", "--rounds", "1", "--workers", "0", "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("round"))
    assert header.split()[1:] == list(columns)
    assert re.search(r"^median(\s+[\d.]+){%d}" % len(columns), proc.stdout, re.M), proc.stdout
