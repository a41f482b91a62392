import logging

import pytest
import torch
from safetensors.torch import save_file

from xraygpt.models.medclip_encoder import (
    EncoderCheckpointError,
    MedCLIPVisionEncoder,
    load_medclip_vision_encoder,
    load_swin_config,
    map_swin_v4_keys,
)


@pytest.fixture(scope="module")
def swin_t():
    torch.manual_seed(0)
    return MedCLIPVisionEncoder(load_swin_config(None), 512, "patch")


@pytest.fixture(scope="module")
def medclip_release(swin_t, tmp_path_factory):
    """A full-size checkpoint in MedCLIP's released format: 4.x names + text model + logit_scale."""
    state = swin_t.medclip_state_dict(names="v4")
    state["text_model.model.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    state["text_model.projection_head.weight"] = torch.randn(512, 8)
    state["logit_scale"] = torch.tensor(4.6)
    folder = tmp_path_factory.mktemp("medclip")
    torch.save(state, folder / "pytorch_model.bin")
    return folder, state


def test_swin_t_size_and_shapes(swin_t):
    backbone = sum(p.numel() for p in swin_t.model.parameters())
    assert backbone == 27_519_354
    assert swin_t.num_tokens == 49 and swin_t.output_dim == 768
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = swin_t(x)
        swin_t.output = "pooled"
        pooled = swin_t(x)
        swin_t.output = "patch"
    assert tokens.shape == (2, 49, 768)
    assert pooled.shape == (2, 1, 512)
    assert pooled.squeeze(1).shape == (2, 512)


def test_release_uses_v4_names(medclip_release):
    _, state = medclip_release
    keys = list(state)
    assert "vision_model.model.encoder.layers.0.blocks.0.attention.self.query.weight" in keys
    assert "vision_model.model.encoder.layers.0.blocks.0.intermediate.dense.weight" in keys
    assert "vision_model.model.encoder.layers.0.blocks.0.output.dense.weight" in keys
    assert "vision_model.model.encoder.layers.0.blocks.0.attention.output.dense.weight" in keys
    assert "vision_model.model.encoder.layers.0.blocks.0.attention.self.relative_position_index" in keys
    assert "vision_model.projection_head.weight" in keys
    assert not any(".q_proj." in k or ".mlp." in k for k in keys)


def test_release_loads_strictly_with_identical_weights(medclip_release, swin_t, caplog):
    folder, _ = medclip_release
    with caplog.at_level(logging.INFO):
        enc = load_medclip_vision_encoder(str(folder), None, "patch")
    assert "ignored 3 text-model/logit_scale tensors" in caplog.text
    for (k, a), (_, b) in zip(enc.state_dict().items(), swin_t.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(1, 3, 224, 224)
    enc.eval(), swin_t.eval()  # the config has stochastic depth (drop_path_rate 0.1) in train mode
    with torch.no_grad():
        assert torch.allclose(enc(x), swin_t(x))


def test_file_path_and_v5_names_and_safetensors(medclip_release, swin_t, tmp_path):
    folder, _ = medclip_release
    load_medclip_vision_encoder(str(folder / "pytorch_model.bin"))
    v5 = swin_t.medclip_state_dict(names="v5")
    assert any(".q_proj." in k for k in v5)
    torch.save(v5, tmp_path / "v5.bin")
    enc = load_medclip_vision_encoder(str(tmp_path / "v5.bin"))
    assert torch.equal(enc.projection_head.weight, swin_t.projection_head.weight)
    save_file({k: v.contiguous() for k, v in v5.items()}, str(tmp_path / "model.safetensors"))
    enc = load_medclip_vision_encoder(str(tmp_path))
    assert torch.equal(enc.model.layernorm.weight, swin_t.model.layernorm.weight)


def test_missing_backbone_key_fails_naming_it(medclip_release, tmp_path):
    _, state = medclip_release
    broken = dict(state)
    key = "vision_model.model.encoder.layers.2.blocks.3.intermediate.dense.weight"
    del broken[key]
    torch.save(broken, tmp_path / "pytorch_model.bin")
    with pytest.raises(EncoderCheckpointError, match="layers.2.blocks.3.mlp.fc1.weight"):
        load_medclip_vision_encoder(str(tmp_path))


def test_other_architecture_fails(tmp_path, tiny_assets):
    # the tiny (3-stage, 48-d) checkpoint is not a Swin-T
    with pytest.raises(EncoderCheckpointError, match="another architecture"):
        load_medclip_vision_encoder(str(tiny_assets["encoder"]), None)


def test_unreadable_and_missing(tmp_path):
    with pytest.raises(EncoderCheckpointError, match="does not exist"):
        load_medclip_vision_encoder(str(tmp_path / "nope.bin"))
    with pytest.raises(EncoderCheckpointError, match="holds none of"):
        load_medclip_vision_encoder(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderCheckpointError, match="cannot read"):
        load_medclip_vision_encoder(str(tmp_path))


class Evil:
    """Any non-tensor object: weights_only loading must refuse to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"vision_model.x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(EncoderCheckpointError, match="cannot read"):
        load_medclip_vision_encoder(str(tmp_path))


def test_key_mapping_is_idempotent():
    keys = {
        "encoder.layers.1.blocks.0.attention.self.query.weight": "encoder.layers.1.blocks.0.attention.q_proj.weight",
        "encoder.layers.1.blocks.0.attention.output.dense.bias": "encoder.layers.1.blocks.0.attention.o_proj.bias",
        "encoder.layers.1.blocks.0.output.dense.bias": "encoder.layers.1.blocks.0.mlp.fc2.bias",
        "encoder.layers.1.blocks.0.attention.self.relative_position_bias_table":
            "encoder.layers.1.blocks.0.attention.relative_position_bias.relative_position_bias_table",
    }
    state = {k: torch.zeros(1) for k in keys}
    state["encoder.layers.1.blocks.0.attention.self.relative_position_index"] = torch.zeros(1)
    once = map_swin_v4_keys(state)
    assert set(once) == set(keys.values())
    assert set(map_swin_v4_keys(once)) == set(once)
