"""Mixing several training datasets: by size (the default, draws unchanged) or by `sample_ratio`.

With ratios each source's share of the draws follows its ratio, each source reads every sample
once per cycle, a resumed run draws the same sequence, and a bad ratio is a one-line config
error naming the key.
"""

import collections
import random
import shutil

import pytest
import torch

from conftest import tiny_config, write_yaml
from test_train import _run_in_process
from xraygpt import builders
from xraygpt.builders import load_job_config
from xraygpt.config import ConfigError
from xraygpt.data.collate import TrainCollator
from xraygpt.data.datasets import MixedDataset, draws_per_pass, mixing_ratios
from xraygpt.data.sampler import ResumableSampler
from xraygpt.training.checkpoint import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Source:
    """A stand-in member: draws are (name, index, a number from the draw's RNG)."""

    instructions = ["<Img><ImageHere></Img> Describe."]

    def __init__(self, name, n):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def get(self, index, rng, instruction=None):
        return {"source": self.name, "index": index, "draw": rng.random()}


def _take(sampler, count):
    it = iter(sampler)
    return [next(it) for _ in range(count)]


def test_draws_per_pass_follow_the_ratios_and_fill_the_pass():
    assert draws_per_pass([30, 300], [1, 1]) == [165, 165]
    assert draws_per_pass([30, 300], [1, 3]) == [83, 247]  # 82.5 -> 83 (tie to the earlier), 247.5 -> 247
    assert draws_per_pass([10, 10, 10], [1, 1, 1]) == [10, 10, 10]
    assert draws_per_pass([5, 1000], [1e-6, 1]) == [1, 1004]  # a positive ratio is never "never drawn"
    assert sum(draws_per_pass([7, 13, 101], [0.2, 5, 1.5])) == 121
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="number > 0"):
            draws_per_pass([3, 4], [1, bad])


@pytest.mark.parametrize("ratios", [(1, 1), (1, 3), (0.2, 0.5, 0.3)])
def test_drawn_fractions_match_the_ratios(ratios):
    sizes = [40, 300, 77][: len(ratios)]
    mixed = MixedDataset([Source(f"s{i}", n) for i, n in enumerate(sizes)], seed=5, ratios=ratios)
    n = len(mixed)
    keys = _take(ResumableSampler(n, seed=11), 25 * n + 17)  # 25 passes and a bit: every pass shuffled
    counts = collections.Counter(mixed[k]["source"] for k in keys)
    for i, ratio in enumerate(ratios):
        share = counts[f"s{i}"] / len(keys)
        assert abs(share - ratio / sum(ratios)) < 0.01, (i, share, ratio)
    # the share holds in any stretch of a few hundred draws too, not only over whole passes
    window = collections.Counter(mixed[k]["source"] for k in keys[1000:1400])
    assert abs(window["s0"] / 400 - ratios[0] / sum(ratios)) < 0.08


