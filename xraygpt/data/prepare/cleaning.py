"""The paper's report filters and the rule summariser (written out here: no library implements
these radiology-specific rules).

Filters (XrayGPT's), on the raw sections; words are whitespace-separated tokens.  A report is
dropped, with the first reason that applies, for: no recognisable section, no findings, no
impression, findings shorter than 10 words, impression shorter than 2 words.

The rule summariser turns findings + impression into one summary, sentence by sentence (a
sentence ends at '.', '!' or '?' followed by a space, except after abbreviations such as "Dr."),
rewriting rather than dropping, so that every finding of the report stays in its summary:
 1. list numbering ("1. ", "2) ") is removed;
 2. comparisons with prior studies and de-identification blanks (MIMIC-CXR "___", OpenI "XXXX")
    are rewritten out of the sentence and the finding kept (`xraygpt.data.prepare.rewrite`, rules
    in `rules/rewrite.tsv`): "Stable mild cardiomegaly." -> "Mild cardiomegaly.", "Small right
    effusion is new." -> "Small right effusion."; a sentence left with no finding word ("No
    change from prior.", "Heart size is stable.") goes, and so does a clause reporting a finding
    as gone ("... has resolved", "interval removal of ..."): one image cannot show what is no
    longer there, and the labeler reads such a clause as a negative, so nothing positive is lost;
 3. view/technique statements are dropped: a sentence made only of view and imaging words
    ("PA and lateral views of the chest.") or naming a view with an acquisition verb and no
    finding verb ("Frontal and lateral radiographs were obtained.");
 4. a sentence repeated (case-insensitively) is kept once: impressions often repeat findings,
    and a merged "FINDINGS AND IMPRESSION" section is both;
 5. each kept sentence ends with a full stop (added when missing), joined with single spaces.
`clean_summary` returns every sentence with what became of it: kept, rewritten (with the rules
that changed it) or removed (with the reason).  The labeler guard (`xraygpt.data.prepare.guard`)
then checks the summary against the report.
"""

from __future__ import annotations

import dataclasses
import re

from xraygpt.data.prepare.rewrite import rewrite_sentence
from xraygpt.data.prepare.sections import has_known_section

MIN_FINDINGS_WORDS = 10
MIN_IMPRESSION_WORDS = 2

VIEW_WORDS = frozenset("pa ap frontal lateral oblique portable upright erect supine semi semiupright semierect "
                       "decubitus single two three bedside view views projection projections".split())
TECHNIQUE_WORDS = VIEW_WORDS | frozenset(
    "chest radiograph radiographs image images film films x ray rays xray cxr study exam examination and of the a an "
    "was were is are obtained provided submitted performed acquired taken also as well with left right patient in "
    "position".split())
ACQUISITION = re.compile(r"\b(?:obtained|provided|submitted|performed|acquired|taken)\b", re.IGNORECASE)
FINDING_VERB = re.compile(r"\b(?:show\w*|demonstrat\w*|reveal\w*|depict\w*)\b", re.IGNORECASE)
ABBREVIATIONS = frozenset("dr mr mrs ms approx vs e.g i.e fig st".split())

_WORDY = re.compile(r"\w")  # a sentence of punctuation alone is skipped
_NUMBERING = re.compile(r"(?:^|(?<=\s))\d{1,2}[.)](?=\s)")


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
    """Sentences of `text` (see module docstring); list numbering ("1. ", "2) ") removed, and a
    numbered item always starts a sentence, as it does for the labeler."""
    sentences: list[str] = []
    for item in _NUMBERING.split(text):
        for piece in re.split(r"(?<=[.!?])\s+", " ".join(item.split())):
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
class SentenceOutcome:
    """What became of one source sentence: `text` is the summary's sentence ("" when removed);
    `rules` name the rewrite rules that changed it; `removed` says why it went (None: kept)."""

    source: str
    text: str
    rules: list[str]
    removed: str | None = None


@dataclasses.dataclass
class Cleaned:
    """The sentences of findings + impression in order, each with its outcome."""

    sentences: list[SentenceOutcome]

    @property
    def summary(self) -> str:
        return " ".join(s.text for s in self.sentences if s.text)

    @property
    def removed(self) -> list[tuple[str, str]]:
        """(reason, source sentence) of every removed sentence."""
        return [(s.removed, s.source) for s in self.sentences if s.removed]

    @property
    def rewritten(self) -> list[SentenceOutcome]:
        """The sentences kept in a rewritten form."""
        return [s for s in self.sentences if s.text and s.rules]


def removal_reason(rules: list[str]) -> str:
    """Why a rewrite removed a sentence, from the rules that changed it (their category)."""
    categories = [rule.split(":")[0] for rule in rules]
    for category, reason in (("gone", "finding reported gone"), ("communication", "communication"),
                             ("comparison", "comparison only"), ("blank", "de-identification blank only")):
        if category in categories:
            return reason
    return "nothing left"


def clean_sentence(sentence: str, seen: set[str]) -> SentenceOutcome:
    """The outcome of one sentence (rules 2-5 of the module docstring); adds kept text to `seen`."""
    text, rules = rewrite_sentence(sentence)
    if not text:
        return SentenceOutcome(sentence, "", rules, removal_reason(rules))
    if is_technique(text):
        return SentenceOutcome(sentence, "", rules, "view/technique")
    if text.lower().rstrip(".!? ") in seen:
        return SentenceOutcome(sentence, "", rules, "repeated sentence")
    seen.add(text.lower().rstrip(".!? "))
    return SentenceOutcome(sentence, text if text[-1] in ".!?" else f"{text}.", rules)


def clean_summary(findings: str, impression: str) -> Cleaned:
    """The rule summary of a report from its raw findings and impression (see module docstring)."""
    seen: set[str] = set()
    return Cleaned([clean_sentence(sentence, seen)
                    for sentence in split_sentences(findings) + split_sentences(impression) if _WORDY.search(sentence)])
