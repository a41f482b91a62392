"""Batched generation through the evaluator: equal to one-at-a-time (greedy), ablations, the embedded caller's API."""

import pytest
import torch

from conftest import evaluate_split
from xraygpt.data.datasets import MixedDataset
from xraygpt.data.formats import DatasetError
from xraygpt.data.transforms import MedCLIPImageEval
from xraygpt.evaluation.evaluator import dataset_ids
from xraygpt.evaluation.generate import blank_image, generate_fitting, generate_for_dataset, load_samples
from xraygpt.models.generation import GenerationSettings


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    m = tiny_model_factory(seed=2)
    torch.nn.init.normal_(m.projector.proj.weight, std=0.05)
    return m


def test_batched_greedy_equals_one_at_a_time(model, val_dataset, tmp_path):
    batched = evaluate_split(model, val_dataset, tmp_path / "b4", batch_size=4)[0]
    single = evaluate_split(model, val_dataset, tmp_path / "b1", batch_size=1)[0]
    assert [r["prediction"] for r in batched] == [r["prediction"] for r in single]
    assert len({len(r["instruction"]) for r in batched}) > 1  # prompts of different lengths were left-padded together
    assert any(r["prediction"] for r in batched)
    # the embedded pipeline's API gives the same summaries
    rows = generate_for_dataset(model, val_dataset, batch_size=3, max_new_tokens=16)
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in batched]


def test_ablations(model, val_dataset, tmp_path):
    ids = [val_dataset[k]["image_id"] for k in range(len(val_dataset))]
    shuffled = load_samples(val_dataset, [0, len(val_dataset) - 1], "shuffled")
    assert [s["image_source"] for s in shuffled] == [ids[1], ids[0]]
    assert torch.equal(shuffled[0]["pixel_values"], val_dataset[1]["pixel_values"])
    blank = blank_image(MedCLIPImageEval(112), 112)
    assert all(torch.equal(s["pixel_values"], blank) for s in load_samples(val_dataset, [0, 1], "blank", blank))
    rows = evaluate_split(model, val_dataset, tmp_path / "blank", batch_size=4, image_mode="blank")[0]
    assert {r["image_source"] for r in rows} == {"blank"} and [r["image_id"] for r in rows] == ids
    rows = generate_for_dataset(model, val_dataset, 4, "shuffled", 112, MedCLIPImageEval(112), max_new_tokens=4)
    assert [r["image_source"] for r in rows] == ids[1:] + ids[:1]
    with pytest.raises(ValueError, match="image_mode"):
        load_samples(val_dataset, [0], "upside_down")


def test_ids_are_read_without_decoding_and_shards_are_refused(val_dataset):
    assert dataset_ids(val_dataset) == [s[0] for s in val_dataset.datasets[0].samples]

    class Stream(torch.utils.data.IterableDataset):  # a dataset without per-id samples, like ShardDataset
        def __iter__(self):
            return iter(())

        def __len__(self):
            return 1

    with pytest.raises(DatasetError, match="webdataset shard folder cannot be resumed"):
        dataset_ids(MixedDataset([Stream()], seed=0))


def test_batches_are_sorted_by_prompt_length(model, val_dataset, tmp_path, monkeypatch):
    lengths = []
    real = type(model).generate

    def spy(self, pixel_values, input_ids, attention_mask, **kwargs):
        lengths.append(attention_mask.sum(1).tolist())
        return real(self, pixel_values, input_ids, attention_mask, **kwargs)

    monkeypatch.setattr(type(model), "generate", spy)
    rows = evaluate_split(model, val_dataset, tmp_path / "sorted", batch_size=2)[0]  # one window of 8 images, 4 batches
    flat = [n for batch in lengths for n in batch]
    assert [len(b) for b in lengths] == [2, 2, 2, 2]
    assert flat == sorted(flat, reverse=True) and len(set(flat)) > 1  # longest first: the biggest batch comes first
    assert [r["image_id"] for r in rows] == dataset_ids(val_dataset)  # predictions.jsonl stays in split order


