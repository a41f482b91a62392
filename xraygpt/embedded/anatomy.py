"""The synthetic patient: which findings exist, and every random choice behind one radiograph.

`sample_case(findings, rng)` draws a `Case`: pose and exposure jitter, lung, diaphragm, heart and
rib geometry, and the parameters of each finding (side, size, nodule sites), all independent of
the output size; `render.render` draws it.  Four findings exist, in any combination
(`FINDINGS`): cardiomegaly (wider heart shadow, cardiothoracic ratio ~0.6+ instead of ~0.45),
pleural effusion (homogeneous basal opacity with a concave-up meniscus that blunts the
costophrenic angle), pneumothorax (a featureless, very dark lateral/apical rim bounded by a thin
bright visceral pleural line) and nodules (one or two small bright round opacities in a lung
field).

Units and conventions: frontal PA views seen from the front, so the patient's right is on the
viewer's left; side words ("right", "left") always refer to the patient.  Geometry is in
normalised body coordinates ``x, y`` in ``[-1, 1]`` (``x`` to the viewer's right, ``y``
downwards), lengths in the same units (1 = half the image width), angles in radians.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

FINDINGS: tuple[str, ...] = ("cardiomegaly", "pleural_effusion", "pneumothorax", "nodule")

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


def side_sign(side: str) -> float:
    """Viewer-space x sign of a patient side: patient right -> -1 (viewer's left)."""
    return -1.0 if side == "right" else 1.0


def _side_of_x(x: float) -> str:
    """Patient side of a viewer-space x coordinate."""
    return "right" if x < 0.0 else "left"


# --------------------------------------------------------------------------------------
# Case sampling: every random choice for one image, independent of the output size.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
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
        return diaphragm_y(x, self.dome_right, self.dome_left, self.lung_dx)


def diaphragm_y(x: Any, dome_right: float, dome_left: float, lung_dx: float) -> Any:
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


def sample_case(findings: frozenset[str], rng: np.random.Generator) -> Case:
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
    case = Case(
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


def lung_r2(case: Case, x: Any, y: Any, sgn: float) -> Any:
    """Normalised squared radius in the lung ellipse of side ``sgn`` (< 1 inside)."""
    cx = sgn * _LUNG_CX + case.lung_dx
    cy = _LUNG_CY + case.lung_dy
    return ((x - cx) / case.lung_ax) ** 2 + ((y - cy) / case.lung_ay) ** 2


def ptx_ellipse(case: Case, sgn: float) -> tuple[float, float, float, float]:
    """Centre and half-axes of the retracted lung on the pneumothorax side."""
    c = case.ptx_collapse
    cx = sgn * _LUNG_CX + case.lung_dx - sgn * 0.45 * c * case.lung_ax
    ax = case.lung_ax * (1.0 - 0.55 * c)
    ay = case.lung_ay * (1.0 - 0.45 * c)
    cy = _LUNG_CY + case.lung_dy + (case.lung_ay - ay) * 0.95
    return cx, cy, ax, ay


def meniscus_y(case: Case, x: Any, sgn: float) -> Any:
    """Upper border (y) of the effusion on side ``sgn``: concave up, highest laterally."""
    apex = case.dome_right if sgn < 0 else case.dome_left
    level = apex - case.effusion_height
    q = np.clip((sgn * (x - case.lung_dx) - 0.12) / 0.62, 0.0, 1.0)
    return level + 0.05 - case.effusion_rise * q * q


def heart_r2(case: Case, x: Any, y: Any) -> Any:
    """Normalised squared radius in the (tilted) heart ellipse (< 1 inside)."""
    dx = x - case.heart_cx
    dy = y - case.heart_cy
    c, s = math.cos(case.heart_tilt), math.sin(case.heart_tilt)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    # The lower half is stretched so the heart sits on the left hemidiaphragm.
    v = np.where(v > 0.0, 0.55 * v, v) if isinstance(v, np.ndarray) else (0.55 * v if v > 0.0 else v)
    return (u / case.heart_ax) ** 2 + (v / case.heart_ay) ** 2


def _place_nodules(case: Case, cand: np.ndarray, count: int) -> tuple[tuple[float, float, float], ...]:
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


def _nodule_ok(case: Case, x: float, y: float, r: float, sgn: float) -> bool:
    """Whether a nodule at (x, y) of radius r sits well inside aerated, unobscured lung."""
    if lung_r2(case, x, y, sgn) > 0.62:
        return False
    if y > float(case.dome_y(x)) - r - 0.08:
        return False
    if abs(x) < 0.16 + r:
        return False
    if heart_r2(case, x, y) < (1.0 + (r + 0.08) / case.heart_ax) ** 2:
        return False
    f = case.findings
    if "pleural_effusion" in f and side_sign(case.effusion_side) == sgn:
        if y > float(meniscus_y(case, x, sgn)) - r - 0.1:
            return False
    if "pneumothorax" in f and side_sign(case.ptx_side) == sgn:
        cx, cy, ax, ay = ptx_ellipse(case, sgn)
        if ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 > 0.5:
            return False
    return True
