"""Languages: the codes a dataset, the demo, the server and evaluation carry, and script detection.

A language is a lower-case code (`en`, `zh`, ...; ISO 639-1/3 letters, optionally a region
`zh-hans`), checked by `check_language` so that it can name a prompts folder safely.  English
(`en`, the default) is the language of `prompts/*.txt`; another language L has its
instructions in `prompts/L/` (see `xraygpt.prompting.instruction_file`).

Script detection counts CJK characters: the Han ideographs (U+3400-U+4DBF, U+4E00-U+9FFF,
U+F900-U+FAFF, U+20000-U+3FFFF), Japanese kana (U+3040-U+30FF) and Hangul syllables
(U+AC00-U+D7AF).  `detect_language(text)` is `zh` when the text holds any of them, else `en`
(the server's guess from a user's text; Chinese reports routinely carry Latin letters, e.g.
"X射线", so any CJK character decides).  `written_in(text, language)` is what evaluation and the
dataset check count as text in another language than the one configured: a CJK language's text
without a CJK character, or any other language's text holding one.
"""

from __future__ import annotations

import re

DEFAULT_LANGUAGE = "en"
# Languages written in CJK characters (their metrics count characters, see xraygpt.evaluation.text).
CJK_LANGUAGES = ("zh", "ja", "ko")

CJK_CHARACTER = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003ffff]")
_CODE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})?")


class LanguageError(ValueError):
    """A language code that is not one (it names a prompts folder, so it must be plain letters)."""


def check_language(language: str, key: str = "language") -> str:
    """`language` when it is a plain code (`en`, `zh`, `zh-hans`); LanguageError naming `key` otherwise."""
    if not isinstance(language, str) or not _CODE.fullmatch(language):
        raise LanguageError(f"{key} must be a language code such as 'en' or 'zh' (lower-case letters), "
                            f"got {language!r}")
    return language


def base_language(language: str) -> str:
    """`zh-hans` -> `zh`."""
    return language.split("-", 1)[0]


def is_cjk_language(language: str) -> bool:
    """Whether `language` is written in CJK characters (zh, ja, ko and their variants)."""
    return base_language(language) in CJK_LANGUAGES


def cjk_count(text: str) -> int:
    """How many CJK characters `text` holds."""
    return len(CJK_CHARACTER.findall(text))


def detect_language(text: str) -> str:
    """`zh` when `text` holds a CJK character, else `en` (see module docstring)."""
    return "zh" if CJK_CHARACTER.search(text) else DEFAULT_LANGUAGE


def written_in(text: str, language: str) -> bool:
    """False when `text` is visibly in another script than `language`'s (see module docstring); an
    empty text is in every language."""
    if not text.strip():
        return True
    has_cjk = CJK_CHARACTER.search(text) is not None
    return has_cjk if is_cjk_language(language) else not has_cjk