def _memory_for(monkeypatch, model, images: int) -> list[int]:
    """Make `model.generate` run out of memory on batches of more than `images`; returns the batch sizes tried."""
    sizes = []
    real = type(model).generate

    def small_memory(self, pixel_values, input_ids, attention_mask, **kwargs):
        sizes.append(len(pixel_values))
        if len(pixel_values) > images:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, pixel_values, input_ids, attention_mask, **kwargs)

    monkeypatch.setattr(type(model), "generate", small_memory)
    return sizes


def test_a_batch_out_of_memory_is_retried_at_half_the_size(model, val_dataset, tmp_path, monkeypatch, caplog):
    reference = evaluate_split(model, val_dataset, tmp_path / "b1", batch_size=1)[0]
    sizes = _memory_for(monkeypatch, model, 2)
    caplog.set_level("WARNING")
    rows, generation = evaluate_split(model, val_dataset, tmp_path / "b8", batch_size=8)
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in reference]
    assert sizes == [8, 4, 2, 2, 2, 2]  # halved twice, then kept at the size that fits
    assert "batch of 8 images ran out of memory; going on with batches of 4" in caplog.text
    assert generation["batch_size"] == 8 and generation["final_batch_size"] == 2
    # the embedded pipeline's API backs off the same way
    sizes.clear()
    assert [r["prediction"] for r in generate_for_dataset(model, val_dataset, batch_size=4, max_new_tokens=16)] == \
        [r["prediction"] for r in reference]
    assert sizes == [4, 2, 2, 2, 2]


def test_a_short_batch_out_of_memory_is_halved_from_its_own_size(model, val_dataset, monkeypatch, caplog):
    sizes = _memory_for(monkeypatch, model, 1)
    caplog.set_level("WARNING")
    rows = []
    samples = load_samples(val_dataset, [0, 1, 2])
    assert generate_fitting(model, samples, 16, lambda batch, r: rows.extend(r),
                            generation=GenerationSettings(max_new_tokens=4)) == 1
    assert sizes == [3, 1, 1, 1]  # not 3 again at "8", then "4", then 2
    assert "batch of 3 images ran out of memory; going on with batches of 1" in caplog.text
    assert sorted(r["image_id"] for r in rows) == sorted(s["image_id"] for s in samples)


def test_one_image_out_of_memory_is_raised_not_halved_to_nothing(model, val_dataset, monkeypatch):
    sizes = []

    def last_one_fails(self, pixel_values, *args, **kwargs):
        sizes.append(len(pixel_values))
        if len(pixel_values) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return ["x"] * len(pixel_values)

    monkeypatch.setattr(type(model), "generate", last_one_fails)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        generate_fitting(model, load_samples(val_dataset, [0, 1, 2]), 2, lambda batch, rows: None,
                         generation=GenerationSettings(max_new_tokens=2))
    assert sizes == [2, 1]
    with pytest.raises(ValueError, match="batch size must be >= 1, got 0"):
        generate_fitting(model, load_samples(val_dataset, [0]), 0, lambda batch, rows: None)


@pytest.mark.parametrize("error, tried", [(torch.cuda.OutOfMemoryError("CUDA out of memory."), [4, 2, 1]),
                                           (RuntimeError("shape mismatch"), [4])])
def test_errors_that_halving_cannot_fix_are_raised(model, val_dataset, monkeypatch, error, tried):
    sizes = []

    def failing(self, pixel_values, *args, **kwargs):
        sizes.append(len(pixel_values))
        raise error

    monkeypatch.setattr(type(model), "generate", failing)
    with pytest.raises(RuntimeError, match=str(error)):
        generate_for_dataset(model, val_dataset, batch_size=4, max_new_tokens=4)
    assert sizes == tried  # out of memory: down to one image; any other error: at once
