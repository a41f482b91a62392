"""Questions about the drawn findings of a synthetic split, in English and Chinese, written as a SLAKE release.

The summaries of the synthetic world (`dataset.generate_dataset`) say which findings were drawn
and where; these questions ask the same facts one at a time, so that a model can answer them
only by looking at the image.  Per image of a split, in both languages (`LANGUAGES`):

- presence, closed yes/no, one per finding ("Is there a pleural effusion?" / "是否有胸腔积液？"
  -> yes / no, 是 / 否), asked on a balanced set per finding: every image with the finding and as
  many without (seeded), so that answering from the question alone scores 0.5;
- heart size, closed ("How large is the heart?" -> enlarged / normal), on cardiomegaly's balanced set;
- side, closed, when the finding is drawn: pleural effusion and pneumothorax (right / left,
  右侧 / 左侧), nodules (right / left / both lungs, 右肺 / 左肺 / 双肺);
- nodule location, open, when nodules are drawn ("Where is the nodule?" -> "right upper zone",
  two sites joined by "and": "right upper zone and left lower zone"; 右上肺野和左下肺野);
- abnormalities, open, on every image, as SLAKE asks "Which diseases are included in this image?"
  ("What abnormalities are seen?" -> "pleural effusion, pneumothorax" in `FINDINGS` order, "none";
  图中有哪些异常？ -> 胸腔积液、气胸, 无).  Besides being a question of its own, it is where stage 0
  learns what each question word means in each language: the summaries teach the English finding
  words from the slot words, but nothing else writes the Chinese ones, and a stage-0 LLM trained on
  yes/no questions alone once took 胸腔积液 and 气胸 for one word (answering "is there a pneumothorax"
  yes on every image with only an effusion, in Chinese only; README, VQA on the embedded default).

Side words are the patient's (as in the summaries).  Sides and zones come from the drawn case:
`image_cases` redraws each image's `anatomy.Case` from the seeds `dataset.generate_dataset`
uses (`numpy.random.default_rng([seed, split index, 1, image index])`, then `sample_case`) and
checks that the summary drawn next equals the split's caption, so a change of the generator's
seeding stops with an error instead of writing wrong answers.

`write_release` writes one source's questions in SLAKE's release layout (`xraygpt.data.vqa`
reads it as `format: slake`; the VQA-RAD reader is English-only, SLAKE's has `q_lang`):
`train.json`, `validate.json` (the val split) and `test.json`, and `imgs` a relative link to the
source folder (image names `<split>/image/<image_id>.png`).

Stage 0 reads the image slot as words (`slots.json` of `prepare`: the finding drawn in each
cell of the encoder's 7 x 7 grid, `o` elsewhere).  There, which side a finding is on is only
*where* its word sits (a cell's column), which a 2-layer LLM reads poorly (measured: side
answers near chance even from the words); but the frozen encoder's tokens show the side in
their content (a linear probe on single cells: 0.96-0.98 for effusion and pneumothorax, 0.78
for a nodule cell).  So `sided_slots` writes the lung findings' words with their side,
`reffusion` / `leffusion`, `rpneumothorax`, `rnodule`, ... (`SIDED_WORDS`; the patient's side,
from the drawn case), which stage 1's projection can produce from what a token shows.
`stage0_conversations` turns a split's questions into stage 0's text-only conversations, one
per image and language, the slot holding those words and the image's questions following one
per turn (`<Img>o o reffusion ...</Img> question` -> answer, next question -> answer, ...: an
answer is a token or two, so several per conversation keep them from being drowned by the
summaries' long targets in the token-averaged loss); `template_texts` and `conversation_texts`
are the texts a tokenizer is trained on (the slot words included, so each slot item is one token).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from pathlib import Path

import numpy as np

from xraygpt.atomic import atomic_write_text
from xraygpt.constants import DEFAULT_END_SYM, DEFAULT_PROMPT_TEMPLATE, IMAGE_PLACEHOLDER
from xraygpt.embedded.anatomy import FINDINGS, Case, sample_case
from xraygpt.embedded.dataset import SPLITS
from xraygpt.embedded.summaries import case_summary
from xraygpt.prompting import with_image

LANGUAGES = ("en", "zh")
YES_NO = {"en": ("yes", "no"), "zh": ("是", "否")}
# finding -> {language: phrasings}; one is drawn per (image, finding, language), seeded
PRESENCE = {
    "cardiomegaly": {"en": ("Is the heart enlarged?", "Is there cardiomegaly?"),
                     "zh": ("心脏是否增大？", "是否有心脏增大？")},
    "pleural_effusion": {"en": ("Is there a pleural effusion?", "Is a pleural effusion present?"),
                         "zh": ("是否有胸腔积液？", "有胸腔积液吗？")},
    "pneumothorax": {"en": ("Is there a pneumothorax?", "Is a pneumothorax present?"),
                     "zh": ("是否有气胸？", "有气胸吗？")},
    "nodule": {"en": ("Is there a nodule?", "Is there a pulmonary nodule?"),
               "zh": ("是否有结节？", "肺部有结节吗？")},
}
HEART_SIZE = {"en": ("How large is the heart?", ("enlarged", "normal")), "zh": ("心脏大小如何？", ("增大", "正常"))}
SIDE_QUESTIONS = {
    "pleural_effusion": {"en": "Which side is the pleural effusion on?", "zh": "胸腔积液在哪一侧？"},
    "pneumothorax": {"en": "Which side is the pneumothorax on?", "zh": "气胸在哪一侧？"},
    "nodule": {"en": "Which lung is the nodule in?", "zh": "结节在哪侧肺？"},
}
SIDE_WORDS = {"en": {"right": "right", "left": "left"}, "zh": {"right": "右侧", "left": "左侧"}}
LUNG_WORDS = {"en": {"right": "right", "left": "left", "both": "both"}, "zh": {"right": "右肺", "left": "左肺", "both": "双肺"}}
WHERE = {"en": "Where is the nodule?", "zh": "结节在什么位置？"}
ABNORMALITIES = {"en": "What abnormalities are seen?", "zh": "图中有哪些异常？"}
FINDING_NAMES = {"en": {"cardiomegaly": "cardiomegaly", "pleural_effusion": "pleural effusion",
                        "pneumothorax": "pneumothorax", "nodule": "nodule"},
                 "zh": {"cardiomegaly": "心脏增大", "pleural_effusion": "胸腔积液", "pneumothorax": "气胸", "nodule": "结节"}}
NAME_JOINERS, NO_ABNORMALITY = {"en": ", ", "zh": "、"}, {"en": "none", "zh": "无"}
ALL_FINDINGS = "all"  # the `finding` of an abnormality question (it asks about every finding)
ZONE_ORDER = ("upper", "mid", "lower")
ZH_SIDE, ZH_ZONE = {"right": "右", "left": "左"}, {"upper": "上", "mid": "中", "lower": "下"}
# question kind -> SLAKE's content_type for it
CONTENT_TYPES = {"presence": "Abnormality", "size": "Size", "side": "Position", "where": "Position",
                 "abnormality": "Abnormality"}
RELEASE_FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}
SIDED_SLOTS_FILE = "slots_sided.json"  # image_id -> `sided_slots` text, every split's


SLOT_FILLER = "o"  # `slots.FILLER`
SIDED_WORDS = {"effusion": "pleural_effusion", "pneumothorax": "pneumothorax", "nodule": "nodule"}  # slot word -> finding
SIDE_PREFIX = {"right": "r", "left": "l"}


class CaseMismatch(ValueError):
    """A split whose captions the generator's seeds do not reproduce (its seeding changed)."""


