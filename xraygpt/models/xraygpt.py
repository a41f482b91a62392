"""The registered `xraygpt` model: frozen MedCLIP encoder -> trainable linear projection -> frozen LLM.

Shapes: pixel_values (B, 3, H, W) -> encoder tokens (B, N, Dv) -> projection (B, N, Dl) ->
spliced into the (B, L, Dl) prompt embeddings at the N image-sentinel positions -> LLM.
Training may pass the encoder tokens directly (`image_features`, from a feature cache).
A batch of studies (several images per row) gives T images in all, (T, 3, H, W), with
`image_counts` (B,) saying how many belong to each row, in order; the encoder and projection
still see one image at a time, and the splice fills each row's k x N positions
(`xraygpt.models.multimodal`).  Without `image_counts` every row has one image (T = B).

The loss (`xraygpt.models.loss.target_token_loss`) covers the summary tokens and the end
symbol and is the mean of per-sample losses.

No backward work is wasted on frozen parts: the frozen encoder runs under no_grad, frozen
weights have requires_grad=False (autograd then computes no weight gradient for them and
saves no input for one), and the token embedding lookup of a frozen LLM is outside the graph.
The backward pass still carries activation gradients through every LLM layer, since they are
the only way from the loss to the projection: about 4N FLOPs per token instead of 6N.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from xraygpt.constants import IMAGE_TOKEN_ID
from xraygpt.data.transforms import ImagePreprocessing
from xraygpt.models.generation import GenerationSettings
from xraygpt.models.llm import load_llm
from xraygpt.models.medclip_encoder import MedCLIPVisionEncoder, load_medclip_vision_encoder
from xraygpt.models.model_folder import build_from_folder
from xraygpt.models.loss import target_token_loss
from xraygpt.models.multimodal import embed_with_images
from xraygpt.models.projector import NORM_MODES, LinearProjector
from xraygpt.prompting import PromptFormat, PromptTokenizer
from xraygpt.registry import register

logger = logging.getLogger(__name__)


def freeze(module: nn.Module) -> int:
    """Set requires_grad=False on every parameter; returns how many parameters were frozen."""
    count = 0
    for p in module.parameters():
        p.requires_grad_(False)
        count += p.numel()
    return count


@register("model", "xraygpt")
class XrayGPT(nn.Module):
    """Frozen MedCLIP vision encoder + trainable linear projection + frozen causal LLM.

    Args:
        encoder: the MedCLIP vision encoder (output (B, N, Dv)).
        llm: a Hugging Face causal LM (hidden size Dl).
        tokenizer: the LLM's tokenizer.
        prompt_format: the conversation template.
        freeze_encoder: keep the encoder frozen and in eval mode (the recipe: True).
        freeze_llm: keep the LLM frozen and in eval mode (the recipe: True).
        projector_bias: whether the projection has a bias.
        projector_norm: parameter-free normalisation of the frozen feature tokens before the
            projection: `none`, `layernorm` or `layernorm_center` (see xraygpt.models.projector).
        projector_init: the projection's initial weights: `default` (nn.Linear's) or `zeros`
            (see xraygpt.models.projector).
    """

    # The projector's saved normalisation flag, which a checkpoint must match.
    NORM_KEY = "projector.input_norm"

    # Config sections built by `xraygpt.builders` and passed in as objects: section -> builder.
    CONFIG_SECTIONS = {"encoder": load_medclip_vision_encoder, "llm": load_llm, "prompt": PromptFormat}

    def __init__(
        self,
        encoder: MedCLIPVisionEncoder,
        llm: nn.Module,
        tokenizer,
        prompt_format: PromptFormat,
        freeze_encoder: bool = True,
        freeze_llm: bool = True,
        projector_bias: bool = True,
        projector_norm: str = "none",
        projector_init: str = "default",
    ):
        super().__init__()
        self.encoder = encoder
        self.llm = llm
        hidden = llm.get_input_embeddings().embedding_dim
        self.projector = LinearProjector(encoder.output_dim, hidden, bias=projector_bias,
                                         norm=projector_norm, init=projector_init)
        self.projector.to(torch.float32)
        self.tokenizer = tokenizer
        self.prompt_tokenizer = PromptTokenizer(tokenizer, prompt_format, encoder.num_tokens)
        self.frozen_modules: tuple[str, ...] = tuple(
            name for name, flag in (("encoder", freeze_encoder), ("llm", freeze_llm)) if flag
        )
        for name in self.frozen_modules:
            n = freeze(getattr(self, name))
            logger.info("frozen: %s (%.2fM parameters, locked in eval mode)", name, n / 1e6)
        n_train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        logger.info("trainable parameters: %d", n_train)
        self.train()

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "XrayGPT":
        """The model of an exported folder (`python -m xraygpt.export`; layout in
        `xraygpt.models.model_folder`), in eval mode.  Local files only: nothing is downloaded.
        A folder that is not a complete export, or whose referenced LLM has changed, is refused in
        one line naming the file (`ModelFolderError`)."""
        return build_from_folder(cls, folder).eval()

    # ------------------------------------------------------------------ modes and state
    def train(self, mode: bool = True) -> "XrayGPT":
        """Like nn.Module.train, but frozen modules stay in eval mode whatever `mode` is."""
        super().train(mode)
        for name in self.frozen_modules:
            getattr(self, name).eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters that train (the projection in stages 1-2) and the projector's buffers: its
        normalisation flag and, with `layernorm_center`, the running mean token it subtracts."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        names |= {f"projector.{n}" for n, _ in self.projector.named_buffers()}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load weights written by `trainable_state_dict`: every trainable weight must be present, and no
        other weight (a frozen weight in a checkpoint would silently overwrite the frozen model)."""
        own = self.state_dict()
        if self.NORM_KEY in state:  # first: another norm's buffers are "unknown" weights here
            self._check_projector_norm(state, source)
        unknown = [k for k in state if k not in own]
        if unknown:
            hint = " (a stage-0 checkpoint? point model.llm.path at its hf_model folder)" if unknown[0].startswith("llm.") else ""
            raise ValueError(f"checkpoint {source} has a weight this model does not define: {unknown[0]}{hint}")
        wanted = set(self.trainable_state_dict())
        frozen = [k for k in state if k not in wanted]
        if frozen:
            hint = (" (a stage-0 checkpoint? point model.llm.path at its hf_model folder)" if frozen[0].startswith("llm.")
                    else "")
            raise ValueError(f"checkpoint {source} holds {len(frozen)} weights this model keeps frozen, first "
                             f"{frozen[0]}: loading it would overwrite them{hint}")
        if self.NORM_KEY not in state:  # checked above when present; absent means `none`
            self._check_projector_norm(state, source)
        state = {**state, self.NORM_KEY: own[self.NORM_KEY]}
        missing = sorted(wanted - set(state))
        if missing:
            raise ValueError(f"checkpoint {source} lacks trainable weight {missing[0]}")
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise ValueError(f"checkpoint {source}: {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
        self.load_state_dict(state, strict=False)

    def _check_projector_norm(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Raise unless `state` was trained with this model's projector_norm (no flag: `none`)."""
        code = int(state.get(self.NORM_KEY, torch.tensor(0)))
        trained_norm = NORM_MODES[code] if 0 <= code < len(NORM_MODES) else f"unknown ({code})"
        if trained_norm != self.projector.norm:
            raise ValueError(f"checkpoint {source} was trained with model.projector_norm={trained_norm}; "
                             f"set the same value to load it")

    @property
    def device(self) -> torch.device:
        return self.projector.proj.weight.device

    @property
    def image_preprocessing(self) -> ImagePreprocessing:
        """The encoder's preprocessing (image size, mean, std), for the datasets' image processors."""
        return self.encoder.preprocessing

    @property
    def llm_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    # ------------------------------------------------------------------ the model
    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, Dv) encoder tokens (any float dtype) -> (B, N, Dl) projected tokens in the LLM's dtype."""
        expected = (self.encoder.num_tokens, self.encoder.output_dim)
        if features.dim() != 3 or tuple(features.shape[1:]) != expected:
            raise ValueError(f"image features of shape {tuple(features.shape)} do not fit the encoder's "
                             f"(B, {expected[0]}, {expected[1]}) outputs")
        return self.projector(features.to(self.device)).to(self.llm_dtype)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, Dl) projected image tokens in the LLM's dtype."""
        enc_dtype = next(self.encoder.parameters()).dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and "encoder" not in self.frozen_modules):
            feats = self.encoder(pixel_values.to(self.device, enc_dtype))
        return self.project_features(feats)

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                     image_features: torch.Tensor | None = None, image_tokens: torch.Tensor | None = None,
                     image_counts: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """(B, L) ids with image sentinels + their images -> (B, L, Dl) input embeddings.

        The one door into the splice (`embed_with_images`) for training, batch generation, the vLLM
        engine and the chat.  The images are given as exactly one of: `pixel_values` (T, 3, H, W),
        `image_features` (T, N, Dv) encoder tokens (e.g. from a feature cache) or `image_tokens`
        (T, N, Dl) projected tokens from `encode_images` (the chat computes them once per image);
        `image_counts` (B,) says how many of the T images each row shows, in order (None: one per
        row, T = B).
        """
        if sum(x is not None for x in (pixel_values, image_features, image_tokens)) != 1:
            raise ValueError("give exactly one of pixel_values, image_features and image_tokens")
        if image_tokens is None:
            image_tokens = (self.encode_images(pixel_values) if image_features is None
                            else self.project_features(image_features))
        return embed_with_images(
            self.llm.get_input_embeddings(),
            input_ids.to(self.device),
            image_tokens,
            IMAGE_TOKEN_ID,
            fill_id=self.tokenizer.pad_token_id,
            image_counts=image_counts,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        image_counts: torch.Tensor | list[int] | None = None,
        **_: object,
    ) -> dict[str, torch.Tensor]:
        """Loss over target tokens.

        Args:
            input_ids, attention_mask, labels: (B, L), right-padded, labels = IGNORE_INDEX
            outside the target.
            pixel_values: (T, 3, H, W) images, or
            image_features: (T, N, Dv) their encoder tokens (e.g. from a feature cache).
            image_counts: (B,) images per row (a batch of studies); None: one per row (T = B).
        Returns:
            dict with `loss` (scalar, mean of per-sample losses), `sample_loss` (B,) and
            `num_target_tokens` (scalar, int).
        """
        embeds = self.embed_inputs(input_ids, pixel_values, image_features, image_counts=image_counts)
        # use_cache=False: a KV cache is for generation; in training it would only cost memory and copies
        hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                        use_cache=False).last_hidden_state
        return target_token_loss(hidden, self.llm.get_output_embeddings(), labels)

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 generation: GenerationSettings = GenerationSettings(),
                 image_counts: torch.Tensor | list[int] | None = None) -> list[str]:
        """Batched generation from left-padded prompts; returns one clean summary per row.

        Args:
            pixel_values: (T, 3, H, W); input_ids, attention_mask: (B, L), LEFT-padded prompts
            from `PromptTokenizer.encode_prompt`.
            generation: the decoding settings.
            image_counts: (B,) images per row (studies); None: one per row (T = B).
        Each row stops at the end symbol (or EOS / max_new_tokens) independently.
        """
        embeds = self.embed_inputs(input_ids, pixel_values, image_counts=image_counts)
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask.to(self.device),
                                **generation.generate_kwargs(self.prompt_tokenizer))
        return [self.prompt_tokenizer.decode_answer(row.tolist()) for row in out]
