"""The one trainable layer of the recipe: a linear map from image features to LLM embeddings."""

from __future__ import annotations

import torch
from torch import nn


class LinearProjector(nn.Module):
    """(B, N, in_dim) image features -> (B, N, out_dim) LLM input embeddings, via one nn.Linear."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features.to(self.proj.weight.dtype))
