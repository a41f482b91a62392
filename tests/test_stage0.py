"""Stage 0: LLM fine-tuning on conversations (full / LoRA), export, resume, bad data, perplexity."""

import json
import logging
import random

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from conftest import REPO, SHARED_OPENI, run_torchrun, run_until_checkpoint_then_kill, write_yaml
from xraygpt import builders
from xraygpt.config import load_config, validate
from xraygpt.data.datasets import DatasetError
from xraygpt.data.text_datasets import build_conversations, build_summaries
from xraygpt.evaluation.perplexity import conversation_perplexity
from xraygpt.models.llm import import_bitsandbytes_offline, load_llm, load_tokenizer
from xraygpt.prompting import PromptFormat, PromptTokenizer
from xraygpt.training.checkpoint import read_checkpoint
from xraygpt.runtime import DistInfo


def stage0_config(llm, data_root, out, finetune="lora", neftune_alpha=0.0, **run):
    cfg = {
        "model": {"arch": "llm_sft", "finetune": finetune, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                  "neftune_alpha": neftune_alpha,
                  "llm": {"path": str(llm), "dtype": "float32"}, "prompt": {"max_txt_len": 64}},
        "datasets": {"summaries": {"root": str(data_root), "prompt_path": str(REPO / "prompts" / "alignment.txt"), "max_len": 160}},
        "run": {"task": "llm_sft", "output_dir": str(out), "init_lr": 3e-3, "max_epoch": 1, "iters_per_epoch": 4,
                "batch_size_train": 4, "num_workers": 0, "log_freq": 1, "seed": 3, "sample_generations": 1,
                "max_new_tokens": 8, "weight_decay": 0.0},
    }
    cfg["run"].update(run)
    return cfg


def _run(cfg_path, options=()):
    cfg = load_config(cfg_path, list(options))
    model = builders.build_model(cfg.model, cfg.run.seed)
    train_set = builders.build_datasets(cfg.datasets, cfg.run.seed, "train", model.prompt_tokenizer)
    runner = builders.build_runner(cfg, model, train_set, None, DistInfo())
    runner.train()
    return model


def _build(tiny_assets, finetune, neftune_alpha=0.0, **model):
    cfg = stage0_config(tiny_assets["llm"], tiny_assets["train"], "unused", finetune, neftune_alpha)
    cfg["model"].update(model)
    return builders.build_model(validate(OmegaConf.create(cfg)).model, 0)


def test_lora_trains_only_adapters_full_trains_everything(tiny_assets):
    lora = _build(tiny_assets, "lora")
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    full = _build(tiny_assets, "full")
    assert all(p.requires_grad for p in full.parameters())


def test_lora_merge_reloads_with_plain_from_pretrained_and_same_logits(tiny_assets, tmp_path):
    model = _build(tiny_assets, "lora")
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)  # make the adapters matter
    ids = torch.randint(3, 200, (2, 17))
    model.eval()
    with torch.no_grad():
        unmerged = model.llm(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_assets["llm"]))(input_ids=ids).logits
    assert (unmerged - base).abs().max() > 1e-2  # the adapters change the output
    folder = model.export_pretrained(tmp_path / "hf_model")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    with torch.no_grad():
        merged = reloaded(input_ids=ids).logits
    assert torch.allclose(unmerged, merged, atol=1e-4)
    assert not any("lora" in k for k in reloaded.state_dict())
    llm, tok = load_llm(str(folder), "float32")  # what stages 1-2 do
    assert len(tok) == len(load_tokenizer(tiny_assets["llm"]))


def test_stage0_run_exports_a_folder_stage1_loads(tiny_assets, tmp_path):
    out = tmp_path / "s0"
    _run(write_yaml(stage0_config(tiny_assets["llm"], tiny_assets["train"], out, "full"), tmp_path / "s0.yaml"))
    assert (out / "hf_model" / "model.safetensors").is_file()
    assert (out / "samples.jsonl").is_file() and (out / "loss.png").is_file()
    ckpt = read_checkpoint(out / "checkpoints" / "checkpoint_last.pt")
    assert any(k.startswith("llm.") for k in ckpt["model"])
    from conftest import tiny_config

    cfg = tiny_config(tiny_assets, tmp_path / "s1")
    cfg["model"]["llm"]["path"] = str(out / "hf_model")
    model = builders.build_model(validate(OmegaConf.create(cfg)).model, 0)
    trained = AutoModelForCausalLM.from_pretrained(str(out / "hf_model"))
    assert torch.equal(model.llm.get_input_embeddings().weight, trained.get_input_embeddings().weight)


