"""ReXrank's test files as study records (`xraygpt.data.studies`), so public benchmarks are read as released.

ReXrank's test files (github.com/rajpurkarlab/ReXrank, data/*/ReXRank_*.json) are
one JSON object keyed by study id (a list of records with `study_id` or `id` is read too):

    {"50051329": {"image_path": ["/p10/p10046166/s50051329/4274....jpg", ...],
                  "key_image_path": "/p10/.../abea....jpg",         the frontal image
                  "frontal_lateral": ["lateral", "antero-posterior"],   one view per image
                  "ap_pa": ["AP"],                                   (CheXpert Plus) projection
                  "context": "Age:50-60.Gender:M.Indication: ... Comparison: ...",
                  "section_findings": "...", "section_impression": NaN,
                  "report": "Findings: ... Impression: ...", "subject_id": 10046166,
                  "age": 77.0, "sex": "Female", "split": "test", ...}, ...}

Views are read from `frontal_lateral` (or `views` / `view`): Frontal, Lateral, postero-anterior,
antero-posterior, lateral, left lateral, or any name `canonical_view` knows; a frontal image whose
`ap_pa` entry says AP or PA gets that.  `context` is cut at its labels (Age, Gender/Sex,
Indication, Comparison, History); fields `indication`, `comparison`, `age`, `sex`/`gender`,
`findings`, `impression` win over it; NaN, null and the text "nan" mean absent.  Paths are
relative to `image_root` (default: the file's folder); MIMIC's leading "/" is read as relative.
The summary is the rule summary of `xraygpt.data.prepare` (comparisons and blanks rewritten out,
the labeler guard) of the findings and impression.

Records are counted and checked like a study file's (`xraygpt.data.studies`: images that do not
read, unknown views, missing sections, priors), and a file with no usable record is refused in
one line naming it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from xraygpt.data.paths import UnsafePath, confined
from xraygpt.data.studies import (
    UNKNOWN_VIEW, StudyFile, StudyFileError, StudyImage, StudyRecord, canonical_view, finish_reading, load_file,
    order_images, text_value, unique_records,
)


# ReXrank's context: "Age:50-60.Gender:M.Indication: ... Comparison: ..." (CheXpert Plus: "Indication:nanComparison:")
_CONTEXT_LABEL = re.compile(
    r"(?:(?<![A-Za-z])|(?<=nan))(age|gender|sex|indication|comparison|clinical history|history)\s*:", re.IGNORECASE)


def parse_context(context: Any) -> dict[str, str]:
    """{age, sex, indication, comparison, history} found in a ReXrank `context` string (absent: left out)."""
    text = context if isinstance(context, str) else ""
    labels = list(_CONTEXT_LABEL.finditer(text))
    found: dict[str, str] = {}
    for this, following in zip(labels, labels[1:] + [None]):
        name = this.group(1).lower()
        name = {"gender": "sex", "clinical history": "history"}.get(name, name)
        value = text[this.end():following.start() if following else len(text)].strip()
        if name in ("age", "sex"):
            value = value.rstrip(".").strip()
        value = text_value(value)
        if value and name not in found:
            found[name] = value
    return found


def _age(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if math.isfinite(number) and number.is_integer() else value


def _sex(value: str) -> str:
    return {"m": "M", "male": "M", "f": "F", "female": "F"}.get(value.lower(), value)


def rule_summary(findings: str, impression: str) -> str:
    """The summary `prepare` would write for these sections: rule cleaning, then the labeler guard."""
    from xraygpt.data.prepare.cleaning import clean_summary  # the preparation's rules (imported on use)
    from xraygpt.data.prepare.guard import guard_summary

    if not (findings or impression):
        return ""
    cleaned = clean_summary(findings, impression)
    guard_summary(findings, impression, cleaned)
    return cleaned.summary


def _as_list(value: Any) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _first(data: dict, names: tuple[str, ...]) -> str:
    """The first non-empty text among `data`'s fields `names`."""
    for name in names:
        text = text_value(data.get(name))
        if text:
            return text
    return ""


