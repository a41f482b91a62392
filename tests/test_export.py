"""One folder per trained model: python -m xraygpt.export, XrayGPT.from_pretrained, --model FOLDER, console scripts."""

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import demo
import evaluate
from conftest import REPO, evaluate_split, tiny_config, write_yaml
from xraygpt import builders
from xraygpt.export import main as export_main
from xraygpt.models import model_folder
from xraygpt.models.model_folder import ModelFolderError
from xraygpt.models.xraygpt import XrayGPT
from xraygpt.runtime import DistInfo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METRICS = {"headline": {"rouge_l": 0.2345, "bleu_4": 0.0712}, "confidence_intervals": {"rouge_l": [0.2, 0.27]},
           "num_scored": 8}


@pytest.fixture(scope="module")
def run(tiny_assets, tmp_path_factory) -> Path:
    """One tiny stage-1 run (2 steps), trained in this process, with a metrics.json beside it."""
    out = tmp_path_factory.mktemp("export_run") / "stage1"
    train_in_process(write_yaml(tiny_config(tiny_assets, out, iters_per_epoch=2, max_epoch=1), out.parent / "s1.yaml"))
    (out / "metrics.json").write_text(json.dumps(METRICS))
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    """The run exported with the LLM copied."""
    out = tmp_path_factory.mktemp("exported") / "xraygpt-tiny"
    assert export_main(["--run", str(run), "--out", str(out)]) == 0
    return out


def refused(capsys, argv) -> str:
    """export main's one-line error for `argv` (asserting exit status 2 and a single line)."""
    capsys.readouterr()  # what earlier calls logged
    assert export_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def run_copy(run: Path, dest: Path, **model_changes) -> Path:
    """A copy of the run folder whose config.yaml has `model_changes` ({"llm.path": ...}) applied."""
    shutil.copytree(run, dest)
    cfg = yaml.safe_load((dest / "config.yaml").read_text())
    for key, value in model_changes.items():
        section, name = key.split(".")
        cfg["model"][section][name] = value
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def train_in_process(cfg_path: Path) -> None:
    _, cfg = builders.load_job_config(cfg_path, job="training")
    model = builders.build_model(cfg.model, cfg.run.seed)
    train_set = builders.build_datasets(cfg.datasets, cfg.run.seed, "train", model.prompt_tokenizer,
                                        model.image_preprocessing)
    builders.build_runner(cfg, model, train_set, None, DistInfo()).train()


def test_folder_layout_and_relative_config(exported, tiny_assets):
    names = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert {"model.yaml", "projection.safetensors", "encoder/model.safetensors", "encoder/swin_config.json",
            "llm/config.json", "export.json", "metrics.json", "README.md"} <= names
    assert not (exported / "llm_reference.json").exists()
    text = (exported / "model.yaml").read_text()
    assert str(tiny_assets["root"]) not in text  # every path relative to the folder
    section = yaml.safe_load(text)
    assert (section["ckpt"], section["llm"]["path"]) == ("projection.safetensors", "llm")
    assert section["encoder"] == {"checkpoint": "encoder/model.safetensors", "swin_config": "encoder/swin_config.json",
                                  "output": "patch", "projection_dim": 64}
    assert not list(exported.parent.glob(".*tmp"))  # no temporary folder left


