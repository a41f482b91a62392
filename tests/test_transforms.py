import random

import numpy as np
import pytest
import torch
from PIL import Image

from xraygpt.constants import MEDCLIP_MEAN, MEDCLIP_STD
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval, MedCLIPImageTrain, pad_to_square


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
