"""Radiology report sections: free-text reports split at their headers, header names made canonical.

A header starts a line (after indentation) and ends with a colon: "FINDINGS:", "IMPRESSION: No
acute process.", "PA AND LATERAL VIEWS OF THE CHEST:".  MIMIC-CXR writes them in upper case;
a name in another case counts only when it is a known name, so that "Note: ..." inside a
paragraph does not cut it.  Names map to canonical sections (`SECTION_NAMES`), e.g.
"CONCLUSION" -> impression, "REASON FOR EXAM" -> indication; a merged "FINDINGS AND IMPRESSION"
(or "FINDINGS/IMPRESSION") counts as both findings and impression; close misspellings of
"findings" / "impression" (difflib ratio >= 0.85: "IMPRESION", "FINDNGS") count as them.  Other
upper-case names become sections of their own (lower-cased), text before the first header
(e.g. "FINAL REPORT") is the "preamble", and a section met twice is joined in order.

The result is {section name: text with whitespace collapsed}; empty sections are left out.
"""

from __future__ import annotations

import difflib
import re

# Canonical section -> the header names (lower case, single spaces) that mean it.
SECTION_NAMES = {
    "findings": ("findings", "finding", "report", "chest, two views", "chest two views", "chest, pa and lateral",
                 "pa and lateral views of the chest", "frontal and lateral views of the chest"),
    "impression": ("impression", "impressions", "conclusion", "conclusions", "summary", "opinion"),
    "comparison": ("comparison", "comparisons", "comparison exam", "comparison film", "comparison study",
                   "reference exam", "prior studies"),
    "indication": ("indication", "indications", "reason for exam", "reason for examination", "clinical indication"),
    "history": ("history", "clinical history", "clinical information", "patient history"),
    "technique": ("technique", "techniques"),
    "examination": ("examination", "exam", "type of examination", "study"),
    "recommendations": ("recommendation", "recommendations", "recommendation(s)"),
    "notification": ("notification", "notifications"),
}
MERGED_NAMES = ("findings and impression", "impression and findings", "findings/impression",
                "impression/findings", "findings & impression")
KNOWN_SECTIONS = tuple(SECTION_NAMES)

_ALIASES = {alias: section for section, aliases in SECTION_NAMES.items() for alias in aliases}
_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z0-9 ,/&()'-]{0,60}?)[ \t]*:", re.M)


def normalise_name(name: str) -> str:
    """Header name in lower case with single spaces and no spaces around '/'."""
    return re.sub(r"\s*/\s*", "/", " ".join(name.lower().split()))


def canonical_sections(name: str) -> tuple[str, ...]:
    """The canonical section(s) a header name means: () when it is not a known name."""
    key = normalise_name(name)
    if key in MERGED_NAMES:
        return ("findings", "impression")
    if key in _ALIASES:
        return (_ALIASES[key],)
    close = difflib.get_close_matches(key, ["findings", "impression"], n=1, cutoff=0.85)
    return (close[0],) if close else ()


# C0/C1 controls (tab, line breaks aside), zero-width and bidirectional formatting characters, BOM:
# invisible in a report, harmful in a caption (terminal escapes in logs, text that reads reversed).
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def remove_controls(sections: dict[str, str]) -> int:
    """Remove `CONTROL_CHARACTERS` from every section in place (a removed one becomes a space where
    it stood between two words); returns how many were removed."""
    removed = 0
    for name, text in sections.items():
        clean, n = CONTROL_CHARACTERS.subn(" ", text)
        if n:
            sections[name] = collapse(clean)
            removed += n
    return removed


def collapse(text: str) -> str:
    return " ".join(text.split())


def add_section(sections: dict[str, str], name: str, text: str) -> None:
    """Add `text` under `name`'s canonical section(s) (or the name itself when unknown), joining repeats."""
    text = collapse(text)
    if not text:
        return
    for section in canonical_sections(name) or (normalise_name(name),):
        sections[section] = f"{sections[section]} {text}" if section in sections else text


def parse_report(text: str) -> dict[str, str]:
    """{section: text} of a free-text report (see module docstring)."""
    headers = [m for m in _HEADER.finditer(text)
               if canonical_sections(m.group(1)) or m.group(1) == m.group(1).upper()]
    sections: dict[str, str] = {}
    first = headers[0].start() if headers else len(text)
    add_section(sections, "preamble", text[:first])
    for this, following in zip(headers, headers[1:] + [None]):
        add_section(sections, this.group(1), text[this.end():following.start() if following else len(text)])
    return sections


def has_known_section(sections: dict[str, str]) -> bool:
    """True when at least one canonical section (findings, impression, indication, ...) was found."""
    return any(name in sections for name in KNOWN_SECTIONS)
