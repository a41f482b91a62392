"""evaluate.py end to end on the tiny model: outputs, resume, torchrun, compare mode, bad input, configs."""

import csv
import json
import shutil
import sys

import pytest
import torch
import yaml

import evaluate
from conftest import REPO, run_torchrun, tiny_config, write_yaml
from xraygpt.training.checkpoint import atomic_save

# evaluation configs (demo and serve configs, in the same folder, are checked by test_config.py)
EVAL_YAMLS = sorted(p for p in (REPO / "eval_configs").glob("*.yaml") if not p.name.startswith(("demo", "serve")))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_model_factory, tmp_path_factory):
    """A trained-projection checkpoint for the tiny model, as the runner writes it."""
    model = tiny_model_factory(seed=1)
    torch.nn.init.normal_(model.projector.proj.weight, std=0.05)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint_last.pt"
    atomic_save({"model": model.trainable_state_dict(), "step": 1}, path)
    return path


def eval_config(assets, ckpt, out, split=None, **evaluation) -> dict:
    model = tiny_config(assets, out)["model"]
    model["ckpt"] = str(ckpt)
    dataset = {"root": str(split or assets["val"]), "prompt_path": str(assets["prompts"]),
               "vis_processor": {"eval": {"name": "medclip_image_eval", "image_size": 112}}}
    settings = {"output_dir": str(out), "batch_size": 4, "max_new_tokens": 8, "bootstrap_resamples": 20,
                "progress": False, **evaluation}
    return {"model": model, "datasets": {"openi": dataset}, "evaluation": settings}


