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
the labels and the sections' labels are written in the prompt's language (`language`, passed by
the dataset (its source's `language`), the chat and the demo (the session's), the server (the
request's `language`, else the language of its question) and the study proof (English)):

    en  Frontal (PA) / Frontal (AP) / Frontal / Lateral / Lateral (LL) / Unknown view / View (X);
        Prior frontal (PA); Indication: ; Prior report: ; Findings: ; Impression:
    zh  正位（后前位） / 正位（前后位） / 正位 / 侧位 / 侧位（左侧位） / 未知体位 / 体位（X）;
        既往正位（后前位）; 临床指征： ; 既往报告： ; 影像所见： ; 诊断意见：

(`正位（后前位）：<Img><ImageHere></Img> 临床指征：咳嗽。 请描述...`).  Any other language gets the
English ones (`LABELS` has them per language; add one there).  `split_sections` reads either
language's section labels back (and the Chinese headers 检查所见 / 影像表现 for findings, 印象 /
影像诊断 for impression), so evaluation scores the sections of a Chinese answer too.  An indication
or prior report that ends without a full stop (`.!?。！？`) gets the language's (`.`, `。`).

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
from xraygpt.languages import DEFAULT_LANGUAGE, base_language, check_language
from xraygpt.prompting import IMAGE_TAG, PromptFileError, instruction_file, locate, summary_instruction
from xraygpt.constants import IMAGE_PLACEHOLDER

logger = logging.getLogger(__name__)

TARGETS = ("summary", "findings", "impression", "sections")
DEFAULT_STUDY_PROMPT_PATH = "prompts/study_{target}.txt"

# Per language (module docstring): each view's tag, the tag of another view, the labels (with their
# separator) of the indication, the prior report and the two sections, the full stop added to an indication,
# and the prior's tags (`prior` around the view's tag, its first letter lower-cased with `prior_lowercase`).
LABELS = {
    "en": {"tags": {"PA": "Frontal (PA)", "AP": "Frontal (AP)", "FRONTAL": "Frontal", "LATERAL": "Lateral",
                    "LL": "Lateral (LL)", UNKNOWN_VIEW: "Unknown view"},
           "other_view": "View ({})", "colon": ": ", "indication": "Indication", "prior_report": "Prior report",
           "findings": "Findings", "impression": "Impression", "stop": ".", "prior": "Prior {}",
           "prior_lowercase": True},
    "zh": {"tags": {"PA": "正位（后前位）", "AP": "正位（前后位）", "FRONTAL": "正位", "LATERAL": "侧位",
                    "LL": "侧位（左侧位）", UNKNOWN_VIEW: "未知体位"},
           "other_view": "体位（{}）", "colon": "：", "indication": "临床指征", "prior_report": "既往报告",
           "findings": "影像所见", "impression": "诊断意见", "stop": "。", "prior": "既往{}",
           "prior_lowercase": False},
}
# the views a user can pick for an image (demo, server): tag -> view
VIEW_CHOICES = {"Frontal (PA)": "PA", "Frontal (AP)": "AP", "Frontal": "FRONTAL", "Lateral": "LATERAL",
                "Lateral (LL)": "LL", "Unknown view": UNKNOWN_VIEW}
_SECTION_NAMES = {"findings": "findings", "impression": "impression", "影像所见": "findings", "检查所见": "findings",
                  "影像表现": "findings", "诊断意见": "impression", "印象": "impression", "影像诊断": "impression"}
_SECTION_LABEL = re.compile(r"(?:\b(findings|impression)|(影像所见|检查所见|影像表现|诊断意见|影像诊断|印象))\s*[:：]",
                            re.IGNORECASE)


class StudyPromptError(ValueError):
    """A study prompt that cannot be made (unknown target, bad question file)."""


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise StudyPromptError(f"unknown study target {target!r}; known: {', '.join(TARGETS)}")
    return target


def labels(language: str = DEFAULT_LANGUAGE) -> dict:
    """`LABELS` of `language` (its base code: `zh-hans` is `zh`), English for a language without them."""
    return LABELS.get(base_language(check_language(language)), LABELS["en"])


def view_tag(view: str, prior: bool = False, language: str = DEFAULT_LANGUAGE) -> str:
    """The tag written before an image of `view` in `language` (module docstring); `prior`: `Prior
    frontal (PA)` / `既往正位（后前位）`."""
    words = labels(language)
    tag = words["tags"].get(view) or words["other_view"].format(view)
    if not prior:
        return tag
    return words["prior"].format(f"{tag[0].lower()}{tag[1:]}" if words["prior_lowercase"] else tag)


def guess_views(count: int) -> list[str]:
    """Views assumed for `count` images whose views nobody gave: the first frontal, the second
    lateral (the usual PA + lateral pair), any further one unknown."""
    return (["FRONTAL", "LATERAL"] + [UNKNOWN_VIEW] * max(0, count - 2))[:count]


def sections_text(findings: str, impression: str, language: str = DEFAULT_LANGUAGE) -> str:
    """`Findings: ... Impression: ...` (`影像所见：... 诊断意见：...`), a missing section left out ("" when
    both are)."""
    words = labels(language)
    parts = [f"{words['findings']}{words['colon']}{findings}" if findings else "",
             f"{words['impression']}{words['colon']}{impression}" if impression else ""]
    return " ".join(p for p in parts if p)


def split_sections(text: str) -> tuple[str, str]:
    """(findings, impression) of a `sections_text` (or a generated answer in that form): the text
    after each label up to the next (the first that is not empty: `影像所见：影像表现：...` is the text
    after the second); a label that is missing gives ""."""
    found: dict[str, str] = {}
    marks = list(_SECTION_LABEL.finditer(text))
    for this, following in zip(marks, marks[1:] + [None]):
        name = this.group(1).lower() if this.group(1) else _SECTION_NAMES[this.group(2)]
        if not found.get(name):
            found[name] = " ".join(text[this.end():following.start() if following else len(text)].split())
    return found.get("findings", ""), found.get("impression", "")


def study_instruction(views: list[str], question: str, indication: str = "", prior_views: list[str] = (),
                      prior_report: str = "", language: str = DEFAULT_LANGUAGE) -> str:
    """The instruction of a study showing images of `views` (and the prior's `prior_views`), with its
    indication, the prior report when given, and `question`, its tags and labels in `language` (module
    docstring); it holds `<ImageHere>` len(views) + len(prior_views) times."""
    if not views:
        raise StudyPromptError("a study prompt needs at least one image")
    words = labels(language)
    colon = words["colon"]
    parts = ([f"{view_tag(v, language=language)}{colon}{IMAGE_TAG}" for v in views]
             + [f"{view_tag(v, prior=True, language=language)}{colon}{IMAGE_TAG}" for v in prior_views])
    if indication:
        parts.append(f"{words['indication']}{colon}{_sentence(indication, words['stop'])}")
    if prior_report and prior_views:
        parts.append(f"{words['prior_report']}{colon}{_sentence(prior_report, words['stop'])}")
    parts.append(question.strip())
    return " ".join(parts)


def _sentence(text: str, stop: str) -> str:
    text = " ".join(text.split())
    return text if text[-1:] in ".!?。！？" else f"{text}{stop}"


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
