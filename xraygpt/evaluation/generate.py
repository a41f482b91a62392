"""Batched summary generation over a dataset, with image ablations.

Ablations (`image_mode`) check that the summaries come from the image:
- ``image``: each sample with its own image;
- ``shuffled``: sample i gets the image of sample (i + 1) mod N (a derangement of the set);
- ``blank``: every sample gets a uniform black image.
"""

from __future__ import annotations

import torch
from PIL import Image
from tqdm import tqdm

from xraygpt.data.collate import GenerationCollator

IMAGE_MODES = ("image", "shuffled", "blank")


@torch.no_grad()
def generate_for_dataset(model, dataset, batch_size: int = 32, image_mode: str = "image", image_size: int | None = None,
                         vis_processor=None, progress: bool = False, **gen_kwargs) -> list[dict]:
    """Generate one summary per sample of `dataset` (items as `CaptionDataset.get` returns them).

    Returns rows {image_id, image_source, instruction, prediction, reference}.  `vis_processor`
    (and hence `image_size`) is needed for ``blank``.  Instructions are the dataset's per-key
    choices, so the three modes see the same prompts.
    """
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
    samples = [dataset[k] for k in range(len(dataset))]
    sources = [s["image_id"] for s in samples]
    if image_mode == "shuffled":
        pixels = [s["pixel_values"] for s in samples]
        for i, s in enumerate(samples):
            s["pixel_values"] = pixels[(i + 1) % len(samples)]
        sources = sources[1:] + sources[:1]
    elif image_mode == "blank":
        blank = vis_processor(Image.new("L", (image_size, image_size), 0))
        for s in samples:
            s["pixel_values"] = blank
        sources = ["blank"] * len(samples)
    collate = GenerationCollator(model.prompt_tokenizer)
    was_training = model.training
    model.eval()
    rows = []
    for start in tqdm(range(0, len(samples), batch_size), disable=not progress, desc=f"generate ({image_mode})"):
        batch = collate(samples[start:start + batch_size])
        preds = model.generate(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], **gen_kwargs)
        for i, pred in enumerate(preds):
            rows.append({"image_id": batch["image_ids"][i], "image_source": sources[start + i],
                         "instruction": batch["instructions"][i], "prediction": pred,
                         "reference": batch["references"][i]})
    model.train(was_training)
    return rows