def test_copied_folder_loads_alone_and_generates_the_runs_text(run, exported, tiny_assets, val_dataset, tmp_path):
    """The acceptance test: an exported folder copied elsewhere, with the run, its encoder and its LLM
    moved away, gives the same greedy text as the model built from the run's config + checkpoint."""
    ckpt = run / "checkpoints" / "checkpoint_last.pt"
    _, cfg = builders.load_job_config(run / "config.yaml", [f"model.ckpt={ckpt}"], job="training")
    reference = builders.build_model(cfg.model).eval()
    expected, _ = evaluate_split(reference, val_dataset, tmp_path / "reference")

    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(exported, copy)
    moved = [run, tiny_assets["encoder"], tiny_assets["llm"]]
    for path in moved:
        path.rename(path.with_name(path.name + ".moved"))
    try:
        loaded = XrayGPT.from_pretrained(copy)
        got, _ = evaluate_split(loaded, val_dataset, tmp_path / "loaded")
    finally:
        for path in moved:
            path.with_name(path.name + ".moved").rename(path)
    assert [r["prediction"] for r in got] == [r["prediction"] for r in expected]
    assert any(r["prediction"] for r in got)  # the text compared is not empty everywhere
    assert not loaded.training
    assert torch.equal(loaded.projector.proj.weight, reference.projector.proj.weight)
    fresh = builders.build_model(OmegaConf.merge(cfg.model, {"ckpt": None}))  # the projection before training
    assert not torch.equal(fresh.projector.proj.weight, loaded.projector.proj.weight)
    assert str(copy) in loaded.llm.config._name_or_path  # the copy's LLM, not the original


def test_model_card_lists_the_runs_data_settings_and_metrics(exported, run, tiny_assets):
    card = (exported / "README.md").read_text()
    n_train = len(json.loads((tiny_assets["train"] / "filter_cap.json").read_text())["annotations"])
    assert "| mimic | xraygpt | " + str(tiny_assets["train"]) in card
    assert f"{n_train} samples" in card and str(tiny_assets["val"]) in card
    assert "Trained for 2 steps" in card and "init_lr" in card and "0.003" in card
    assert "| rouge_l | 0.2345 | 0.2 - 0.27 |" in card and "Scored on 8 images" in card
    assert "Research tool, not a diagnosis" in card and "What it cannot do" in card
    assert str(tiny_assets["llm"]) in card and "copied into `llm/`" in card
    assert json.loads((exported / "metrics.json").read_text()) == METRICS


def test_metrics_flag_and_a_run_without_metrics(run, tmp_path, capsys):
    bare = run_copy(run, tmp_path / "bare")
    (bare / "metrics.json").unlink()
    assert export_main(["--run", str(bare), "--out", str(tmp_path / "a"), "--llm-reference"]) == 0
    assert "No metrics.json" in (tmp_path / "a" / "README.md").read_text()
    assert not (tmp_path / "a" / "metrics.json").exists()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"headline": {"cider_d": 1.5}}))
    assert export_main(["--run", str(bare), "--out", str(tmp_path / "b"), "--llm-reference", "--metrics", str(other)]) == 0
    assert "| cider_d | 1.5 |" in (tmp_path / "b" / "README.md").read_text()
    assert str(tmp_path / "missing.json") in refused(capsys, ["--run", str(bare), "--out", str(tmp_path / "c"),
                                                              "--metrics", str(tmp_path / "missing.json")])
    (tmp_path / "torn.json").write_text('{"headline": {"rou')
    assert f"metrics file {tmp_path / 'torn.json'} cannot be read as JSON" in refused(
        capsys, ["--run", str(bare), "--out", str(tmp_path / "c"), "--metrics", str(tmp_path / "torn.json")])
    assert not (tmp_path / "c").exists()


def test_llm_reference_is_checked_at_load(run, tiny_assets, tmp_path):
    llm = tmp_path / "llm"
    shutil.copytree(tiny_assets["llm"], llm)
    source = run_copy(run, tmp_path / "run", **{"llm.path": str(llm)})
    out = tmp_path / "model"
    assert export_main(["--run", str(source), "--out", str(out), "--llm-reference"]) == 0
    assert not (out / "llm").exists()
    recorded = json.loads((out / "llm_reference.json").read_text())["sha256"]
    assert {"config.json", "model.safetensors"} <= set(recorded)
    assert builders.model_section_from_folder(out)["llm"]["path"] == str(llm.resolve())
    assert "referenced, not copied" in (out / "README.md").read_text()

    config = json.loads((llm / "config.json").read_text())
    (llm / "config.json").write_text(json.dumps({**config, "note": "changed"}))
    with pytest.raises(ModelFolderError, match=r"config\.json has changed since the export") as err:
        XrayGPT.from_pretrained(out)
    assert len(str(err.value).splitlines()) == 1
    (llm / "config.json").write_text(json.dumps(config))  # json.dumps of the same dict: not the original bytes
    with pytest.raises(ModelFolderError, match="config.json has changed"):
        builders.model_section_from_folder(out)

    shutil.rmtree(llm)
    shutil.copytree(tiny_assets["llm"], llm)
    builders.model_section_from_folder(out)  # the original bytes again: accepted
    (llm / "extra.safetensors").write_bytes(b"0")
    with pytest.raises(ModelFolderError, match="did not record: extra.safetensors"):
        builders.model_section_from_folder(out)
    shutil.rmtree(llm)
    with pytest.raises(ModelFolderError, match=f"LLM folder {llm} referenced by .* does not exist"):
        builders.model_section_from_folder(out)


