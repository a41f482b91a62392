"""The prediction files of an evaluation folder: writing while generating, resuming, merging ranks.

    predictions.jsonl            one JSON object per image: image_id, report_id (null when
                                 unknown), image_source, instruction, prediction, reference
    predictions.part<R>.jsonl    what rank R generated in this run so far (rows, and
                                 {"image_id", "skipped": reason} records), flushed after each
                                 batch; rank 0 merges the parts into predictions.jsonl at the
                                 end and removes them, so a killed run loses at most a batch
    predictions.csv, references.csv   `study_id,report` (study_id = the image id, unique per
                                 row): the two files external report-metric tools read
                                 (e.g. CXR-Report-Metric)

Ids with a row in predictions.jsonl or in a part file are done and are not generated again.
Part files are appended a whole line at a time (a line torn by a killed run is cut first), and
after the merge every id of the split must have a row or a skip reason, else
`IncompleteEvaluation` says how many are missing (predictions.jsonl keeps what was merged, and
the next run generates the rest).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from xraygpt.atomic import append_lines, atomic_write_text
from xraygpt.data.formats import DatasetError, read_json
from xraygpt.evaluation.fingerprint import FINGERPRINT

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
PART_GLOB = "predictions.part*.jsonl"


class IncompleteEvaluation(ValueError):
    """Ids of the split with neither a prediction nor a skip reason after the merge."""


def read_jsonl(path: Path) -> tuple[list[dict], list[int]]:
    """(objects, numbers of the lines that are not a JSON object) of a JSONL file."""
    rows, bad = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            bad.append(lineno)
    return rows, bad


def read_predictions(path: Path) -> tuple[list[dict], list[int]]:
    """Rows of a predictions.jsonl and the numbers of its unreadable lines; a missing file raises."""
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    return read_jsonl(path)


def report_ids(roots: list[Path]) -> dict[str, str]:
    """{image_id: report id} from the `reports.json` (written by `xraygpt.data.prepare`) of each root."""
    out: dict[str, str] = {}
    for path in (root / "reports.json" for root in roots):
        reports = read_json(path, "reports file") if path.is_file() else {}
        if not isinstance(reports, dict):
            raise DatasetError(f"reports file {path} is not a JSON object")
        for report_id, report in reports.items():
            for image_id in report.get("image_ids", []) if isinstance(report, dict) else []:
                out[str(image_id)] = str(report_id)
    return out


def write_report_csv(rows: list[dict], path: Path, field: str) -> None:
    """`study_id,report` rows (the image id and row[field]) to `path`."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["study_id", "report"])
        for row in rows:
            writer.writerow([row["image_id"], row.get(field) or ""])


class PredictionStore:
    """predictions.jsonl and this rank's part file in `output_dir` (see module docstring)."""

    def __init__(self, output_dir: Path, rank: int):
        self.output_dir = output_dir
        self.final = output_dir / PREDICTIONS
        self.part = output_dir / f"predictions.part{rank}.jsonl"

    def _files(self) -> list[Path]:
        return ([self.final] if self.final.is_file() else []) + sorted(self.output_dir.glob(PART_GLOB))

    def done_ids(self) -> set[str]:
        """Ids that already have a prediction (in predictions.jsonl or a part file)."""
        return {str(r["image_id"]) for f in self._files() for r in read_jsonl(f)[0]
                if "image_id" in r and "skipped" not in r}

    def has_outputs(self) -> bool:
        """True when the folder already holds predictions, part files or metrics."""
        return bool(self._files()) or (self.output_dir / "metrics.json").is_file()

    def clear(self) -> None:
        """Remove every output of an earlier run (predictions, parts, CSVs, metrics, fingerprint)."""
        for name in (PREDICTIONS, "predictions.csv", "references.csv", "metrics.json", FINGERPRINT):
            (self.output_dir / name).unlink(missing_ok=True)
        for part in self.output_dir.glob(PART_GLOB):
            part.unlink()

    def append(self, records: list[dict]) -> None:
        """Append rows / skip records to this rank's part file, whole lines, flushed to disk (a line
        torn by a killed run is cut first, so the new rows never land on it)."""
        append_lines(self.part, [json.dumps(record, ensure_ascii=False) for record in records])

    def merge(self, order: list[str]) -> tuple[list[dict], dict[str, list[str]]]:
        """Rank 0, after every rank finished: fold all parts into predictions.jsonl.

        Returns the rows (dataset order first, then rows of ids not in `order`) and the
        generation skips {reason: [ids]} of ids that have no row.  The first row of an id wins.
        """
        rows: dict[str, dict] = {}
        skipped: dict[str, str] = {}
        for path in self._files():
            records, bad = read_jsonl(path)
            if bad:
                logger.warning("%s: unreadable lines %s dropped (their images are generated again next run)", path, bad[:5])
            for record in records:
                image_id = str(record.get("image_id"))
                if "skipped" in record:
                    skipped.setdefault(image_id, str(record["skipped"]))
                elif "image_id" in record:
                    rows.setdefault(image_id, record)
        position = {image_id: k for k, image_id in enumerate(order)}
        ordered = sorted(rows.values(), key=lambda r: position.get(str(r["image_id"]), len(order)))
        extra = sum(str(r["image_id"]) not in position for r in ordered)
        if extra:
            logger.warning("%s holds %d rows whose ids are not in the evaluated split; they are kept and scored",
                           self.final, extra)
        atomic_write_text(self.final, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ordered))
        for part in self.output_dir.glob(PART_GLOB):
            part.unlink()
        reasons: dict[str, list[str]] = {}
        for image_id, reason in skipped.items():
            if image_id not in rows:
                reasons.setdefault(reason, []).append(image_id)
        unaccounted = [image_id for image_id in order if image_id not in rows and image_id not in skipped]
        if unaccounted:
            raise IncompleteEvaluation(
                f"{len(unaccounted)} of {len(order)} images of the split have neither a prediction nor a skip reason in "
                f"{self.output_dir} (first: {', '.join(unaccounted[:3])}); run the evaluation again to generate them")
        return ordered, reasons
