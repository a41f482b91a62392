"""Command line of the embedded default (tiny, offline, synthetic): `python -m xraygpt.embedded COMMAND`.

    prepare   --out DIR [--seed N --num-train N --force --prompt-path FILE]
              the synthetic data, a pretrained tiny MedCLIP-format encoder and a tiny LLaMA
    data      --root DIR [--num-train N --num-val N --num-test N --seed N --image-size PX --prevalence P]
              the synthetic dataset alone (XrayGPT layout; image size in pixels, prevalence in [0, 1])
    evaluate  --run DIR --split DIR --out DIR [--seed N]
              finding-level P/R/F1 of a finished run on a held-out synthetic split, with image ablations
    report    DIR... [--eval DIR]   loss drop per stage, samples next to references, the scores
    summary   FILE...               one line per findings_metrics.json (e.g. one per seed)
    vqa-prepare, vqa-evaluate, vqa-summary   the VQA proof (`vqa_proof`; scripts/vqa_proof.sh)
    study-prepare, study-evaluate, study-summary   the study proof (`study_proof`; scripts/study_proof.sh)

`main(argv)` returns the exit status (0), so tests call it directly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from xraygpt import runtime
from xraygpt.embedded.dataset import generate_dataset
from xraygpt.embedded import study_proof, vqa_proof
from xraygpt.embedded.pipeline import evaluate_findings, prepare, report, summarise_seeds

logger = logging.getLogger("xraygpt.embedded")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xraygpt.embedded",
                                     description="Embedded default (synthetic data, tiny MedCLIP, tiny LLaMA).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="generate the embedded default")
    p.add_argument("--out", default="dataset/embedded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--force", action="store_true")
    p.add_argument("--prompt-path", default="prompts/alignment.txt")
    d = sub.add_parser("data", help="generate the synthetic chest X-ray dataset alone (XrayGPT layout)")
    d.add_argument("--root", default="dataset/synthetic", help="output directory")
    d.add_argument("--num-train", type=int, default=1200)
    d.add_argument("--num-val", type=int, default=100)
    d.add_argument("--num-test", type=int, default=200)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--image-size", type=int, default=224, help="image width/height in pixels")
    d.add_argument("--prevalence", type=float, default=0.35, help="per-finding probability")
    d.add_argument("--log-level", default="INFO")
    r = sub.add_parser("report", help="summarise finished quickstart runs")
    r.add_argument("stage_dirs", nargs="+", type=Path)
    r.add_argument("--eval", type=Path, default=None, help="an `evaluate` output folder to include")
    m = sub.add_parser("summary", help="one line per findings_metrics.json (e.g. one per seed)")
    m.add_argument("metric_files", nargs="+", type=Path)
    e = sub.add_parser("evaluate", help="finding-level P/R/F1 on a held-out synthetic split, with image ablations")
    e.add_argument("--run", type=Path, required=True, help="a finished stage-1/2 output_dir")
    e.add_argument("--split", type=Path, required=True, help="a synthetic split folder with labels.json")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--seed", type=int, default=0)
    vqa_proof.add_commands(sub)
    study_proof.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runtime.offline_environment()
    if args.command == "data":
        runtime.setup_logging(0, getattr(logging, args.log_level.upper(), logging.INFO))
        counts = generate_dataset(args.root, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                                  seed=args.seed, image_size=args.image_size, prevalence=args.prevalence)
        logger.info("split counts: %s", counts)
        return 0
    runtime.setup_logging(0)
    if args.command in vqa_proof.COMMANDS:
        return vqa_proof.run_command(args)
    if args.command in study_proof.COMMANDS:
        return study_proof.run_command(args)
    if args.command == "prepare":
        prepare(Path(args.out), args.seed, args.num_train, args.force, args.prompt_path)
    elif args.command == "evaluate":
        evaluate_findings(args.run, args.split, args.out, seed=args.seed)
    elif args.command == "summary":
        sys.stdout.write(summarise_seeds(args.metric_files) + "\n")
    else:
        sys.stdout.write(report(args.stage_dirs, args.eval) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
