"""Length-grouped batches: every draw once per pass, exact resume, torchrun sharding, >= 95% real
tokens, exact draw lengths, and the same per-sample losses as padded batches."""

import json

import pytest
import torch

from conftest import tiny_config, write_yaml
from test_train import _run_in_process, assert_torchrun_matches_one_process
from xraygpt.data.collate import TrainCollator
from xraygpt.data.datasets import MixedDataset, build_mimic
from xraygpt.data.sampler import LengthGroupedSampler, ResumableSampler
from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval
from xraygpt.training.checkpoint import read_checkpoint
from xraygpt.runtime import DistInfo
from xraygpt.training.runner import IterRunner, RunError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lengths(n, seed=0):
    """Token lengths shaped like stage 1's: ~80 prompt tokens + a long-tailed summary of 20-250 tokens."""
    g = torch.Generator().manual_seed(seed)
    summary = torch.exp(4.2 + 0.5 * torch.randn(n, generator=g))  # log-normal, median ~67 tokens
    return (80 + summary.clamp(20, 250)).long()


def _pass_fn(lengths):
    return lambda epoch_pass: lengths.roll(epoch_pass)  # a different length per draw in each pass


def _take(sampler, count):
    it = iter(sampler)
    return [next(it) for _ in range(count)]


def _real_fraction(keys, lengths_of_pass, n, batch):
    real = slots = 0
    for i in range(0, len(keys) - batch + 1, batch):
        lens = [int(lengths_of_pass(k // n)[k % n]) for k in keys[i : i + batch]]
        real, slots = real + sum(lens), slots + batch * max(lens)
    return real / slots


def test_each_draw_once_per_pass_and_keys_as_resumable_sampler():
    n, batch = 103, 4
    fn = _pass_fn(_lengths(n))
    sampler = LengthGroupedSampler(fn, n, batch, seed=5, mega_batches=4)
    per_pass = -(-n // batch) * batch
    keys = _take(sampler, 3 * per_pass)
    for p in range(3):
        chunk = keys[p * per_pass : (p + 1) * per_pass]
        assert all(k // n == p for k in chunk)  # key = pass * n + index
        assert set(k % n for k in chunk) == set(range(n))  # every sample, the one extra draw wraps
    # the plain sampler's permutation (wrapped to whole batches: its first draw comes again), reordered
    plain = _take(ResumableSampler(n, seed=5), n)
    assert sorted(keys[:per_pass]) == sorted(plain + plain[: per_pass - n])


def test_resume_from_any_batch_boundary_is_exact():
    n, batch = 50, 4
    fn = _pass_fn(_lengths(n, seed=1))
    full = _take(LengthGroupedSampler(fn, n, batch, seed=2, mega_batches=2), 200)
    for start in (0, 4, 48, 52, 100):
        resumed = _take(LengthGroupedSampler(fn, n, batch, seed=2, start=start, mega_batches=2), 200 - start)
        assert resumed == full[start:]


def test_ranks_read_the_global_batches_of_one_process():
    """torchrun: W ranks x batch B read exactly the batches of 1 process x batch W*B, split by rank."""
    n, world, batch = 77, 2, 3
    fn = _pass_fn(_lengths(n, seed=2))
    one = _take(LengthGroupedSampler(fn, n, world * batch, seed=9, mega_batches=3), 240)
    ranks = [_take(LengthGroupedSampler(fn, n, batch, r, world, seed=9, mega_batches=3), 120) for r in range(world)]
    for step in range(40):
        merged = sum((r[step * batch : (step + 1) * batch] for r in ranks), [])
        assert merged == one[step * world * batch : (step + 1) * world * batch]
    assert not set(ranks[0][:batch]) & set(ranks[1][:batch])


def test_grouping_gives_at_least_95_percent_real_tokens_where_random_batches_do_not():
    n, batch = 4000, 16
    lengths = _lengths(n, seed=3)
    fn = _pass_fn(lengths)
    grouped = _real_fraction(_take(LengthGroupedSampler(fn, n, batch, seed=0), 2 * n), fn, n, batch)
    padded = _real_fraction(_take(ResumableSampler(n, seed=0), 2 * n), fn, n, batch)
    assert grouped >= 0.95, grouped
    assert padded < 0.85, padded


@pytest.fixture(scope="module")
def keyed(tiny_assets, tiny_model_factory):
    model = tiny_model_factory(seed=2)
    torch.nn.init.normal_(model.projector.proj.weight, std=0.05)
    ds = build_mimic(str(tiny_assets["train"]), MedCLIPImageEval(112), CaptionProcessor(),
                     prompt_path=str(tiny_assets["prompts"]))
    dataset = MixedDataset([ds, ds], seed=4).with_instructions_by_key()
    return model, dataset, dataset.draw_lengths(model.prompt_tokenizer)


def test_draw_lengths_are_the_collated_lengths(keyed):
    model, dataset, lengths = keyed
    collate = TrainCollator(model.prompt_tokenizer)
    n = len(dataset)
    for epoch_pass in (0, 3):
        expected = lengths(epoch_pass)
        assert len(expected) == n
        for index in range(0, n, 5):
            sample = dataset[epoch_pass * n + index]
            assert collate([sample])["input_ids"].shape[1] == expected[index]
    # the instruction is a function of the key, and varies between keys and passes
    assert dataset[7]["instruction"] == dataset[7]["instruction"]
    assert len({dataset[k]["instruction"] for k in range(0, 4 * n, n // 2)}) > 1


def test_grouped_batches_give_the_same_per_sample_losses_as_padded_batches(keyed):
    model, dataset, lengths = keyed
    collate = TrainCollator(model.prompt_tokenizer)
    n, batch = len(dataset), 8
    losses, fractions = {}, {}
    for name, sampler in (("padded", ResumableSampler(n, seed=1)),
                          ("grouped", LengthGroupedSampler(lengths, n, batch, seed=1, mega_batches=4))):
        keys, real, slots, losses[name] = _take(sampler, n), 0, 0, {}
        with torch.no_grad():
            for i in range(0, n, batch):
                b = collate([dataset[k] for k in keys[i : i + batch]])
                real, slots = real + int(b["attention_mask"].sum()), slots + b["attention_mask"].numel()
                for k, loss in zip(keys[i : i + batch], model(**b)["sample_loss"].tolist()):
                    losses[name][k] = loss
        fractions[name] = real / slots
    assert losses["padded"].keys() == losses["grouped"].keys()
    for k, loss in losses["padded"].items():
        assert abs(loss - losses["grouped"][k]) < 1e-5, k
    assert fractions["grouped"] > fractions["padded"]


def _run(tiny_assets, out, **run):
    cfg = tiny_config(tiny_assets, out, iters_per_epoch=4, sample_generations=0, batch_size_train=4, **run)
    model, runner = _run_in_process(write_yaml(cfg, out.parent / f"{out.name}.yaml"))
    runner.train()
    return model, runner


def test_runner_with_grouping_resumes_exactly(tiny_assets, tmp_path):
    """4 grouped steps straight == resume from the step-2 checkpoint (in a new output_dir) for 2 more."""
    _run(tiny_assets, tmp_path / "straight", group_by_length=True, save_freq_steps=2)
    straight = read_checkpoint(tmp_path / "straight" / "checkpoints" / "checkpoint_last.pt")["model"]
    half = tmp_path / "straight" / "checkpoints" / "checkpoint_0000002.pt"
    _run(tiny_assets, tmp_path / "resumed", group_by_length=True, resume_ckpt_path=str(half))
    resumed = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "checkpoint_last.pt")
    assert resumed["step"] == 4
    for key in straight:
        assert torch.allclose(straight[key], resumed["model"][key], atol=1e-6, rtol=0), key
    records = [json.loads(x) for x in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert all(0.5 < r["real_token_fraction"] <= 1.0 for r in records)


def test_grouping_refused_for_a_streamed_training_set(tiny_model_factory, tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(())

    with pytest.raises(RunError, match="group_by_length needs a map-style training set") as err:
        IterRunner(tiny_model_factory(), (Stream(), None), task=None, lr_schedule=None, config="", dist=DistInfo(),
                   output_dir=str(tmp_path), group_by_length=True)
    assert "\n" not in str(err.value)


def test_torchrun_two_ranks_with_grouping_match_one_process(tiny_assets, tmp_path):
    """2 ranks x batch 2 (gloo, DDP) == 1 process x batch 4, both length-grouped: same global batches."""
    assert_torchrun_matches_one_process(tiny_assets, tmp_path, 29531, group_by_length=True)
