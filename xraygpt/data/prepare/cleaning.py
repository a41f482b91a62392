"""The paper's report filters and the rule-based summary cleaning (written out here: no library
implements these radiology-specific rules).

Filters (XrayGPT's), on the raw sections; words are whitespace-separated tokens.  A report is
dropped, with the first reason that applies, for: no recognisable section, no findings, no
impression, findings shorter than 10 words, impression shorter than 2 words.

Cleaning turns findings + impression into one summary, sentence by sentence (a sentence ends at
'.', '!' or '?' followed by a space, except after abbreviations such as "Dr."):
 1. list numbering ("1. ", "2) ") is removed;
 2. de-identification blanks (MIMIC-CXR "___", OpenI "XXXX"): a parenthesis holding one is
    removed; a sentence still holding one is dropped, because removing the blank alone leaves
    a broken sentence ("Dr. ___ was paged at ___." -> "Dr. was paged at.");
 3. sentences comparing with prior studies are dropped: they use comparison wording
    (`COMPARISON`: compared, prior, previous, since, interval, unchanged, stable, again, new,
    improved, worsened, resolved, persistent, ...), which a single image cannot support;
 4. view/technique statements are dropped: a sentence made only of view and imaging words
    ("PA and lateral views of the chest.") or naming a view with an acquisition verb and no
    finding verb ("Frontal and lateral radiographs were obtained.");
 5. a sentence repeated (case-insensitively) is kept once: impressions often repeat findings,
    and a merged "FINDINGS AND IMPRESSION" section is both;
 6. each kept sentence ends with a full stop (added when missing), joined with single spaces.
`clean_summary` also returns every removed sentence with the rule that removed it.
"""

from __future__ import annotations

import dataclasses
import re

from xraygpt.data.prepare.sections import has_known_section

MIN_FINDINGS_WORDS = 10
MIN_IMPRESSION_WORDS = 2

BLANK = re.compile(r"_{2,}|\bX{2,}\b")
COMPARISON = re.compile(
    r"\b(?:compar(?:e|ed|ing|ison|isons)|prior|previous(?:ly)?|preceding|earlier|since|interval(?:ly)?|unchanged"
    r"|(?:no|without) (?:significant |substantial |appreciable |interval )?change|again|redemonstrat\w*|stabl[ey]"
    r"|persist\w*|new(?:ly)?|improv\w*|worsen\w*|resolv\w*|resolution)\b",
    re.IGNORECASE,
)
VIEW_WORDS = frozenset("pa ap frontal lateral oblique portable upright erect supine semi semiupright semierect "
                       "decubitus single two three bedside view views projection projections".split())
TECHNIQUE_WORDS = VIEW_WORDS | frozenset(
    "chest radiograph radiographs image images film films x ray rays xray cxr study exam examination and of the a an "
    "was were is are obtained provided submitted performed acquired taken also as well with left right patient in "
    "position".split())
ACQUISITION = re.compile(r"\b(?:obtained|provided|submitted|performed|acquired|taken)\b", re.IGNORECASE)
FINDING_VERB = re.compile(r"\b(?:show\w*|demonstrat\w*|reveal\w*|depict\w*)\b", re.IGNORECASE)
ABBREVIATIONS = frozenset("dr mr mrs ms approx vs e.g i.e fig st".split())

_NUMBERING = re.compile(r"(?:^|(?<=\s))\d{1,2}[.)](?=\s)")
_BLANK_PARENTHESIS = re.compile(r"\s*\([^()]*(?:_{2,}|\bX{2,}\b)[^()]*\)")


def filter_reason(sections: dict[str, str]) -> str | None:
    """Why the paper's filters drop a report with these raw sections (None: kept)."""
    if not has_known_section(sections):
        return "no recognisable sections"
    if "findings" not in sections:
        return "no findings"
    if "impression" not in sections:
        return "no impression"
    if len(sections["findings"].split()) < MIN_FINDINGS_WORDS:
        return f"findings shorter than {MIN_FINDINGS_WORDS} words"
    if len(sections["impression"].split()) < MIN_IMPRESSION_WORDS:
        return f"impression shorter than {MIN_IMPRESSION_WORDS} words"
    return None


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (see module docstring), list numbering removed."""
    pieces = re.split(r"(?<=[.!?])\s+", " ".join(_NUMBERING.sub(" ", text).split()))
    sentences: list[str] = []
    for piece in pieces:
        if not piece:
            continue
        if sentences and sentences[-1].split()[-1].lower().rstrip(".") in ABBREVIATIONS:
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def is_technique(sentence: str) -> bool:
    """A view/technique statement (rule 4)."""
    words = re.findall(r"[a-z]+", sentence.lower())
    if not any(w in VIEW_WORDS for w in words):
        return False
    if all(w in TECHNIQUE_WORDS for w in words):
        return True
    return bool(ACQUISITION.search(sentence)) and not FINDING_VERB.search(sentence)


@dataclasses.dataclass
class Cleaned:
    """A summary and the sentences removed on the way, as (rule, sentence)."""

    summary: str
    removed: list[tuple[str, str]]


def clean_summary(findings: str, impression: str) -> Cleaned:
    """The summary of a report from its raw findings and impression (see module docstring)."""
    kept: list[str] = []
    seen: set[str] = set()
    removed: list[tuple[str, str]] = []
    for sentence in split_sentences(findings) + split_sentences(impression):
        text = _BLANK_PARENTHESIS.sub("", sentence).strip()
        if BLANK.search(text):
            removed.append(("de-identification blank", sentence))
        elif COMPARISON.search(text):
            removed.append(("comparison with prior", sentence))
        elif is_technique(text):
            removed.append(("view/technique", sentence))
        elif text.lower() in seen:
            removed.append(("repeated sentence", sentence))
        elif text.strip(" .!?"):
            seen.add(text.lower())
            kept.append(text if text[-1] in ".!?" else f"{text}.")
    return Cleaned(" ".join(kept), removed)
