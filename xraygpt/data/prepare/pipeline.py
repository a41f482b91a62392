"""Steps shared by the MIMIC-CXR and OpenI preparations, and the output they write.

Reports (with their images) go through: read -> control characters removed (counted) -> the paper's filters -> the rule summary
(`xraygpt.data.prepare.cleaning`) -> the labeler guard (`xraygpt.data.prepare.guard`).  Images then go through: report kept -> (source-specific
steps) -> image file exists -> image header readable; reports left without an image are
dropped last.  Every step is recorded in a `PrepareStats`.

Output, one folder per split (train, val, test) in XrayGPT's layout plus the raw sections:

    <out>/<split>/filter_cap.json   {"annotations": [{"image_id", "caption", "report_id"}, ...]}
    <out>/<split>/image/<image_id>.<ext>   a symbolic link to the source image, or a copy (.dcm stays DICOM)
    <out>/<split>/reports.json      {report_id: {"sections": {name: raw text}, "summary": ...,
                                                 "image_ids": [...], "summarizer": "rule" | "llm",
                                                 "edits": [...]}}
                                    (re-summarise with any LLM); each edit is one source sentence
                                    the summary changed: {"rules": [...], "before": ..., "after":
                                    the summary's sentence, "" when removed, "reason": why removed}
    <out>/<split>/studies.jsonl     one study record per report (images with views, indication,
                                    comparison, sections, summary, prior study):
                                    `xraygpt.data.prepare.study_files`
    <out>/stats.json                see `xraygpt.data.prepare.stats`
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from xraygpt.data.formats import readable_header
from xraygpt.data.paths import safe_name
from xraygpt.data.prepare.cleaning import Cleaned, clean_summary, filter_reason
from xraygpt.data.prepare.fidelity import fidelity_table, source_text
from xraygpt.data.prepare.guard import guard_summary
from xraygpt.data.prepare.llm_summary import LLMSummarizer, apply_llm_summaries
from xraygpt.data.prepare.sections import remove_controls
from xraygpt.data.prepare.splits import SPLITS
from xraygpt.data.prepare.stats import PrepareStats
from xraygpt.data.prepare.study_files import StudySource, study_record, write_study_files

# --image-mode: how a prepared split holds its images (symbolic links to the source, or copies)
IMAGE_STORAGE_MODES = ("link", "copy")


class PrepareError(ValueError):
    """A preparation that cannot run (missing input folder or file, bad CSV header, non-empty output)."""


@dataclasses.dataclass
class ImageRef:
    """One image of a report; `problem` is set when the source already knows it is unusable."""

    image_id: str
    path: Path | None
    report_id: str
    problem: str | None = None


@dataclasses.dataclass
class Report:
    """One report: its raw sections and images; `error` is set when it could not be read."""

    report_id: str
    sections: dict[str, str]
    images: list[ImageRef]
    error: str | None = None
    summary: str = ""
    edits: list[dict] = dataclasses.field(default_factory=list)
    summarizer: str = "rule"


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a (possibly gzipped) CSV file that must have `columns`."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise PrepareError(f"{path} has no column {missing[0]!r} (columns: {', '.join(reader.fieldnames or [])})")
        return list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PrepareError(f"{path} is not a readable UTF-8 CSV file: {exc}") from exc


def check_output_dir(out: Path) -> None:
    """Refuse an output folder that already holds files (a second run would mix with the first)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrepareError(f"output folder {out} is not empty; choose a new --out")


def edits_of(cleaned: Cleaned) -> list[dict]:
    """The sentences a summary changed or removed, as recorded in reports.json."""
    return [{"rules": o.rules, "before": o.source, "after": o.text, **({"reason": o.removed} if o.removed else {})}
            for o in cleaned.sentences if o.rules or o.removed]


def summarise(reports: list[Report], stats: PrepareStats, summarizer: "LLMSummarizer | None" = None) -> list[Report]:
    """The reports that are readable, pass the paper's filters and keep a non-empty guarded summary
    (the rule summary, or the LLM's where `summarizer` is given and its answer passes the guard)."""
    reports = stats.step("report readable", "report", reports, lambda r: r.error, lambda r: r.report_id)
    for report in reports:
        removed = remove_controls(report.sections)
        if removed:
            stats.control_characters.update(reports=1, characters=removed)
    reports = stats.step("paper filters", "report", reports, lambda r: filter_reason(r.sections), lambda r: r.report_id)
    for report in reports:
        findings, impression = report.sections["findings"], report.sections["impression"]
        cleaned = clean_summary(findings, impression)
        stats.guard_events.update(guard_summary(findings, impression, cleaned))
        report.summary, report.edits = cleaned.summary, edits_of(cleaned)
        stats.removed_sentences.update(reason for reason, _ in cleaned.removed)
        stats.rewrite_rules.update(rule for outcome in cleaned.rewritten for rule in outcome.rules)
    reports = stats.step("summary cleaning", "report", reports,
                         lambda r: None if r.summary else "empty summary after cleaning", lambda r: r.report_id)
    if summarizer is not None:
        apply_llm_summaries(reports, summarizer, stats)
    return reports


