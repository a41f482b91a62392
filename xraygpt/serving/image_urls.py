"""An `image_url` of a request -> a decoded PIL image, through the library's one reader (`xraygpt.data.images`).

Accepted: `data:[<type>];base64,<data>` URLs (the type is not trusted: the content decides, as
everywhere: PNG, JPEG, ... and DICOM with pydicom, VOI LUT / window applied, MONOCHROME1
inverted), and, only when the server allows local files,
a path on the server's machine (`/path/x.dcm` or `file:///path/x.dcm`).  The server never fetches
http(s) URLs (it is offline by construction).  Sizes are checked from the header before decoding
(`max_pixels`, `min_side`).  Every refusal is an APIError (400) naming where the image was.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from pathlib import Path

from PIL import Image

from xraygpt.serving.protocol import APIError
from xraygpt.data.images import ImageReadError, read_xray


def _refuse(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_image")


def _data_url_bytes(url: str, param: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise _refuse(f"{param}: a data: URL must be base64 (data:<type>;base64,<data>)", param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse(f"{param}: the data: URL's base64 data is damaged", param) from None


def load_image(url: str, param: str, allow_local_files: bool, max_pixels: int, min_side: int) -> Image.Image:
    """The image an `image_url` names (see module docstring), or APIError naming `param`."""
    try:
        if url.startswith("data:"):
            return read_xray(_data_url_bytes(url, param), max_pixels, min_side, name=param)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            raise _refuse(f"{param}: this server does not fetch URLs; send the image as a data: URL", param)
        if not allow_local_files:
            raise _refuse(f"{param}: send the image as a data: URL (base64); local file paths are accepted only "
                          "when the server runs with --allow-local-files", param)
        if scheme == "file":
            path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
        elif scheme and len(scheme) > 1:  # a one-letter scheme is a Windows drive
            raise _refuse(f"{param}: unsupported URL scheme {scheme!r} (data: URLs or local file paths)", param)
        else:
            path = Path(url)
        if not path.is_file():
            raise _refuse(f"{param}: no file {path} on the server", param)
        return read_xray(path, max_pixels, min_side, name=f"{param} ({path.name})")
    except ImageReadError as exc:
        raise _refuse(str(exc), param) from None
