"""Visual question answering sources, VQA-RAD and SLAKE: readers of the released files and their dataset.

VQA-RAD (`format: vqa_rad`; Lau et al. 2018, the OSF release), one file for every question:

    <root>/VQA_RAD Dataset Public.json   [{"qid": 0, "phrase_type": "freeform", "image_name": "synpic54610.jpg",
                                           "question": "Are regions of the brain infarcted?", "answer": "Yes",
                                           "answer_type": "CLOSED", "question_type": "PRES", "image_organ": "HEAD",
                                           "qid_linked_id": ..., "image_case_url": ..., "evaluation": ...,
                                           "question_rephrase": ..., "question_relation": ..., "question_frame": ...},
                                          ...]
    <root>/VQA_RAD Image Folder/<image_name>

  The test set is the questions whose `phrase_type` starts with `test` (`test_freeform`,
  `test_para`): `split: train` reads the others, `test` those, `all` every question.  Every
  question is English.

SLAKE (`format: slake`; Liu et al. 2021, Slake1.0), one file per split:

    <root>/train.json | validate.json | test.json
                       [{"img_id": 102, "img_name": "xmlab102/source.jpg", "question": "...", "answer": "...",
                         "q_lang": "en" | "zh", "answer_type": "OPEN" | "CLOSED", "content_type": "Organ",
                         "base_type": "vqa", "location": "Lung", "modality": "X-Ray", "triple": [...],
                         "qid": 2725}, ...]
    <root>/imgs/<img_name>

  `split` picks the file (`train`, `validate` or `val`, `test`; `ann_file` names another);
  `q_lang` is each question's language.

Each question is one sample (`VQASample`): id `<dataset name>:<qid>` (the entry's position `#n`
when it has no qid), image file, question, answer, answer type (`closed` / `open`, from
`CLOSED` / `OPEN` in any case and spacing), language (`en` / `zh`) and question type
(VQA-RAD's `question_type`, SLAKE's `content_type`).  An answer that is a JSON number (VQA-RAD
counts) becomes its decimal text; case and spacing of answers are kept for training (the
metrics normalise them, `xraygpt.evaluation.vqa_metrics`).  A sample trains as one turn of the
training template: `<Img><ImageHere></Img> {question}` (`question_template` may wrap the
question) -> the answer, so a VQA source mixes with summary sources in one stage-2 run
(`MixedDataset`: each source drawn in proportion to its size, or to its `sample_ratio` when the
config gives one; `max_samples` caps one).
`languages` keeps the questions of those languages only (all by default).

Entries that cannot be used are counted per reason, logged once with the first ids, and
dropped: malformed entry (not an object, or a question, answer or image name of the wrong
JSON type), empty question, empty answer, unknown answer type, unknown language, mixed
scripts (a question or answer whose script contradicts its language: CJK characters in an
English one, a Chinese question without any; `xraygpt.languages`), duplicate id, unsafe image path (absolute or
`..`: never read), image missing and, with `verify_images`, image unreadable (its header does
not read; each image file is checked once however many questions share it).  A source with no
usable question is refused in one line naming the annotation file.
"""

from __future__ import annotations

import logging
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch

from xraygpt import registry
from xraygpt.data.formats import Capabilities, DatasetError, DatasetFormat, read_json, readable_header
from xraygpt.data.paths import UnsafePath, confined
from xraygpt.data.transforms import DECODE_ERRORS, decode_image
from xraygpt.languages import is_cjk_language, written_in
from xraygpt.prompting import with_image

logger = logging.getLogger(__name__)

# Listed up front and read by index; no length grouping (a draw's prompt is its own question,
# not one of a shared instruction list) and no feature cache (which stores captions, not questions).
VQA_FILES = Capabilities(map_style=True, group_by_length=False, cache_features=False, reads_features=False)

VQA_RAD = registry.register("dataset_format", "vqa_rad")(
    DatasetFormat("vqa_rad", "VQA_RAD Dataset Public.json", "VQA_RAD Image Folder", VQA_FILES))
SLAKE = registry.register("dataset_format", "slake")(DatasetFormat("slake", "{split}.json", "imgs", VQA_FILES))
VQA_FORMATS = (VQA_RAD.name, SLAKE.name)

ANSWER_TYPES = ("closed", "open")
LANGUAGES = ("en", "zh")
VQA_RAD_SPLITS = ("train", "test", "all")
SLAKE_SPLIT_FILES = {"train": "train", "validate": "validate", "val": "validate", "test": "test"}
DROP_REASONS = ("malformed entry", "empty question", "empty answer", "unknown answer type", "unknown language",
                "mixed scripts", "duplicate id", "unsafe image path", "image missing", "image unreadable")



