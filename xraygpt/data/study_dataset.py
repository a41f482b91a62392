"""Study datasets: one sample per study (several views, the indication, optionally the prior study).

Registered dataset builders (same arguments; README "Configuration", `datasets.<name>` for studies):
`mimic_studies` and `openi_studies` read a study file written by `prepare mimic|openi`
(`<split>/studies.jsonl`, `format: studies`; `xraygpt.data.studies`), `rexrank` reads ReXrank's
test files as released (`format: rexrank`, `xraygpt.data.rexrank.read_rexrank`; image paths
relative to `image_root`); either builder reads either format.

A sample (`StudyDataset.get`) is {image_id: the study id, pixel_values (k, 3, H, W): the first
`max_images` images in reading order (`studies.limit_images`: frontal first), then, with
`use_prior` and a prior study, the prior's first image; instruction (`study_prompts.
study_instruction`: one tagged `<ImageHere>` per image, the indication, with `prior_report` the
prior's findings and impression, a question drawn from the target's file); caption: the target;
source; views; image ids; target}.  The collator stacks studies into (T, 3, H, W) + image counts
(`xraygpt.data.collate`).

Targets (`target`): `summary` (the record's comparison-free summary, as filter_cap.json's caption),
`findings`, `impression` or `sections` (`Findings: ... Impression: ...`).  Comparisons: a
sample that shows no prior study never has comparison wording in its target: `findings`,
`impression` and `sections` of an English source go through the preparation's rule summariser and
labeler guard section by section (`xraygpt.data.rexrank.rule_summary`, the code of `prepare`), those
of a Chinese source (`language` zh, zh-hans, ...) through the Chinese comparison rules
(`xraygpt.data.zh_comparisons.zh_sections_without_comparisons`: comparisons out, findings kept, a
finding reported gone dropped); a sample that shows its prior keeps the sections as written
(comparisons, and de-identification blanks, included) when `keep_comparisons` is on.  `summary` is
always the comparison-free summary.  A source in a language without comparison rules (neither en nor
zh: `COMPARISON_RULE_LANGUAGES`) has its sections as written in every sample, with comparisons, and
says so in a warning when built (`removes_comparisons`).

Bad input (counted in `StudyDataset.counts`, logged once at start-up; never a crash):
- a study with no readable image: dropped by the reader (`read_studies` / `read_rexrank`, with
  `verify_images` also headers that do not read); an image that fails to decode while training is
  left out of its sample (and the instruction), and a study none of whose images decodes is
  replaced by the next study, as an image dataset does;
- more images than `max_images`: the first `max_images` in reading order are shown, the rest
  counted (`images left out (max_images)`);
- an unknown view: shown with the tag `Unknown view` (counted by the reader, per image);
- a prior from another subject (or not in the file, itself, a loop): the reader sets it to null and
  counts it; the study is shown without prior (`use_prior`: counted `no prior shown`); a prior image
  that does not decode is left out the same way, and the target is then comparison-free;
- a missing indication: the instruction has no `Indication:` (counted `no indication`);
- an empty target (no findings for `findings`, ...): the study is dropped and counted; one that is
  empty only once comparisons are removed ("No change from prior.") is skipped for the next study
  when drawn (counted), and scored as an empty reference (skipped, counted) by evaluation.

Comparison-free targets are made when a study is first drawn (about 1.3 ms a study for the English rules
and the guard, 0.1 ms for the Chinese rules), not at start-up, so a MIMIC-size training set starts at once.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import torch

from xraygpt import registry
from xraygpt.data.formats import Capabilities, DatasetError, DatasetFormat
from xraygpt.data.rexrank import read_rexrank, rule_summary
from xraygpt.data.studies import StudyFile, StudyFileError, StudyRecord, limit_images, order_images, read_studies
from xraygpt.data.study_prompts import (DEFAULT_STUDY_PROMPT_PATH, check_target, load_questions, sections_text,
                                        study_instruction)
from xraygpt.data.transforms import DECODE_ERRORS, decode_image
from xraygpt.data.zh_comparisons import zh_sections_without_comparisons
from xraygpt.languages import DEFAULT_LANGUAGE, base_language

logger = logging.getLogger(__name__)

# Listed up front and read by index; no length grouping or feature cache (a study's images are not
# one cached row each, and its prompt length depends on its views and indication).
STUDY_FILES = Capabilities(map_style=True, group_by_length=False, cache_features=False, reads_features=False)
STUDIES = registry.register("dataset_format", "studies")(DatasetFormat("studies", "studies.jsonl", "", STUDY_FILES))
REXRANK = registry.register("dataset_format", "rexrank")(DatasetFormat("rexrank", "", "", STUDY_FILES))
STUDY_FORMATS = (STUDIES.name, REXRANK.name)


# Base languages whose sections have comparison rules: English (the preparation's) and Chinese (zh_comparisons).
COMPARISON_RULE_LANGUAGES = ("en", "zh")


def removes_comparisons(language: str) -> bool:
    """Whether comparison wording can be removed from `language`'s sections (`COMPARISON_RULE_LANGUAGES`)."""
    return base_language(language) in COMPARISON_RULE_LANGUAGES


