"""Generate summaries for a split and score them: `python evaluate.py --cfg-path eval_configs/tiny_eval.yaml`.

`--model FOLDER` evaluates an exported model folder (`python -m xraygpt.export`): its model
replaces the config's `model` section, which the config may then leave out.

Also under torchrun (`torchrun --nproc-per-node N evaluate.py --cfg-path ...`: data-parallel
generation, merged and scored on rank 0), and
`python evaluate.py compare A/predictions.jsonl B/predictions.jsonl [--names A B]`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xraygpt import runtime  # noqa: E402  (before transformers reads the environment)

runtime.offline_environment()

from omegaconf import OmegaConf  # noqa: E402

from xraygpt import builders  # noqa: E402
from xraygpt.cli import ERRORS, add_config_arguments, add_model_argument, startup_error  # noqa: E402
from xraygpt.builders import evaluated_splits, load_eval_config  # noqa: E402,F401  (also for benchmarks/generate.py)
from xraygpt.config import settings_arguments  # noqa: E402
from xraygpt.evaluation.compare import compare_predictions  # noqa: E402
from xraygpt.evaluation.evaluator import ReportEvaluator  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if argv[:1] == ["compare"]:
        parser.add_argument("command", choices=["compare"])
        parser.add_argument("predictions", nargs="+", type=Path, help="two or more predictions.jsonl")
        parser.add_argument("--names", nargs="+", default=None, help="one column name per file")
        parser.add_argument("--phrases-dir", default=None, help="phrase lists replacing the labeler's own")
    else:
        add_config_arguments(parser, "evaluation YAML (eval_configs/*.yaml)", "override config keys")
        add_model_argument(parser)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    return parser.parse_args(argv)


def evaluate(cfg) -> str | None:
    """Build the model (with its trained checkpoint) and the split, generate, score; the table on rank 0.

    `cfg` is validated for evaluation (`builders.load_job_config`)."""
    datasets = evaluated_splits(cfg)
    model = builders.build_model(cfg.model, cfg.evaluation.seed)
    dataset = builders.build_datasets(datasets, cfg.evaluation.seed, "eval", model.prompt_tokenizer,
                                      model.image_preprocessing)
    evaluator = ReportEvaluator(model=model, **settings_arguments(ReportEvaluator, cfg.evaluation, "evaluation"))
    return evaluator.run(dataset, [Path(ds["root"]) for ds in datasets.values()])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    runtime.setup_logging(int(os.environ.get("RANK", "0")))
    try:
        if getattr(args, "command", None) == "compare":
            table = compare_predictions(args.predictions, args.names, args.phrases_dir)[0]
        else:
            _, cfg = builders.load_job_config(args.cfg_path, args.options, job="evaluation", model_folder=args.model)
            table = OmegaConf.to_yaml(cfg) if args.print_config else evaluate(cfg)
    except ERRORS as exc:
        return startup_error(exc, args.debug)
    finally:
        runtime.cleanup()
    if table:
        sys.stdout.write(table.rstrip("\n") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
