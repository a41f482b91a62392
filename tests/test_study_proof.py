"""scripts/study_proof.sh end to end on a tiny budget: the plumbing of the study proof, not its bars.

A small prepared folder (the session's tiny random encoder) stands in for `python -m xraygpt.embedded
prepare` (PREPARED=...), the study world is small (STUDY_PREPARE_ARGS) and every stage trains two steps;
the script must write the study world and its tiny LLM, train stages 0-2 from the shipped tiny_study
configs, generate the held-out studies four ways, ask stage 0's LLM the same studies with the slot words
(`study-stage0-check`) and print one line with the bars and that reading; stage 0 shows the
studies recorded without their prior (`study_world.NO_PRIOR_FRACTION`) without a prior slot, with their
comparison-free text, and study_metrics.json carries the comparisons written and the current-state accuracy.  The bars themselves
are measured by the full run (README, "Studies on the embedded default").
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from xraygpt.embedded import study_world
from xraygpt.embedded.study_proof import DEFINITIONS, MODES, STAGE0_READING_FILE

SEED = 4


@pytest.fixture(scope="module")
def prepared(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    shutil.copytree(tiny_assets["encoder"], root / "medclip_tiny")
    return root


def test_study_proof_script_runs_end_to_end(prepared, repo, tmp_path):
    out = tmp_path / "proof"
    env = {**os.environ, "PREPARED": str(prepared), "STUDY_PROOF_ROOT": str(out), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1",
           "STUDY_PREPARE_ARGS": "--num-train 12 --num-pool 6 --num-test 5 --encoder-steps 2",
           "STUDY_TRAIN_OPTIONS": "run.iters_per_epoch=2 run.max_epoch=1 run.batch_size_train=2 run.num_workers=0 "
                                  "run.sample_generations=1 run.max_new_tokens=4 run.log_freq=1",
           "STUDY_EVAL_ARGS": "--max-new-tokens 3"}
    proc = subprocess.run(["bash", str(repo / "scripts" / "study_proof.sh"), str(SEED)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seed_dir = out / f"seed_{SEED}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3, proc.stdout  # header, the seed, the verdict
    assert lines[1].startswith(str(seed_dir / "output" / "study" / "eval"))
    assert lines[-1].startswith("bars: lateral F1 >= 0.85")
    assert "the study proof took" in proc.stderr

    for stage in (0, 1, 2):
        records = [json.loads(x) for x in (seed_dir / "output" / "study" / f"stage{stage}" / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2]
    config = (seed_dir / "output" / "study" / "stage1" / "config.yaml").read_text()
    assert "use_prior: true" in config and "study/mimic/train" in config
    assert "checkpoint: study/medclip_tiny" in config  # the study encoder study-prepare wrote
    assert (seed_dir / "study" / "medclip_tiny" / "pytorch_model.bin").is_file()
    conversations = [json.loads(x) for x in (seed_dir / "study" / "stage0_train.jsonl").read_text().splitlines()]
    assert len(conversations) == 12 + 6
    alone = [c for c in conversations if c["turns"][0]["content"].count("</Img>") == 2]
    assert len(alone) == round(study_world.NO_PRIOR_FRACTION * 12) + round(study_world.NO_PRIOR_FRACTION * 6) > 0
    assert all(c["turns"][0]["content"].count("</Img>") == 3 for c in conversations if c not in alone)
    for c in alone:  # no prior slot, and the answer compares with nothing
        assert "Prior frontal" not in c["turns"][0]["content"] and "Lateral: <Img>" in c["turns"][0]["content"]
        states, _ = study_world.read_study_text(c["turns"][1]["content"])
        assert not set(states.values()) & set(study_world.COMPARISONS), c["turns"][1]["content"]

    eval_dir = seed_dir / "output" / "study" / "eval"
    metrics = json.loads((eval_dir / "study_metrics.json").read_text())
    rows = {}
    for mode in MODES:
        assert metrics[mode]["studies"] == 5 and metrics[mode]["change"]["pairs"] == 5 * 4
        assert 0 <= metrics[mode]["change"]["comparisons"] <= 5 * 4 and metrics[mode]["current"]["pairs"] == 5 * 4
        rows[mode] = [json.loads(x) for x in (eval_dir / f"predictions_{mode}.jsonl").read_text().splitlines()]
        assert [r["image_id"] for r in rows[mode]] == [f"test_{i:06d}" for i in range(1, 6)]
    assert metrics["definitions"] == DEFINITIONS and metrics["chance"] == study_world.CHANCE
    assert all(r["views"] == ["PA", "LATERAL", "prior PA"] for r in rows["image"])
    assert all(r["image_source"] == f"{r['image_id']}_prior_frontal" for r in rows["image"])
    assert all(r["views"] == ["PA", "prior PA"] for r in rows["frontal_only"])
    assert all(r["views"] == ["PA", "LATERAL"] and "Prior" not in r["instruction"] for r in rows["no_prior"])
    shuffled = rows["shuffled_prior"]
    assert all(r["image_source"].endswith("_prior_frontal") and r["image_source"] != f"{r['image_id']}_prior_frontal"
               for r in shuffled)
    assert len({r["image_source"] for r in shuffled}) == 5  # each prior shown once, to another study

    reading = json.loads((eval_dir / STAGE0_READING_FILE).read_text())  # study-stage0-check, text only
    assert set(reading) == {"image", "frontal_only", "no_prior", "definitions"}
    for mode in ("image", "frontal_only", "no_prior"):
        assert reading[mode]["studies"] == 5 and reading[mode]["change"]["pairs"] == 5 * 4
        assert 0 <= reading[mode]["lateral"]["macro_f1"] <= 1
    row = lines[1].split()
    assert row[8] == f"{reading['image']['lateral']['macro_f1']:.3f}" and row[9] == f"{reading['image']['change']['accuracy']:.3f}"
