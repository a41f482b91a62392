"""The embedded default: everything the quickstart needs, generated locally (no downloads).

`python -m xraygpt.embedded prepare --out dataset/embedded` writes:

    data/mimic/{train,val,test}/   synthetic chest X-ray-like images + summaries (XrayGPT layout)
    data/openi/{train,val,test}/   a second, smaller synthetic source for stage 2
    data/encoder_pretrain/train/   4x as many images, used only to pretrain the tiny encoder
    medclip_tiny/pytorch_model.bin a small Swin (112 px, patch 8, 2 stages -> 49 tokens) + projection head,
                                   pretrained (3000 steps, ~4.5 CPU minutes) to recognise the synthetic findings,
                                   the stand-in for MedCLIP's pretraining; saved in MedCLIP's format
                                   (`vision_model.*` with transformers 4.x Swin names, plus
                                   `text_model.*` and `logit_scale`), loaded back by the real loader
    medclip_tiny/swin_config.json  its Swin config
    llm_tiny/                      a randomly initialised 2-layer LLaMA + a SentencePiece tokenizer
                                   trained here on the synthetic summaries (HF folder); stage 0
                                   (`tiny_stage0.yaml`) teaches it the language and the template,
                                   as XrayGPT tuned Vicuna before freezing it

`python -m xraygpt.embedded evaluate --run DIR --split DIR --out DIR` scores a finished run on a
held-out synthetic split (finding-level P/R/F1 with the image, images shuffled, blank image).
`python -m xraygpt.embedded report DIR... [--eval DIR]` prints the loss drop of each stage, the
generated samples next to their references, the scores, and where the outputs are.
`python -m xraygpt.embedded summary FILE...` prints one line per findings_metrics.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import tempfile
from pathlib import Path

import torch

from xraygpt import runtime
from xraygpt.constants import DEFAULT_END_SYM, DEFAULT_PROMPT_TEMPLATE, IMAGE_PLACEHOLDER
from xraygpt.conversation import load_instructions
from xraygpt.data.synthetic import generate_dataset

logger = logging.getLogger(__name__)

TINY_SWIN = {
    "model_type": "swin", "image_size": 112, "patch_size": 8, "num_channels": 3, "embed_dim": 64,
    "depths": [2, 2], "num_heads": [4, 8], "window_size": 7, "mlp_ratio": 4.0,
    "drop_path_rate": 0.0, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
}
TINY_LLAMA = {
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
}
COMPLETE_MARKER = "COMPLETE.json"
# Bump when what `prepare` writes changes, so stale folders are regenerated.
EMBEDDED_VERSION = 3


def load_labelled_images(split_dir: Path, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) MedCLIP-normalised images and (N, len(FINDINGS)) 0/1 labels of a synthetic split."""
    from PIL import Image

    from xraygpt.data.synthetic import FINDINGS
    from xraygpt.data.transforms import MedCLIPImageEval

    labels = json.loads((split_dir / "labels.json").read_text())
    process = MedCLIPImageEval(image_size)
    images, targets = [], []
    for image_id, findings in labels.items():
        with Image.open(split_dir / "image" / f"{image_id}.png") as img:
            images.append(process(img))
        targets.append([float(f in findings) for f in FINDINGS])
    return torch.stack(images), torch.tensor(targets)


def _blank_image(size: int) -> torch.Tensor:
    """(1, 3, size, size): a black image through MedCLIP preprocessing."""
    from PIL import Image

    from xraygpt.data.transforms import MedCLIPImageEval

    return MedCLIPImageEval(size)(Image.new("L", (size, size), 0)).unsqueeze(0)


