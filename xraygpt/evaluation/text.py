"""Text clean-up shared by the report metrics.

`clean_text` removes what a text file or a model can carry besides words: Unicode is NFKC
normalised, then control and format characters (zero-width spaces, BOMs, direction marks),
private-use and unpaired surrogate code points and U+FFFD are dropped, and whitespace is
collapsed.  A reference that is empty after this cannot be scored (the caller skips and counts it).

`r2gen_tokens` is the report normalisation of R2Gen (Chen et al., 2020), which the field's
BLEU / CIDEr numbers on IU X-ray and MIMIC-CXR use, re-implemented from its description:
lower case; numbered-list markers ("1. ", "2. ") removed; sentences cut at ". "; in each
sentence the punctuation is deleted (not replaced by a space: "x-ray" -> "xray"); empty
sentences dropped; the sentences joined with " . " and closed with " .".  The tokens are the
whitespace-separated words of that string, sentence dots included, as R2Gen scores them.
"""

from __future__ import annotations

import re
import unicodedata

_DROPPED_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Cn"}
_LIST_MARKER = re.compile(r"(?:^|(?<=\s))\d{1,2}[.)](?=\s)")
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def clean_text(text: str) -> str:
    """`text` without control/format/private-use characters and U+FFFD, NFKC, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    kept = "".join(" " if ch in "\t\n\r" else ch for ch in text
                   if ch in "\t\n\r" or (ch != "\ufffd" and unicodedata.category(ch) not in _DROPPED_CATEGORIES))
    return " ".join(kept.split())


def r2gen_normalise(text: str) -> str:
    """R2Gen's normalised report string (see module docstring); "" when no word remains."""
    text = _LIST_MARKER.sub(" ", clean_text(text).lower())
    kept = [" ".join(_PUNCTUATION.sub("", s).split()) for s in _SENTENCE_END.split(text)]
    kept = [s for s in kept if s]
    return " . ".join(kept) + " ." if kept else ""


def r2gen_tokens(text: str) -> list[str]:
    """Whitespace tokens of `r2gen_normalise(text)`."""
    return r2gen_normalise(text).split()