@dataclasses.dataclass(frozen=True)
class Question:
    """One question about one image: kind is presence | size | side | where | abnormality; finding one
    of FINDINGS (`ALL_FINDINGS` for an abnormality question)."""

    image_id: str
    kind: str
    finding: str
    language: str
    question: str
    answer: str
    answer_type: str  # closed | open


def image_cases(split_dir: Path, generator_seed: int, split: str) -> dict[str, Case]:
    """image_id -> the drawn `Case` of each image of a synthetic split made by
    `generate_dataset(..., seed=generator_seed)` (see module docstring); CaseMismatch when a
    redrawn summary differs from the split's caption."""
    split_index = SPLITS.index(split)
    labels = json.loads((split_dir / "labels.json").read_text())
    captions = {a["image_id"]: a["caption"] for a in json.loads((split_dir / "filter_cap.json").read_text())["annotations"]}
    cases = {}
    for image_id, findings in labels.items():
        index = int(image_id.rsplit("_", 1)[1]) - 1
        rng = np.random.default_rng([generator_seed, split_index, 1, index])
        case = sample_case(frozenset(findings), rng)
        if case_summary(case, rng) != captions.get(image_id):
            raise CaseMismatch(f"{split_dir}: the case redrawn for {image_id} (seed {generator_seed}) does not give its "
                               "caption; xraygpt.embedded.dataset no longer draws images as vqa_world assumes")
        cases[image_id] = case
    return cases


def nodule_sites(case: Case) -> list[tuple[str, str]]:
    """The distinct (side, zone) sites of a case's nodules, right before left, upper before lower."""
    return sorted(set(case.nodule_sites()), key=lambda s: (s[0] != "right", ZONE_ORDER.index(s[1])))


