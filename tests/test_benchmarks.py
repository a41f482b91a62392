"""The benchmark scripts run at their smallest settings and print their tables (figures are not checked:
they are timings; what is checked is that each script runs, prints every row, and refuses what it cannot do)."""

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


def test_generate_prints_both_modes_and_skips_vllm_cleanly():
    proc = bench("generate.py", "--images", "4", "--batch-size", "2", "--rounds", "1", "--max-new-tokens", "4",
                 "--single-images", "3", "--vllm")
    assert proc.returncode == 0, proc.stderr
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^(one at a time|batched \(2\))\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s+([\d.]+)x$", proc.stdout, re.M)}
    assert set(rows) == {"one at a time", "batched (2)"}, proc.stdout
    assert rows["one at a time"][0] == "3" and rows["batched (2)"][0] == "4"
    assert all(float(r[2]) > 0 for r in rows.values())  # output tokens were counted
    assert re.search(r"^vllm\s+skipped: evaluation.backend vllm needs vLLM", proc.stdout, re.M)
    assert "batched (2): greedy outputs identical to one at a time for 3 of 3 images" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine without CUDA")
@pytest.mark.parametrize("args, needle", [
    (["--size", "7b"], "--size 7b needs a CUDA GPU"),
    (["--size", "7b", "--vllm"], "--vllm needs an LLM folder"),
])
def test_generate_refuses_what_it_cannot_run(args, needle):
    proc = bench("generate.py", *args)
    assert proc.returncode == 2 and needle in proc.stderr.strip().splitlines()[-1]


def test_train_step_prints_every_mode_and_equal_losses_from_cache_and_images():
    proc = bench("train_step.py", "--size", "tiny", "--steps", "1", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    for mode in ("padded", "grouped", "images"):
        assert re.search(rf"^{mode}\s+[\d.]+\s+\d+\s+[\d.]+", proc.stdout, re.M), proc.stdout
    assert re.search(r"max \|per-sample loss difference\|: fp32 features 0\.00e\+00", proc.stdout)
    assert "counted FLOPs: Swin-T forward" in proc.stdout
    proc = bench("train_step.py", "--size", "7b", "--device", "cpu")  # refused on any machine: CPU asked for
    assert proc.returncode == 2 and "--size 7b needs a CUDA GPU" in proc.stderr


@needs_openi
@pytest.mark.parametrize("script, columns", [("data.py", ("files", "mimic-jpg", "cache")),
                                             ("dataloader_throughput.py", ("json+files", "shards"))])
def test_data_benchmarks_print_every_pipeline(script, columns):
    proc = bench(script, "--images", "8", "--rounds", "1", "--workers", "0", "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("round"))
    assert header.split()[1:] == list(columns)
    assert re.search(r"^median(\s+[\d.]+){%d}" % len(columns), proc.stdout, re.M), proc.stdout