def test_stage0_resume_after_kill_matches_uninterrupted(tiny_assets, tmp_path):
    # With NEFTune on: its noise draws must replay after the resume too.
    n = 6
    common = dict(neftune_alpha=5.0, iters_per_epoch=n, save_freq_steps=n // 2, sample_generations=0)
    straight = tmp_path / "straight"
    _run(write_yaml(stage0_config(tiny_assets["llm"], tiny_assets["train"], straight, **common), tmp_path / "a.yaml"))
    killed = tmp_path / "killed"
    cfg_path = write_yaml(stage0_config(tiny_assets["llm"], tiny_assets["train"], killed, **common), tmp_path / "b.yaml")
    half = killed / "checkpoints" / f"checkpoint_{n // 2:07d}.pt"
    run_until_checkpoint_then_kill(cfg_path, half)
    _run(cfg_path, [f"run.resume_ckpt_path={half}"])
    a = read_checkpoint(straight / "checkpoints" / "checkpoint_last.pt")["model"]
    b = read_checkpoint(killed / "checkpoints" / "checkpoint_last.pt")["model"]
    assert set(a) == set(b) and all("lora_" in k for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def test_stage0_torchrun_resume_replays_each_ranks_random_draws(tiny_assets, tmp_path):
    """2 ranks (gloo, DDP) with LoRA dropout and NEFTune noise, which draw differently on each rank:
    resuming from the uninterrupted run's step-2 checkpoint ends on its weights."""
    n = 4

    def torchrun(out, options=()):
        cfg = stage0_config(tiny_assets["llm"], tiny_assets["train"], out, neftune_alpha=5.0, iters_per_epoch=n,
                            save_freq_steps=n // 2, sample_generations=0, batch_size_train=2)
        cfg["model"]["lora_dropout"] = 0.1
        run_torchrun(REPO / "train.py", 29563, "--cfg-path", str(write_yaml(cfg, out.parent / f"{out.name}.yaml")),
                     *(["--options", *options] if options else []))

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun(straight)
    half = straight / "checkpoints" / f"checkpoint_{n // 2:07d}.pt"
    assert len(read_checkpoint(half)["rng"]) == 2  # one RNG state per rank
    torchrun(resumed, [f"run.resume_ckpt_path={half}"])
    a = read_checkpoint(straight / "checkpoints" / "checkpoint_last.pt")["model"]
    b = read_checkpoint(resumed / "checkpoints" / "checkpoint_last.pt")["model"]
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_neftune_noises_input_embeddings_only_while_training(tiny_assets, tmp_path, finetune):
    alpha = 5.0
    model = _build(tiny_assets, finetune, alpha)
    embeddings = model.llm.get_input_embeddings()
    ids = torch.randint(3, 200, (2, 17))
    clean = embeddings.weight[ids].detach()
    model.train()
    noise = (embeddings(ids) - clean).abs()
    bound = alpha / (17 * embeddings.embedding_dim) ** 0.5
    assert 0 < noise.max() <= bound + 1e-7 and noise.mean() > bound / 4
    torch.manual_seed(0)
    ours = embeddings(ids)
    import_bitsandbytes_offline()  # the module below imports peft, which imports bitsandbytes
    from transformers.integrations.neftune import neftune_post_forward_hook  # the arithmetic we mirror

    embeddings.neftune_noise_alpha = alpha
    torch.manual_seed(0)
    assert torch.equal(ours, neftune_post_forward_hook(embeddings, (ids,), clean))
    model.eval()
    assert torch.equal(embeddings(ids), clean)
    model.train()
    model.export_pretrained(tmp_path / "hf_model")  # the exported model carries no hook
    assert torch.equal(model.llm.get_input_embeddings()(ids), clean)
    plain = _build(tiny_assets, finetune)
    plain.train()
    assert torch.equal(plain.llm.get_input_embeddings()(ids), clean)
    with pytest.raises(ValueError, match="model.neftune_alpha"):
        _build(tiny_assets, finetune, -1.0)


def test_slot_filler_noise_only_on_the_prompts_filler_and_only_while_training(tiny_assets):
    from xraygpt.constants import IGNORE_INDEX
    from xraygpt.models.llm_sft import noisy_slot_filler

    model = _build(tiny_assets, "full", slot_filler_noise=10.0, slot_filler="a")
    filler = model.filler_id
    assert model.tokenizer("a", add_special_tokens=False)["input_ids"] == [filler]
    ids = torch.randint(3, 200, (3, 12))
    ids[ids == filler] = filler + 1
    ids[:, [2, 3, 9]] = filler  # positions 2, 3 in the prompt; 9 in the answer
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 8:] = ids[:, 8:]
    clean = model.llm.get_input_embeddings()(ids).detach()
    noisy = noisy_slot_filler(clean, ids, labels, filler, scale=1.0)
    changed = (noisy != clean).any(-1)
    expected = torch.zeros_like(changed)
    expected[:, [2, 3]] = True
    assert torch.equal(changed, expected)
    per_sample = (noisy - clean)[:, 2:4].std(dim=(1, 2))
    assert per_sample.max() < 1.5 and len(set(per_sample.tolist())) == 3  # U(0, 1) * scale per sample
    # forward: the loss moves while training only, and only when the prompt holds the filler
    mask = torch.ones_like(ids)
    model.eval()
    eval_loss = model(ids, mask, labels)["loss"]
    assert torch.equal(eval_loss, model(ids, mask, labels)["loss"])
    model.train()
    assert not torch.allclose(model(ids, mask, labels)["loss"], eval_loss)
    no_filler = ids.clone()
    no_filler[:, [2, 3]] = filler + 1
    model.eval()
    clean_loss = model(no_filler, mask, labels)["loss"]
    model.train()
    assert torch.allclose(model(no_filler, mask, labels)["loss"], clean_loss, atol=1e-6)
    with pytest.raises(ValueError, match="model.slot_filler_noise"):
        _build(tiny_assets, "full", slot_filler_noise=-1.0)
    with pytest.raises(ValueError, match="model.slot_filler 'no such filler' is"):
        _build(tiny_assets, "full", slot_filler_noise=1.0, slot_filler="no such filler")


def test_slot_filler_shift_is_one_word_mix_per_sample_on_the_prompts_filler(tiny_assets):
    from xraygpt.constants import IGNORE_INDEX
    from xraygpt.models.llm_sft import shifted_slot_filler

    model = _build(tiny_assets, "full", slot_filler_shift=0.5, slot_filler="a", slot_words=["b", "c"])
    filler = model.filler_id
    assert model.slot_word_ids == [model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in "bc"]
    ids = torch.randint(3, 200, (4, 12))
    ids[ids == filler] = filler + 1
    ids[:, [2, 3, 5]] = filler  # positions 2, 3, 5 in the prompt; 9 in the answer
    ids[:, 9] = filler
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 8:] = ids[:, 8:]
    embedding = model.llm.get_input_embeddings()
    clean = embedding(ids).detach()
    words = embedding.weight.detach()[model.slot_word_ids]
    shifted = shifted_slot_filler(clean, ids, labels, filler, words, scale=0.5)
    delta = shifted - clean
    changed = (delta != 0).any(-1)
    expected = torch.zeros_like(changed)
    expected[:, [2, 3, 5]] = True
    assert torch.equal(changed, expected)
    # one offset per sample, the same at each of its filler items, in the span of the two words
    assert torch.allclose(delta[:, 2], delta[:, 3]) and torch.allclose(delta[:, 2], delta[:, 5])
    assert not torch.allclose(delta[0, 2], delta[1, 2])
    coef = torch.linalg.lstsq(words.T, delta[:, 2].T).solution
    assert torch.allclose(coef.T @ words, delta[:, 2], atol=1e-5)
    assert coef.abs().max() <= 0.5 + 1e-5
    # forward: eval mode leaves the embeddings alone
    mask = torch.ones_like(ids)
    model.eval()
    eval_loss = model(ids, mask, labels)["loss"]
    model.train()
    assert not torch.allclose(model(ids, mask, labels)["loss"], eval_loss)
    with pytest.raises(ValueError, match="model.slot_filler_shift must be >= 0"):
        _build(tiny_assets, "full", slot_filler_shift=-1.0)
    with pytest.raises(ValueError, match="needs model.slot_words"):
        _build(tiny_assets, "full", slot_filler_shift=0.5)
    with pytest.raises(ValueError, match="model.slot_words 'no such word' is"):
        _build(tiny_assets, "full", slot_filler_shift=0.5, slot_filler="a", slot_words=["no such word"])


@pytest.fixture(scope="module")
def ptok(tiny_assets):
    return PromptTokenizer(load_tokenizer(tiny_assets["llm"]), PromptFormat(), 0)


def test_bad_conversations_are_counted_per_reason_and_skipped(tmp_path, ptok, caplog):
    good = {"id": "ok1", "turns": [{"role": "user", "content": "Is the heart enlarged?"},
                                   {"role": "assistant", "content": "Yes, there is cardiomegaly."}]}
    sharegpt = {"id": "ok2", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Effusion?"},
                                               {"from": "gpt", "value": "No pleural effusion."}]}
    lines = [
        json.dumps(good).encode(),
        json.dumps(sharegpt).encode(),
        json.dumps({"id": "norole", "turns": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}).encode(),
        json.dumps({"id": "empty", "turns": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}).encode(),
        json.dumps({"id": "order", "turns": [{"role": "assistant", "content": "x"}]}).encode(),
        json.dumps({"id": "long", "turns": [{"role": "user", "content": "why " * 400}, {"role": "assistant", "content": "x"}]}).encode(),
        b'{"id": "latin1", "turns": [{"role": "user", "content": "caf\xe9"}]}',
        b"{not json",
    ]
    path = tmp_path / "conv.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING):
        ds = build_conversations(str(path), ptok, max_len=256)
    assert [c[0] for c in ds.conversations] == ["ok1", "ok2"]
    assert ds.conversations[1][1] == "Be brief. "
    for reason, first in [("missing role", "norole"), ("empty turn", "empty"), ("bad role order", "order"),
                          ("longer than the context", "long"), ("not UTF-8", "line 7"), ("invalid JSON", "line 8")]:
        assert f"skipped 1 of 8 conversations ({reason}), first: {first}" in caplog.text, reason


