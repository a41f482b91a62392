"""The model: loss definition, batched generation, freezing."""

import pytest
import torch

from xraygpt.data.collate import GenerationCollator, TrainCollator
from xraygpt.models.generation import GenerationSettings


def _samples(n, image_size=112, seed=0):
    g = torch.Generator().manual_seed(seed)
    instructions = [
        "<Img><ImageHere></Img> Describe.",
        "<Img><ImageHere></Img> Write the findings and the impression for this chest radiograph please.",
        "<Img><ImageHere></Img> Summarise this image as a radiologist would, findings first.",
        "<Img><ImageHere></Img> Report.",
    ]
    captions = ["The heart is normal.", "There is a left pleural effusion with blunting of the angle.",
                "Cardiomegaly.", "Two nodules are seen in the right lung. No pneumothorax."]
    return [
        {"image_id": f"s{i}", "pixel_values": torch.randn(3, image_size, image_size, generator=g),
         "instruction": instructions[i % 4], "caption": captions[i % 4]}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    m = tiny_model_factory(seed=1)
    torch.nn.init.normal_(m.projector.proj.weight, std=0.05)
    return m


def test_batch_loss_is_mean_of_sample_losses(model):
    samples = _samples(4)
    collate = TrainCollator(model.prompt_tokenizer)
    batch = collate(samples)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1  # different prompt/target lengths in one batch
    with torch.no_grad():
        out = model(**batch)
        singles = torch.stack([model(**collate([s]))["loss"] for s in samples])
    assert torch.allclose(out["sample_loss"], singles, atol=1e-5)
    assert abs(out["loss"].item() - singles.mean().item()) < 1e-5


def test_batched_greedy_generation_equals_one_at_a_time(model):
    samples = _samples(4, seed=3)
    collate = GenerationCollator(model.prompt_tokenizer)
    model.eval()
    batched = model.generate(**{k: collate(samples)[k] for k in ("pixel_values", "input_ids", "attention_mask")}, generation=GenerationSettings(max_new_tokens=24))
    singles = [model.generate(**{k: collate([s])[k] for k in ("pixel_values", "input_ids", "attention_mask")},
                              generation=GenerationSettings(max_new_tokens=24))[0]
               for s in samples]
    model.train()
    assert batched == singles
    assert all(isinstance(t, str) and "###" not in t for t in batched)
    assert any(t for t in batched)


def test_only_projection_trains_and_frozen_parts_stay_in_eval(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"projector.proj.weight", "projector.proj.bias"}
    model.train()
    assert model.projector.training
    assert not model.encoder.training and not model.llm.training
    assert all(not m.training for m in model.encoder.modules())
    assert set(model.trainable_state_dict()) == trainable | {"projector.input_norm"}


def test_frozen_weights_get_no_gradient(model):
    batch = TrainCollator(model.prompt_tokenizer)(_samples(2))
    model.zero_grad(set_to_none=True)
    model(**batch)["loss"].backward()
    assert model.projector.proj.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("projector"))
    model.zero_grad(set_to_none=True)


def test_pooled_mode_gives_one_image_token(tiny_model_factory):
    m = tiny_model_factory(encoder={"output": "pooled"})
    assert m.encoder.num_tokens == 1 and m.projector.proj.in_features == 64
    batch = TrainCollator(m.prompt_tokenizer)(_samples(2))
    assert (batch["input_ids"] == -200).sum(1).tolist() == [1, 1]
    assert torch.isfinite(m(**batch)["loss"])


def test_trainable_checkpoint_roundtrip_and_errors(model, tiny_model_factory):
    other = tiny_model_factory(seed=5)
    other.load_trainable_state_dict(model.trainable_state_dict(), "test")
    assert torch.equal(other.projector.proj.weight, model.projector.proj.weight)
    with pytest.raises(ValueError, match="lacks trainable weight projector.proj.bias"):
        other.load_trainable_state_dict({"projector.proj.weight": model.projector.proj.weight}, "x")
    with pytest.raises(ValueError, match="shape"):
        other.load_trainable_state_dict({"projector.proj.weight": torch.zeros(2, 2), "projector.proj.bias": torch.zeros(2)}, "x")


