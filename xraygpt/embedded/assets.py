"""The asset factory of the embedded default: a tiny MedCLIP-format encoder and a tiny LLaMA.

`write_tiny_encoder(out, seed, train_split, steps)` writes ``out/swin_config.json`` (`TINY_SWIN`:
112 px, patch 8, 2 stages -> 7 x 7 = 49 final-stage tokens of 128-d, projected to 64-d) and
``out/pytorch_model.bin`` in MedCLIP's released layout (`vision_model.*` with transformers 4.x
Swin names, plus `text_model.*` and `logit_scale`), optionally pretrained first on a synthetic
split's findings and, with its slots.json, where each is drawn (`pretrain_tiny_encoder`: the
stand-in for MedCLIP's own pretraining).
`continue_tiny_encoder(source, out, examples, steps)` continues that pretraining from a written
encoder on other examples (the study proof's encoder: both views) and writes it the same way.
`write_tiny_llm(folder, texts, seed)` writes a SentencePiece BPE tokenizer (512 pieces) trained
on `texts` and a randomly initialised 2-layer LLaMA (`TINY_LLAMA`: 128-d, 4 heads) as a Hugging
Face folder; stage 0 (`train_configs/tiny_stage0.yaml`) teaches it the language.
Images are (N, 3, S, S) MedCLIP-normalised tensors; labels (N, len(FINDINGS)) floats in {0, 1}.
"""

from __future__ import annotations

import json
import logging
import math
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from xraygpt.constants import DEFAULT_END_SYM, DEFAULT_PROMPT_TEMPLATE, IMAGE_PLACEHOLDER
from xraygpt.embedded.anatomy import FINDINGS

if TYPE_CHECKING:
    from xraygpt.data.transforms import ImagePreprocessing

logger = logging.getLogger(__name__)

TINY_SWIN = {
    "model_type": "swin", "image_size": 112, "patch_size": 8, "num_channels": 3, "embed_dim": 64,
    "depths": [2, 2], "num_heads": [4, 8], "window_size": 7, "mlp_ratio": 4.0,
    "drop_path_rate": 0.0, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
}


def token_grid(swin: dict) -> int:
    """Tokens per side of a Swin's last stage: image_size / (patch_size * 2**(stages - 1)) (7 for TINY_SWIN)."""
    return swin["image_size"] // (swin["patch_size"] * 2 ** (len(swin["depths"]) - 1))


TINY_LLAMA = {
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
}


