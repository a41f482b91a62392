"""Export a trained run as one self-contained model folder.

    python -m xraygpt.export --run output/stage2 --out models/xraygpt-stage2
    python -m xraygpt.export --run output/stage2 --out models/xraygpt-stage2 --llm-reference --metrics output/eval/stage2/metrics.json

The folder holds the run's model config (paths relative to the folder), the trained projection
(safetensors), the encoder's weights and Swin config, the LLM folder (copied; or with
`--llm-reference` its path and the sha256 of its files, checked at every load) and a model card
README.md; layout in `xraygpt.models.model_folder`. Load it with `XrayGPT.from_pretrained(FOLDER)`
or `--model FOLDER` (evaluate.py, demo.py, serve.py). It is written under a temporary name and
renamed when complete. A run without checkpoint, a missing encoder or LLM, an --out that exists
and is not empty (without --force) exit with code 2 and one line `error: ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xraygpt import runtime  # noqa: E402  (before transformers reads the environment)

runtime.offline_environment()

from omegaconf import OmegaConf  # noqa: E402

from xraygpt import builders  # noqa: E402
from xraygpt.cli import ERRORS, startup_error  # noqa: E402
from xraygpt.models.model_folder import ModelFolderError, export_run  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xraygpt.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the training run's output_dir (config.yaml, checkpoints/)")
    parser.add_argument("--out", required=True, help="the model folder to write (new or empty)")
    parser.add_argument("--llm-reference", action="store_true",
                        help="reference the LLM folder (its path + sha256 of its files) instead of copying it")
    parser.add_argument("--metrics", default=None,
                        help="a metrics.json to put in the folder and its card (default: the run's metrics.json, if any)")
    parser.add_argument("--force", action="store_true", help="replace an --out that is not empty")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    return parser.parse_args(argv)


def last_checkpoint(run: Path, cfg) -> tuple[Path, dict]:
    """(the run's last checkpoint, its trained weights): checkpoints/checkpoint_last.pt, or a sharded
    (FSDP) checkpoints/checkpoint_last folder, read through the model it was trained on."""
    single, sharded = run / "checkpoints" / "checkpoint_last.pt", run / "checkpoints" / "checkpoint_last"
    if single.is_file():
        return single, builders.read_trainable_weights(single)
    if sharded.is_dir():  # its weights are read into the model's shapes: the model is built to read them
        model = builders.build_model(OmegaConf.merge(cfg.model, {"ckpt": str(sharded)}), cfg.run.seed)
        return sharded, model.trainable_state_dict()
    raise ModelFolderError(f"{single} is missing: the run has no checkpoint to export")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.setup_logging(0)
    try:
        run = Path(args.run)
        if not run.is_dir():
            raise ModelFolderError(f"run folder {run} does not exist")
        config_file = run / "config.yaml"
        if not config_file.is_file():
            raise ModelFolderError(f"{config_file} is missing: {run} is not a training run's output_dir")
        _, cfg = builders.load_job_config(config_file, job="training")
        checkpoint, trained = last_checkpoint(run, cfg)
        out = export_run(run, OmegaConf.to_container(cfg, resolve=True), checkpoint, trained, args.out,
                         args.llm_reference, args.metrics, args.force)
    except ERRORS as exc:
        return startup_error(exc, args.debug)
    sys.stdout.write(f"{out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