def study_target(record: StudyRecord, target: str, comparisons: bool, language: str = DEFAULT_LANGUAGE) -> str:
    """The target text of `record` (module docstring); `comparisons`: the sections as written; `language`:
    of the `sections` labels (`study_prompts.sections_text`) and of the text (English and Chinese rules;
    another language's sections are always as written, `removes_comparisons`)."""
    if target == "summary":
        return record.summary
    if comparisons or not removes_comparisons(language):
        findings, impression = record.findings, record.impression
    elif base_language(language) == "zh":
        findings, impression = zh_sections_without_comparisons(record.findings, record.impression)
    else:
        findings = rule_summary(record.findings, "") if record.findings else ""
        impression = rule_summary("", record.impression) if record.impression else ""
    return {"findings": findings, "impression": impression}.get(target) or (
        sections_text(findings, impression, language) if target == "sections" else "")


class StudyDataset(torch.utils.data.Dataset):
    """One sample per study of a study file (see module docstring).

    Args:
        name: source name for messages.
        studies: the records read (`read_studies` / `read_rexrank`); priors are looked up in it.
        vis_processor: PIL image, rng -> (3, H, W) tensor.
        text_processor: target -> cleaned target.
        questions: the target's questions (`study_prompts.load_questions`).
        max_pixels: images with more pixels do not decode (checked from the header).
        target: `summary`, `findings`, `impression` or `sections`.
        max_images: images of the study shown at most (reading order, frontal first).
        use_prior: also show the prior study's first image (reading order) when there is one.
        prior_report: with a prior shown, put its findings and impression in the instruction.
        keep_comparisons: with a prior shown, the target keeps comparison wording (sections as written).
        max_samples: use only the first N usable studies (0 = all; their priors are still shown).
        language: the language of the targets and questions.
    """

    capabilities = STUDY_FILES

    def __init__(self, name: str, studies: StudyFile, vis_processor: Callable, text_processor: Callable[[str], str],
                 questions: list[str], max_pixels: int, target: str, max_images: int, use_prior: bool,
                 prior_report: bool, keep_comparisons: bool, max_samples: int, language: str = DEFAULT_LANGUAGE):
        # the defaults of these arguments are the builder's (README "Configuration"), defined there once
        if max_images < 1:
            raise DatasetError(f"{name}: max_images must be at least 1, got {max_images}")
        self.name = name
        self.language = language
        self.target = check_target(target)
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.instructions = questions  # what MixedDataset draws by key: the questions
        self.max_pixels = max_pixels
        self.max_images = max_images
        self.use_prior = use_prior
        self.prior_report = prior_report
        self.keep_comparisons = keep_comparisons
        if self.target != "summary" and not removes_comparisons(language):
            logger.warning("%s: no comparison rules for language %s; the %s targets of this source are its "
                           "sections as written, comparisons included, with or without the prior shown",
                           name, language, self.target)
        self.by_id = studies.by_id()
        self.counts: Counter[str] = Counter()
        self.records: list[StudyRecord] = []
        self._targets: dict[tuple[str, bool], str] = {}  # (study id, comparisons kept) -> target, made when first asked
        for record in studies.records:
            if 0 < max_samples <= len(self.records):
                break
            if not study_target(record, self.target, comparisons=True):  # the section is missing: no rules needed
                self.counts[f"no {self.target} (study dropped)"] += 1
                continue
            self.records.append(record)
            self._count(record)
        if not self.records:
            raise DatasetError(f"{name}: no study of {studies.path} has a {self.target} target")
        self.decode_failures = 0
        logger.info("%s: %d studies from %s (target %s, at most %d images%s); %s", name, len(self.records),
                    studies.path, self.target, max_images, ", prior shown" if use_prior else "",
                    dict(sorted(self.counts.items())) or "nothing to count")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def samples(self) -> list[tuple[str, StudyRecord, str]]:
        """(study id, record, reference target as shown with its prior, when one is) of every study, in
        order: what evaluation scores against.  Targets are made (and kept) when first asked, so a
        training set never pays for the rules on studies it does not draw."""
        return [(r.study_id, r, self._target(r, self._prior(r) is not None)) for r in self.records]

    def _prior(self, record: StudyRecord) -> StudyRecord | None:
        if not self.use_prior or record.prior_study_id is None:
            return None
        return self.by_id.get(record.prior_study_id)

    def _target(self, record: StudyRecord, prior_shown: bool) -> str:
        key = (record.study_id, prior_shown and self.keep_comparisons)
        if key not in self._targets:
            self._targets[key] = study_target(record, self.target, key[1], self.language)
        return self._targets[key]

    def _count(self, record: StudyRecord) -> None:
        left_out = len(record.images) - self.max_images
        if left_out > 0:
            self.counts["studies with more images than max_images"] += 1
            self.counts["images left out (max_images)"] += left_out
        if not record.indication:
            self.counts["no indication"] += 1
        if self.use_prior:
            self.counts["prior shown" if self._prior(record) is not None else "no prior shown"] += 1

    def _decoded(self, images, rng: random.Random) -> tuple[list, list[torch.Tensor]]:
        """(the images that decode, their processed tensors); failures logged and counted."""
        kept, tensors = [], []
        for image in images:
            try:
                picture = decode_image(image.path, self.max_pixels)
            except DECODE_ERRORS as exc:
                self.decode_failures += 1
                logger.warning("%s: image %s does not decode (%s); left out of its study", self.name, image.path, exc)
                continue
            kept.append(image)
            tensors.append(self.vis_processor(picture, rng))
        return kept, tensors

    def get(self, index: int, rng: random.Random, instruction: str | None = None) -> dict:
        """Sample `index` (module docstring); `instruction` fixes the question (default: drawn from
        `rng` after the images' draws).  A study none of whose images decodes is replaced by the next."""
        for attempt in range(len(self.records)):
            record = self.records[(index + attempt) % len(self.records)]
            study_id = record.study_id
            shown, tensors = self._decoded(limit_images(record.images, self.max_images), rng)
            if not shown:
                logger.warning("%s: no image of study %s decodes; using the next study", self.name, study_id)
                continue
            prior = self._prior(record)
            prior_shown: list = []
            if prior is not None:
                prior_shown, prior_tensors = self._decoded(order_images(prior.images)[:1], rng)
                tensors += prior_tensors
            target = self._target(record, bool(prior_shown))
            if not target:  # nothing left once comparisons are removed ("No change from prior.")
                self.counts["empty target without comparisons (study skipped)"] += 1
                logger.warning("%s: study %s has no %s once comparisons are removed; using the next study",
                               self.name, study_id, self.target)
                continue
            question = instruction if instruction is not None else rng.choice(self.instructions)
            prior_text = (sections_text(prior.findings, prior.impression, self.language)
                          if prior is not None and self.prior_report else "")
            return {
                "image_id": study_id,
                "pixel_values": torch.stack(tensors),
                "instruction": study_instruction([i.view for i in shown], question, record.indication,
                                                 [i.view for i in prior_shown], prior_text, self.language),
                "caption": self.text_processor(target),
                "source": self.name,
                "views": [i.view for i in shown] + [f"prior {i.view}" for i in prior_shown],
                "image_ids": [i.image_id for i in shown + prior_shown],
                "target": self.target,
            }
        raise DatasetError(f"{self.name}: no image of any study decodes")

    def __getitem__(self, index: int) -> dict:
        return self.get(index, random.Random(index))


