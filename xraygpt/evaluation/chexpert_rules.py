"""A CheXpert-style rule labeler: the 14 CheXpert observations of free-text reports, by rule.

This is an approximation of the CheXpert labeler's rules (Irvin et al., 2019), written here
with no parser and no model, so that clinical efficacy scores need nothing beyond this package;
it is not the CheXpert labeler (which needs a dependency parser and Java-era NLP tools) nor
CheXbert (a BERT model, available as an optional plug-in in `xraygpt.evaluation.plugins`).
Per report:

1. Sentences: cut at `.`, `!`, `?` followed by a space or the end (decimals such as "2.5 cm"
   do not cut), at `;` and line breaks, and before numbered-list markers ("1. ", "2) ").
2. Words: NFKC, lower case, runs of letters/digits; commas are kept as words of their own (a
   phrase never spans one); other punctuation is dropped ("x-ray" reads "x ray").
3. Mentions: the phrases of `phrases/mention/<observation>.txt`.
4. Each mention is classified in CheXpert's order: (a) pre-negation uncertainty ("cannot
   exclude", "not ruled out") -> uncertain; else (b) negation ("no", "without", "is not
   seen") -> negative; else (c) post-negation uncertainty ("may", "possible", "suggestive of")
   -> uncertain; else positive.  A cue governs a mention in the same sentence when it stands
   before it (`*_before.txt`, or inside it: "heart is not enlarged") or after it
   (`*_after.txt`) with no `scope_end.txt` phrase between them; this window replaces the
   dependency-graph patterns of CheXpert.
5. Aggregation over an observation's mentions: positive if any is positive, else uncertain if
   any is uncertain, else negative; no mention -> not mentioned.
6. No Finding: positive when no other observation except Support Devices is positive or
   uncertain (as CheXpert, which does not count devices as findings), else not mentioned.
   An empty report gets no label at all.

Labels use CheXpert's CSV convention: 1.0 positive, 0.0 negative, -1.0 uncertain, NaN not
mentioned, in (N, 14) float arrays in `OBSERVATIONS` order.  The phrase files are plain text
that users may replace (`phrases_dir`); their format is described in `phrases/README.txt`.

`python -m xraygpt.evaluation.chexpert_rules FILE` prints the label distribution of a
filter_cap.json, a predictions.jsonl (`--field`) or a text file with one report per line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

from xraygpt.cli import ERRORS, startup_error

OBSERVATIONS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
# The five observations most papers also report separately (CheXpert's competition tasks).
TOP5: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
NOT_COUNTED_FOR_NO_FINDING = ("No Finding", "Support Devices")

DEFAULT_PHRASES_DIR = Path(__file__).resolve().parent / "phrases"
# Cue lists in the order they are checked, with the label they give.
RULES: tuple[tuple[str, float], ...] = (
    ("uncertainty_pre_negation", UNCERTAIN),
    ("negation", NEGATIVE),
    ("uncertainty_post_negation", UNCERTAIN),
)

_SENTENCE_BREAK = re.compile(r"(?:^|(?<=\s))\(?\d{1,2}[.)](?=\s)|[.!?](?=\s|$)|[;\n\r]")
_TEXT_WORD = re.compile(r"[a-z0-9]+|,")
_PHRASE_WORD = re.compile(r"[a-z0-9]+|\*")


class PhraseFileError(ValueError):
    """A phrase file that is missing or holds a line that cannot be a phrase."""


def observation_file(observation: str) -> str:
    """`Pleural Effusion` -> `pleural_effusion.txt`."""
    return observation.lower().replace(" ", "_") + ".txt"


def text_words(text: str) -> list[str]:
    """Lower-cased words (letters/digits) and commas of `text`."""
    return _TEXT_WORD.findall(unicodedata.normalize("NFKC", text).lower())


def sentences(text: str) -> list[str]:
    """`text` cut into sentences (see module docstring, step 1), stripped; empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_BREAK.split(text) if s.strip()]


