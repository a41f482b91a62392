"""The paper's prompt template and its tokenization, shared by training, generation and chat.

A training example reads (spaces as written):

    {system}###Doctor: <Img><ImageHere></Img> {instruction} ###Assistant: {summary}###

Tokens are `[BOS] + tok(text before <ImageHere>) + [IMAGE_TOKEN_ID] * N + tok(text after)`
for the prompt, then `tok(summary + end_sym)` truncated to `max_txt_len` for the target.  The
loss covers only the target tokens.  Multi-turn conversations (stage 0, chat) repeat the
template per turn (`encode_dialogue`).  Generation encodes prompts with the same function, so
the model sees identical token boundaries in training and at inference.  The chat
(`xraygpt.chat`) puts `IMAGE_TAG` before the first question it keeps and streams answers
through `decode_partial_answer`.

Instructions are per language (`xraygpt.languages`): English ones in the file a config names
(`prompts/alignment.txt`), those of language L in the folder L beside it
(`prompts/zh/alignment.txt`): `instruction_file(path, language)`.  A language without that file
is refused in one line naming it (`load_language_instructions`).  A relative path is read from the
working directory, or, when it is not there, from the project folder this package sits in (so
`prompts/...` is found by a demo or server started elsewhere).  `summary_instruction` is the
first instruction of a language's file without its image tag: what the demo asks for a summary.
"""

from __future__ import annotations

import os
from pathlib import Path

from xraygpt.languages import DEFAULT_LANGUAGE, check_language
from xraygpt.constants import (
    DEFAULT_END_SYM,
    DEFAULT_PROMPT_TEMPLATE,
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN_ID,
)


# The folder the package sits in: a relative prompt path missing from the working directory is looked up here.
PROJECT_DIR = Path(__file__).resolve().parent.parent

# How an instruction carries the image, as in every line of prompts/*.txt.
IMAGE_TAG = f"<Img>{IMAGE_PLACEHOLDER}</Img>"


def with_image(question: str) -> str:
    """`question` as the turn that carries the image: `<Img><ImageHere></Img> {question}`."""
    return f"{IMAGE_TAG} {question}"


class PromptFileError(ValueError):
    """An instruction file that is missing, empty or has a line without `<ImageHere>`."""


def load_instructions(path: str | os.PathLike) -> list[str]:
    """Instructions from a text file, one per line, each containing `<ImageHere>` exactly once.

    Blank lines and lines starting with `#` are skipped.
    """
    file = Path(path)
    if not file.is_file():
        raise PromptFileError(f"instruction file {file} does not exist")
    instructions = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.count(IMAGE_PLACEHOLDER) != 1:
            raise PromptFileError(f"{file}:{lineno}: an instruction must contain {IMAGE_PLACEHOLDER} exactly once")
        instructions.append(line)
    if not instructions:
        raise PromptFileError(f"instruction file {file} holds no instructions")
    return instructions


def instruction_file(path: str | os.PathLike, language: str = DEFAULT_LANGUAGE) -> Path:
    """The instruction file of `language` for the English file `path`: `path` itself for English,
    else `<folder of path>/<language>/<name of path>` (`prompts/alignment.txt`, zh ->
    `prompts/zh/alignment.txt`); a `path` already inside a folder named `language` is kept."""
    file = Path(path)
    if check_language(language) == DEFAULT_LANGUAGE or file.parent.name == language:
        return file
    return file.parent / language / file.name


def locate(path: str | os.PathLike) -> Path:
    """`path`, or for a relative path absent from the working directory, the same path in PROJECT_DIR
    when it exists there."""
    file = Path(path)
    if not file.is_absolute() and not file.exists() and (PROJECT_DIR / file).exists():
        return PROJECT_DIR / file
    return file


def load_language_instructions(path: str | os.PathLike, language: str = DEFAULT_LANGUAGE) -> list[str]:
    """`load_instructions(instruction_file(path, language))`, the file found by `locate`; a language
    whose file is missing is refused in one line naming the file."""
    file = locate(instruction_file(path, language))
    if language != DEFAULT_LANGUAGE and not file.is_file():
        raise PromptFileError(f"no prompts for language {language!r}: {file} does not exist (write one instruction "
                              f"per line there, each holding {IMAGE_PLACEHOLDER} once, like {Path(path)})")
    return load_instructions(file)


def summary_instruction(path: str | os.PathLike, language: str = DEFAULT_LANGUAGE) -> str:
    """The first instruction of `language`'s file (see `instruction_file`) without its image tag:
    the question that asks for a summary once the image is in the conversation."""
    first = load_language_instructions(path, language)[0]
    return " ".join(first.replace(IMAGE_TAG, " ").replace(IMAGE_PLACEHOLDER, " ").split())


class PromptFormat:
    """The conversation template.

    Args:
        template: one `{}` receiving the instruction (which holds `<ImageHere>`).
        system: text placed before the first turn (may be empty).
        end_sym: the string that ends an answer; generation stops at it.
        max_txt_len: maximum target (summary + end_sym) length in tokens.
    """

    def __init__(
        self,
        template: str = DEFAULT_PROMPT_TEMPLATE,
        system: str = "",
        end_sym: str = DEFAULT_END_SYM,
        max_txt_len: int = 160,
    ):
        if template.count("{}") != 1:
            raise ValueError(f"prompt template must contain '{{}}' exactly once, got {template!r}")
        if not end_sym:
            raise ValueError("end_sym must not be empty")
        if max_txt_len < 1:
            raise ValueError(f"max_txt_len must be >= 1, got {max_txt_len}")
        self.template = template
        self.system = system
        self.end_sym = end_sym
        self.max_txt_len = max_txt_len

    def render(self, instruction: str) -> str:
        """The prompt text for one instruction (which carries `<ImageHere>`)."""
        return self.system + self.template.format(instruction)