def _rexrank_images(data: dict, root: Path, problems: Counter[str]) -> tuple[list[StudyImage], str | None]:
    """(images in reading order, the key image's id) of one ReXrank record."""
    paths = _as_list(data.get("image_path"))
    views = next((_as_list(data[k]) for k in ("frontal_lateral", "views", "view") if data.get(k) is not None), [])
    projections = _as_list(data.get("ap_pa"))
    if views and len(views) != len(paths):
        problems["views do not match images"] += 1
    images = []
    for k, written in enumerate(paths):
        if not isinstance(written, str) or not written.strip():
            problems["malformed image path"] += 1
            continue
        relative = written.strip().lstrip("/")  # ReXrank's MIMIC paths: "/p10/..." under the image root
        try:
            file = confined(root, relative)
        except UnsafePath:
            problems["unsafe image path"] += 1
            continue
        view = canonical_view(views[k]) if k < len(views) else UNKNOWN_VIEW
        if view == "FRONTAL" and k < len(projections) and canonical_view(projections[k]) in ("AP", "PA"):
            view = canonical_view(projections[k])
        images.append(StudyImage(relative, file, view))
    key = text_value(data.get("key_image_path")).lstrip("/") or None
    if key is not None and key not in {image.image_id for image in images}:
        problems["key image not among the images"] += 1
    return order_images(images, first=key), key


def _rexrank_record(study_id: str, data: Any, root: Path, problems: Counter[str]) -> tuple[StudyRecord | None, str]:
    """(record, "") from one ReXrank record, or (None, why it is dropped)."""
    if not isinstance(data, dict):
        return None, "malformed record"
    if not study_id:
        return None, "no study id"
    images, _ = _rexrank_images(data, root, problems)
    if not images:
        return None, "no image listed"
    context = parse_context(data.get("context"))
    findings = _first(data, ("section_findings", "findings"))
    impression = _first(data, ("section_impression", "impression"))
    if not any(k in data for k in ("section_findings", "findings", "section_impression", "impression")):
        from xraygpt.data.prepare.sections import parse_report  # only a "report" string: cut it at its headers

        sections = parse_report(text_value(data.get("report")))
        findings, impression = sections.get("findings", ""), sections.get("impression", "")
    indication = (_first(data, ("indication", "section_indication")) or context.get("indication")
                  or context.get("history") or _first(data, ("section_clinical_history", "section_history")))
    return StudyRecord(
        study_id, text_value(data.get("subject_id")), images, indication=indication,
        comparison=text_value(data.get("comparison")) or context.get("comparison", ""),
        findings=findings, impression=impression, summary=rule_summary(findings, impression),
        prior_study_id=text_value(data.get("prior_study_id")) or None,
        age=_age(text_value(data.get("age")) or context.get("age", "")),
        sex=_sex(text_value(data.get("sex")) or text_value(data.get("gender")) or context.get("sex", "")),
    ), ""


def read_rexrank(path: Path, image_root: Path | None = None, check_image_files: bool = True,
                 verify_images: bool = False) -> StudyFile:
    """The study records of a ReXrank-style JSON file (module docstring); image paths joined to
    `image_root` (default: the file's folder), checked to exist (`check_image_files`) and to read
    (`verify_images`)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    data = load_file(path, lines=False)
    if isinstance(data, dict):
        entries = [(str(key), value) for key, value in data.items()]
    elif isinstance(data, list):
        entries = [(_first(item, ("study_id", "id")) if isinstance(item, dict) else "", item) for item in data]
    else:
        raise StudyFileError(f"{path} is not a ReXrank-style file: a JSON object of records keyed by study id, "
                             f"or a list of records, was expected (got {type(data).__name__})")
    dropped: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    records = unique_records((_rexrank_record(study_id, entry, root, problems) for study_id, entry in entries), dropped)
    return finish_reading(path, len(entries), records, dropped, problems, verify_images, check_image_files)