def _match(words: list[str], i: int, phrase: tuple[str, ...], k: int = 0) -> int:
    """End index of `phrase[k:]` matched at words[i:], or -1; "*" takes one word or none."""
    if k == len(phrase):
        return i
    if phrase[k] == "*":
        if i < len(words) and words[i] != ",":
            end = _match(words, i + 1, phrase, k + 1)
            if end >= 0:
                return end
        return _match(words, i, phrase, k + 1)
    if i < len(words) and words[i] == phrase[k]:
        return _match(words, i + 1, phrase, k + 1)
    return -1


class PhraseList:
    """The phrases of one file, found in a word list left to right without overlap.

    At each position the exclusions are tried first, then the phrases, longest first; a match
    moves the search past it, so an exclusion hides the phrases it covers.
    """

    def __init__(self, phrases: list[tuple[str, ...]], exclusions: list[tuple[str, ...]]):
        entries = [(p, True) for p in exclusions] + [(p, False) for p in phrases]
        entries.sort(key=lambda e: (not e[1], -len(e[0])))
        self.index: dict[str, list[tuple[tuple[str, ...], bool]]] = {}
        for phrase, excluded in entries:
            self.index.setdefault(phrase[0], []).append((phrase, excluded))

    @classmethod
    def from_file(cls, path: Path) -> "PhraseList":
        if not path.is_file():
            raise PhraseFileError(f"phrase file {path} does not exist")
        phrases, exclusions = [], []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            words = tuple(_PHRASE_WORD.findall(line.lstrip("!").lower()))
            if not words or "*" in (words[0], words[-1]):
                raise PhraseFileError(f"{path}:{lineno}: a phrase needs a word first and last, got {line!r}")
            (exclusions if line.startswith("!") else phrases).append(words)
        return cls(phrases, exclusions)

    def find(self, words: list[str]) -> list[tuple[int, int]]:
        """(start, end) word spans of the phrases (not the exclusions) found in `words`."""
        spans = []
        i = 0
        while i < len(words):
            for phrase, excluded in self.index.get(words[i], ()):
                end = _match(words, i, phrase)
                if end >= 0:
                    if not excluded:
                        spans.append((i, end))
                    i = end
                    break
            else:
                i += 1
        return spans


def _unblocked(start: int, end: int, blocks: list[tuple[int, int]]) -> bool:
    """True when no block lies within words[start:end]."""
    return not any(start <= b0 and b1 <= end for b0, b1 in blocks)


class ChexpertRuleLabeler:
    """The rule labeler of the module docstring.

    Args:
        phrases_dir: a folder laid out like `phrases/` (None: the package's own lists).
    """

    def __init__(self, phrases_dir: str | None = None):
        folder = Path(phrases_dir) if phrases_dir else DEFAULT_PHRASES_DIR
        self.mentions = {obs: PhraseList.from_file(folder / "mention" / observation_file(obs)) for obs in OBSERVATIONS[1:]}
        self.cues = {f"{name}_{side}": PhraseList.from_file(folder / f"{name}_{side}.txt")
                     for name, _ in RULES for side in ("before", "after")}
        self.scope_end = PhraseList.from_file(folder / "scope_end.txt")

    def _classify(self, start: int, end: int, cues: dict[str, list[tuple[int, int]]], blocks: list[tuple[int, int]]) -> float:
        """The label of the mention words[start:end] given the sentence's cue and scope-end spans."""
        for name, label in RULES:
            if any(c_end <= end and _unblocked(c_end, start, blocks) for _, c_end in cues[f"{name}_before"]):
                return label
            if any(c_start >= end and _unblocked(end, c_start, blocks) for c_start, _ in cues[f"{name}_after"]):
                return label
        return POSITIVE

    def label(self, report: str) -> np.ndarray:
        """(14,) labels of one report (CheXpert CSV convention, `OBSERVATIONS` order)."""
        out = np.full(len(OBSERVATIONS), np.nan)
        found: dict[int, list[float]] = {}
        for sentence in sentences(report):
            words = text_words(sentence)
            mentions = [(k, span) for k, obs in enumerate(OBSERVATIONS[1:], start=1)
                        for span in self.mentions[obs].find(words)]
            if not mentions:
                continue
            cues = {name: plist.find(words) for name, plist in self.cues.items()}
            blocks = self.scope_end.find(words)
            for k, (start, end) in mentions:
                found.setdefault(k, []).append(self._classify(start, end, cues, blocks))
        for k, labels in found.items():
            out[k] = POSITIVE if POSITIVE in labels else UNCERTAIN if UNCERTAIN in labels else NEGATIVE
        if text_words(report):
            counted = [k for k, obs in enumerate(OBSERVATIONS) if obs not in NOT_COUNTED_FOR_NO_FINDING]
            if not any(out[k] in (POSITIVE, UNCERTAIN) for k in counted):
                out[0] = POSITIVE
        return out

    def label_many(self, reports: list[str]) -> np.ndarray:
        """(N, 14) labels of N reports."""
        if not reports:
            return np.empty((0, len(OBSERVATIONS)))
        return np.stack([self.label(r) for r in reports])


