"""The demo's settings: the `demo:` section of an eval config, its schema taken from `DemoSettings`.

A demo config holds `model` (as for training; `model.ckpt` = the trained projection) and an
optional `demo` section.  `load_demo_config` loads and validates both; `demo.py`'s flags
(--host, --port, ...) are applied as `--options demo.<key>=<value>` so they are validated the
same way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from xraygpt.config import load_config
from xraygpt.languages import DEFAULT_LANGUAGE, check_language
from xraygpt.models.generation import GenerationSettings, GenerationSettingsError
from xraygpt.prompting import summary_instruction

# The generation defaults the demo's controls start from (defined once, in GenerationSettings).
_GENERATION = GenerationSettings()


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Every setting of the demo, with its default (the only place each default is defined).

    Args:
        host: interface the server binds (127.0.0.1: this machine only).
        port: TCP port.
        share: also open a temporary public *.gradio.live link (contacts Gradio's share server).
        auth_file: text file of `user:password` lines; when set, the UI asks for a login.
        concurrency_limit: answers generated at the same time (all users share one model).
        max_queue_size: requests waiting beyond those; more are refused with "queue full".
        device: `auto` (CUDA when available, else CPU), `cpu`, `cuda:0`, ...
        max_new_tokens, num_beams, temperature: initial generation controls, defaults from
            `GenerationSettings` (temperature 0 = deterministic; beams > 1 show the answer when it
            is complete instead of streaming); `GenerationSettings.from_controls` reads them.
        context_window: tokens the LLM attends to; 0 = the LLM's `max_position_embeddings`.
        auto_summary: summarise an image as soon as it is uploaded (else on the button).
        summary_instruction: the question asked for an English summary (the image is put before it).
        language: the answer language selected when the demo opens (the UI's language control
            switches it per user): the summary question is asked in it.
        languages: the languages the control offers; for each one but English the summary question
            is the first instruction of its prompts file (`prompts/<language>/alignment.txt` beside
            `prompt_path`); a language without that file stops the demo at start-up in one line.
        prompt_path: the English instruction file the other languages' files sit beside (a relative
            path: from the working directory, else from the project folder; `xraygpt.prompting.locate`).
        max_image_pixels, min_image_side: uploads with more pixels, or a shorter side, are refused.
        max_upload_mb: larger uploads are refused by the server before they are stored.
        examples: folders (or files) of example images; missing ones are skipped.
        num_examples: images taken from each example folder (sorted by name).
        delete_uploads_after_s: uploads (and other files the server stores) older than this are
            deleted from the demo's own upload folder, checked as often; the folder is removed
            when the process exits (`xraygpt.ui.app.UploadSweeper`).
    """

    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    auth_file: Optional[str] = None
    concurrency_limit: int = 1
    max_queue_size: int = 64
    device: str = "auto"
    max_new_tokens: int = _GENERATION.max_new_tokens
    num_beams: int = _GENERATION.num_beams
    temperature: float = _GENERATION.control_temperature
    context_window: int = 0
    auto_summary: bool = True
    summary_instruction: str = "Describe the findings and impression of this chest X-ray."
    language: str = DEFAULT_LANGUAGE
    languages: tuple[str, ...] = (DEFAULT_LANGUAGE, "zh")
    prompt_path: str = "prompts/alignment.txt"
    max_image_pixels: int = 50_000_000
    min_image_side: int = 32
    max_upload_mb: int = 200
    examples: tuple[str, ...] = ("dataset/embedded/data/openi/test/image", "../shared/data/openi-sample/image")
    num_examples: int = 4
    delete_uploads_after_s: int = 3600

    def __post_init__(self):
        for key in ("concurrency_limit", "max_queue_size", "max_image_pixels", "max_upload_mb", "min_image_side",
                    "delete_uploads_after_s"):
            if getattr(self, key) < 1:
                raise ValueError(f"demo.{key} must be at least 1, got {getattr(self, key)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"demo.port must be in 0..65535, got {self.port}")
        if self.context_window < 0:
            raise ValueError(f"demo.context_window must be 0 or more, got {self.context_window}")
        for code in (self.language, *self.languages):
            check_language(code, "demo.language" if code == self.language else "demo.languages")
        if self.language not in self.languages:
            raise ValueError(f"demo.language {self.language!r} is not one of demo.languages ({', '.join(self.languages)})")
        try:
            self.generation()
        except GenerationSettingsError as exc:
            raise ValueError(f"demo.{exc.key} {exc.reason}") from None

    def generation(self) -> GenerationSettings:
        """The generation settings the demo's controls start from."""
        return GenerationSettings.from_controls(self.max_new_tokens, self.num_beams, self.temperature)

    def summary_instructions(self) -> dict[str, str]:
        """{language: the question asking for a summary in it} for each of `languages` (English:
        `summary_instruction`); PromptFileError naming the file of a language without prompts."""
        return {code: self.summary_instruction if code == DEFAULT_LANGUAGE else summary_instruction(self.prompt_path, code)
                for code in self.languages}

    def auth(self) -> list[tuple[str, str]] | None:
        """The (user, password) pairs of `auth_file`, or None without one."""
        if self.auth_file is None:
            return None
        path = Path(self.auth_file)
        if not path.is_file():
            raise ValueError(f"demo.auth_file {path} does not exist")
        pairs = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            user, sep, password = line.partition(":")
            if not sep or not user.strip() or not password:
                raise ValueError(f"{path}:{lineno}: expected user:password")
            pairs.append((user.strip(), password))
        if not pairs:
            raise ValueError(f"demo.auth_file {path} holds no user:password line")
        return pairs


def load_demo_config(cfg_path: str | Path, options: list[str] | None = None) -> DictConfig:
    """A demo config (`model` + optional `demo`), validated, every default filled in."""
    return load_config(cfg_path, options, required=("model",), settings={"demo": DemoSettings})


def demo_settings(cfg: DictConfig) -> DemoSettings:
    """The `demo` section of a loaded config as a DemoSettings."""
    section = OmegaConf.to_container(cfg.demo, resolve=True)
    return DemoSettings(**{**section, "examples": tuple(section["examples"]), "languages": tuple(section["languages"])})
