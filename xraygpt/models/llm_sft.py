"""Stage 0: supervised fine-tuning of the LLM alone (registered model `llm_sft`).

Text-only conversations in the same `###Doctor:` / `###Assistant:` template as stages 1-2, loss
on assistant turns only (`xraygpt.models.loss.target_token_loss`).  `finetune: lora` wraps the
LLM with peft LoRA adapters (only they train; checkpoints hold only them); `finetune: full`
trains every LLM weight.  `export_pretrained` writes a plain Hugging Face folder (config,
tokenizer, safetensors; LoRA merged in) that stages 1-2 load as their frozen LLM.

`neftune_alpha > 0` adds NEFTune noise (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve
Instruction Finetuning") to the input embeddings while training: uniform noise in
+-alpha / sqrt(L * d) per element for a (B, L, d) batch, none in eval mode; the same arithmetic as
transformers' `neftune_post_forward_hook`, written here (`_neftune_hook`) because the module that
holds that hook imports the Trainer utilities, peft and bitsandbytes.  In the embedded default it
stopped a blank image's projected tokens (a faint mix of every word) from being read as findings
(README, "Learnability").

`slot_filler_noise > 0` adds Gaussian noise to the slot filler (`slot_filler`, the background item
of a context slot, "o" in the embedded default's slots.json) where it stands in the prompt (not in
the answer) while training: per sample, std u * slot_filler_noise * rms(E) per element, u ~ U(0, 1)
and rms(E) the root mean square of the input-embedding matrix.  The filler is then any vector
near "o", up to far from it, so the LLM learns that only a finding's word says a finding and
everything else in the slot says nothing; stages 1-2 replace the slot by projected image tokens
that are never exactly "o".  Without it a seed's LLM read 49 zero or random vectors as findings
(1.1-1.5 per image) and a blank image's tokens as broken sentences naming findings (README,
"Learnability").  None in eval mode.

`slot_filler_shift > 0` adds, on top, one offset per sample shared by every filler item of its
slot while training: sum_k c_k * E[w_k] over the `slot_words` (the slot's finding items), c_k ~
U(-slot_filler_shift, slot_filler_shift) per sample and word.  The noise above is independent
per item, so it averages out over the slot; a shift common to the whole slot does not.  Stage 1's
projection maps a blank image to one token repeated at every position, a small vector with a
faint share of every finding word, and the LLM summed those faint shares over 49 items into
findings.  With the shift it learns that a finding is an item that stands out from the rest of
the slot, not a trace shared by all of it (README, "Learnability").  None in eval mode.
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from xraygpt.constants import IGNORE_INDEX
from xraygpt.models.generation import GenerationSettings
from xraygpt.models.llm import import_bitsandbytes_offline, is_quantized, load_llm
from xraygpt.models.loss import target_token_loss
from xraygpt.prompting import PromptFormat, PromptTokenizer
from xraygpt.registry import register

logger = logging.getLogger(__name__)

FINETUNE_MODES = ("lora", "full")
LLAMA_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _neftune_hook(module: nn.Module, inputs, output: torch.Tensor, alpha: float) -> torch.Tensor:
    """Forward hook of the input embedding: (B, L, d) embeddings + U(-m, m) noise, m = alpha / sqrt(L * d),
    while the module trains; unchanged in eval mode."""
    if not module.training:
        return output
    magnitude = alpha / torch.sqrt(torch.tensor(output.size(1) * output.size(2)))
    return output + torch.zeros_like(output).uniform_(-magnitude, magnitude)


def _one_token(tokenizer, word: str, key: str) -> int:
    """The id of `word`, which must be one token of `tokenizer` (else a ValueError naming `key`)."""
    pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(pieces) != 1:
        raise ValueError(f"{key} {word!r} is {len(pieces)} tokens of this tokenizer; the slot noise needs one-token items")
    return pieces[0]


def _filler_positions(input_ids: torch.Tensor, labels: torch.Tensor, filler_id: int) -> torch.Tensor:
    """(B, L, 1) bool: where the prompt (outside the target, `labels` == IGNORE_INDEX) holds `filler_id`."""
    return ((input_ids == filler_id) & (labels == IGNORE_INDEX)).unsqueeze(-1)


def noisy_slot_filler(embeds: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor, filler_id: int,
                      scale: float) -> torch.Tensor:
    """(B, L, d) embeddings with N(0, (u_b * scale)^2) noise per element, u_b ~ U(0, 1) per sample, added at
    the positions where `input_ids` holds `filler_id` outside the target (`labels` == IGNORE_INDEX)."""
    mask = _filler_positions(input_ids, labels, filler_id)
    sigma = torch.rand(embeds.shape[0], 1, 1, device=embeds.device, dtype=embeds.dtype) * scale
    return embeds + mask * sigma * torch.randn_like(embeds)


def shifted_slot_filler(embeds: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor, filler_id: int,
                        words: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, L, d) embeddings with one offset per sample, c @ words with c ~ U(-scale, scale)^(B, K) and
    `words` the (K, d) word embeddings, added at the positions where `input_ids` holds `filler_id`
    outside the target (`labels` == IGNORE_INDEX)."""
    mask = _filler_positions(input_ids, labels, filler_id)
    coef = (torch.rand(embeds.shape[0], words.shape[0], device=embeds.device, dtype=embeds.dtype) * 2 - 1) * scale
    return embeds + mask * (coef @ words.to(embeds.dtype)).unsqueeze(1)


