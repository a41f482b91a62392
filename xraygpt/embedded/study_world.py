"""The synthetic world of studies: a frontal and a lateral view, and a prior study with known changes.

`generate_studies(root, ...)` writes, per split, ``<root>/<split>/studies.jsonl`` in the layout of
`xraygpt.data.studies` (the file `prepare mimic|openi` writes, read by `mimic_studies` /
`openi_studies`), ``<root>/<split>/image/*.png`` and two side files:

    study_labels.json  study id -> {"changes": {finding: absent|new|resolved|unchanged} (the four
                       frontal findings, current against prior), "lateral": [lateral-only findings]}
    study_slots.json   study id -> {"frontal", "lateral", "prior"}: each image's slot words on the
                       encoder's 7 x 7 grid (`slots.finding_slot`, `lateral.lateral_slot`), stage 0's context

A subject has two studies: the current one (a frontal PA image drawn by `render.render` and a lateral
image drawn by `lateral.render_lateral`) and its prior (the same, earlier).  Both frontals come from
`anatomy.sample_case` with the same anatomy draws (the same patient; the prior's pose, exposure and
noise drawn anew), and the nodules drawn at the same places, so a finding present in both is drawn
the same.  Per frontal finding the change is one of `CHANGES` (absent in both, new, resolved,
unchanged), each on a quarter of a split's subjects (chosen independently per finding; exactly a quarter
of each group below, with and without the prior, when its size is a multiple of 4): a
reader who knows the current study exactly but not the prior can only tell new from unchanged, or
resolved from absent, by a coin, so the change accuracy without the prior is 0.5 (`CHANCE`).
A declared fraction of the training subjects (`NO_PRIOR_FRACTION` of the `train` and `val` splits,
exactly round(fraction * n), drawn by their own seeded stream; the `test` split has none) is recorded
without its prior: the current record's `prior_study_id` is null (so a study dataset shows its frontal
and lateral views only, no `Prior frontal` tag) and its text is comparison-free (`finding_text`: "There
is a pleural effusion.", never new / resolved / unchanged), as the issue asks of a study shown without
a prior.  The changes are drawn balanced within each group separately (with and without the prior), so
each group is balanced on its own; with no subject left without a prior (the `test` split) the draws
are those of a world without the fraction.  The
lateral-only findings (`lateral.LATERAL_FINDINGS`: a retrocardiac nodule, a small effusion in the
posterior costophrenic recess) are drawn only on the lateral image, each on round(`LATERAL_PREVALENCE`
* n) subjects; the frontal images do not depend on them (their bytes are the same with or without).

The current study's target (its `summary`, and `findings`) is, with its prior, `study_text(changes,
lateral)`, a deterministic function of what is drawn: one sentence per frontal finding present in either
study ("The pleural effusion is new.", "... has resolved.", "... is unchanged."), in `FINDINGS` order,
then the lateral view's sentence ("Lateral view: retrocardiac nodule and small effusion in the posterior
costophrenic recess.", or "Lateral view: no additional finding."); without its prior it is
`finding_text(current findings, lateral)`, one comparison-free sentence per finding present now ("There
is cardiomegaly.", "There is a pleural effusion.") and the same lateral sentence.  `read_study_text`
reads a generated text back (a finding stated without a change word is `PRESENT`).  Current studies
come first in the file (`max_samples: n` shows only them; their priors stay in the file to be shown, and
are written for the subjects recorded without one too, unreferenced, so every subject is drawn alike),
and the prior records have a comparison-free text of their own (`finding_text`).  Output bytes depend
only on the arguments.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np

from xraygpt.atomic import atomic_write_text
from xraygpt.embedded.anatomy import FINDINGS, Case, sample_case
from xraygpt.embedded.lateral import LATERAL_FINDINGS, lateral_slot, render_lateral, sample_lateral
from xraygpt.embedded.labeler import _MENTION_PATTERNS, findings_in_text
from xraygpt.embedded.render import render
from xraygpt.embedded.slots import finding_slot

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
CHANGES: tuple[str, ...] = ("absent", "new", "resolved", "unchanged")
COMPARISONS: tuple[str, ...] = ("new", "resolved", "unchanged")  # the changes a text states by a change word
PRESENT = "present"  # `read_study_text`'s state of a finding stated now without a comparison ("There is cardiomegaly.")
CHANCE = 0.5  # change accuracy of a reader who knows the current study but not the prior (module docstring)
NO_PRIOR_FRACTION = 0.25  # training subjects recorded without their prior, comparison-free text (module docstring)
NO_PRIOR_SPLITS: tuple[str, ...] = ("train", "val")  # the splits that have them (the held-out test split: none)
LATERAL_PREVALENCE = 0.3
STUDIES_FILE, LABELS_FILE, SLOTS_FILE = "studies.jsonl", "study_labels.json", "study_slots.json"
# the drawing of the pose and exposure (not the anatomy) of a prior frontal, taken from another draw
_POSE_FIELDS = ("scale", "shift_x", "shift_y", "rotation", "contrast", "brightness", "gamma", "noise_sigma",
                "noise_seed")
_NAMES = {"cardiomegaly": "Cardiomegaly", "pleural_effusion": "The pleural effusion",
          "pneumothorax": "The pneumothorax", "nodule": "The pulmonary nodule"}
_VERBS = {"new": "is new", "resolved": "has resolved", "unchanged": "is unchanged"}
_THERE_IS = {"cardiomegaly": "There is cardiomegaly.", "pleural_effusion": "There is a pleural effusion.",
             "pneumothorax": "There is a pneumothorax.", "nodule": "There is a pulmonary nodule."}
_LATERAL_PHRASES = {"retrocardiac_nodule": "retrocardiac nodule",
                    "posterior_effusion": "small effusion in the posterior costophrenic recess"}
_LATERAL_NONE = "Lateral view: no additional finding."
_NO_FINDING = "No acute cardiopulmonary abnormality."


# ---------------------------------------------------------------------------------------------- texts
def study_text(changes: dict[str, str], lateral: frozenset[str] | set[str]) -> str:
    """The current study's text: a sentence per frontal finding present in either study, then the lateral view."""
    bad = {f: c for f, c in changes.items() if f not in FINDINGS or c not in CHANGES}
    if bad or set(lateral) - set(LATERAL_FINDINGS):
        raise ValueError(f"unknown findings or changes: {bad or sorted(set(lateral) - set(LATERAL_FINDINGS))}")
    parts = [f"{_NAMES[f]} {_VERBS[changes[f]]}." for f in FINDINGS if changes.get(f, "absent") != "absent"]
    if not parts:
        parts.append(_NO_FINDING)
    return " ".join(parts + [_lateral_sentence(lateral)])


