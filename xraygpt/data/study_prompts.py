"""How a study is put to the model: its images tagged with their views, the indication, the prior.

A study instruction (what `{}` of the conversation template receives) reads:

    Frontal (PA): <Img><ImageHere></Img> Lateral: <Img><ImageHere></Img> Prior frontal (PA): <Img><ImageHere></Img>
    Indication: Cough. Prior report: Findings: ... Impression: ... {question}

- one `<Img><ImageHere></Img>` per image, in reading order (`xraygpt.data.studies.order_images`:
  frontal first), each after its view's tag (`view_tag`: `Frontal (PA)`, `Frontal (AP)`,
  `Frontal`, `Lateral`, `Lateral (LL)`, `View (AP AXIAL)` for MIMIC's other positions, `Unknown
  view`), the prior study's images last with `Prior ` before the tag;
- `Indication: ...` when the study has one (left out when it has none);
- `Prior report: Findings: ... Impression: ...` when asked for (`prior_report`) and a prior is shown;
- a question drawn from the target's instruction file.

Targets (`TARGETS`): `summary` (the paper's comparison-free summary), `findings`, `impression`
and `sections` (`Findings: ... Impression: ...`, `sections_text`; read back by `split_sections`).
Each target has its question file, `prompts/study_{target}.txt` (one question a line, `#`
comments; no `<ImageHere>`: the images are placed by `study_instruction`); another language's
file sits in the language's folder as for the single-image instructions
(`xraygpt.prompting.instruction_file`: `prompts/zh/study_summary.txt`; Chinese is shipped for
every target), and a language without it is refused in one line naming the file.  The view tags,
the labels (`Indication:`, `Prior report:`) and the sections' `Findings:` / `Impression:` are
English in every language (`Frontal (PA): <Img><ImageHere></Img> Indication: 咳嗽。 请描述...`):
`study_instruction` is called by the dataset, the chat and the server, none of which passes a
language, and evaluation reads the sections back by their English labels.  An indication or prior
report ending in a Chinese full stop (`。！？`) gets no `.` added.

`study_summary_question(language)` is what the demo and the terminal chat ask of a study: the
first question of the language's `summary` file, or, for a language without one, its single-image
summary question (`prompting.summary_instruction`).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from xraygpt.data.studies import UNKNOWN_VIEW
from xraygpt.languages import DEFAULT_LANGUAGE
from xraygpt.prompting import IMAGE_TAG, PromptFileError, instruction_file, locate, summary_instruction
from xraygpt.constants import IMAGE_PLACEHOLDER

logger = logging.getLogger(__name__)

TARGETS = ("summary", "findings", "impression", "sections")
DEFAULT_STUDY_PROMPT_PATH = "prompts/study_{target}.txt"

_TAGS = {"PA": "Frontal (PA)", "AP": "Frontal (AP)", "FRONTAL": "Frontal", "LATERAL": "Lateral", "LL": "Lateral (LL)",
         UNKNOWN_VIEW: "Unknown view"}
# the views a user can pick for an image (demo, server): tag -> view
VIEW_CHOICES = {"Frontal (PA)": "PA", "Frontal (AP)": "AP", "Frontal": "FRONTAL", "Lateral": "LATERAL",
                "Lateral (LL)": "LL", "Unknown view": UNKNOWN_VIEW}
_SECTION_LABEL = re.compile(r"\b(findings|impression)\s*:", re.IGNORECASE)


class StudyPromptError(ValueError):
    """A study prompt that cannot be made (unknown target, bad question file)."""


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise StudyPromptError(f"unknown study target {target!r}; known: {', '.join(TARGETS)}")
    return target


def view_tag(view: str, prior: bool = False) -> str:
    """The tag written before an image of `view` (module docstring); `prior`: `Prior frontal (PA)`."""
    tag = _TAGS.get(view, f"View ({view})")
    return f"Prior {tag[0].lower()}{tag[1:]}" if prior else tag


def guess_views(count: int) -> list[str]:
    """Views assumed for `count` images whose views nobody gave: the first frontal, the second
    lateral (the usual PA + lateral pair), any further one unknown."""
    return (["FRONTAL", "LATERAL"] + [UNKNOWN_VIEW] * max(0, count - 2))[:count]


def sections_text(findings: str, impression: str) -> str:
    """`Findings: ... Impression: ...`, a missing section left out ("" when both are)."""
    parts = [f"Findings: {findings}" if findings else "", f"Impression: {impression}" if impression else ""]
    return " ".join(p for p in parts if p)


def split_sections(text: str) -> tuple[str, str]:
    """(findings, impression) of a `sections_text` (or a generated answer in that form): the text
    after each label up to the next; a label that is missing gives ""."""
    found: dict[str, str] = {}
    labels = list(_SECTION_LABEL.finditer(text))
    for this, following in zip(labels, labels[1:] + [None]):
        name = this.group(1).lower()
        if name not in found:
            found[name] = " ".join(text[this.end():following.start() if following else len(text)].split())
    return found.get("findings", ""), found.get("impression", "")


def study_instruction(views: list[str], question: str, indication: str = "", prior_views: list[str] = (),
                      prior_report: str = "") -> str:
    """The instruction of a study showing images of `views` (and the prior's `prior_views`), with its
    indication, the prior report when given, and `question` (module docstring); it holds
    `<ImageHere>` len(views) + len(prior_views) times."""
    if not views:
        raise StudyPromptError("a study prompt needs at least one image")
    parts = [f"{view_tag(v)}: {IMAGE_TAG}" for v in views] + [f"{view_tag(v, prior=True)}: {IMAGE_TAG}" for v in prior_views]
    if indication:
        parts.append(f"Indication: {_sentence(indication)}")
    if prior_report and prior_views:
        parts.append(f"Prior report: {_sentence(prior_report)}")
    parts.append(question.strip())
    return " ".join(parts)


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text[-1:] in ".!?。！？" else f"{text}."


def question_file(prompt_path: str | os.PathLike, target: str, language: str = DEFAULT_LANGUAGE) -> Path:
    """The question file of `target` in `language`: `prompt_path` with `{target}` replaced, in the
    language's folder (`prompting.instruction_file`), found by `prompting.locate`."""
    return locate(instruction_file(str(prompt_path).replace("{target}", check_target(target)), language))


def load_questions(prompt_path: str | os.PathLike, target: str, language: str = DEFAULT_LANGUAGE) -> list[str]:
    """The questions of `target`'s file (module docstring); a missing or empty file, or a line
    holding `<ImageHere>`, raises PromptFileError naming the file (and line)."""
    file = question_file(prompt_path, target, language)
    if not file.is_file():
        english = str(prompt_path).replace("{target}", target)
        raise PromptFileError(f"no study prompts for language {language!r} (target {target!r}): {file} does not exist "
                              f"(write one question per line there, without {IMAGE_PLACEHOLDER}, like {english})")
    questions = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if IMAGE_PLACEHOLDER in line or "<Img>" in line:
            raise PromptFileError(f"{file}:{lineno}: a study question holds no {IMAGE_PLACEHOLDER} (the images are "
                                  "placed before it, one per view)")
        questions.append(line)
    if not questions:
        raise PromptFileError(f"study question file {file} holds no question")
    return questions


def study_summary_question(language: str, prompt_path: str | os.PathLike) -> str:
    """The question the demo and the terminal chat ask for a study's summary in `language`: the first
    of `language`'s `DEFAULT_STUDY_PROMPT_PATH` file (`prompts/zh/study_summary.txt`); a language
    other than English without that file asks its single-image summary question (the first
    instruction of `language`'s version of `prompt_path`, `prompting.summary_instruction`), logged."""
    file = question_file(DEFAULT_STUDY_PROMPT_PATH, "summary", language)
    if language != DEFAULT_LANGUAGE and not file.is_file():
        logger.info("no study prompts for language %r (%s): a study is asked the single-image summary question",
                    language, file)
        return summary_instruction(prompt_path, language)
    return load_questions(DEFAULT_STUDY_PROMPT_PATH, "summary", language)[0]
