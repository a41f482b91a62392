"""Low-resource inference: the LLM in 8 or 4 bits through bitsandbytes (on CPU here), the
encoder and projection in full precision; clear errors where it cannot apply."""

import importlib.util
import json
import os

import pytest
import torch

from conftest import REPO
from test_evaluate import checkpoint, eval_config, read_rows, run_main  # noqa: F401 (checkpoint: a fixture)
from xraygpt.models.llm import LLMLoadError, is_quantized, load_llm
from xraygpt.models.generation import GenerationSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
bnb_missing = importlib.util.find_spec("bitsandbytes") is None
needs_bnb = pytest.mark.skipif(bnb_missing, reason="bitsandbytes is not installed (pip install -e .[quant])")


def _linear_types(llm) -> set[str]:
    return {type(m).__name__ for m in llm.model.layers.modules() if "Linear" in type(m).__name__}


@needs_bnb
@pytest.mark.parametrize("bits,layer", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_quantized_llm_has_bnb_linears_less_memory_and_close_logits(tiny_assets, bits, layer):
    full, tok = load_llm(str(tiny_assets["llm"]), dtype="float32")
    quant, _ = load_llm(str(tiny_assets["llm"]), dtype="float32", quantization=bits)
    assert is_quantized(quant) and not is_quantized(full)
    assert _linear_types(quant) == {layer}
    assert quant.get_input_embeddings().weight.dtype == torch.float32  # the embedding table is not quantized
    assert quant.get_memory_footprint() < full.get_memory_footprint()
    ids = torch.tensor([tok("The heart is enlarged. There is a small left pleural effusion.")["input_ids"]])
    with torch.no_grad():
        ref, out = full(ids).logits.float(), quant(ids).logits.float()
    # the quantization error is small next to the spread of the logits (NF4 is coarser than int8)
    limit = {"8bit": 0.05, "4bit": 0.3}[bits]
    assert (out - ref).abs().mean() < limit * ref.std()


@needs_bnb
def test_xraygpt_with_a_4bit_llm_generates_and_trains_only_the_projection(tiny_model_factory):
    from test_model import _samples
    from xraygpt.data.collate import GenerationCollator, TrainCollator

    model = tiny_model_factory(llm={"quantization": "4bit"})
    assert is_quantized(model.llm)
    assert all(p.dtype == torch.float32 for p in model.encoder.parameters())
    assert model.projector.proj.weight.dtype == torch.float32
    samples = _samples(3)
    model.zero_grad(set_to_none=True)
    model(**TrainCollator(model.prompt_tokenizer)(samples))["loss"].backward()
    assert model.projector.proj.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("projector"))
    batch = GenerationCollator(model.prompt_tokenizer)(samples)
    model.eval()
    texts = model.generate(**{k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")},
                           generation=GenerationSettings(max_new_tokens=8))
    model.train()
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_quantization_errors_name_the_key(tiny_assets, monkeypatch):
    with pytest.raises(LLMLoadError, match="quantization must be one of"):
        load_llm(str(tiny_assets["llm"]), quantization="3bit")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(LLMLoadError, match=r"quantization=4bit needs the bitsandbytes package: pip install -e .\[quant\]"):
        load_llm(str(tiny_assets["llm"]), quantization="4bit")


@needs_bnb
def test_stage0_refuses_a_quantized_llm(tiny_assets):
    from xraygpt.models.llm_sft import LLMSFT
    from xraygpt.prompting import PromptFormat

    llm, tok = load_llm(str(tiny_assets["llm"]), dtype="float32", quantization="8bit")
    with pytest.raises(ValueError, match="stage 0 trains the LLM: load it unquantized"):
        LLMSFT(llm, tok, PromptFormat(), finetune="lora")



@needs_bnb
def test_evaluate_runs_end_to_end_with_a_4bit_llm(tiny_assets, checkpoint, tmp_path, capsys):
    """evaluate.py with `model.llm.quantization=4bit`: every image gets a prediction, metrics are written."""
    out = tmp_path / "out"
    code, _, err = run_main(eval_config(tiny_assets, checkpoint, out), tmp_path / "eval.yaml", capsys,
                            ["model.llm.quantization=4bit"])
    assert code == 0, err
    rows = read_rows(out)
    assert len(rows) == 8 and all(isinstance(r["prediction"], str) for r in rows)
    assert json.loads((out / "metrics.json").read_text())["num_scored"] == 8
    assert any("4bit linear layers" in line for line in err)  # the load is logged


HUB_FREE_PATHS = {
    "4bit LLM": "load_llm({llm!r}, dtype='float32', quantization='4bit')\n",
    # peft imports bitsandbytes when it is installed
    "stage-0 LoRA": ("from xraygpt.prompting import PromptFormat\n"
                     "from xraygpt.models.llm_sft import LLMSFT\n"
                     "LLMSFT(*load_llm({llm!r}, dtype='float32'), PromptFormat(), finetune='lora')\n"),
}


@needs_bnb
@pytest.mark.parametrize("path", sorted(HUB_FREE_PATHS))
def test_bitsandbytes_import_reaches_no_hub_even_with_the_kernels_package(tiny_assets, tmp_path, path):
    """bitsandbytes' CPU backend calls `kernels.get_kernel` (a Hugging Face hub download) at import
    on AVX512-BF16 CPUs; a stand-in `kernels` package that records any call must stay uncalled.
    (Other CPUs never make that call, so there this passes without the guard too; transformers
    imports `kernels` itself, in its hub_kernels integration, without fetching.)"""
    import subprocess
    import sys

    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    marker = tmp_path / "hub_called"
    (fake / "__init__.py").write_text(f"def get_kernel(*a, **k):\n    open({str(marker)!r}, 'w').close()\n    raise OSError('hub')\n")
    code = ("from xraygpt.models.llm import load_llm\n"
            + HUB_FREE_PATHS[path].format(llm=str(tiny_assets["llm"]))
            + "import kernels\n"  # the real package stays importable afterwards
            "assert kernels.get_kernel\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not marker.exists()