def images_of_kept_reports(images: list[ImageRef], kept: list[Report], stats: PrepareStats) -> list[ImageRef]:
    """`images` whose report was kept; the others are dropped naming their report's reason."""
    kept_ids = {r.report_id for r in kept}
    why = {d["id"]: d["reason"] for d in stats.dropped if d["unit"] == "report"}
    return stats.step("report kept", "image", images,
                      lambda im: None if im.report_id in kept_ids else f"report dropped ({why.get(im.report_id, 'no report')})",
                      lambda im: im.image_id)


def image_file(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path:
    """`folder`/`stem` with the first of `suffixes` whose file exists (e.g. a release's .jpg, else
    its DICOM .dcm); the first suffix when none does (then reported as missing)."""
    for suffix in suffixes:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return folder / f"{stem}{suffixes[0]}"


def check_image_files(images: list[ImageRef], stats: PrepareStats, verify: bool) -> list[ImageRef]:
    """`images` whose file exists and (with `verify`) whose header reads (`xraygpt.data.images`: PNG,
    JPEG, ..., DICOM)."""
    images = stats.step("image file exists", "image", images,
                        lambda im: None if im.path is not None and im.path.is_file() else "image file missing",
                        lambda im: im.image_id)
    if verify:
        with ThreadPoolExecutor(max_workers=8) as pool:  # header reads are I/O-bound
            readable = dict(zip((im.image_id for im in images), pool.map(readable_header, [im.path for im in images])))
        images = stats.step("image header readable", "image", images,
                            lambda im: None if readable[im.image_id] else "image unreadable", lambda im: im.image_id)
    return images


def reports_with_images(reports: list[Report], images: list[ImageRef], stats: PrepareStats) -> list[Report]:
    """The reports that still have an image; each keeps only those images."""
    by_report: dict[str, list[ImageRef]] = {}
    for image in images:
        by_report.setdefault(image.report_id, []).append(image)
    for report in reports:
        report.images = by_report.get(report.report_id, [])
    return stats.step("has a usable image", "report", reports,
                      lambda r: None if r.images else "no usable image", lambda r: r.report_id)


def write_layout(out: Path, reports: list[Report], split_of: Callable[[ImageRef], str], image_mode: str,
                 stats: PrepareStats, source: StudySource | None = None) -> dict:
    """Write the per-split folders and stats.json (see module docstring); returns the stats content.
    `source`: the views, subjects and study times of the study files (none known by default)."""
    if image_mode not in IMAGE_STORAGE_MODES:
        raise PrepareError(f"unknown image mode {image_mode!r}; known: {', '.join(IMAGE_STORAGE_MODES)}")
    source = source if source is not None else StudySource()
    studies: dict[str, list] = {}
    for split in SPLITS:
        annotations, split_reports = [], {}
        image_dir = out / split / "image"
        studies[split] = []
        for report in reports:
            images = [im for im in report.images if split_of(im) == split]
            if not images:
                continue
            image_dir.mkdir(parents=True, exist_ok=True)
            split_reports[report.report_id] = {"sections": report.sections, "summary": report.summary,
                                               "image_ids": [im.image_id for im in images], "summarizer": report.summarizer,
                                               "edits": report.edits}
            targets = []
            for image in images:
                annotations.append({"image_id": image.image_id, "caption": report.summary, "report_id": report.report_id})
                target = image_dir / safe_name(f"{image.image_id}{image.path.suffix.lower()}")
                if image_mode == "link":
                    target.symlink_to(image.path.resolve())
                else:
                    shutil.copyfile(image.path, target)
                targets.append((image.image_id, target))
            studies[split].append(study_record(report.report_id, report.sections, report.summary, targets, source))
        if annotations:
            (out / split / "filter_cap.json").write_text(json.dumps({"annotations": annotations}, indent=1, ensure_ascii=False))
            (out / split / "reports.json").write_text(json.dumps(split_reports, indent=1, ensure_ascii=False))
            stats.outputs[split] = {"reports": len(split_reports), "images": len(annotations)}
    report_drops = Counter(d["reason"].split(": ")[0] for d in stats.dropped if d["unit"] == "report")
    stats.studies = write_study_files(out, studies, source, report_drops)
    stats.fidelity = fidelity_table([source_text(r.sections) for r in reports], [r.summary for r in reports])
    return stats.write(out / "stats.json")
