"""Multi-turn chat about one chest X-ray (or one study): the training template, the one splice, streamed answers.

A `ChatSession` belongs to one user and holds
- `image_tokens`: the projected image tokens (1, N, Dl) of the current image, computed once per
  image by `set_image`, or (k, N, Dl) for the k images of a study (`set_study`: several views in
  reading order, frontal first, then an optional prior image, with the indication; the first
  turn kept then carries the study's tagged images and indication as a study sample's instruction
  does, `xraygpt.data.study_prompts.study_instruction`);
- `turns`: the finished (question, answer) pairs about that image.

`stream_reply(question, generation)` encodes the kept turns plus the new question with
`PromptTokenizer.encode_dialogue` (the template of training; the image, `<Img><ImageHere></Img>`,
leads the first turn kept), splices the image tokens into the (1, L, Dl) token embeddings with
`XrayGPT.embed_inputs` (the door training, batch generation and the vLLM engine use) and runs the
LLM's `generate` with the `GenerationSettings` given, in a thread.  It yields the answer so far after each new token (once, at the end,
with beam search, which transformers cannot stream).  Generation stops at the end symbol, which
is never shown.

Context window: the prompt plus `max_new_tokens` must fit in the LLM's context.  The oldest
turns are dropped first, for good (the window only moves forward); the image never is.  A
question that does not fit even alone with the image is refused (`ChatInputError`), not cut.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Iterator, NamedTuple

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from xraygpt.constants import IMAGE_PLACEHOLDER
from xraygpt.data.studies import canonical_view, view_rank
from xraygpt.data.study_prompts import guess_views, study_instruction
from xraygpt.data.transforms import MedCLIPImageEval
from xraygpt.languages import DEFAULT_LANGUAGE
from xraygpt.models.generation import GenerationSettings
from xraygpt.prompting import with_image

logger = logging.getLogger(__name__)


class ChatInputError(ValueError):
    """A request the chat cannot serve, explained for the user in one line."""


class _TokenQueue(BaseStreamer):
    """Hands each new token id list of `generate` to a queue; the first call (the prompt) is skipped."""

    def __init__(self, sink: queue.Queue):
        self.sink = sink
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_seen:
            self.sink.put(value.reshape(-1).tolist())
        self.prompt_seen = True

    def end(self) -> None:
        """Nothing to flush: the generating thread signals the end itself (also after an error)."""


class _Cancelled(StoppingCriteria):
    """Stops generation once `event` is set (the reader went away: reset, closed tab, new question)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


_DONE = object()


class StudyShown(NamedTuple):
    """What a study conversation shows before its first question (`study_prompts.study_instruction`)."""

    views: list[str]  # the current study's views, in reading order
    indication: str
    prior_views: list[str]  # ["FRONTAL"] with a prior image, else []
    language: str  # of the view tags and labels


