"""Synthetic chest X-ray-like dataset in XrayGPT's on-disk layout.

This module owns the project's *embedded default* data: a procedurally drawn set of
frontal chest "radiographs" paired with radiology-style summaries, written in exactly the
layout the XrayGPT data pipeline reads (``<root>/<split>/filter_cap.json`` with
``{"annotations": [{"image_id", "caption"}]}`` and ``<root>/<split>/image/<image_id>.png``),
plus a ``labels.json`` with the ground-truth findings of every image.

Why it exists:

* The real MIMIC-CXR / OpenI data need credentials and large downloads; the training stack
  must still be runnable and testable end to end offline.  Nothing usable offline exists
  for this, so the images are drawn here with numpy (plus PIL only for the PNG encoding).
* It is a *learnability task*.  Every caption is a deterministic function of what was
  drawn (which findings, which side, which lung zone), while the wording is sampled from
  several templates.  A model can therefore only write the right summary by looking at
  the image; a text-only model can at best learn the marginal distribution of findings.
  :func:`findings_in_text` maps a generated (or free-text) summary back to the asserted
  findings so generated reports can be scored against ``labels.json``.

Four findings are drawn, in any combination (see :data:`FINDINGS`): cardiomegaly (wider
heart shadow, cardiothoracic ratio ~0.6+ instead of ~0.45), pleural effusion (homogeneous
basal opacity with a concave-up meniscus that blunts the costophrenic angle), pneumothorax
(a featureless, very dark lateral/apical rim bounded by a thin bright visceral pleural
line) and nodules (one or two small bright round opacities in a lung field).  All of them
remain visible after downscaling to 112 px.

Conventions: images are frontal PA views seen from the front, so the patient's right is
on the viewer's left.  Side words in captions ("right", "left") always refer to the
patient.  Drawing happens in normalised coordinates ``x, y`` in ``[-1, 1]`` (``x`` to the
viewer's right, ``y`` downwards); intensities are floats in ``[0, 1]`` until the final
conversion to 8-bit grayscale.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xraygpt import runtime

logger = logging.getLogger(__name__)

FINDINGS: tuple[str, ...] = ("cardiomegaly", "pleural_effusion", "pneumothorax", "nodule")

SPLITS: tuple[str, ...] = ("train", "val", "test")

# Number of nodule candidate positions drawn per case.  A fixed number keeps the amount of
# randomness consumed independent of the findings, so that drawing the same rng state with
# and without a finding yields the same base image.
_NODULE_CANDIDATES = 48

# Lung geometry in body coordinates (before per-image jitter).  ``sgn`` is -1 for the
# viewer's left (patient's right) lung and +1 for the viewer's right (patient's left).
_LUNG_CX = 0.43  # |x| of the lung-ellipse centres
_LUNG_CY = 0.20
_LUNG_AX = 0.31  # half-width: lateral lung edge at |x| = 0.74, medial edge at 0.12
_LUNG_AY = 0.82  # half-height: apex at y = -0.62
_THORAX_WIDTH = 2.0 * (_LUNG_CX + _LUNG_AX)  # inner thoracic width used for the CTR


def _side_sign(side: str) -> float:
    """Viewer-space x sign of a patient side: patient right -> -1 (viewer's left)."""
    return -1.0 if side == "right" else 1.0


def _side_of_x(x: float) -> str:
    """Patient side of a viewer-space x coordinate."""
    return "right" if x < 0.0 else "left"


# --------------------------------------------------------------------------------------
# Case sampling: every random choice for one image, independent of the output size.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Case:
    """All parameters of one synthetic radiograph (normalised body coordinates)."""

    findings: frozenset[str]
    # Global pose/exposure jitter.
    scale: float
    shift_x: float
    shift_y: float
    rotation: float  # radians
    contrast: float
    brightness: float
    gamma: float
    noise_sigma: float
    noise_seed: int
    # Anatomy jitter.
    lung_dx: float
    lung_dy: float
    lung_ax: float
    lung_ay: float
    dome_right: float  # y of the dome apex, patient right (viewer left)
    dome_left: float
    rib_phase: float
    rib_spacing: float
    tissue: float  # soft-tissue brightness
    lung_level: float  # lung-field darkness
    gastric_bubble: bool
    # Heart: centre, half axes, tilt (radians).
    heart_cx: float
    heart_cy: float
    heart_ax: float
    heart_ay: float
    heart_tilt: float
    # Findings (sampled always; only used when present).
    effusion_side: str
    effusion_height: float  # fluid height above the dome apex
    effusion_rise: float  # meniscus rise towards the lateral chest wall
    ptx_side: str
    ptx_collapse: float  # fraction by which the lung has retracted
    nodules: tuple[tuple[float, float, float], ...]  # (x, y, radius)

    @property
    def ctr(self) -> float:
        """Cardiothoracic ratio of the drawn heart (dimensionless)."""
        return (2.0 * self.heart_ax) / (_THORAX_WIDTH * self.lung_ax / _LUNG_AX)

    def nodule_sites(self) -> tuple[tuple[str, str], ...]:
        """(patient side, lung zone) of each drawn nodule."""
        sites = []
        for x, y, _ in self.nodules:
            rel = (y - (_LUNG_CY + self.lung_dy - self.lung_ay)) / (
                self.dome_y(x) - (_LUNG_CY + self.lung_dy - self.lung_ay)
            )
            zone = "upper" if rel < 0.36 else ("mid" if rel < 0.68 else "lower")
            sites.append((_side_of_x(x), zone))
        return tuple(sites)

    def dome_y(self, x: float | np.ndarray) -> Any:
        """y of the diaphragm at body x (works on scalars and arrays)."""
        return _dome_y(x, self.dome_right, self.dome_left, self.lung_dx)


def _dome_y(x: Any, dome_right: float, dome_left: float, lung_dx: float) -> Any:
    """Diaphragm height (y, downwards) at body x: two domes lowest at the lateral angles."""
    xc = np.asarray(x) - lung_dx
    apex = np.where(xc < 0.0, np.float32(dome_right), np.float32(dome_left))
    u = (np.abs(xc) - _LUNG_CX) / 0.36
    return apex + 0.20 * u * u


def _heart_params(findings: frozenset[str], u: np.ndarray) -> tuple[float, float, float, float, float]:
    """Heart centre/half-axes/tilt from uniform draws ``u`` (5 values)."""
    if "cardiomegaly" in findings:
        ctr = 0.60 + 0.08 * u[0]
        cx = 0.15 + 0.04 * u[1]
        ay = 0.27 + 0.03 * u[2]
    else:
        ctr = 0.42 + 0.06 * u[0]
        cx = 0.09 + 0.03 * u[1]
        ay = 0.22 + 0.03 * u[2]
    ax = 0.5 * ctr * _THORAX_WIDTH
    cy = 0.36 + 0.04 * u[3]
    tilt = -0.30 - 0.15 * u[4]
    return float(cx), float(cy), float(ax), float(ay), float(tilt)


def _sample_case(findings: frozenset[str], rng: np.random.Generator) -> _Case:
    """Draw every random parameter of one image.

    The number and order of rng draws does not depend on ``findings`` (finding parameters
    are always drawn), so the same rng state gives the same base anatomy with or without
    any finding.
    """
    unknown = set(findings) - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; expected a subset of {FINDINGS}")
    base = rng.random(20)
    heart_u = rng.random(5)
    fx = rng.random(6)
    cand = rng.random((_NODULE_CANDIDATES, 4))
    n_nodules = 1 if rng.random() < 0.6 else 2
    noise_seed = int(rng.integers(0, 2**31 - 1))

    def lerp(v: float, lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * v)

    lung_dx = lerp(base[8], -0.015, 0.015)
    dome_right = lerp(base[12], 0.44, 0.50)
    dome_left = dome_right + lerp(base[13], 0.03, 0.07)
    heart = _heart_params(findings, heart_u)
    effusion_side = "right" if fx[0] < 0.5 else "left"
    ptx_side = "right" if fx[3] < 0.5 else "left"
    case = _Case(
        findings=frozenset(findings),
        scale=lerp(base[0], 0.94, 1.04),
        shift_x=lerp(base[1], -0.04, 0.04),
        shift_y=lerp(base[2], -0.04, 0.04),
        rotation=lerp(base[3], -0.04, 0.04),
        contrast=lerp(base[4], 0.88, 1.12),
        brightness=lerp(base[5], -0.04, 0.04),
        gamma=lerp(base[6], 0.85, 1.15),
        noise_sigma=lerp(base[7], 0.012, 0.028),
        noise_seed=noise_seed,
        lung_dx=lung_dx,
        lung_dy=lerp(base[9], -0.02, 0.02),
        lung_ax=lerp(base[10], 0.295, 0.325),
        lung_ay=lerp(base[11], 0.80, 0.85),
        dome_right=dome_right,
        dome_left=dome_left,
        rib_phase=lerp(base[14], -0.03, 0.03),
        rib_spacing=lerp(base[15], 0.125, 0.14),
        tissue=lerp(base[16], 0.42, 0.50),
        lung_level=lerp(base[17], 0.13, 0.18),
        gastric_bubble=bool(base[18] < 0.6),
        heart_cx=heart[0],
        heart_cy=heart[1],
        heart_ax=heart[2],
        heart_ay=heart[3],
        heart_tilt=heart[4],
        effusion_side=effusion_side,
        effusion_height=lerp(fx[1], 0.18, 0.42),
        effusion_rise=lerp(fx[2], 0.14, 0.22),
        ptx_side=ptx_side,
        ptx_collapse=lerp(fx[4], 0.30, 0.45),
        nodules=(),
    )
    return dataclasses.replace(case, nodules=_place_nodules(case, cand, n_nodules))


def _lung_r2(case: _Case, x: Any, y: Any, sgn: float) -> Any:
    """Normalised squared radius in the lung ellipse of side ``sgn`` (< 1 inside)."""
    cx = sgn * _LUNG_CX + case.lung_dx
    cy = _LUNG_CY + case.lung_dy
    return ((x - cx) / case.lung_ax) ** 2 + ((y - cy) / case.lung_ay) ** 2


def _ptx_ellipse(case: _Case, sgn: float) -> tuple[float, float, float, float]:
    """Centre and half-axes of the retracted lung on the pneumothorax side."""
    c = case.ptx_collapse
    cx = sgn * _LUNG_CX + case.lung_dx - sgn * 0.45 * c * case.lung_ax
    ax = case.lung_ax * (1.0 - 0.55 * c)
    ay = case.lung_ay * (1.0 - 0.45 * c)
    cy = _LUNG_CY + case.lung_dy + (case.lung_ay - ay) * 0.95
    return cx, cy, ax, ay


def _meniscus_y(case: _Case, x: Any, sgn: float) -> Any:
    """Upper border (y) of the effusion on side ``sgn``: concave up, highest laterally."""
    apex = case.dome_right if sgn < 0 else case.dome_left
    level = apex - case.effusion_height
    q = np.clip((sgn * (x - case.lung_dx) - 0.12) / 0.62, 0.0, 1.0)
    return level + 0.05 - case.effusion_rise * q * q


def _heart_r2(case: _Case, x: Any, y: Any) -> Any:
    """Normalised squared radius in the (tilted) heart ellipse (< 1 inside)."""
    dx = x - case.heart_cx
    dy = y - case.heart_cy
    c, s = math.cos(case.heart_tilt), math.sin(case.heart_tilt)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    # The lower half is stretched so the heart sits on the left hemidiaphragm.
    v = np.where(v > 0.0, 0.55 * v, v) if isinstance(v, np.ndarray) else (0.55 * v if v > 0.0 else v)
    return (u / case.heart_ax) ** 2 + (v / case.heart_ay) ** 2


def _place_nodules(case: _Case, cand: np.ndarray, count: int) -> tuple[tuple[float, float, float], ...]:
    """Pick ``count`` nodule sites inside visible, aerated lung from fixed candidates."""
    chosen: list[tuple[float, float, float]] = []
    for side_u, xu, yu, ru in cand:
        sgn = -1.0 if side_u < 0.5 else 1.0
        r = 0.08 + 0.04 * float(ru)  # radius 4-6 % of the image size
        x = sgn * (0.22 + 0.44 * float(xu)) + case.lung_dx
        y = -0.45 + 0.85 * float(yu)
        if not _nodule_ok(case, x, y, r, sgn):
            continue
        if any(math.hypot(x - ox, y - oy) < 2.2 * (r + orad) for ox, oy, orad in chosen):
            continue
        chosen.append((x, y, r))
        if len(chosen) == count:
            break
    if not chosen:  # practically unreachable; keep a safe, visible default
        sgn = 1.0 if ("pneumothorax" in case.findings and case.ptx_side == "right") else -1.0
        chosen.append((sgn * 0.45 + case.lung_dx, -0.2, 0.08))
    return tuple(chosen)


def _nodule_ok(case: _Case, x: float, y: float, r: float, sgn: float) -> bool:
    """Whether a nodule at (x, y) of radius r sits well inside aerated, unobscured lung."""
    if _lung_r2(case, x, y, sgn) > 0.62:
        return False
    if y > float(case.dome_y(x)) - r - 0.08:
        return False
    if abs(x) < 0.16 + r:
        return False
    if _heart_r2(case, x, y) < (1.0 + (r + 0.08) / case.heart_ax) ** 2:
        return False
    f = case.findings
    if "pleural_effusion" in f and _side_sign(case.effusion_side) == sgn:
        if y > float(_meniscus_y(case, x, sgn)) - r - 0.1:
            return False
    if "pneumothorax" in f and _side_sign(case.ptx_side) == sgn:
        cx, cy, ax, ay = _ptx_ellipse(case, sgn)
        if ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 > 0.5:
            return False
    return True


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], each of shape (size, size), float32."""
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    y, x = np.meshgrid(t, t, indexing="ij")
    return x, y


def _ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 for d << 0, 1 for d >> 0, linear over ``width`` (same units as d)."""
    return np.clip(0.5 + d / width, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field (size x size, ~unit std) from a cells x cells lattice, bicubic."""
    lattice = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(lattice, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _blend(img: np.ndarray, value: Any, alpha: np.ndarray) -> np.ndarray:
    """Alpha-composite ``value`` over ``img`` (alpha in [0, 1])."""
    return img + alpha * (value - img)


# Pixels per row block in `_render`: numpy temporaries of one block stay < 128 KiB.
_BLOCK_ELEMENTS = 24_000


@functools.cache
def _settle_allocator() -> None:
    """Free one large (8 MiB) block once, before the first image is rendered.

    Rendering creates a few hundred short-lived float32 temporaries per image.  With
    glibc's default thresholds those are mmap'd or trimmed back to the OS and page-faulted
    in again for every image, which made rendering 2-3x slower (most time in the kernel).
    glibc raises its mmap/trim thresholds dynamically once a large mmap'd block is freed;
    doing that here keeps the temporaries on the heap.  It has no other effect, and is
    a harmless allocation on other allocators.
    """
    block = np.empty(8 << 20, dtype=np.uint8)
    del block


def _render(case: _Case, size: int) -> Image.Image:
    """Draw ``case`` as a (size x size) mode "L" image (rendered in blocks of rows)."""
    if size < 32:
        raise ValueError(f"image size must be >= 32 px, got {size}")
    _settle_allocator()
    gx, gy = _grid(size)
    nrng = np.random.default_rng(case.noise_seed)
    # Random fields, drawn in a fixed order regardless of findings.
    mottle = _smooth_noise(nrng, size, 7)
    texture = _smooth_noise(nrng, size, 18)
    fine = _smooth_noise(nrng, size, 40)
    angles = [float(v) for v in nrng.uniform(0.0, 2.0 * np.pi, 4)]
    grain = nrng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), dtype=np.uint8)
    rows = max(1, _BLOCK_ELEMENTS // size)
    for r0 in range(0, size, rows):
        sl = slice(r0, r0 + rows)
        out[sl] = _render_rows(case, size, gx[sl], gy[sl], mottle[sl], texture[sl], fine[sl], grain[sl], angles)
    return Image.fromarray(out, mode="L")


def _render_rows(
    case: _Case,
    size: int,
    gx: np.ndarray,
    gy: np.ndarray,
    mottle: np.ndarray,
    texture: np.ndarray,
    fine: np.ndarray,
    grain: np.ndarray,
    angles: list[float],
) -> np.ndarray:
    """Pixel values (uint8) of a block of image rows with grid coordinates ``gx, gy``.

    The noise fields are the matching rows of the whole-image fields; every operation is
    pointwise, so rendering in blocks gives exactly the whole-image result.
    """
    px = 2.0 / size  # one pixel in normalised units
    f = case.findings

    # Body coordinates: undo the per-image pose jitter.
    c, s = math.cos(case.rotation), math.sin(case.rotation)
    dx = gx - case.shift_x
    dy = gy - case.shift_y
    x = (c * dx + s * dy) / case.scale
    y = (-s * dx + c * dy) / case.scale
    ax_ = np.abs(x)
    edge = 1.6 * px / case.scale

    # --- Background and body (soft tissue thicker centrally, brighter caudally). -------
    img = np.full(gx.shape, 0.03, dtype=np.float32) + 0.01 * mottle
    sx = np.clip(ax_ - 0.20, 0.0, None)
    shoulder = -0.80 + 0.55 * sx * sx
    body_d = np.minimum(0.97 - ax_, np.maximum(y - shoulder, 0.21 - ax_))
    body = _ramp(body_d, 10 * px)
    thick = np.sqrt(np.clip(1.0 - (x / 1.0) ** 2, 0.0, 1.0))
    tissue = case.tissue * (0.45 + 0.55 * thick) + 0.09 * np.clip(y, -1.0, 1.0) + 0.03 * mottle
    img = _blend(img, tissue, body)

    # --- Lungs. ------------------------------------------------------------------------
    dome = _dome_y(x, case.dome_right, case.dome_left, case.lung_dx)
    lung_alpha = np.zeros_like(img)
    side_alpha = {}
    side_wide = {}  # slightly dilated masks, so findings also cover the soft lung edge
    for sgn in (-1.0, 1.0):
        rho = (1.0 - np.sqrt(_lung_r2(case, x, y, sgn))) * case.lung_ax
        a = _ramp(rho, edge) * _ramp(dome - y, edge)
        side_alpha[sgn] = a
        side_wide[sgn] = _ramp(rho + 1.5 * edge, edge) * _ramp(dome - y + 1.5 * edge, edge)
        lung_alpha = np.maximum(lung_alpha, a)

    # Vascular markings: a ridged (vessel-like) network plus faint streaks radiating from
    # each hilum, dense centrally and fading towards the periphery; bright hilar shadows.
    vessels = np.clip(1.0 - 1.6 * np.abs(texture), 0.0, 1.0)
    vessels *= vessels
    vessels *= vessels
    # Both sides in one pass on mirrored coordinates (|x| about the midline).
    mx = np.abs(x - case.lung_dx) - 0.21
    my = y - case.lung_dy
    dist = np.sqrt(mx * mx + my * my)
    ang = np.arctan2(my, mx) + (x > case.lung_dx) * np.float32(angles[3])  # sides differ
    streak = 0.5 * np.cos(5.0 * ang + angles[0]) + 0.35 * np.cos(9.0 * ang + angles[1])
    streak += 0.25 * np.cos(14.0 * ang + angles[2]) + 0.5 * fine
    np.clip(streak, 0.0, None, out=streak)
    density = np.exp(dist * (-1.0 / 0.33))
    hilum = np.exp(-(mx * mx) * (1.0 / 0.07**2) - (my * my) * (1.0 / 0.13**2))
    markings = lung_alpha * (density * (0.07 * vessels + 0.035 * streak + 0.04) + 0.12 * hilum)
    base_lung = case.lung_level + 0.06 * np.clip(y + 0.2, -0.4, 0.7)
    lung_val = base_lung + 0.02 * mottle + 0.01 * fine + markings
    img = _blend(img, lung_val, lung_alpha)

    # Ribs: posterior arcs (periodic in y after bending), faint, strongest over the lungs.
    u = np.clip(ax_ - 0.06, 0.0, None)
    bent = y + 0.12 * u - 0.65 * u * u - case.rib_phase
    phase = (bent + 0.78) / case.rib_spacing
    frac = phase - np.floor(phase)
    rib = np.exp(-((frac - 0.5) / 0.13) ** 2) * (phase > 0.3) * (phase < 9.5) * _ramp(0.86 - ax_, 8 * px)
    # Anterior ribs: fainter, sloping down towards the midline.
    bent_a = y - 0.45 * u + case.rib_phase
    phase_a = (bent_a + 1.05) / (case.rib_spacing * 1.15)
    frac_a = phase_a - np.floor(phase_a)
    rib_a = np.exp(-((frac_a - 0.5) / 0.12) ** 2) * (phase_a > 0.0) * (phase_a < 6.0) * _ramp(ax_ - 0.2, 8 * px)
    ribs = 0.05 * rib + 0.025 * rib_a
    img = img + ribs * (0.3 * body + 0.7 * lung_alpha)

    # Clavicles: gently S-shaped bones rising laterally.
    t = np.clip((ax_ - 0.08) / 0.55, 0.0, 1.0)
    clav_y = -0.58 - 0.20 * t + 0.10 * t * t + case.lung_dy
    clav = np.exp(-((y - clav_y) / 0.03) ** 2) * _ramp(ax_ - 0.08, 3 * px) * _ramp(0.66 - ax_, 8 * px)
    img = img + 0.13 * clav

    # --- Findings inside the lungs: pneumothorax, then effusion. -----------------------
    if "pneumothorax" in f:
        sgn = _side_sign(case.ptx_side)
        pcx, pcy, pax, pay = _ptx_ellipse(case, sgn)
        rr = np.sqrt(((x - pcx) / pax) ** 2 + ((y - pcy) / pay) ** 2)
        outside = _ramp((rr - 1.0) * pax, edge)
        dark = side_wide[sgn] * outside
        img = _blend(img, 0.03 + 0.006 * mottle, dark)
        # Collapsed lung is a little denser.
        img = img + 0.035 * side_alpha[sgn] * (1.0 - outside)
        line = np.exp(-(((rr - 1.0) * pax) / (0.9 * px)) ** 2) * side_alpha[sgn]
        img = img + 0.30 * line
    if "pleural_effusion" in f:
        sgn = _side_sign(case.effusion_side)
        men = _meniscus_y(case, x, sgn)
        fluid = _ramp(y - men, 0.035) * side_wide[sgn]
        # Same density as the subdiaphragmatic soft tissue: the hemidiaphragm is effaced.
        img = _blend(img, tissue + 0.03, fluid)

    # --- Mediastinum, heart, spine, trachea. ------------------------------------------
    med_w = 0.105 + 0.045 * np.exp(-((y + 0.30) / 0.09) ** 2) * (x > 0)  # aortic knob
    med = _ramp(med_w - ax_, 4 * px) * _ramp(y + 0.95, 8 * px)
    img = _blend(img, 0.56 + 0.03 * mottle, med * body)
    hr2 = _heart_r2(case, x, y)
    hr = np.sqrt(hr2)
    heart = _ramp((1.0 - hr) * case.heart_ax, 2.5 * edge) * _ramp(dome + 0.04 - y, 0.12)
    heart_val = 0.52 + 0.12 * np.sqrt(np.clip(1.0 - hr2, 0.0, 1.0)) + 0.02 * mottle
    img = _blend(img, heart_val, heart)
    spine = _ramp(0.07 - ax_, 2 * px) * body
    discs = 0.5 + 0.5 * np.cos((y + 0.05) / 0.115 * 2 * np.pi)
    img = img + spine * (0.06 + 0.035 * discs)
    trachea = _ramp(0.032 - np.abs(x - 0.01 * y), 2 * px) * _ramp(-0.32 - y, 12 * px)
    img = img - 0.14 * trachea

    # Gastric bubble under the left hemidiaphragm (viewer's right).
    if case.gastric_bubble:
        bx = 0.36 + case.lung_dx
        by = case.dome_left + 0.13
        br = np.sqrt(((x - bx) / 0.11) ** 2 + ((y - by) / 0.06) ** 2)
        img = img - 0.18 * _ramp((1.0 - br) * 0.06, edge) * (1.0 - heart)

    # --- Nodules. ------------------------------------------------------------------------
    if "nodule" in f:
        for nx, ny, nr in case.nodules:
            d = np.sqrt((x - nx) ** 2 + (y - ny) ** 2) / nr
            prof = np.sqrt(np.clip(1.0 - d * d, 0.0, 1.0)) * 0.85 + 0.15 * _ramp(1.0 - d, edge / nr)
            img = img + 0.30 * prof

    # --- Exposure, noise, 8-bit. ----------------------------------------------------------
    img = img * (1.0 + 0.04 * mottle) + case.noise_sigma * grain
    img = np.clip(img, 0.0, 1.0)
    img = np.clip((img ** case.gamma - 0.45) * case.contrast + 0.45 + case.brightness, 0.0, 1.0)
    return (img * 255.0 + 0.5).astype(np.uint8)


def draw_radiograph(findings: frozenset[str], rng: np.random.Generator, size: int = 224) -> Image.Image:
    """Grayscale ("L") size x size frontal chest radiograph-like image with the given findings drawn visibly.

    Args:
        findings: subset of :data:`FINDINGS` to draw (any combination, empty = normal).
        rng: source of all randomness.  The number of draws does not depend on
            ``findings``, so two generators in the same state give the same base anatomy,
            pose and noise whatever findings are requested.
        size: output width and height in pixels (>= 32).

    Returns:
        A PIL image of mode "L", shape (size, size), uint8 intensities (bright = dense).
    """
    return _render(_sample_case(frozenset(findings), rng), size)


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------


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


def _compose_summary(
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
    return _compose_summary(frozenset(findings), rng)


def _case_summary(case: _Case, rng: np.random.Generator) -> str:
    """Summary of a drawn case, with side and zone words matching the drawing."""
    return _compose_summary(
        case.findings,
        rng,
        effusion_side=case.effusion_side,
        ptx_side=case.ptx_side,
        nodule_sites=case.nodule_sites() if "nodule" in case.findings else None,
    )


# --------------------------------------------------------------------------------------
# Text -> findings
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------


def _assign_findings(n: int, prevalence: float, rng: np.random.Generator) -> list[frozenset[str]]:
    """Per-image finding sets: each finding on exactly round(prevalence * n) random images.

    Findings are assigned independently of each other (one random subset per finding), so
    every image has each finding with probability ``prevalence`` and the per-finding counts
    are exactly balanced.
    """
    k = int(round(prevalence * n))
    sets: list[set[str]] = [set() for _ in range(n)]
    for finding in FINDINGS:
        for i in rng.permutation(n)[:k]:
            sets[int(i)].add(finding)
    return [frozenset(s) for s in sets]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=True) + "\n").encode("utf-8"))


def generate_dataset(
    root: str | os.PathLike,
    num_train: int = 1200,
    num_val: int = 100,
    num_test: int = 200,
    seed: int = 0,
    image_size: int = 224,
    prevalence: float = 0.35,
) -> dict[str, int]:
    """Writes root/<split>/filter_cap.json + root/<split>/image/<image_id>.png + root/<split>/labels.json for split in train/val/test; returns {split: count}.

    Layout (XrayGPT's): ``filter_cap.json`` is ``{"annotations": [{"image_id": str,
    "caption": str}, ...]}``; images are ``image_size`` x ``image_size`` 8-bit grayscale
    (mode "L") PNGs named ``<image_id>.png``; ``labels.json`` maps each image_id to its
    sorted list of findings.  Image ids are ``<split>_<6-digit index from 1>`` so splits
    are disjoint.  Each finding is present on exactly ``round(prevalence * n)`` images of
    a split (chosen independently per finding).  Output bytes depend only on the
    arguments (same seed -> identical files).  Existing files of the same names are
    overwritten; other files under ``root`` are left alone.
    """
    counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
    if any(v < 0 for v in counts.values()):
        raise ValueError(f"split sizes must be >= 0, got {counts}")
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence}")
    root = Path(root)
    started = time.perf_counter()
    for split_index, split in enumerate(SPLITS):
        n = counts[split]
        split_dir = root / split
        image_dir = split_dir / "image"
        image_dir.mkdir(parents=True, exist_ok=True)
        assign_rng = np.random.default_rng([seed, split_index, 0])
        finding_sets = _assign_findings(n, prevalence, assign_rng)
        annotations: list[dict[str, str]] = []
        labels: dict[str, list[str]] = {}
        for i, findings in enumerate(finding_sets):
            image_id = f"{split}_{i + 1:06d}"
            rng = np.random.default_rng([seed, split_index, 1, i])
            case = _sample_case(findings, rng)
            image = _render(case, image_size)
            caption = _case_summary(case, rng)
            image.save(image_dir / f"{image_id}.png", format="PNG", compress_level=6)
            annotations.append({"image_id": image_id, "caption": caption})
            labels[image_id] = sorted(findings)
        _atomic_write_json(split_dir / "labels.json", labels)
        _atomic_write_json(split_dir / "filter_cap.json", {"annotations": annotations})
        logger.info("wrote %d %s images to %s", n, split, split_dir)
    logger.info("synthetic dataset written to %s in %.1f s", root, time.perf_counter() - started)
    return counts


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m xraygpt.data.synthetic --root dataset/synthetic ...``."""
    parser = argparse.ArgumentParser(description="Generate the synthetic chest X-ray dataset (XrayGPT layout).")
    parser.add_argument("--root", default="dataset/synthetic", help="output directory")
    parser.add_argument("--num-train", type=int, default=1200)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=224, help="image width/height in pixels")
    parser.add_argument("--prevalence", type=float, default=0.35, help="per-finding probability")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    runtime.setup_logging(0, getattr(logging, args.log_level.upper(), logging.INFO))
    counts = generate_dataset(
        args.root,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        seed=args.seed,
        image_size=args.image_size,
        prevalence=args.prevalence,
    )
    logger.info("split counts: %s", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
