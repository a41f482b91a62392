"""Cache a training set's frozen-encoder outputs: `python cache_features.py --cfg-path train_configs/stage1.yaml --out DIR`.

Options and the cache's layout: `xraygpt.data.feature_cache` (the library that writes and reads it).
"""

from __future__ import annotations

import argparse
import sys

from xraygpt import runtime  # noqa: E402  (before transformers reads the environment)

runtime.offline_environment()

import torch  # noqa: E402

from xraygpt import builders  # noqa: E402
from xraygpt.cli import ERRORS, startup_error  # noqa: E402
from xraygpt.config import load_config  # noqa: E402
from xraygpt.data.feature_cache import DTYPES, source_items, write_feature_cache  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python cache_features.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg-path", required=True, help="training YAML whose model.encoder and dataset to use")
    parser.add_argument("--out", required=True, help="new folder for the cache")
    parser.add_argument("--dataset", default=None, help="dataset name in the config (needed when it lists several)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="storage dtype (default float16)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
    parser.add_argument("--shard-size", type=int, default=4096, help="images per safetensors file")
    parser.add_argument("--num-workers", type=int, default=4, help="data-loader workers decoding images")
    parser.add_argument("--device", default="auto", help="auto (a GPU when available), cpu, cuda:0, ...")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.setup_logging(0)
    try:
        cfg = load_config(args.cfg_path, args.options)
        encoder, dataset, source = builders.build_feature_cache_job(cfg, args.dataset)
        device = runtime.resolve_device(args.device)
        items = source_items(dataset)
        loader = torch.utils.data.DataLoader(items, batch_size=args.batch_size, num_workers=args.num_workers,
                                             collate_fn=list, pin_memory=device.type == "cuda",
                                             worker_init_fn=runtime.single_threaded_worker)
        write_feature_cache(encoder, loader, args.out, source, args.dtype, args.shard_size, device, total=len(items))
    except ERRORS as exc:
        return startup_error(exc, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
