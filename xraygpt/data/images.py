"""Reading a chest X-ray file (or its bytes) into a PIL image: one reader for every entry point.

Used by the datasets (`xraygpt.data.transforms.decode_image`, shards, the feature cache,
`evaluate.py` through them), the preparation's header check (`prepare`), the demo
(`xraygpt.ui.uploads`) and the server.

Accepted: PNG and JPEG (also TIFF, BMP and WebP, which PIL decodes without external programs;
other PIL formats, e.g. EPS through Ghostscript, are never opened), and DICOM (recognised by its
`DICM` marker after the 128-byte preamble, whatever the file is called), when the optional
`pydicom` package (>= 3; extra `dicom`) is installed; a file whose name ends `.dcm` is read as
DICOM too (a data set written without the preamble).  Other files are recognised by their content.

Sizes come from the header before any pixel is decoded: more than `max_pixels` pixels, or a side
shorter than `min_side`, is refused with the real size.  PIL's own decompression-bomb limit is
not used (it would refuse a large image as "not an image" before our message could say why):
our `max_pixels` is the limit.  Raster images are turned upright by their EXIF orientation (a
phone photo of a film).  DICOM pixels go through the modality LUT (rescale) and the VOI LUT or
window, MONOCHROME1 is inverted, a multi-frame file gives its first frame, colour samples are
averaged, and the result is a float32 ("F") image (`to_grayscale` scales it to 8 bits).  The
view (`PA`, `AP`, `LATERAL`, ...) is read from ViewPosition or ViewCodeSequence when present.

Every failure is an `ImageReadError` (a ValueError) whose message is one line naming the file.
"""

from __future__ import annotations

import dataclasses
import io
import struct
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np
from PIL import Image, ImageFile, ImageOps

from xraygpt.errors import first_line

# What PIL raises for files that are not images, truncated or corrupt (struct.error, SyntaxError
# and EOFError come from some plugins' chunk readers), or beyond its own decompression-bomb limit.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)

RASTER_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")
DICOM_PREAMBLE = 128  # a DICOM file holds b"DICM" after a 128-byte preamble
DICOM_SUFFIX = ".dcm"
READABLE = "a PNG or JPEG image (or DICOM, with the optional pydicom package)"

# ViewPosition values (and ViewCodeSequence meanings) -> the view names the project uses.
_VIEW_NAMES = {"PA": "PA", "POSTERO-ANTERIOR": "PA", "POSTEROANTERIOR": "PA",
               "AP": "AP", "ANTERO-POSTERIOR": "AP", "ANTEROPOSTERIOR": "AP",
               "LATERAL": "LATERAL", "LAT": "LATERAL", "LL": "LATERAL", "RL": "LATERAL",
               "LEFT LATERAL": "LATERAL", "RIGHT LATERAL": "LATERAL"}


