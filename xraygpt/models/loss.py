"""The training loss shared by every model: per-sample mean token cross-entropy, averaged.

Each sample's loss is the mean cross-entropy over its target tokens (labels != IGNORE_INDEX);
the batch loss is the mean of those, so a batch's loss equals the mean of its samples' losses
whatever their lengths, and gradient accumulation and data-parallel averaging weight samples
equally.  Logits are computed only at positions that predict a target token: the LM head over
the whole sequence would cost B * L * vocab floats for nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xraygpt.constants import IGNORE_INDEX


def target_token_loss(hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss from decoder hidden states.

    Args:
        hidden: (B, L, D) last hidden states; position t predicts token t + 1.
        lm_head: maps (T, D) -> (T, V) logits.
        labels: (B, L) token ids, IGNORE_INDEX outside the targets.
    Returns:
        `loss` (scalar), `sample_loss` (B,), `num_target_tokens` (scalar long).
    Raises:
        ValueError: when a sample has no target token.
    """
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    counts = selected.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("a sample in the batch has no target tokens (empty answer?)")
    logits = lm_head(hidden[:, :-1][selected]).float()
    token_loss = F.cross_entropy(logits, targets[selected], reduction="none")
    rows = selected.nonzero()[:, 0]
    sample_loss = torch.zeros(labels.shape[0], device=token_loss.device).index_add(0, rows, token_loss) / counts
    return {"loss": sample_loss.mean(), "sample_loss": sample_loss.detach(), "num_target_tokens": counts.sum()}
