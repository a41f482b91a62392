"""The one trainable layer of the recipe: a linear map from image features to LLM embeddings.

A parameter-free normalisation of the frozen feature tokens may precede the map (it adds no
trainable weight, so the projection still is the only thing that learns):

- ``none``: the features as the encoder gives them (the recipe as published);
- ``layernorm``: each token LayerNormed over its features (zero mean, unit variance), so every
  token reaches the projection on the same scale;
- ``layernorm_center``: as ``layernorm``, then the training data's mean token subtracted.  The
  mean is a running average over every token the projector has seen while training (kept as a
  buffer, as BatchNorm keeps its running mean, summed over ranks when torch.distributed is up;
  fixed in eval mode; saved with the weights), so it is the data's mean from the first batch on
  and stays put in eval mode.  Without it most of every LayerNormed token is one shared vector
  (on the embedded default 61% of a token's squared norm), and the gradient of the many
  background and common-finding tokens moves the few tokens of a rare finding through that shared
  part of the map: on two of five seeds stage 1 pushed single nodules away from their reading
  and never came back (README, "Learnability").  The bias then carries what every token shares.
  The embedded default, together with stage 0's shared filler shift (`model.slot_filler_shift`,
  xraygpt.models.llm_sft): centred alone, a blank image gave findings on three of five seeds.

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
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F

NORM_MODES = ("none", "layernorm", "layernorm_center")
INIT_MODES = ("default", "zeros")


class LinearProjector(nn.Module):
    """(B, N, in_dim) image features -> (B, N, out_dim) LLM input embeddings, via one nn.Linear.

    Args:
        in_dim: the encoder's feature size.
        out_dim: the LLM's hidden size.
        bias: whether the linear map has a bias.
        norm: one of NORM_MODES, applied to the input tokens in float32 (LayerNorm eps 1e-5).
            ``layernorm_center`` adds the buffers ``token_mean`` ((in_dim,) float32, the running mean
            of the LayerNormed tokens) and ``token_count`` (() float64, how many tokens it averages).
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
        if norm == "layernorm_center":
            self.register_buffer("token_mean", torch.zeros(in_dim))
            self.register_buffer("token_count", torch.zeros((), dtype=torch.float64))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.proj.weight.dtype)
        if self.norm in ("layernorm", "layernorm_center"):
            x = F.layer_norm(x.float(), (x.shape[-1],)).to(x.dtype)
        if self.norm == "layernorm_center":
            if self.training:
                self._update_token_mean(x.detach())
            x = x - self.token_mean.to(x.dtype)
        return self.proj(x)

    @torch.no_grad()
    def _update_token_mean(self, tokens: torch.Tensor) -> None:
        """Fold (..., in_dim) tokens (every rank's, when torch.distributed is initialised) into the
        cumulative mean: token_mean <- (count * token_mean + sum) / (count + n)."""
        flat = tokens.reshape(-1, tokens.shape[-1]).double()
        stats = torch.cat([flat.sum(dim=0), flat.new_tensor([flat.shape[0]])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        total = self.token_count + stats[-1]
        mean = (self.token_count * self.token_mean.double() + stats[:-1]) / total
        self.token_mean.copy_(mean.to(self.token_mean.dtype))
        self.token_count.copy_(total)
