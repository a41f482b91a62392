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

Languages (`xraygpt.languages`).  `metric_tokens(text, language)` is what BLEU and CIDEr-D
count, `rouge_tokens(text, language)` what ROUGE counts for a language other than English:
- English: `r2gen_tokens` (ROUGE: rouge-score's own tokenizer, see `rouge`), so English figures
  stay comparable with the papers'; a CJK character inside English text becomes a token of its
  own instead of gluing to its neighbours.
- Any other language: `unicode_tokens`: `clean_text`, lower case, each CJK character a token,
  each run of other letters/digits a word, punctuation dropped ("胸部X光片2张" -> 胸 部 x 光 片 2
  张).  rouge-score's default tokenizer keeps only a-z0-9 and would score two identical Chinese
  texts 0.
- `cjk_tokenizer="jieba"`: the CJK runs are cut into words by the `jieba` segmenter instead of
  characters (when installed; it is not a dependency, and MissingTokenizerError says so); Latin
  runs stay words.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

from xraygpt.languages import CJK_CHARACTER, DEFAULT_LANGUAGE

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


CJK_TOKENIZERS = ("characters", "jieba")
_WORD = re.compile(r"[^\W_]+")


class MissingTokenizerError(ImportError):
    """`cjk_tokenizer: jieba` without the jieba package installed."""


def _spaced_cjk(text: str) -> str:
    """`text` with a space on each side of every CJK character."""
    return CJK_CHARACTER.sub(lambda m: f" {m.group(0)} ", text)


def unicode_tokens(text: str) -> list[str]:
    """Lower-cased tokens of `text`: each CJK character one, each run of other letters/digits one."""
    return _WORD.findall(_spaced_cjk(clean_text(text).lower()))


def jieba_segmenter() -> Callable[[str], list[str]]:
    """jieba's `lcut` (MissingTokenizerError when jieba is not installed)."""
    try:
        import jieba
    except ImportError as exc:
        raise MissingTokenizerError("evaluation.cjk_tokenizer jieba needs the jieba package (pip install jieba); "
                                    "or use cjk_tokenizer: characters") from exc
    jieba.setLogLevel(30)  # jieba logs its dictionary loading at INFO
    return jieba.lcut


def jieba_tokens(text: str, segment: Callable[[str], list[str]]) -> list[str]:
    """Lower-cased words of `text`: the CJK runs cut by `segment` (jieba), each other letter/digit run a word."""
    tokens: list[str] = []
    for piece in segment(clean_text(text).lower()):
        tokens += _WORD.findall(piece)  # a CJK word is one \w run; punctuation and spaces give none
    return tokens


def check_cjk_tokenizer(name: str) -> None:
    """ValueError for an unknown `cjk_tokenizer`; MissingTokenizerError for jieba without the package."""
    if name not in CJK_TOKENIZERS:
        raise ValueError(f"evaluation.cjk_tokenizer must be one of {', '.join(CJK_TOKENIZERS)}, got {name!r}")
    if name == "jieba":
        jieba_segmenter()


def rouge_tokens(text: str, language: str, cjk_tokenizer: str = "characters") -> list[str]:
    """ROUGE's tokens of `text` for a language other than English (see module docstring)."""
    if cjk_tokenizer == "jieba":
        return jieba_tokens(text, jieba_segmenter())
    return unicode_tokens(text)


def metric_tokens(text: str, language: str = DEFAULT_LANGUAGE, cjk_tokenizer: str = "characters") -> list[str]:
    """BLEU / CIDEr-D tokens of `text` in `language` (see module docstring)."""
    if language == DEFAULT_LANGUAGE:
        return r2gen_tokens(_spaced_cjk(text))
    return rouge_tokens(text, language, cjk_tokenizer)
