"""Tasks: what a training step computes and how batches are collated, registered by name."""

from __future__ import annotations

from xraygpt.data.collate import GenerationCollator, TrainCollator
from xraygpt.registry import register


@register("task", "image_text_pretrain")
class ImageTextPretrainTask:
    """Stages 1-2: image + instruction -> summary, loss on the summary tokens."""

    def train_collator(self, model) -> TrainCollator:
        return TrainCollator(model.prompt_tokenizer)

    def generation_collator(self, model) -> GenerationCollator:
        return GenerationCollator(model.prompt_tokenizer)

    def train_step(self, model, batch: dict) -> dict:
        """Forward one batch; returns the model's output dict (`loss`, `sample_loss`, ...)."""
        return model(
            pixel_values=batch["pixel_values"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )
