"""webdataset tar shards of image-summary samples: the writer and the streaming dataset.

Layout of a shard folder (written by `write_shards`, i.e. `python -m xraygpt.data.prepare shards`):

    <root>/shard-000000.tar ...   per sample two members, "<key>.<ext>" (the image file's bytes,
                                  unchanged; ext: png, jpg, ..., "img" for a file without
                                  one) and "<key>.json" ({"image_id", "caption"});
                                  keys are zero-padded running numbers, because image ids may hold
                                  dots, which webdataset reads as extension separators
    <root>/shards.json            {"shards": [{"file": "shard-000000.tar", "samples": N}, ...], "samples": total}

`ShardDataset` streams them for training (a torch IterableDataset):
- Each (rank, DataLoader worker) slot reads a disjoint subset of the shards, shards[slot::slots]
  with slot = rank * workers + worker: webdataset's split_by_node + split_by_worker, with the
  rank given by the runner rather than read from the environment.  So ranks see different
  samples; it needs at least world_size x num_workers shards (checked in `for_rank`).
- Within its subset a slot draws shards with replacement, forever (webdataset's
  ResampledShards): iteration-based epochs have no epoch boundary.  Samples pass a shuffle
  buffer of `shuffle_buffer` raw samples (webdataset's shuffle).  Write shards of equal size
  (`--maxcount`): shards are drawn uniformly, so samples of a small shard come up more often.
- Resume: a slot's stream is seeded by (seed, rank, worker, samples this rank consumed before
  the resume step).  A resumed run continues at the checkpoint step with weights, optimizer,
  schedule and RNG restored exactly, but reads a fresh deterministic draw of shards, not the
  order the uninterrupted run would have read (map-style datasets resume that order exactly;
  with shards drawn with replacement the sample distribution is the same either way).

`get(index, rng)` reads the shards in order (no resampling), for generating summaries over a
held-out shard folder; it is fast for increasing indices.

Bad data never stops training: a corrupt tar member or shard, a sample missing its image or
json, invalid or non-UTF-8 json, and an image that does not decode or exceeds `max_pixels` are
counted per reason in `failures` (per process), logged with the shard and key (and image id
when known) the first time a process meets them, and skipped.  A reader that meets only
failures for 10 x (samples + shards) samples in a row stops with an error.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import webdataset as wds

from xraygpt.data.formats import WEBDATASET, DatasetError, Sample, image_text_sample, read_json
from xraygpt.data.paths import UnsafePath, confined
from xraygpt.data.transforms import DECODE_ERRORS, decode_image

logger = logging.getLogger(__name__)

MANIFEST = WEBDATASET.ann_file
SHARD_PATTERN = "shard-%06d.tar"


def write_shards(samples: Iterable[Sample], out_dir: Path, maxcount: int, maxsize: int) -> tuple[dict, list[tuple[str, str]]]:
    """Write `samples` as shards of at most `maxcount` samples / `maxsize` bytes into `out_dir`.

    Returns (manifest, failed): the manifest written to shards.json, and (image_id, reason) for
    each sample whose image file could not be read.  Tar members get mtime 0, so the same
    input gives byte-identical shards.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    failed: list[tuple[str, str]] = []
    pattern = str(out_dir).replace("%", "%%") + "/" + SHARD_PATTERN
    written = 0
    with wds.ShardWriter(pattern, maxcount=maxcount, maxsize=maxsize, verbose=0, encoder=False, mtime=0) as writer:
        for image_id, path, caption in samples:
            try:
                image_bytes = path.read_bytes()
            except OSError as exc:
                failed.append((image_id, f"image unreadable: {exc.strerror or exc}"))
                continue
            ext = path.suffix.lower().lstrip(".") or "img"
            meta = json.dumps({"image_id": image_id, "caption": caption}, ensure_ascii=False).encode("utf-8")
            writer.write({"__key__": f"{written:09d}", ext: image_bytes, "json": meta})
            counts[Path(writer.fname).name] += 1
            written += 1
    if not written:  # the writer opens its first shard eagerly
        Path(pattern % 0).unlink(missing_ok=True)
    manifest = {"shards": [{"file": name, "samples": n} for name, n in sorted(counts.items())], "samples": written}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest, failed