def _lateral_sentence(lateral) -> str:
    """The lateral view's one sentence: its findings joined by "and", or that it adds none."""
    said = [_LATERAL_PHRASES[f] for f in LATERAL_FINDINGS if f in lateral]
    return f"Lateral view: {' and '.join(said)}." if said else _LATERAL_NONE


def finding_text(findings: frozenset[str] | set[str], lateral: frozenset[str] | set[str]) -> str:
    """A study's comparison-free text (its own findings, no change word): a prior's, or a current study
    recorded without its prior.  "There is a pleural effusion. ... Lateral view: ..."."""
    if set(findings) - set(FINDINGS) or set(lateral) - set(LATERAL_FINDINGS):
        raise ValueError(f"unknown findings: {sorted((set(findings) - set(FINDINGS)) | (set(lateral) - set(LATERAL_FINDINGS)))}")
    parts = [_THERE_IS[f] for f in FINDINGS if f in findings] or [_NO_FINDING]
    return " ".join(parts + [_lateral_sentence(lateral)])


_LATERAL_PATTERNS = {"retrocardiac_nodule": re.compile(r"retrocardiac"),
                     "posterior_effusion": re.compile(r"posterior (?:costophrenic )?(?:recess|sulcus)")}
_CHANGE_PATTERNS = (("resolved", re.compile(r"\bresolv|\bno longer\b")), ("unchanged", re.compile(r"\bunchanged\b|\bstable\b")),
                    ("new", re.compile(r"\bnew\b")))
_SPLIT = re.compile(r"[.;!?\n]+")