def test_a_sharded_fsdp_run_exports_its_trained_weights(tiny_assets, tmp_path):
    """run.strategy fsdp writes a sharded checkpoints/checkpoint_last folder, read through the model."""
    from xraygpt.training.sharded_checkpoint import read_sharded_weights

    out = tmp_path / "fsdp"
    train_in_process(write_yaml(tiny_config(tiny_assets, out, strategy="fsdp", iters_per_epoch=2, sample_generations=0),
                                tmp_path / "fsdp.yaml"))
    sharded = out / "checkpoints" / "checkpoint_last"
    assert sharded.is_dir() and not (out / "checkpoints" / "checkpoint_last.pt").exists()
    assert export_main(["--run", str(out), "--out", str(tmp_path / "model"), "--llm-reference"]) == 0
    loaded = XrayGPT.from_pretrained(tmp_path / "model")
    expected = read_sharded_weights(sharded, loaded.trainable_state_dict())
    assert set(expected) == set(loaded.trainable_state_dict())
    assert all(torch.equal(loaded.trainable_state_dict()[k], v) for k, v in expected.items())
    assert json.loads((tmp_path / "model" / "export.json").read_text())["checkpoint"] == str(sharded)


def test_refusals_name_the_path(run, tmp_path, capsys):
    out = str(tmp_path / "out")
    missing = tmp_path / "no-run"
    assert str(missing) in refused(capsys, ["--run", str(missing), "--out", out])
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert f"{empty / 'config.yaml'} is missing" in refused(capsys, ["--run", str(empty), "--out", out])

    no_ckpt = run_copy(run, tmp_path / "no-ckpt")
    shutil.rmtree(no_ckpt / "checkpoints")
    assert f"{no_ckpt / 'checkpoints' / 'checkpoint_last.pt'} is missing" in refused(capsys, ["--run", str(no_ckpt), "--out", out])

    nowhere = tmp_path / "nowhere"
    no_encoder = run_copy(run, tmp_path / "no-encoder", **{"encoder.checkpoint": str(nowhere)})
    line = refused(capsys, ["--run", str(no_encoder), "--out", out])
    assert str(nowhere) in line and "model.encoder.checkpoint" in line
    no_llm = run_copy(run, tmp_path / "no-llm", **{"llm.path": str(nowhere)})
    line = refused(capsys, ["--run", str(no_llm), "--out", out])
    assert f"LLM folder {nowhere} does not exist" in line and "model.llm.path" in line
    assert not Path(out).exists()


def test_out_in_use_is_refused_unless_forced(run, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    assert export_main(["--run", str(run), "--out", str(out), "--llm-reference"]) == 0  # empty: fine
    assert (out / "model.yaml").is_file()
    (out / "mine.txt").write_text("keep")
    assert f"--out {out} exists and is not empty" in refused(capsys, ["--run", str(run), "--out", str(out)])
    assert (out / "mine.txt").read_text() == "keep"
    assert export_main(["--run", str(run), "--out", str(out), "--force", "--llm-reference"]) == 0
    assert not (out / "mine.txt").exists() and (out / "model.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left beside it
    for what, inside in (("run", run), ("run", run.parent), ("checkpoint", run / "checkpoints")):
        line = refused(capsys, ["--run", str(run), "--out", str(inside), "--force"])  # never deletes what it reads
        assert f"--out {inside} holds the {what} it exports" in line
    assert (run / "checkpoints" / "checkpoint_last.pt").is_file()


def test_a_failed_export_leaves_nothing_and_keeps_the_old_folder(run, tmp_path, capsys, monkeypatch):
    def full_disk(*_, **__):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_folder.shutil, "copytree", full_disk)
    out = tmp_path / "model"
    assert "No space left" in refused(capsys, ["--run", str(run), "--out", str(out)])
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "old.txt").write_text("old")
    refused(capsys, ["--run", str(run), "--out", str(out), "--force"])
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (out / "old.txt").read_text() == "old"


