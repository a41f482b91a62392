"""Dynamic batching: requests that arrive within a few milliseconds share one batched generation.

One worker thread owns the model.  `Batcher.submit(job)` puts a `Job` (prompt ids with the image
sentinels, its (3, S, S) pixels, its `GenerationSettings`, stop strings, seed) on a bounded queue;
a full queue raises `QueueFull` at once (the server answers 429), never waits.  The worker takes
the first waiting job, waits up to `batch_wait_ms` for more (taking at once what is already
waiting) until it holds `max_batch_size` jobs, and generates them together:

- jobs are grouped by the settings that shape decoding (greedy or sampling, temperature, top_p,
  repetition penalty); each group is one `generate` call, the groups one after another.  A
  sampling job with a `seed` is a group of its own, seeded with `torch.manual_seed(seed)`, so the
  same request gives the same answer.  `max_new_tokens` may differ inside a group;
- the group's prompts are left-padded to (B, L) ids and mask, the images encoded and spliced with
  `XrayGPT.embed_inputs` (the door of training, batch generation and the chat) into (B, L, Dl)
  embeddings, and the LLM's `generate` runs with the training template's end symbol;
- after every new token, `_Rows` (a `StoppingCriteria`) looks at each row: it ends when the end
  symbol, EOS, a stop string or its own `max_new_tokens` comes, or when its client went away
  (`Job.cancel`); an ended row's answer is handed to its job at once (the rest of the batch goes
  on).  A streaming job gets its text token by token: the new text since the last event, with
  whatever could still become the end symbol or a stop string held back.

Events reach each job's asyncio queue through its event loop: `("delta", text)`,
`("done", text, finish_reason, completion_tokens)` (finish_reason `stop` or `length`) or
`("error", APIError)`.  `max_batch_size` 1 turns batching off.  `stats()` counts batches,
answers, the largest batch and the jobs whose client went away (`cancelled`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from typing import Optional

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from xraygpt.data.collate import stack_images
from xraygpt.models.generation import GenerationSettings
from xraygpt.serving.protocol import APIError

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already."""


@dataclasses.dataclass(eq=False)
class Job:
    """One request, ready to generate.

    Args:
        prompt_ids: the prompt (BOS, template, N image sentinels, the turns), unpadded.
        pixels: (3, S, S) preprocessed image, or (k, 3, S, S) for the k images of a study.
        generation: its decoding settings (`max_new_tokens` is this answer's).
        stop: strings that end the answer (not included in it).
        seed: sampling seed (used only when sampling).
        stream: send the text as it grows (`delta` events), not only at the end.
        loop, events: the asyncio loop of the request and its queue of events.
    """

    prompt_ids: list[int]
    pixels: torch.Tensor
    generation: GenerationSettings
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None
    stream: bool = False
    loop: Optional[asyncio.AbstractEventLoop] = None
    events: Optional[asyncio.Queue] = None
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)

    def cancel(self) -> None:
        """The client went away: the job leaves its batch at the next token (or is skipped if still waiting)."""
        self.cancelled.set()

    def send(self, event: tuple) -> None:
        if self.loop is None or self.events is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop closed: the server is shutting down and nobody listens
            pass

    @property
    def group_key(self) -> tuple:
        """Jobs with equal keys can share one `generate` call."""
        g = self.generation
        if not g.do_sample:
            return ("greedy", g.num_beams, g.repetition_penalty)
        if self.seed is not None:
            return ("seeded", id(self))
        return ("sample", g.temperature, g.top_p, g.repetition_penalty)


class _Row:
    """One job's row of a batch: what it has been shown, and whether it has ended."""

    def __init__(self, job: Job):
        self.job = job
        self.shown = ""
        self.done = False
        self.cancelled = False

    def emit(self, text: str) -> None:
        if self.job.stream and text.startswith(self.shown) and len(text) > len(self.shown):
            self.job.send(("delta", text[len(self.shown):]))
            self.shown = text

    def finish(self, text: str, finish_reason: str, tokens: int) -> None:
        self.emit(text)
        self.done = True
        self.job.send(("done", text, finish_reason, tokens))


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could be the start of a stop string."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


