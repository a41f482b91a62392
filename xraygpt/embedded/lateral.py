"""The lateral view of the synthetic world: `sample_lateral(findings, rng)` and `render_lateral(case, size)`.

A second view of a synthetic subject for the study proof (`study_world`).  It draws a left
lateral chest radiograph: the patient faces the viewer's left (anterior left, posterior right),
with the sternum, the heart in the anterior-inferior chest, the trachea, the spine posteriorly,
the hemidiaphragms and the deep posterior costophrenic recess.  Two findings exist only on it
(`LATERAL_FINDINGS`), as they do in practice:

- `retrocardiac_nodule`: a small round opacity behind the heart, in front of the spine (on a
  frontal view it projects through the heart shadow and is not seen);
- `posterior_effusion`: a small effusion filling only the posterior costophrenic recess (the
  lowest, posterior part of the pleural space; too small to blunt the lateral angle on a frontal).

The frontal view is drawn by `render.render` from the subject's `anatomy.Case`, which knows
nothing of these two findings, so they are absent from the frontal image by construction (its
bytes do not depend on them).  The four frontal findings are not drawn on the lateral view (a
stylisation: here the lateral view only adds what the frontal cannot show).

Output: a PIL image of mode "L", (size, size), uint8 (bright = dense).  Geometry is in normalised
coordinates ``x, y`` in ``[-1, 1]`` (``x`` to the viewer's right = posterior, ``y`` downwards).
Random fields are drawn in a fixed order whatever the findings, so the same case renders the same
base image with or without a finding (`lateral_slot` measures where each finding is drawn that way).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from xraygpt.embedded.render import _ramp, _smooth_noise, expose, nodule_opacity

LATERAL_FINDINGS: tuple[str, ...] = ("retrocardiac_nodule", "posterior_effusion")
# The word of each lateral finding in the lateral image's slot (stage 0 of the study proof): the word of
# what it looks like (`slots.SLOT_WORDS`: a nodule, an effusion), as on a frontal image, because the one
# projection of stages 1-2 maps what a token shows, whichever image it comes from; the LLM tells a lateral
# finding by the image its word sits in (after the `Lateral:` tag).  Distinct words ("retrocardiac",
# "recess") were tried first and lost the recess effusion (README, "Studies on the embedded default").
LATERAL_SLOT_WORDS: dict[str, str] = {"retrocardiac_nodule": "nodule", "posterior_effusion": "effusion"}


@dataclasses.dataclass(frozen=True)
class LateralCase:
    """Every parameter of one lateral radiograph (normalised coordinates, see module docstring)."""

    findings: frozenset[str]
    scale: float
    shift_x: float
    shift_y: float
    rotation: float
    contrast: float
    brightness: float
    gamma: float
    noise_sigma: float
    noise_seed: int
    dome: float  # y of the hemidiaphragm at the front
    sulcus: float  # how much deeper the posterior recess is than the dome
    heart_cx: float
    heart_cy: float
    heart_ax: float
    heart_ay: float
    tissue: float
    lung_level: float
    nodule: tuple[float, float, float]  # (x, y, radius), behind the heart
    effusion_height: float  # fluid depth above the recess floor


def sample_lateral(findings: frozenset[str], rng: np.random.Generator) -> LateralCase:
    """Draw every parameter of one lateral view; the draws do not depend on `findings`."""
    unknown = set(findings) - set(LATERAL_FINDINGS)
    if unknown:
        raise ValueError(f"unknown lateral findings {sorted(unknown)}; expected a subset of {LATERAL_FINDINGS}")
    u = rng.random(20)
    noise_seed = int(rng.integers(0, 2**31 - 1))

    def lerp(v: float, lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * v)

    return LateralCase(
        findings=frozenset(findings),
        scale=lerp(u[0], 0.95, 1.04), shift_x=lerp(u[1], -0.04, 0.04), shift_y=lerp(u[2], -0.04, 0.04),
        rotation=lerp(u[3], -0.04, 0.04), contrast=lerp(u[4], 0.88, 1.12), brightness=lerp(u[5], -0.04, 0.04),
        gamma=lerp(u[6], 0.85, 1.15), noise_sigma=lerp(u[7], 0.012, 0.028), noise_seed=noise_seed,
        dome=lerp(u[8], 0.36, 0.44), sulcus=lerp(u[9], 0.16, 0.22),
        heart_cx=lerp(u[10], -0.30, -0.24), heart_cy=lerp(u[11], 0.22, 0.28), heart_ax=lerp(u[12], 0.26, 0.31),
        heart_ay=lerp(u[13], 0.26, 0.31), tissue=lerp(u[14], 0.42, 0.50), lung_level=lerp(u[15], 0.14, 0.19),
        nodule=(lerp(u[16], 0.12, 0.28), lerp(u[17], 0.10, 0.28), lerp(u[18], 0.085, 0.11)),
        effusion_height=lerp(u[19], 0.18, 0.26),
    )


def diaphragm(case: LateralCase, x: np.ndarray) -> np.ndarray:
    """y of the hemidiaphragm at x: flat in front, curving down into the posterior recess."""
    q = np.clip((x + 0.05) / 0.65, 0.0, 1.0)
    return case.dome + case.sulcus * q * q


def render_lateral(case: LateralCase, size: int) -> Image.Image:
    """Draw `case` as a (size x size) mode "L" lateral radiograph."""
    if size < 32:
        raise ValueError(f"image size must be >= 32 px, got {size}")
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    gy, gx = np.meshgrid(t, t, indexing="ij")
    nrng = np.random.default_rng(case.noise_seed)
    mottle = _smooth_noise(nrng, size, 7)
    texture = _smooth_noise(nrng, size, 18)
    grain = nrng.standard_normal((size, size), dtype=np.float32)
    px = 2.0 / size
    c, s = math.cos(case.rotation), math.sin(case.rotation)
    dx, dy = gx - case.shift_x, gy - case.shift_y
    x = (c * dx + s * dy) / case.scale
    y = (-s * dx + c * dy) / case.scale
    edge = 1.6 * px / case.scale

    img = np.full(gx.shape, 0.03, dtype=np.float32) + 0.01 * mottle
    # Body: the chest in profile, wider below; soft tissue brighter caudally.
    half = 0.70 + 0.10 * np.clip(y + 0.2, 0.0, 1.0)
    body = _ramp(np.minimum(half - np.abs(x - 0.02), y + 0.92), 10 * px)
    tissue = case.tissue + 0.08 * np.clip(y, -1.0, 1.0) + 0.03 * mottle
    img = img + body * (tissue - img)
    # Lung: one large aerated field, above the diaphragm, between sternum and spine.
    dia = diaphragm(case, x)
    field = ((x - 0.02) / 0.60) ** 2 + ((y + 0.05) / 0.80) ** 2
    lung = _ramp((1.0 - np.sqrt(field)) * 0.6, edge) * _ramp(dia - y, edge)
    vessels = np.clip(1.0 - 1.6 * np.abs(texture), 0.0, 1.0) ** 4
    hilum = np.exp(-((x - 0.02) / 0.12) ** 2 - ((y + 0.05) / 0.16) ** 2)
    lung_val = case.lung_level + 0.05 * np.clip(y + 0.2, -0.4, 0.7) + 0.02 * mottle + 0.05 * vessels + 0.12 * hilum
    img = img + lung * (lung_val - img)
    # Trachea (dark, upper middle), sternum (anterior), spine with discs (posterior).
    trachea = _ramp(0.035 - np.abs(x - 0.03 + 0.08 * y), 2 * px) * _ramp(-0.25 - y, 10 * px)
    img = img - 0.10 * trachea
    sternum = _ramp(0.03 - np.abs(x + 0.62 + 0.05 * y), 2 * px) * _ramp(0.45 - np.abs(y + 0.15), 6 * px)
    img = img + 0.10 * sternum
    spine_x = 0.60 - 0.04 * y
    spine = _ramp(0.08 - np.abs(x - spine_x), 2 * px) * body
    discs = 0.5 + 0.5 * np.cos((y + 0.02) / 0.12 * 2 * np.pi)
    img = img + spine * (0.20 + 0.06 * discs - 0.5 * lung * (img - case.lung_level))
    # Heart: anterior-inferior, sitting on the diaphragm.
    hr2 = ((x - case.heart_cx) / case.heart_ax) ** 2 + ((y - case.heart_cy) / case.heart_ay) ** 2
    heart = _ramp((1.0 - np.sqrt(hr2)) * case.heart_ax, 2.5 * edge) * _ramp(dia + 0.04 - y, 0.10)
    img = img + heart * (0.50 + 0.02 * mottle - img)

    f = case.findings
    if "posterior_effusion" in f:
        floor = diaphragm(case, np.float32(0.60))
        level = floor - case.effusion_height
        meniscus = level - 0.10 * np.clip((x - 0.10) / 0.45, 0.0, 1.0)
        fluid = _ramp(y - meniscus, 0.03) * _ramp(x - 0.05, 0.08) * _ramp(dia + 0.01 - y, edge) * body
        img = img + fluid * (tissue + 0.03 - img)
    if "retrocardiac_nodule" in f:
        img = img + nodule_opacity(x, y, *case.nodule, edge)

    return Image.fromarray(expose(img, mottle, grain, case), mode="L")


def lateral_slot(case: LateralCase, size: int, grid: int) -> str:
    """The lateral image's slot: grid * grid words in raster order, each lateral finding's word
    (`LATERAL_SLOT_WORDS`) where it is drawn, `slots.FILLER` elsewhere; the rule of
    `slots.finding_slot` (cells whose mean absolute difference with and without the finding is at
    least `CELL_FRACTION` of its largest and `MIN_CELL_DIFF` grey levels; at least one cell each)."""
    from xraygpt.embedded.slots import CELL_FRACTION, FILLER, MIN_CELL_DIFF

    if grid < 1 or size % grid:
        raise ValueError(f"render size {size} px is not a multiple of the slot grid {grid}")
    cell = size // grid
    image = np.asarray(render_lateral(case, size), dtype=np.float32)
    words = np.full((grid, grid), FILLER, dtype=object)
    best = np.zeros((grid, grid), dtype=np.float32)
    diffs = {}
    for finding in sorted(case.findings):
        other = dataclasses.replace(case, findings=case.findings - {finding})
        diff = np.abs(image - np.asarray(render_lateral(other, size), dtype=np.float32))
        diffs[finding] = diff.reshape(grid, cell, grid, cell).mean(axis=(1, 3))
    for finding, diff in diffs.items():
        take = (diff >= max(MIN_CELL_DIFF, CELL_FRACTION * float(diff.max()))) & (diff > best)
        best[take] = diff[take]
        words[take] = LATERAL_SLOT_WORDS[finding]
    for finding, diff in diffs.items():
        if LATERAL_SLOT_WORDS[finding] not in words:
            words[np.unravel_index(int(np.argmax(diff)), diff.shape)] = LATERAL_SLOT_WORDS[finding]
    return " ".join(words.ravel().tolist())
