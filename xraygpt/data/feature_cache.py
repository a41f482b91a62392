"""Frozen-feature cache: the frozen encoder's outputs for a training set, computed once.

In stages 1-2 the encoder is frozen, so without augmentation it turns each image into the same
tokens in every epoch; decoding, preprocessing and encoding it again each time is waste.  This
command runs the encoder once over a dataset and stores its outputs; a dataset configured with
`feature_cache: DIR` then reads them instead of images (`xraygpt.data.datasets.FeatureCaptionDataset`):

    python cache_features.py --cfg-path train_configs/stage1.yaml --out DIR
        [--dataset NAME] [--dtype float16|float32] [--batch-size 64] [--shard-size 4096]
        [--num-workers 4] [--device auto] [--options key=value ...]

It builds only the config's `model.encoder` (never the LLM) and the dataset's `root` (`--dataset`
names it when the config lists several), read in its format (xraygpt, r2gen or webdataset
shards) with the dataset's `vis_processor.eval`: deterministic preprocessing, since train-time
augmentation cannot be cached.  Layout of DIR:

    features-000000.safetensors ...  one tensor `features` of shape (n_i, N, D) per shard, in `dtype`
    manifest.json   {"format": "xraygpt-feature-cache", "version": 1, "dtype": "float16",
                     "encoder": {"weights_sha256", "output", "num_tokens", "dim"},
                     "source": {"dataset", "root", "format", "split", "vis_processor", "checkpoint"},
                     "shards": [{"file", "samples"}, ...],
                     "samples": [[image_id, caption], ...], "dropped": {id: reason}}

The format is written here (no library keeps the encoder's provenance with the features):
safetensors for the tensors (safe to load, memory-mapped, one row readable without the rest)
and a JSON manifest.  Row k of the cache is `samples[k]`, counted across the shards in order.
Captions are stored as the annotations hold them (the dataset's text_processor runs when
reading).  Images that do not decode are left out and listed in `dropped`.  The cache is written into a hidden temporary
folder beside DIR (shards and manifest flushed to disk) that is renamed to DIR when complete, so
DIR is either a whole cache or absent; an existing DIR is refused.

Storage is fp16 by default (half the bytes of fp32: 74 KB per image for 49 x 768 tokens): the
encoder computes in fp32 and its outputs are rounded once, so training from the cache sees
features within fp16 rounding of the ones computed from images (the same losses as images whose
features are rounded to fp16; tested); `--dtype float32` stores them exactly (the same losses
as images; tested).  `FeatureCache` reads one row per sample from the memory-mapped shards (safetensors'
`safe_open`, opened lazily in each data-loader worker).

`FeatureCache.check_encoder` refuses, in one line, a cache made by an encoder with other weights
(`MedCLIPVisionEncoder.weights_sha256`: the weights as loaded, so the same checkpoint in .bin
or .safetensors, 4.x or 5.x names, gives the same hash) or another output mode or token shape;
the runner calls it before training.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import random
from pathlib import Path
from typing import Iterable, Iterator

import torch
import webdataset as wds
from safetensors import safe_open
from safetensors.torch import save

from xraygpt.atomic import atomic_folder, atomic_write, atomic_write_text
from xraygpt.data.formats import Capabilities, DatasetError, capabilities_of, read_json
from xraygpt.data.paths import UnsafePath, safe_name
from xraygpt.data.transforms import DECODE_ERRORS

logger = logging.getLogger(__name__)

FORMAT = "xraygpt-feature-cache"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = "features-%06d.safetensors"
DTYPES = {"float16": torch.float16, "float32": torch.float32}

# (image id, caption as annotated, preprocessed image (3, H, W) or None, why it is None)
Item = tuple[str, str, "torch.Tensor | None", str]


# What a dataset read from a feature cache can do (xraygpt.data.datasets.FeatureCaptionDataset).
FEATURE_CACHE = Capabilities(map_style=True, group_by_length=True, cache_features=False, reads_features=True)


class FeatureCacheError(DatasetError):
    """A feature cache that is missing, malformed, or made by another encoder; one line."""


def encoder_record(encoder) -> dict:
    """What identifies an encoder's outputs: weights hash, output mode and token shape."""
    return {"weights_sha256": encoder.weights_sha256(), "output": encoder.output,
            "num_tokens": encoder.num_tokens, "dim": encoder.output_dim}