def where_answer(sites: list[tuple[str, str]], language: str) -> str:
    """"right upper zone and left lower zone" / "右上肺野和左下肺野"."""
    if language == "zh":
        return "和".join(f"{ZH_SIDE[side]}{ZH_ZONE[zone]}肺野" for side, zone in sites)
    return " and ".join(f"{side} {zone} zone" for side, zone in sites)


def abnormality_answer(case: Case, language: str) -> str:
    """The case's findings named in `FINDINGS` order ("pleural effusion, pneumothorax" / 胸腔积液、气胸),
    `NO_ABNORMALITY` when it has none."""
    names = [FINDING_NAMES[language][f] for f in FINDINGS if f in case.findings]
    return NAME_JOINERS[language].join(names) if names else NO_ABNORMALITY[language]


def nodule_lung(case: Case) -> str:
    """right | left | both: the lungs holding the case's nodules."""
    sides = {side for side, _ in case.nodule_sites()}
    return sides.pop() if len(sides) == 1 else "both"


def cell_side(case: Case, word: str, row: int, col: int, grid: int) -> str:
    """The patient side of the finding drawn in cell (row, col): the case's side for an effusion or a
    pneumothorax, the nearest nodule's for a nodule (cell centre taken back to body coordinates)."""
    if word == "effusion":
        return case.effusion_side
    if word == "pneumothorax":
        return case.ptx_side
    gx, gy = -1 + (2 * col + 1) / grid, -1 + (2 * row + 1) / grid
    c, s = math.cos(case.rotation), math.sin(case.rotation)
    dx, dy = gx - case.shift_x, gy - case.shift_y
    x, y = (c * dx + s * dy) / case.scale, (-s * dx + c * dy) / case.scale
    nearest = min(range(len(case.nodules)), key=lambda i: math.hypot(case.nodules[i][0] - x, case.nodules[i][1] - y))
    return case.nodule_sites()[nearest][0]


def sided_slots(cases: dict[str, Case], slots: dict[str, str]) -> dict[str, str]:
    """image_id -> its slot text (`slots.json`) with each lung finding's word prefixed by its side
    (`r` / `l`: `reffusion`, `lnodule`; see module docstring); `cardiomegaly` and `o` unchanged."""
    out = {}
    for image_id, case in cases.items():
        items = slots[image_id].split(" ")
        grid = math.isqrt(len(items))
        if grid * grid != len(items):
            raise ValueError(f"slot of {image_id} has {len(items)} items, not a square grid")
        for n, word in enumerate(items):
            if word in SIDED_WORDS:
                if SIDED_WORDS[word] not in case.findings:
                    raise ValueError(f"slot of {image_id} shows {word!r}, which its case does not have")
                items[n] = SIDE_PREFIX[cell_side(case, word, *divmod(n, grid), grid)] + word
        out[image_id] = " ".join(items)
    return out


def balanced_images(cases: dict[str, Case], finding: str, rng: random.Random) -> list[str]:
    """Every image with `finding` and as many without (drawn by `rng`; all of the smaller group), sorted."""
    with_it = sorted(i for i, c in cases.items() if finding in c.findings)
    without = sorted(i for i, c in cases.items() if finding not in c.findings)
    k = min(len(with_it), len(without))
    return sorted(rng.sample(with_it, k) + rng.sample(without, k))


def split_questions(cases: dict[str, Case], seed: int) -> list[Question]:
    """The questions of one split's cases in both languages (see module docstring), in image order."""
    questions: list[Question] = []
    for finding in FINDINGS:
        chosen = balanced_images(cases, finding, random.Random(f"vqa:{seed}:{finding}"))
        for image_id in chosen:
            present = finding in cases[image_id].findings
            for language in LANGUAGES:
                phrasing = random.Random(f"vqa:{seed}:{image_id}:{finding}:{language}").choice(PRESENCE[finding][language])
                questions.append(Question(image_id, "presence", finding, language, phrasing,
                                          YES_NO[language][0 if present else 1], "closed"))
                if finding == "cardiomegaly":
                    text, (enlarged, normal) = HEART_SIZE[language]
                    questions.append(Question(image_id, "size", finding, language, text,
                                              enlarged if present else normal, "closed"))
    for image_id, case in sorted(cases.items()):
        for language in LANGUAGES:
            questions.append(Question(image_id, "abnormality", ALL_FINDINGS, language, ABNORMALITIES[language],
                                      abnormality_answer(case, language), "open"))
        for finding, question in SIDE_QUESTIONS.items():
            if finding not in case.findings:
                continue
            for language in LANGUAGES:
                if finding == "nodule":
                    answer = LUNG_WORDS[language][nodule_lung(case)]
                else:
                    side = case.effusion_side if finding == "pleural_effusion" else case.ptx_side
                    answer = SIDE_WORDS[language][side]
                questions.append(Question(image_id, "side", finding, language, question[language], answer, "closed"))
        if "nodule" in case.findings:
            for language in LANGUAGES:
                questions.append(Question(image_id, "where", "nodule", language, WHERE[language],
                                          where_answer(nodule_sites(case), language), "open"))
    return sorted(questions, key=lambda q: q.image_id)  # stable: each image's questions together, in the order made


