"""MIMIC-CXR from its official releases: the free-text reports and MIMIC-CXR-JPG.

Input:
    <reports>/files/pXX/pNNNNNNNN/sNNNNNNNN.txt              one report per study (free text)
    <images>/files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg     pXX: the subject id's first 2 digits
                                                              (or <dicom_id>.dcm: the DICOM release)
    <images>/mimic-cxr-2.0.0-metadata.csv[.gz]                dicom_id, subject_id, study_id, ViewPosition,
                                                              StudyDate, StudyTime (optional: the priors), ...
    <images>/mimic-cxr-2.0.0-split.csv[.gz]                   dicom_id, ..., split (train / validate / test)

One sample per image (dicom_id), captioned by its study's report (report id `s<study_id>`,
the report file's stem).  Reports are split into sections by `xraygpt.data.prepare.sections`;
a report that is not UTF-8 is dropped.  Image steps: metadata row valid (digit subject and study ids, a dicom_id that is a plain file
name: `xraygpt.data.paths.safe_name`) -> id unique (the
first row is kept) -> report kept -> in the split file (one split per image; conflicting rows
drop it) -> frontal (ViewPosition PA or AP; only with `frontal_only`) -> file exists -> header
readable.  The split is the official one (by patient); a subject found in two splits is
logged.  The study files (`xraygpt.data.prepare.study_files`) take each image's view from
ViewPosition and each study's prior from StudyDate + StudyTime within its subject.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from xraygpt.data.paths import UnsafePath, safe_name
from xraygpt.data.prepare.llm_summary import LLMSummarizer
from xraygpt.data.prepare.pipeline import (
    ImageRef, PrepareError, Report, check_image_files, check_output_dir, image_file, images_of_kept_reports, read_csv,
    reports_with_images, summarise, write_layout,
)
from xraygpt.data.prepare.sections import parse_report
from xraygpt.data.prepare.splits import MIMIC_SPLIT_NAMES, leaked_groups
from xraygpt.data.prepare.stats import PrepareStats
from xraygpt.data.prepare.study_files import StudySource, parse_study_time
from xraygpt.data.studies import canonical_view

logger = logging.getLogger(__name__)

METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
FRONTAL_VIEWS = ("PA", "AP")
IMAGE_SUFFIXES = (".jpg", ".dcm")  # MIMIC-CXR-JPG, else MIMIC-CXR's DICOM


def find_csv(folder: Path, name: str) -> Path:
    """`folder`/`name`, or its .gz as distributed."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise PrepareError(f"{folder / name} (or .gz) does not exist")


def read_mimic_report(report_id: str, path: Path | None, images: list[ImageRef]) -> Report:
    """The sections of one report file (`error` set when missing or not UTF-8)."""
    if path is None:
        return Report(report_id, {}, images, error="report file missing")
    try:
        return Report(report_id, parse_report(path.read_bytes().decode("utf-8")), images)
    except UnicodeDecodeError as exc:
        return Report(report_id, {}, images, error=f"not UTF-8 text: {exc.reason} at byte {exc.start}")


def _official_splits(rows: list[dict[str, str]]) -> dict[str, str | None]:
    """{dicom_id: train | val | test}, None for an id with conflicting or unknown split names."""
    splits: dict[str, str | None] = {}
    for row in rows:
        dicom, name = row["dicom_id"].strip(), MIMIC_SPLIT_NAMES.get(row["split"].strip().lower())
        splits[dicom] = name if splits.get(dicom, name) == name else None
    return splits