def test_each_source_reads_every_sample_once_per_cycle():
    small, large = Source("small", 40), Source("large", 300)
    mixed = MixedDataset([small, large], seed=2, ratios=[1, 1])  # small is drawn ~4 times per pass, large ~0.5
    n = len(mixed)
    draws = [mixed[k] for k in range(4 * n)]  # key order: the sampler only permutes within a pass
    small_draws = [d["index"] for d in draws if d["source"] == "small"]
    large_draws = [d["index"] for d in draws if d["source"] == "large"]
    for cycle in range(len(small_draws) // 40):
        assert sorted(small_draws[cycle * 40:(cycle + 1) * 40]) == list(range(40))
    assert sorted(large_draws[:300]) == list(range(300))
    assert small_draws[:40] != small_draws[40:80]  # another order in the next cycle
    assert small_draws[:40] != list(range(40))  # a random order, not the file's


def test_without_ratios_a_key_draws_exactly_what_it_drew_before(tiny_assets, tiny_model_factory):
    """The default mix is the concatenation: key k is sample k % len of [first..., second...] with
    the RNG seeded by (seed, k), as before sample_ratio existed; the collated batches are equal."""
    section = lambda root: {  # noqa: E731
        "root": str(root), "prompt_path": str(tiny_assets["prompts"]),
        "vis_processor": {"train": {"name": "medclip_image_train", "image_size": 112}},
        "text_processor": {"train": {"name": "caption"}}}
    cfg = {"mimic": section(tiny_assets["train"]), "openi": section(tiny_assets["val"])}
    mixed = builders.build_datasets(cfg, seed=3, split="train")
    assert mixed.quotas is None
    first, second = mixed.datasets
    concatenation = [(first, i) for i in range(len(first))] + [(second, i) for i in range(len(second))]
    collate = TrainCollator(tiny_model_factory().prompt_tokenizer)
    keys = _take(ResumableSampler(len(mixed), seed=9), 3 * len(mixed))[::7]
    for start in range(0, len(keys), 6):
        batch_keys = keys[start:start + 6]
        got = collate([mixed[k] for k in batch_keys])
        before = []
        for k in batch_keys:
            ds, index = concatenation[k % len(concatenation)]
            before.append(ds.get(index, random.Random(f"3:{k}")))
        want = collate(before)
        assert got["image_ids"] == want["image_ids"]
        for name in ("pixel_values", "input_ids", "attention_mask", "labels"):
            assert torch.equal(got[name], want[name]), name
    assert {mixed[k]["source"] for k in range(len(mixed))} == {"mimic", "openi"}


def test_a_resumed_sampler_draws_the_same_sequence():
    def make():  # a fresh dataset, as a resumed process builds it (nothing cached)
        return MixedDataset([Source("a", 13), Source("b", 50)], seed=8, ratios=[3, 1])

    n = len(make())
    for rank in (0, 1):
        full = _take(ResumableSampler(n, rank, 2, seed=4), 5 * n)
        straight = [make()[k] for k in full]
        for start in (1, n // 2 + 3, 2 * n + 5):
            resumed_keys = _take(ResumableSampler(n, rank, 2, seed=4, start=start), 40)
            resumed = make()
            assert [resumed[k] for k in resumed_keys] == straight[start:start + 40]


def _two_source_config(tiny_assets, out, ratios=None, **run):
    cfg = tiny_config(tiny_assets, out, sample_generations=0, **run)
    cfg["datasets"]["openi"] = {**cfg["datasets"]["mimic"], "root": str(tiny_assets["val"])}
    del cfg["datasets"]["openi"]["eval_root"]
    for name, ratio in zip(("mimic", "openi"), ratios or ()):
        cfg["datasets"][name]["sample_ratio"] = ratio
    return cfg


def test_training_by_ratio_resumes_exactly(tiny_assets, tmp_path):
    """A run mixed by sample_ratio, resumed from its step-3 checkpoint, ends with the same projection."""
    common = dict(iters_per_epoch=6, save_freq_steps=3, log_freq=1)
    straight_path = write_yaml(_two_source_config(tiny_assets, tmp_path / "straight", [1, 2], **common),
                               tmp_path / "straight.yaml")
    _, runner = _run_in_process(straight_path)
    assert runner.train_set.quotas == [24, 48]  # 64 + 8 samples, one third and two thirds
    runner.train()
    straight = read_checkpoint(tmp_path / "straight" / "checkpoints" / "checkpoint_last.pt")["model"]

    resumed_out = tmp_path / "resumed"
    (resumed_out / "checkpoints").mkdir(parents=True)
    half = resumed_out / "checkpoints" / "checkpoint_0000003.pt"
    shutil.copy(tmp_path / "straight" / "checkpoints" / "checkpoint_0000003.pt", half)
    resumed_path = write_yaml(_two_source_config(tiny_assets, resumed_out, [1, 2], **common), tmp_path / "resumed.yaml")
    _, runner = _run_in_process(resumed_path, [f"run.resume_ckpt_path={half}"])
    runner.train()
    resumed = read_checkpoint(resumed_out / "checkpoints" / "checkpoint_last.pt")["model"]
    for key in straight:
        assert torch.allclose(straight[key], resumed[key], atol=1e-6, rtol=0), key


@pytest.mark.parametrize("value, problem", [
    (0, "number > 0"), (-2, "number > 0"), (".nan", "number > 0"), ("'lots'", "could not be converted"),
    ("true", "could not be converted"), ("[1, 2]", "could not be converted")])
def test_a_bad_ratio_is_one_line_naming_the_key(tiny_assets, tmp_path, value, problem):
    path = write_yaml(_two_source_config(tiny_assets, tmp_path / "out", [1, 1]), tmp_path / "cfg.yaml")
    text = path.read_text().replace("sample_ratio: 1", f"sample_ratio: {value}", 1)
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_job_config(path, job="training")
    message = str(info.value)
    assert "\n" not in message and "datasets.mimic.sample_ratio" in message and problem in message, message


def test_ratios_are_given_for_every_training_dataset_or_none(tiny_assets, tmp_path):
    cfg = _two_source_config(tiny_assets, tmp_path / "out")
    cfg["datasets"]["openi"]["sample_ratio"] = 2
    with pytest.raises(ConfigError, match=r"datasets\.mimic\.sample_ratio is not set while datasets\.openi"):
        load_job_config(write_yaml(cfg, tmp_path / "cfg.yaml"), job="training")
    with pytest.raises(ValueError, match="give every training dataset"):
        mixing_ratios({"a": None, "b": 1.0})
    assert mixing_ratios({"a": None, "b": None}) is None
    assert mixing_ratios({"a": 1, "b": 0.5}) == [1.0, 0.5]


def test_held_out_sets_ignore_ratios(tiny_assets, tmp_path):
    cfg = _two_source_config(tiny_assets, tmp_path / "out", [1, 5])
    _, validated = load_job_config(write_yaml(cfg, tmp_path / "cfg.yaml"), job="training")
    held_out = builders.build_datasets(validated.datasets, 0, "eval")
    assert held_out.quotas is None and len(held_out) == 8  # mimic's eval_root, read whole
    train = builders.build_datasets(validated.datasets, 0, "train")
    assert train.quotas == [12, 60]


def test_draw_lengths_by_ratio_are_the_collated_lengths(tiny_assets, tiny_model_factory):
    """run.group_by_length with ratios: the length known before loading is the collated one."""
    from xraygpt.data.datasets import build_mimic
    from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval

    model = tiny_model_factory()
    members = [build_mimic(str(tiny_assets[split]), MedCLIPImageEval(112), CaptionProcessor(),
                           prompt_path=str(tiny_assets["prompts"])) for split in ("train", "val")]
    dataset = MixedDataset(members, seed=6, ratios=[1, 1]).with_instructions_by_key()
    lengths = dataset.draw_lengths(model.prompt_tokenizer)
    collate = TrainCollator(model.prompt_tokenizer)
    n = len(dataset)
    for epoch_pass in (0, 2):
        expected = lengths(epoch_pass)
        assert len(expected) == n
        for index in range(0, n, 3):
            assert collate([dataset[epoch_pass * n + index]])["input_ids"].shape[1] == expected[index]
