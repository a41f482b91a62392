"""Dataloader throughput, images/s (decode + MedCLIP preprocessing), JSON + image files vs shards.

    python benchmarks/dataloader_throughput.py [--root DIR] [--images N] [--rounds R]
                                               [--workers W] [--batch-size B] [--image-size PX]

`--root` is a dataset in XrayGPT's layout, by default the real OpenI sample in
../shared/data/openi-sample next to the repository.  Its usable samples are written as shards
into a temporary folder (one shard per worker); then each round measures both pipelines one after the other (the order
alternates between rounds), each through a torch DataLoader as the runner builds it (files: the
map-style dataset with the resumable sampler; shards: the stream for rank 0 of 1), counting N
images after one warm-up batch.  Prints one line per round and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xraygpt.data.datasets import MixedDataset, build_openi  # noqa: E402
from xraygpt.data.prepare.to_shards import prepare_shards  # noqa: E402
from xraygpt.data.sampler import ResumableSampler  # noqa: E402
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval  # noqa: E402
from xraygpt.runtime import single_threaded_worker  # noqa: E402


def stack(samples: list[dict]) -> torch.Tensor:
    """Collate by stacking the samples' images (or cached encoder features, for benchmarks/data.py)."""
    key = "image_features" if "image_features" in samples[0] else "pixel_values"
    return torch.stack([s[key] for s in samples])


def images_per_second(loader: torch.utils.data.DataLoader, images: int) -> float:
    """Images/s over `images` images, after one warm-up batch (worker start, shuffle-buffer fill)."""
    batches = iter(loader)
    next(batches)
    seen, start = 0, time.perf_counter()
    while seen < images:
        seen += len(next(batches))
    return seen / (time.perf_counter() - start)


def add_loader_arguments(parser: argparse.ArgumentParser, images: int, rounds: int) -> None:
    """--root (the shared OpenI sample), --images per measurement, --rounds, --workers, --batch-size."""
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "openi-sample")
    parser.add_argument("--images", type=int, default=images, help="images per measurement")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (the runner's default)")
    parser.add_argument("--batch-size", type=int, default=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_loader_arguments(parser, images=600, rounds=5)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)
    prompts = str(REPO / "prompts" / "alignment.txt")
    processor, text = MedCLIPImageEval(args.image_size), CaptionProcessor()
    files = build_openi(str(args.root), processor, text, prompt_path=prompts)
    with tempfile.TemporaryDirectory() as tmp:
        per_shard = -(-len(files) // max(1, args.workers))  # one shard per worker, as large as possible
        prepare_shards("xraygpt", args.root, Path(tmp) / "shards", "train", None, None, per_shard, 10**9, False)
        shards = build_openi(str(Path(tmp) / "shards"), processor, text, format="webdataset", prompt_path=prompts)
        common = dict(batch_size=args.batch_size, num_workers=args.workers, collate_fn=stack,
                      worker_init_fn=single_threaded_worker)
        loaders = {
            "json+files": lambda: torch.utils.data.DataLoader(
                MixedDataset([files], 0), sampler=ResumableSampler(len(files), seed=0), **common),
            "shards": lambda: torch.utils.data.DataLoader(
                shards.for_rank(0, 1, args.workers, seed=0, start=0), **common),
        }
        print(f"dataloader throughput, images/s (decode + preprocess to {args.image_size} px): {len(files)} images "
              f"from {args.root} ({len(shards.shards)} shards), batch {args.batch_size}, {args.workers} workers, "
              f"{args.images} images per measurement, torch threads {torch.get_num_threads()}")
        print(f"{'round':<8}{'json+files':>12}{'shards':>12}")
        results: dict[str, list[float]] = {name: [] for name in loaders}
        for round_ in range(1, args.rounds + 1):
            order = list(loaders) if round_ % 2 else list(reversed(loaders))
            for name in order:
                results[name].append(images_per_second(loaders[name](), args.images))
            print(f"{round_:<8}{results['json+files'][-1]:>12.1f}{results['shards'][-1]:>12.1f}")
        medians = {name: statistics.median(values) for name, values in results.items()}
        print(f"{'median':<8}{medians['json+files']:>12.1f}{medians['shards']:>12.1f}"
              f"   (shards / json+files: {medians['shards'] / medians['json+files']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
