"""The generation wing: one settings object for every caller, one door into the splice at inference.

- `GenerationSettings` refuses a bad value in one line naming the key (also through config);
- every caller takes the object and defines none of its defaults (signatures and a source scan);
- it maps onto transformers' `generate` and vLLM's SamplingParams in one place each;
- the chat, batch generation and the vLLM prompt path give identical input embeddings for the
  same prompt and image, each through `XrayGPT.embed_inputs`.
"""

import ast
import dataclasses
import inspect

import pytest
import torch
from PIL import Image

import evaluate
from conftest import REPO
from test_vllm_engine import StandInLLM, stand_in_vllm  # noqa: F401 (stand_in_vllm: a fixture)
from xraygpt import chat as chat_module
from xraygpt.chat import ChatSession
from xraygpt.config import ConfigError, load_config, settings_arguments, signature_schema
from xraygpt.evaluation.evaluator import ReportEvaluator
from xraygpt.evaluation.generate import generate_fitting, generate_rows
from xraygpt.evaluation.vllm_engine import VLLMEngine, VLLMRefused, check_decoding, sampling_params
from xraygpt.models.generation import GenerationSettings, GenerationSettingsError
from xraygpt.models.llm_sft import LLMSFT
from xraygpt.models.xraygpt import XrayGPT
from xraygpt.prompting import with_image
from xraygpt.training.runner import IterRunner
from xraygpt.ui.settings import DemoSettings, demo_settings, load_demo_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIELDS = {f.name for f in dataclasses.fields(GenerationSettings)}
SUMMARY = "Describe the findings and impression of this chest X-ray."
CALLERS = [XrayGPT.generate, LLMSFT.generate, ChatSession.stream_reply, VLLMEngine.__call__, generate_rows,
           generate_fitting, ReportEvaluator.__init__, IterRunner.__init__]


@pytest.mark.parametrize("key, value", [
    ("max_new_tokens", 0), ("max_new_tokens", 2.5), ("num_beams", 0), ("do_sample", "yes"),
    ("temperature", -0.1), ("temperature", float("nan")), ("top_p", 0.0), ("top_p", 1.5),
    ("repetition_penalty", 0.0),
])
def test_a_bad_value_is_refused_in_one_line_naming_the_key(key, value):
    with pytest.raises(GenerationSettingsError) as err:
        GenerationSettings(**{key: value})
    assert err.value.key == key and str(err.value).startswith(key) and "\n" not in str(err.value)


def test_sampling_needs_a_temperature_above_zero():
    GenerationSettings(temperature=0.0)  # not sampling: unused
    with pytest.raises(GenerationSettingsError, match="^temperature must be more than 0 to sample"):
        GenerationSettings(do_sample=True, temperature=0.0)


def test_config_names_the_section_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^config key 'evaluation.max_new_tokens' must be a whole number"):
        evaluate.load_eval_config(REPO / "eval_configs" / "tiny_eval.yaml", ["evaluation.max_new_tokens=0"])
    with pytest.raises(ConfigError, match=r"^config key 'run.top_p' must be in \(0, 1\]"):
        load_config(REPO / "train_configs" / "tiny_stage1.yaml", ["run.top_p=2"])
    with pytest.raises(ValueError, match="^demo.num_beams must be"):
        demo_settings(load_demo_config(REPO / "eval_configs" / "demo_tiny.yaml", ["demo.num_beams=0"]))


def test_config_keys_stay_flat_and_become_the_object():
    cfg = evaluate.load_eval_config(REPO / "eval_configs" / "tiny_eval.yaml", ["evaluation.num_beams=2"])
    assert FIELDS <= set(cfg.evaluation) and "generation" not in cfg.evaluation
    kwargs = settings_arguments(ReportEvaluator, cfg.evaluation, "evaluation")
    assert kwargs["generation"] == GenerationSettings(max_new_tokens=cfg.evaluation.max_new_tokens, num_beams=2)
    assert not FIELDS & set(kwargs)
    run = load_config(REPO / "train_configs" / "tiny_stage1.yaml").run
    assert settings_arguments(IterRunner, run, "run")["generation"] == GenerationSettings(max_new_tokens=run.max_new_tokens)


@pytest.mark.parametrize("caller", CALLERS, ids=lambda fn: fn.__qualname__)
def test_callers_take_the_object_and_define_no_default_of_their_own(caller):
    params = inspect.signature(caller).parameters  # annotations as written (some name types imported for checking only)
    assert not FIELDS & set(params), f"{caller.__qualname__} repeats a generation setting as its own parameter"
    taking = [name for name, p in params.items() if p.annotation in (GenerationSettings, "GenerationSettings")]
    assert len(taking) == 1
    default = params[taking[0]].default
    assert default is inspect.Parameter.empty or default == GenerationSettings()


def test_config_schemas_and_the_demo_take_their_defaults_from_the_object():
    default = GenerationSettings()
    for fn in (ReportEvaluator, IterRunner):
        schema = {f.name: f.default for f in dataclasses.fields(signature_schema(fn, "section"))}
        assert {k: schema[k] for k in FIELDS} == dataclasses.asdict(default)
    demo = DemoSettings()
    assert demo.generation() == default
    assert (demo.max_new_tokens, demo.num_beams, demo.temperature) == (default.max_new_tokens, default.num_beams,
                                                                       default.control_temperature)


