"""train.py --print-memory-plan: parameter counts from the config alone, and the per-GPU arithmetic."""

import json

import pytest
import torch
from omegaconf import OmegaConf

import train
from conftest import REPO, tiny_config
from test_stage0 import stage0_config
from xraygpt import builders
from xraygpt.config import validate
from xraygpt.training.memory_plan import count_parameters, plan

LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 2048,
            "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def llama_7b_shape(tmp_path_factory):
    """A folder holding only the LLaMA-7B config.json: no weights exist to be read."""
    folder = tmp_path_factory.mktemp("llama7b")
    (folder / "config.json").write_text(json.dumps(LLAMA_7B))
    return folder


def _stage0_7b(folder, **run):
    cfg = OmegaConf.load(REPO / "train_configs" / "stage0_llm.yaml")
    cfg.model.llm.path = str(folder)
    cfg.model.finetune = "full"
    cfg.model.llm.dtype = "float32"
    for key, value in run.items():
        cfg.run[key] = value
    return validate(cfg)


def test_llama_7b_counts_and_bytes_match_the_arithmetic(llama_7b_shape):
    h, inter, layers, vocab = 4096, 11008, 32, 32000
    expected = 2 * vocab * h + layers * (4 * h * h + 3 * h * inter + 2 * h) + h
    counts = count_parameters(_stage0_7b(llama_7b_shape).model)
    assert counts.total == counts.trainable == expected == 6_738_415_616
    assert counts.largest_group == 2 * vocab * h + h  # the root: embeddings, LM head, final norm
    ddp = plan(counts, "ddp", 1, torch.float32, batch_size=1, seq_len=512)
    assert ddp.weights + ddp.gradients + ddp.optimizer == 16 * expected  # 16 bytes per parameter in float32
    assert not ddp.fits(80e9)
    fsdp = plan(counts, "fsdp", 8, torch.float32, batch_size=1, seq_len=512)
    assert fsdp.weights + fsdp.gradients + fsdp.optimizer == pytest.approx(16 * expected / 8, abs=3)
    assert fsdp.gathered == 2 * 4 * counts.largest_group
    assert fsdp.activations == ddp.activations and fsdp.fits(80e9)
    offload = plan(counts, "fsdp", 8, torch.float32, batch_size=1, seq_len=512, cpu_offload=True)
    assert offload.weights == offload.gradients == offload.optimizer == 0
    assert offload.host == fsdp.weights + fsdp.gradients + fsdp.optimizer
    checkpointed = plan(counts, "fsdp", 8, torch.float32, batch_size=1, seq_len=512,
                        gradient_checkpointing=True)
    assert checkpointed.activations < fsdp.activations / 10


def test_print_memory_plan_reads_no_weights_and_says_whether_it_fits(llama_7b_shape, capsys):
    options = [f"model.llm.path={llama_7b_shape}", "model.finetune=full", "model.llm.dtype=float32",
               "run.batch_size_train=1"]
    assert train.main(["--cfg-path", str(REPO / "train_configs" / "stage0_llm.yaml"), "--print-memory-plan",
                       "--options", *options]) == 0
    out = capsys.readouterr().out
    assert "6,738,415,616" in out and "ddp on 1 rank(s)" in out and "does NOT fit in 80 GB" in out
    assert train.main(["--cfg-path", str(REPO / "train_configs" / "stage0_llm.yaml"), "--print-memory-plan",
                       "--world-size", "8", "--options", *options, "run.strategy=fsdp"]) == 0
    out = capsys.readouterr().out
    assert "fsdp on 8 rank(s)" in out and "\nfits in 80 GB" in out
    empty = llama_7b_shape.parent / "no_config"
    empty.mkdir(exist_ok=True)
    assert train.main(["--cfg-path", str(REPO / "train_configs" / "stage0_llm.yaml"), "--print-memory-plan",
                       "--options", f"model.llm.path={empty}"]) == 2
    assert "has no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_stage0_counts_equal_the_built_model(tiny_assets, tmp_path, finetune):
    cfg = validate(OmegaConf.create(stage0_config(tiny_assets["llm"], tiny_assets["train"], tmp_path, finetune)))
    model = builders.build_model(cfg.model, 0)
    counts = count_parameters(cfg.model)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_stage1_counts_equal_the_built_model(tiny_assets, tmp_path):
    cfg = validate(OmegaConf.create(tiny_config(tiny_assets, tmp_path)))
    model = builders.build_model(cfg.model, 0)
    counts = count_parameters(cfg.model)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts.image_tokens == model.encoder.num_tokens
