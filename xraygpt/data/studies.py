"""Studies: one record per imaging study (its views, the indication, the prior study), read and written.

A study is what a radiologist reads: the images of one examination with their views, why it was
ordered (indication), what it was compared with, the report's findings and impression, the
comparison-free summary of `xraygpt.data.prepare`, and the previous study of the same subject.
On disk a study file is JSON lines, one record a line (`prepare mimic|openi` write
`<out>/<split>/studies.jsonl`):

    {"study_id": "s50000001", "subject_id": "10000001",
     "images": [{"image_id": "d1a", "path": "image/d1a.jpg", "view": "PA"},
                {"image_id": "d1b", "path": "image/d1b.jpg", "view": "LATERAL"}],
     "indication": "...", "comparison": "...", "findings": "...", "impression": "...",
     "summary": "...", "prior_study_id": "s49999999" or null, "age": "", "sex": ""}

- Texts are strings, "" where the source has none (no indication, no impression, ...).
- Image paths are relative to the file's folder, with "/" separators; in memory they are joined
  to it (`StudyImage.path`), and a path that would leave it (absolute, `..`) drops its image.
- Views (`canonical_view`): PA, AP, FRONTAL (frontal, projection not given), LATERAL, LL (left
  lateral), MIMIC-CXR's other ViewPosition values (AP AXIAL, SWIMMERS, ...), or `unknown`.
  Images are in reading order (`order_images`): frontal first (PA, AP, FRONTAL), then LATERAL,
  LL, then the other views, then unknown; in source order within a view (a ReXrank record's key
  image first).  Every image is recorded: a model that shows at most `max_images` takes
  `limit_images`, the first ones in this order.
- `prior_study_id` names the previous study of the same subject in the same file, or null.

`read_studies` (and `xraygpt.data.rexrank.read_rexrank`, ReXrank's test files) return a
`StudyFile`: the usable records, the records dropped per reason and the problems counted in the
kept ones; they log one line with the counts and refuse a file with no usable record
(`StudyFileError`, one line naming it).  Bad input, as handled:
- no readable image (files missing, or headers that do not read with `verify_images`; no image
  listed): the record is dropped ("no readable image" / "no image listed"); a missing image of a
  record that keeps others is left out and counted ("image missing", "image unreadable");
- more images than a model shows: all recorded, the histogram in `study_stats`;
- an unknown view: the image is kept with view `unknown`, counted ("unknown view", per image);
- a prior that names a study of another subject, a study not in the file, the study itself, or a
  chain that loops: the prior is set to null and counted ("prior from another subject", ...);
- a missing indication (findings, impression, comparison): kept with "", counted ("no indication");
- a line or record that is not an object with a study id, a duplicate study id: dropped, counted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from xraygpt.atomic import atomic_write_text
from xraygpt.data.formats import readable_header
from xraygpt.data.paths import UnsafePath, confined

logger = logging.getLogger(__name__)

UNKNOWN_VIEW = "unknown"
# reading order: frontal views, then laterals; other known views after them, unknown last
VIEW_ORDER = ("PA", "AP", "FRONTAL", "LATERAL", "LL")
FRONTAL_VIEWS = frozenset({"PA", "AP", "FRONTAL"})
# MIMIC-CXR's ViewPosition values (mimic-cxr-2.0.0-metadata.csv), kept as written
MIMIC_VIEW_POSITIONS = frozenset({"PA", "AP", "LATERAL", "LL", "AP AXIAL", "PA LLD", "AP LLD", "AP RLD", "PA RLD",
                                  "LAO", "RAO", "LPO", "XTABLE LATERAL", "SWIMMERS"})
# free-text view names (ReXrank, OpenI projection files, MIMIC's ViewCodeSequence meanings)
VIEW_NAMES = {
    "frontal": "FRONTAL", "pa": "PA", "postero-anterior": "PA", "posteroanterior": "PA", "posterior-anterior": "PA",
    "ap": "AP", "antero-posterior": "AP", "anteroposterior": "AP", "anterior-posterior": "AP",
    "lateral": "LATERAL", "lat": "LATERAL", "left lateral": "LL", "ll": "LL",
}
STUDY_TEXT_FIELDS = ("indication", "comparison", "findings", "impression", "summary", "age", "sex")


class StudyFileError(ValueError):
    """A study file that cannot be used at all (not JSON, not a study layout, no usable record)."""


@dataclasses.dataclass(frozen=True)
class StudyImage:
    """One image of a study: an id, its file and its view (`canonical_view`)."""

    image_id: str
    path: Path
    view: str = UNKNOWN_VIEW


@dataclasses.dataclass
class StudyRecord:
    """One study (see module docstring); `images` in reading order."""

    study_id: str
    subject_id: str
    images: list[StudyImage]
    indication: str = ""
    comparison: str = ""
    findings: str = ""
    impression: str = ""
    summary: str = ""
    prior_study_id: str | None = None
    age: str = ""
    sex: str = ""

    def to_json(self, folder: Path) -> dict:
        """The record as a study-file line, image paths relative to `folder`."""
        images = []
        for image in self.images:
            try:
                relative = image.path.relative_to(folder)
            except ValueError as exc:
                raise StudyFileError(f"study {self.study_id}: image {image.path} is not under {folder}") from exc
            images.append({"image_id": image.image_id, "path": relative.as_posix(), "view": image.view})
        return {"study_id": self.study_id, "subject_id": self.subject_id, "images": images,
                **{name: getattr(self, name) for name in STUDY_TEXT_FIELDS[:5]},
                "prior_study_id": self.prior_study_id, "age": self.age, "sex": self.sex}


@dataclasses.dataclass
class StudyFile:
    """What a reader made of a file: usable records, records dropped per reason, problems counted."""

    path: Path
    records: list[StudyRecord]
    dropped: Counter[str]
    problems: Counter[str]
    read: int = 0

    def by_id(self) -> dict[str, StudyRecord]:
        return {record.study_id: record for record in self.records}


def canonical_view(name: Any) -> str:
    """The view a name means (PA, AP, FRONTAL, LATERAL, LL, another MIMIC ViewPosition) or `unknown`."""
    if not isinstance(name, str):
        return UNKNOWN_VIEW
    key = " ".join(name.split())
    if key.upper() in MIMIC_VIEW_POSITIONS:
        return key.upper()
    return VIEW_NAMES.get(key.lower(), UNKNOWN_VIEW)


def view_rank(view: str) -> int:
    """Reading-order rank of a view: PA 0, AP 1, FRONTAL 2, LATERAL 3, LL 4, other views 5, unknown 6."""
    if view in VIEW_ORDER:
        return VIEW_ORDER.index(view)
    return len(VIEW_ORDER) + (view == UNKNOWN_VIEW)


def order_images(images: Iterable[StudyImage], first: str | None = None) -> list[StudyImage]:
    """`images` in reading order (module docstring); `first` (an image id) leads among its view."""
    indexed = list(enumerate(images))
    indexed.sort(key=lambda item: (view_rank(item[1].view), item[1].image_id != first, item[0]))
    return [image for _, image in indexed]


def limit_images(images: list[StudyImage], max_images: int) -> list[StudyImage]:
    """The first `max_images` of `images` in reading order (what a model that shows that many takes)."""
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    return order_images(images)[:max_images]


def text_value(value: Any) -> str:
    """A source value as text, whitespace collapsed; None, NaN, a list or object, and "nan" give ""
    ("None." stays: a comparison with none is information)."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return ""
        return str(int(value)) if float(value).is_integer() else str(value)
    if not isinstance(value, str):
        return ""
    text = " ".join(value.split())
    return "" if text.lower() == "nan" else text  # pandas' NaN written as text ("Indication:nan")


