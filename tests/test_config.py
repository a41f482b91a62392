import dataclasses
from pathlib import Path

import pytest
import yaml

import evaluate
from conftest import REPO, tiny_config, write_yaml
from xraygpt.builders import JOBS, load_job_config
from xraygpt.config import ConfigError, load_config
from xraygpt.ui.settings import load_demo_config

ALL_YAMLS = sorted(list((REPO / "train_configs").rglob("*.yaml")) + list((REPO / "eval_configs").rglob("*.yaml")))


def test_repo_has_configs():
    names = {p.name for p in ALL_YAMLS}
    assert {"stage1.yaml", "stage2.yaml", "tiny_stage1.yaml", "tiny_stage2.yaml"} <= names


@pytest.mark.parametrize("path", ALL_YAMLS, ids=lambda p: p.name)
def test_every_yaml_loads_and_validates(path):
    """Through the one door of train.py, evaluate.py and demo.py, for the job the file declares."""
    job, cfg = load_job_config(path)
    if job == "demo":  # demo.py's configs: model + demo (xraygpt/ui/settings.py)
        assert cfg.model.arch == "xraygpt" and cfg.model.ckpt and cfg.demo.host == "127.0.0.1"
        return
    if job == "serve":  # serve.py's configs: model + serve (xraygpt/serving/settings.py)
        assert cfg.model.arch == "xraygpt" and cfg.model.ckpt and cfg.serve.host == "127.0.0.1"
        return
    if job == "evaluation":  # evaluate.py's configs: model + datasets + evaluation
        assert cfg.model.arch == "xraygpt" and cfg.model.ckpt and cfg.evaluation.output_dir
        assert "max_txt_len" in cfg.model.prompt and "bootstrap_resamples" in cfg.evaluation
        return
    assert job == "training"
    assert cfg.model.arch in ("xraygpt", "llm_sft")
    assert cfg.run.output_dir
    # defaults from constructor signatures are filled in
    assert "max_txt_len" in cfg.model.prompt and "init_lr" in cfg.run


def test_stage2_initialises_from_stage1():
    s1 = load_config(REPO / "train_configs" / "stage1.yaml")
    s2 = load_config(REPO / "train_configs" / "stage2.yaml")
    assert s2.model.ckpt and Path(s2.model.ckpt).parent.parent == Path(s1.run.output_dir)
    assert "mimic" in s1.datasets and "openi" in s2.datasets


def _write(tmp_path, cfg):
    return write_yaml(cfg, tmp_path / "cfg.yaml")


def test_misspelt_key_names_it_and_the_closest(tmp_path, tiny_assets):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["run"]["int_lr"] = 1e-3
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, cfg))
    assert "'run.int_lr'" in str(err.value) and "run.init_lr" in str(err.value)


def test_misspelt_nested_key(tmp_path, tiny_assets):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["model"]["encoder"]["chekpoint"] = "x"
    with pytest.raises(ConfigError, match=r"model\.encoder\.chekpoint.*model\.encoder\.checkpoint"):
        load_config(_write(tmp_path, cfg))


