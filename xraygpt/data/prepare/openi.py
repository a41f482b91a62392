"""OpenI (Indiana University chest X-rays) from its public release: ecgen-radiology/*.xml + NLMCXR_png/.

Input:
    <reports>/<N>.xml     <AbstractText Label="FINDINGS|IMPRESSION|COMPARISON|INDICATION">text</AbstractText>
                          ... <parentImage id="CXR<N>_IM-xxxx-yyyy"> ... (one per image, in order)
    <images>/CXR<N>_IM-xxxx-yyyy.png   (or .dcm: the NLMCXR_dcm release)

Ids are XrayGPT's: report `<N>` (the XML file's stem), image `<N>_<k>` for the k-th
parentImage of the report (k from 1): report 1384's first image is "1384_1".  Labels are made
canonical like MIMIC headers (`xraygpt.data.prepare.sections`).  A file that is not
well-formed XML (including bytes that are not valid in its declared encoding, UTF-8 by default)
drops its report; its images cannot be listed.  An image file listed twice (in one report or
two) is kept once.  The split is seeded and by report (one report per patient in OpenI), so a
report's images never land in two splits.  Uses xml.etree.ElementTree: the files are local,
and Python's expat refuses entity-expansion bombs.  A parentImage id must be a plain file name
(`xraygpt.data.paths.safe_name`): one holding a path ("../outside/secret") drops its image.

The XML does not tell an image's view (nor does its name: report 1's `-3001` is the lateral,
`-4001` the frontal).  The study files (`xraygpt.data.prepare.study_files`) take it from an
optional projections CSV as derived releases ship it (Kaggle's `indiana_projections.csv`:
`uid,filename,projection`, `1_IM-0001-4001.dcm.png,Frontal`; matched by `image_key`), else
`unknown`.  OpenI names no subject or study time, so no study has a prior.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from xraygpt.data.paths import UnsafePath, safe_name
from xraygpt.data.prepare.llm_summary import LLMSummarizer
from xraygpt.data.prepare.pipeline import (
    ImageRef, PrepareError, Report, check_image_files, check_output_dir, image_file, images_of_kept_reports, read_csv,
    reports_with_images, summarise, write_layout,
)
from xraygpt.data.prepare.sections import add_section
from xraygpt.data.prepare.splits import split_by_group
from xraygpt.data.prepare.stats import PrepareStats
from xraygpt.data.prepare.study_files import StudySource
from xraygpt.data.studies import UNKNOWN_VIEW, canonical_view

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".dcm")  # NLMCXR_png, else NLMCXR_dcm


def read_openi_report(path: Path, images_dir: Path) -> Report:
    """The sections and images of one ecgen-radiology XML file (`error` set when it does not parse)."""
    report_id = path.stem
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return Report(report_id, {}, [], error=f"malformed XML: {exc}")
    except OSError as exc:
        return Report(report_id, {}, [], error=f"unreadable file: {exc.strerror or exc}")
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = node.get("Label")
        if label:
            add_section(sections, label, "".join(node.itertext()))
    images = []
    for k, node in enumerate(root.iter("parentImage"), start=1):
        name = (node.get("id") or "").strip()
        try:
            path, problem = image_file(images_dir, safe_name(name), IMAGE_SUFFIXES), None
        except UnsafePath as exc:
            path, problem = None, "parentImage without id" if not name else f"unsafe parentImage id: {exc}"
        images.append(ImageRef(f"{report_id}_{k}", path, report_id, problem))
    return Report(report_id, sections, images)


def image_key(name: str) -> str:
    """The name an OpenI image goes by in every release: `CXR1_IM-0001-4001` (parentImage id),
    `CXR1_IM-0001-4001.png` (NLMCXR_png) and `1_IM-0001-4001.dcm.png` (Kaggle's projections file)
    are all `1_IM-0001-4001`."""
    stem = name.strip()
    while True:
        lower = stem.lower()
        suffix = next((s for s in (".png", ".dcm", ".jpg", ".jpeg") if lower.endswith(s)), None)
        if suffix is None:
            break
        stem = stem[:-len(suffix)]
    return stem[3:] if stem[:3].upper() == "CXR" else stem


def read_projections(path: Path) -> tuple[dict[str, str], Counter[str]]:
    """({image key: canonical view}, problems) of a projections CSV (`uid,filename,projection`;
    projection Frontal or Lateral).  An unknown projection, or two rows of one image that disagree,
    give `unknown`; both are counted."""
    if not path.is_file():
        raise PrepareError(f"projections file {path} does not exist")
    views: dict[str, str] = {}
    problems: Counter[str] = Counter()
    for row in read_csv(path, ("filename", "projection")):
        key, view = image_key(row["filename"] or ""), canonical_view(row["projection"] or "")
        if not key:
            problems["projection row without filename"] += 1
            continue
        if view == UNKNOWN_VIEW:
            problems["unknown projection"] += 1
        if views.get(key, view) != view:
            problems["conflicting projections"] += 1
            view = UNKNOWN_VIEW
        views[key] = view
    return views, problems


def openi_study_source(reports: list[Report], projections: tuple[dict[str, str], Counter[str]] | None) -> StudySource:
    """Views of the reports' images from `read_projections`' result (else `unknown`); OpenI gives no
    subject or study time."""
    source = StudySource()
    if projections is None:
        return source
    views, problems = projections
    source.problems.update(problems)
    matched = set()
    for report in reports:
        for image in report.images:
            key = image_key(image.path.name) if image.path is not None else ""
            if key in views:
                source.views[image.image_id] = views[key]
                matched.add(key)
            else:
                source.problems["image without projection row"] += 1
    if len(views) > len(matched):
        source.problems["projection rows matching no kept image"] += len(views) - len(matched)
    return source


def prepare_openi(reports_dir: Path, images_dir: Path, out: Path, fractions: tuple[float, float, float],
                  seed: int, image_mode: str, verify_images: bool, summarizer: LLMSummarizer | None = None,
                  projections: Path | None = None) -> dict:
    """Prepare OpenI into `out` (layout: `xraygpt.data.prepare.pipeline`); returns the stats.json content.
    `projections`: a `uid,filename,projection` CSV giving the study files their views."""
    for folder in (reports_dir, images_dir):
        if not folder.is_dir():
            raise PrepareError(f"input folder {folder} does not exist")
    check_output_dir(out)
    views = read_projections(projections) if projections is not None else None
    stats = PrepareStats("openi", {"reports": str(reports_dir), "images": str(images_dir),
                                   **({"projections": str(projections)} if projections is not None else {})})
    reports = [read_openi_report(path, images_dir) for path in sorted(reports_dir.glob("*.xml"))]
    if not reports:
        raise PrepareError(f"no *.xml report in {reports_dir}")
    kept = summarise(reports, stats, summarizer)
    listed = [image for report in reports for image in report.images]
    seen_files: set[Path] = set()

    def listing_problem(image: ImageRef) -> str | None:
        if image.problem:
            return image.problem
        if image.path in seen_files:
            return f"duplicate image ({image.path.name} listed before)"
        seen_files.add(image.path)
        return None

    images = stats.step("image listed once", "image", listed, listing_problem, lambda im: im.image_id)
    images = images_of_kept_reports(images, kept, stats)
    images = check_image_files(images, stats, verify_images)
    kept = reports_with_images(kept, images, stats)
    split_of_report = split_by_group([r.report_id for r in kept], fractions, seed)
    logger.info("openi: %d reports, %d images kept", len(kept), sum(len(r.images) for r in kept))
    source = openi_study_source(kept, views)
    return write_layout(out, kept, lambda im: split_of_report[im.report_id], image_mode, stats, source)
