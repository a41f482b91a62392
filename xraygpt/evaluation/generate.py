"""Batched summary generation over a dataset, with image ablations.

Ablations (`image_mode`) check that the summaries come from the image:
- ``image``: each sample with its own image;
- ``shuffled``: sample i gets the image of sample (i + 1) mod N (a derangement of the set);
- ``blank``: every sample gets a uniform black image.

`load_samples` reads the samples of some dataset keys with the chosen images and
`generate_rows` writes one batch's summaries (left-padded prompts, `XrayGPT.generate`).
`generate_fitting` tunes a run of batches: it sorts the samples by prompt length, longest
first (so a batch's left padding is short, and the batch most likely to run out of memory
comes first), and halves a batch that runs out of memory (accelerate's OOM test), keeping
the smaller size from then on.  The report evaluator streams windows of samples through it;
`generate_for_dataset` runs it over a whole dataset.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import torch
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size
from PIL import Image
from tqdm import tqdm

from xraygpt.conversation import PromptTokenizer
from xraygpt.data.collate import GenerationCollator

if TYPE_CHECKING:
    from xraygpt.evaluation.vllm_engine import VLLMEngine
    from xraygpt.models.xraygpt import XrayGPT

IMAGE_MODES = ("image", "shuffled", "blank")
WINDOW_BATCHES = 4  # samples are read this many batches at a time and sorted by prompt length within the window

logger = logging.getLogger(__name__)


def blank_image(vis_processor, image_size: int) -> torch.Tensor:
    """(3, S, S): a black `image_size` square through `vis_processor`."""
    return vis_processor(Image.new("L", (image_size, image_size), 0))


def load_samples(dataset, keys: list[int], image_mode: str = "image", blank: torch.Tensor | None = None) -> list[dict]:
    """dataset[k] for each key (items as `CaptionDataset.get` returns them), with the image of `image_mode`.

    Each sample gains `image_source`: the id of the image it now carries ("blank" for `blank`).
    """
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
    if image_mode == "blank" and blank is None:
        raise ValueError("image_mode 'blank' needs the blank image")
    samples = [dataset[k] for k in keys]
    for key, sample in zip(keys, samples):
        sample["image_source"] = sample["image_id"]
        if image_mode == "shuffled":
            other = dataset[(key + 1) % len(dataset)]
            sample["pixel_values"], sample["image_source"] = other["pixel_values"], other["image_id"]
        elif image_mode == "blank":
            sample["pixel_values"], sample["image_source"] = blank, "blank"
    return samples


@torch.no_grad()
def generate_rows(model: XrayGPT, samples: list[dict], engine: Optional[VLLMEngine] = None, **gen_kwargs) -> list[dict]:
    """One batch: rows {image_id, image_source, instruction, prediction, reference}, in order.

    `gen_kwargs` go to `XrayGPT.generate` (max_new_tokens, num_beams, do_sample, ...), or to
    `engine(model, samples, **gen_kwargs)` when one is given (a `VLLMEngine`).
    """
    if engine is not None:
        preds = engine(model, samples, **gen_kwargs)
    else:
        batch = GenerationCollator(model.prompt_tokenizer)(samples)
        preds = model.generate(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], **gen_kwargs)
    return [{"image_id": s["image_id"], "image_source": s["image_source"], "instruction": s["instruction"],
             "prediction": p, "reference": s.get("caption", "")} for s, p in zip(samples, preds)]


def by_prompt_length(prompt_tokenizer: PromptTokenizer, samples: list[dict]) -> list[dict]:
    """`samples` sorted by prompt token length, longest first (ties keep their order).

    A prompt's length depends only on its instruction, so each distinct instruction is tokenized once.
    """
    lengths = {ins: len(prompt_tokenizer.encode_prompt(ins)) for ins in {s["instruction"] for s in samples}}
    return sorted(samples, key=lambda s: -lengths[s["instruction"]])


def sample_windows(dataset, keys: list[int], batch_size: int, image_mode: str = "image",
                   blank: torch.Tensor | None = None) -> Iterator[tuple[list[int], list[dict]]]:
    """(window keys, their samples from `load_samples`), `batch_size` x WINDOW_BATCHES keys at a time:
    the span within which `generate_fitting` sorts by prompt length."""
    window = batch_size * WINDOW_BATCHES
    for start in range(0, len(keys), window):
        chunk = keys[start:start + window]
        yield chunk, load_samples(dataset, chunk, image_mode, blank)


@torch.no_grad()
def generate_fitting(model: XrayGPT, samples: list[dict], batch_size: int,
                     emit: Callable[[list[dict], list[dict]], None], engine: Optional[VLLMEngine] = None,
                     **gen_kwargs) -> int:
    """Generate every sample, longest prompt first, in batches of at most `batch_size`.

    A batch that runs out of memory (CUDA/CPU allocator errors, as accelerate recognises them)
    is retried at half its size, which becomes the batch size; one image that does not fit
    re-raises the error.  `emit(batch, rows)` gets each batch's samples and their rows (as
    `generate_rows` returns them) once generated, so a caller can store them before the next
    batch.  Returns the batch size in use at the end, which the next call should start from.
    `engine` and `gen_kwargs` go to `generate_rows`.
    """
    if batch_size < 1:
        raise ValueError(f"the generation batch size must be >= 1, got {batch_size}")
    ordered = by_prompt_length(model.prompt_tokenizer, samples)
    start = 0
    while start < len(ordered):
        chunk = ordered[start:start + batch_size]
        try:
            rows = generate_rows(model, chunk, engine, **gen_kwargs)
        except RuntimeError as exc:
            if len(chunk) == 1 or not should_reduce_batch_size(exc):
                raise
            rows = None
        if rows is None:  # out of memory: the failed batch's tensors are released once outside the except
            clear_device_cache(garbage_collection=True)
            batch_size = len(chunk) // 2
            logger.warning("a generation batch of %d images ran out of memory; going on with batches of %d",
                           len(chunk), batch_size)
            continue
        emit(chunk, rows)
        start += len(chunk)
    return batch_size


@torch.no_grad()
def generate_for_dataset(model, dataset, batch_size: int = 32, image_mode: str = "image", image_size: int | None = None,
                         vis_processor=None, progress: bool = False, **gen_kwargs) -> list[dict]:
    """Generate one summary per sample of `dataset` (items as `CaptionDataset.get` returns them).

    Returns rows {image_id, image_source, instruction, prediction, reference} in key order.
    `vis_processor` (and hence `image_size`) is needed for ``blank``.  Instructions are the
    dataset's per-key choices, so the three modes see the same prompts.  Samples are read
    through `sample_windows` and generated through `generate_fitting`.
    """
    blank = blank_image(vis_processor, image_size) if image_mode == "blank" else None
    was_training = model.training
    model.eval()
    rows = {}
    bar = tqdm(total=len(dataset), disable=not progress, desc=f"generate ({image_mode})")

    def emit(batch: list[dict], batch_rows: list[dict]) -> None:
        rows.update((s["key"], r) for s, r in zip(batch, batch_rows))
        bar.update(len(batch_rows))

    for keys, samples in sample_windows(dataset, list(range(len(dataset))), batch_size, image_mode, blank):
        for key, sample in zip(keys, samples):
            sample["key"] = key
        batch_size = generate_fitting(model, samples, batch_size, emit, **gen_kwargs)
    bar.close()
    model.train(was_training)
    return [rows[key] for key in range(len(dataset))]