def test_misspelt_option_override(tmp_path, tiny_assets):
    path = _write(tmp_path, tiny_config(tiny_assets, tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"run\.max_epochs.*run\.max_epoch"):
        load_config(path, ["run.max_epochs=3"])


def test_option_override_applies(tmp_path, tiny_assets):
    path = _write(tmp_path, tiny_config(tiny_assets, tmp_path / "out"))
    cfg = load_config(path, ["run.init_lr=0.5", "model.prompt.end_sym=</s>"])
    assert cfg.run.init_lr == 0.5 and cfg.model.prompt.end_sym == "</s>"


def test_missing_required_key(tmp_path, tiny_assets):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    del cfg["model"]["llm"]["path"]
    with pytest.raises(ConfigError, match="missing required config key 'model.llm.path'"):
        load_config(_write(tmp_path, cfg))


def test_wrong_type(tmp_path, tiny_assets):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["run"]["max_epoch"] = "many"
    with pytest.raises(ConfigError, match="run.max_epoch"):
        load_config(_write(tmp_path, cfg))


@pytest.mark.parametrize("where,value,expect", [
    (("model", "arch"), "xraygtp", "did you mean 'xraygpt'"),
    (("run", "lr_sched", "name"), "cosine", "linear_warmup_cosine"),
])
def test_unknown_registered_names(tmp_path, tiny_assets, where, value, expect):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    node = cfg
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    with pytest.raises(ConfigError, match=expect):
        load_config(_write(tmp_path, cfg))


def test_unknown_dataset_and_top_level(tmp_path, tiny_assets):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["datasets"]["mimc"] = cfg["datasets"].pop("mimic")
    with pytest.raises(ConfigError, match="did you mean 'mimic'"):
        load_config(_write(tmp_path, cfg))
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["rnu"] = {}
    with pytest.raises(ConfigError, match="did you mean 'run'"):
        load_config(_write(tmp_path, cfg))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_errors_are_one_line(tmp_path, tiny_assets):
    cfg = tiny_config(tiny_assets, tmp_path / "out")
    cfg["datasets"]["mimic"]["vis_processor"]["train"]["imagesize"] = 3
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, cfg))
    assert "\n" not in str(err.value) and "image_size" in str(err.value)


@pytest.mark.parametrize("name", ["tiny_stage1.yaml", "stage0_llm.yaml"])
def test_readme_documents_every_config_key(name):
    readme = (REPO / "README.md").read_text()
    cfg = load_config(REPO / "train_configs" / name)
    missing = []

    def walk(node, path):
        for key, value in node.items():
            if hasattr(value, "items") and key not in ("vis_processor", "text_processor", "lr_sched"):
                walk(value, f"{path}.{key}" if path else key)
            elif key not in readme:
                missing.append(f"{path}.{key}")

    walk(cfg.model, "model")
    walk(cfg.run, "run")
    for ds_name, ds in cfg.datasets.items():
        walk({k: v for k, v in ds.items() if k not in ("vis_processor", "text_processor")}, f"datasets.{ds_name}")
        for proc in ("vis_processor", "text_processor"):
            for split in ("train", "eval") if proc in ds else ():
                walk(ds[proc][split], f"datasets.{ds_name}.{proc}.{split}")
    walk(cfg.run.lr_sched, "run.lr_sched")
    assert not missing, f"README.md does not document: {missing}"



@dataclasses.dataclass
class _DemoLike:
    host: str = "127.0.0.1"
    port: int = 7860


def test_entry_point_sections(tmp_path):
    """evaluate/demo-style entry points: model + their own section, schema from a signature;
    training sections they do not read are refused; training still requires its sections."""
    base = yaml.safe_load((REPO / "train_configs" / "tiny_stage2.yaml").read_text())
    settings = {"demo": _DemoLike}
    path = write_yaml({"model": base["model"], "demo": {"port": 9000}}, tmp_path / "demo.yaml")
    out = load_config(path, required=("model",), settings=settings)
    assert out.demo.port == 9000 and out.demo.host == "127.0.0.1" and "run" not in out
    path = write_yaml({"model": base["model"], "run": base["run"]}, tmp_path / "extra.yaml")
    with pytest.raises(ConfigError, match="'run'.*reads: model, demo"):
        load_config(path, required=("model",), settings=settings)
    path = write_yaml({"model": base["model"], "demo": {"prot": 1}}, tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="demo.prot"):
        load_config(path, required=("model",), settings=settings)
    path = write_yaml({"model": base["model"]}, tmp_path / "model_only.yaml")
    with pytest.raises(ConfigError, match="missing required config key 'datasets'"):
        load_config(path)


@pytest.mark.parametrize("name,section", [("tiny_eval.yaml", "evaluation"), ("demo_tiny.yaml", "demo")])
def test_readme_documents_every_entry_point_key(name, section):
    readme = (REPO / "README.md").read_text()
    path = REPO / "eval_configs" / name
    cfg = load_demo_config(path) if section == "demo" else evaluate.load_eval_config(path)
    missing = [key for key in cfg[section] if f"`{key}`" not in readme]
    assert not missing, f"README.md does not document {section}: {missing}"