def test_projector_norm_normalises_each_token_and_checkpoints_must_match(model, tiny_model_factory):
    normed = tiny_model_factory(seed=5, projector_norm="layernorm")
    assert {n for n, p in normed.named_parameters() if p.requires_grad} == {"projector.proj.weight", "projector.proj.bias"}
    feats = torch.randn(2, normed.encoder.num_tokens, normed.encoder.output_dim) * 7 + 3
    scaled = feats * 5 - 2  # a per-token affine change of the features is normalised away
    with torch.no_grad():
        torch.testing.assert_close(normed.project_features(feats), normed.project_features(scaled), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(model.project_features(feats), model.project_features(scaled), atol=1e-2)
    with pytest.raises(ValueError, match="trained with model.projector_norm=none"):
        normed.load_trainable_state_dict(model.trainable_state_dict(), "plain.pt")
    with pytest.raises(ValueError, match="trained with model.projector_norm=layernorm"):
        model.load_trainable_state_dict(normed.trainable_state_dict(), "normed.pt")
    with pytest.raises(ValueError, match="projector_norm must be one of"):
        tiny_model_factory(projector_norm="batchnorm")
    again = tiny_model_factory(seed=6, projector_norm="layernorm")
    again.load_trainable_state_dict(normed.trainable_state_dict(), "normed.pt")
    assert torch.equal(again.projector.proj.weight, normed.projector.proj.weight)


def test_projector_norm_center_subtracts_the_running_mean_token_of_training(tiny_model_factory):
    centered = tiny_model_factory(seed=5, projector_norm="layernorm_center")
    plain = tiny_model_factory(seed=5, projector_norm="layernorm")
    n, dim = centered.encoder.num_tokens, centered.encoder.output_dim
    first, second = torch.randn(2, n, dim) * 3 + 1, torch.randn(3, n, dim) * 2 - 1
    normed = torch.nn.functional.layer_norm(torch.cat([first, second]), (dim,))
    proj = centered.projector
    with torch.no_grad():
        proj.train()
        centered.project_features(first)
        out = centered.project_features(second)
        # The mean over every token seen while training, however the batches fell.
        torch.testing.assert_close(proj.token_mean, normed.reshape(-1, dim).mean(dim=0), atol=1e-5, rtol=0)
        assert float(proj.token_count) == 5 * n
        torch.testing.assert_close(out, proj.proj(normed[2:] - proj.token_mean), atol=1e-4, rtol=1e-4)
        # Eval mode uses the mean and leaves it alone; a token equal to it projects to the bias alone.
        proj.eval()
        kept = proj.token_mean.clone()
        centered.project_features(torch.randn(4, n, dim) + 5)
        assert torch.equal(proj.token_mean, kept)
        plain.projector.proj.load_state_dict(proj.proj.state_dict())
        assert not torch.allclose(plain.project_features(second), centered.project_features(second), atol=1e-3)
    # The mean travels with the trained weights, and only into a model that centres.
    state = centered.trainable_state_dict()
    assert {"projector.token_mean", "projector.token_count"} <= set(state)
    again = tiny_model_factory(seed=6, projector_norm="layernorm_center")
    again.load_trainable_state_dict(state, "centered.pt")
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.project_features(second), centered.project_features(second))
    with pytest.raises(ValueError, match="trained with model.projector_norm=layernorm_center"):
        plain.load_trainable_state_dict(state, "centered.pt")
    with pytest.raises(ValueError, match="trained with model.projector_norm=layernorm;"):
        again.load_trainable_state_dict(plain.trainable_state_dict(), "plain.pt")


def test_projector_init_zeros_starts_at_the_zero_vector_and_then_learns(model, tiny_model_factory):
    zero = tiny_model_factory(seed=5, projector_init="zeros")
    feats = torch.randn(2, zero.encoder.num_tokens, zero.encoder.output_dim)
    with torch.no_grad():
        assert torch.count_nonzero(zero.project_features(feats)) == 0
        assert torch.count_nonzero(model.project_features(feats)) > 0  # the default keeps nn.Linear's init
    # The gradient at zero weights is not zero: one step moves the image tokens off the zero vector.
    samples = _samples(2, seed=1)
    batch = TrainCollator(zero.prompt_tokenizer)(samples)
    zero.train()
    zero(**batch)["loss"].backward()
    assert zero.projector.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="projector_init must be one of"):
        tiny_model_factory(projector_init="orthogonal")


def test_beam_search_and_sampling_run_batched(model):
    samples = _samples(3, seed=4)
    batch = GenerationCollator(model.prompt_tokenizer)(samples)
    inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    model.eval()
    beams = model.generate(**inputs, generation=GenerationSettings(max_new_tokens=16, num_beams=3))
    sampling = GenerationSettings(max_new_tokens=16, do_sample=True, temperature=0.9, top_p=0.95)
    torch.manual_seed(0)
    sampled_a = model.generate(**inputs, generation=sampling)
    torch.manual_seed(0)
    sampled_b = model.generate(**inputs, generation=sampling)
    model.train()
    assert len(beams) == 3 and all(isinstance(t, str) for t in beams)
    assert sampled_a == sampled_b and len(sampled_a) == 3
