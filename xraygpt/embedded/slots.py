"""Where each finding is drawn, as words on the encoder's token grid: `finding_slot(...)`.

Stage 0 of the embedded pipeline teaches the tiny random LLM to read its image slot by putting
the findings there as words (`<Img>o o effusion o ...</Img>`), one item per image token.  This
module makes that slot mirror the image: the grid x grid cells of the rendered radiograph (the
encoder's 7 x 7 token grid for the tiny Swin at 112 px) in raster order, each holding the word of
the finding drawn in that cell and `FILLER` where nothing is.  The summary names the side and
lung zone of what it reports, so an LLM that learned to read the slot at random positions has
to be taught location again in stage 1 through one linear projection; with the slot laid out
like the image, stage 0 already teaches "a nodule word in the upper-left cells means a right
upper-zone nodule", and stage 1 only has to map what a token shows onto the word.

Where a finding is drawn is measured on the renderer itself, not re-derived from the geometry:
the case is rendered with and without the finding (same anatomy, pose and noise, see
`anatomy.sample_case`), and the cells whose mean absolute difference is at least
`CELL_FRACTION` of the largest cell difference (and at least `MIN_CELL_DIFF` grey levels) hold
the finding's word.  Where two findings change one cell, the larger change wins; a finding left
with no cell (too faint, or outdone everywhere) takes its largest cell, so a slot never leaves
out a finding its summary names.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from xraygpt.embedded.anatomy import FINDINGS, Case
from xraygpt.embedded.render import render

FILLER = "o"
SLOT_WORDS: dict[str, str] = {
    "cardiomegaly": "cardiomegaly",
    "pleural_effusion": "effusion",
    "pneumothorax": "pneumothorax",
    "nodule": "nodule",
}
CELL_FRACTION = 0.35
MIN_CELL_DIFF = 4.0  # grey levels (0-255) of the mean absolute difference over a cell

assert set(SLOT_WORDS) == set(FINDINGS), "every finding needs its slot word"


def finding_slot(case: Case, case_without: Callable[[str], Case], size: int, grid: int) -> str:
    """The slot text of `case`: grid * grid space-separated one-word items in raster order.

    Args:
        case: the drawn case.
        case_without: finding -> the same case without that finding (same anatomy, pose, noise
            and nodule positions).
        size: render size in pixels; must be a multiple of `grid`.
        grid: cells per side (the encoder's token grid).
    """
    if grid < 1 or size % grid:
        raise ValueError(f"render size {size} px is not a multiple of the slot grid {grid}")
    cell = size // grid
    image = np.asarray(render(case, size), dtype=np.float32)
    diffs = {}
    for finding in sorted(case.findings):
        other = np.asarray(render(case_without(finding), size), dtype=np.float32)
        diffs[finding] = np.abs(image - other).reshape(grid, cell, grid, cell).mean(axis=(1, 3))
    best = np.zeros((grid, grid), dtype=np.float32)
    words = np.full((grid, grid), FILLER, dtype=object)
    for finding, diff in diffs.items():
        take = (diff >= max(MIN_CELL_DIFF, CELL_FRACTION * float(diff.max()))) & (diff > best)
        best[take] = diff[take]
        words[take] = SLOT_WORDS[finding]
    for finding, diff in diffs.items():
        if SLOT_WORDS[finding] not in words:
            words[np.unravel_index(int(np.argmax(diff)), diff.shape)] = SLOT_WORDS[finding]
    return " ".join(words.ravel().tolist())