def read_study_source(name: str, root: str, format: str, ann_file: Optional[str], image_root: Optional[str],
                      verify_images: bool) -> StudyFile:
    """The records of `root`/`ann_file` in `format` (`studies` or `rexrank`); StudyFileError becomes
    DatasetError naming the dataset."""
    if format not in STUDY_FORMATS:
        raise DatasetError(f"{name}: unknown study format {format!r}; known: {', '.join(STUDY_FORMATS)}")
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetError(f"{name}: dataset root {folder} does not exist")
    ann = ann_file or (STUDIES.ann_file if format == STUDIES.name else None)
    if not ann:
        raise DatasetError(f"{name}: format rexrank needs ann_file (the name of the ReXrank test file in root)")
    try:
        if format == STUDIES.name:
            if image_root:
                raise DatasetError(f"{name}: image_root is for format rexrank; a study file's image paths are "
                                   "relative to its folder")
            return read_studies(folder / ann, verify_images=verify_images)
        return read_rexrank(folder / ann, Path(image_root) if image_root else None, verify_images=verify_images)
    except StudyFileError as exc:
        raise DatasetError(f"{name}: {exc}") from None


def build_study_dataset(name: str, root: str, vis_processor: Callable, text_processor: Callable[[str], str],
                        format: str, ann_file: Optional[str], image_root: Optional[str], prompt_path: str, target: str,
                        max_images: int, use_prior: bool, prior_report: bool, keep_comparisons: bool,
                        max_samples: int, verify_images: bool, max_image_pixels: int, language: str) -> StudyDataset:
    """Read a study source and build its dataset (module docstring)."""
    try:
        questions = load_questions(prompt_path, target, language)
    except ValueError as exc:  # StudyPromptError, PromptFileError, LanguageError
        raise type(exc)(f"datasets.{name}: {exc}") from None
    studies = read_study_source(name, root, format, ann_file, image_root, verify_images)
    return StudyDataset(name, studies, vis_processor, text_processor, questions, max_image_pixels, target, max_images,
                        use_prior, prior_report, keep_comparisons, max_samples, language)


