"""The OpenAI-compatible HTTP API over one shared model: `build_app(model, settings)` (FastAPI).

Routes:
- `POST /v1/chat/completions`: OpenAI's chat completions (see `xraygpt.serving.protocol` for what is
  read), answered as a `chat.completion`, or with `stream: true` as server-sent events of
  `chat.completion.chunk`s (the role, then the text token by token, then the finish reason, the
  usage when `stream_options.include_usage`) ending with `data: [DONE]`;
- `GET /v1/models` (and `/v1/models/{id}`): the one model, named `serve.model_name`;
- `GET /health`: `{"status": "ok", ...}` with the queue and batch counters; asks no key.

A request goes: API key (when `serve.api_key_file` is set: `Authorization: Bearer KEY`, else 401)
-> body read up to `serve.max_body_mb` (413) -> queue full? (429 at once, with Retry-After) ->
parsed, image decoded and prompt built in a worker thread (400 for what cannot be served) ->
`Batcher` (dynamic batching, `xraygpt.serving.batcher`).  The prompt is the training template
(`PromptTokenizer.encode_dialogue`): earlier user/assistant messages are earlier turns, the image
leads the question of the message that carries it; a system message replaces `model.prompt.system`.
A prompt over `serve.max_prompt_tokens`, or whose `max_tokens` do not fit the context window, is
refused (400 `context_length_exceeded`), never cut.  A request's `language` (one of
`serve.languages`) makes an image-only user message ask for a summary in that language; a language
that is not served, or whose prompts file is missing, is refused (400, naming the file).  Every
error is OpenAI's error JSON.  A
client that goes away (mid-stream or while waiting) has its generation ended at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid

import anyio
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from xraygpt.data.transforms import MedCLIPImageEval
from xraygpt.prompting import summary_instruction
from xraygpt.models.generation import GenerationSettingsError
from xraygpt.serving import protocol
from xraygpt.serving.batcher import Batcher, Job, QueueFull
from xraygpt.serving.image_urls import load_image
from xraygpt.serving.protocol import APIError
from xraygpt.serving.settings import ServeSettings

logger = logging.getLogger(__name__)

DRAIN_FACTOR = 16  # a body announced larger than this many times the limit is refused without reading it
DISCONNECT_POLL_S = 0.5


def _error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or APIError 413 when it is over `limit` bytes.  An over-long body is read to its
    end and dropped (so that the client, still sending, reads the 413 instead of a reset connection),
    unless it announces more than DRAIN_FACTOR times the limit."""
    too_large = APIError(413, f"the request body is over the server's limit of {limit:,} bytes "
                              "(serve.max_body_mb); send a smaller image", code="request_too_large")
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > DRAIN_FACTOR * limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif chunks:
            chunks = []  # over the limit: keep reading to the end, keep nothing
    if size > limit:
        raise too_large
    return b"".join(chunks)


class ChatService:
    """Turns a request body into a queued `Job` (the checks of the module docstring)."""

    def __init__(self, model, settings: ServeSettings, batcher: Batcher):
        self.model = model
        self.settings = settings
        self.batcher = batcher
        self.prompt_tokenizer = model.prompt_tokenizer
        self.process = MedCLIPImageEval(preprocessing=model.image_preprocessing)
        self.context_window = settings.context_window or model.llm.config.max_position_embeddings
        self.max_prompt_tokens = min(settings.max_prompt_tokens or self.context_window, self.context_window)
        self._encode_lock = threading.Lock()
        self._summaries: dict[str, str] = {}

    def summary_instruction(self, language: str | None) -> str | None:
        """The summary instruction of a request's `language` (None without one), or APIError 400 for a
        language not in serve.languages or without its prompts file.  Read once per language."""
        if language is None:
            return None
        if language not in self.settings.languages:
            raise APIError(400, f"language {language!r} is not served (serve.languages: "
                                f"{', '.join(self.settings.languages)})", param="language", code="invalid_value")
        if language not in self._summaries:
            try:
                self._summaries[language] = summary_instruction(self.settings.prompt_path, language)
            except ValueError as exc:  # PromptFileError: no prompts for this language
                logger.warning("language %s: %s", language, exc)
                raise APIError(400, f"language {language!r}: {exc}", param="language", code="invalid_value") from None
        return self._summaries[language]

    def prepare(self, body: bytes) -> tuple[protocol.ChatRequest, Job]:
        """(request, job without its event loop), or APIError.  Runs in a worker thread (decoding is slow)."""
        s = self.settings
        request = protocol.parse_chat(body)
        if request.model != s.model_name:
            raise APIError(404, f"the model {request.model!r} does not exist on this server (it serves "
                                f"{s.model_name!r})", param="model", code="model_not_found")
        chat = protocol.conversation(request, self.prompt_tokenizer.format.end_sym,
                                     self.summary_instruction(request.language))
        try:  # the values are checked before the image is decoded
            s.generation(request.answer_tokens or 1, request.temperature, request.top_p)
        except GenerationSettingsError as exc:
            raise APIError(400, f"{exc.key} {exc.reason}", param=exc.key, code="invalid_value") from None
        with self._encode_lock:
            ids = self.prompt_tokenizer.encode_dialogue(chat.turns, system=chat.system, truncate_answers=False,
                                                        max_images=len(chat.images))[0]
        if len(ids) > self.max_prompt_tokens:
            raise APIError(400, f"the prompt takes {len(ids)} tokens (the image's {self.prompt_tokenizer.num_image_tokens}, "
                                f"the template and the messages); this server accepts at most {self.max_prompt_tokens}",
                           param="messages", code="context_length_exceeded")
        room = self.context_window - len(ids)
        max_new = request.answer_tokens
        if max_new is None:
            max_new = min(s.max_new_tokens, room)
        if max_new > room or max_new < 1:
            raise APIError(400, f"the prompt takes {len(ids)} tokens and max_tokens asks for {max_new}, more than the "
                                f"model's context window of {self.context_window} tokens holds",
                           param="max_tokens", code="context_length_exceeded")
        pixels = [self.process(load_image(url, param, s.allow_local_files, s.max_image_pixels, s.min_image_side))
                  for url, param in chat.images]
        job = Job(prompt_ids=ids, pixels=pixels[0] if len(pixels) == 1 else torch.stack(pixels),
                  generation=s.generation(max_new, request.temperature, request.top_p),
                  stop=request.stop_strings, seed=request.seed, stream=request.stream)
        return request, job


