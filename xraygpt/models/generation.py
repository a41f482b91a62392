"""How answers are generated: one settings object for every caller, each default defined once.

`GenerationSettings` is taken by `XrayGPT.generate`, `LLMSFT.generate`, the chat
(`xraygpt.chat.ChatSession.stream_reply`), batch generation (`xraygpt.evaluation.generate`), the
report evaluator, the runner's end-of-training samples and the vLLM engine (which maps it to
vLLM's SamplingParams).  Config sections show its fields as flat keys (`evaluation.max_new_tokens`,
`run.num_beams`, ...; see `xraygpt.config.signature_schema`); the demo's controls map onto it with
`from_controls`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xraygpt.prompting import PromptTokenizer


class GenerationSettingsError(ValueError):
    """A generation setting out of range, in one line naming the key (`key`; `reason` says what is wrong)."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key} {reason}")
        self.key = key
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings (greedy by default).

    Args:
        max_new_tokens: most tokens generated per answer (the end symbol included).
        num_beams: beam search width (1 = greedy, or sampling with `do_sample`).
        do_sample: sample instead of searching.
        temperature, top_p: sampling temperature and nucleus mass (used only with `do_sample`).
        repetition_penalty: transformers' repetition penalty (1 = none).
    Raises GenerationSettingsError for a value out of range.
    """

    max_new_tokens: int = 160
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        for key in ("max_new_tokens", "num_beams"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GenerationSettingsError(key, f"must be a whole number of at least 1, got {value!r}")
        if not isinstance(self.do_sample, bool):
            raise GenerationSettingsError("do_sample", f"must be true or false, got {self.do_sample!r}")
        for key in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise GenerationSettingsError(key, f"must be a finite number, got {value!r}")
        if self.temperature < 0:
            raise GenerationSettingsError("temperature", f"must be 0 or more, got {self.temperature!r}")
        if self.do_sample and self.temperature == 0:
            raise GenerationSettingsError("temperature", "must be more than 0 to sample (do_sample), got 0")
        if not 0 < self.top_p <= 1:
            raise GenerationSettingsError("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if self.repetition_penalty <= 0:
            raise GenerationSettingsError("repetition_penalty", f"must be more than 0, got {self.repetition_penalty!r}")

    @classmethod
    def from_controls(cls, max_new_tokens: int, num_beams: int, temperature: float) -> GenerationSettings:
        """The demo's three controls: temperature 0 decodes deterministically (greedy or beam search),
        more than 0 samples at that temperature; everything else keeps its default."""
        return cls(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=temperature > 0,
                   temperature=cls.temperature if temperature == 0 else temperature)

    @property
    def control_temperature(self) -> float:
        """The temperature as the demo's control shows it: 0 when not sampling."""
        return self.temperature if self.do_sample else 0.0

    def generate_kwargs(self, prompt_tokenizer: PromptTokenizer) -> dict:
        """Keyword arguments of transformers' `generate`: these settings, stopping at the template's end
        symbol (or EOS), with the tokenizer's pad and EOS ids.  Sampling-only settings are None when
        not sampling, and top_k is None, so the LLM's generation_config adds nothing of its own."""
        tokenizer = prompt_tokenizer.tokenizer
        return {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
            "temperature": self.temperature if self.do_sample else None,
            "top_p": self.top_p if self.do_sample else None,
            "top_k": None,
            "repetition_penalty": self.repetition_penalty,
            "stop_strings": [prompt_tokenizer.format.end_sym],
            "tokenizer": tokenizer,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }

    def as_dict(self) -> dict:
        """{field: value}, as recorded in an evaluation's fingerprint.json and metrics.json."""
        return dataclasses.asdict(self)