def read_study_text(text: str) -> tuple[dict[str, str], frozenset[str]]:
    """(state per frontal finding, lateral-only findings) that a text states: the inverse of `study_text`
    and of `finding_text`.

    Sentence by sentence (case-insensitive): a sentence naming a lateral-only finding
    (`retrocardiac`, `posterior costophrenic recess`) counts for it, unless negated ("no");
    any other sentence naming a frontal finding (`labeler`'s patterns) with a change word
    (resolved / no longer, unchanged / stable, new) states that change for it; one without a change
    word that asserts a finding (`labeler.findings_in_text`: "There is a pleural effusion.", not "No
    pneumothorax.") states it `PRESENT`, with no comparison.  A frontal finding no sentence speaks of is
    `absent`; a finding named twice keeps its first statement.
    """
    changes: dict[str, str] = {}
    lateral: set[str] = set()
    for sentence in _SPLIT.split(text.lower()):
        sentence = " ".join(sentence.split())
        if not sentence:
            continue
        hits = [f for f, p in _LATERAL_PATTERNS.items() if p.search(sentence)]
        if hits:
            if not re.search(r"\bno\b|\bnot\b|\bwithout\b", sentence):
                lateral.update(hits)
            continue
        change = next((c for c, p in _CHANGE_PATTERNS if p.search(sentence)), None)
        if change is None:
            for finding in findings_in_text(sentence):
                changes.setdefault(finding, PRESENT)
            continue
        for finding, pattern in _MENTION_PATTERNS.items():
            if finding not in changes and pattern.search(sentence):
                changes[finding] = change
    return ({f: changes.get(f, "absent") for f in FINDINGS},
            frozenset(f for f in LATERAL_FINDINGS if f in lateral))


# ---------------------------------------------------------------------------------------------- drawing
@dataclasses.dataclass(frozen=True)
class Subject:
    """One subject's two studies, as drawn."""

    current: Case
    prior: Case
    lateral: frozenset[str]
    prior_lateral: frozenset[str]
    changes: dict[str, str]
    prior_shown: bool


def _balanced(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) ints in range(k), each value on n // k (or one more) random places."""
    values = np.arange(n) % k
    return values[rng.permutation(n)]


def draw_subjects(n: int, seed: int, split_index: int, no_prior: int = 0
                  ) -> list[tuple[dict[str, str], frozenset[str], frozenset[str], bool]]:
    """Per subject: (change per frontal finding, current lateral findings, prior lateral findings, prior
    shown); `no_prior` subjects (drawn by their own stream) are recorded without their prior.  The changes
    are balanced within the subjects with their prior and within those without, separately; with
    `no_prior` 0 every draw is as it would be without that group."""
    if not 0 <= no_prior <= n:
        raise ValueError(f"subjects without a prior must be in [0, {n}], got {no_prior}")
    rng = np.random.default_rng([seed, 15, split_index, 0])
    without = np.zeros(n, dtype=bool)
    without[np.random.default_rng([seed, 15, split_index, 4]).permutation(n)[:no_prior]] = True
    groups = ((np.flatnonzero(~without), rng), (np.flatnonzero(without), np.random.default_rng([seed, 15, split_index, 5])))
    states = {f: np.zeros(n, dtype=int) for f in FINDINGS}
    for members, stream in groups:
        for f in FINDINGS:
            states[f][members] = _balanced(len(members), len(CHANGES), stream)
    k = int(round(LATERAL_PREVALENCE * n))
    lateral = [set() for _ in range(n)]
    prior_lateral = [set() for _ in range(n)]
    for sets in (lateral, prior_lateral):
        for finding in LATERAL_FINDINGS:
            for i in rng.permutation(n)[:k]:
                sets[int(i)].add(finding)
    return [({f: CHANGES[int(states[f][i])] for f in FINDINGS}, frozenset(lateral[i]), frozenset(prior_lateral[i]),
             not bool(without[i])) for i in range(n)]


def subject_cases(changes: dict[str, str], key: list[int]) -> tuple[Case, Case]:
    """(current, prior) frontal cases of one subject: the same anatomy draws (key), nodules at the same
    places (those valid with the findings of both), the prior's pose and exposure from another draw."""
    current_f = frozenset(f for f, c in changes.items() if c in ("new", "unchanged"))
    prior_f = frozenset(f for f, c in changes.items() if c in ("resolved", "unchanged"))
    nodules = sample_case(current_f | prior_f, np.random.default_rng(key)).nodules
    current = dataclasses.replace(sample_case(current_f, np.random.default_rng(key)), nodules=nodules)
    prior = dataclasses.replace(sample_case(prior_f, np.random.default_rng(key)), nodules=nodules)
    pose = sample_case(prior_f, np.random.default_rng(key + [1]))
    prior = dataclasses.replace(prior, **{name: getattr(pose, name) for name in _POSE_FIELDS})
    return current, prior


