"""OpenAI's chat-completions shapes: the request read and checked, the answers and errors written.

`parse_chat(body)` reads a `POST /v1/chat/completions` body (JSON bytes) into a `ChatRequest`
(pydantic, strict: a wrong type, an unknown argument or an unsupported value is refused) and then
into a `Conversation`: an optional system text, the (question, answer) turns of the training
template with the image put before the question of the user message that carries it
(`prompting.with_image`), and that image's URL.  One user message may carry several images, the
views of one study (at most MAX_STUDY_IMAGES): they are put before its question each tagged with
its view (the request's `views`, an extra field like `language`: one name per image, e.g.
["PA", "lateral"]; without it guessed from the place: first frontal, second lateral, then
unknown), in reading order (frontal first), with the request's `indication` when given
(`xraygpt.data.study_prompts.study_instruction`, as a study sample of training shows them; its tags
and labels in the request's `language`, else in the language of the question, `languages.detect_language`).
Images in two different messages are refused.  Consecutive messages of one role are joined
with a newline.  A request may name its `language` (an extra field, e.g. `extra_body={"language":
"zh"}` with OpenAI's client): a user message carrying the image and no text is then asked the
summary instruction of that language (`conversation(..., summary_instruction=...)`); without
`language` such a message is refused.  A question in words is the user's own, in whatever
language it is written; the model answers in the language it is asked in.  Every refusal is an `APIError` holding OpenAI's error JSON
(`{"error": {"message", "type", "param", "code"}}`) and its HTTP status.

`completion(...)` and `chunk(...)` write a `chat.completion` and a `chat.completion.chunk`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xraygpt.constants import IMAGE_PLACEHOLDER
from xraygpt.data.studies import UNKNOWN_VIEW, canonical_view, view_rank
from xraygpt.data.study_prompts import guess_views, study_instruction
from xraygpt.languages import detect_language
from xraygpt.prompting import with_image

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_STUDY_IMAGES = 4  # images one user message may carry (the views of one study)


class APIError(Exception):
    """A request refused (or failed) with OpenAI's error JSON and an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------- request
class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Lenient(BaseModel):
    """Parts whose extra fields clients send freely (e.g. `detail`, `name`) and which change nothing."""
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageURL(_Lenient):
    url: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: Union[ImageURL, str]

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part], None] = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    """The arguments of `POST /v1/chat/completions` this server reads (others are refused)."""

    model: str
    messages: list[Message]
    max_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    max_completion_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    temperature: Optional[Annotated[float, Field(ge=0, le=2)]] = None
    top_p: Optional[Annotated[float, Field(gt=0, le=1)]] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    # accepted only at the value that asks for nothing this server does not do
    n: Optional[Literal[1]] = None
    frequency_penalty: Optional[Literal[0, 0.0]] = None
    presence_penalty: Optional[Literal[0, 0.0]] = None
    logprobs: Optional[Literal[False]] = None
    user: Optional[str] = None
    language: Optional[str] = None  # not OpenAI's: the language of an image-only message's summary
    views: Optional[list[str]] = None  # not OpenAI's: the view of each image of the message carrying them
    indication: Optional[str] = None  # not OpenAI's: why the study was ordered, put before the question

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


_BRANCHES = {"str", "ImageURL", "TextPart", "ImagePart"}


