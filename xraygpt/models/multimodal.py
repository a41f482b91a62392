"""The one piece of tensor surgery that puts image features into the LLM's input sequence.

Reached through one method, `XrayGPT.embed_inputs`, by training, batch generation, the vLLM
engine and the chat.  The collator writes `IMAGE_TOKEN_ID` (a negative sentinel) at every
image-token position; here the text is embedded with those positions swapped for a valid id,
then the projected image tokens are written into them with `masked_scatter` (the approach of
Hugging Face's LLaVA).
"""

from __future__ import annotations

import torch
from torch import nn

from xraygpt.constants import IMAGE_TOKEN_ID


class ImageTokenCountError(ValueError):
    """The number of image positions in the ids does not match the image features given."""


def splice_image_embeddings(
    input_ids: torch.Tensor,
    token_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    image_token_id: int = IMAGE_TOKEN_ID,
) -> torch.Tensor:
    """Write image features into the image-token positions of a batch of text embeddings.

    Args:
        input_ids: (B, L) token ids with `image_token_id` at image positions.
        token_embeds: (B, L, D) embeddings of `input_ids` (image positions hold anything).
        image_embeds: (B, N, D) projected image tokens; row b fills row b's N image positions
            in order.
        image_token_id: the sentinel id.

    Returns:
        (B, L, D) embeddings, a new tensor (inputs are not modified); dtype of `token_embeds`.

    Raises:
        ImageTokenCountError: when a row does not hold exactly N image positions.
    """
    if input_ids.shape != token_embeds.shape[:2]:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and token_embeds "
                         f"{tuple(token_embeds.shape)} disagree on (B, L)")
    mask = input_ids == image_token_id
    per_row = mask.sum(dim=1)
    b, n, d = image_embeds.shape
    if b != input_ids.shape[0] or bool((per_row != n).any()) or d != token_embeds.shape[-1]:
        raise ImageTokenCountError(
            f"image tokens do not match: {per_row.tolist()} image positions per row in the ids, "
            f"but image features of shape {tuple(image_embeds.shape)} for embeddings of width "
            f"{token_embeds.shape[-1]}"
        )
    mask3 = mask.unsqueeze(-1).expand_as(token_embeds)
    return token_embeds.masked_scatter(mask3, image_embeds.to(token_embeds.dtype))


def embed_with_images(
    embed_tokens: nn.Module,
    input_ids: torch.Tensor,
    image_embeds: torch.Tensor,
    image_token_id: int = IMAGE_TOKEN_ID,
    fill_id: int = 0,
) -> torch.Tensor:
    """Embed (B, L) ids whose image positions hold `image_token_id`, then splice (B, N, D) images in.

    `fill_id` is the valid vocabulary id embedded at image positions before they are overwritten.
    """
    safe_ids = input_ids.masked_fill(input_ids == image_token_id, fill_id)
    return splice_image_embeddings(input_ids, embed_tokens(safe_ids), image_embeds, image_token_id)