def study_stats(records: list[StudyRecord]) -> dict:
    """Counts of a set of study records: studies, images per study, views, priors, missing texts."""
    views = Counter(image.view for record in records for image in record.images)
    per_study = Counter(len(record.images) for record in records)
    return {
        "studies": len(records),
        "images_per_study": {str(n): per_study[n] for n in sorted(per_study)},
        "views": dict(sorted(views.items(), key=lambda item: (view_rank(item[0]), item[0]))),
        "with_prior": sum(record.prior_study_id is not None for record in records),
        "without_indication": sum(not record.indication for record in records),
        "without_comparison": sum(not record.comparison for record in records),
        "without_findings": sum(not record.findings for record in records),
        "without_impression": sum(not record.impression for record in records),
    }


def write_studies(path: Path, records: list[StudyRecord]) -> Path:
    """Write `records` to the study file `path` atomically (image paths relative to its folder)."""
    folder = Path(path).parent
    lines = [json.dumps(record.to_json(folder), ensure_ascii=False) for record in records]
    return atomic_write_text(path, "".join(f"{line}\n" for line in lines))


# ---------------------------------------------------------------------------------------------
# reading


def check_priors(records: list[StudyRecord], problems: Counter[str]) -> None:
    """Null (and count) every prior that names no record of the file, the study itself, a study of
    another subject, or that starts a chain of priors coming back to a study."""
    by_id = {record.study_id: record for record in records}
    for record in records:
        prior = record.prior_study_id
        if prior is None:
            continue
        reason = None
        if prior == record.study_id:
            reason = "prior is the study itself"
        elif prior not in by_id:
            reason = "prior not in the file"
        elif by_id[prior].subject_id != record.subject_id or not record.subject_id:
            reason = "prior from another subject"
        if reason:
            problems[reason] += 1
            record.prior_study_id = None
    for record in records:  # a loop A -> B -> A: cut at the study where it is found
        seen, current = {record.study_id}, record
        while current.prior_study_id is not None:
            if current.prior_study_id in seen:
                problems["prior chain loops"] += 1
                current.prior_study_id = None
                break
            seen.add(current.prior_study_id)
            current = by_id[current.prior_study_id]