def test_a_folder_that_is_not_an_export_names_the_missing_file(exported, tmp_path):
    with pytest.raises(ModelFolderError, match=f"{tmp_path / 'model.yaml'} is missing"):
        XrayGPT.from_pretrained(tmp_path)
    with pytest.raises(ModelFolderError, match=f"model folder {tmp_path / 'absent'} does not exist"):
        XrayGPT.from_pretrained(tmp_path / "absent")
    for name in ("projection.safetensors", "encoder/model.safetensors", "llm"):
        broken = tmp_path / name.replace("/", "_")
        shutil.copytree(exported, broken)
        target = broken / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        with pytest.raises(ModelFolderError) as err:
            XrayGPT.from_pretrained(broken)
        assert str(err.value).startswith(f"{target} is missing") and len(str(err.value).splitlines()) == 1


def test_evaluate_and_demo_take_model_folder(exported, tiny_assets, tmp_path, capsys):
    out = tmp_path / "eval"
    dataset = {"root": str(tiny_assets["val"]), "prompt_path": str(tiny_assets["prompts"]),
               "vis_processor": {"eval": {"name": "medclip_image_eval"}}}
    cfg = write_yaml({"datasets": {"openi": dataset}, "evaluation": {
        "output_dir": str(out), "batch_size": 4, "max_new_tokens": 8, "bootstrap_resamples": 0, "progress": False}},
        tmp_path / "eval.yaml")
    assert evaluate.main(["--cfg-path", str(cfg), "--model", str(exported)]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["model"]["llm"]["path"] == str(exported / "llm")
    capsys.readouterr()

    assert demo.main(["--model", str(exported), "--print-config", "--options", "demo.port=7999"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["ckpt"] == str(exported / "projection.safetensors")
    assert printed["demo"]["port"] == 7999
    assert evaluate.main(["--cfg-path", str(cfg), "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'model.yaml'} is missing: {tmp_path} is not a model " \
                                              "folder written by python -m xraygpt.export"
    with pytest.raises(SystemExit):
        demo.parse_args([])


CONSOLE_SCRIPTS = {"xraygpt-train": "train:main", "xraygpt-eval": "evaluate:main", "xraygpt-demo": "demo:main",
                   "xraygpt-serve": "serve:main", "xraygpt-chat": "xraygpt.chat_cli:main",
                   "xraygpt-prepare": "xraygpt.data.prepare.__main__:main", "xraygpt-export": "xraygpt.export:main",
                   "xraygpt-cache-features": "cache_features:main"}


def test_console_scripts_are_declared_and_point_at_main_functions():
    declared = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
                if ep.name.startswith("xraygpt-")}
    assert {name: ep.value for name, ep in declared.items()} == CONSOLE_SCRIPTS
    for name, ep in declared.items():
        if importlib.util.find_spec(ep.module) is None:  # a module being written elsewhere: declared, checked later
            assert ep.module in ("serve", "xraygpt.chat_cli"), name
            continue
        assert callable(ep.load()), name
    setup = (REPO / "setup.py").read_text()
    for module in ("train", "evaluate", "demo", "cache_features"):
        assert f'"{module}"' in setup and (REPO / f"{module}.py").is_file()


def test_export_console_script_runs(tmp_path):
    script = Path(sys.executable).parent / "xraygpt-export"
    if not script.is_file():
        pytest.fail(f"{script} is not installed: run bash scripts/install.sh dev")
    proc = subprocess.run([str(script), "--run", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: run folder {tmp_path / 'none'} does not exist"
