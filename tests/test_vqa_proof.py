"""scripts/vqa_proof.sh end to end on a tiny budget: the plumbing of the VQA proof, not its bars.

A small prepared folder (synthetic sources in `prepare`'s layout with slots.json, and the
session's tiny random encoder) stands in for `python -m xraygpt.embedded prepare` (PREPARED=...),
and every stage trains two steps; the script must write the questions, train stages 0-2 from the
shipped tiny_vqa configs, answer the held-out questions three ways and print one line per
language.  The bars themselves are measured by the full run (README, "VQA on the embedded default").
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from xraygpt.embedded.dataset import generate_dataset
from xraygpt.embedded.vqa_proof import SOURCE_SEED_OFFSETS

SEED = 4


@pytest.fixture(scope="module")
def prepared(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    for source, offset in SOURCE_SEED_OFFSETS.items():
        generate_dataset(root / "data" / source, num_train=24, num_val=4, num_test=6, seed=SEED + offset,
                         image_size=112, slot_grid=7 if source == "mimic" else 0)
    shutil.copytree(tiny_assets["encoder"], root / "medclip_tiny")
    return root


def test_vqa_proof_script_runs_end_to_end(prepared, repo, tmp_path):
    out = tmp_path / "proof"
    env = {**os.environ, "PREPARED": str(prepared), "VQA_PROOF_ROOT": str(out), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1",
           "VQA_TRAIN_OPTIONS": "run.iters_per_epoch=2 run.max_epoch=1 run.batch_size_train=4 run.num_workers=0 "
                                "run.sample_generations=1 run.max_new_tokens=4 run.log_freq=1",
           "VQA_EVAL_ARGS": "--max-new-tokens 3"}
    proc = subprocess.run(["bash", str(repo / "scripts" / "vqa_proof.sh"), str(SEED)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seed_dir = out / f"seed_{SEED}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4, proc.stdout  # header, en, zh, the verdict
    assert lines[1].split()[1] == "en" and lines[2].split()[1] == "zh"
    assert lines[-1].startswith("bars: closed accuracy >= 0.9")
    assert "the VQA proof took" in proc.stderr

    for stage in (0, 1, 2):
        records = [json.loads(x) for x in (seed_dir / "output" / "vqa" / f"stage{stage}" / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2]
    config = (seed_dir / "output" / "vqa" / "stage1" / "config.yaml").read_text()
    assert "sample_ratio: 0.5" in config and "vqa/mimic" in config

    eval_dir = seed_dir / "output" / "vqa" / "eval"
    metrics = json.loads((eval_dir / "vqa_metrics.json").read_text())
    test_questions = sum(len(json.loads((seed_dir / "vqa" / source / "test.json").read_text()))
                         for source in SOURCE_SEED_OFFSETS)
    for mode in ("image", "shuffled", "blank"):
        assert metrics[mode]["num_scored"] == test_questions
        assert set(metrics[mode]["by_language"]) == {"en", "zh"}
        assert set(metrics[mode]["by_source"]) == {"vqa_mimic", "vqa_openi"}
        assert {"presence", "size", "side", "where", "abnormality"} <= set(metrics[mode]["by_kind"])
        rows = [json.loads(x) for x in (eval_dir / f"predictions_{mode}.jsonl").read_text().splitlines()]
        assert len(rows) == test_questions and all(r["vqa"]["language"] in ("en", "zh") for r in rows)
    rows = {mode: [json.loads(x) for x in (eval_dir / f"predictions_{mode}.jsonl").read_text().splitlines()]
            for mode in ("image", "shuffled", "blank")}
    assert all(r["image_source"] == r["image"] for r in rows["image"])
    assert all(r["image_source"] != r["image"] for r in rows["shuffled"])  # every question moved to another image
    assert len({r["image"] for r in rows["image"]}) < len(rows["image"])  # though images hold several questions
    assert {r["image_source"] for r in rows["blank"]} == {"blank"}
    assert (seed_dir / "vqa" / "llm_tiny" / "tokenizer.model").is_file()

    # stage 0's own reading: every closed held-out question of vqa/mimic, asked with its slot words
    reading = json.loads((eval_dir / "stage0_reading.json").read_text())
    closed = [e for e in json.loads((seed_dir / "vqa" / "mimic" / "test.json").read_text()) if e["answer_type"] == "CLOSED"]
    assert reading["closed"]["count"] == len(closed) > 0
    assert sum(v["count"] for langs in reading["by_kind"].values() for v in langs.values()) == len(closed)
    assert set(reading["by_kind"]) == {f"{e['kind']}/{e['finding']}" for e in closed}
    assert all(0.0 <= v["accuracy"] <= 1.0 for langs in reading["by_kind"].values() for v in langs.values())