def script_matches(text: str, language: str, required: bool) -> bool:
    """Whether `text`'s script agrees with `language` (`xraygpt.languages.written_in`): English text
    holds no CJK character; Chinese text holds one when `required` (a question; an answer may be
    "CT" or "2")."""
    return written_in(text, language) or (is_cjk_language(language) and not required)


class VQASample(NamedTuple):
    """One question.  The first three fields are (id, image file, reference) as for every
    file-based dataset (`MixedDataset.samples`, the evaluator's ids and references)."""

    sample_id: str
    image: Path
    answer: str
    question: str
    answer_type: str  # "closed" | "open"
    language: str  # "en" | "zh"
    question_type: str


def answer_text(value: object) -> str | None:
    """An answer as text: a string as it is, a JSON number as its decimal text (2.0 -> "2"), None
    as ""; None for any other JSON type (malformed)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value if isinstance(value, str) else None


def _dropped() -> dict[str, list[str]]:
    return {reason: [] for reason in DROP_REASONS}


class _Reader:
    """The checks shared by both formats, accumulating samples and drop reasons."""

    def __init__(self, name: str, image_root: Path):
        self.name = name
        self.image_root = image_root
        self.samples: list[VQASample] = []
        self.dropped = _dropped()
        self.seen: set[str] = set()
        self.exists: dict[Path, bool] = {}

    def add(self, n: int, entry: object, image_key: str, language: object, question_type_key: str) -> None:
        """Check one entry; keep it as a sample or count it under its drop reason."""
        if not isinstance(entry, dict):
            self.dropped["malformed entry"].append(f"#{n}")
            return
        qid = entry.get("qid")
        sample_id = f"{self.name}:{qid}" if isinstance(qid, (str, int)) and not isinstance(qid, bool) else f"{self.name}:#{n}"
        question, answer, image = entry.get("question"), answer_text(entry.get("answer")), entry.get(image_key)
        if not isinstance(question, str) or answer is None or not isinstance(image, str):
            self.dropped["malformed entry"].append(sample_id)
            return
        question, answer = " ".join(question.split()), " ".join(answer.split())
        answer_type = entry.get("answer_type")
        answer_type = answer_type.strip().lower() if isinstance(answer_type, str) else ""
        language = language.strip().lower() if isinstance(language, str) else ""
        reason = None
        if not question:
            reason = "empty question"
        elif not answer:
            reason = "empty answer"
        elif answer_type not in ANSWER_TYPES:
            reason = "unknown answer type"
        elif language not in LANGUAGES:
            reason = "unknown language"
        elif not (script_matches(question, language, True) and script_matches(answer, language, False)):
            reason = "mixed scripts"
        elif sample_id in self.seen:
            reason = "duplicate id"
        if reason:
            self.dropped[reason].append(sample_id)
            return
        try:
            file = confined(self.image_root, image)
        except UnsafePath:
            self.dropped["unsafe image path"].append(sample_id)
            return
        if file not in self.exists:
            self.exists[file] = file.is_file()
        if not self.exists[file]:
            self.dropped["image missing"].append(sample_id)
            return
        self.seen.add(sample_id)
        question_type = entry.get(question_type_key)
        self.samples.append(VQASample(sample_id, file, answer, question, answer_type, language,
                                      question_type.strip() if isinstance(question_type, str) else ""))


def _entries(path: Path) -> list:
    data = read_json(path, "annotation file")
    if not isinstance(data, list):
        raise DatasetError(f"annotation file {path} is not a JSON list of questions")
    return data


def read_vqa_rad(name: str, root: Path, ann_file: str, image_dir: str,
                 split: str) -> tuple[list[VQASample], dict[str, list[str]], int]:
    """(samples, dropped, entries of the split) of VQA-RAD's released JSON (see module docstring)."""
    if split not in VQA_RAD_SPLITS:
        raise DatasetError(f"{name}: VQA-RAD split {split!r} is not one of {', '.join(VQA_RAD_SPLITS)} (its test "
                           "set is the questions whose phrase_type starts with 'test')")
    reader = _Reader(name, root / image_dir)
    total = 0
    for n, entry in enumerate(_entries(root / ann_file)):
        phrase = entry.get("phrase_type") if isinstance(entry, dict) else None
        in_test = isinstance(phrase, str) and phrase.strip().lower().startswith("test")
        if split != "all" and in_test != (split == "test"):
            continue
        total += 1
        reader.add(n, entry, "image_name", "en", "question_type")
    return reader.samples, reader.dropped, total