def _param(loc: tuple) -> str:
    """pydantic's error location as OpenAI names a parameter (messages[0].content[1].image_url): the
    labels pydantic adds for union branches, and the part type after a content part's index, dropped."""
    kept = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in _BRANCHES):
            continue
        kept.append(part)
    # a tagged union puts the tag right after the content part's index: content[1].text.text -> content[1].text
    cleaned = []
    for k, part in enumerate(kept):
        if k >= 2 and isinstance(kept[k - 1], int) and kept[k - 2] == "content" and isinstance(part, str):
            continue
        cleaned.append(part)
    out = ""
    for part in cleaned:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation_error(exc: ValidationError) -> APIError:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return APIError(400, f"the request body is not valid JSON ({errors[0]['msg']})", code="invalid_json")
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    first = extra[0] if extra else max(errors, key=lambda e: len(e["loc"]))  # the deepest: the branch that fitted best
    param = _param(first["loc"])
    if first["type"] == "extra_forbidden":
        return APIError(400, f"unrecognized request argument supplied: {param}", param=param,
                        code="unsupported_parameter")
    if first["type"] == "missing":
        return APIError(400, f"missing required parameter: {param}", param=param, code="missing_required_parameter")
    if first["type"] == "union_tag_invalid":
        return APIError(400, f"{param}: unsupported content part (this server reads 'text' and 'image_url' parts)",
                        param=param, code="invalid_value")
    if first["type"] == "model_type" and not first["loc"]:
        return APIError(400, "the request body must be a JSON object", code="invalid_type")
    alternatives = [e["msg"] for e in errors if _param(e["loc"]) == param and e is not first]
    message = first["msg"] + "".join(f", or {m[:1].lower()}{m[1:]}" for m in alternatives)
    return APIError(400, f"{param}: {message}", param=param or None, code="invalid_value")


