"""Tasks: how batches are collated, what a step computes, what happens after training.

Registered by name (`run.task`):
- `image_text_pretrain` (stages 1-2): image + instruction -> summary.
- `llm_sft` (stage 0): text conversations; after training the LLM is exported as a plain
  Hugging Face folder (`output_dir/hf_model`) for stages 1-2.
Both write `output_dir/samples.jsonl` (generated answer next to reference) at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from xraygpt.data.collate import ConversationCollator, ConversationPromptCollator, GenerationCollator, TrainCollator
from xraygpt.data.formats import capabilities_of
from xraygpt.models.generation import GenerationSettings
from xraygpt.registry import register

logger = logging.getLogger(__name__)


def write_samples(rows: list[dict], path: Path) -> None:
    """One JSON line per row to `path`, and each row to the log."""
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    for row in rows:
        logger.info("sample %s\n  generated: %s\n  reference: %s", row["image_id"], row["prediction"], row["reference"])


def _sample_rows(model, dataset, collator, count: int, generation: GenerationSettings, amp_dtype,
                 with_images: bool) -> list[dict]:
    samples = [dataset[k] for k in range(min(count, len(dataset)))]
    batch = collator(samples)
    model.eval()
    device = model.device
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if with_images:
            inputs["pixel_values"] = batch["pixel_values"].to(device)
            if "image_counts" in batch:  # a batch of studies (several images per row)
                inputs["image_counts"] = batch["image_counts"]
        preds = model.generate(**inputs, generation=generation)
    model.train()
    return [
        {"image_id": i, "instruction": ins, "prediction": p, "reference": r}
        for i, ins, p, r in zip(batch["image_ids"], batch["instructions"], preds, batch["references"])
    ]


@register("task", "image_text_pretrain")
class ImageTextPretrainTask:
    """Stages 1-2: image + instruction -> summary, loss on the summary tokens."""

    def train_collator(self, model) -> TrainCollator:
        return TrainCollator(model.prompt_tokenizer)

    def train_step(self, model, batch: dict) -> dict:
        """Forward one batch (images or cached image features); returns the model's output dict
        (`loss`, `sample_loss`, ...)."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                     pixel_values=batch.get("pixel_values"), image_features=batch.get("image_features"),
                     image_counts=batch.get("image_counts"))

    @torch.no_grad()
    def after_training(self, model, dataset, output_dir: Path, sample_count: int, generation: GenerationSettings,
                       amp_dtype=None) -> None:
        """Generate `sample_count` summaries from `dataset` into samples.jsonl (a dataset of
        cached features, i.e. a training set without eval_root, has no images to generate from)."""
        if sample_count > 0 and capabilities_of(dataset).reads_features:
            logger.warning("no samples.jsonl: the training set reads cached features and no dataset has an "
                           "eval_root with images to generate summaries from")
            return
        if sample_count > 0:
            rows = _sample_rows(model, dataset, GenerationCollator(model.prompt_tokenizer), sample_count, generation, amp_dtype, True)
            write_samples(rows, output_dir / "samples.jsonl")


@register("task", "llm_sft")
class LLMSFTTask:
    """Stage 0: text conversations, loss on assistant turns; exports the tuned LLM at the end."""

    def train_collator(self, model) -> ConversationCollator:
        return ConversationCollator(model.prompt_tokenizer)

    def train_step(self, model, batch: dict) -> dict:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])

    @torch.no_grad()
    def after_training(self, model, dataset, output_dir: Path, sample_count: int, generation: GenerationSettings,
                       amp_dtype=None) -> None:
        """Answers for `sample_count` conversations into samples.jsonl; the LLM to output_dir/hf_model."""
        if sample_count > 0:
            rows = _sample_rows(model, dataset, ConversationPromptCollator(model.prompt_tokenizer), sample_count, generation, amp_dtype, False)
            write_samples(rows, output_dir / "samples.jsonl")
        model.export_pretrained(output_dir / "hf_model")
