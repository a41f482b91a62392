"""Loading the frozen LLaMA/Vicuna LLM and its tokenizer from a local Hugging Face folder.

Never touches a model hub (`local_files_only=True`).  Pitfalls handled here, measured with
transformers 5.23: `LlamaTokenizer(vocab_file=...)` silently builds a 3-token vocabulary, so the
tokenizer always comes from `from_pretrained(folder)`; the tokenizer may have no pad token (we
set one for batching; positions are masked out anyway); `dtype=` replaces `torch_dtype=`.
BOS is added explicitly by `xraygpt.prompting`, not by tokenizer flags.

Low-resource inference (`quantization: 8bit | 4bit`): the LLM's linear layers are loaded
through bitsandbytes (LLM.int8 or NF4 with double quantization, computing in `dtype`), placed on
the GPU when there is one (else the CPU, which bitsandbytes >= 0.49 also runs); the embedding
table, the norms, the MedCLIP encoder and the projection keep full precision.  bitsandbytes is
an optional extra (`pip install -e .[quant]`).  On CPUs with AVX512-BF16, importing
bitsandbytes asks the optional `kernels` package for a kernel from the Hugging Face hub;
`import_bitsandbytes_offline` blocks that import (bitsandbytes then uses its built-in kernel),
so nothing here reaches a hub.

Speed switches for training (`run.gradient_checkpointing`, `run.compile`) act on the decoder
layers here: `checkpoint_decoder_layers` (written with torch.utils.checkpoint rather than
transformers' `gradient_checkpointing_enable`, which only acts on modules in training mode
and so never on the frozen LLM, locked in eval mode) and `compile_decoder_layers`
(torch.compile of each layer: regional compilation, one graph reused by every layer, without
the graph breaks of the image splice and the loss's data-dependent shapes).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from xraygpt.errors import first_line

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATION_MODES = ("none", "8bit", "4bit")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


class LLMLoadError(ValueError):
    """A missing or malformed LLM/tokenizer folder."""


def resolve_dtype(dtype: str, device: torch.device | str = "cpu") -> torch.dtype:
    """`auto` -> bf16 on a CUDA device that supports it, else fp32; or one of DTYPES by name."""
    if dtype == "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"llm dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a local folder holding `tokenizer.model` (SentencePiece) or `tokenizer.json`."""
    folder = Path(path)
    if not folder.is_dir():
        raise LLMLoadError(f"LLM folder {folder} does not exist")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise LLMLoadError(f"tokenizer folder {folder} has no tokenizer.model (nor tokenizer.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise LLMLoadError(f"cannot load the tokenizer in {folder}: {exc}") from exc
    if len(tokenizer) < 16:
        raise LLMLoadError(f"tokenizer in {folder} has only {len(tokenizer)} tokens (a broken tokenizer.model?)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def load_llm(path: str, dtype: str = "auto", attn_implementation: str = "sdpa",
             quantization: str = "none") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local Hugging Face folder (config + weights + tokenizer).

    Args:
        path: folder with `config.json`, weights (safetensors or bin) and tokenizer files.
        dtype: `auto` (bf16 on a capable GPU, fp32 on CPU), `float32`, `bfloat16` or `float16`.
        attn_implementation: passed to transformers (`sdpa`, `eager`, `flash_attention_2`).
        quantization: `none`, or `8bit` / `4bit` linear layers through bitsandbytes (frozen use
            only: evaluation, the demo, or a stage whose LLM is frozen).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise LLMLoadError(f"LLM folder {folder} does not exist")
    if quantization not in QUANTIZATION_MODES:
        raise LLMLoadError(f"model.llm.quantization must be one of {QUANTIZATION_MODES}, got {quantization!r}")
    if quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise LLMLoadError(f"model.llm.quantization={quantization} needs the bitsandbytes package: "
                           "pip install -e .[quant]")
    if attn_implementation.startswith("flash_attention") and not torch.cuda.is_available():
        raise LLMLoadError(f"model.llm.attn_implementation {attn_implementation} needs a CUDA GPU (and the flash-attn "
                           "package); use sdpa, which picks a flash kernel on GPUs where it can")
    if not (folder / "config.json").is_file():
        raise LLMLoadError(f"LLM folder {folder} has no config.json")
    tokenizer = load_tokenizer(folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = resolve_dtype(dtype, device)
    placement = {}
    if quantization != "none":
        import_bitsandbytes_offline()
        placement = {"quantization_config": bnb_config(quantization, torch_dtype),
                     "device_map": {"": torch.cuda.current_device()} if device == "cuda" else "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch_dtype, attn_implementation=attn_implementation, local_files_only=True, **placement
        )
    except Exception as exc:
        raise LLMLoadError(f"cannot load the LLM in {folder}: {first_line(exc)}") from exc
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise LLMLoadError(
            f"LLM in {folder} has {model.get_input_embeddings().num_embeddings} embeddings but its "
            f"tokenizer has {len(tokenizer)} tokens"
        )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("LLM loaded from %s: %.1fM parameters, %s%s (%.1f MB)", folder, n_params / 1e6, torch_dtype,
                "" if quantization == "none" else f", {quantization} linear layers", model.get_memory_footprint() / 1e6)
    return model, tokenizer


def import_bitsandbytes_offline() -> None:
    """Import bitsandbytes with the `kernels` package hidden, so its import fetches nothing from a hub.

    Call it before importing anything that imports bitsandbytes (peft does when it is installed);
    nothing happens when bitsandbytes is already imported or not installed.
    """
    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    missing = object()
    saved = sys.modules.get("kernels", missing)
    sys.modules["kernels"] = None  # `from kernels import ...` raises ImportError; bitsandbytes falls back
    try:
        import bitsandbytes  # noqa: F401
    finally:
        if saved is missing:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = saved


def bnb_config(quantization: str, compute_dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for `8bit` (LLM.int8) or `4bit` (NF4, double quantization)."""
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def is_quantized(llm: torch.nn.Module) -> bool:
    """Whether `llm` was loaded with bitsandbytes quantization (`load_llm(quantization=...)`)."""
    return getattr(llm, "hf_quantizer", None) is not None


def decoder_layers(llm: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a Hugging Face decoder-only LM (`get_decoder().layers`)."""
    layers = getattr(llm.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(llm).__name__} has no decoder layer list (get_decoder().layers)")
    return layers


def checkpoint_decoder_layers(llm: torch.nn.Module) -> int:
    """Recompute each decoder layer in the backward pass instead of keeping its activations.

    Only when grad is enabled (generation is untouched); non-reentrant torch.utils.checkpoint,
    so keyword inputs and frozen weights work.  Saves activation memory (about one layer's
    instead of all layers') for one more forward pass per step.  Returns the layers wrapped.
    """
    layers = decoder_layers(llm)
    for layer in layers:
        plain = layer.forward

        def forward(*args, _plain=plain, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_plain, *args, use_reentrant=False, **kwargs)
            return _plain(*args, **kwargs)

        layer.forward = forward
    return len(layers)


def compile_decoder_layers(llm: torch.nn.Module, backend: str) -> int:
    """torch.compile each decoder layer with `backend` (e.g. `inductor`); returns the layers compiled."""
    layers = decoder_layers(llm)
    for layer in layers:
        layer.compile(backend=backend)
    return len(layers)
