"""A JSON-format dataset (XrayGPT filter_cap.json or one split of an R2Gen annotation.json) written
as webdataset shards, with a stats.json of what was read, written and dropped.

The samples are read exactly as the training builders read them (`xraygpt.data.formats`), so
the shards hold the same samples; shard layout: `xraygpt.data.shards`.
"""

from __future__ import annotations

from pathlib import Path

from xraygpt.data.formats import read_samples
from xraygpt.data.prepare.pipeline import check_output_dir
from xraygpt.data.prepare.stats import PrepareStats
from xraygpt.data.shards import write_shards


def prepare_shards(format: str, root: Path, out: Path, split: str, ann_file: str | None, image_dir: str | None,
                   maxcount: int, maxsize: int, verify_images: bool) -> dict:
    """Write the shards of `root` into `out`; returns the stats.json content."""
    check_output_dir(out)
    samples, dropped, total = read_samples(format, root, ann_file, image_dir, split, verify_images)
    stats = PrepareStats("shards", {"root": str(root), "format": format, **({"split": split} if format == "r2gen" else {})})
    stats.add_step("read annotations", "sample", total, len(samples),
                   [(item_id, reason) for reason, ids in dropped.items() for item_id in ids])
    manifest, failed = write_shards(samples, out, maxcount, maxsize)
    stats.add_step("write shards", "sample", len(samples), manifest["samples"], failed)
    stats.outputs["shards"] = {"shards": len(manifest["shards"]), "samples": manifest["samples"]}
    return stats.write(out / "stats.json")
