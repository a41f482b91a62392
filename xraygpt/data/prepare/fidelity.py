"""How many of a report's findings survive in its summary: the fidelity table of a prepared folder.

Sources are each report's findings + impression (the raw sections of `reports.json`), summaries
its `summary`; both are labelled with the CheXpert-style rule labeler.  Per observation (No
Finding aside): source positives, kept (positive in the summary too), lost (the others), gained
(positive in the summary, neither positive nor uncertain in the source); the share kept overall;
the No Finding rate of sources and of summaries; how many summaries still hold a
de-identification blank or comparison wording; and the share of summary words found in their
report's findings + impression (a summary is made of the report's own words).

    python -m xraygpt.data.prepare fidelity DIR [--json FILE]

reads every `DIR/<split>/reports.json` and prints the table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from xraygpt.data.prepare.rewrite import BLANK, COMPARISON
from xraygpt.evaluation.chexpert_rules import OBSERVATIONS, POSITIVE, UNCERTAIN, ChexpertRuleLabeler

_WORD = re.compile(r"[a-z0-9]+")


class FidelityError(ValueError):
    """A folder without reports.json, or a reports.json that cannot be read."""


def source_text(sections: dict[str, str]) -> str:
    """The labelled source of a report: findings + impression."""
    return f"{sections.get('findings', '')} {sections.get('impression', '')}".strip()


def words_from_report(source: str, text: str) -> tuple[int, int]:
    """(words of `text` that occur in `source`, words of `text`), lower-cased letters and digits."""
    vocabulary, words = set(_WORD.findall(source.lower())), _WORD.findall(text.lower())
    return sum(word in vocabulary for word in words), len(words)


def fidelity_table(sources: list[str], summaries: list[str], labeler: ChexpertRuleLabeler | None = None) -> dict:
    """The fidelity figures of aligned `sources` and `summaries` (see module docstring)."""
    labeler = labeler or ChexpertRuleLabeler()
    src, out = labeler.label_many(sources), labeler.label_many(summaries)
    per_observation = {}
    for k, obs in enumerate(OBSERVATIONS):
        if k == 0:
            continue
        positive = src[:, k] == POSITIVE
        kept = positive & (out[:, k] == POSITIVE)
        gained = (out[:, k] == POSITIVE) & ~positive & (src[:, k] != UNCERTAIN)
        per_observation[obs] = {"source_positives": int(positive.sum()), "kept": int(kept.sum()),
                                "lost": int(positive.sum() - kept.sum()), "gained": int(gained.sum())}
    total = sum(v["source_positives"] for v in per_observation.values())
    kept_total = sum(v["kept"] for v in per_observation.values())
    shares = [words_from_report(source, summary) for source, summary in zip(sources, summaries)]
    hits, words = sum(h for h, _ in shares), sum(n for _, n in shares)
    n = len(sources)
    return {
        "reports": n,
        "positives_kept": kept_total / total if total else 1.0,
        "per_observation": per_observation,
        "no_finding_rate": {"source": float(np.mean(src[:, 0] == POSITIVE)) if n else 0.0,
                            "summary": float(np.mean(out[:, 0] == POSITIVE)) if n else 0.0},
        "summaries_with_blank": sum(bool(BLANK.search(s)) for s in summaries),
        "summaries_with_comparison": sum(bool(COMPARISON.search(s)) for s in summaries),
        "summary_words_from_report": hits / words if words else 1.0,
    }


def table_lines(table: dict) -> list[str]:
    """The fidelity table as plain-text lines."""
    lines = [f"fidelity of {table['reports']} summaries (CheXpert-style rule labeler)",
             f"{'observation':<28}{'source +':>9}{'kept':>7}{'lost':>6}{'gained':>8}{'kept %':>8}"]
    for obs, row in table["per_observation"].items():
        share = 100 * row["kept"] / row["source_positives"] if row["source_positives"] else float("nan")
        lines.append(f"{obs:<28}{row['source_positives']:>9}{row['kept']:>7}{row['lost']:>6}{row['gained']:>8}{share:>8.1f}")
    rates = table["no_finding_rate"]
    lines += [f"positives kept overall: {100 * table['positives_kept']:.1f}%",
              f"No Finding: source {100 * rates['source']:.1f}%, summary {100 * rates['summary']:.1f}%",
              f"summaries with a blank: {table['summaries_with_blank']}, with comparison wording: "
              f"{table['summaries_with_comparison']}",
              f"summary words found in their report: {100 * table['summary_words_from_report']:.1f}%"]
    return lines


def read_prepared(folder: Path) -> tuple[list[str], list[str]]:
    """(sources, summaries) of every report in `folder`/<split>/reports.json."""
    files = sorted(folder.glob("*/reports.json"))
    if not files:
        raise FidelityError(f"no <split>/reports.json in {folder}")
    sources, summaries = [], []
    for path in files:
        try:
            reports = json.loads(path.read_text(encoding="utf-8"))
            for report_id, report in reports.items():
                sources.append(source_text(report["sections"]))
                summaries.append(str(report["summary"]))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError,
                AttributeError) as exc:
            raise FidelityError(f"{path} is not a prepare reports.json: {type(exc).__name__}: {exc}") from exc
    return sources, summaries