# ------------------------------------------------------------------------------------ conversation
@dataclasses.dataclass
class Conversation:
    """What the prompt is built from.

    `system`: the system messages' text (None: the model's prompt.system); `turns`: (question, answer)
    pairs, the last answer None, the question carrying the image tagged by `with_image`;
    `image_url`, `image_param`: the (first) image's URL and where it was in the request;
    `images`: every (URL, where) of the message carrying them, in the order sent (one, or a study's).
    """

    system: str | None
    turns: list[tuple[str, str | None]]
    image_url: str
    image_param: str
    images: list[tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Turn:
    question: list[str]
    index: int  # the message that opened it
    answer: list[str] | None = None
    image: str | None = None


def _texts_and_images(message: Message, i: int) -> tuple[str, list[tuple[str, str]]]:
    """The message's text (parts joined by newlines) and its (url, param) images."""
    if message.content is None:
        raise APIError(400, f"messages[{i}] has no content", param=f"messages[{i}].content", code="invalid_value")
    if isinstance(message.content, str):
        return message.content, []
    texts = [p.text for p in message.content if isinstance(p, TextPart)]
    images = [(p.url, f"messages[{i}].content[{j}]") for j, p in enumerate(message.content) if isinstance(p, ImagePart)]
    return "\n".join(texts), images


def _check_reserved(text: str, param: str, end_sym: str) -> None:
    for reserved in (IMAGE_PLACEHOLDER, end_sym):
        if reserved in text:
            raise APIError(400, f"{param} contains {reserved!r}, which the model's prompt template reserves; "
                                "please rephrase without it", param=param, code="invalid_value")


def study_views(request: ChatRequest, count: int) -> list[str] | None:
    """The views of the `count` images of a request (`views`, else guessed); None for one image given
    without `views` or `indication` (the paper's single-image prompt); APIError for views that do not
    match the images or name no view."""
    if count == 1 and request.views is None and request.indication is None:
        return None
    if request.views is None:
        return guess_views(count)
    if len(request.views) != count:
        raise APIError(400, f"views names {len(request.views)} views for {count} images", param="views",
                       code="invalid_value")
    views = [canonical_view(name) for name in request.views]
    unknown = [name for name, view in zip(request.views, views) if view == UNKNOWN_VIEW and name.lower() != "unknown"]
    if unknown:
        raise APIError(400, f"views: {unknown[0]!r} is not a view (PA, AP, frontal, lateral, LL, unknown, or a "
                            "MIMIC-CXR ViewPosition)", param="views", code="invalid_value")
    return views


def conversation(request: ChatRequest, end_sym: str, summary_instruction: str | None = None) -> Conversation:
    """The request's messages as a Conversation, or APIError saying what is wrong (see module docstring).

    `summary_instruction` (the request's language's, when it names one) stands for the missing text
    of the user message that carries the image."""
    if not request.messages:
        raise APIError(400, "messages is empty: send at least one user message with a chest X-ray",
                       param="messages", code="invalid_value")
    system: list[str] = []
    turns: list[_Turn] = []
    images: list[tuple[str, str, _Turn]] = []
    for i, message in enumerate(request.messages):
        text, found = _texts_and_images(message, i)
        _check_reserved(text, f"messages[{i}].content", end_sym)
        if found and message.role != "user":
            raise APIError(400, f"messages[{i}] is a {message.role} message with an image: only user messages may "
                                "carry one", param=found[0][1], code="invalid_value")
        if message.role in ("system", "developer"):
            if turns:
                raise APIError(400, f"messages[{i}]: system messages must come before the conversation",
                               param=f"messages[{i}]", code="invalid_value")
            system.append(text)
        elif message.role == "user":
            if not turns or turns[-1].answer is not None:
                turns.append(_Turn(question=[], index=i))
            turns[-1].question.append(text)
            images += [(url, param, turns[-1]) for url, param in found]
        else:
            if not turns:
                raise APIError(400, f"messages[{i}]: the conversation must start with a user message",
                               param=f"messages[{i}]", code="invalid_value")
            turns[-1].answer = [*(turns[-1].answer or []), text]
    if not turns:
        raise APIError(400, "messages holds no user message", param="messages", code="invalid_value")
    if turns[-1].answer is not None:
        raise APIError(400, "the last message must be the user's: the model answers it", param="messages",
                       code="invalid_value")
    if not images:
        raise APIError(400, "no image: this model answers questions about one chest X-ray; send it as an "
                            "image_url part of a user message", param="messages", code="missing_image")
    other = next((image for image in images if image[2] is not images[0][2]), None)
    if other is not None:
        raise APIError(400, "images in two messages: this model reads one image per conversation, or the views of "
                            "one study sent together in one user message", param=other[1], code="too_many_images")
    if len(images) > MAX_STUDY_IMAGES:
        raise APIError(400, f"{len(images)} images: a message may carry at most {MAX_STUDY_IMAGES} (the views of "
                            "one study)", param=images[MAX_STUDY_IMAGES][1], code="too_many_images")
    views = study_views(request, len(images))
    if views is not None:  # a study: its images in reading order (frontal first), as training shows them
        order = sorted(range(len(images)), key=lambda k: (view_rank(views[k]), k))
        images, views = [images[k] for k in order], [views[k] for k in order]
        _check_reserved(request.indication or "", "indication", end_sym)
    url, param, image_turn = images[0]

    def carrying_images(question: str) -> str:
        if views is None:
            return with_image(question)
        return study_instruction(views, question, " ".join((request.indication or "").split()),
                                 language=request.language or detect_language(question))

    out = []
    for turn in turns:
        question = "\n".join(t for t in turn.question if t.strip()).strip()
        if not question and turn is image_turn and summary_instruction:
            question = summary_instruction
        if not question:
            raise APIError(400, f"messages[{turn.index}] has no text: please ask a question about the image (or "
                                "send \"language\", e.g. \"en\" or \"zh\", to have it summarised)",
                           param=f"messages[{turn.index}].content", code="invalid_value")
        answer = None if turn.answer is None else "\n".join(turn.answer).strip()
        out.append((carrying_images(question) if turn is image_turn else question, answer))
    return Conversation(system="\n".join(system) if system else None, turns=out, image_url=url, image_param=param,
                        images=[(u, p) for u, p, _ in images])


def parse_chat(body: bytes) -> ChatRequest:
    """The request body as a ChatRequest, or APIError (400) naming the parameter."""
    try:
        request = ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    stops = request.stop_strings
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise APIError(400, f"stop: up to {MAX_STOP} non-empty strings", param="stop", code="invalid_value")
    return request


# ------------------------------------------------------------------------------------------ answers
def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(completion_id: str, created: int, model: str, text: str, finish_reason: str, used: dict) -> dict:
    """A `chat.completion` object with one choice."""
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": used}


def chunk(completion_id: str, created: int, model: str, delta: dict | None, finish_reason: str | None = None,
          used: dict | None = None) -> dict:
    """A `chat.completion.chunk`: one choice's `delta` (None: the usage chunk, which has no choice)."""
    out = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish_reason}]}
    if used is not None:
        out["usage"] = used
    return out
