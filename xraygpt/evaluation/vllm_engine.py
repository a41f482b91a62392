"""Optional summary generation through vLLM's `prompt_embeds` input (`evaluation.backend: vllm`).

vLLM is not a dependency: it needs a CUDA build of torch, which cannot live beside this
project's CPU torch.  When it is installed, the frozen encoder, the projection and the LLM's
embedding table of the XrayGPT model run in this process (the evaluator puts only those on the
GPU; the rest of the transformers LLM stays where it was loaded); each prompt's spliced image+text
embeddings (`XrayGPT.embed_inputs`, the same pure splicing function as training and the
transformers path), (L, Dl) with the left padding removed, go to a vLLM engine that loads the
same LLM folder and runs it with continuous batching and a paged KV cache.

Written against vLLM's offline API (`LLM(model, tokenizer, dtype, seed, gpu_memory_utilization,
enable_prompt_embeds=True)`, `LLM.generate([{"prompt_embeds": tensor}, ...], SamplingParams(...),
use_tqdm=False)`, each output's `outputs[0].token_ids`), as read in vLLM 0.33.0's source: prompt
embeddings are (seq_len, hidden) tensors, sent to the engine from the CPU and cast to the model's
dtype there; a stop string ends the text, and the ids keep the tokens that completed it (which
`decode_answer` cuts, as on the transformers path).  The project's tests check this module
against a stand-in of that API (tests/test_vllm_engine.py); it has not been run against vLLM
itself, which no machine of this project can install (a CUDA build of torch; a 336 MB wheel).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING

import torch

from xraygpt.data.collate import GenerationCollator
from xraygpt.models.generation import GenerationSettings
from xraygpt.models.llm import is_quantized

if TYPE_CHECKING:
    from xraygpt.models.xraygpt import XrayGPT

logger = logging.getLogger(__name__)

VLLM_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


class VLLMRefused(ValueError):
    """What this backend cannot run, said in one line before anything is generated or written."""


def check_supported(model: XrayGPT, gpu_memory_utilization: float) -> None:
    """Raise a one-line VLLMRefused unless vLLM is importable (not importing it), torch sees a CUDA GPU,
    and the model (frozen, unquantized LLM loaded from a folder) and memory share are ones this path takes."""
    if not 0 < gpu_memory_utilization <= 1:
        raise VLLMRefused(f"evaluation.vllm_gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if importlib.util.find_spec("vllm") is None:
        raise VLLMRefused("evaluation.backend vllm needs vLLM, which is not installed (pip install vllm, on a "
                          "machine with a CUDA build of torch); use evaluation.backend transformers")
    if not torch.cuda.is_available():
        raise VLLMRefused("evaluation.backend vllm needs a CUDA GPU and torch sees none; use evaluation.backend "
                         "transformers")
    if is_quantized(model.llm):
        raise VLLMRefused("evaluation.backend vllm loads the LLM folder itself, unquantized: set "
                          "model.llm.quantization none")
    if "llm" not in model.frozen_modules:
        raise VLLMRefused("evaluation.backend vllm loads the LLM folder itself, without LLM weights trained into "
                          "model.ckpt (model.freeze_llm false): use evaluation.backend transformers")
    if not model.llm.name_or_path:
        raise VLLMRefused("evaluation.backend vllm needs the LLM loaded from a folder (model.llm.path)")


def check_decoding(generation: GenerationSettings) -> None:
    """Raise a one-line VLLMRefused for decoding settings this path does not do as `XrayGPT.generate` does."""
    if generation.num_beams != 1:
        raise VLLMRefused(f"evaluation.backend vllm does greedy decoding and sampling, not beam search (num_beams "
                          f"{generation.num_beams}); use evaluation.backend transformers")
    if generation.repetition_penalty != 1:
        raise VLLMRefused(f"evaluation.backend vllm takes no repetition_penalty ({generation.repetition_penalty}): "
                          "vLLM would apply it to prompt ids that an embeddings prompt does not have; use "
                          "evaluation.backend transformers")


def sampling_params(generation: GenerationSettings, end_sym: str) -> dict:
    """vLLM SamplingParams arguments for `generation` (checked by `check_decoding`): greedy is temperature 0."""
    return {"max_tokens": generation.max_new_tokens,
            "temperature": generation.temperature if generation.do_sample else 0.0,
            "top_p": generation.top_p if generation.do_sample else 1.0,
            "stop": [end_sym]}


class VLLMEngine:
    """A vLLM engine over the LLM folder of `model` (an XrayGPT), fed spliced prompt embeddings.

    Args:
        model: the XrayGPT model; its LLM's folder (`model.llm.name_or_path`) and dtype are
            loaded by vLLM, its encoder, projection and embedding table make the prompts.
        gpu_memory_utilization: share of the GPU's memory vLLM may take (weights + KV cache);
            the encoder, projection and embedding table in this process need little of the rest.
        seed: vLLM's sampling seed.
    Raises VLLMRefused where `check_supported` does (vLLM missing, no GPU, a trained or quantized LLM).
    """

    def __init__(self, model: XrayGPT, gpu_memory_utilization: float, seed: int):
        check_supported(model, gpu_memory_utilization)
        import vllm

        self.vllm = vllm
        folder = model.llm.name_or_path
        logger.info("vLLM engine over %s (%s, %.0f%% of GPU memory)", folder, VLLM_DTYPES[model.llm_dtype],
                    100 * gpu_memory_utilization)
        self.llm = self.vllm.LLM(model=str(folder), tokenizer=str(folder), dtype=VLLM_DTYPES[model.llm_dtype],
                                 gpu_memory_utilization=gpu_memory_utilization, seed=seed, enable_prompt_embeds=True)

    @torch.no_grad()
    def __call__(self, model: XrayGPT, samples: list[dict],
                 generation: GenerationSettings = GenerationSettings()) -> list[str]:
        """One summary per sample (items as `CaptionDataset.get` returns them), in order; as `XrayGPT.generate`.

        vLLM schedules all of `samples` at once (continuous batching), so a large batch is best.
        Each prompt is its (L_i, Dl) spliced embeddings (`XrayGPT.embed_inputs`), the batch's left
        padding removed.
        """
        check_decoding(generation)
        batch = GenerationCollator(model.prompt_tokenizer)(samples)
        embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"], image_counts=batch.get("image_counts")).cpu()
        keep = batch["attention_mask"].bool()
        prompts = [{"prompt_embeds": row[mask]} for row, mask in zip(embeds, keep)]
        params = self.vllm.SamplingParams(**sampling_params(generation, model.prompt_tokenizer.format.end_sym))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [model.prompt_tokenizer.decode_answer(list(out.outputs[0].token_ids)) for out in outputs]
