"""Train XrayGPT from a YAML config: `python train.py --cfg-path train_configs/stage1.yaml`.

Also under torchrun: `torchrun --nproc-per-node N train.py --cfg-path ...`.
`--print-memory-plan` prints the per-GPU bytes of the configured run (weights, gradients, AdamW
state, activations; `xraygpt.training.memory_plan`) for `--world-size` ranks without loading any
weight, and whether it fits `--gpu-memory-gb`.
"""

from __future__ import annotations

import argparse
import os
import sys

from xraygpt import runtime  # noqa: E402  (before transformers reads the environment)

runtime.offline_environment()

from omegaconf import OmegaConf  # noqa: E402

from xraygpt import builders  # noqa: E402
from xraygpt.cli import ERRORS, add_config_arguments, startup_error  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, "training YAML (train_configs/*.yaml)",
                         "override config keys, e.g. run.init_lr=3e-4 model.llm.path=weights/vicuna")
    parser.add_argument("--print-memory-plan", action="store_true",
                        help="print the per-GPU memory of this run (run.strategy, batch, dtype) and exit; reads no weights")
    parser.add_argument("--world-size", type=int, default=None,
                        help="ranks for --print-memory-plan (default: $WORLD_SIZE, else 1)")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="GPU memory for --print-memory-plan (GB)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for configuration errors")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.setup_logging(int(os.environ.get("RANK", "0")))
    try:
        _, cfg = builders.load_job_config(args.cfg_path, args.options, job="training")
        if args.print_config:
            sys.stdout.write(OmegaConf.to_yaml(cfg))
            return 0
        if args.print_memory_plan:
            from xraygpt.training.memory_plan import format_plan, plan_for_config

            world = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
            sys.stdout.write(format_plan(plan_for_config(cfg, world), args.gpu_memory_gb) + "\n")
            return 0
        dist = builders.build_distributed(cfg)
        model = builders.build_model(cfg.model, cfg.run.seed)
        train_set = builders.build_datasets(cfg.datasets, cfg.run.seed, "train", model.prompt_tokenizer,
                                            model.image_preprocessing)
        eval_set = builders.build_datasets(cfg.datasets, cfg.run.seed, "eval", model.prompt_tokenizer,
                                           model.image_preprocessing)
        runner = builders.build_runner(cfg, model, train_set, eval_set, dist)
        runner.train()
    except ERRORS as exc:
        return startup_error(exc, args.debug)
    finally:
        runtime.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
