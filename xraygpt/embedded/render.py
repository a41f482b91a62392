"""Drawing a sampled case: `render(case, size)` and `draw_radiograph(findings, rng, size)`.

Output: a PIL image of mode "L", shape (size, size), uint8 intensities (bright = dense), drawn
with numpy (PIL only for bicubic upsampling of noise lattices and the final image).
Intensities are floats in ``[0, 1]`` until the conversion to 8 bits; geometry is in the
normalised body coordinates of `anatomy` (``[-1, 1]``, ``y`` downwards, one pixel = 2/size).
Every finding stays visible after downscaling to 112 px.  The random fields are drawn in a
fixed order whatever the findings, so the same case state gives the same base image.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from PIL import Image

from xraygpt.embedded.anatomy import (
    Case,
    diaphragm_y,
    heart_r2,
    lung_r2,
    meniscus_y,
    ptx_ellipse,
    sample_case,
    side_sign,
)


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


def nodule_opacity(x: np.ndarray, y: np.ndarray, nx: float, ny: float, nr: float, edge: float) -> np.ndarray:
    """Intensity added by a round nodule at (nx, ny) of radius nr (body units), soft edge `edge`."""
    d = np.sqrt((x - nx) ** 2 + (y - ny) ** 2) / nr
    prof = np.sqrt(np.clip(1.0 - d * d, 0.0, 1.0)) * 0.85 + 0.15 * _ramp(1.0 - d, edge / nr)
    return 0.30 * prof


def expose(img: np.ndarray, mottle: np.ndarray, grain: np.ndarray, case: Any) -> np.ndarray:
    """Float intensities -> uint8 with the case's exposure: mottle, grain (`noise_sigma`), `gamma`,
    `contrast` and `brightness` (a frontal `Case` or a lateral case: the same fields)."""
    img = img * (1.0 + 0.04 * mottle) + case.noise_sigma * grain
    img = np.clip(img, 0.0, 1.0)
    img = np.clip((img ** case.gamma - 0.45) * case.contrast + 0.45 + case.brightness, 0.0, 1.0)
    return (img * 255.0 + 0.5).astype(np.uint8)


# Pixels per row block in `render`: numpy temporaries of one block stay < 128 KiB.
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


def render(case: Case, size: int) -> Image.Image:
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
    case: Case,
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
    dome = diaphragm_y(x, case.dome_right, case.dome_left, case.lung_dx)
    lung_alpha = np.zeros_like(img)
    side_alpha = {}
    side_wide = {}  # slightly dilated masks, so findings also cover the soft lung edge
    for sgn in (-1.0, 1.0):
        rho = (1.0 - np.sqrt(lung_r2(case, x, y, sgn))) * case.lung_ax
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
        sgn = side_sign(case.ptx_side)
        pcx, pcy, pax, pay = ptx_ellipse(case, sgn)
        rr = np.sqrt(((x - pcx) / pax) ** 2 + ((y - pcy) / pay) ** 2)
        outside = _ramp((rr - 1.0) * pax, edge)
        dark = side_wide[sgn] * outside
        img = _blend(img, 0.03 + 0.006 * mottle, dark)
        # Collapsed lung is a little denser.
        img = img + 0.035 * side_alpha[sgn] * (1.0 - outside)
        line = np.exp(-(((rr - 1.0) * pax) / (0.9 * px)) ** 2) * side_alpha[sgn]
        img = img + 0.30 * line
    if "pleural_effusion" in f:
        sgn = side_sign(case.effusion_side)
        men = meniscus_y(case, x, sgn)
        fluid = _ramp(y - men, 0.035) * side_wide[sgn]
        # Same density as the subdiaphragmatic soft tissue: the hemidiaphragm is effaced.
        img = _blend(img, tissue + 0.03, fluid)

    # --- Mediastinum, heart, spine, trachea. ------------------------------------------
    med_w = 0.105 + 0.045 * np.exp(-((y + 0.30) / 0.09) ** 2) * (x > 0)  # aortic knob
    med = _ramp(med_w - ax_, 4 * px) * _ramp(y + 0.95, 8 * px)
    img = _blend(img, 0.56 + 0.03 * mottle, med * body)
    hr2 = heart_r2(case, x, y)
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
            img = img + nodule_opacity(x, y, nx, ny, nr, edge)

    # --- Exposure, noise, 8-bit. ----------------------------------------------------------
    return expose(img, mottle, grain, case)


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
    return render(sample_case(frozenset(findings), rng), size)