def test_no_usable_conversation_is_an_error(tmp_path, ptok):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"id": "x", "turns": [{"role": "user", "content": "q"}]}]))
    with pytest.raises(DatasetError, match="no usable conversation"):
        build_conversations(str(path), ptok)
    with pytest.raises(DatasetError, match="does not exist"):
        build_conversations(str(tmp_path / "none.jsonl"), ptok)


def test_loss_only_on_assistant_turns_and_multi_turn_layout(ptok):
    turns = [("Is the heart enlarged?", "Yes."), ("Any effusion?", "No.")]
    ids, labels = ptok.encode_dialogue(turns)
    text = ptok.tokenizer.decode(ids, skip_special_tokens=True)
    # later turns reuse the end symbol that closed the previous answer ("No.###" + "Doctor: ...")
    assert text.count("Doctor:") == 2 and text.count("###Assistant:") == 2 and "######" not in text
    assert text.replace(" ", "").startswith("###Doctor:Istheheartenlarged?###Assistant:Yes.###Doctor:Anyeffusion?")
    targets = ptok.tokenizer.decode([t for t in labels if t != -100])
    assert targets.replace(" ", "") == "Yes.###No.###"


@pytest.mark.skipif(not SHARED_OPENI.is_dir(), reason="../shared/data/openi-sample is not present")
def test_stage0_lowers_held_out_perplexity_on_real_openi_summaries(tmp_path):
    """Train on 5,000 real OpenI summaries, measure on 400 held-out ones: >= 30% lower perplexity."""
    from xraygpt.embedded.assets import write_tiny_llm

    anns = json.loads((SHARED_OPENI / "filter_cap.json").read_text())["annotations"]
    train, held_out = anns[:5000], anns[-400:]
    for name, part in (("train", train), ("held_out", held_out)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "filter_cap.json").write_text(json.dumps({"annotations": part}))
    write_tiny_llm(tmp_path / "llm", [a["caption"] for a in train], seed=0)
    ptok_ = PromptTokenizer(load_tokenizer(tmp_path / "llm"), PromptFormat(max_txt_len=256), 0)
    held = build_summaries(str(tmp_path / "held_out"), ptok_, prompt_path=str(REPO / "prompts" / "alignment.txt"), max_len=512)

    def ppl(model_path):
        cfg = stage0_config(model_path, tmp_path / "train", "unused", "full")
        model = builders.build_model(validate(OmegaConf.create(cfg)).model, 0)
        return conversation_perplexity(model, held)

    before = ppl(tmp_path / "llm")
    cfg = stage0_config(tmp_path / "llm", tmp_path / "train", tmp_path / "s0", "full", iters_per_epoch=150,
                        batch_size_train=16, sample_generations=0, log_freq=50)
    cfg["model"]["prompt"]["max_txt_len"] = 256
    cfg["datasets"]["summaries"]["max_len"] = 512
    _run(write_yaml(cfg, tmp_path / "s0.yaml"))
    after = ppl(tmp_path / "s0" / "hf_model")
    print(f"held-out perplexity on real OpenI summaries: {before:.1f} -> {after:.1f} ({100 * (1 - after / before):.0f}% lower)")
    assert after <= 0.7 * before
    random.seed(0)


