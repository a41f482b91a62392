"""The server's settings: the `serve:` section of a config, its schema taken from `ServeSettings`.

A serve config holds `model` (as for training; `model.ckpt` = the trained projection) and an
optional `serve` section.  `load_serve_config` loads and validates both; `serve.py`'s flags
(--host, --port, ...) are applied as `--options serve.<key>=<value>` so they are validated the
same way.  Imports no web framework, so configs can be checked without one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from xraygpt.config import load_config
from xraygpt.languages import DEFAULT_LANGUAGE, check_language
from xraygpt.models.generation import GenerationSettings, GenerationSettingsError

# The generation defaults requests start from (defined once, in GenerationSettings).
_GENERATION = GenerationSettings()

# Interfaces that only this machine reaches: the server may bind them without API keys.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """Every setting of the OpenAI-compatible server, with its default (the only place each is defined).

    Args:
        host: interface the server binds; anything but 127.0.0.1 / localhost / ::1 needs `api_key_file`.
        port: TCP port.
        api_key_file: text file of API keys, one per line (`#` comments allowed); requests must send
            one as `Authorization: Bearer KEY`.  None: no key asked, and only this machine may connect.
        allow_local_files: accept `image_url`s that are file paths (or `file://` URLs) on the server's
            machine, read with the server's permissions; otherwise only `data:` URLs.
        model_name: the model id `/v1/models` lists and requests must name.
        device: `auto` (CUDA when available, else CPU), `cpu`, `cuda:0`, ...
        max_batch_size: requests generated together in one batch (1 = batching off).
        batch_wait_ms: how long the first request of a batch waits for others to join it.
        max_queue: requests waiting for a batch; more are refused at once with 429.
        max_new_tokens: answer length for a request without `max_tokens` (shortened to what the
            context window leaves).
        temperature, top_p, repetition_penalty: generation for a request that does not set them
            (temperature 0 = greedy; `GenerationSettings` defines the defaults).
        context_window: tokens the LLM attends to (prompt + answer); 0 = the LLM's `max_position_embeddings`.
        max_prompt_tokens: longest prompt (template, image tokens and every turn) accepted; 0 = the
            context window's.
        max_body_mb: larger request bodies are refused with 413.
        max_image_pixels, min_image_side: images with more pixels, or a shorter side, are refused
            (checked from the header, before decoding).
        languages: the values a request's `language` may take; a user message with an image and no
            text is then answered as the first instruction of that language's prompts file (beside
            `prompt_path`, `xraygpt.prompting.summary_instruction`), read when first asked for.
        prompt_path: the English instruction file (a relative path: from the working directory, else
            from the project folder; `xraygpt.prompting.locate`).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key_file: Optional[str] = None
    allow_local_files: bool = False
    model_name: str = "xraygpt"
    device: str = "auto"
    max_batch_size: int = 16
    batch_wait_ms: float = 10.0
    max_queue: int = 64
    max_new_tokens: int = _GENERATION.max_new_tokens
    temperature: float = _GENERATION.control_temperature
    top_p: float = _GENERATION.top_p
    repetition_penalty: float = _GENERATION.repetition_penalty
    context_window: int = 0
    max_prompt_tokens: int = 0
    max_body_mb: float = 64.0
    max_image_pixels: int = 50_000_000
    min_image_side: int = 32
    languages: tuple[str, ...] = (DEFAULT_LANGUAGE, "zh")
    prompt_path: str = "prompts/alignment.txt"

    def __post_init__(self):
        for code in self.languages:
            check_language(code, "serve.languages")
        for key in ("max_batch_size", "max_queue", "max_image_pixels", "min_image_side", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"serve.{key} must be at least 1, got {getattr(self, key)}")
        for key in ("batch_wait_ms", "context_window", "max_prompt_tokens"):
            if getattr(self, key) < 0:
                raise ValueError(f"serve.{key} must be 0 or more, got {getattr(self, key)}")
        if not self.max_body_mb > 0:
            raise ValueError(f"serve.max_body_mb must be more than 0, got {self.max_body_mb}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"serve.port must be in 0..65535, got {self.port}")
        if not self.model_name.strip():
            raise ValueError("serve.model_name must not be empty")
        if self.host not in LOCAL_HOSTS and self.api_key_file is None:
            raise ValueError(f"serve.host {self.host} lets other machines connect: set serve.api_key_file "
                             "(--api-key-file) to serve beyond 127.0.0.1")
        try:
            self.generation(self.max_new_tokens)
        except GenerationSettingsError as exc:
            raise ValueError(f"serve.{exc.key} {exc.reason}") from None

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def generation(self, max_new_tokens: int, temperature: float | None = None, top_p: float | None = None
                   ) -> GenerationSettings:
        """The settings of one answer: a request's values where given, else these defaults.
        Temperature 0 decodes greedily (top_p then unused), more than 0 samples."""
        temperature = self.temperature if temperature is None else temperature
        return GenerationSettings(max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature,
                                  top_p=self.top_p if top_p is None else top_p,
                                  repetition_penalty=self.repetition_penalty)

    def api_keys(self) -> tuple[str, ...]:
        """The keys of `api_key_file` (empty without one); ValueError for a missing or empty file."""
        if self.api_key_file is None:
            return ()
        path = Path(self.api_key_file)
        if not path.is_file():
            raise ValueError(f"serve.api_key_file {path} does not exist")
        keys = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))
        if not keys:
            raise ValueError(f"serve.api_key_file {path} holds no key")
        return keys


def load_serve_config(cfg_path: str | Path, options: list[str] | None = None) -> DictConfig:
    """A serve config (`model` + optional `serve`), validated, every default filled in."""
    return load_config(cfg_path, options, required=("model",), settings={"serve": ServeSettings})


def serve_settings(cfg: DictConfig) -> ServeSettings:
    """The `serve` section of a loaded config as a ServeSettings."""
    section = OmegaConf.to_container(cfg.serve, resolve=True)
    return ServeSettings(**{**section, "languages": tuple(section["languages"])})
