"""Reading an uploaded chest X-ray for the demo: `xraygpt.data.images` with the upload's own file
name in messages (not the server's temporary path) and the demo's size limits.

Every failure is an `UploadError` (the library's `ImageReadError`): one line for the user.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from xraygpt.data.images import ImageReadError, load_xray

UploadError = ImageReadError


def read_xray(path: str | Path, max_pixels: int, min_side: int) -> Image.Image:
    """The uploaded image at `path` (its file name is used in messages), or UploadError."""
    path = Path(path)
    return load_xray(path, max_pixels, min_side, name=f"'{path.name}'").image
