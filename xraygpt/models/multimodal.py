"""The one piece of tensor surgery that puts image features into the LLM's input sequence.

Reached through one method, `XrayGPT.embed_inputs`, by training, batch generation, the vLLM
engine and the chat.  The collator writes `IMAGE_TOKEN_ID` (a negative sentinel) at every
image-token position; here the text is embedded with those positions swapped for a valid id,
then the projected image tokens are written into them with `masked_scatter` (the approach of
Hugging Face's LLaVA).  A row may show several images (a study's views, `xraygpt.data.study_dataset`):
the images of all rows come as one (T, N, D) tensor with the per-row counts; without counts every
row shows one image, and the call is exactly the single-image splice.
"""

from __future__ import annotations

import torch
from torch import nn

from xraygpt.constants import IMAGE_TOKEN_ID


class ImageTokenCountError(ValueError):
    """The number of image positions in the ids does not match the image features given."""


def image_counts_list(image_counts, rows: int) -> list[int]:
    """Per-row image counts as a list of ints: None means one image per row (the paper's recipe)."""
    if image_counts is None:
        return [1] * rows
    counts = image_counts.tolist() if torch.is_tensor(image_counts) else list(image_counts)
    return [int(c) for c in counts]


def splice_image_embeddings(
    input_ids: torch.Tensor,
    token_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    image_token_id: int = IMAGE_TOKEN_ID,
    image_counts: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """Write image features into the image-token positions of a batch of text embeddings.

    Args:
        input_ids: (B, L) token ids with `image_token_id` at image positions.
        token_embeds: (B, L, D) embeddings of `input_ids` (image positions hold anything).
        image_embeds: (T, N, D) projected image tokens of T images, the images of row 0 first,
            then those of row 1, ...; row b's images fill its image positions in order.
        image_token_id: the sentinel id.
        image_counts: (B,) images per row (a study shows several; a row may show none), summing
            to T; None means one image per row (T = B), the paper's single-image recipe.

    Returns:
        (B, L, D) embeddings, a new tensor (inputs are not modified); dtype of `token_embeds`.

    Raises:
        ImageTokenCountError: when a row does not hold exactly (its image count) x N image
            positions, or the counts do not add up to T.
    """
    if input_ids.shape != token_embeds.shape[:2]:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and token_embeds "
                         f"{tuple(token_embeds.shape)} disagree on (B, L)")
    mask = input_ids == image_token_id
    per_row = mask.sum(dim=1)
    t, n, d = image_embeds.shape
    counts = image_counts_list(image_counts, input_ids.shape[0])
    expected = torch.tensor(counts, dtype=per_row.dtype, device=per_row.device) * n
    if (len(counts) != input_ids.shape[0] or sum(counts) != t or min(counts, default=0) < 0
            or bool((per_row != expected).any()) or d != token_embeds.shape[-1]):
        given = "" if image_counts is None else f" for {counts} images per row"
        raise ImageTokenCountError(
            f"image tokens do not match: {per_row.tolist()} image positions per row in the ids, "
            f"but image features of shape {tuple(image_embeds.shape)}{given} for embeddings of width "
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
    image_counts: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """Embed (B, L) ids whose image positions hold `image_token_id`, then splice (T, N, D) images in
    (`image_counts` per row; None: one per row, T = B).

    `fill_id` is the valid vocabulary id embedded at image positions before they are overwritten.
    """
    safe_ids = input_ids.masked_fill(input_ids == image_token_id, fill_id)
    return splice_image_embeddings(input_ids, embed_tokens(safe_ids), image_embeds, image_token_id, image_counts)
