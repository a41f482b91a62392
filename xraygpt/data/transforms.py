"""Image decoding, MedCLIP image preprocessing and caption cleaning (processors are registered).

Written with PIL + torch because timm and torchvision cannot be installed beside the CPU torch
build (they pull a CUDA torch).  Pipeline (MedCLIP's): grayscale -> pad to square (black) ->
resize to `image_size` (bicubic) -> [0, 1] -> normalise with the encoder's mean/std -> 3 channels.

The encoder owns its preprocessing: `MedCLIPVisionEncoder.preprocessing` is an
`ImagePreprocessing` (image size from its Swin config, MedCLIP's mean and std), and the builders
hand it to the image processors; a processor's own `image_size` (a config key kept for older
YAML) must then agree with it.  A processor built alone (no encoder) uses MedCLIP's statistics
at `image_size` (224 when not given).

Decoding (`decode_image`) is `xraygpt.data.images.read_xray`: PNG/JPEG/... and DICOM, EXIF
orientation applied, images with more than `max_pixels` pixels refused from the header before
any pixel is decoded.  Grayscale conversion (`to_grayscale`) handles what PIL's
`convert("L")` gets wrong for X-rays: 16-bit / 32-bit / float images are min-max scaled to
0..255 (PIL would clip them at 255), and images with transparency are composited on black
(PIL would drop the alpha and keep whatever colour transparent pixels carry).
"""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageEnhance

from xraygpt.constants import MEDCLIP_IMAGE_SIZE, MEDCLIP_MEAN, MEDCLIP_STD
from xraygpt.data.images import DECODE_ERRORS, read_xray  # noqa: F401  (DECODE_ERRORS re-exported for the datasets)
from xraygpt.registry import register


# PIL modes holding more than 8 bits per pixel (16-bit PNGs open as I;16*).
WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """What an image encoder expects: square images of `image_size` pixels, grayscale in [0, 1]
    normalised as (x - mean) / std."""

    image_size: int
    mean: float
    std: float


# MedCLIP's released preprocessing (its Swin-T at 224 px); the encoder takes its size from its Swin config.
MEDCLIP_PREPROCESSING = ImagePreprocessing(MEDCLIP_IMAGE_SIZE, MEDCLIP_MEAN, MEDCLIP_STD)


def resolve_preprocessing(image_size: Optional[int], preprocessing: Optional[ImagePreprocessing]) -> ImagePreprocessing:
    """The encoder's `preprocessing` (an `image_size` given too must agree), or MedCLIP's at `image_size`."""
    if preprocessing is None:
        return dataclasses.replace(MEDCLIP_PREPROCESSING, image_size=image_size or MEDCLIP_IMAGE_SIZE)
    if image_size is not None and image_size != preprocessing.image_size:
        raise ValueError(f"image_size {image_size} differs from the encoder's image size {preprocessing.image_size}")
    return preprocessing


def decode_image(source: Path | bytes, max_pixels: int) -> Image.Image:
    """A fully decoded image (PNG, JPEG, ..., DICOM) from a file or its bytes.

    Raises `xraygpt.data.images.ImageReadError` (a ValueError, one of DECODE_ERRORS) naming the
    file when width x height exceeds `max_pixels` (read from the header, before decoding) or the
    data is not a decodable image.
    """
    return read_xray(source, max_pixels)


def to_grayscale(image: Image.Image) -> Image.Image:
    """8-bit grayscale ("L") of any PIL image (see module docstring for wide and transparent modes)."""
    if image.mode in WIDE_MODES:
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.round(scaled).astype(np.uint8), "L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    return image.convert("L")


def pad_to_square(image: Image.Image, fill: int = 0) -> Image.Image:
    """Centre a grayscale image on a square black canvas of side max(W, H)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("L", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def to_normalised_tensor(image: Image.Image, mean: float = MEDCLIP_MEAN, std: float = MEDCLIP_STD) -> torch.Tensor:
    """Grayscale PIL image (H, W) -> (3, H, W) float32, (x/255 - mean) / std, channel repeated."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    t = torch.from_numpy((arr - mean) / std)
    return t.unsqueeze(0).expand(3, -1, -1).contiguous()


@register("processor", "medclip_image_eval")
class MedCLIPImageEval:
    """Deterministic MedCLIP preprocessing: PIL image -> (3, image_size, image_size) tensor.

    Args:
        image_size: output side in pixels; None: the encoder's (see module docstring).
        preprocessing: the encoder's size, mean and std (given by the builders, not by config).
    """

    def __init__(self, image_size: Optional[int] = None, preprocessing: Optional[ImagePreprocessing] = None):
        self.preprocessing = resolve_preprocessing(image_size, preprocessing)
        self.image_size = self.preprocessing.image_size

    def normalise(self, image: Image.Image) -> torch.Tensor:
        return to_normalised_tensor(image, self.preprocessing.mean, self.preprocessing.std)

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        image = pad_to_square(to_grayscale(image))
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return self.normalise(image)


@register("processor", "medclip_image_train")
class MedCLIPImageTrain(MedCLIPImageEval):
    """MedCLIP preprocessing with light augmentation, all driven by the per-sample `rng`.

    Args:
        image_size: output side in pixels; None: the encoder's (see module docstring).
        min_scale: smallest crop side as a fraction of the padded square (1.0 = no crop).
        max_rotation: largest rotation in degrees.
        brightness, contrast: largest relative change (0 = none).
        preprocessing: the encoder's size, mean and std (given by the builders, not by config).
    """

    def __init__(
        self,
        image_size: Optional[int] = None,
        min_scale: float = 0.9,
        max_rotation: float = 5.0,
        brightness: float = 0.1,
        contrast: float = 0.1,
        preprocessing: Optional[ImagePreprocessing] = None,
    ):
        super().__init__(image_size, preprocessing)
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.min_scale = min_scale
        self.max_rotation = max_rotation
        self.brightness = brightness
        self.contrast = contrast

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        rng = rng or random.Random()
        image = pad_to_square(to_grayscale(image))
        side = image.size[0]
        crop = max(1, int(round(side * rng.uniform(self.min_scale, 1.0))))
        x0, y0 = rng.randint(0, side - crop), rng.randint(0, side - crop)
        image = image.crop((x0, y0, x0 + crop, y0 + crop))
        if self.max_rotation > 0:
            image = image.rotate(rng.uniform(-self.max_rotation, self.max_rotation), Image.Resampling.BILINEAR)
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        if self.brightness > 0:
            image = ImageEnhance.Brightness(image).enhance(1.0 + rng.uniform(-self.brightness, self.brightness))
        if self.contrast > 0:
            image = ImageEnhance.Contrast(image).enhance(1.0 + rng.uniform(-self.contrast, self.contrast))
        return self.normalise(image)


@register("processor", "caption")
class CaptionProcessor:
    """Whitespace-normalised summary, truncated to `max_words` words (0 = no limit)."""

    def __init__(self, max_words: int = 0):
        self.max_words = max_words

    def __call__(self, text: str) -> str:
        words = re.sub(r"\s+", " ", text).strip().split(" ")
        if self.max_words > 0:
            words = words[: self.max_words]
        return " ".join(words)
