"""The embedded default: everything the quickstart needs, generated locally (no downloads).

`python -m xraygpt.embedded prepare --out dataset/embedded` writes:

    data/mimic/{train,val,test}/   synthetic chest X-ray-like images + summaries (XrayGPT layout)
    data/openi/{train,val,test}/   a second, smaller synthetic source for stage 2
    medclip_tiny/pytorch_model.bin a small Swin (112 px, 3 stages -> 49 tokens) + projection head
                                   with random weights, saved in MedCLIP's released format
                                   (`vision_model.*` with transformers 4.x Swin names, plus
                                   `text_model.*` and `logit_scale`), loaded back by the real loader
    medclip_tiny/swin_config.json  its Swin config
    llm_tiny/                      a randomly initialised 2-layer LLaMA + a SentencePiece tokenizer
                                   trained here on the synthetic summaries (HF folder); stage 0
                                   (`tiny_stage0.yaml`) teaches it the language and the template,
                                   as XrayGPT tuned Vicuna before freezing it

`python -m xraygpt.embedded report --stage1 DIR --stage2 DIR` prints the loss drop of each
stage, the generated samples next to their references, and where the outputs are.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
from pathlib import Path

import torch

from xraygpt.constants import DEFAULT_END_SYM, DEFAULT_PROMPT_TEMPLATE, IMAGE_PLACEHOLDER
from xraygpt.conversation import load_instructions
from xraygpt.data.synthetic import generate_dataset

logger = logging.getLogger(__name__)

TINY_SWIN = {
    "model_type": "swin", "image_size": 112, "patch_size": 4, "num_channels": 3, "embed_dim": 48,
    "depths": [2, 2, 2], "num_heads": [3, 6, 12], "window_size": 7, "mlp_ratio": 4.0,
    "drop_path_rate": 0.0, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
}
TINY_LLAMA = {
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
}
COMPLETE_MARKER = "COMPLETE.json"


def write_tiny_encoder(out: Path, seed: int = 0) -> Path:
    """Random small Swin + projection head saved as MedCLIP releases it; returns the folder."""
    from xraygpt.models.medclip_encoder import MedCLIPVisionEncoder, load_swin_config

    out.mkdir(parents=True, exist_ok=True)
    (out / "swin_config.json").write_text(json.dumps(TINY_SWIN, indent=2))
    torch.manual_seed(seed)
    encoder = MedCLIPVisionEncoder(load_swin_config(out / "swin_config.json"), projection_dim=64)
    state = encoder.medclip_state_dict(names="v4")
    # The text tower and temperature MedCLIP ships beside the vision weights (ignored on load).
    state["text_model.projection_head.weight"] = torch.randn(64, 32)
    state["text_model.model.embeddings.word_embeddings.weight"] = torch.randn(16, 32)
    state["logit_scale"] = torch.tensor(3.0)
    torch.save(state, out / "pytorch_model.bin")
    return out


def train_tokenizer(texts: list[str], folder: Path, vocab_size: int = 512) -> None:
    """Train a SentencePiece BPE model on `texts` and save it as a Hugging Face LLaMA tokenizer."""
    import sentencepiece as spm
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "tokenizer")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0,
            user_defined_symbols=[DEFAULT_END_SYM], minloglevel=2, num_threads=1,
        )
        (folder / "tokenizer.model").write_bytes(Path(prefix + ".model").read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "model_max_length": TINY_LLAMA["max_position_embeddings"],
    }, indent=2))


def conversation_texts(captions: list[str], instructions: list[str], rng: random.Random) -> list[str]:
    """Template-formatted text-only conversations (the image placeholder removed)."""
    texts = []
    for caption in captions:
        instruction = rng.choice(instructions).replace(IMAGE_PLACEHOLDER, "")
        texts.append(DEFAULT_PROMPT_TEMPLATE.format(instruction) + caption + DEFAULT_END_SYM)
    return texts


def write_tiny_llm(folder: Path, texts: list[str], seed: int = 0) -> Path:
    """SentencePiece tokenizer trained on `texts` + a randomly initialised 2-layer LLaMA, as an HF folder.

    The LLaMA learns the language in stage 0 (`train_configs/tiny_stage0.yaml`).
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    train_tokenizer(texts, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=None, **TINY_LLAMA)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


def prepare(out: Path, seed: int = 0, num_train: int = 1000, force: bool = False,
            prompt_path: str = "prompts/alignment.txt") -> Path:
    """Generate the embedded default under `out` (skipped when already complete unless `force`)."""
    marker = out / COMPLETE_MARKER
    settings = {"seed": seed, "num_train": num_train}
    if marker.is_file() and not force and json.loads(marker.read_text()) == settings:
        logger.info("embedded default already prepared in %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    counts = {
        "mimic": generate_dataset(out / "data" / "mimic", num_train=num_train, num_val=16, num_test=100, seed=seed, image_size=112),
        "openi": generate_dataset(out / "data" / "openi", num_train=max(1, num_train // 3), num_val=16, num_test=100, seed=seed + 1, image_size=112),
    }
    logger.info("synthetic data: %s", counts)
    write_tiny_encoder(out / "medclip_tiny", seed)
    captions = [a["caption"] for a in json.loads((out / "data" / "mimic" / "train" / "filter_cap.json").read_text())["annotations"]]
    texts = conversation_texts(captions, load_instructions(prompt_path), random.Random(seed))
    write_tiny_llm(out / "llm_tiny", texts, seed)
    marker.write_text(json.dumps(settings))
    return out


def report(stage_dirs: list[Path]) -> str:
    """Loss drop per stage, samples next to references, and output locations, as text."""
    lines = []
    for d in stage_dirs:
        records = [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines() if x.strip()]
        first, last = records[0]["loss"], records[-1]["loss"]
        lines.append(f"{d}: loss {first:.3f} (step {records[0]['step']}) -> {last:.3f} (step {records[-1]['step']}), "
                     f"{100 * (first - last) / first:.1f}% lower")
    final = stage_dirs[-1]
    lines.append("")
    lines.append(f"Generated summaries ({final / 'samples.jsonl'}):")
    for row in map(json.loads, (final / "samples.jsonl").read_text().splitlines()):
        lines.append(f"- {row['image_id']}")
        lines.append(f"    generated: {row['prediction']}")
        lines.append(f"    reference: {row['reference']}")
    lines.append("")
    for d in stage_dirs:
        lines.append(f"{d}: checkpoints in {d / 'checkpoints'}, log {d / 'log.jsonl'}, loss plot {d / 'loss.png'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Embedded default (synthetic data, tiny MedCLIP, tiny LLaMA).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="generate the embedded default")
    p.add_argument("--out", default="dataset/embedded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--force", action="store_true")
    p.add_argument("--prompt-path", default="prompts/alignment.txt")
    r = sub.add_parser("report", help="summarise finished quickstart runs")
    r.add_argument("stage_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command == "prepare":
        prepare(Path(args.out), args.seed, args.num_train, args.force, args.prompt_path)
    else:
        sys.stdout.write(report(args.stage_dirs) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
