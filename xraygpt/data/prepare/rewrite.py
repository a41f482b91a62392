"""Sentence rewriting of the rule summariser: comparisons and de-identification blanks are taken
out of a sentence and the finding is kept ("Stable mild cardiomegaly." -> "Mild cardiomegaly.").

Written here: no library implements these radiology-specific rules, and they must run offline.

A sentence goes through:
 1. `canonical_blanks`: every de-identification blank form ("___", "XXXX", "<XXXX>", "x-XXXX")
    becomes the one token XXXX;
 2. the rules of `rules/rewrite.tsv` in file order (format described in that file): each
    replaces its matches, or removes the clause it matches in (replacement DROP);
 3. `repair`: dangling words at clause ends ("X is." -> "X."), stray commas, a capital first
    letter and a full stop;
 4. the last resort: a blank or comparison word (`COMPARISON`) still left is removed alone;
 5. a sentence changed by any step that no longer holds a finding word (a word outside
    `NEUTRAL_WORDS`: "Heart size is stable." -> "Heart size.") is removed.
`rewrite_sentence` returns the new text ("" when removed) and the names of the rules that
changed it.  `minimal_form` is the fallback the labeler guard restores: steps 1, 3 and 4 only,
so the sentence keeps every word that is neither a blank nor comparison wording.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

RULES_FILE = Path(__file__).resolve().parent / "rules" / "rewrite.tsv"
DROP = "DROP"
BLANK_TOKEN = "XXXX"

# Comparison wording: a summary holding a match still speaks of a prior study or a change.
COMPARISON = re.compile(
    r"\b(?:compar(?:e|ed|ing|ison|isons)|prior|previous(?:ly)?|preceding|earlier|since|interval(?:ly)?|unchanged"
    r"|(?:no|without) (?:significant |substantial |appreciable |relevant |interval )?change|again|redemonstrat\w*|stabl[ey]"
    r"|persist\w*|new(?:ly)?|improv\w*|worsen\w*|resolv\w*|resolution|re-demonstrat\w*|continu(?:ed|ing)|no longer)\b",
    re.IGNORECASE,
)
# Every written form of a de-identification blank: MIMIC-CXR "___", OpenI "XXXX" (also escaped,
# bracketed, or glued to a word: "x-XXXX", "XXXX-of-view", "4XXXX").
BLANK_FORMS = re.compile(r"&lt;\s*X{2,}\s*&gt;|<\s*X{2,}\s*>|[\w\-]*X{4,}[\w\-]*|\b[\w.]+-X{2,}\b|\bX{2,}(?:-\w+)+\b"
                         r"|_{2,}|\bX{2,}\b|\bx{4,}\b")
BLANK = re.compile(rf"\b{BLANK_TOKEN}\b|_{{2,}}|\bX{{2,}}\b")

# Words that alone state no finding: function words, normal anatomy, view and size words.
NEUTRAL_WORDS = frozenset("""
a an the and or but nor of in on at to from by with without for as than that which this these those there here it its
their is are was were be been being has have had do does did will would can could may might shall should also still
now otherwise overall essentially grossly relatively again no not any some all both each either other another very
most more less further slightly mild mildly appearance size sizes position positioning location configuration contour
contours silhouette silhouettes heart cardiac cardiomediastinal mediastinal mediastinum hilar hila hilum lung lungs
pulmonary vasculature vascularity volume volumes chest thorax thoracic study exam examination radiograph radiographs
film films image images view views frontal lateral pa ap portable upright supine finding findings change changes
changed left right bilateral bilaterally side sides seen noted identified demonstrated visualized evident present
appears appear appeared position located unremarkable overall degree extent number amount region area areas
evidence acute
""".split())

_CLAUSE_DELIMITERS = ",;:"
_DANGLING_END = re.compile(
    r"\s*\b(?:is|are|was|were|be|been|being|has|have|had|which|that|and|or|but|with|without|of|in|on|from|to|at|by|the|a|an|"
    r"than|as|for|its|their|there|this|these|very|most|more|less|also|when|where|while|into|onto|upon|versus|vs|both|"
    r"now|otherwise|still|again|slightly|seen on|and/or)\s*(?=[,;:.!?]|$)", re.IGNORECASE)
_DANGLING_START = re.compile(r"^(?:and|or|but|with|which|that|of|to|as|by|than|and/or|also|however|corresponding to|"
                             r"consistent with|compatible with|representing)\b[\s,]*", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+")


class RuleFileError(ValueError):
    """A rewrite rule file that cannot be read: names the file and line."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One line of a rule file: `pattern` is compiled case-insensitive; `replacement` None means DROP."""

    name: str
    pattern: re.Pattern
    replacement: str | None