class _Rows(StoppingCriteria):
    """Watches every row of a batch after each new token (see module docstring); returns the rows that ended."""

    def __init__(self, rows: list[_Row], prompt_tokenizer):
        self.rows = rows
        self.pt = prompt_tokenizer
        self.eos = prompt_tokenizer.tokenizer.eos_token_id
        self.start: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.start is None:  # the first call holds the first new token at the end
            self.start = input_ids.shape[1] - 1
        generated = input_ids[:, self.start:].tolist()
        for row, tokens in zip(self.rows, generated):
            if not row.done:
                self.observe(row, tokens)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def observe(self, row: _Row, tokens: list[int]) -> None:
        job = row.job
        if job.cancelled.is_set():
            row.done = row.cancelled = True
            return
        end = self.pt.format.end_sym
        ended = tokens[-1] == self.eos or end in self.pt.tokenizer.decode(tokens, skip_special_tokens=True)
        full = ended or len(tokens) >= job.generation.max_new_tokens
        text = self.pt.decode_answer(tokens) if full else self.pt.decode_partial_answer(tokens)
        cut = min((text.find(s) for s in job.stop if s in text), default=-1)
        if cut >= 0:
            row.finish(text[:cut], "stop", len(tokens))
        elif full:
            row.finish(text, "stop" if ended else "length", len(tokens))
        else:
            row.emit(text[: len(text) - _held_back(text, job.stop)])

    def finish_all(self) -> None:
        """Rows still open when `generate` returned (it stopped for its own reasons): ended by length."""
        for row in self.rows:
            if not row.done and not row.job.cancelled.is_set():
                row.finish(row.shown, "length", 0)


class Batcher:
    """The model's worker thread and its bounded queue (see module docstring).

    Args:
        model: the `xraygpt` model (eval mode, on its device); only the worker thread uses it.
        max_batch_size: most jobs generated together (1 = batching off).
        batch_wait_ms: how long the first job of a batch waits for others.
        max_queue: most jobs waiting; `submit` raises QueueFull beyond.
    """

    def __init__(self, model, max_batch_size: int = 16, batch_wait_ms: float = 10.0, max_queue: int = 64):
        self.model = model
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.max_queue = max_queue
        self._resumed = threading.Event()
        self._resumed.set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.running = 0
        self.batches = 0
        self.answered = 0
        self.largest_batch = 0
        self.cancelled = 0

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="xraygpt-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch being generated, refuse what waits (503), and end the worker."""
        self._stopping.set()
        self._resumed.set()
        if self._thread is not None:
            self._thread.join(timeout)
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            job.send(("error", APIError(503, "the server is shutting down", type="server_error", code="shutting_down")))

    def pause(self) -> None:
        """Take no new batch until `resume` (maintenance; the tests fill the queue this way)."""
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise QueueFull at once."""
        if self._stopping.is_set():
            raise QueueFull
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    @property
    def full(self) -> bool:
        return self.queue.full()

    def stats(self) -> dict:
        return {"queued": self.queue.qsize(), "max_queue": self.max_queue, "running": self.running,
                "max_batch_size": self.max_batch_size, "batches": self.batches, "answered": self.answered,
                "largest_batch": self.largest_batch, "cancelled": self.cancelled}

    # ------------------------------------------------------------------ the worker
    def _collect(self) -> list[Job]:
        """The next batch: the first waiting job and those joining it within the wait (or already waiting)."""
        try:
            jobs = [self.queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.batch_wait_s
        while len(jobs) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                jobs.append(self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        live = [job for job in jobs if not job.cancelled.is_set()]
        self.cancelled += len(jobs) - len(live)
        return live

    def _work(self) -> None:
        while not self._stopping.is_set():
            self._resumed.wait()
            if self._stopping.is_set():
                break
            jobs = self._collect()
            if not jobs:
                continue
            self.running = len(jobs)
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(jobs))
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.group_key, []).append(job)
            for group in groups.values():
                self._run(group)
            self.running = 0

    def _run(self, jobs: list[Job]) -> None:
        rows = [_Row(job) for job in jobs]
        try:
            self._generate(rows)
            self.cancelled += sum(row.cancelled for row in rows)
            self.answered += sum(not row.cancelled for row in rows)
        except Exception as exc:  # every open row is told; the server keeps serving
            logger.exception("generation failed for a batch of %d", len(jobs))
            error = APIError(500, f"generation failed ({type(exc).__name__})", type="server_error", code="generation_failed")
            for row in rows:
                if not row.done:
                    row.done = True
                    row.job.send(("error", error))

    @torch.no_grad()
    def _generate(self, rows: list[_Row]) -> None:
        jobs = [row.job for row in rows]
        pt = self.model.prompt_tokenizer
        width = max(len(job.prompt_ids) for job in jobs)
        ids = torch.full((len(jobs), width), pt.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for r, job in enumerate(jobs):  # left padding: every prompt ends where generation starts
            ids[r, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids)
            mask[r, width - len(job.prompt_ids):] = 1
        settings = dataclasses.replace(jobs[0].generation, max_new_tokens=max(j.generation.max_new_tokens for j in jobs))
        images = stack_images([{"pixel_values": job.pixels} for job in jobs], "pixel_values")  # + image_counts: studies
        embeds = self.model.embed_inputs(ids, **images)
        if settings.do_sample and jobs[0].seed is not None:
            torch.manual_seed(jobs[0].seed % 2**64)
        watch = _Rows(rows, pt)
        self.model.llm.generate(inputs_embeds=embeds, attention_mask=mask.to(self.model.device),
                                stopping_criteria=StoppingCriteriaList([watch]), **settings.generate_kwargs(pt))
        watch.finish_all()
