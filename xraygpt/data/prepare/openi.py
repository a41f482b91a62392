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
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

from xraygpt.data.paths import UnsafePath, safe_name
from xraygpt.data.prepare.llm_summary import LLMSummarizer
from xraygpt.data.prepare.pipeline import (
    ImageRef, PrepareError, Report, check_image_files, check_output_dir, image_file, images_of_kept_reports,
    reports_with_images, summarise, write_layout,
)
from xraygpt.data.prepare.sections import add_section
from xraygpt.data.prepare.splits import split_by_group
from xraygpt.data.prepare.stats import PrepareStats

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


def prepare_openi(reports_dir: Path, images_dir: Path, out: Path, fractions: tuple[float, float, float],
                  seed: int, image_mode: str, verify_images: bool, summarizer: LLMSummarizer | None = None) -> dict:
    """Prepare OpenI into `out` (layout: `xraygpt.data.prepare.pipeline`); returns the stats.json content."""
    for folder in (reports_dir, images_dir):
        if not folder.is_dir():
            raise PrepareError(f"input folder {folder} does not exist")
    check_output_dir(out)
    stats = PrepareStats("openi", {"reports": str(reports_dir), "images": str(images_dir)})
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
    return write_layout(out, kept, lambda im: split_of_report[im.report_id], image_mode, stats)
