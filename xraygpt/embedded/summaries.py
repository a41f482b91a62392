"""Radiology-style summaries from the project's own templates (the captions of the synthetic world).

`write_summary(findings, rng)` gives side-free wording; `case_summary(case, rng)` the same
templates with the side and lung-zone words of a drawn `Case`.  A summary is 2-5 sentences
separated by single spaces (positives, some negations of absent findings, one impression);
absent findings may be negated, never asserted, so `labeler.findings_in_text` reads back
exactly the findings given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xraygpt.embedded.anatomy import FINDINGS, Case


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


_CARDIOMEGALY = (
    "The heart is enlarged.",
    "The cardiac silhouette is enlarged.",
    "There is cardiomegaly.",
    "Moderate cardiomegaly is present.",
    "Enlarged cardiac silhouette.",
    "The cardiothoracic ratio is increased, consistent with cardiomegaly.",
)
_EFFUSION = (
    "There is a {s}pleural effusion.",
    "A {s}pleural effusion is present with blunting of the costophrenic angle.",
    "Homogeneous opacity at the {s}lung base with a meniscus, consistent with pleural effusion.",
    "{S}pleural effusion is seen.",
    "Blunting of the {s}costophrenic angle due to a pleural effusion.",
)
_PNEUMOTHORAX = (
    "There is a {s}pneumothorax.",
    "A {s}pneumothorax is present with a visible visceral pleural line.",
    "{S}pneumothorax is seen laterally.",
    "A visceral pleural line is seen with a {s}pneumothorax.",
    "{S}apical and lateral pneumothorax is noted.",
)
_NODULE_ONE_SITE = (
    "A small nodule is seen in the {side} {zone} lung zone.",
    "There is a nodular opacity in the {side} {zone} zone.",
    "A {side} {zone} zone pulmonary nodule is noted.",
    "A rounded nodule projects over the {side} {zone} lung.",
)
_NODULE_ANY = (  # count- and side-free wording, used when the drawing is not known
    "Pulmonary nodular opacity is seen.",
    "There is a nodular opacity in the lung.",
    "Small pulmonary nodules are noted.",
    "A pulmonary nodule is noted.",
)
_NODULE_TWO_SAME = (
    "Two small nodules are seen in the {side} lung.",
    "There are two nodular opacities in the {side} lung.",
)
_NODULE_TWO_BOTH = (
    "Small nodules are seen in both lungs.",
    "Bilateral pulmonary nodules are noted.",
)
_NORMAL_HEART = (
    "Heart size is normal.",
    "The cardiac silhouette is within normal limits.",
    "The cardiomediastinal silhouette is normal.",
    "Normal heart size.",
)
_NORMAL_LUNGS = (  # only when no lung or pleural finding is present
    "The lungs are clear.",
    "The lungs are well expanded and clear.",
    "Clear lungs bilaterally.",
)
_NO_EFFUSION_PTX = (
    "No pleural effusion or pneumothorax.",
    "There is no pleural effusion or pneumothorax.",
    "No pneumothorax or pleural effusion is seen.",
)
_NO_EFFUSION = ("No pleural effusion.", "There is no pleural effusion.", "The costophrenic angles are sharp.")
_NO_PTX = ("No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen.")
_NO_NODULE = ("No focal nodules or masses.", "No pulmonary nodule is seen.", "The lungs are free of nodules.")
_FILLER = (
    "No focal airspace consolidation.",
    "The osseous structures are unremarkable.",
    "The mediastinal contours are unremarkable.",
)
_IMPRESSION_NORMAL = (
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "No acute cardiopulmonary process.",
    "Impression: normal study.",
)
_IMPRESSION_ABNORMAL = ("Impression: {list}.", "Findings are consistent with {list}.", "{List}.")


def _side_word(side: str | None) -> str:
    return f"{side} " if side else ""


def _fill(template: str, lat: str | None = None, **extra: str) -> str:
    """Format a template: ``{s}``/``{S}`` -> "right "/"left "/"", first letter capitalised."""
    s = _side_word(lat)
    text = template.format(s=s, S=s, **extra)
    return text[0].upper() + text[1:]


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def compose_summary(
    findings: frozenset[str],
    rng: np.random.Generator,
    effusion_side: str | None = None,
    ptx_side: str | None = None,
    nodule_sites: tuple[tuple[str, str], ...] | None = None,
) -> str:
    """Summary sentences for ``findings``; side/zone words only where they are known."""
    unknown = set(findings) - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; expected a subset of {FINDINGS}")
    positive: list[str] = []
    names: list[str] = []
    if "cardiomegaly" in findings:
        positive.append(_pick(rng, _CARDIOMEGALY))
        names.append("cardiomegaly")
    if "nodule" in findings:
        if not nodule_sites:
            positive.append(_pick(rng, _NODULE_ANY))
            names.append("pulmonary nodule")
        elif len(nodule_sites) == 1:
            side, zone = nodule_sites[0]
            positive.append(_fill(_pick(rng, _NODULE_ONE_SITE), None, side=side, zone=zone))
            names.append(f"{side} {zone} zone pulmonary nodule")
        elif nodule_sites[0][0] == nodule_sites[1][0]:
            positive.append(_fill(_pick(rng, _NODULE_TWO_SAME), None, side=nodule_sites[0][0]))
            names.append(f"{nodule_sites[0][0]} pulmonary nodules")
        else:
            positive.append(_pick(rng, _NODULE_TWO_BOTH))
            names.append("bilateral pulmonary nodules")
    if "pleural_effusion" in findings:
        positive.append(_fill(_pick(rng, _EFFUSION), effusion_side))
        names.append(f"{_side_word(effusion_side)}pleural effusion")
    if "pneumothorax" in findings:
        positive.append(_fill(_pick(rng, _PNEUMOTHORAX), ptx_side))
        names.append(f"{_side_word(ptx_side)}pneumothorax")

    # Negative / normal sentences, only about findings that are absent.
    negatives: list[str] = []
    if "cardiomegaly" not in findings:
        negatives.append(_pick(rng, _NORMAL_HEART))
    lung_findings = {"pleural_effusion", "pneumothorax", "nodule"} & findings
    if not lung_findings:
        negatives.append(_pick(rng, _NORMAL_LUNGS))
    if "pleural_effusion" not in findings and "pneumothorax" not in findings:
        negatives.append(_pick(rng, _NO_EFFUSION_PTX))
    elif "pleural_effusion" not in findings:
        negatives.append(_pick(rng, _NO_EFFUSION))
    elif "pneumothorax" not in findings:
        negatives.append(_pick(rng, _NO_PTX))
    if "nodule" not in findings and lung_findings:
        negatives.append(_pick(rng, _NO_NODULE))
    negatives.append(_pick(rng, _FILLER))

    # 2-5 sentences in total: positives + some negatives + one impression.
    room = 4 - len(positive)
    n_neg = int(rng.integers(1 if not positive else 0, room + 1)) if room > 0 else 0
    order = rng.permutation(len(negatives))[:n_neg]
    body = positive + [negatives[i] for i in sorted(order)]
    if names:
        listed = _join(names)
        impression = _pick(rng, _IMPRESSION_ABNORMAL).format(list=listed, List=listed[0].upper() + listed[1:])
    else:
        impression = _pick(rng, _IMPRESSION_NORMAL)
    return " ".join(body + [impression])


def write_summary(findings: frozenset[str], rng: np.random.Generator) -> str:
    """A radiology-style summary (findings + impression style, 2-5 sentences) from the project's own templates.

    Without knowledge of the drawing this uses side-free wording; the dataset generator
    uses the same templates with side/zone words taken from the drawn case.  A normal
    study (no findings) always gets a normal summary; absent findings may be negated.

    Args:
        findings: subset of :data:`FINDINGS` present in the study.
        rng: source of the template choices.

    Returns:
        2-5 sentences separated by single spaces, the last one an impression.
    """
    return compose_summary(frozenset(findings), rng)


def case_summary(case: Case, rng: np.random.Generator) -> str:
    """Summary of a drawn case, with side and zone words matching the drawing."""
    return compose_summary(
        case.findings,
        rng,
        effusion_side=case.effusion_side,
        ptx_side=case.ptx_side,
        nodule_sites=case.nodule_sites() if "nodule" in case.findings else None,
    )