def slake_file(split: str) -> str:
    """The SLAKE annotation file of `split` (`train`, `validate` / `val`, `test`)."""
    if split not in SLAKE_SPLIT_FILES:
        raise DatasetError(f"SLAKE split {split!r} is not one of {', '.join(SLAKE_SPLIT_FILES)} (or set ann_file)")
    return SLAKE.ann_file.format(split=SLAKE_SPLIT_FILES[split])


def read_slake(name: str, root: Path, ann_file: str, image_dir: str) -> tuple[list[VQASample], dict[str, list[str]], int]:
    """(samples, dropped, entries) of one SLAKE split file (see module docstring)."""
    reader = _Reader(name, root / image_dir)
    entries = _entries(root / ann_file)
    for n, entry in enumerate(entries):
        reader.add(n, entry, "img_name", entry.get("q_lang") if isinstance(entry, dict) else None, "content_type")
    return reader.samples, reader.dropped, len(entries)


def drop_unreadable_images(samples: list[VQASample], dropped: dict[str, list[str]]) -> list[VQASample]:
    """`samples` whose image header reads, each file read once; the others go to dropped["image unreadable"]."""
    files = sorted({s.image for s in samples})
    with ThreadPoolExecutor(max_workers=8) as pool:  # header reads are I/O-bound
        readable = dict(zip(files, pool.map(readable_header, files)))
    dropped["image unreadable"] += [s.sample_id for s in samples if not readable[s.image]]
    return [s for s in samples if readable[s.image]]


def read_vqa(name: str, format: str, root: Path, ann_file: Optional[str], image_dir: Optional[str], split: str,
             languages: Optional[list[str]], verify_images: bool) -> tuple[list[VQASample], dict[str, list[str]], int, Path]:
    """(samples, dropped, entries read, annotation file) of a VQA source in `format` (see module docstring)."""
    if format not in VQA_FORMATS:
        raise DatasetError(f"{name}: format {format!r} is not a VQA format ({', '.join(VQA_FORMATS)})")
    unknown = [lang for lang in languages or () if lang not in LANGUAGES]
    if unknown:
        raise DatasetError(f"{name}: languages {unknown[0]!r} is not one of {', '.join(LANGUAGES)}")
    if not root.is_dir():
        raise DatasetError(f"{name}: dataset root {root} does not exist")
    if format == VQA_RAD.name:
        ann_file = ann_file or VQA_RAD.ann_file
        samples, dropped, total = read_vqa_rad(name, root, ann_file, image_dir or VQA_RAD.image_dir, split)
    else:
        ann_file = ann_file or slake_file(split)
        samples, dropped, total = read_slake(name, root, ann_file, image_dir or SLAKE.image_dir)
    if languages:
        kept = [s for s in samples if s.language in languages]
        if len(kept) < len(samples):
            logger.info("%s: %d of %d questions kept (languages %s)", name, len(kept), len(samples), ", ".join(languages))
        samples = kept
    if verify_images and samples:
        samples = drop_unreadable_images(samples, dropped)
    return samples, dropped, total, root / ann_file