def prepare_mimic(reports_root: Path, images_root: Path, out: Path, frontal_only: bool, image_mode: str,
                  verify_images: bool, summarizer: LLMSummarizer | None = None) -> dict:
    """Prepare MIMIC-CXR into `out` (layout: `xraygpt.data.prepare.pipeline`); returns the stats.json content."""
    for folder in (reports_root / "files", images_root / "files"):
        if not folder.is_dir():
            raise PrepareError(f"input folder {folder} does not exist")
    check_output_dir(out)
    metadata_path, split_path = find_csv(images_root, METADATA), find_csv(images_root, SPLIT_FILE)
    rows = read_csv(metadata_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    official = _official_splits(read_csv(split_path, ("dicom_id", "split")))
    stats = PrepareStats("mimic", {"reports": str(reports_root), "images": str(images_root),
                                   "metadata": str(metadata_path), "split": str(split_path)})

    images: list[ImageRef] = []
    view, subject_of = {}, {}
    source = StudySource()
    for line, row in enumerate(rows, start=2):
        dicom, subject, study = (row[k].strip() for k in ("dicom_id", "subject_id", "study_id"))
        if not (dicom and subject.isdigit() and study.isdigit()):
            images.append(ImageRef(f"{metadata_path.name} line {line}", None, "", "malformed metadata row"))
            continue
        try:
            safe_name(dicom)
        except UnsafePath as exc:
            images.append(ImageRef(f"{metadata_path.name} line {line}", None, "", f"malformed metadata row: {exc}"))
            continue
        path = image_file(images_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}", dicom, IMAGE_SUFFIXES)
        images.append(ImageRef(dicom, path, f"s{study}"))
        view.setdefault(dicom, (row["ViewPosition"] or "").strip())
        subject_of.setdefault(dicom, subject)
        study_source_row(source, dicom, subject, f"s{study}", row)
    seen: set[str] = set()

    def row_problem(image: ImageRef) -> str | None:
        if image.problem:
            return image.problem
        if image.image_id in seen:
            return "duplicate image id"
        seen.add(image.image_id)
        return None

    images = stats.step("metadata row valid and unique", "image", images, row_problem, lambda im: im.image_id)

    report_files = {p.stem: p for p in (reports_root / "files").glob("p*/p*/s*.txt")}
    by_report: dict[str, list[ImageRef]] = defaultdict(list)
    for image in images:
        by_report[image.report_id].append(image)
    reports = [read_mimic_report(rid, report_files.get(rid), by_report.get(rid, []))
               for rid in sorted(set(report_files) | set(by_report))]
    reports = stats.step("report has images", "report", reports,
                         lambda r: None if r.images else "no image in the metadata", lambda r: r.report_id)
    kept = summarise(reports, stats, summarizer)

    images = images_of_kept_reports(images, kept, stats)
    images = stats.step("in the official split", "image", images,
                        lambda im: None if official.get(im.image_id) else
                        ("conflicting or unknown split" if im.image_id in official else "not in the split file"),
                        lambda im: im.image_id)
    if frontal_only:
        def not_frontal(image: ImageRef) -> str | None:
            position = view[image.image_id]
            return None if position in FRONTAL_VIEWS else f"not frontal (ViewPosition {position or 'empty'})"

        images = stats.step("frontal view", "image", images, not_frontal, lambda im: im.image_id)
    images = check_image_files(images, stats, verify_images)
    kept = reports_with_images(kept, images, stats)
    leaks = leaked_groups((subject_of[im.image_id], official[im.image_id]) for r in kept for im in r.images)
    if leaks:
        logger.warning("mimic: %d subjects have images in two splits of the split file, first: %s", len(leaks),
                       ", ".join(sorted(leaks)[:5]))
    logger.info("mimic: %d reports, %d images kept", len(kept), sum(len(r.images) for r in kept))
    return write_layout(out, kept, lambda im: official[im.image_id], image_mode, stats, source)


def study_source_row(source: StudySource, dicom: str, subject: str, report_id: str, row: dict[str, str]) -> None:
    """Add one valid metadata row to the study files' source: the image's view (`ViewPosition`:
    empty is `unknown`), the study's subject (a study whose rows name two subjects is counted and
    gets no prior) and time (`StudyDate` + `StudyTime`, optional columns; the first row that
    parses gives it)."""
    source.views.setdefault(dicom, canonical_view(row.get("ViewPosition") or ""))
    known = source.subjects.setdefault(report_id, subject)
    if known != subject and report_id not in source.ambiguous:
        source.ambiguous.add(report_id)
        source.problems["study under two subjects"] += 1
    if report_id not in source.times:
        when = parse_study_time(row.get("StudyDate") or "", row.get("StudyTime") or "")
        if when is not None:
            source.times[report_id] = when
