"""The labeler guard: a summary must hold the observations its report holds, no fewer and no more.

The report's findings + impression and its summary are labelled with the CheXpert-style rule
labeler (`xraygpt.evaluation.chexpert_rules`; No Finding aside).  An observation is
- lost when the summary states it more weakly than the report (positive -> uncertain, negative or
  not mentioned; uncertain -> negative or not mentioned): the first source sentence that alone
  states it as the report does is put back in its minimal form (`rewrite.minimal_form`: blanks
  and comparison words out, every other word in), in its place;
- gained when the summary states it more strongly than the report: the rewritten summary
  sentence that states it is removed (a rewrite took away a negation or an uncertainty cue).
Each repair is re-checked; what cannot be repaired stays counted as lost or gained.  The counts
per observation go to stats.json (`guard`).
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np

from xraygpt.data.prepare.cleaning import Cleaned
from xraygpt.data.prepare.rewrite import minimal_form
from xraygpt.evaluation.chexpert_rules import OBSERVATIONS, POSITIVE, UNCERTAIN, ChexpertRuleLabeler

FINDING_COLUMNS = tuple(range(1, len(OBSERVATIONS)))  # every observation but No Finding


def strength(labels: np.ndarray) -> np.ndarray:
    """Per observation: 2 positive, 1 uncertain, 0 negative or not mentioned."""
    return np.where(labels == POSITIVE, 2, np.where(labels == UNCERTAIN, 1, 0))


def weaker(source: np.ndarray, summary: np.ndarray) -> list[int]:
    """Finding columns the summary states more weakly than the source (`strength` arrays)."""
    return [k for k in FINDING_COLUMNS if summary[k] < source[k]]


def stronger(source: np.ndarray, summary: np.ndarray) -> list[int]:
    """Finding columns the summary states more strongly than the source."""
    return [k for k in FINDING_COLUMNS if summary[k] > source[k]]


@functools.lru_cache(maxsize=1)
def default_labeler() -> ChexpertRuleLabeler:
    return ChexpertRuleLabeler()


def guard_summary(findings: str, impression: str, cleaned: Cleaned,
                  labeler: ChexpertRuleLabeler | None = None) -> Counter[tuple[str, str]]:
    """Repair `cleaned` in place against its report; returns {(observation, event): count}."""
    labeler = labeler or default_labeler()
    source = strength(labeler.label(f"{findings} {impression}"))
    events: Counter[tuple[str, str]] = Counter()
    summary = strength(labeler.label(cleaned.summary))
    for k in weaker(source, summary):
        events[(OBSERVATIONS[k], "lost")] += 1
        if summary[k] >= source[k]:  # put back while restoring an earlier observation
            events[(OBSERVATIONS[k], "restored")] += 1
            continue
        for outcome in cleaned.sentences:
            if strength(labeler.label(outcome.source))[k] != source[k]:
                continue
            kept, rules = minimal_form(outcome.source)
            if not kept or kept == outcome.text:
                continue
            before = (outcome.text, outcome.rules, outcome.removed)
            outcome.text, outcome.rules, outcome.removed = kept, rules + ["guard: restored"], None
            trial = strength(labeler.label(cleaned.summary))
            if trial[k] >= source[k]:
                summary = trial
                events[(OBSERVATIONS[k], "restored")] += 1
                break
            outcome.text, outcome.rules, outcome.removed = before
    for k in stronger(source, summary):
        events[(OBSERVATIONS[k], "gained")] += 1
        if summary[k] <= source[k]:
            events[(OBSERVATIONS[k], "removed")] += 1
            continue
        for outcome in cleaned.sentences:
            if not (outcome.text and outcome.rules and strength(labeler.label(outcome.text))[k] > source[k]):
                continue
            text = outcome.text
            outcome.text = ""
            trial = strength(labeler.label(cleaned.summary))
            if np.any((trial < source) & (summary >= source)):  # removing it would lose something else
                outcome.text = text
                continue
            outcome.removed, summary = "guard: states more than the report", trial
            if summary[k] <= source[k]:
                events[(OBSERVATIONS[k], "removed")] += 1
                break
    return events
