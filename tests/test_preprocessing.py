"""The encoder owns its image preprocessing; a processor's image_size must agree with it."""

import pytest
import torch
from PIL import Image

from xraygpt import builders
from xraygpt.config import ConfigError
from xraygpt.data.transforms import MEDCLIP_PREPROCESSING, ImagePreprocessing, MedCLIPImageEval
from xraygpt.models.medclip_encoder import MedCLIPVisionEncoder, load_swin_config

KEY = "datasets.mimic.vis_processor.eval"


def test_a_different_image_size_is_refused_naming_both_keys():
    with pytest.raises(ConfigError) as err:
        builders.build_processor({"name": "medclip_image_eval", "image_size": 112}, MEDCLIP_PREPROCESSING, KEY)
    msg = str(err.value)
    assert f"{KEY}.image_size is 112" in msg and "model.encoder.swin_config" in msg and "224" in msg
    assert "\n" not in msg


def test_the_encoder_sets_size_mean_and_std():
    own = ImagePreprocessing(32, 0.5, 0.25)
    same = builders.build_processor({"name": "medclip_image_train", "image_size": 32, "min_scale": 1.0}, own, KEY)
    unset = builders.build_processor({"name": "medclip_image_eval", "image_size": None}, own, KEY)
    assert same.image_size == unset.image_size == 32
    white = unset(Image.new("L", (40, 30), 255))
    assert white.shape == (3, 32, 32) and torch.isclose(white.max(), torch.tensor((1.0 - 0.5) / 0.25))


def test_the_encoder_takes_its_size_from_its_swin_config():
    encoder = MedCLIPVisionEncoder(load_swin_config(None))
    assert encoder.preprocessing == MEDCLIP_PREPROCESSING
    assert MedCLIPImageEval(preprocessing=encoder.preprocessing)(Image.new("L", (9, 9))).shape == (3, 224, 224)
