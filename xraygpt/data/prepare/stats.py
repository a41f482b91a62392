"""The prepare report, `stats.json`: counts in/out of every step and every dropped id with its reason.

    {"command": "openi", "inputs": {"reports": "...", "images": "..."},
     "steps": [{"step": "parse XML", "unit": "report", "in": 120, "out": 118}, ...],
     "totals": {"report": {"in": 120, "out": 97, "dropped": 23}, "image": {...}},
     "dropped_by_reason": {"report": {"no findings": 9, ...}, "image": {...}},
     "removed_sentences": {"comparison only": 41, ...},        source sentences removed, per reason
     "rewrite_rules": {"comparison: change word": 230, ...},    rules that changed a kept sentence
     "guard": {"Pleural Effusion": {"lost": 2, "restored": 2, "gained": 0, "removed": 0}, ...},
     "fidelity": {...},                                         `xraygpt.data.prepare.fidelity`
     "control_characters_removed": {"reports": 2, "characters": 5},   NUL, ESC, bidi controls, ...
     "llm": {"llm summary used": 90, "rule summary kept: lost Edema": 3, "generated": 93, ...}
                                          (only with --summarizer llm: `xraygpt.data.prepare.llm_summary`)
     "studies": {"studies": 97, "images_per_study": {"1": 12, "2": 85}, "views": {...}, "with_prior": 0, ...},
                                          (mimic and openi: the study files, `xraygpt.data.prepare.study_files`)
     "outputs": {"train": {"reports": 68, "images": 131}, ...},
     "dropped": [{"unit": "report", "id": "1384", "reason": "findings shorter than 10 words"}, ...]}

Units are "report" and "image" (or "sample").  A step's input must be the previous step's output
for its unit, so every item that enters the first step either leaves the last one or is listed
in `dropped` (a step that breaks this chain raises).  Reasons read "category" or
"category: detail"; `dropped_by_reason` counts categories (the text before ": "); the full
reason stays in `dropped`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, TypeVar

GUARD_EVENTS = ("lost", "restored", "gained", "removed")

T = TypeVar("T")


class PrepareStats:
    """Accumulates the report of one prepare run; see module docstring."""

    def __init__(self, command: str, inputs: dict[str, str]):
        self.command = command
        self.inputs = inputs
        self.steps: list[dict] = []
        self.dropped: list[dict] = []
        self.removed_sentences: Counter[str] = Counter()
        self.rewrite_rules: Counter[str] = Counter()
        self.guard_events: Counter[tuple[str, str]] = Counter()
        self.fidelity: dict | None = None
        self.llm: Counter[str] = Counter()
        self.control_characters: Counter[str] = Counter()
        self.outputs: dict[str, dict[str, int]] = {}
        self.studies: dict | None = None
        self._first_in: dict[str, int] = {}
        self._last_out: dict[str, int] = {}

    def step(self, name: str, unit: str, items: Iterable[T], reason_of: Callable[[T], str | None],
             id_of: Callable[[T], str]) -> list[T]:
        """The items `reason_of` keeps (returns None for); the others are dropped with its reason."""
        items = list(items)
        kept, drops = [], []
        for item in items:
            reason = reason_of(item)
            if reason is None:
                kept.append(item)
            else:
                drops.append((id_of(item), reason))
        self.add_step(name, unit, len(items), len(kept), drops)
        return kept

    def add_step(self, name: str, unit: str, n_in: int, n_out: int, drops: list[tuple[str, str]]) -> None:
        """Record a step done elsewhere: `n_in` items in, `n_out` out, `drops` as (id, reason)."""
        if unit in self._last_out and n_in != self._last_out[unit]:
            raise RuntimeError(f"step {name!r} got {n_in} {unit}s but the previous step left {self._last_out[unit]}")
        if n_in - n_out != len(drops):
            raise RuntimeError(f"step {name!r}: {n_in} {unit}s in, {n_out} out, but {len(drops)} dropped")
        for item_id, reason in drops:
            self.dropped.append({"unit": unit, "id": item_id, "reason": reason})
        self.steps.append({"step": name, "unit": unit, "in": n_in, "out": n_out})
        self._first_in.setdefault(unit, n_in)
        self._last_out[unit] = n_out

    def to_dict(self) -> dict:
        by_reason: dict[str, Counter[str]] = {}
        for entry in self.dropped:
            by_reason.setdefault(entry["unit"], Counter())[entry["reason"].split(": ")[0]] += 1
        totals = {unit: {"in": n, "out": self._last_out[unit], "dropped": sum(by_reason.get(unit, Counter()).values())}
                  for unit, n in self._first_in.items()}
        return {
            "command": self.command, "inputs": self.inputs, "steps": self.steps, "totals": totals,
            "dropped_by_reason": {unit: dict(counts.most_common()) for unit, counts in by_reason.items()},
            "removed_sentences": dict(self.removed_sentences.most_common()),
            "rewrite_rules": dict(self.rewrite_rules.most_common()),
            "guard": self.guard_table(), **({"fidelity": self.fidelity} if self.fidelity is not None else {}),
            **({"llm": dict(self.llm.most_common())} if self.llm else {}),
            "control_characters_removed": {"reports": self.control_characters["reports"],
                                           "characters": self.control_characters["characters"]},
            **({"studies": self.studies} if self.studies is not None else {}),
            "outputs": self.outputs, "dropped": self.dropped,
        }

    def guard_table(self) -> dict[str, dict[str, int]]:
        """{observation: {event: count}} of the guard's events (observations with any event)."""
        table: dict[str, dict[str, int]] = {}
        for (observation, event), n in sorted(self.guard_events.items()):
            table.setdefault(observation, dict.fromkeys(GUARD_EVENTS, 0))[event] = n
        return table

    def write(self, path: Path) -> dict:
        """Write stats.json to `path`; returns its content."""
        data = self.to_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False))
        return data


def summary_lines(data: dict) -> list[str]:
    """A few human-readable lines about a stats.json content (for the CLI)."""
    lines = [f"{unit}s: {t['in']} in, {t['out']} out, {t['dropped']} dropped" for unit, t in data["totals"].items()]
    for unit, counts in data["dropped_by_reason"].items():
        lines += [f"  dropped {unit}s, {reason}: {n}" for reason, n in counts.items()]
    lines += [f"  {split}: " + ", ".join(f"{n} {what}" for what, n in counts.items())
              for split, counts in data["outputs"].items()]
    if "studies" in data:
        studies = data["studies"]
        lines.append(f"studies: {studies['studies']} ({studies['with_prior']} with a prior, "
                     f"{studies['without_indication']} without indication); images per study "
                     + ", ".join(f"{n}: {count}" for n, count in studies["images_per_study"].items())
                     + "; views " + ", ".join(f"{view} {n}" for view, n in studies["views"].items()))
    return lines