def run_main(cfg, path, capsys, options=()):
    argv = ["--cfg-path", str(write_yaml(cfg, path))] + (["--options", *options] if options else [])
    code = evaluate.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def read_rows(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_run(tiny_assets, checkpoint, tmp_path_factory):
    """One evaluation of the 8-image split through evaluate.main: (output_dir, stdout)."""
    out = tmp_path_factory.mktemp("eval") / "out"
    cfg_path = write_yaml(eval_config(tiny_assets, checkpoint, out), out.parent / "eval.yaml")
    import io
    from contextlib import redirect_stdout

    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert evaluate.main(["--cfg-path", str(cfg_path)]) == 0
    return out, stdout.getvalue()


def test_one_command_writes_every_output(single_run, tiny_assets):
    out, stdout = single_run
    ids = [a["image_id"] for a in json.loads((tiny_assets["val"] / "filter_cap.json").read_text())["annotations"]]
    rows = read_rows(out)
    assert [r["image_id"] for r in rows] == ids
    assert all({"image_id", "report_id", "instruction", "prediction", "reference"} <= set(r) for r in rows)
    assert all("<ImageHere>" in r["instruction"] and r["reference"] for r in rows)
    for name, field in (("predictions.csv", "prediction"), ("references.csv", "reference")):
        with (out / name).open(newline="") as f:
            table = list(csv.reader(f))
        assert table[0] == ["study_id", "report"]
        assert table[1:] == [[r["image_id"], r[field]] for r in rows]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_scored"] == 8 and metrics["skipped"]["count"] == 0
    assert {"ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU-4", "CIDEr-D", "CE micro F1 (14)"} <= set(metrics["headline"])
    assert metrics["confidence_intervals"]["resamples"] == 20
    assert set(metrics["clinical_efficacy"]) >= {"labeler", "positive_only", "uncertain_as_positive"}
    assert all(v.startswith("skipped: ") for v in metrics["plugins"].values())
    assert metrics["generation"]["max_new_tokens"] == 8 and metrics["generation"]["num_beams"] == 1
    assert "ROUGE-L" in stdout and "95% CI" in stdout and "8 samples scored" in stdout
    assert not list(out.glob("predictions.part*"))


def test_resume_skips_predicted_ids_and_reads_a_killed_runs_parts(tiny_assets, checkpoint, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    ids = [a["image_id"] for a in json.loads((tiny_assets["val"] / "filter_cap.json").read_text())["annotations"]]
    cfg = eval_config(tiny_assets, checkpoint, out)
    # what a run killed mid-batch leaves: its fingerprint.json (written before generating), a
    # finished row and a half-written line in a rank's part file
    assert run_main(cfg, tmp_path / "c.yaml", capsys)[0] == 0
    for name in ("predictions.jsonl", "predictions.csv", "references.csv", "metrics.json"):
        (out / name).unlink()
    (out / "predictions.part1.jsonl").write_text(
        json.dumps({"image_id": ids[2], "prediction": "MARKER", "reference": "ref", "instruction": "i"}) + "\n"
        + '{"image_id": "' + ids[3] + '", "predic')
    caplog.set_level("INFO")
    assert run_main(cfg, tmp_path / "c.yaml", capsys)[0] == 0
    assert "8 images in the split, 1 already predicted" in caplog.text
    rows = read_rows(out)
    assert [r["image_id"] for r in rows] == ids and rows[2]["prediction"] == "MARKER"
    assert not list(out.glob("predictions.part*"))
    caplog.clear()
    assert run_main(cfg, tmp_path / "c.yaml", capsys)[0] == 0
    assert "8 already predicted" in caplog.text and "0 to generate" in caplog.text
    assert read_rows(out) == rows and (out / "metrics.json").is_file()
    assert json.loads((out / "metrics.json").read_text())["generation"]["final_batch_size"] is None


def test_torchrun_two_processes_match_one(single_run, tiny_assets, checkpoint, tmp_path):
    out = tmp_path / "two"
    cfg_path = write_yaml(eval_config(tiny_assets, checkpoint, out, batch_size=3), tmp_path / "two.yaml")
    proc = run_torchrun(REPO / "evaluate.py", 29541, "--cfg-path", str(cfg_path))
    assert proc.stdout.count("ROUGE-1") == 1  # the table comes from rank 0 only
    assert read_rows(out) == read_rows(single_run[0])
    assert json.loads((out / "metrics.json").read_text())["headline"] == \
        json.loads((single_run[0] / "metrics.json").read_text())["headline"]


def test_compare_mode(single_run, tmp_path, capsys):
    rows = read_rows(single_run[0])
    other = tmp_path / "blank" / "predictions.jsonl"
    other.parent.mkdir()
    edited = [{**r, "prediction": ""} if k % 2 else r for k, r in enumerate(rows[:6])]
    other.write_text("".join(json.dumps(r) + "\n" for r in edited) + "{broken\n")
    code = evaluate.main(["compare", str(single_run[0] / "predictions.jsonl"), str(other), "--names", "image", "ablation"])
    out = capsys.readouterr().out
    assert code == 0
    assert "compared on the 6 ids present in every file" in out
    header = out.splitlines()[1].split()
    assert header == ["metric", "image", "ablation"]
    empty = [line.split() for line in out.splitlines() if line.startswith("empty predictions")][0]
    skipped = [line.split() for line in out.splitlines() if line.startswith("skipped")][0]
    assert empty[-2:] == ["0", "3"] and skipped[-2:] == ["0", "1"]
    assert evaluate.main(["compare", str(other)]) == 2
    assert "at least two" in capsys.readouterr().err
    assert evaluate.main(["compare", str(other), str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err


def _fails(code, err, needle, out_dir):
    assert code == 2 and err and err[-1].startswith("error: ") and needle in err[-1], err
    assert not out_dir.exists(), "nothing may be written to output_dir on bad input"


def test_missing_checkpoint(tiny_assets, tmp_path, capsys):
    cfg = eval_config(tiny_assets, tmp_path / "stage2" / "checkpoint_last.pt", tmp_path / "out")
    _fails(*run_main(cfg, tmp_path / "c.yaml", capsys)[::2], "stage2/checkpoint_last.pt does not exist", tmp_path / "out")
    cfg["model"]["ckpt"] = None
    _fails(*run_main(cfg, tmp_path / "c.yaml", capsys)[::2], "model.ckpt is not set", tmp_path / "out")


def test_split_without_usable_images(tiny_assets, checkpoint, tmp_path, capsys):
    split = tmp_path / "split"
    (split / "image").mkdir(parents=True)
    shutil.copy(tiny_assets["val"] / "filter_cap.json", split / "filter_cap.json")
    cfg = eval_config(tiny_assets, checkpoint, tmp_path / "out", split=split)
    _fails(*run_main(cfg, tmp_path / "c.yaml", capsys)[::2], "no usable sample", tmp_path / "out")


@pytest.mark.parametrize("options,needle", [
    (["evaluation.batch_sise=2"], "evaluation.batch_size"),
    (["datasets.openi.eval_root=somewhere"], "datasets.openi.eval_root is not read by evaluate.py"),
    (["evaluation.phrases_dir=no_such_phrases"], "no_such_phrases"),
    (["evaluation.image_mode=upside_down"], "evaluation.image_mode must be one of image, shuffled, blank"),
    (["evaluation.backend=tgi"], "evaluation.backend must be one of transformers, vllm"),
])
def test_config_errors(tiny_assets, checkpoint, tmp_path, capsys, options, needle):
    cfg = eval_config(tiny_assets, checkpoint, tmp_path / "out")
    _fails(*run_main(cfg, tmp_path / "c.yaml", capsys, options)[::2], needle, tmp_path / "out")


def test_vllm_backend_without_vllm_fails_before_writing(tiny_assets, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # not importable, even where it is installed
    cfg = eval_config(tiny_assets, checkpoint, tmp_path / "out")
    _fails(*run_main(cfg, tmp_path / "c.yaml", capsys, ["evaluation.backend=vllm"])[::2],
           "evaluation.backend vllm needs vLLM, which is not installed", tmp_path / "out")


def test_undecodable_image_is_skipped_and_counted_report_ids_are_read(tiny_assets, checkpoint, tmp_path, capsys):
    split = tmp_path / "split"
    shutil.copytree(tiny_assets["val"], split)
    broken = sorted((split / "image").glob("*.png"))[3]
    broken.write_bytes(broken.read_bytes()[:200])  # the header reads, the pixels do not
    first = sorted(p.stem for p in (split / "image").glob("*.png"))[:2]
    (split / "reports.json").write_text(json.dumps({"r7": {"image_ids": first, "summary": "s"}}))
    out = tmp_path / "out"
    code, stdout, _ = run_main(eval_config(tiny_assets, checkpoint, out, split=split), tmp_path / "c.yaml", capsys)
    assert code == 0 and "1 skipped (1 image does not decode)" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped"] == {"count": 1, "by_reason": {"image does not decode": [broken.stem]}}
    rows = read_rows(out)
    assert metrics["num_scored"] == 7 and broken.stem not in {r["image_id"] for r in rows}
    assert {r["image_id"]: r["report_id"] for r in rows if r["report_id"]} == {i: "r7" for i in first}


@pytest.mark.parametrize("path", EVAL_YAMLS, ids=lambda p: p.name)
def test_every_eval_config_validates(path):
    cfg = evaluate.load_eval_config(path)
    assert cfg.model.arch == "xraygpt" and cfg.model.ckpt and cfg.evaluation.output_dir
    assert "run" not in cfg and all(ds.root for ds in cfg.datasets.values())


def test_tiny_eval_reads_the_embedded_stage2_checkpoint_and_test_split():
    raw = yaml.safe_load((REPO / "eval_configs" / "tiny_eval.yaml").read_text())
    assert raw["model"]["ckpt"] == "output/embedded/stage2/checkpoints/checkpoint_last.pt"
    assert raw["datasets"]["openi"]["root"] == "dataset/embedded/data/openi/test"


def test_tiny_eval_and_demo_build_the_model_stage2_trained():
    """Their model sections are tiny_stage2's, defaults filled in, but the checkpoint: a key that
    differs, e.g. projector_norm, would refuse the stage-2 checkpoint or change the model."""
    from omegaconf import OmegaConf

    from xraygpt.config import load_config
    from xraygpt.ui.settings import load_demo_config

    def model_section(cfg):
        model = OmegaConf.to_container(cfg.model)
        model.pop("ckpt")
        return model

    trained = model_section(load_config(REPO / "train_configs" / "tiny_stage2.yaml"))
    assert model_section(evaluate.load_eval_config(REPO / "eval_configs" / "tiny_eval.yaml")) == trained
    assert model_section(load_demo_config(REPO / "eval_configs" / "demo_tiny.yaml")) == trained


def test_eval_readme_documents_every_evaluation_key():
    readme = (REPO / "eval_configs" / "README.md").read_text()
    cfg = evaluate.load_eval_config(REPO / "eval_configs" / "tiny_eval.yaml")
    missing = [key for key in cfg.evaluation if f"`{key}`" not in readme]
    assert not missing, f"eval_configs/README.md does not document: {missing}"


def test_a_finished_folder_refuses_another_run_instead_of_reporting_stale_metrics(tiny_assets, checkpoint, single_run,
                                                                                   tmp_path, capsys):
    """Evaluating into a finished folder with another checkpoint and image_mode=blank logged "8 already
    predicted, 0 to generate" and wrote the old run's scores under the new settings."""
    out = tmp_path / "out"
    shutil.copytree(single_run[0], out)
    before = (out / "metrics.json").read_bytes()
    other = tmp_path / "other.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    atomic_save(state, other)
    code, _, err = run_main(eval_config(tiny_assets, other, out, image_mode="blank"), tmp_path / "c.yaml", capsys)
    assert code == 2 and not any("Traceback" in line for line in err)
    assert err[-1].startswith(f"error: {out} holds outputs of another run (its fingerprint.json differs in ")
    assert "generation.image_mode" in err[-1] and "model.trainable_sha256" in err[-1] and "evaluation.restart" in err[-1]
    assert (out / "metrics.json").read_bytes() == before
    # the same run again is a resume: nothing to generate, same rows
    assert run_main(eval_config(tiny_assets, checkpoint, out), tmp_path / "c.yaml", capsys)[0] == 0
    assert read_rows(out) == read_rows(single_run[0])
    # restart: the old outputs go and the new run's are written
    code, _, _ = run_main(eval_config(tiny_assets, other, out, image_mode="blank", restart=True), tmp_path / "c.yaml", capsys)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["generation"]["image_mode"] == "blank" and metrics["generation"]["final_batch_size"] == 4
    assert json.loads((out / "fingerprint.json").read_text())["generation"]["image_mode"] == "blank"
    # a folder with outputs but no fingerprint (another tool, an older version) is refused too
    (out / "fingerprint.json").unlink()
    code, _, err = run_main(eval_config(tiny_assets, other, out, image_mode="blank"), tmp_path / "c.yaml", capsys)
    assert code == 2 and "has no readable fingerprint.json" in err[-1]


def test_a_torn_part_line_never_swallows_the_next_row(tiny_assets, checkpoint, single_run, tmp_path, capsys):
    """A part file whose last line was torn got the next run's first row appended onto it: both were
    dropped, 7 of 8 images scored, "0 skipped", one id silently missing."""
    out = tmp_path / "out"
    cfg = eval_config(tiny_assets, checkpoint, out, batch_size=8)
    assert run_main(cfg, tmp_path / "c.yaml", capsys)[0] == 0
    rows = read_rows(out)
    for name in ("predictions.jsonl", "predictions.csv", "references.csv", "metrics.json"):
        (out / name).unlink()
    # a killed run: rows 0-5 written whole, row 6 torn mid-line, row 7 never reached
    (out / "predictions.part0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6])
                                                 + json.dumps(rows[6])[:25])
    assert run_main(cfg, tmp_path / "c.yaml", capsys)[0] == 0
    assert read_rows(out) == rows
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped"]["count"] == 0 and len(read_rows(out)) == 8


def test_merge_refuses_to_score_an_incomplete_split(tmp_path):
    from xraygpt.evaluation.predictions import IncompleteEvaluation, PredictionStore

    store = PredictionStore(tmp_path, 0)
    store.append([{"image_id": "a", "prediction": "x", "reference": "y"}, {"image_id": "b", "skipped": "bad image"}])
    with pytest.raises(IncompleteEvaluation, match=r"1 of 3 images of the split have neither a prediction nor a skip "
                                                   r"reason .* \(first: c\); run the evaluation again"):
        store.merge(["a", "b", "c"])
    assert [json.loads(x)["image_id"] for x in (tmp_path / "predictions.jsonl").read_text().splitlines()] == ["a"]