def build_app(model, settings: ServeSettings, batcher: Batcher | None = None) -> FastAPI:
    """The API over `model` (eval mode, on its device).  The batcher (default: one from `settings`) is
    started and stopped with the app."""
    keys = tuple(key.encode() for key in settings.api_keys())
    batcher = batcher or Batcher(model, settings.max_batch_size, settings.batch_wait_ms, settings.max_queue)
    service = ChatService(model, settings, batcher)
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        logger.info("serving %s: batches of up to %d (wait %g ms), queue of %d, API keys %s",
                    settings.model_name, settings.max_batch_size, settings.batch_wait_ms, settings.max_queue,
                    f"required ({len(keys)})" if keys else "not required (this machine only)")
        yield
        await anyio.to_thread.run_sync(batcher.stop)

    # no /docs: its page loads scripts from a CDN, and the server is offline by construction
    app = FastAPI(title="XrayGPT", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                        type=kind, code=None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        logger.exception("unexpected error serving %s %s", request.method, request.url.path)
        return _error_response(APIError(500, f"internal server error ({type(exc).__name__})", type="server_error"))

    def check_key(request: Request) -> None:
        if not keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(given, key) for key in keys):
            raise APIError(401, "Incorrect API key provided: send one of the server's keys as "
                                "'Authorization: Bearer KEY'", code="invalid_api_key")

    def model_card() -> dict:
        return {"id": settings.model_name, "object": "model", "created": started, "owned_by": "xraygpt"}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, **batcher.stats()}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str, request: Request):
        check_key(request)
        if model_id != settings.model_name:
            raise APIError(404, f"the model {model_id!r} does not exist on this server", param="model",
                           code="model_not_found")
        return model_card()

    def busy() -> APIError:
        return APIError(429, f"the server is busy: {batcher.max_queue} requests are waiting already; retry later",
                        type="server_busy", code="queue_full", headers={"Retry-After": "1"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        body = await read_body(request, settings.max_body_bytes)
        if batcher.full:  # before decoding anything: a flood is refused at once
            raise busy()
        chat, job = await anyio.to_thread.run_sync(service.prepare, body)
        job.loop, job.events = asyncio.get_running_loop(), asyncio.Queue()
        try:
            batcher.submit(job)
        except QueueFull:
            raise busy() from None
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        prompt_tokens = len(job.prompt_ids)
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return StreamingResponse(_stream(job, completion_id, created, prompt_tokens, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        event = await _outcome(job, request)
        if event is None:  # the client went away
            return JSONResponse({}, status_code=499)
        if event[0] == "error":
            raise event[1]
        _, text, finish_reason, tokens = event
        return protocol.completion(completion_id, created, settings.model_name, text, finish_reason,
                                   protocol.usage(prompt_tokens, tokens))

    async def _outcome(job: Job, request: Request) -> tuple | None:
        """The job's `done` or `error` event; None (and the job cancelled) when the client disconnects first."""
        try:
            while True:
                try:
                    event = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        job.cancel()
                        return None
                    continue
                if event[0] in ("done", "error"):
                    return event
        except asyncio.CancelledError:
            job.cancel()
            raise

    async def _stream(job: Job, completion_id: str, created: int, prompt_tokens: int, include_usage: bool):
        name = settings.model_name
        try:
            yield _sse(protocol.chunk(completion_id, created, name, {"role": "assistant", "content": ""}))
            while True:
                event = await job.events.get()
                if event[0] == "delta":
                    yield _sse(protocol.chunk(completion_id, created, name, {"content": event[1]}))
                    continue
                if event[0] == "error":
                    yield _sse(event[1].body())
                else:
                    _, _, finish_reason, tokens = event
                    yield _sse(protocol.chunk(completion_id, created, name, {}, finish_reason))
                    if include_usage:
                        yield _sse(protocol.chunk(completion_id, created, name, None,
                                                  used=protocol.usage(prompt_tokens, tokens)))
                yield _sse("[DONE]")
                return
        finally:  # the client went away (or the stream ended): the row leaves its batch
            job.cancel()

    return app
