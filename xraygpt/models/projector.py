"""The one trainable layer of the recipe: a linear map from image features to LLM embeddings.

A parameter-free normalisation of the frozen feature tokens may precede the map (it adds no
trainable weight, so the projection still is the only thing that learns):

- ``none``: the features as the encoder gives them (the recipe as published);
- ``layernorm``: each token LayerNormed over its features (zero mean, unit variance), so every
  token reaches the projection on the same scale.

Its initial weights (``INIT_MODES``):
- ``default``: PyTorch's ``nn.Linear`` initialisation (the recipe as published);
- ``zeros``: weight and bias 0, so training starts with every image token at the zero vector:
  the frozen LLM first sees "nothing" at the image positions, as a zero-initialised adapter
  starts (LoRA's B, ControlNet's zero convolutions), and the first gradients are the ones its own
  reading of those positions gives, not ones taken at random vectors it never saw.  On the
  embedded default this decided whether stage 1 learned single nodules (README, "Learnability").
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

NORM_MODES = ("none", "layernorm")
INIT_MODES = ("default", "zeros")


class LinearProjector(nn.Module):
    """(B, N, in_dim) image features -> (B, N, out_dim) LLM input embeddings, via one nn.Linear.

    Args:
        in_dim: the encoder's feature size.
        out_dim: the LLM's hidden size.
        bias: whether the linear map has a bias.
        norm: one of NORM_MODES, applied to the input tokens in float32 (LayerNorm eps 1e-5).
        init: one of INIT_MODES, the initial weights (a loaded checkpoint replaces them).
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, norm: str = "none", init: str = "default"):
        super().__init__()
        if norm not in NORM_MODES:
            raise ValueError(f"model.projector_norm must be one of {NORM_MODES}, got {norm!r}")
        if init not in INIT_MODES:
            raise ValueError(f"model.projector_init must be one of {INIT_MODES}, got {init!r}")
        self.proj = nn.Linear(in_dim, out_dim, bias=bias)
        if init == "zeros":
            nn.init.zeros_(self.proj.weight)
            if bias:
                nn.init.zeros_(self.proj.bias)
        self.norm = norm
        # Saved with the weights so a checkpoint cannot be loaded into a projector that
        # normalises differently (see XrayGPT.load_trainable_state_dict).
        self.register_buffer("input_norm", torch.tensor(NORM_MODES.index(norm)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.proj.weight.dtype)
        if self.norm == "layernorm":
            x = F.layer_norm(x.float(), (x.shape[-1],)).to(x.dtype)
        return self.proj(x)