class FeatureCache:
    """A feature cache folder opened for reading (see module docstring).

    Args:
        root: the folder written by `write_feature_cache`.
    Attributes:
        samples: [(image_id, caption)], row k of the cache is samples[k].
        dtype: the stored dtype.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not (self.root / MANIFEST).is_file():
            raise FeatureCacheError(f"feature cache {self.root} has no {MANIFEST} (not a feature cache; "
                                    "build one with python cache_features.py)")
        manifest = read_json(self.root / MANIFEST, "feature cache manifest")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise FeatureCacheError(f"feature cache manifest {self.root / MANIFEST} is not a {FORMAT} "
                                    f"version {VERSION}")
        try:
            self.encoder = dict(manifest["encoder"])
            self.dtype = DTYPES[manifest["dtype"]]
            self.samples = [(str(i), str(c)) for i, c in manifest["samples"]]
            shards = [(str(s["file"]), int(s["samples"])) for s in manifest["shards"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise FeatureCacheError(f"feature cache manifest {self.root / MANIFEST} is malformed: {exc!r}") from None
        for file, _ in shards:  # a manifest may only name files inside its folder
            try:
                safe_name(file)
            except UnsafePath as exc:
                raise FeatureCacheError(f"feature cache manifest {self.root / MANIFEST} lists a shard outside its "
                                        f"folder: {exc}") from None
        missing = [f for f, _ in shards if not (self.root / f).is_file()]
        if missing:
            raise FeatureCacheError(f"feature cache {self.root}: shard {missing[0]} is missing")
        if sum(n for _, n in shards) != len(self.samples) or not self.samples:
            raise FeatureCacheError(f"feature cache manifest {self.root / MANIFEST}: its shards hold "
                                    f"{sum(n for _, n in shards)} rows for {len(self.samples)} samples")
        self.manifest = manifest
        self.files = [self.root / f for f, _ in shards]
        self.starts = [0]
        for _, n in shards[:-1]:
            self.starts.append(self.starts[-1] + n)
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict:
        """Pickled for data-loader workers without the open files (each worker opens its own)."""
        return {**self.__dict__, "_handles": {}}

    def features(self, row: int) -> torch.Tensor:
        """(N, D) features of row `row`, in the stored dtype."""
        shard = bisect.bisect_right(self.starts, row) - 1
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.files[shard]), framework="pt")
        return self._handles[shard].get_slice("features")[row - self.starts[shard]]

    def check_encoder(self, encoder) -> None:
        """Raise FeatureCacheError unless `encoder` (a MedCLIPVisionEncoder) made this cache."""
        want = encoder_record(encoder)
        have = {key: self.encoder.get(key) for key in want}
        if [have["output"], have["num_tokens"], have["dim"]] != [want["output"], want["num_tokens"], want["dim"]]:
            raise FeatureCacheError(
                f"feature cache {self.root} holds {have['output']} features ({have['num_tokens']} x {have['dim']}) "
                f"but model.encoder.output is {want['output']} ({want['num_tokens']} x {want['dim']}); rebuild the cache")
        if have["weights_sha256"] != want["weights_sha256"]:
            raise FeatureCacheError(
                f"feature cache {self.root} was made by another encoder (weights sha256 {str(have['weights_sha256'])[:12]}, "
                f"model.encoder has {want['weights_sha256'][:12]}); rebuild it with python cache_features.py")


# ---------------------------------------------------------------------------------- writing
class _FileImages(torch.utils.data.Dataset):
    """Items of a file-based dataset (CaptionDataset), in order; undecodable images give None."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Item:
        image_id, path, caption = self.dataset.samples[index]
        try:
            image = self.dataset.load_image(index)
        except DECODE_ERRORS as exc:
            return image_id, caption, None, f"image {path} does not decode: {exc}"
        return image_id, caption, self.dataset.vis_processor(image, random.Random(index)), ""


class _ShardImages(torch.utils.data.IterableDataset):
    """Items of a ShardDataset read once in shard order, the shards split across workers."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _corrupt(self, exc: Exception) -> bool:
        logger.warning("%s: corrupt shard data skipped: %s", self.dataset.name, exc)
        return True

    def __iter__(self) -> Iterator[Item]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        pipeline = wds.DataPipeline(wds.SimpleShardList(self.dataset.shards[worker::workers]),
                                    wds.tarfile_to_samples(handler=self._corrupt))
        for raw in pipeline:
            sample = self.dataset.decode(raw, random.Random(0))  # logs and counts what it cannot use
            if sample is None:
                yield f"{raw.get('__url__')} key {raw.get('__key__')}", "", None, "unusable sample (see the log)"
            else:
                yield sample["image_id"], json.loads(raw["json"].decode("utf-8"))["caption"], sample["pixel_values"], ""


def source_items(dataset) -> torch.utils.data.Dataset:
    """The encoder's inputs from a map-style dataset of image files (in order) or a stream of shards."""
    caps = capabilities_of(dataset)
    if not caps.cache_features:
        raise FeatureCacheError(f"{getattr(dataset, 'name', 'the dataset')}: its samples cannot be encoded into a feature cache")
    return _FileImages(dataset) if caps.map_style else _ShardImages(dataset)


def write_feature_cache(encoder, batches: Iterable[list[Item]], out: str | os.PathLike, source: dict,
                        dtype: str = "float16", shard_size: int = 4096, device: str | torch.device = "cpu",
                        total: int | None = None) -> dict:
    """Encode every item of `batches` and write the cache folder `out` (see module docstring).

    Args:
        encoder: the frozen MedCLIPVisionEncoder; run in eval mode under inference_mode.
        batches: lists of items (image_id, caption, pixels (3, H, W) or None, reason).
        out: the cache folder to create (must not exist).
        source: recorded as the manifest's `source` (dataset, root, format, split, preprocessing).
        dtype: `float16` or `float32` storage.
        shard_size: rows per safetensors file.
        device: where the encoder runs.
        total: the number of items, for the progress bar only.
    Returns:
        the manifest written.
    """
    from tqdm import tqdm

    target = Path(out)
    if dtype not in DTYPES:
        raise FeatureCacheError(f"feature cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if shard_size < 1:
        raise FeatureCacheError(f"shard size must be >= 1, got {shard_size}")
    if target.exists():
        raise FeatureCacheError(f"feature cache folder {target} already exists; choose a new --out")
    record = encoder_record(encoder)
    encoder = encoder.to(device).eval()
    samples: list[list[str]] = []
    dropped: dict[str, str] = {}
    shards: list[dict] = []
    pending: list[torch.Tensor] = []

    def flush(tmp: Path, final: bool) -> None:
        rows = torch.cat(pending) if pending else torch.empty(0)
        pending.clear()
        while len(rows) >= shard_size or (final and len(rows)):
            name = SHARD_PATTERN % len(shards)
            data = save({"features": rows[:shard_size].contiguous()})
            atomic_write(tmp / name, lambda handle: handle.write(data))
            shards.append({"file": name, "samples": min(shard_size, len(rows))})
            rows = rows[shard_size:]
        if len(rows):
            pending.append(rows)

    with atomic_folder(target) as tmp:  # DIR appears whole, when complete
        with torch.inference_mode(), tqdm(total=total, desc="encode", unit="img", dynamic_ncols=True) as bar:
            for items in batches:
                good = [it for it in items if it[2] is not None]
                for image_id, _, _, reason in items:
                    if reason:
                        dropped[image_id] = reason
                        logger.warning("left out of the feature cache: %s (%s)", image_id, reason)
                if good:
                    pixels = torch.stack([it[2] for it in good]).to(device, non_blocking=True)
                    feats = encoder(pixels.to(next(encoder.parameters()).dtype)).to(DTYPES[dtype]).cpu()
                    if not bool(torch.isfinite(feats).all()):
                        raise FeatureCacheError(f"encoder outputs for {good[0][0]}... are not finite in {dtype}; "
                                                "use --dtype float32")
                    pending.append(feats)
                    samples += [[it[0], it[1]] for it in good]
                    flush(tmp, final=False)
                bar.update(len(items))
        flush(tmp, final=True)
        if not samples:
            raise FeatureCacheError(f"no image of {source.get('root')} could be encoded")
        manifest = {"format": FORMAT, "version": VERSION, "dtype": dtype, "encoder": record, "source": source,
                    "shards": shards, "samples": samples, "dropped": dropped}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, ensure_ascii=False))
    logger.info("feature cache %s: %d samples in %d shards (%s, %s %d x %d), %d left out", target, len(samples),
                len(shards), dtype, record["output"], record["num_tokens"], record["dim"], len(dropped))
    return manifest