def _case_without(case: Case, key: list[int]):
    """finding -> `case` without it: redrawn from the same anatomy draws (`key`; the heart's size follows
    cardiomegaly), with `case`'s pose, exposure, noise and nodule places."""
    def without(finding: str) -> Case:
        other = sample_case(case.findings - {finding}, np.random.default_rng(key))
        return dataclasses.replace(other, nodules=case.nodules, **{name: getattr(case, name) for name in _POSE_FIELDS})
    return without


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=True) + "\n")


def generate_studies(root: str | os.PathLike, num_train: int = 1000, num_val: int = 16, num_test: int = 100,
                     seed: int = 0, image_size: int = 112, slot_grid: int = 7,
                     no_prior_fraction: float = NO_PRIOR_FRACTION) -> dict[str, int]:
    """Write the study world under `root` (module docstring); returns {split: subjects}.
    `no_prior_fraction` of the subjects of each of `NO_PRIOR_SPLITS` are recorded without their prior."""
    counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
    if any(v < 0 for v in counts.values()):
        raise ValueError(f"split sizes must be >= 0, got {counts}")
    if not 0.0 <= no_prior_fraction <= 1.0:
        raise ValueError(f"the fraction of subjects without a prior must be in [0, 1], got {no_prior_fraction}")
    if image_size < 32 or slot_grid < 1 or image_size % slot_grid:
        raise ValueError(f"image size {image_size} px must be >= 32 and a multiple of the slot grid {slot_grid}")
    root = Path(root)
    started = time.perf_counter()
    for split_index, split in enumerate(SPLITS):
        n = counts[split]
        folder = root / split
        (folder / "image").mkdir(parents=True, exist_ok=True)
        current_rows, prior_rows, labels, slots = [], [], {}, {}
        no_prior = int(round(no_prior_fraction * n)) if split in NO_PRIOR_SPLITS else 0
        drawn = draw_subjects(n, seed, split_index, no_prior)
        for i, (changes, lateral, prior_lateral, prior_shown) in enumerate(drawn):
            study, prior_id, subject = f"{split}_{i + 1:06d}", f"{split}_{i + 1:06d}_prior", f"{split}_subject_{i + 1:06d}"
            key = [seed, 15, split_index, 1, i]
            current, prior = subject_cases(changes, key)
            lat = sample_lateral(lateral, np.random.default_rng(key + [2]))
            prior_lat = sample_lateral(prior_lateral, np.random.default_rng(key + [3]))
            pictures = {f"{study}_frontal": render(current, image_size), f"{study}_lateral": render_lateral(lat, image_size),
                        f"{prior_id}_frontal": render(prior, image_size),
                        f"{prior_id}_lateral": render_lateral(prior_lat, image_size)}
            for name, picture in pictures.items():
                picture.save(folder / "image" / f"{name}.png", format="PNG", compress_level=6)
            text = study_text(changes, lateral) if prior_shown else finding_text(current.findings, lateral)
            current_rows.append(_record(study, subject, text, prior_id if prior_shown else None))
            prior_rows.append(_record(prior_id, subject, finding_text(prior.findings, prior_lateral), None))
            labels[study] = {"changes": changes, "lateral": sorted(lateral), "current": sorted(current.findings),
                             "prior": sorted(prior.findings), "prior_shown": prior_shown}
            slots[study] = {"frontal": finding_slot(current, _case_without(current, key), image_size, slot_grid),
                            "lateral": lateral_slot(lat, image_size, slot_grid),
                            "prior": finding_slot(prior, _case_without(prior, key), image_size, slot_grid)}
        atomic_write_text(folder / STUDIES_FILE, "".join(json.dumps(r) + "\n" for r in current_rows + prior_rows))
        _write_json(folder / LABELS_FILE, labels)
        _write_json(folder / SLOTS_FILE, slots)
        logger.info("wrote %d %s subjects (%d studies, %d images; %d recorded without their prior) to %s", n, split,
                    2 * n, 4 * n, no_prior, folder)
    logger.info("study world written to %s in %.1f s", root, time.perf_counter() - started)
    return counts


def _record(study: str, subject: str, text: str, prior: str | None) -> dict:
    """A study-file line (`xraygpt.data.studies`): PA frontal + lateral, the text as findings and summary."""
    return {"study_id": study, "subject_id": subject,
            "images": [{"image_id": f"{study}_frontal", "path": f"image/{study}_frontal.png", "view": "PA"},
                       {"image_id": f"{study}_lateral", "path": f"image/{study}_lateral.png", "view": "LATERAL"}],
            "indication": "", "comparison": "", "findings": text, "impression": "", "summary": text,
            "prior_study_id": prior, "age": "", "sex": ""}