class ChatSession:
    """One user's conversation about one image with a shared, frozen `XrayGPT` model.

    Args:
        model: the `xraygpt` model (read only; sessions share it).
        context_window: tokens the LLM attends to (prompt + answer); 0 = the LLM's
            `max_position_embeddings`.
    """

    def __init__(self, model, context_window: int = 0):
        self.model = model
        self.prompt_tokenizer = model.prompt_tokenizer
        self.process = MedCLIPImageEval(preprocessing=model.image_preprocessing)
        self.context_window = context_window or model.llm.config.max_position_embeddings
        self.image_tokens: torch.Tensor | None = None
        self.turns: list[tuple[str, str]] = []
        self.dropped_turns = 0
        self.study: StudyShown | None = None

    def reset(self) -> None:
        """Forget the image and the conversation."""
        self.image_tokens = None
        self.turns = []
        self.dropped_turns = 0
        self.study = None

    @torch.no_grad()
    def set_image(self, image: Image.Image) -> None:
        """Start a conversation about `image` (any PIL mode, any size): preprocessed to
        (1, 3, S, S) pixels, encoded and projected once to `image_tokens` (1, N, Dl)."""
        pixels = self.process(image).unsqueeze(0)
        self.image_tokens = self.model.encode_images(pixels)
        self.turns = []
        self.dropped_turns = 0
        self.study = None

    @torch.no_grad()
    def set_study(self, images: list[Image.Image], views: list[str] | None = None, indication: str = "",
                  prior: Image.Image | None = None, language: str = DEFAULT_LANGUAGE) -> list[str]:
        """Start a conversation about a study: `images` with their `views` (any name
        `studies.canonical_view` reads; None or a missing one guessed: first frontal, second lateral),
        put in reading order (frontal first), the optional `prior` image (taken as the prior's frontal
        view) and `indication`; the view tags and labels in `language` (`study_prompts.study_instruction`,
        as the model's study data wrote them).  All are encoded once to `image_tokens` (k, N, Dl).
        Returns the views in the order shown.  Raises ChatInputError for no image or an indication
        holding a reserved symbol."""
        if not images:
            raise ChatInputError("Please give at least one image of the study.")
        indication = " ".join((indication or "").split())
        self._check_reserved(indication, "The indication")
        guessed = guess_views(len(images))
        given = list(views or [])
        views = [canonical_view(given[k]) if k < len(given) and given[k] else guessed[k] for k in range(len(images))]
        order = sorted(range(len(images)), key=lambda k: (view_rank(views[k]), k))
        shown = [images[k] for k in order] + ([prior] if prior is not None else [])
        self.image_tokens = self.model.encode_images(torch.stack([self.process(image) for image in shown]))
        self.study = StudyShown([views[k] for k in order], indication, ["FRONTAL"] if prior is not None else [], language)
        self.turns = []
        self.dropped_turns = 0
        return self.study[0]

    def set_study_language(self, language: str) -> None:
        """Write the loaded study's view tags and labels in `language` from the next reply on (the demo's
        language control); nothing without a study.  The whole dialogue is encoded anew at each reply, so
        earlier turns are shown with the new tags too."""
        if self.study is not None:
            self.study = self.study._replace(language=language)

    @property
    def image_count(self) -> int:
        """Images the conversation shows (0 before any)."""
        return 0 if self.image_tokens is None else len(self.image_tokens)

    def _encode(self, turns: list[tuple[str, str]], question: str) -> list[int]:
        dialogue: list[tuple[str, str | None]] = [*turns, (question, None)]
        first_question, first_answer = dialogue[0]
        if self.study is None:
            dialogue[0] = (with_image(first_question), first_answer)
        else:
            study = self.study
            dialogue[0] = (study_instruction(study.views, first_question, study.indication, study.prior_views,
                                             language=study.language), first_answer)
        return self.prompt_tokenizer.encode_dialogue(dialogue, truncate_answers=False,
                                                     max_images=max(1, self.image_count))[0]

    def _check_reserved(self, text: str, what: str) -> None:
        for reserved in (IMAGE_PLACEHOLDER, "<Img>", self.prompt_tokenizer.format.end_sym):
            if reserved in text:
                raise ChatInputError(f"{what} contains {reserved!r}, which the model's prompt template "
                                     "reserves; please rephrase without it.")

    def check_question(self, question: str) -> str:
        """The stripped question, or ChatInputError saying why it cannot be asked."""
        question = question.strip()
        if not question:
            raise ChatInputError("The question is empty: please type a question.")
        if self.image_tokens is None:
            raise ChatInputError("Please upload a chest X-ray first: questions are about an image.")
        end = self.prompt_tokenizer.format.end_sym
        for reserved in (IMAGE_PLACEHOLDER, end):
            if reserved in question:
                raise ChatInputError(f"The question contains {reserved!r}, which the model's prompt template "
                                     "reserves; please rephrase without it.")
        return question

    def prompt_ids(self, question: str, max_new_tokens: int) -> list[int]:
        """Prompt ids for `question` after the most recent turns that fit with `max_new_tokens`.

        Older turns that do not fit are dropped from the session for good.  Raises
        ChatInputError when the question does not fit even as the only turn.
        """
        budget = self.context_window - max_new_tokens
        for start in range(len(self.turns) + 1):
            ids = self._encode(self.turns[start:], question)
            if len(ids) <= budget:
                if start:
                    self.turns = self.turns[start:]
                    self.dropped_turns += start
                    logger.info("dropped the %d oldest turn(s) to fit the context window of %d tokens",
                                start, self.context_window)
                return ids
        frame = len(self._encode([], ""))
        raise ChatInputError(
            f"The question is too long and was not sent: it takes {len(ids) - frame} tokens, "
            f"but with the image, the template and {max_new_tokens} new tokens only {max(budget - frame, 0)} fit in the "
            f"model's context window of {self.context_window} tokens. Please shorten it (or lower max new tokens).")

    @torch.no_grad()
    def embed_prompt(self, ids: list[int]) -> torch.Tensor:
        """(1, L, Dl) input embeddings of L prompt ids with the image tokens spliced into their sentinels
        (`XrayGPT.embed_inputs`, as for training and batch generation)."""
        counts = None if self.study is None else [self.image_count]  # one image: the paper's splice, unchanged
        return self.model.embed_inputs(torch.tensor([ids]), image_tokens=self.image_tokens, image_counts=counts)

    def stream_reply(self, question: str, generation: GenerationSettings) -> Iterator[str]:
        """An iterator of the answer to `question` as it grows (cleaned, without the end symbol).

        The question is checked and the prompt built now: ChatInputError (see `check_question`,
        `prompt_ids`) is raised by this call, before anything is generated.  The finished
        answer is recorded as a turn; closing the iterator early stops generation.
        """
        question = self.check_question(question)
        embeds = self.embed_prompt(self.prompt_ids(question, generation.max_new_tokens))
        return self._stream(question, embeds, generation)

    def _stream(self, question: str, embeds: torch.Tensor, generation: GenerationSettings) -> Iterator[str]:
        generated: list[int] = []
        shown = None
        for generated in self._generate(embeds, generation):
            text = self.prompt_tokenizer.decode_partial_answer(generated)
            if text != shown:
                shown = text
                yield text
        answer = self.prompt_tokenizer.decode_answer(generated)
        self.turns.append((question, answer))
        if answer != shown:
            yield answer

    def _generate(self, embeds: torch.Tensor, generation: GenerationSettings) -> Iterator[list[int]]:
        """Run `generate` on (1, L, Dl) `embeds` in a thread; yield the ids generated so far."""
        results: queue.Queue = queue.Queue()
        cancel = threading.Event()
        stream = generation.num_beams == 1

        def work() -> None:
            try:
                out = self.model.llm.generate(
                    inputs_embeds=embeds,
                    attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
                    streamer=_TokenQueue(results) if stream else None,
                    stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
                    **generation.generate_kwargs(self.prompt_tokenizer),
                )
                if not stream:
                    results.put(out[0].tolist())
            except Exception as exc:  # handed to the reader, which raises it
                results.put(exc)
            finally:
                results.put(_DONE)

        thread = threading.Thread(target=work, name="xraygpt-generate", daemon=True)
        thread.start()
        generated: list[int] = []
        try:
            while (item := results.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                generated += item
                yield generated
        finally:
            cancel.set()
