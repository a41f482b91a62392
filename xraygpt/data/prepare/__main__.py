"""Command line: `python -m xraygpt.data.prepare {mimic,openi,shards,fidelity} ...`.

Each preparing run writes <out>/stats.json and prints a short summary (mimic and openi: with the
fidelity table of the summaries); `fidelity DIR` prints the table of a prepared folder.  Bad
input (a missing folder or CSV column, a non-empty --out) exits with code 2 and one line
`error: ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import xraygpt.data.prepare as package
from xraygpt import runtime
from xraygpt.atomic import atomic_write_text
from xraygpt.cli import ERRORS, startup_error
from xraygpt.data.prepare.fidelity import fidelity_table, read_prepared, table_lines
from xraygpt.data.prepare.llm_summary import BACKENDS, DEFAULT_PROMPT, LLMSummarizer
from xraygpt.data.prepare.mimic import prepare_mimic
from xraygpt.data.prepare.openi import prepare_openi
from xraygpt.data.prepare.pipeline import IMAGE_STORAGE_MODES, PrepareError
from xraygpt.data.prepare.stats import summary_lines
from xraygpt.data.prepare.to_shards import prepare_shards


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xraygpt.data.prepare", description=f"{package.__doc__}\n{__doc__}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_layout_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", required=True, help="new (or empty) output folder")
        p.add_argument("--image-mode", choices=IMAGE_STORAGE_MODES, default="link",
                       help="link: symbolic links to the source images; copy: copies")
        p.add_argument("--no-verify-images", action="store_true", help="skip the header check of every image")
        p.add_argument("--summarizer", choices=("rule", "llm"), default="rule",
                       help="rule: the rule summary (default); llm: a local LLM's summary where it passes the guard")
        p.add_argument("--llm", default=None, help="with --summarizer llm: the local Hugging Face model folder")
        p.add_argument("--batch-size", type=int, default=8, help="with --summarizer llm: reports per generate call")
        p.add_argument("--llm-max-new-tokens", type=int, default=256, help="with --summarizer llm: longest answer")
        p.add_argument("--llm-backend", choices=BACKENDS, default="auto",
                       help="auto: vLLM when installed with a CUDA GPU, else transformers")
        p.add_argument("--llm-cache", default=None,
                       help="answer cache that makes a rerun resume (default: <out>.llm-cache.jsonl beside --out)")
        p.add_argument("--summary-prompt", default=str(DEFAULT_PROMPT), help="prompt template file")

    mimic = sub.add_parser("mimic", help="MIMIC-CXR reports + MIMIC-CXR-JPG -> XrayGPT layout per official split")
    mimic.add_argument("--reports", required=True, help="folder holding the reports' files/pXX/... tree")
    mimic.add_argument("--images", required=True, help="MIMIC-CXR-JPG folder (files/pXX/..., metadata and split CSVs)")
    mimic.add_argument("--frontal-only", action="store_true", help="keep only PA and AP views")
    add_layout_options(mimic)

    openi = sub.add_parser("openi", help="OpenI ecgen-radiology XML + NLMCXR_png -> XrayGPT layout per seeded split")
    openi.add_argument("--reports", required=True, help="the ecgen-radiology folder of XML reports")
    openi.add_argument("--images", required=True, help="the NLMCXR_png folder")
    openi.add_argument("--fractions", type=float, nargs=3, default=[0.7, 0.1, 0.2], metavar=("TRAIN", "VAL", "TEST"),
                       help="split fractions of the reports (default 0.7 0.1 0.2)")
    openi.add_argument("--seed", type=int, default=0, help="seed of the split by report")
    openi.add_argument("--projections", default=None, metavar="FILE",
                       help="uid,filename,projection CSV (e.g. indiana_projections.csv): the images' views "
                            "in studies.jsonl (default: unknown)")
    add_layout_options(openi)

    shards = sub.add_parser("shards", help="a JSON-format dataset -> webdataset shards")
    shards.add_argument("--root", required=True, help="dataset folder")
    shards.add_argument("--out", required=True, help="new (or empty) shard folder")
    shards.add_argument("--format", choices=("xraygpt", "r2gen"), default="xraygpt")
    shards.add_argument("--split", default="train", help="r2gen: the split to write")
    shards.add_argument("--ann-file", default=None, help="annotation file in --root (default: the format's)")
    shards.add_argument("--image-dir", default=None, help="image folder in --root (default: the format's)")
    shards.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    shards.add_argument("--maxsize-mb", type=int, default=1000, help="MB per shard at most")
    shards.add_argument("--no-verify-images", action="store_true", help="skip the header check of every image")

    fidelity = sub.add_parser("fidelity", help="the fidelity table of a prepared folder's summaries")
    fidelity.add_argument("dir", help="a folder written by `prepare mimic` or `prepare openi`")
    fidelity.add_argument("--json", default=None, help="also write the table to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.offline_environment()
    runtime.setup_logging(0)
    if args.command == "fidelity":
        return fidelity_main(Path(args.dir), args.json)
    out = Path(args.out)
    try:
        summarizer = llm_summarizer(args, out) if args.command in ("mimic", "openi") else None
        if args.command == "mimic":
            stats = prepare_mimic(Path(args.reports), Path(args.images), out, args.frontal_only, args.image_mode,
                                  not args.no_verify_images, summarizer)
        elif args.command == "openi":
            stats = prepare_openi(Path(args.reports), Path(args.images), out, tuple(args.fractions), args.seed,
                                  args.image_mode, not args.no_verify_images, summarizer,
                                  Path(args.projections) if args.projections else None)
        else:
            stats = prepare_shards(args.format, Path(args.root), out, args.split, args.ann_file, args.image_dir,
                                   args.maxcount, args.maxsize_mb * 1_000_000, not args.no_verify_images)
    except ERRORS as exc:  # PrepareError, DatasetError, LLMLoadError, ... are ValueErrors
        return startup_error(exc)
    print("\n".join(summary_lines(stats)))
    if "fidelity" in stats:
        print("\n".join(table_lines(stats["fidelity"])))
    print(f"report: {out / 'stats.json'}")
    return 0


def llm_summarizer(args: argparse.Namespace, out: Path) -> LLMSummarizer | None:
    """The LLM summariser the options ask for (None with --summarizer rule)."""
    if args.summarizer == "rule":
        return None
    if not args.llm:
        raise PrepareError("--summarizer llm needs --llm PATH (a local Hugging Face model folder)")
    cache = Path(args.llm_cache) if args.llm_cache else out.with_name(f"{out.name}.llm-cache.jsonl")
    return LLMSummarizer(Path(args.llm), cache, Path(args.summary_prompt), args.batch_size, args.llm_max_new_tokens,
                         args.llm_backend)


def fidelity_main(folder: Path, json_path: str | None) -> int:
    """`fidelity DIR`: print (and optionally write) the fidelity table of a prepared folder."""
    try:
        table = fidelity_table(*read_prepared(folder))
        if json_path:
            atomic_write_text(json_path, json.dumps(table, indent=1))
    except ERRORS as exc:  # FidelityError is a ValueError
        return startup_error(exc)
    print("\n".join(table_lines(table)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
