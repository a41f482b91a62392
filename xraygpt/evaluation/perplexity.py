"""Perplexity of a (stage-0) LLM on the assistant turns of a conversation dataset."""

from __future__ import annotations

import math

import torch

from xraygpt.data.collate import ConversationCollator


@torch.no_grad()
def conversation_perplexity(model, dataset, batch_size: int = 16) -> float:
    """exp(mean NLL per assistant token) over all of `dataset` (token-weighted, not per sample).

    Args:
        model: an `LLMSFT` (its `forward` returns `sample_loss` and per-sample target counts).
        dataset: items {"system", "turns", "image_id"} (e.g. `build_summaries`).
    """
    collate = ConversationCollator(model.prompt_tokenizer)
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        out = model(**{k: batch[k].to(model.device) for k in ("input_ids", "attention_mask", "labels")})
        counts = (batch["labels"][:, 1:] != -100).sum(dim=1).to(out["sample_loss"].device)
        total_nll += float((out["sample_loss"] * counts).sum())
        total_tokens += int(counts.sum())
    model.train(was_training)
    return math.exp(total_nll / total_tokens)
