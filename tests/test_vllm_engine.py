"""`evaluation.backend: vllm` against a stand-in of vLLM's offline API.

vLLM needs a CUDA build of torch and cannot be installed beside this project's CPU torch, so a
stand-in `vllm` module takes its place (and torch is told a GPU exists, which the backend asks
for; everything still runs on the CPU): `LLM(model=..., enable_prompt_embeds=True, ...)` loads
the LLM folder with transformers, and `LLM.generate([{"prompt_embeds": (L, D)}], SamplingParams)`
decodes each prompt on its own (no padding; greedy at temperature 0) up to `max_tokens` or a
`stop` string, returning outputs whose `outputs[0].token_ids` hold the generated ids, as vLLM's do.  These tests
show what the engine hands vLLM and how it reads the answers back (and that the result equals
the transformers backend); they cannot show that vLLM itself accepts it.
"""

import importlib.machinery
import re
import sys
import types

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import evaluate_split
from xraygpt.data.collate import GenerationCollator
from xraygpt.evaluation.evaluator import ReportEvaluator
from xraygpt.evaluation.generate import load_samples
from xraygpt.evaluation.vllm_engine import VLLMEngine, VLLMRefused
from xraygpt.models.generation import GenerationSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class StandInLLM:
    """Records how it was built and what it was asked; answers greedily with the folder's transformers LLM."""

    built: list[dict] = []
    prompts: list[dict] = []
    params: list = []

    def __init__(self, model: str, tokenizer: str, dtype: str, gpu_memory_utilization: float, seed: int,
                 enable_prompt_embeds: bool):
        StandInLLM.built.append({"model": model, "tokenizer": tokenizer, "dtype": dtype, "seed": seed,
                                 "gpu_memory_utilization": gpu_memory_utilization,
                                 "enable_prompt_embeds": enable_prompt_embeds})
        self.lm = AutoModelForCausalLM.from_pretrained(model, local_files_only=True, dtype=getattr(torch, dtype)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)

    @torch.no_grad()
    def generate(self, prompts: list[dict], params, use_tqdm: bool = True) -> list:
        StandInLLM.prompts += prompts
        StandInLLM.params.append(params)
        outputs = []
        for prompt in prompts:
            embeds = prompt["prompt_embeds"]
            ids = self.lm.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, len(embeds), dtype=torch.long),
                                   max_new_tokens=params.max_tokens, do_sample=params.temperature > 0,
                                   temperature=params.temperature or None, top_p=params.top_p,
                                   stop_strings=params.stop, tokenizer=self.tokenizer,
                                   pad_token_id=self.tokenizer.pad_token_id)[0]
            outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=ids.tolist())]))
        return outputs


class StandInSamplingParams:
    def __init__(self, max_tokens: int, temperature: float, top_p: float, stop: list[str]):
        self.max_tokens, self.temperature, self.top_p, self.stop = max_tokens, temperature, top_p, stop


@pytest.fixture
def stand_in_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = StandInLLM, StandInSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for record in (StandInLLM.built, StandInLLM.prompts, StandInLLM.params):
        record.clear()
    return module


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    m = tiny_model_factory(seed=2)
    torch.nn.init.normal_(m.projector.proj.weight, std=0.05)
    return m.eval()


def test_vllm_backend_gives_the_transformers_summaries(model, val_dataset, tiny_assets, tmp_path, stand_in_vllm):
    reference, _ = evaluate_split(model, val_dataset, tmp_path / "hf", batch_size=4)
    rows, generation = evaluate_split(model, val_dataset, tmp_path / "vllm", batch_size=4, backend="vllm",
                                vllm_gpu_memory_utilization=0.3)
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in reference]
    assert any(r["prediction"] for r in rows)
    assert generation["backend"] == "vllm"
    assert StandInLLM.built == [{"model": str(tiny_assets["llm"]), "tokenizer": str(tiny_assets["llm"]),
                                 "dtype": "float32", "seed": 42, "gpu_memory_utilization": 0.3,
                                 "enable_prompt_embeds": True}]
    params = StandInLLM.params[0]
    assert (params.max_tokens, params.temperature, params.top_p, params.stop) == (16, 0.0, 1.0, ["###"])
    assert len(StandInLLM.params) == 2 and len(StandInLLM.prompts) == 8  # batch_size (4) prompts per vLLM call
    # a second run finds every image predicted: no engine is built
    StandInLLM.built.clear()
    _, generation = evaluate_split(model, val_dataset, tmp_path / "vllm", batch_size=4, backend="vllm")
    assert not StandInLLM.built and generation["final_batch_size"] is None