class VQADataset(torch.utils.data.Dataset):
    """Image + question -> answer samples of one VQA source.

    Args:
        name: source name, for messages and as the `source` of each draw.
        samples: the questions (`read_vqa`).
        vis_processor: PIL image, rng -> (3, H, W) tensor.
        text_processor: answer -> cleaned answer.
        question_template: the instruction's text; `{question}` receives the question.
        max_pixels: images with more pixels do not decode (checked from the header).
    """

    capabilities = VQA_FILES

    def __init__(self, name: str, samples: list[VQASample], vis_processor: Callable, text_processor: Callable[[str], str],
                 question_template: str = "{question}", max_pixels: int = 50_000_000):
        if question_template.count("{question}") != 1:
            raise DatasetError(f"{name}: question_template must contain {{question}} exactly once, got {question_template!r}")
        self.name = name
        self.samples = samples
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.question_template = question_template
        self.max_pixels = max_pixels
        self.decode_failures = 0

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def instructions(self) -> list[str]:
        """The instruction shape (a draw's instruction is its own question)."""
        return [with_image(self.question_template)]

    def instruction(self, sample: VQASample) -> str:
        """`<Img><ImageHere></Img> ` + the question in `question_template`."""
        return with_image(self.question_template.replace("{question}", sample.question))

    def get(self, index: int, rng: random.Random, instruction: str | None = None) -> dict:
        """Sample `index` as {image_id (the question's id), pixel_values (3, H, W), instruction (the
        question), caption (the answer), source, vqa: {answer_type, language, question_type, source}}.

        `instruction` is accepted for the datasets' common signature and not used: a question is
        its own instruction.  An undecodable image is logged and replaced by the next sample's.
        """
        del instruction
        for attempt in range(len(self.samples)):
            sample = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = decode_image(sample.image, self.max_pixels)
            except DECODE_ERRORS as exc:
                self.decode_failures += 1
                logger.warning("%s: image %s does not decode (%s); using the next sample", self.name, sample.image, exc)
                continue
            return {
                "image_id": sample.sample_id,
                "pixel_values": self.vis_processor(image, rng),
                "instruction": self.instruction(sample),
                "caption": self.text_processor(sample.answer),
                "source": self.name,
                "vqa": {"answer_type": sample.answer_type, "language": sample.language,
                        "question_type": sample.question_type, "source": self.name},
            }
        raise DatasetError(f"{self.name}: no image in the dataset decodes")

    def __getitem__(self, index: int) -> dict:
        return self.get(index, random.Random(index))


def log_dropped(name: str, dropped: dict[str, list[str]], total: int) -> None:
    """One warning per reason with the count and the first ids."""
    for reason, ids in dropped.items():
        if ids:
            logger.warning("%s: skipped %d of %d questions (%s), first: %s", name, len(ids), total, reason,
                           ", ".join(ids[:5]))


def build_vqa_dataset(name: str, root: str, format: str, split: str, ann_file: Optional[str], image_dir: Optional[str],
                      languages: Optional[list[str]], question_template: str, max_samples: int, verify_images: bool,
                      max_image_pixels: int, vis_processor: Callable, text_processor: Callable[[str], str]) -> VQADataset:
    """Read a VQA source and build its dataset; no usable question raises DatasetError naming the file."""
    samples, dropped, total, path = read_vqa(name, format, Path(root), ann_file, image_dir, split, languages,
                                             verify_images)
    log_dropped(name, dropped, total)
    if not samples:
        counts = ", ".join(f"{len(ids)} {reason}" for reason, ids in dropped.items() if ids)
        raise DatasetError(f"{name}: no usable question in {path} (format {format}, split {split}"
                           + (f", languages {', '.join(languages)}" if languages else "")
                           + f"; {total} entries" + (f": {counts}" if counts else "") + ")")
    if max_samples > 0:
        samples = samples[:max_samples]
    counts = {lang: sum(s.language == lang for s in samples) for lang in LANGUAGES}
    logger.info("%s: %d questions from %s (%s)", name, len(samples), path,
                ", ".join(f"{n} {lang}" for lang, n in counts.items() if n))
    return VQADataset(name, samples, vis_processor, text_processor, question_template, max_image_pixels)


def _vqa_source(name: str, default_format: str, default_eval_split: str, description: str) -> Callable[..., VQADataset]:
    """Register the dataset builder of one VQA source under `name` (arguments: README "Visual question answering")."""

    def builder(
        root: str,
        vis_processor: Callable,
        text_processor: Callable[[str], str],
        format: str = default_format,
        split: str = "train",
        eval_split: str = default_eval_split,
        ann_file: Optional[str] = None,
        image_dir: Optional[str] = None,
        languages: Optional[list[str]] = None,
        question_template: str = "{question}",
        max_samples: int = 0,
        verify_images: bool = True,
        max_image_pixels: int = 50_000_000,
    ) -> VQADataset:
        # eval_split is read by xraygpt.builders.build_datasets, which passes it as `split` for the held-out set.
        del eval_split
        return build_vqa_dataset(name, root, format, split, ann_file, image_dir, languages, question_template,
                                 max_samples, verify_images, max_image_pixels, vis_processor, text_processor)

    builder.__name__ = builder.__qualname__ = f"build_{name}"
    builder.__doc__ = description
    return registry.register("dataset", name)(builder)


build_vqa_rad = _vqa_source("vqa_rad", VQA_RAD.name, "test", "VQA-RAD questions (a stage-2 source; test set: phrase_type test_*).")
build_slake = _vqa_source("slake", SLAKE.name, "validate", "SLAKE questions, English and Chinese (a stage-2 source).")