def check_images(record: StudyRecord, verify: bool, problems: Counter[str]) -> str | None:
    """Leave out (and count) a record's images whose file is missing or, with `verify`, whose header
    does not read; the reason to drop the record when none is left (None: kept)."""
    kept = []
    for image in record.images:
        if not image.path.is_file():
            problems["image missing"] += 1
        elif verify and not readable_header(image.path):
            problems["image unreadable"] += 1
        else:
            kept.append(image)
    record.images = kept
    return None if kept else "no readable image"


def finish_reading(path: Path, read: int, records: list[StudyRecord], dropped: Counter[str], problems: Counter[str],
            verify_images: bool, images_checked: bool) -> StudyFile:
    """Image checks, prior checks, the problem counts of kept records, the log line and the refusal."""
    if images_checked:
        usable = []
        for record in records:
            reason = check_images(record, verify_images, problems)
            if reason:
                dropped[reason] += 1
            else:
                usable.append(record)
        records = usable
    check_priors(records, problems)
    for record in records:
        problems["unknown view"] += sum(image.view == UNKNOWN_VIEW for image in record.images)
        for name in ("indication", "findings", "impression"):
            problems[f"no {name}"] += not getattr(record, name)
    problems = Counter({reason: n for reason, n in problems.items() if n})
    if not records:
        counts = ", ".join(f"{reason} {n}" for reason, n in dropped.most_common()) or "the file holds no record"
        raise StudyFileError(f"{path} holds no usable study record ({counts})")
    logger.info("%s: %d study records, %d kept; dropped: %s; problems: %s", path, read, len(records),
                dict(dropped.most_common()) or "none", dict(problems.most_common()) or "none")
    return StudyFile(path, records, dropped, problems, read)


def load_file(path: Path, lines: bool) -> Any:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise StudyFileError(f"study file {path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise StudyFileError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    if lines:
        return text.splitlines()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise StudyFileError(f"{path} is not JSON: {exc}") from exc


def read_studies(path: Path, check_image_files: bool = True, verify_images: bool = False) -> StudyFile:
    """The records of a study file (module docstring): image paths joined to its folder, checked to
    exist (`check_image_files`) and to read (`verify_images`), priors checked."""
    path = Path(path)
    folder = path.parent
    dropped: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    lines = [line for line in load_file(path, lines=True) if line.strip()]

    def parsed():
        for line in lines:
            try:
                data = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                yield None, "malformed line"
                continue
            yield _stored_record(data, folder, problems)

    records = unique_records(parsed(), dropped)
    return finish_reading(path, len(lines), records, dropped, problems, verify_images, check_image_files)


def unique_records(candidates, dropped: Counter[str]) -> list[StudyRecord]:
    """The records of `candidates` ((record, "") or (None, why dropped) pairs), each study id once;
    every drop (its reason, or "duplicate study id") counted in `dropped`."""
    records: list[StudyRecord] = []
    seen: set[str] = set()
    for record, reason in candidates:
        if record is None:
            dropped[reason] += 1
        elif record.study_id in seen:
            dropped["duplicate study id"] += 1
        else:
            seen.add(record.study_id)
            records.append(record)
    return records


def _stored_record(data: Any, folder: Path, problems: Counter[str]) -> tuple[StudyRecord | None, str]:
    """(record, "") from one parsed study-file line, or (None, why it is dropped)."""
    if not isinstance(data, dict) or not text_value(data.get("study_id")):
        return None, "no study id"
    images = []
    for entry in data.get("images") or []:
        if not isinstance(entry, dict):
            problems["malformed image entry"] += 1
            continue
        try:
            file = confined(folder, entry.get("path"))
        except UnsafePath:
            problems["unsafe image path"] += 1
            continue
        image_id = text_value(entry.get("image_id")) or entry["path"]
        images.append(StudyImage(image_id, file, canonical_view(entry.get("view"))))
    if not images:
        return None, "no image listed"
    prior = data.get("prior_study_id")
    return StudyRecord(text_value(data["study_id"]), text_value(data.get("subject_id")), order_images(images),
                       **{name: text_value(data.get(name)) for name in STUDY_TEXT_FIELDS},
                       prior_study_id=text_value(prior) or None), ""
