"""Data loading, images/s: decode + MedCLIP preprocessing of image files vs reading the feature cache.

    python benchmarks/data.py [--root DIR] [--images N] [--rounds R] [--workers W] [--batch-size B]
                              [--no-mimic-size]

`--root` is a dataset in XrayGPT's layout, by default the real OpenI sample in
../shared/data/openi-sample (PNGs about 512 px wide); without one, synthetic 512-px images are
drawn.  Its images are also re-saved at MIMIC-CXR-JPG's usual size (2544 x 3056 JPEG, quality 95;
stage 1's real input) in a temporary folder (`--no-mimic-size` skips that).  A feature cache of
the images is written by the real writer (`xraygpt.data.feature_cache.write_feature_cache`) with
the full-size Swin-T (random weights; fp16, the default storage).  Each round measures every
pipeline through a torch DataLoader as the runner builds it (MixedDataset + ResumableSampler,
single-threaded workers; collation only stacks the tensors), counting N images after a warm-up
batch, the order alternating between rounds; prints one line per round, the medians and the
bytes read per image.  The files are read from the page cache after the first round, so this
measures decoding and preprocessing, not the disk.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xraygpt.data.datasets import MixedDataset, build_mimic  # noqa: E402
from xraygpt.data.feature_cache import source_items, write_feature_cache  # noqa: E402
from xraygpt.data.sampler import ResumableSampler  # noqa: E402
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval  # noqa: E402
from xraygpt.models.medclip_encoder import MedCLIPVisionEncoder, load_swin_config  # noqa: E402
from xraygpt.runtime import single_threaded_worker  # noqa: E402

from dataloader_throughput import add_loader_arguments, images_per_second, stack  # noqa: E402  (this folder, on sys.path when run as a script)

MIMIC_SIZE = (2544, 3056)  # width x height of most MIMIC-CXR-JPG frontal images
PROMPTS = str(REPO / "prompts" / "alignment.txt")


def synthetic_root(folder: Path) -> Path:
    from xraygpt.embedded.dataset import generate_dataset

    generate_dataset(folder, num_train=8, num_val=0, num_test=0, seed=0, image_size=512)
    return folder / "train"


def mimic_sized_copy(dataset, folder: Path) -> Path:
    """The dataset's images as 2544 x 3056 JPEGs (quality 95) in an XrayGPT-layout folder."""
    import json

    from PIL import Image

    (folder / "image").mkdir(parents=True)
    for image_id, path, _ in dataset.samples:
        with Image.open(path) as img:
            img.convert("L").resize(MIMIC_SIZE, Image.Resampling.BICUBIC).save(folder / "image" / f"{image_id}.jpg", quality=95)
    anns = [{"image_id": i, "caption": c} for i, _, c in dataset.samples]
    (folder / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_loader_arguments(parser, images=200, rounds=3)
    parser.add_argument("--no-mimic-size", action="store_true", help="skip the MIMIC-sized JPEG copy")
    args = parser.parse_args(argv)
    processor, text = MedCLIPImageEval(224), CaptionProcessor()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root if (args.root / "filter_cap.json").is_file() else synthetic_root(Path(tmp) / "synthetic")
        sources = {"files": build_mimic(str(root), processor, text, prompt_path=PROMPTS)}
        if not args.no_mimic_size:
            copy = mimic_sized_copy(sources["files"], Path(tmp) / "mimic")
            sources["mimic-jpg"] = build_mimic(str(copy), processor, text, prompt_path=PROMPTS)
        torch.manual_seed(0)
        encoder = MedCLIPVisionEncoder(load_swin_config(None), 512, "patch")
        items = torch.utils.data.DataLoader(source_items(sources["files"]), batch_size=args.batch_size, collate_fn=list)
        write_feature_cache(encoder, items, Path(tmp) / "cache", {"root": str(root)}, "float16")
        sources["cache"] = build_mimic(str(root), processor, text, prompt_path=PROMPTS, feature_cache=str(Path(tmp) / "cache"))
        sizes = {name: statistics.mean(Path(s[1]).stat().st_size for s in ds.samples) for name, ds in sources.items()
                 if name != "cache"}
        sizes["cache"] = sum(f.stat().st_size for f in sources["cache"].cache.files) / len(sources["cache"])
        common = dict(batch_size=args.batch_size, num_workers=args.workers, collate_fn=stack,
                      worker_init_fn=single_threaded_worker, persistent_workers=False)
        print(f"data loading, images/s: {len(sources['files'])} images from {root}, to 224 px (files) or 49 x 768 fp16 "
              f"features (cache); batch {args.batch_size}, {args.workers} workers, {args.images} images per measurement")
        names = list(sources)
        print(f"{'round':<8}" + "".join(f"{n:>12}" for n in names))
        results: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(1, args.rounds + 1):
            for name in (names if round_ % 2 else list(reversed(names))):
                ds = sources[name]
                loader = torch.utils.data.DataLoader(MixedDataset([ds], 0), sampler=ResumableSampler(len(ds), seed=0), **common)
                results[name].append(images_per_second(loader, args.images))
            print(f"{round_:<8}" + "".join(f"{results[n][-1]:>12.1f}" for n in names))
        medians = {name: statistics.median(values) for name, values in results.items()}
        print(f"{'median':<8}" + "".join(f"{medians[n]:>12.1f}" for n in names))
        print(f"{'KB/image':<8}" + "".join(f"{sizes[n] / 1024:>12.0f}" for n in names))
        print("cache vs " + ", ".join(f"{n}: {medians['cache'] / medians[n]:.1f}x" for n in names if n != "cache"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