def test_the_repo_has_a_config_for_every_job():
    assert {load_job_config(path)[0] for path in ALL_YAMLS} == set(JOBS)


def _raw(name):
    folder = "eval_configs" if name in ("tiny_eval.yaml", "demo_tiny.yaml") else "train_configs"
    return yaml.safe_load((REPO / folder / name).read_text())


def _set(cfg, key, value):
    *parents, last = key.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return cfg


_DELETE = object()


@pytest.mark.parametrize("name,key,value,needle", [
    ("tiny_stage1.yaml", "run.batch_size_trian", 2, "unknown config key 'run.batch_size_trian' (did you mean 'run.batch_size_train'?)"),
    ("tiny_stage1.yaml", "run.init_lr", "fast", "'run.init_lr'"),
    ("tiny_stage1.yaml", "model.encoder.projection_dim", "wide", "model.encoder.projection_dim"),
    ("tiny_stage1.yaml", "run", _DELETE, "declares no job; a config file holds one of the sections 'run' (train.py)"),
    ("tiny_stage1.yaml", "evaluation", {"output_dir": "x"}, "declares 2 jobs, sections 'run' (train.py) and "
                                                             "'evaluation' (evaluate.py)"),
    ("tiny_eval.yaml", "evaluation.batch_sise", 2, "evaluation.batch_sise"),
    ("tiny_eval.yaml", "evaluation.image_mode", "upside_down", "evaluation.image_mode must be one of"),
    ("tiny_eval.yaml", "evaluation.batch_size", 0, "evaluation.batch_size must be >= 1"),
    ("tiny_eval.yaml", "model.ckpt", None, "model.ckpt is not set"),
    ("tiny_eval.yaml", "datasets.openi.eval_root", "somewhere", "datasets.openi.eval_root is not read by evaluate.py"),
    ("demo_tiny.yaml", "demo.prot", 1, "demo.prot"),
    ("demo_tiny.yaml", "demo.port", 70000, "demo.port must be in 0..65535"),
    ("demo_tiny.yaml", "run", {"output_dir": "x"}, "declares 2 jobs"),
])
def test_a_bad_file_is_refused_in_one_line_naming_the_file_and_key(tmp_path, name, key, value, needle):
    path = write_yaml(_set(_raw(name), key, value), tmp_path / name)
    with pytest.raises(ConfigError) as exc:
        load_job_config(path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and needle in message, message


def test_validation_opens_no_weights_or_data(tmp_path):
    """Checkpoints, encoder weights, the LLM folder and datasets not there yet (a fresh clone) are
    not validation's business: they fail when built."""
    missing = str(tmp_path / "not_there")
    for name in ("tiny_stage2.yaml", "tiny_eval.yaml", "demo_tiny.yaml"):
        cfg = _raw(name)
        for key in ("model.ckpt", "model.encoder.checkpoint", "model.encoder.swin_config", "model.llm.path"):
            _set(cfg, key, missing)
        for ds in cfg.get("datasets", {}).values():
            ds["root"] = missing
        assert load_job_config(write_yaml(cfg, tmp_path / name))[1].model.llm.path == missing


def test_an_entry_point_refuses_another_jobs_file_and_reads_an_undeclared_one_as_its_own(tmp_path, capsys):
    import demo
    import train

    cases = [(train, "tiny_eval.yaml", "evaluation", "evaluate.py"), (evaluate, "demo_tiny.yaml", "demo", "demo.py"),
             (demo, "tiny_stage1.yaml", "training", "train.py")]
    for entry, name, job, runs_it in cases:
        path = write_yaml(_raw(name), tmp_path / name)
        assert entry.main(["--cfg-path", str(path)]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(f"error: {path}: declares the {job} job") and last.endswith(f"run it with {runs_it}")
    model_only = write_yaml({"model": _raw("demo_tiny.yaml")["model"]}, tmp_path / "model_only.yaml")
    assert load_job_config(model_only, job="demo")[1].demo.port == 7860  # the demo section is optional
    with pytest.raises(ConfigError, match="declares no job"):
        load_job_config(model_only)
