"""MedCLIP image preprocessing and caption cleaning, registered as processors.

Written with PIL + torch because timm and torchvision cannot be installed beside the CPU torch
build (they pull a CUDA torch).  Pipeline (MedCLIP's): grayscale -> pad to square (black) ->
resize to `image_size` (bicubic) -> [0, 1] -> normalise with MedCLIP's mean/std -> 3 channels.
"""

from __future__ import annotations

import random
import re

import numpy as np
import torch
from PIL import Image, ImageEnhance

from xraygpt.constants import MEDCLIP_IMAGE_SIZE, MEDCLIP_MEAN, MEDCLIP_STD
from xraygpt.registry import register


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
    """Deterministic MedCLIP preprocessing: PIL image -> (3, image_size, image_size) tensor."""

    def __init__(self, image_size: int = MEDCLIP_IMAGE_SIZE):
        self.image_size = image_size

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        image = pad_to_square(image.convert("L"))
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return to_normalised_tensor(image)


@register("processor", "medclip_image_train")
class MedCLIPImageTrain(MedCLIPImageEval):
    """MedCLIP preprocessing with light augmentation, all driven by the per-sample `rng`.

    Args:
        image_size: output side in pixels.
        min_scale: smallest crop side as a fraction of the padded square (1.0 = no crop).
        max_rotation: largest rotation in degrees.
        brightness, contrast: largest relative change (0 = none).
    """

    def __init__(
        self,
        image_size: int = MEDCLIP_IMAGE_SIZE,
        min_scale: float = 0.9,
        max_rotation: float = 5.0,
        brightness: float = 0.1,
        contrast: float = 0.1,
    ):
        super().__init__(image_size)
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.min_scale = min_scale
        self.max_rotation = max_rotation
        self.brightness = brightness
        self.contrast = contrast

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        rng = rng or random.Random()
        image = pad_to_square(image.convert("L"))
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
        return to_normalised_tensor(image)


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