@register("model", "llm_sft")
class LLMSFT(nn.Module):
    """A causal LLM fine-tuned on conversations, fully or with LoRA.

    Args:
        llm: a Hugging Face causal LM.
        tokenizer: its tokenizer.
        prompt_format: the conversation template.
        finetune: `lora` (peft adapters train) or `full` (all LLM weights train).
        lora_r, lora_alpha, lora_dropout: LoRA rank, scaling numerator and dropout.
        lora_target_modules: names of the linear layers that get adapters.
        neftune_alpha: NEFTune noise scale on the input embeddings while training (0 = off).
        slot_filler_noise: noise on the slot filler in the prompt while training, in units of the
            embedding matrix's rms (0 = off; see the module docstring).
        slot_filler: the slot's background item; one token of the tokenizer (checked when
            `slot_filler_noise` or `slot_filler_shift` > 0).
        slot_filler_shift: bound of the per-sample offset shared by the slot's filler items, in
            units of the `slot_words`' embeddings (0 = off; see the module docstring).
        slot_words: the slot's finding items, each one token of the tokenizer (checked when
            `slot_filler_shift` > 0).
    """

    CONFIG_SECTIONS = {"llm": load_llm, "prompt": PromptFormat}

    def __init__(
        self,
        llm: nn.Module,
        tokenizer,
        prompt_format: PromptFormat,
        finetune: str = "lora",
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] = LLAMA_LINEAR_LAYERS,
        neftune_alpha: float = 0.0,
        slot_filler_noise: float = 0.0,
        slot_filler: str = "o",
        slot_filler_shift: float = 0.0,
        slot_words: list[str] = (),
    ):
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"model.finetune must be one of {FINETUNE_MODES}, got {finetune!r}")
        if neftune_alpha < 0:
            raise ValueError(f"model.neftune_alpha must be >= 0, got {neftune_alpha}")
        if slot_filler_noise < 0:
            raise ValueError(f"model.slot_filler_noise must be >= 0, got {slot_filler_noise}")
        if slot_filler_shift < 0:
            raise ValueError(f"model.slot_filler_shift must be >= 0, got {slot_filler_shift}")
        if slot_filler_shift > 0 and not slot_words:
            raise ValueError("model.slot_filler_shift needs model.slot_words (the slot's finding items)")
        self.slot_filler_noise = float(slot_filler_noise)
        self.slot_filler_shift = float(slot_filler_shift)
        self.filler_id = None
        self.slot_word_ids: list[int] = []
        if slot_filler_noise > 0 or slot_filler_shift > 0:
            self.filler_id = _one_token(tokenizer, slot_filler, "model.slot_filler")
        if slot_filler_shift > 0:
            self.slot_word_ids = [_one_token(tokenizer, w, "model.slot_words") for w in slot_words]
        if is_quantized(llm):
            raise ValueError("stage 0 trains the LLM: load it unquantized (model.llm.quantization: none); "
                             "quantization is for a frozen LLM")
        self.finetune = finetune
        if finetune == "lora":
            import_bitsandbytes_offline()  # peft imports bitsandbytes when it is installed
            from peft import LoraConfig, get_peft_model

            for p in llm.parameters():
                p.requires_grad_(False)
            config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                target_modules=list(lora_target_modules), task_type="CAUSAL_LM")
            llm = get_peft_model(llm, config)
        else:
            for p in llm.parameters():
                p.requires_grad_(True)
        self.llm = llm
        self._neftune_handle = None
        if neftune_alpha > 0:
            self._neftune_handle = llm.get_input_embeddings().register_forward_hook(
                functools.partial(_neftune_hook, alpha=float(neftune_alpha)))
        self.tokenizer = tokenizer
        self.prompt_tokenizer = PromptTokenizer(tokenizer, prompt_format, num_image_tokens=0)
        self.frozen_modules: tuple[str, ...] = ()
        n_train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.parameters())
        logger.info("stage 0 (%s): %d of %d parameters train", finetune, n_train, n_all)

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    # A text-only model: no image encoder, so no image preprocessing to hand to datasets.
    image_preprocessing = None

    @property
    def llm_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights that train: LoRA adapters, or the whole LLM for full fine-tuning."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load weights written by `trainable_state_dict`; every trainable weight must be present."""
        wanted = set(self.trainable_state_dict())
        missing = sorted(wanted - set(state))
        unknown = sorted(set(state) - wanted)
        if missing or unknown:
            which = f"lacks {missing[0]}" if missing else f"has unexpected {unknown[0]}"
            raise ValueError(f"checkpoint {source} {which} (a checkpoint of another model or finetune mode?)")
        self.load_state_dict(state, strict=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, **_: object) -> dict:
        """(B, L) right-padded ids, mask and labels -> `target_token_loss` outputs."""
        if self.training and self.filler_id is not None:
            embedding = self.llm.get_input_embeddings()
            embeds = embedding(input_ids)
            if self.slot_filler_noise > 0:
                rms = embedding.weight.detach().float().pow(2).mean().sqrt().item()
                embeds = noisy_slot_filler(embeds, input_ids, labels, self.filler_id, self.slot_filler_noise * rms)
            if self.slot_word_ids:
                words = embedding.weight.detach()[self.slot_word_ids]
                embeds = shifted_slot_filler(embeds, input_ids, labels, self.filler_id, words, self.slot_filler_shift)
            hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        else:
            hidden = self.llm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return target_token_loss(hidden, self.llm.get_output_embeddings(), labels)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 generation: GenerationSettings = GenerationSettings()) -> list[str]:
        """Answers to left-padded prompts, cut at the end symbol."""
        out = self.llm.generate(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                **generation.generate_kwargs(self.prompt_tokenizer))
        return [self.prompt_tokenizer.decode_answer(row[input_ids.shape[1]:].tolist()) for row in out]

    def merged_llm(self) -> nn.Module:
        """The plain LLM with LoRA merged in (the adapters are folded into this model's weights) and
        without the NEFTune hook."""
        if self._neftune_handle is not None:
            self._neftune_handle.remove()
            self._neftune_handle = None
        if self.finetune == "lora":
            self.llm = self.llm.merge_and_unload()
            self.finetune = "full-merged"
        return self.llm

    def export_pretrained(self, folder: str | Path) -> Path:
        """Save the (merged) LLM and tokenizer as a Hugging Face folder with safetensors weights."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        llm = self.merged_llm()
        llm.save_pretrained(str(out), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out))
        source = getattr(self.tokenizer, "vocab_file", None)
        if source and Path(source).is_file() and not (out / "tokenizer.model").exists():
            shutil.copyfile(source, out / "tokenizer.model")  # keep the SentencePiece original too
        logger.info("stage-0 LLM exported to %s", out)
        return out