def test_no_generation_default_is_written_outside_the_settings_object():
    """A literal default for a generation setting anywhere in the library (a signature or a class field)
    would be a second source (None is not one: it says "not given", e.g. an API request's absent field).  Not scanned: report preparation's own LLM summarizer (data/prepare, another
    job) and the embedded default, an application that picks its own settings for its tiny model."""
    found = []
    for path in (REPO / "xraygpt").rglob("*.py"):
        if path.name == "generation.py" or "prepare" in path.parts or "embedded" in (path.stem, *path.parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.posonlyargs + node.args.args
                pairs = list(zip(args[len(args) - len(node.args.defaults):], node.args.defaults))
                pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
                found += [f"{path.name}:{node.name}({a.arg})" for a, d in pairs
                          if a.arg in FIELDS and isinstance(d, ast.Constant) and d.value is not None]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if node.target.id in FIELDS and isinstance(node.value, ast.Constant) and node.value.value is not None:
                    found.append(f"{path.name}:{node.target.id}")
    assert found == []


def test_one_mapping_to_transformers_and_one_to_vllm(tiny_model_factory):
    model = tiny_model_factory(seed=0)
    greedy = GenerationSettings(max_new_tokens=7).generate_kwargs(model.prompt_tokenizer)
    assert greedy["max_new_tokens"] == 7 and greedy["do_sample"] is False
    assert greedy["temperature"] is None and greedy["top_p"] is None and greedy["top_k"] is None
    assert greedy["stop_strings"] == [model.prompt_tokenizer.format.end_sym] == ["###"]
    assert (greedy["pad_token_id"], greedy["eos_token_id"]) == (model.tokenizer.pad_token_id, model.tokenizer.eos_token_id)
    sampling = GenerationSettings(do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.1)
    hf = sampling.generate_kwargs(model.prompt_tokenizer)
    assert (hf["do_sample"], hf["temperature"], hf["top_p"], hf["repetition_penalty"]) == (True, 0.7, 0.9, 1.1)
    assert sampling_params(GenerationSettings(max_new_tokens=5, top_p=0.5), "###") == \
        {"max_tokens": 5, "temperature": 0.0, "top_p": 1.0, "stop": ["###"]}
    assert sampling_params(GenerationSettings(do_sample=True, temperature=0.7, top_p=0.9), "###")["top_p"] == 0.9
    check_decoding(GenerationSettings(do_sample=True, temperature=0.5))
    with pytest.raises(VLLMRefused, match="not beam search"):
        check_decoding(GenerationSettings(num_beams=2))


def test_the_demo_controls_map_onto_the_object():
    assert GenerationSettings.from_controls(12, 3, 0.0) == GenerationSettings(max_new_tokens=12, num_beams=3)
    sampled = GenerationSettings.from_controls(12, 1, 0.8)
    assert sampled.do_sample and sampled.temperature == 0.8 and sampled.control_temperature == 0.8
    with pytest.raises(ValueError, match="^demo.temperature must be 0 or more"):
        DemoSettings(temperature=-0.5)


def test_chat_batch_generation_and_vllm_splice_identically_through_the_one_door(tiny_model_factory, tiny_assets,
                                                                                 stand_in_vllm, monkeypatch):
    """The same prompt and image: the embeddings given to the LLM by the chat and by XrayGPT.generate, and the
    prompt embeddings given to vLLM, are equal, and each path made them with XrayGPT.embed_inputs."""
    model = tiny_model_factory(seed=2).eval()
    torch.nn.init.normal_(model.projector.proj.weight, std=0.05)
    image = Image.open(next((tiny_assets["val"] / "image").iterdir())).copy()
    generation = GenerationSettings(max_new_tokens=2)

    doors, llm_inputs = [], []
    real_embed, real_generate = XrayGPT.embed_inputs, model.llm.generate

    def embed_spy(self, *args, **kwargs):
        doors.append(next(k for k in ("pixel_values", "image_features", "image_tokens") if kwargs.get(k) is not None)
                     if len(args) < 2 else "pixel_values")
        return real_embed(self, *args, **kwargs)

    def generate_spy(**kwargs):
        llm_inputs.append(kwargs["inputs_embeds"].detach().clone())
        return real_generate(**kwargs)

    monkeypatch.setattr(XrayGPT, "embed_inputs", embed_spy)
    monkeypatch.setattr(model.llm, "generate", generate_spy)

    session = ChatSession(model)
    session.set_image(image)
    list(session.stream_reply(SUMMARY, generation))
    pixels = session.process(image).unsqueeze(0)
    ids = model.prompt_tokenizer.encode_prompt(with_image(SUMMARY))
    model.generate(pixels, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), generation)
    sample = {"image_id": "x", "image_source": "x", "instruction": with_image(SUMMARY), "pixel_values": pixels[0]}
    VLLMEngine(model, 0.5, 0)(model, [sample], generation)

    chat_embeds, batch_embeds = llm_inputs
    vllm_embeds = StandInLLM.prompts[0]["prompt_embeds"]
    assert chat_embeds.shape == (1, len(ids), model.llm.config.hidden_size)
    assert torch.equal(chat_embeds, batch_embeds) and torch.equal(batch_embeds[0], vllm_embeds)
    assert doors == ["image_tokens", "pixel_values", "pixel_values"]
    # the chat holds no splice of its own: no sentinel id, no fill id, no call of the pure function
    assert not {"IMAGE_TOKEN_ID", "embed_with_images"} & set(vars(chat_module))