def slake_entries(questions: list[Question], split: str) -> list[dict]:
    """`questions` as SLAKE release entries (its fields; `qid` their position, `finding` an extra field)."""
    return [{"img_id": int(q.image_id.rsplit("_", 1)[1]), "img_name": f"{split}/image/{q.image_id}.png",
             "question": q.question, "answer": q.answer, "q_lang": q.language, "location": "Chest",
             "modality": "X-Ray", "answer_type": q.answer_type.upper(), "base_type": "vqa",
             "content_type": CONTENT_TYPES[q.kind], "qid": n, "kind": q.kind, "finding": q.finding}
            for n, q in enumerate(questions)]


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


def write_release(release: Path, source: Path, generator_seed: int, seed: int,
                  splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, list[Question]]:
    """Write a synthetic source's questions as a SLAKE release in `release` (see module docstring).

    Args:
        release: the release folder (created; `imgs` is made a relative link to `source`).
        source: a folder written by `generate_dataset` (its `<split>/` folders); when they hold
            `slots.json`, `SIDED_SLOTS_FILE` gets every split's `sided_slots`.
        generator_seed: the `seed` that `generate_dataset` was given for `source`.
        seed: seeds the balanced sets and the phrasings.
    Returns {split: its questions}.
    """
    release.mkdir(parents=True, exist_ok=True)
    link = release / "imgs"
    target = os.path.relpath(source.resolve(), release.resolve())
    if link.is_symlink() and os.readlink(link) != target:
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(target, target_is_directory=True)
    out, sided = {}, {}
    for split in splits:
        cases = image_cases(source / split, generator_seed, split)
        questions = split_questions(cases, seed=split_seed(seed, split))
        write_json(release / RELEASE_FILES[split], slake_entries(questions, split))
        out[split] = questions
        if (source / split / "slots.json").is_file():
            sided.update(sided_slots(cases, json.loads((source / split / "slots.json").read_text())))
    if sided:
        write_json(release / SIDED_SLOTS_FILE, sided)
    return out


def split_seed(seed: int, split: str) -> int:
    """A per-split seed (the balanced sets of two splits are drawn independently)."""
    return seed * 10 + SPLITS.index(split)


def stage0_conversations(questions: list[Question], slots: dict[str, str], seed: int = 0) -> list[dict]:
    """Stage 0's conversations (`conversations` dataset format), one per image and language: the
    first turn is the image slot (its slot words, e.g. `sided_slots`) and a question, every
    following turn another question about that image, in a seeded order; the answers are the
    assistant's turns."""
    grouped: dict[tuple[str, str], list[Question]] = {}
    for q in questions:
        grouped.setdefault((q.image_id, q.language), []).append(q)
    conversations = []
    for (image_id, language), group in grouped.items():
        group = list(group)
        random.Random(f"stage0:{seed}:{image_id}:{language}").shuffle(group)
        turns = []
        for n, q in enumerate(group):
            user = with_image(q.question).replace(IMAGE_PLACEHOLDER, slots[image_id]) if n == 0 else q.question
            turns += [{"role": "user", "content": user}, {"role": "assistant", "content": q.answer}]
        conversations.append({"id": f"{image_id}:{language}", "turns": turns})
    return conversations


def conversation_texts(conversations: list[dict]) -> list[str]:
    """Each conversation as the training template writes it (`###Doctor: ... ###Assistant: ...###`)."""
    return ["".join(DEFAULT_PROMPT_TEMPLATE.format(c["turns"][i]["content"]) + c["turns"][i + 1]["content"]
                    + DEFAULT_END_SYM for i in range(0, len(c["turns"]), 2)) for c in conversations]


def template_texts(questions: list[Question]) -> list[str]:
    """Each question as the training template writes it (image placeholder removed): tokenizer texts."""
    return [DEFAULT_PROMPT_TEMPLATE.format(with_image(q.question).replace(IMAGE_PLACEHOLDER, "")) + q.answer
            + DEFAULT_END_SYM for q in questions]
