"""The study files of a preparation: `<out>/<split>/studies.jsonl` and the `studies` block of stats.json.

One study record (`xraygpt.data.studies`) per kept report and split, beside filter_cap.json:
study_id is the report id (MIMIC-CXR `s<study_id>`, OpenI the XML's number), its images are the
split's links (`image/<image_id>.<ext>`) in reading order with their views, the texts are the
report's raw sections (indication: INDICATION, else HISTORY; comparison: COMPARISON; findings;
impression; whitespace collapsed) and its summary is the one filter_cap.json holds.  A study
without a usable image was already dropped by the preparation ("no usable image"), so it has
no record.

What the release tells beyond the reports is a `StudySource`: each image's view, each study's
subject and time.  The prior of a study is the study just before it among its subject's
studies in the release (by StudyDate, then StudyTime, then study id; dropped studies count, so
the prior is the one the report compares with), written only when that study has a record in
the same split; otherwise null with the reason counted in `studies.without_prior`:
"first study of its subject", "previous study dropped", "previous study in another split",
"no study time" (no parsable StudyDate/StudyTime: MIMIC metadata without those columns),
"no subject in the source" (OpenI), "study under two subjects" (metadata rows of one study
naming two subjects: the study is neither given nor used as a prior).

MIMIC-CXR's StudyTime lost its leading zeros and carries fractions (`0.187` is 00:00:00.187,
`93512.0` is 09:35:12): `parse_study_time` reads HHMMSS.fff with the integer part zero-padded to
6 digits, so 09:35:12 comes before 10:10:10 (as text "93512.0" > "101010").

stats.json `studies`: {"studies", "splits": {split: n}, "images_per_study": {"1": n, ...},
"views": {view: images}, "with_prior", "without_prior": {reason: n}, "without_indication",
"without_comparison", "without_findings", "without_impression", "dropped": {reason: reports
dropped, as in dropped_by_reason}, "problems": {source problem: n} (unknown views, projection
rows, ...)}.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections import Counter
from pathlib import Path

from xraygpt.data.studies import UNKNOWN_VIEW, StudyImage, StudyRecord, order_images, study_stats, write_studies

STUDY_FILE = "studies.jsonl"


@dataclasses.dataclass
class StudySource:
    """What a release tells about its studies beyond the reports (see module docstring)."""

    views: dict[str, str] = dataclasses.field(default_factory=dict)      # image id -> canonical view
    subjects: dict[str, str] = dataclasses.field(default_factory=dict)   # report id -> subject id
    times: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict)  # report id -> (YYYYMMDD, seconds)
    ambiguous: set[str] = dataclasses.field(default_factory=set)         # report ids listed under two subjects
    problems: Counter[str] = dataclasses.field(default_factory=Counter)  # source problems, counted


def parse_study_time(date: str, time: str) -> tuple[str, float] | None:
    """(YYYYMMDD, seconds since midnight) of a StudyDate and a StudyTime whose leading zeros may be
    lost (`0.187`, `93512.0`); None when either does not read as a date / time of day."""
    date, time = (date or "").strip(), (time or "").strip()
    if date.endswith(".0"):  # a date column once read as floats
        date = date[:-2]
    whole, _, fraction = time.partition(".")
    if not (len(date) == 8 and date.isdigit() and whole.isdigit() and len(whole) <= 6
            and (fraction.isdigit() or not fraction)):
        return None
    try:
        datetime.date(int(date[:4]), int(date[4:6]), int(date[6:]))
    except ValueError:
        return None
    hhmmss = whole.zfill(6)
    hours, minutes, seconds = int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:])
    if hours > 23 or minutes > 59 or seconds > 59:
        return None
    return date, hours * 3600 + minutes * 60 + seconds + (float(f"0.{fraction}") if fraction else 0.0)


def _tie(report_id: str) -> tuple[int, str]:
    return len(report_id), report_id  # same-prefix numeric ids ("s50000001") in numeric order


def previous_studies(source: StudySource) -> dict[str, str]:
    """{report id: the report id just before it among its subject's timed studies}."""
    by_subject: dict[str, list[str]] = {}
    for report_id, when in source.times.items():
        subject = source.subjects.get(report_id, "")
        if subject and report_id not in source.ambiguous:
            by_subject.setdefault(subject, []).append(report_id)
    previous = {}
    for studies in by_subject.values():
        studies.sort(key=lambda rid: (source.times[rid], _tie(rid)))
        previous.update(zip(studies[1:], studies[:-1]))
    return previous


def study_record(report_id: str, sections: dict[str, str], summary: str, images: list[tuple[str, Path]],
                 source: StudySource) -> StudyRecord:
    """The record of one report in one split: its raw sections, its summary and `images` as
    (image id, its file in the split)."""
    return StudyRecord(
        report_id, source.subjects.get(report_id, ""),
        order_images(StudyImage(image_id, target, source.views.get(image_id, UNKNOWN_VIEW))
                     for image_id, target in images),
        indication=sections.get("indication") or sections.get("history", ""),
        comparison=sections.get("comparison", ""), findings=sections.get("findings", ""),
        impression=sections.get("impression", ""), summary=summary)


def assign_priors(per_split: dict[str, list[StudyRecord]], source: StudySource) -> Counter[str]:
    """Set every record's prior (module docstring); returns {reason: records without one}."""
    previous = previous_studies(source)
    splits_of: dict[str, set[str]] = {}
    for split, records in per_split.items():
        for record in records:
            splits_of.setdefault(record.study_id, set()).add(split)
    without: Counter[str] = Counter()
    for split, records in per_split.items():
        for record in records:
            rid, reason = record.study_id, None
            if rid in source.ambiguous:
                reason = "study under two subjects"
            elif not record.subject_id:
                reason = "no subject in the source"
            elif rid not in source.times:
                reason = "no study time"
            elif rid not in previous:
                reason = "first study of its subject"
            elif split in splits_of.get(previous[rid], ()):
                record.prior_study_id = previous[rid]
            else:
                reason = "previous study in another split" if previous[rid] in splits_of else "previous study dropped"
            if reason:
                without[reason] += 1
    return without


def write_study_files(out: Path, per_split: dict[str, list[StudyRecord]], source: StudySource,
                      report_drops: Counter[str]) -> dict:
    """Priors, `<out>/<split>/studies.jsonl` for every split with records; returns the stats block."""
    without_prior = assign_priors(per_split, source)
    for split, records in per_split.items():
        if records:
            write_studies(out / split / STUDY_FILE, records)
    problems = Counter(source.problems)
    problems["unknown view"] += sum(image.view == UNKNOWN_VIEW for records in per_split.values()
                                    for record in records for image in record.images)
    stats = study_stats([record for records in per_split.values() for record in records])
    return {"studies": stats.pop("studies"), "splits": {split: len(r) for split, r in per_split.items() if r},
            **stats, "without_prior": dict(without_prior.most_common()), "dropped": dict(report_drops.most_common()),
            "problems": {reason: n for reason, n in problems.most_common() if n}}