def _max_projected(encoder, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, projection_dim): max over the projected final-stage patch tokens."""
    return encoder.projection_head(encoder.model(pixel_values=images).last_hidden_state).max(dim=1).values


def pretrain_tiny_encoder(encoder, images: torch.Tensor, labels: torch.Tensor, steps: int = 3000,
                          batch_size: int = 32, lr: float = 1e-3, seed: int = 0) -> float:
    """Multi-label pretraining of the tiny encoder on synthetic images; returns the final train accuracy.

    MedCLIP was pretrained (image-report semantic matching) and then frozen; this is the
    embedded default's stand-in: the Swin + projection head learn to predict the findings
    through a linear classifier on the max over projected patch tokens (findings are local;
    the classifier is discarded afterwards), so the patch tokens carry them.
    """
    torch.manual_seed(seed)
    classifier = torch.nn.Linear(encoder.projection_head.out_features, labels.shape[1])
    params = list(encoder.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    encoder.train()
    for step in range(steps):
        for g in optimizer.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(images), (batch_size,), generator=generator)
        batch = images[idx]
        flip = torch.rand(batch_size, generator=generator) < 0.5  # findings are side-free labels here
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        logits = classifier(_max_projected(encoder, batch))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            logger.info("tiny MedCLIP stand-in pretraining: step %d/%d loss %.3f", step + 1, steps, loss.item())
    encoder.eval()
    with torch.no_grad():
        logits = torch.cat([classifier(_max_projected(encoder, images[i:i + 64])) for i in range(0, len(images), 64)])
    per_finding = ((logits > 0).float() == labels).float().mean(dim=0)
    logger.info("tiny MedCLIP stand-in: train accuracy per finding %s", [round(float(a), 3) for a in per_finding])
    return float(per_finding.mean())


def write_tiny_encoder(out: Path, seed: int = 0, train_split: Path | None = None, steps: int = 3000) -> Path:
    """Small Swin + projection head saved as MedCLIP releases it; returns the folder.

    With `train_split` (a synthetic split folder) the encoder is first pretrained on its
    findings (`pretrain_tiny_encoder`); without, its weights stay random.
    """
    from xraygpt.models.medclip_encoder import MedCLIPVisionEncoder, load_swin_config

    out.mkdir(parents=True, exist_ok=True)
    (out / "swin_config.json").write_text(json.dumps(TINY_SWIN, indent=2))
    torch.manual_seed(seed)
    encoder = MedCLIPVisionEncoder(load_swin_config(out / "swin_config.json"), projection_dim=64)
    if train_split is not None:
        images, labels = load_labelled_images(train_split, TINY_SWIN["image_size"])
        # A blank (black) image shows nothing: teach the stand-in that it carries no finding.
        blank = _blank_image(TINY_SWIN["image_size"])
        n_blank = max(1, len(images) // 20)
        images = torch.cat([images, blank.expand(n_blank, -1, -1, -1)])
        labels = torch.cat([labels, torch.zeros(n_blank, labels.shape[1])])
        accuracy = pretrain_tiny_encoder(encoder, images, labels, steps=steps, seed=seed)
        logger.info("tiny MedCLIP stand-in: per-finding train accuracy %.3f", accuracy)
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
            prompt_path: str = "prompts/alignment.txt", encoder_steps: int = 3000) -> Path:
    """Generate the embedded default under `out` (skipped when already complete unless `force`)."""
    marker = out / COMPLETE_MARKER
    settings = {"version": EMBEDDED_VERSION, "seed": seed, "num_train": num_train, "encoder_steps": encoder_steps}
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
    # The encoder's own pretraining set (like MedCLIP's, larger than and disjoint from the
    # summary data the aligner trains and is tested on).
    generate_dataset(out / "data" / "encoder_pretrain", num_train=4 * num_train, num_val=0, num_test=0,
                     seed=seed + 2, image_size=112)
    write_tiny_encoder(out / "medclip_tiny", seed, train_split=out / "data" / "encoder_pretrain" / "train", steps=encoder_steps)
    captions = [a["caption"] for a in json.loads((out / "data" / "mimic" / "train" / "filter_cap.json").read_text())["annotations"]]
    texts = conversation_texts(captions, load_instructions(prompt_path), random.Random(seed))
    write_tiny_llm(out / "llm_tiny", texts, seed)
    marker.write_text(json.dumps(settings))
    return out


def report(stage_dirs: list[Path], eval_dir: Path | None = None) -> str:
    """Loss drop per stage, samples next to references, output locations and (with `eval_dir`)
    the finding-level table of `evaluate_findings`, as text."""
    from xraygpt.evaluation.findings import format_table

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
    if eval_dir is not None:
        results = json.loads((eval_dir / "findings_metrics.json").read_text())
        lines += ["", f"Held-out finding-level scores ({eval_dir}; image = each image, shuffled = images "
                      "shuffled across the split, blank = a black image):", format_table(results)]
    return "\n".join(lines)


def summarise_seeds(metric_files: list[Path]) -> str:
    """One line per seed run: macro F1 with the image, shuffled and blank, and findings per blank image."""
    lines = [f"{'run':<48}{'image':>8}{'shuffled':>10}{'blank':>8}{'blank findings/img':>20}"]
    for path in metric_files:
        r = json.loads(path.read_text())
        lines.append(f"{str(path.parent):<48}{r['image']['macro_f1']:>8.3f}{r['shuffled']['macro_f1']:>10.3f}"
                     f"{r['blank']['macro_f1']:>8.3f}{r['blank']['predicted_positive_rate'] * 4:>20.2f}")
    return "\n".join(lines)


def evaluate_findings(run_dir: Path, split_dir: Path, out_dir: Path, batch_size: int = 50,
                      max_new_tokens: int = 80, seed: int = 0) -> dict:
    """Generate summaries for a held-out synthetic split with the run's final weights, three ways
    (own image, images shuffled across the split, blank image), and score findings against
    `labels.json`.  Writes predictions_<mode>.jsonl and findings_metrics.json to `out_dir`."""
    from xraygpt import builders
    from xraygpt.config import load_config
    from xraygpt.data.datasets import MixedDataset, build_openi
    from xraygpt.data.transforms import CaptionProcessor, MedCLIPImageEval
    from xraygpt.evaluation.findings import finding_scores, format_table
    from xraygpt.evaluation.generate import IMAGE_MODES, generate_for_dataset

    cfg = load_config(run_dir / "config.yaml", [f"model.ckpt={run_dir / 'checkpoints' / 'checkpoint_last.pt'}"])
    model = builders.build_model(cfg.model, seed)
    processor = MedCLIPImageEval(model.encoder.image_size)
    prompt_path = next(iter(cfg.datasets.values())).prompt_path
    dataset = MixedDataset([build_openi(str(split_dir), processor, CaptionProcessor(), prompt_path=prompt_path)], seed)
    labels = json.loads((split_dir / "labels.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for mode in IMAGE_MODES:
        rows = generate_for_dataset(model, dataset, batch_size, mode, model.encoder.image_size, processor,
                                    max_new_tokens=max_new_tokens)
        with (out_dir / f"predictions_{mode}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        results[mode] = finding_scores([r["prediction"] for r in rows], [labels[r["image_id"]] for r in rows])
    (out_dir / "findings_metrics.json").write_text(json.dumps(results, indent=2))
    logger.info("finding-level scores on %s (%d images):\n%s", split_dir, len(dataset), format_table(results))
    return results


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
    r.add_argument("--eval", type=Path, default=None, help="an `evaluate` output folder to include")
    m = sub.add_parser("summary", help="one line per findings_metrics.json (e.g. one per seed)")
    m.add_argument("metric_files", nargs="+", type=Path)
    e = sub.add_parser("evaluate", help="finding-level P/R/F1 on a held-out synthetic split, with image ablations")
    e.add_argument("--run", type=Path, required=True, help="a finished stage-1/2 output_dir")
    e.add_argument("--split", type=Path, required=True, help="a synthetic split folder with labels.json")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runtime.offline_environment()
    runtime.setup_logging(0)
    if args.command == "prepare":
        prepare(Path(args.out), args.seed, args.num_train, args.force, args.prompt_path)
    elif args.command == "evaluate":
        evaluate_findings(args.run, args.split, args.out, seed=args.seed)
    elif args.command == "summary":
        sys.stdout.write(summarise_seeds(args.metric_files) + "\n")
    else:
        sys.stdout.write(report(args.stage_dirs, args.eval) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