def label_distribution(labels: np.ndarray) -> dict[str, dict[str, int]]:
    """{observation: {positive, negative, uncertain, not mentioned}} counts of (N, 14) labels."""
    return {
        obs: {"positive": int((labels[:, k] == POSITIVE).sum()), "negative": int((labels[:, k] == NEGATIVE).sum()),
              "uncertain": int((labels[:, k] == UNCERTAIN).sum()), "not mentioned": int(np.isnan(labels[:, k]).sum())}
        for k, obs in enumerate(OBSERVATIONS)
    }


def read_reports(path: Path, field: str) -> list[str]:
    """Reports of a filter_cap.json (captions), a .jsonl (`field` of each line) or a text file (one per line)."""
    if not path.is_file():
        raise FileNotFoundError(f"report file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
            annotations = data.get("annotations") if isinstance(data, dict) else None
            if not isinstance(annotations, list):
                raise ValueError(f"{path} has no 'annotations' list")
            return [str(a.get("caption", "")) for a in annotations if isinstance(a, dict)]
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            return [str(row.get(field) or "") if isinstance(row, dict) else "" for row in rows]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        raise ValueError(f"{path} is nested too deeply to read") from exc
    return [line for line in text.splitlines() if line.strip()]


def format_distribution(counts: dict[str, dict[str, int]]) -> str:
    """A plain-text table of `label_distribution`, with the share of positive reports."""
    total = sum(next(iter(counts.values())).values())
    lines = [f"{'observation':<28}{'positive':>10}{'negative':>10}{'uncertain':>11}{'not mentioned':>15}{'% pos':>8}"]
    for obs, c in counts.items():
        share = 100 * c["positive"] / total if total else 0.0
        lines.append(f"{obs:<28}{c['positive']:>10}{c['negative']:>10}{c['uncertain']:>11}{c['not mentioned']:>15}{share:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Label reports with the CheXpert-style rules; print the label distribution.")
    parser.add_argument("file", type=Path, help="filter_cap.json, predictions.jsonl or a text file (one report per line)")
    parser.add_argument("--field", default="prediction", help="the field read from each .jsonl line")
    parser.add_argument("--phrases-dir", default=None, help="a folder of phrase lists replacing the package's")
    args = parser.parse_args(argv)
    try:
        reports = read_reports(args.file, args.field)
        labeler = ChexpertRuleLabeler(args.phrases_dir)
    except ERRORS as exc:
        return startup_error(exc)
    start = time.perf_counter()
    labels = labeler.label_many(reports)
    seconds = time.perf_counter() - start
    counts = label_distribution(labels)
    top = max(counts, key=lambda o: counts[o]["positive"])
    sys.stdout.write(f"{args.file}: labelled {len(reports)} reports in {seconds:.2f} s "
                     f"({len(reports) / max(seconds, 1e-9):.0f} reports/s, one process)\n"
                     f"{format_distribution(counts)}\nmost common positive label: {top}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