def test_sampling_settings_reach_vllm(model, val_dataset, stand_in_vllm):
    samples = load_samples(val_dataset, [0, 1])
    torch.manual_seed(0)
    answers = VLLMEngine(model, 0.5, 7)(model, samples,
                                        GenerationSettings(max_new_tokens=3, do_sample=True, temperature=0.7, top_p=0.9))
    assert len(answers) == 2 and StandInLLM.built[0]["seed"] == 7
    params = StandInLLM.params[0]
    assert (params.max_tokens, params.temperature, params.top_p) == (3, 0.7, 0.9)


def test_prompt_embeds_are_each_samples_spliced_embeddings_without_padding(model, val_dataset, stand_in_vllm):
    samples = load_samples(val_dataset, list(range(len(val_dataset))))
    VLLMEngine(model, 0.5, 0)(model, samples, GenerationSettings(max_new_tokens=2))
    lengths = [len(model.prompt_tokenizer.encode_prompt(s["instruction"])) for s in samples]
    assert len(set(lengths)) > 1  # the batch was left-padded
    assert [tuple(p["prompt_embeds"].shape) for p in StandInLLM.prompts] == \
        [(n, model.llm.config.hidden_size) for n in lengths]
    for sample, prompt in zip(samples, StandInLLM.prompts):
        alone = GenerationCollator(model.prompt_tokenizer)([sample])
        expected = model.embed_inputs(alone["input_ids"], alone["pixel_values"])[0]
        torch.testing.assert_close(prompt["prompt_embeds"], expected)
        assert prompt["prompt_embeds"].device.type == "cpu" and set(prompt) == {"prompt_embeds"}


@pytest.mark.parametrize("settings, needle", [
    ({"generation": GenerationSettings(num_beams=2)}, "not beam search (num_beams 2)"),
    ({"generation": GenerationSettings(repetition_penalty=1.2)}, "takes no repetition_penalty (1.2)"),
    ({"vllm_gpu_memory_utilization": 0.0}, "evaluation.vllm_gpu_memory_utilization must be in (0, 1]"),
    ({"no_gpu": True}, "needs a CUDA GPU and torch sees none"),
    ({"quantized": True}, "set model.llm.quantization none"),
    ({"trained_llm": True}, "without LLM weights trained into model.ckpt"),
    ({"no_folder": True}, "needs the LLM loaded from a folder"),
])
def test_what_vllm_cannot_take_is_refused_before_generating(model, tmp_path, stand_in_vllm, monkeypatch,
                                                            settings, needle):
    if settings.pop("no_gpu", False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if settings.pop("quantized", False):
        monkeypatch.setattr(model.llm, "hf_quantizer", object(), raising=False)
    if settings.pop("trained_llm", False):
        monkeypatch.setattr(model, "frozen_modules", ("encoder",))
    if settings.pop("no_folder", False):
        monkeypatch.setattr(model.llm, "name_or_path", "")
    with pytest.raises(VLLMRefused, match=re.escape(needle)):
        ReportEvaluator(model, str(tmp_path / "out"), backend="vllm", **settings)
    assert not StandInLLM.built and not (tmp_path / "out").exists()


def test_the_engine_itself_refuses_beam_search(model, val_dataset, stand_in_vllm):
    engine = VLLMEngine(model, 0.5, 0)
    with pytest.raises(VLLMRefused, match="not beam search"):
        engine(model, load_samples(val_dataset, [0]), GenerationSettings(max_new_tokens=2, num_beams=3))
    assert not StandInLLM.prompts


def test_only_what_makes_the_prompts_goes_to_the_device(model, val_dataset, tmp_path, stand_in_vllm, monkeypatch):
    moved = []
    real_to = torch.nn.Module.to

    def recording_to(self, *args, **kwargs):
        moved.append(self)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    evaluate_split(model, val_dataset, tmp_path / "vllm", batch_size=8, backend="vllm")
    assert moved[:3] == [model.encoder, model.projector, model.llm.get_input_embeddings()]
    assert model not in moved and model.llm not in moved  # vLLM runs the LLM: its body is never placed here


def test_vllm_backend_refuses_several_processes(model, val_dataset, tmp_path, stand_in_vllm, monkeypatch):
    from xraygpt.evaluation import evaluator as evaluator_module

    two_ranks = types.SimpleNamespace(rank=0, world_size=2, is_main=True, device=torch.device("cpu"))
    monkeypatch.setattr(evaluator_module.runtime, "init_distributed", lambda device, backend: two_ranks)
    evaluator = ReportEvaluator(model, str(tmp_path / "out"), backend="vllm", progress=False)
    with pytest.raises(ValueError, match="evaluation.backend vllm runs in one process"):
        evaluator.run(val_dataset)
    assert not StandInLLM.built and not (tmp_path / "out").exists()
