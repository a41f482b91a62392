"""Text -> findings: which of the synthetic world's `FINDINGS` a free-text summary asserts.

`findings_in_text(text)` is the inverse of `summaries.write_summary` and reads generated
reports too: case-insensitive, sentence by sentence, with synonyms ("enlarged cardiac
silhouette", "nodular opacity", "blunting of the costophrenic angle") and negation ("no
pleural effusion", "pneumothorax is not seen" do not count).  Returns a frozenset, a subset of
`FINDINGS`.  (The CheXpert-style labeler of real reports is `evaluation/chexpert_rules.py`; this
one knows only the four synthetic findings and the templates' wording.)
"""

from __future__ import annotations

import re

from xraygpt.embedded.anatomy import FINDINGS

_MENTION_PATTERNS: dict[str, re.Pattern[str]] = {
    "cardiomegaly": re.compile(
        r"cardiomegaly|cardiac enlargement"
        r"|enlarge(?:d|ment of(?: the)?) (?:cardiac|heart|cardiomediastinal)"
        r"|(?:heart|cardiac|cardiomediastinal)(?: silhouette| shadow| size)?"
        r" (?:is |appears |remains |looks |seems )?(?:\w+ly )?enlarged"
        r"|(?:increased|elevated|enlarged) cardiothoracic ratio"
        r"|cardiothoracic ratio (?:is )?(?:increased|elevated)"
    ),
    "pleural_effusion": re.compile(
        r"(?<!pericardial )effusions?\b|hydrothora(?:x|ces)|pleural fluid"
        r"|blunt(?:ed|ing)(?: of)?(?: the)?(?: \w+)? costophrenic"
        r"|costophrenic (?:angles? |sulc(?:us|i) )?(?:is |are )?blunt"
    ),
    "pneumothorax": re.compile(r"pneumothora(?:x|ces)"),
    "nodule": re.compile(r"nodul(?:e|es|ar)\b|(?:pulmonary|lung) mass(?:es)?\b|coin lesions?"),
}
# A negation cue negates every mention after it in the same clause.
_NEG_CUE = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|nor|neither|"
    r"rules? out|ruled out|exclude[sd]?|resolution of|resolved)\b"
)
# Words that end the scope of a preceding negation cue within a sentence.
_SCOPE_END = re.compile(
    r"\b(?:but|however|although|though|whereas|while|yet|except|apart from|aside from|"
    r"there (?:is|are)|which)\b"
)
# Negation that follows the mention ("pneumothorax is not seen", "effusion has resolved").
_POST_NEG = re.compile(
    r"\s*(?:(?:is|are|has|have)\s+)?(?:been\s+)?(?:no longer\s+\w+|not\s+(?:seen|identified|present|"
    r"demonstrated|visuali[sz]ed|evident|appreciated|noted|detected)|absent|resolved|excluded|ruled out)\b"
)
_SENTENCE_SPLIT = re.compile(r"[.;!?\n]+|:\s")


def findings_in_text(text: str) -> frozenset[str]:
    """Inverse of write_summary: which FINDINGS the text asserts as present (negated mentions like 'no pleural effusion' do NOT count).

    Case-insensitive.  The text is split into sentences; a mention of a finding (with
    synonyms such as "enlarged cardiac silhouette", "nodular opacity", "blunting of the
    costophrenic angle") counts unless a negation cue ("no", "not", "without",
    "negative for", "free of", ...) appears earlier in the same sentence with no
    scope-ending word ("but", "however", "there is", ...) in between, or it is directly
    followed by a post-negation ("is not seen", "has resolved").

    Returns:
        The subset of :data:`FINDINGS` asserted as present.
    """
    present: set[str] = set()
    for sentence in _SENTENCE_SPLIT.split(text.lower()):
        if not sentence.strip():
            continue
        sentence = re.sub(r"\s+", " ", sentence)
        cues = [m.start() for m in _NEG_CUE.finditer(sentence)]
        ends = [m.start() for m in _SCOPE_END.finditer(sentence)]
        for finding, pattern in _MENTION_PATTERNS.items():
            if finding in present:
                continue
            for m in pattern.finditer(sentence):
                start = m.start()
                last_cue = max((c for c in cues if c < start), default=None)
                negated = last_cue is not None and not any(last_cue < e < start for e in ends)
                if not negated and _POST_NEG.match(sentence, m.end()):
                    negated = True
                if not negated:
                    present.add(finding)
                    break
    return frozenset(f for f in FINDINGS if f in present)