def load_labelled_images(split_dir: Path, preprocessing: ImagePreprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) images of a synthetic split as an encoder with `preprocessing` takes them
    (`MedCLIPVisionEncoder.preprocessing`: size S, MedCLIP's mean and std) and (N, len(FINDINGS)) 0/1 labels."""
    from PIL import Image

    from xraygpt.data.transforms import MedCLIPImageEval

    labels = json.loads((split_dir / "labels.json").read_text())
    process = MedCLIPImageEval(preprocessing=preprocessing)
    images, targets = [], []
    for image_id, findings in labels.items():
        with Image.open(split_dir / "image" / f"{image_id}.png") as img:
            images.append(process(img))
        targets.append([float(f in findings) for f in FINDINGS])
    return torch.stack(images), torch.tensor(targets)


def slot_classes() -> dict[str, int]:
    """Slot word -> token-cell class of the encoder's pretraining: 0 for the filler, 1 + the FINDINGS
    index of the finding whose slot word it is (`xraygpt.embedded.slots`)."""
    from xraygpt.embedded.slots import FILLER, SLOT_WORDS

    return {FILLER: 0} | {word: 1 + FINDINGS.index(f) for f, word in SLOT_WORDS.items()}


def load_slot_cells(split_dir: Path) -> torch.Tensor:
    """(N, grid**2) long: per image (labels.json order) and token cell, its `slot_classes` class
    (slots.json, `xraygpt.embedded.slots`)."""
    index = slot_classes()
    labels = json.loads((split_dir / "labels.json").read_text())
    slots = json.loads((split_dir / "slots.json").read_text())
    return torch.tensor([[index[w] for w in slots[k].split(" ")] for k in labels])


def _max_projected(encoder, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, projection_dim): max over the projected final-stage patch tokens."""
    return encoder.projection_head(encoder.model(pixel_values=images).last_hidden_state).max(dim=1).values


def pretrain_tiny_encoder(encoder, images: torch.Tensor, labels: torch.Tensor, steps: int = 3000,
                          batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                          cells: torch.Tensor | None = None) -> float:
    """Multi-label pretraining of the tiny encoder on synthetic images; returns the final train accuracy.

    MedCLIP was pretrained (image-report semantic matching) and then frozen; this is the
    embedded default's stand-in: the Swin + projection head learn to predict the findings
    through a linear classifier on the max over projected patch tokens (findings are local;
    the classifier is discarded afterwards), so the patch tokens carry them.

    With `cells` ((N, grid**2) long, `load_slot_cells`), each final-stage token also learns,
    through a linear head on its hidden state (discarded afterwards), which finding is drawn in
    its own cell (cross-entropy, 0 = nothing), so a token describes its patch, as a pretrained
    Swin's patch tokens do.  Without it the last stage (one 7 x 7 window, global attention)
    may put a finding's evidence on any token: a linear probe found the nodule at its own
    cell's token for 64-77% of nodule cells (88% with `cells`; README, "Learnability").
    """
    torch.manual_seed(seed)
    classifier = torch.nn.Linear(encoder.projection_head.out_features, labels.shape[1])
    params = list(encoder.parameters()) + list(classifier.parameters())
    if cells is not None:
        cell_head = torch.nn.Linear(encoder.model.config.hidden_size, 1 + labels.shape[1])
        params += list(cell_head.parameters())
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
        hidden = encoder.model(pixel_values=batch).last_hidden_state
        logits = classifier(encoder.projection_head(hidden).max(dim=1).values)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[idx])
        if cells is not None:
            g = int(round(cells.shape[1] ** 0.5))
            target = cells[idx].view(-1, g, g)
            target = torch.where(flip[:, None, None], target.flip(-1), target).reshape(-1)
            loss = loss + torch.nn.functional.cross_entropy(cell_head(hidden).flatten(0, 1), target)
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
    findings (`pretrain_tiny_encoder`), and on where each is drawn when the split has
    `slots.json`; without, its weights stay random.
    """
    from xraygpt.models.medclip_encoder import MedCLIPVisionEncoder, load_swin_config

    out.mkdir(parents=True, exist_ok=True)
    (out / "swin_config.json").write_text(json.dumps(TINY_SWIN, indent=2))
    torch.manual_seed(seed)
    encoder = MedCLIPVisionEncoder(load_swin_config(out / "swin_config.json"), projection_dim=64)
    if train_split is not None:
        images, labels = load_labelled_images(train_split, encoder.preprocessing)
        cells = load_slot_cells(train_split) if (train_split / "slots.json").is_file() else None
        _pretrain_with_blanks(encoder, images, labels, cells, steps, seed)
    _save_medclip_format(encoder, out)
    return out


def continue_tiny_encoder(source: Path, out: Path, examples, steps: int, seed: int = 0) -> Path:
    """Pretrain the MedCLIP-format encoder in `source` further and save it in `out`, same layout.

    `examples` is a function `ImagePreprocessing -> (images, labels, cells)` (module docstring;
    `cells` as `load_slot_cells` gives them); training is `pretrain_tiny_encoder`'s for `steps`
    steps from `source`'s weights, with the blank images `write_tiny_encoder` adds.
    """
    from xraygpt.models.medclip_encoder import (MedCLIPVisionEncoder, load_swin_config, read_state_dict,
                                                resolve_checkpoint_file)

    file = resolve_checkpoint_file(source)
    state = read_state_dict(file)  # read once: the projection head's width, then the weights
    width = state["vision_model.projection_head.weight"].shape[0]
    encoder = MedCLIPVisionEncoder(load_swin_config(source / "swin_config.json"), width)
    encoder.load_medclip_state(state, str(file))
    images, labels, cells = examples(encoder.preprocessing)
    _pretrain_with_blanks(encoder, images, labels, cells, steps, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "swin_config.json").write_text((source / "swin_config.json").read_text())
    _save_medclip_format(encoder, out)
    return out


def _pretrain_with_blanks(encoder, images: torch.Tensor, labels: torch.Tensor, cells: torch.Tensor | None,
                          steps: int, seed: int) -> None:
    """`pretrain_tiny_encoder` on the examples plus a twentieth as many blank (black) images, which
    show nothing: the stand-in learns that a blank image carries no finding."""
    from xraygpt.data.transforms import MedCLIPImageEval
    from xraygpt.evaluation.generate import blank_image

    process = MedCLIPImageEval(preprocessing=encoder.preprocessing)
    blank = blank_image(process, process.image_size).unsqueeze(0)
    n_blank = max(1, len(images) // 20)
    images = torch.cat([images, blank.expand(n_blank, -1, -1, -1)])
    labels = torch.cat([labels, torch.zeros(n_blank, labels.shape[1])])
    if cells is not None:
        cells = torch.cat([cells, torch.zeros(n_blank, cells.shape[1], dtype=cells.dtype)])
    accuracy = pretrain_tiny_encoder(encoder, images, labels, steps=steps, seed=seed, cells=cells)
    logger.info("tiny MedCLIP stand-in: per-finding train accuracy %.3f", accuracy)


def _save_medclip_format(encoder, out: Path) -> None:
    """`out/pytorch_model.bin` as MedCLIP releases it: the vision weights (4.x names) and the text
    tower and temperature it ships beside them (random here; ignored on load)."""
    state = encoder.medclip_state_dict(names="v4")
    state["text_model.projection_head.weight"] = torch.randn(64, 32)
    state["text_model.model.embeddings.word_embeddings.weight"] = torch.randn(16, 32)
    state["logit_scale"] = torch.tensor(3.0)
    torch.save(state, out / "pytorch_model.bin")


def train_tokenizer(texts: list[str], folder: Path, vocab_size: int = 512) -> None:
    """Train a SentencePiece BPE model on `texts` and save it as a Hugging Face LLaMA tokenizer.

    Trained as LLaMA's own tokenizer.model is (no NFKC normalisation, spaces kept as written), since
    that is what transformers' fast LLaMA tokenizer assumes when it converts the model: with
    SentencePiece's defaults the fast tokenizer split a full-width "？" into three byte pieces and
    kept double spaces, where SentencePiece itself gave "?" and one space.
    """
    import sentencepiece as spm
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "tokenizer")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0,
            user_defined_symbols=[DEFAULT_END_SYM], minloglevel=2, num_threads=1,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
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