def test_summaries_context_slot_places_each_label_repeats_times(tmp_path, ptok, caplog):
    anns = [{"image_id": "a", "caption": "Cardiomegaly and a nodule."}, {"image_id": "b", "caption": "Normal."},
            {"image_id": "c", "caption": "No context for this one."}]
    (tmp_path / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    (tmp_path / "labels.json").write_text(json.dumps({"a": ["cardiomegaly", "pleural_effusion"], "b": []}))
    prompts = tmp_path / "p.txt"
    prompts.write_text("<Img><ImageHere></Img> Describe.\n")
    ds = build_summaries(str(tmp_path), ptok, prompt_path=str(prompts), context_file="labels.json",
                         context_slot_length=10, context_slot_repeats=3, context_slot_filler="-")
    assert [c[0] for c in ds.conversations] == ["a", "b"]
    slot = ds.conversations[0][2][0][0].split("<Img>")[1].split("</Img>")[0].split(" ")
    assert len(slot) == 10 + 3  # "pleural effusion" is two words in one item
    assert slot.count("cardiomegaly") == 3 and slot.count("effusion") == 3 and slot.count("-") == 10 - 6
    assert ds.conversations[1][2][0][0].startswith("<Img>" + " ".join(["-"] * 10) + "</Img>")
    with caplog.at_level(logging.WARNING):
        ds = build_summaries(str(tmp_path), ptok, prompt_path=str(prompts), context_file="labels.json",
                             context_slot_length=10, context_slot_filler="background")
    assert "context_slot_filler 'background' is" in caplog.text
    assert ds.conversations[1][2][0][0].startswith("<Img>" + " ".join(["background"] * 10) + "</Img>")
    with pytest.raises(DatasetError, match="context_slot_repeats must be >= 1"):
        build_summaries(str(tmp_path), ptok, prompt_path=str(prompts), context_file="labels.json",
                        context_slot_length=10, context_slot_repeats=0)


def test_context_slot_shuffle_permutes_the_items_of_the_chosen_fraction(tmp_path, ptok):
    """slots.json-style string contexts: with context_slot_shuffle 0.5, half of the slots keep their
    layout and half hold the same items in another order (seeded, so the same on every build)."""
    n = 40
    anns = [{"image_id": f"i{k}", "caption": "Nodule."} for k in range(n)]
    (tmp_path / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    slots = {f"i{k}": " ".join(["nodule" if j == k % 9 else "o" for j in range(9)]) for k in range(n)}
    (tmp_path / "slots.json").write_text(json.dumps(slots))
    prompts = tmp_path / "p.txt"
    prompts.write_text("<Img><ImageHere></Img> Describe.\n")

    def built(fraction):
        ds = build_summaries(str(tmp_path), ptok, prompt_path=str(prompts), context_file="slots.json",
                             context_slot_shuffle=fraction)
        return {c[0]: c[2][0][0].split("<Img>")[1].split("</Img>")[0] for c in ds.conversations}

    assert built(0.0) == slots
    shuffled = built(0.5)
    assert shuffled == built(0.5)
    assert all(sorted(shuffled[k].split()) == sorted(slots[k].split()) for k in slots)
    moved = sum(shuffled[k] != slots[k] for k in slots)
    assert n // 2 - 3 <= moved <= n // 2  # a permutation may leave the one word where it was
    with pytest.raises(DatasetError, match=r"context_slot_shuffle must be in \[0, 1\], got 1.5"):
        built(1.5)
