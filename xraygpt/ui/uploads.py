"""Reading an uploaded chest X-ray into a PIL image, with a user-facing message for every failure.

Accepted: PNG and JPEG (also TIFF, BMP and WebP, which PIL decodes without external programs;
other PIL formats, e.g. EPS through Ghostscript, are never opened), and DICOM when the optional
`pydicom` package (>= 3) is installed.  Files are recognised by their content, not their name.
Sizes are checked from the header before any pixel is decoded: at most `max_pixels` pixels and
at least `min_side` pixels per side.  DICOM pixels go through the modality and VOI LUTs
(rescale, windowing), MONOCHROME1 is inverted, the first frame of a multi-frame file is used,
and the result is a float ("F") image that `to_grayscale` scales to 8 bits.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from xraygpt.data.transforms import DECODE_ERRORS, decode_image
from xraygpt.errors import first_line

RASTER_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")
DICOM_PREAMBLE = 128  # a DICOM file holds b"DICM" after a 128-byte preamble
READABLE = "a PNG or JPEG image (or DICOM, with the optional pydicom package)"


class UploadError(ValueError):
    """An upload that cannot be used, explained for the user in one line naming the file."""


def _check_size(width: int, height: int, max_pixels: int, min_side: int, name: str) -> None:
    if width * height > max_pixels:
        raise UploadError(f"{name} is {width}x{height} = {width * height:,} pixels, more than the "
                          f"{max_pixels:,} this demo accepts; please upload a smaller image.")
    if min(width, height) < min_side:
        raise UploadError(f"{name} is {width}x{height} pixels; a chest X-ray needs at least "
                          f"{min_side} pixels per side.")


def is_dicom(path: Path) -> bool:
    """Whether `path` starts with a DICOM preamble and the `DICM` marker."""
    with path.open("rb") as f:
        head = f.read(DICOM_PREAMBLE + 4)
    return head[DICOM_PREAMBLE:] == b"DICM"


def _read_raster(path: Path, max_pixels: int, min_side: int, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():  # PIL's bomb warning: our own pixel cap applies next
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=RASTER_FORMATS) as img:
                width, height = img.size
                kind = img.format
    except DECODE_ERRORS:
        raise UploadError(f"{name} is not {READABLE}.") from None
    _check_size(width, height, max_pixels, min_side, name)
    try:
        return decode_image(path, max_pixels)
    except DECODE_ERRORS as exc:
        raise UploadError(f"{name} is a damaged {kind} image ({first_line(exc)}).") from None


def _read_dicom(path: Path, max_pixels: int, min_side: int, name: str) -> Image.Image:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise UploadError(f"{name} is a DICOM file; reading DICOM needs the optional pydicom package "
                          "(pip install 'pydicom>=3'). Please upload a PNG or JPEG export instead.") from None
    try:
        ds = pydicom.dcmread(path)
        width, height = int(ds.Columns), int(ds.Rows)
    except (InvalidDicomError, AttributeError, *DECODE_ERRORS) as exc:
        raise UploadError(f"{name} is a DICOM file without a readable image ({first_line(exc)}).") from None
    _check_size(width, height, max_pixels, min_side, name)
    try:
        arr = ds.pixel_array
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            arr = arr[0]
        if int(getattr(ds, "SamplesPerPixel", 1)) > 1:
            arr = arr.mean(axis=-1)
        else:
            arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    except Exception as exc:  # pydicom's pixel handlers raise many types (missing codec, bad length, ...)
        raise UploadError(f"cannot decode the pixels of DICOM file {name} ({first_line(exc)}).") from None
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = arr.max() - arr
    return Image.fromarray(arr)  # float32 -> mode "F"


def read_xray(path: str | Path, max_pixels: int, min_side: int) -> Image.Image:
    """The uploaded image at `path` (its file name is used in messages), or UploadError."""
    path = Path(path)
    name = f"'{path.name}'"
    try:
        dicom = is_dicom(path)
    except OSError as exc:
        raise UploadError(f"cannot read the upload {name} ({exc.strerror}).") from None
    if dicom:
        return _read_dicom(path, max_pixels, min_side, name)
    return _read_raster(path, max_pixels, min_side, name)
