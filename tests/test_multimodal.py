import pytest
import torch

from xraygpt.constants import IMAGE_TOKEN_ID
from xraygpt.models.multimodal import ImageTokenCountError, embed_with_images, splice_image_embeddings


def test_splice_places_image_tokens_in_order():
    ids = torch.tensor([[5, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, 6], [IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, 7, 8]])
    text = torch.zeros(2, 4, 3)
    img = torch.arange(12, dtype=torch.float32).reshape(2, 2, 3) + 1
    out = splice_image_embeddings(ids, text, img)
    assert torch.equal(out[0, 1], img[0, 0]) and torch.equal(out[0, 2], img[0, 1])
    assert torch.equal(out[1, 0], img[1, 0]) and torch.equal(out[1, 1], img[1, 1])
    assert torch.equal(out[0, 0], torch.zeros(3)) and torch.equal(out[1, 3], torch.zeros(3))
    assert torch.equal(text, torch.zeros(2, 4, 3))  # input untouched


def test_splice_count_mismatch_raises():
    ids = torch.tensor([[IMAGE_TOKEN_ID, 1, 2], [IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, 2]])
    with pytest.raises(ImageTokenCountError, match=r"\[1, 2\] image positions"):
        splice_image_embeddings(ids, torch.zeros(2, 3, 4), torch.ones(2, 2, 4))
    with pytest.raises(ImageTokenCountError):
        splice_image_embeddings(ids[:1], torch.zeros(1, 3, 4), torch.ones(1, 1, 5))


def test_gradients_flow_to_image_features_only_through_spliced_positions():
    emb = torch.nn.Embedding(10, 4)
    ids = torch.tensor([[1, IMAGE_TOKEN_ID, 2]])
    img = torch.randn(1, 1, 4, requires_grad=True)
    out = embed_with_images(emb, ids, img)
    out.sum().backward()
    assert torch.equal(img.grad, torch.ones(1, 1, 4))
    assert torch.equal(out[0, 0], emb.weight[1])
