"""Batched summary generation over a dataset, with image ablations.

Ablations (`image_mode`) check that the summaries come from the image:
- ``image``: each sample with its own image;
- ``shuffled``: sample i gets the image of sample (i + 1) mod N (a derangement of the set);
- ``blank``: every sample gets a uniform black image.

`load_samples` reads the samples of some dataset keys with the chosen images and
`generate_rows` writes one batch's summaries (left-padded prompts, `XrayGPT.generate`); the
report evaluator streams through them, `generate_for_dataset` runs them over a whole dataset.
"""

from __future__ import annotations

import torch
from PIL import Image
from tqdm import tqdm

from xraygpt.data.collate import GenerationCollator

IMAGE_MODES = ("image", "shuffled", "blank")


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
def generate_rows(model, samples: list[dict], **gen_kwargs) -> list[dict]:
    """One batch: rows {image_id, image_source, instruction, prediction, reference}, in order.

    `gen_kwargs` go to `XrayGPT.generate` (max_new_tokens, num_beams, do_sample, ...).
    """
    batch = GenerationCollator(model.prompt_tokenizer)(samples)
    preds = model.generate(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], **gen_kwargs)
    return [{"image_id": s["image_id"], "image_source": s["image_source"], "instruction": s["instruction"],
             "prediction": p, "reference": s.get("caption", "")} for s, p in zip(samples, preds)]


@torch.no_grad()
def generate_for_dataset(model, dataset, batch_size: int = 32, image_mode: str = "image", image_size: int | None = None,
                         vis_processor=None, progress: bool = False, **gen_kwargs) -> list[dict]:
    """Generate one summary per sample of `dataset` (items as `CaptionDataset.get` returns them).

    Returns rows {image_id, image_source, instruction, prediction, reference}.  `vis_processor`
    (and hence `image_size`) is needed for ``blank``.  Instructions are the dataset's per-key
    choices, so the three modes see the same prompts.
    """
    blank = blank_image(vis_processor, image_size) if image_mode == "blank" else None
    was_training = model.training
    model.eval()
    rows = []
    for start in tqdm(range(0, len(dataset), batch_size), disable=not progress, desc=f"generate ({image_mode})"):
        keys = list(range(start, min(start + batch_size, len(dataset))))
        rows += generate_rows(model, load_samples(dataset, keys, image_mode, blank), **gen_kwargs)
    model.train(was_training)
    return rows