@functools.lru_cache(maxsize=None)
def load_rules(path: Path = RULES_FILE) -> tuple[Rule, ...]:
    """The rules of a rule file, in order (format: the file's header)."""
    macros: dict[str, str] = {}
    rules: list[Rule] = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        try:
            if fields[0] == "@define":
                macros[fields[1]] = _expand(fields[2], macros)
                continue
            name, pattern = fields[0], _expand(fields[1], macros)
            replacement = fields[2] if len(fields) > 2 else ""
            if len(fields) > 3 or not name:
                raise ValueError("expected `name<TAB>pattern[<TAB>replacement]`")
            rules.append(Rule(name, re.compile(pattern, re.IGNORECASE), None if replacement == DROP else replacement))
        except (IndexError, ValueError, KeyError, re.error) as exc:
            raise RuleFileError(f"{path}:{lineno}: {exc}") from exc
    return tuple(rules)


def _expand(pattern: str, macros: dict[str, str]) -> str:
    """`pattern` with every {NAME} replaced by its macro (KeyError names an undefined one)."""
    def one(match: re.Match) -> str:
        if match.group(1) not in macros:
            raise KeyError(f"undefined macro {{{match.group(1)}}}")
        return macros[match.group(1)]
    return re.sub(r"\{([A-Z_]+)\}", one, pattern)


def canonical_blanks(text: str) -> str:
    """`text` with every blank form as the token XXXX (runs of blanks as one)."""
    text = BLANK_FORMS.sub(BLANK_TOKEN, text)
    return re.sub(rf"\b{BLANK_TOKEN}(?:[\s/,]+{BLANK_TOKEN}\b)+", BLANK_TOKEN, text)


def drop_clause(text: str, start: int, end: int) -> str:
    """`text` without the clause holding text[start:end] (bounded by , ; : or the ends)."""
    left = max(text.rfind(d, 0, start) for d in _CLAUSE_DELIMITERS)
    rights = [i for i in (text.find(d, end) for d in _CLAUSE_DELIMITERS) if i >= 0]
    right = min(rights) if rights else len(text)
    if left >= 0:
        return text[:left] + text[right:]
    return text[right + 1:] if right < len(text) else ""


def repair(text: str) -> str:
    """Tidy what rules leave: dangling words, stray punctuation, capital, final full stop."""
    previous = None
    while text != previous:
        previous = text
        text = " ".join(text.split())
        text = re.sub(r"\s+([,;:.!?])", r"\1", text)
        text = re.sub(r"[,;:]+\s*(?=[,;:.!?]|$)", "", text)
        text = re.sub(r"^[\s,;:.!?/\-]+", "", text)
        text = _DANGLING_END.sub("", text)
        text = _DANGLING_START.sub("", text)
        text = re.sub(r"\(\s*\)", "", text)
        text = re.sub(r"([.!?])[.!?]+", r"\1", text)
        text = re.sub(r"\b([Aa])(?= [aeioAEIO])", r"\1n", text)  # "a opacity" once a blank between them is gone
    text = text.strip(" ,;:")
    if not text.strip(" .!?"):
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else f"{text}."


def has_finding_words(text: str) -> bool:
    """True when `text` holds a word outside `NEUTRAL_WORDS` (and numbers do not count)."""
    return any(word not in NEUTRAL_WORDS for word in _WORD.findall(text.lower()))


def _last_resort(text: str, applied: list[str]) -> str:
    """`text` without any blank or comparison word left (step 4); names what it removed in `applied`."""
    for pattern, name in ((BLANK, "blank: last resort"), (COMPARISON, "comparison: last resort")):
        new = pattern.sub("", text)
        if new != text:
            applied.append(name)
            text = new
    return text


def minimal_form(sentence: str) -> tuple[str, list[str]]:
    """(`sentence` with only blanks and comparison words taken out, the steps that changed it)."""
    applied: list[str] = []
    text = canonical_blanks(sentence)
    text = _last_resort(re.sub(rf"\s*\([^()]*\b{BLANK_TOKEN}\b[^()]*\)", "", text), applied)
    return (repair(text), applied) if applied else (sentence, [])


def rewrite_sentence(sentence: str, rules: tuple[Rule, ...] | None = None) -> tuple[str, list[str]]:
    """(rewritten sentence or "" when removed, names of the rules that changed it); see module docstring."""
    rules = load_rules() if rules is None else rules
    applied: list[str] = []
    text = canonical_blanks(sentence)
    if text != sentence:
        applied.append("blank: made canonical")
    for rule in rules:
        if rule.replacement is None:
            for _ in range(8):
                match = rule.pattern.search(text)
                if not match:
                    break
                text = drop_clause(text, match.start(), match.end())
                applied.append(rule.name)
        else:
            new = rule.pattern.sub(rule.replacement, text)
            if new != text:
                applied.append(rule.name)
                text = new
    text = _last_resort(text, applied)
    if not applied:
        return sentence, []
    text = repair(text)
    return (text, applied) if has_finding_words(text) else ("", applied)
