"""No wasted backward work (counted FLOPs), gradient checkpointing and torch.compile give the same
training, CUDA-only options refused on CPU."""

import json

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils.flop_counter import FlopCounterMode

from conftest import tiny_config, write_yaml
from test_model import _samples
from test_train import _run_in_process
from xraygpt.data.collate import TrainCollator
from xraygpt.models.llm import LLMLoadError, checkpoint_decoder_layers, load_llm
from xraygpt.training.checkpoint import read_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _flops(model, batch):
    """(forward FLOPs per top-level part, backward FLOPs) of one training step, as torch counts matmuls."""
    with FlopCounterMode(display=False) as forward:
        loss = model(**batch)["loss"]
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    counts = {name: sum(ops.values()) for name, ops in forward.get_flop_counts().items()}
    parts = {"encoder": counts["XrayGPT.encoder"], "projector": counts["XrayGPT.projector"],
             # the decoder and the LM head are called directly, not through the LLM's own forward
             "llm": sum(v for k, v in counts.items() if k.startswith("XrayGPT.llm.") and k.count(".") == 2)}
    return parts, backward.get_total_flops()


@pytest.mark.parametrize("freeze_llm", [True, False])
def test_backward_computes_no_weight_gradient_of_a_frozen_layer(tiny_model_factory, freeze_llm):
    """Frozen LLM: backward = the LLM's input-gradient matmuls (one per forward matmul) + the
    projection's weight gradient, i.e. about the LLM's forward FLOPs (4N per token in all, not 6N);
    nothing for the encoder.  The unfrozen control shows the counter sees weight gradients."""
    model = tiny_model_factory(freeze_llm=freeze_llm)
    batch = TrainCollator(model.prompt_tokenizer)(_samples(4))
    fwd, bwd = _flops(model, batch)
    assert fwd["encoder"] > 0 and fwd["llm"] > 0
    if freeze_llm:
        assert 0.9 * fwd["llm"] <= bwd <= 1.02 * (fwd["llm"] + fwd["projector"])
        assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("projector."))
    else:
        assert bwd >= 1.8 * fwd["llm"]
    assert model.projector.proj.weight.grad is not None


def test_encoder_and_token_embeddings_are_outside_the_graph(tiny_model_factory):
    model = tiny_model_factory()
    seen = {}
    hooks = [model.encoder.register_forward_hook(lambda m, i, o: seen.update(encoder=o.requires_grad)),
             model.llm.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.update(embed=o.requires_grad))]
    model(**TrainCollator(model.prompt_tokenizer)(_samples(2)))["loss"].backward()
    for h in hooks:
        h.remove()
    assert seen == {"encoder": False, "embed": False}


def test_gradient_checkpointing_recomputes_layers_for_the_same_loss_and_gradient(tiny_model_factory):
    batch = TrainCollator(tiny_model_factory().prompt_tokenizer)(_samples(3))
    results = []
    for checkpointed in (False, True):
        model = tiny_model_factory(seed=3)
        if checkpointed:
            assert checkpoint_decoder_layers(model.llm) == 2
        calls = []
        model.llm.get_decoder().layers[0].self_attn.register_forward_hook(lambda *_: calls.append(1))
        loss = model(**batch)["loss"]
        loss.backward()
        with torch.no_grad():
            model(**batch)  # no grad: never recomputed
        results.append((loss.item(), model.projector.proj.weight.grad.clone(), len(calls)))
    (loss_a, grad_a, calls_a), (loss_b, grad_b, calls_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-6) and torch.allclose(grad_a, grad_b, atol=1e-6)
    assert (calls_a, calls_b) == (2, 3)  # forward (+ recompute in backward) + the no-grad forward


def test_runner_speed_switches_train_the_same(tiny_assets, tmp_path):
    """run.gradient_checkpointing + run.compile (the `eager` backend: dynamo without code generation,
    so the test stays fast on CPU) give the plain run's projection; only the projection has optimizer
    state and gradients; amp is off on CPU."""
    finals = []
    for name, switches in (("plain", {}), ("fast", {"gradient_checkpointing": True, "compile": "eager"})):
        cfg = tiny_config(tiny_assets, tmp_path / name, iters_per_epoch=2, sample_generations=0, **switches)
        model, runner = _run_in_process(write_yaml(cfg, tmp_path / f"{name}.yaml"))
        graphs = counters["stats"]["unique_graphs"]
        runner.train()
        assert (counters["stats"]["unique_graphs"] > graphs) == bool(switches)  # the layers ran compiled
        assert runner.amp_dtype is None
        assert {id(p) for p in runner.optimizer.state} == {id(p) for p in model.projector.parameters()}
        assert all(p.grad is None for p in model.parameters())  # zeroed with set_to_none after each step
        finals.append(read_checkpoint(tmp_path / name / "checkpoints" / "checkpoint_last.pt")["model"])
        records = [json.loads(x) for x in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        assert all(0 < r["real_token_fraction"] <= 1 for r in records)
    for key in finals[0]:
        assert torch.allclose(finals[0][key], finals[1][key], atol=1e-5), key


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_flash_attention_refused_without_cuda(tiny_assets):
    with pytest.raises(LLMLoadError, match="flash_attention_2 needs a CUDA GPU") as err:
        load_llm(str(tiny_assets["llm"]), attn_implementation="flash_attention_2")
    assert "\n" not in str(err.value)