def _check_images(instruction: str, images: int) -> None:
    """An instruction must hold `<ImageHere>` exactly `images` times (ValueError quoting it)."""
    if instruction.count(IMAGE_PLACEHOLDER) != images:
        times = "exactly once" if images == 1 else f"exactly {images} times"
        raise ValueError(f"the instruction must contain {IMAGE_PLACEHOLDER} {times}: {instruction!r}")


class PromptTokenizer:
    """Binds a `PromptFormat` to a tokenizer and the number of image tokens per image."""

    def __init__(self, tokenizer, prompt_format: PromptFormat, num_image_tokens: int):
        self.tokenizer = tokenizer
        self.format = prompt_format
        self.num_image_tokens = num_image_tokens
        if tokenizer.bos_token_id is None:
            raise ValueError("the tokenizer has no BOS token")

    def _tok(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def encode_dialogue(self, turns: list[tuple[str, str | None]], system: str | None = None,
                        truncate_answers: bool = True, max_images: int = 1) -> tuple[list[int], list[int]]:
        """(input_ids, labels) for a conversation of (user, assistant) turns.

        The first user turn is preceded by BOS and the system text (`system`, or the format's).  An assistant answer is
        followed by `end_sym` and is the only part with labels (each answer truncated to
        `max_txt_len` tokens unless `truncate_answers` is False, as the chat's history
        needs: a cut answer would lose its end symbol); a last answer of None leaves the ids
        ending in the assistant prompt, ready for generation.  `<ImageHere>` may appear at most
        `max_images` times in the whole dialogue (once, unless the caller shows a study's several
        images) and each becomes `num_image_tokens` IMAGE_TOKEN_IDs.  When the template starts with `end_sym`
        (the paper's `###Doctor:`), later turns reuse the end symbol that closed the previous
        answer instead of repeating it, as the chat renders it.
        """
        ids = [self.tokenizer.bos_token_id]
        labels = [IGNORE_INDEX]
        images = 0
        end = self.format.end_sym
        for i, (user, answer) in enumerate(turns):
            text = self.format.template.format(user)
            if i == 0:
                text = (self.format.system if system is None else system) + text
            elif text.startswith(end):
                text = text[len(end):]
            pieces = text.split(IMAGE_PLACEHOLDER)
            images += len(pieces) - 1
            if images > max_images:
                raise ValueError(f"a dialogue may hold {IMAGE_PLACEHOLDER} once, got more in turn {i + 1}"
                                 if max_images == 1 else
                                 f"a dialogue may hold {IMAGE_PLACEHOLDER} {max_images} times, got more in turn {i + 1}")
            for j, piece in enumerate(pieces):
                if j:
                    ids += [IMAGE_TOKEN_ID] * self.num_image_tokens
                    labels += [IGNORE_INDEX] * self.num_image_tokens
                piece_ids = self._tok(piece)
                ids += piece_ids
                labels += [IGNORE_INDEX] * len(piece_ids)
            if answer is None:
                if i != len(turns) - 1:
                    raise ValueError("only the last turn may lack an answer")
                break
            target = self.encode_target(answer) if truncate_answers else self._tok(answer + end)
            ids += target
            labels += target
        return ids, labels

    def encode_prompt(self, instruction: str, images: int = 1) -> list[int]:
        """Prompt ids for one instruction holding `<ImageHere>` `images` times (a study's several
        images: `xraygpt.data.study_prompts`): BOS, text, N image sentinels per image, text."""
        _check_images(instruction, images)
        return self.encode_dialogue([(instruction, None)], max_images=images)[0]

    def encode_target(self, summary: str) -> list[int]:
        """Target ids: the summary followed by the end symbol, at most `max_txt_len` tokens."""
        return self._tok(summary + self.format.end_sym)[: self.format.max_txt_len]

    def encode_example(self, instruction: str, summary: str, images: int = 1) -> tuple[list[int], list[int]]:
        """(input_ids, labels) for one image (or `images` images of a study) + instruction -> summary."""
        _check_images(instruction, images)
        return self.encode_dialogue([(instruction, summary)], max_images=images)

    def decode_answer(self, token_ids: list[int]) -> str:
        """Generated ids -> clean text: special tokens dropped, cut at the end symbol, stripped."""
        return self._clean_answer(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    def decode_partial_answer(self, token_ids: list[int]) -> str:
        """`decode_answer` for an answer still being generated: until the end symbol is complete,
        a trailing part of it (e.g. `#` or `##` of `###`) is held back rather than shown, and so
        is a trailing incomplete UTF-8 character (decoded as U+FFFD until its last byte comes)."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True).rstrip("\ufffd")
        end = self.format.end_sym
        if end not in text:
            held = next((k for k in range(len(end) - 1, 0, -1) if text.endswith(end[:k])), 0)
            text = text[: len(text) - held]
        return self._clean_answer(text)

    def _clean_answer(self, text: str) -> str:
        """Text cut at the end symbol, without a stray `Assistant:` label, stripped."""
        return text.split(self.format.end_sym)[0].replace("Assistant:", "").strip()
