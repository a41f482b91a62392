"""The one trainable layer of the recipe: a linear map from image features to LLM embeddings.

An optional parameter-free LayerNorm of each frozen feature token may precede the map: it puts
every token on the same scale (zero mean, unit variance over the feature axis) without adding a
trainable weight, so the projection still is the only thing that learns.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LinearProjector(nn.Module):
    """(B, N, in_dim) image features -> (B, N, out_dim) LLM input embeddings, via one nn.Linear.

    Args:
        in_dim: the encoder's feature size.
        out_dim: the LLM's hidden size.
        bias: whether the linear map has a bias.
        normalize_input: LayerNorm each input token over its in_dim features first (no weights,
            eps 1e-5, in float32).
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, normalize_input: bool = False):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim, bias=bias)
        self.normalize_input = normalize_input
        # Saved with the weights so a checkpoint cannot be loaded into a projector that
        # normalises differently (see XrayGPT.load_trainable_state_dict).
        self.register_buffer("input_norm", torch.tensor(normalize_input))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.proj.weight.dtype)
        if self.normalize_input:
            x = F.layer_norm(x.float(), (x.shape[-1],)).to(x.dtype)
        return self.proj(x)
