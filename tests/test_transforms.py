import random

import numpy as np
import pytest
import torch
from PIL import Image

from xraygpt.constants import MEDCLIP_MEAN, MEDCLIP_STD
from xraygpt.data.transforms import (
    DECODE_ERRORS, CaptionProcessor, MedCLIPImageEval, MedCLIPImageTrain, decode_image, pad_to_square, to_grayscale,
)


def test_eval_normalises_like_medclip():
    img = Image.new("L", (300, 200), 128)
    x = MedCLIPImageEval(224)(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    centre = x[0, 112, 112].item()
    assert centre == pytest.approx((128 / 255 - MEDCLIP_MEAN) / MEDCLIP_STD, abs=1e-5)
    # padded border is black
    assert x[0, 0, 112].item() == pytest.approx((0 - MEDCLIP_MEAN) / MEDCLIP_STD, abs=1e-5)


def test_rgb_input_becomes_grayscale():
    rgb = Image.fromarray(np.full((64, 64, 3), [200, 10, 10], dtype=np.uint8))
    x = MedCLIPImageEval(32)(rgb)
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[2])


def test_pad_to_square():
    assert pad_to_square(Image.new("L", (10, 30))).size == (30, 30)


def test_train_augmentation_is_driven_by_rng():
    img = Image.fromarray((np.random.default_rng(0).random((120, 100)) * 255).astype(np.uint8))
    proc = MedCLIPImageTrain(64)
    a = proc(img, random.Random(1))
    b = proc(img, random.Random(1))
    c = proc(img, random.Random(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (3, 64, 64)


def test_caption_processor():
    assert CaptionProcessor()("  The heart\n is   normal. ") == "The heart is normal."
    assert CaptionProcessor(max_words=2)("a b c") == "a b"


def test_16bit_images_are_min_max_scaled_not_clipped(tmp_path):
    ramp = np.linspace(1000, 4095, 64).astype(np.uint16)[None, :].repeat(8, 0)  # 12-bit data in a 16-bit PNG
    Image.fromarray(ramp).save(tmp_path / "x.png")
    image = decode_image(tmp_path / "x.png", max_pixels=10_000)
    assert image.mode.startswith("I")
    gray = np.asarray(to_grayscale(image))
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255
    assert np.all(np.diff(gray[0].astype(int)) >= 0) and len(np.unique(gray)) > 50  # the ramp survives
    flat = to_grayscale(Image.fromarray(np.full((4, 4), 700, dtype=np.uint16)))
    assert np.asarray(flat).max() == 0


def test_rgba_is_composited_on_black():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 255          # white everywhere ...
    rgba[:2, :, 3] = 255         # ... opaque in the top half, transparent in the bottom half
    gray = np.asarray(to_grayscale(Image.fromarray(rgba, "RGBA")))
    assert np.all(gray[:2] == 255) and np.all(gray[2:] == 0)
    x = MedCLIPImageEval(8)(Image.fromarray(rgba, "RGBA"))
    assert x.shape == (3, 8, 8) and x[0, 0, 4] > x[0, 7, 4]


def test_decode_image_caps_pixels_and_rejects_broken_files(tmp_path):
    Image.new("L", (200, 100), 50).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="is 200x100 = 20,000 pixels, more than the 19,999 allowed"):
        decode_image(tmp_path / "big.png", max_pixels=19_999)
    assert decode_image((tmp_path / "big.png").read_bytes(), max_pixels=20_000).size == (200, 100)
    data = (tmp_path / "big.png").read_bytes()
    for broken in (data[: len(data) // 2], b"not an image at all"):
        with pytest.raises(DECODE_ERRORS):
            decode_image(broken, max_pixels=20_000)