def _study_source(name: str, default_format: str, description: str) -> Callable[..., StudyDataset]:
    """Register the study dataset builder `name` (arguments: README "Configuration")."""

    def builder(
        root: str,
        vis_processor: Callable,
        text_processor: Callable[[str], str],
        format: str = default_format,
        ann_file: Optional[str] = None,
        image_root: Optional[str] = None,
        prompt_path: str = DEFAULT_STUDY_PROMPT_PATH,
        target: str = "summary",
        max_images: int = 2,
        use_prior: bool = False,
        prior_report: bool = False,
        keep_comparisons: bool = False,
        max_samples: int = 0,
        verify_images: bool = True,
        max_image_pixels: int = 50_000_000,
        language: str = DEFAULT_LANGUAGE,
    ) -> StudyDataset:
        return build_study_dataset(name, root, vis_processor, text_processor, format, ann_file, image_root,
                                   prompt_path, target, max_images, use_prior, prior_report, keep_comparisons,
                                   max_samples, verify_images, max_image_pixels, language)

    builder.__name__ = builder.__qualname__ = f"build_{name}"
    builder.__doc__ = description
    return registry.register("dataset", name)(builder)


build_mimic_studies = _study_source("mimic_studies", "studies", "MIMIC-CXR studies (prepare mimic's studies.jsonl).")
build_openi_studies = _study_source("openi_studies", "studies", "OpenI studies (prepare openi's studies.jsonl).")
build_rexrank = _study_source("rexrank", "rexrank", "A ReXrank-style test file (records keyed by study id).")