class ImageReadError(ValueError):
    """An image that cannot be used, explained in one line naming the file."""


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What the header says: size in pixels, format ("PNG", "JPEG", ..., "DICOM") and the DICOM view."""

    width: int
    height: int
    format: str
    view: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class XrayImage:
    """A decoded image with its header (`view` is None unless a DICOM file's tags give it)."""

    image: Image.Image
    header: ImageHeader

    @property
    def view(self) -> Optional[str]:
        return self.header.view


def _name_of(source: str | Path | bytes, name: Optional[str]) -> str:
    if name is not None:
        return name
    return "the image" if isinstance(source, (bytes, bytearray)) else f"'{source}'"


def _head(source: str | Path | bytes, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[: DICOM_PREAMBLE + 4])
    try:
        with open(source, "rb") as f:
            return f.read(DICOM_PREAMBLE + 4)
    except OSError as exc:
        raise ImageReadError(f"cannot read {name} ({exc.strerror or exc}).") from None


def _starts_dicom(fp: BinaryIO) -> bool:
    """Whether the open file starts with the DICOM preamble and marker (read from, then rewound to, 0)."""
    head = fp.read(DICOM_PREAMBLE + 4)
    fp.seek(0)
    return is_dicom_head(head)


def is_dicom_head(head: bytes) -> bool:
    """Whether the first 132 bytes of a file hold the DICOM preamble and the `DICM` marker."""
    return head[DICOM_PREAMBLE:DICOM_PREAMBLE + 4] == b"DICM"


def _dicom_suffix(source: str | Path | bytes) -> bool:
    return not isinstance(source, (bytes, bytearray)) and Path(source).suffix.lower() == DICOM_SUFFIX


def is_dicom(source: str | Path | bytes) -> bool:
    """Whether `source` (a file or its bytes) is read as DICOM: the `DICM` marker after the
    preamble, or a file name ending .dcm (a data set written without the preamble)."""
    try:
        return _dicom_suffix(source) or is_dicom_head(_head(source, ""))
    except ImageReadError:
        return False


def _check_size(width: int, height: int, max_pixels: int, min_side: int, name: str) -> None:
    if width * height > max_pixels:
        raise ImageReadError(f"{name} is {width}x{height} = {width * height:,} pixels, more than the "
                             f"{max_pixels:,} allowed.")
    if min(width, height) < min_side:
        raise ImageReadError(f"{name} is {width}x{height} pixels; a chest X-ray needs at least "
                             f"{min_side} pixels per side.")


# ------------------------------------------------------------------------------------ raster
def _open_raster(fp: BinaryIO, filename: str, name: str) -> ImageFile.ImageFile:
    """The image file object of `fp` (header read, pixels not), tried as each of RASTER_FORMATS.

    The plugins are called directly instead of through `Image.open`, which would run PIL's
    decompression-bomb check and raise before our own `max_pixels` check could report the size.
    """
    Image.init()
    prefix = fp.read(16)
    for fmt in RASTER_FORMATS:
        factory, accept = Image.OPEN[fmt]
        accepted = True if accept is None else accept(prefix)
        if not accepted or isinstance(accepted, str):  # a str: PIL's "support not installed" warning
            continue
        fp.seek(0)
        try:
            return factory(fp, filename)
        except (SyntaxError, IndexError, TypeError, struct.error, OSError, ValueError, EOFError):
            continue
    raise ImageReadError(f"{name} is not {READABLE}.")


def _read_raster(fp: BinaryIO, filename: str, max_pixels: int, min_side: int, name: str) -> XrayImage:
    img = _open_raster(fp, filename, name)
    header = ImageHeader(img.size[0], img.size[1], img.format or "image")
    _check_size(header.width, header.height, max_pixels, min_side, name)
    try:
        img.load()
        upright = ImageOps.exif_transpose(img)  # a new image, turned by the EXIF orientation if any
    except DECODE_ERRORS as exc:
        raise ImageReadError(f"{name} is a damaged {header.format} image ({first_line(exc)}).") from None
    finally:
        img.close()
    return XrayImage(upright, dataclasses.replace(header, width=upright.size[0], height=upright.size[1]))


# ------------------------------------------------------------------------------------- DICOM
def _pydicom(name: str):
    try:
        import pydicom
    except ImportError:
        raise ImageReadError(f"{name} is a DICOM file; reading DICOM needs the optional pydicom package "
                             "(pip install 'pydicom>=3', or the 'dicom' extra). Please use a PNG or JPEG export "
                             "instead.") from None
    return pydicom


def dicom_view(ds) -> Optional[str]:
    """"PA", "AP", "LATERAL" (or another ViewPosition, upper-cased) from a DICOM dataset's tags; None without them."""
    position = str(getattr(ds, "ViewPosition", "") or "").strip().upper()
    if position:
        return _VIEW_NAMES.get(position, position)
    for item in getattr(ds, "ViewCodeSequence", None) or []:
        meaning = str(getattr(item, "CodeMeaning", "") or "").strip().upper()
        if meaning:
            return _VIEW_NAMES.get(meaning, "LATERAL" if "LATERAL" in meaning else meaning)
    return None


def _dicom_dataset(fp: BinaryIO, name: str, pixels: bool, preamble: bool):
    pydicom = _pydicom(name)
    from pydicom.errors import InvalidDicomError

    try:  # force: a .dcm file without the preamble (raw data set)
        ds = pydicom.dcmread(fp, stop_before_pixels=not pixels, force=not preamble)
        header = ImageHeader(int(ds.Columns), int(ds.Rows), "DICOM", dicom_view(ds))
    except (InvalidDicomError, AttributeError, TypeError, KeyError, *DECODE_ERRORS) as exc:
        raise ImageReadError(f"{name} is a DICOM file without a readable image ({first_line(exc)}).") from None
    _check_decoder(ds, name)
    return ds, header


def _check_decoder(ds, name: str) -> None:
    """One clear error when the pixel data is compressed with a transfer syntax no installed decoder reads."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""))
    if not uid or not uid.is_compressed:
        return
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise ImageReadError(f"{name} is a DICOM file compressed as {uid.name} ({uid}), and no installed decoder "
                             "reads it (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or export it "
                             "uncompressed).")


def _read_dicom(fp: BinaryIO, max_pixels: int, min_side: int, name: str, preamble: bool) -> XrayImage:
    ds, header = _dicom_dataset(fp, name, pixels=True, preamble=preamble)
    _check_size(header.width, header.height, max_pixels, min_side, name)
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        arr = ds.pixel_array
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            arr = arr[0]
        if int(getattr(ds, "SamplesPerPixel", 1)) > 1:
            arr = arr.mean(axis=-1)
        else:
            arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    except Exception as exc:  # pydicom's pixel handlers raise many types (missing codec, bad length, ...)
        raise ImageReadError(f"cannot decode the pixels of DICOM file {name} ({first_line(exc)}).") from None
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        arr = arr.max() - arr
    return XrayImage(Image.fromarray(arr), header)  # float32 -> mode "F"


# ------------------------------------------------------------------------------------ public
def _opened(source: str | Path | bytes, name: str) -> tuple[BinaryIO, str]:
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source), ""
    try:
        return open(source, "rb"), str(source)
    except OSError as exc:
        raise ImageReadError(f"cannot read {name} ({exc.strerror or exc}).") from None


def read_header(source: str | Path | bytes, name: Optional[str] = None) -> ImageHeader:
    """The header of an image file or its bytes (no pixel decoded), or ImageReadError.

    A DICOM file passes only when its pixel data can be decoded here (see `_check_decoder`).
    """
    name = _name_of(source, name)
    fp, filename = _opened(source, name)
    with fp:
        preamble = _starts_dicom(fp)
        if preamble or _dicom_suffix(source):
            return _dicom_dataset(fp, name, pixels=False, preamble=preamble)[1]
        img = _open_raster(fp, filename, name)
        with img:
            return ImageHeader(img.size[0], img.size[1], img.format or "image")


def load_xray(source: str | Path | bytes, max_pixels: int, min_side: int = 1, name: Optional[str] = None) -> XrayImage:
    """The decoded image of a file or its bytes, with its header (see module docstring).

    `name` is how messages call the file (default: the quoted path, or "the image" for bytes).
    Raises ImageReadError with one line naming the file.
    """
    name = _name_of(source, name)
    fp, filename = _opened(source, name)
    with fp:
        preamble = _starts_dicom(fp)
        if preamble or _dicom_suffix(source):
            return _read_dicom(fp, max_pixels, min_side, name, preamble)
        return _read_raster(fp, filename, max_pixels, min_side, name)


def read_xray(source: str | Path | bytes, max_pixels: int, min_side: int = 1, name: Optional[str] = None) -> Image.Image:
    """The decoded PIL image of a file or its bytes (`load_xray` without the header)."""
    return load_xray(source, max_pixels, min_side, name).image
