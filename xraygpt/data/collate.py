"""Batching: prompt + summary tokenization with label masking, and padding.

Training batches are right-padded; generation batches are left-padded so every row's next
token sits at the same position.  Both tokenize through `PromptTokenizer`, the one place that
knows the template and where the image sentinels go.

A sample shows one image (`pixel_values` (3, H, W), or cached `image_features` (N, D)) or, for a
study (`xraygpt.data.study_dataset`), k images stacked ((k, 3, H, W); its instruction then holds
k `<ImageHere>`).  A batch of one-image samples is exactly the paper's: images stacked to
(B, 3, H, W) and no `image_counts` key.  A batch holding a study concatenates every sample's
images to (T, 3, H, W) in row order and adds `image_counts` (B,) long, the images of each row,
which the model's splice needs (`XrayGPT.embed_inputs`).
"""

from __future__ import annotations

import torch

from xraygpt.constants import IGNORE_INDEX
from xraygpt.prompting import PromptTokenizer


def pad_sequences(seqs: list[list[int]], pad_value: int, side: str = "right") -> torch.Tensor:
    """(B, max_len) long tensor from B lists, padded on `side` ("right" or "left")."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be right or left, got {side!r}")
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        elif s:
            out[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
    return out


def stack_images(samples: list[dict], kind: str) -> dict:
    """{kind: images} of a batch, plus `image_counts` (B,) when a sample shows several images
    (module docstring); `kind` is `pixel_values` or `image_features`."""
    single_dims = 3 if kind == "pixel_values" else 2
    if all(s[kind].dim() == single_dims for s in samples):
        return {kind: torch.stack([s[kind] for s in samples])}
    images = [s[kind] if s[kind].dim() == single_dims + 1 else s[kind].unsqueeze(0) for s in samples]
    return {kind: torch.cat(images), "image_counts": torch.tensor([len(x) for x in images], dtype=torch.long)}


def image_count(sample: dict, kind: str = "pixel_values") -> int:
    """How many images a sample shows (1, or k for a study's stacked (k, ...) images)."""
    single_dims = 3 if kind == "pixel_values" else 2
    return 1 if sample[kind].dim() == single_dims else len(sample[kind])


class TrainCollator:
    """Samples {pixel_values or image_features, instruction, caption, image_id} -> a training batch.

    Batch: pixel_values (B, 3, H, W) or image_features (B, N, D) (cached encoder tokens, as the
    samples hold them), input_ids / attention_mask / labels (B, L) right-padded, image_ids
    (list of B str); with studies, images (T, ...) and image_counts (B,) (module docstring).
    """

    def __init__(self, prompt_tokenizer: PromptTokenizer):
        self.prompt_tokenizer = prompt_tokenizer
        self.pad_id = prompt_tokenizer.tokenizer.pad_token_id

    def __call__(self, samples: list[dict]) -> dict:
        kind = "image_features" if "image_features" in samples[0] else "pixel_values"
        if not all(kind in s for s in samples):
            raise ValueError("a training batch mixes images and cached image features")
        ids, labels = zip(*(self.prompt_tokenizer.encode_example(s["instruction"], s["caption"], image_count(s, kind))
                            for s in samples))
        input_ids = pad_sequences(list(ids), self.pad_id, "right")
        return {
            **stack_images(samples, kind),
            "input_ids": input_ids,
            "attention_mask": pad_sequences([[1] * len(x) for x in ids], 0, "right"),
            "labels": pad_sequences(list(labels), IGNORE_INDEX, "right"),
            "image_ids": [s["image_id"] for s in samples],
        }


class GenerationCollator:
    """Samples -> a left-padded prompt batch for `XrayGPT.generate`, references kept.

    Batch: pixel_values (B, 3, H, W), input_ids / attention_mask (B, L) left-padded,
    image_ids, instructions and references (lists of B str); with studies, pixel_values
    (T, 3, H, W) and image_counts (B,) (module docstring).
    """

    def __init__(self, prompt_tokenizer: PromptTokenizer):
        self.prompt_tokenizer = prompt_tokenizer
        self.pad_id = prompt_tokenizer.tokenizer.pad_token_id

    def __call__(self, samples: list[dict]) -> dict:
        ids = [self.prompt_tokenizer.encode_prompt(s["instruction"], image_count(s)) for s in samples]
        return {
            **stack_images(samples, "pixel_values"),
            "input_ids": pad_sequences(ids, self.pad_id, "left"),
            "attention_mask": pad_sequences([[1] * len(x) for x in ids], 0, "left"),
            "image_ids": [s["image_id"] for s in samples],
            "instructions": [s["instruction"] for s in samples],
            "references": [s.get("caption", "") for s in samples],
        }


class ConversationCollator:
    """Conversations {image_id, system, turns} -> a right-padded batch, loss on assistant turns.

    Batch: input_ids / attention_mask / labels (B, L), image_ids (conversation ids).
    """

    def __init__(self, prompt_tokenizer: PromptTokenizer):
        self.prompt_tokenizer = prompt_tokenizer
        self.pad_id = prompt_tokenizer.tokenizer.pad_token_id

    def __call__(self, samples: list[dict]) -> dict:
        ids, labels = zip(*(self.prompt_tokenizer.encode_dialogue(s["turns"], s["system"]) for s in samples))
        return {
            "input_ids": pad_sequences(list(ids), self.pad_id, "right"),
            "attention_mask": pad_sequences([[1] * len(x) for x in ids], 0, "right"),
            "labels": pad_sequences(list(labels), IGNORE_INDEX, "right"),
            "image_ids": [s["image_id"] for s in samples],
        }


class ConversationPromptCollator:
    """Conversations -> left-padded prompts asking for the last answer; that answer is the reference."""

    def __init__(self, prompt_tokenizer: PromptTokenizer):
        self.prompt_tokenizer = prompt_tokenizer
        self.pad_id = prompt_tokenizer.tokenizer.pad_token_id

    def __call__(self, samples: list[dict]) -> dict:
        ids = [self.prompt_tokenizer.encode_dialogue(s["turns"][:-1] + [(s["turns"][-1][0], None)], s["system"])[0]
               for s in samples]
        return {
            "input_ids": pad_sequences(ids, self.pad_id, "left"),
            "attention_mask": pad_sequences([[1] * len(x) for x in ids], 0, "left"),
            "image_ids": [s["image_id"] for s in samples],
            "instructions": [s["turns"][-1][0] for s in samples],
            "references": [s["turns"][-1][1] for s in samples],
        }