def read_manifest(root: Path, manifest: str) -> tuple[list[Path], int]:
    """(shard files, total samples) listed in `root`/`manifest` (shards.json); listed shards that
    are missing are logged and left out."""
    data = read_json(root / manifest, "shard manifest")
    entries = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("file"), str)
                                                and isinstance(e.get("samples"), int) for e in entries):
        raise DatasetError(f"shard manifest {root / manifest} has no 'shards' list of {{file, samples}}")
    files: dict[int, Path] = {}
    for k, entry in enumerate(entries):
        try:
            files[k] = confined(root, entry["file"])
        except UnsafePath as exc:
            logger.warning("%s: a listed shard is left out: %s", root / manifest, exc)
    present = [k for k, file in files.items() if file.is_file()]
    missing = [entries[k]["file"] for k in files if k not in present]
    if missing:
        logger.warning("%s: %d listed shards are missing, first: %s", root, len(missing), ", ".join(missing[:5]))
    return [files[k] for k in present], sum(entries[k]["samples"] for k in present)


class ShardDataset(torch.utils.data.IterableDataset):
    """Image + summary samples streamed from shards; see module docstring.

    Args:
        name: source name for messages and samples (e.g. "mimic").
        shards: shard files.
        num_samples: samples in them (from the manifest).
        vis_processor: PIL image, rng -> (3, H, W) tensor.
        text_processor: caption -> cleaned caption.
        instructions: instructions to sample from (each holds `<ImageHere>`).
        max_pixels: images with more pixels are skipped (checked before decoding).
        shuffle_buffer: raw samples held for shuffling (memory: that many encoded images).
    """

    capabilities = WEBDATASET.capabilities

    def __init__(self, name: str, shards: list[Path], num_samples: int, vis_processor: Callable,
                 text_processor: Callable[[str], str], instructions: list[str], max_pixels: int, shuffle_buffer: int):
        if not shards or num_samples <= 0:
            raise DatasetError(f"{name}: no shard with samples")
        self.name = name
        self.shards = [str(s) for s in shards]
        self.num_samples = num_samples
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.instructions = instructions
        self.max_pixels = max_pixels
        self.shuffle_buffer = shuffle_buffer
        self.rank, self.world_size, self.seed, self.start = 0, 1, 0, 0
        self._reset_reading_state()

    def _reset_reading_state(self) -> None:
        self.failures: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()
        self._failures_in_a_row = 0
        self._ordered: Iterator[dict] | None = None  # in-order reader of `get`, and its position
        self._position = 0

    def __len__(self) -> int:
        return self.num_samples

    def for_rank(self, rank: int, world_size: int, num_workers: int, seed: int, start: int) -> "ShardDataset":
        """A copy streaming rank `rank`'s share, seeded by `seed`, after `start` samples consumed by this rank."""
        slots = world_size * max(1, num_workers)
        if len(self.shards) < slots:
            raise DatasetError(
                f"{self.name}: {len(self.shards)} shards cannot feed {world_size} ranks x {max(1, num_workers)} "
                f"data workers; write at least {slots} shards (a smaller --maxcount) or lower run.num_workers"
            )
        configured = copy.copy(self)
        configured.rank, configured.world_size, configured.seed, configured.start = rank, world_size, seed, start
        configured._reset_reading_state()
        return configured

    # ------------------------------------------------------------------ raw samples
    def _report(self, reason: str, where: str, detail: str) -> None:
        """Count a failure; log it the first time this process meets it (resampling re-reads shards).

        Raises DatasetError after 10 x (samples + shards) failures in a row: then nothing in
        this reader's shards decodes, and a stream would otherwise search for ever.
        """
        self.failures[reason] += 1
        self._failures_in_a_row += 1
        if (reason, where) not in self._logged:
            self._logged.add((reason, where))
            logger.warning("%s: %s: %s (%s); skipped", self.name, where, reason, detail)
        if self._failures_in_a_row > 10 * (self.num_samples + len(self.shards)):
            raise DatasetError(f"{self.name}: no sample in the shards decodes ({self._failures_in_a_row} failures in a row, "
                               f"last: {where}: {reason})")

    def _tar_error(self, exc: Exception) -> bool:
        """webdataset's error handler: report a corrupt shard or member, then go on."""
        self._report("corrupt shard data", " ".join(str(a) for a in exc.args[1:] if isinstance(a, str)) or "shard",
                     str(exc.args[0]) if exc.args else type(exc).__name__)
        return True

    def decode(self, raw: dict, rng: random.Random) -> dict | None:
        """A training sample from raw tar members, or None (reported) when unusable."""
        where = f"{raw.get('__url__')} key {raw.get('__key__')}"
        ext = next((k for k in raw if k != "json" and not k.startswith("__")), None)
        if ext is None or "json" not in raw:
            members = ", ".join(k for k in raw if not k.startswith("__"))
            self._report("sample without image or json", where, f"members: {members}")
            return None
        try:
            meta = json.loads(raw["json"].decode("utf-8"))
            image_id, caption = str(meta["image_id"]), meta["caption"]
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError("empty caption")
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            self._report("bad json", where, str(exc))
            return None
        try:
            image = decode_image(raw[ext], self.max_pixels)
        except DECODE_ERRORS as exc:
            self._report("image does not decode", f"{where} (image {image_id})", str(exc))
            return None
        self._failures_in_a_row = 0
        return image_text_sample(image_id, image, caption, self.name, self.vis_processor, self.text_processor,
                                 self.instructions, rng)

    # ------------------------------------------------------------------ training stream
    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        mine = self.shards[slot::slots]
        if not mine:
            raise DatasetError(f"{self.name}: no shard for rank {self.rank} worker {worker} "
                               f"({len(self.shards)} shards, {slots} rank x worker slots)")
        rng = random.Random(f"{self.seed}:{self.rank}:{worker}:{self.start}")
        stream = wds.DataPipeline(
            # the slot is already folded into the seed, hence a constant worker seed
            wds.ResampledShards(mine, seed=rng.getrandbits(31), worker_seed=lambda: 0, deterministic=True),
            wds.tarfile_to_samples(handler=self._tar_error),
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(rng.getrandbits(31))),
        )
        for raw in stream:
            sample = self.decode(raw, rng)
            if sample is not None:
                yield sample

    # ------------------------------------------------------------------ in-order access
    def _raw_at(self, position: int) -> dict | None:
        """The raw sample at `position` of the shards read in order (None past the end)."""
        if self._ordered is None or position < self._position:
            pipeline = wds.DataPipeline(wds.SimpleShardList(self.shards), wds.tarfile_to_samples(handler=self._tar_error))
            self._ordered, self._position = iter(pipeline), 0
        raw = None
        while self._position <= position:
            raw = next(self._ordered, None)
            if raw is None:
                return None
            self._position += 1
        return raw

    def get(self, index: int, rng: random.Random) -> dict:
        """Sample `index` in shard order; an unusable one is replaced by the next (like CaptionDataset.get)."""
        position = index % self.num_samples
        for _ in range(self.num_samples):
            raw = self._raw_at(position)
            sample = self.decode(raw, rng) if raw is not None else None
            if sample is not None:
                return sample
            position = (position + 1) % self.num_samples
        raise DatasetError(f"{self.name}: no sample in the shards decodes")

    def __getitem__(self, index: int) -> dict:
        return self.get(index, random.Random(index))
