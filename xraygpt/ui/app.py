"""The Gradio 6 chat UI over one shared model: `build_app(model, settings)`, `launch(app, settings)`.

Layout: the research-use disclaimer; on the left the upload (`gr.File`, so that any file reaches
our checks: PNG/JPEG, DICOM with pydicom), a preview, Summarise / Reset, the answer language,
the generation controls and example images; on the right a messages-format `gr.Chatbot` and the
question box.

Events (also the gradio_client API): `/upload` (file -> preview, then the summary streamed when
`auto_summary`), `/study` (a study: up to STUDY_SLOTS images each with its view, chosen per image
and guessed by default, first frontal, second lateral; an optional prior image and an optional
indication -> a preview of the images side by side, then the summary streamed when
`auto_summary`; `ChatSession.set_study`), `/summarize`, `/ask` (question), `/reset`, `/set_language` (the language control:
later summaries are asked for in that language, with its summary question,
`DemoSettings.summary_instructions`; follow-up questions are the user's own words).  The model events share one queue
concurrency group of `concurrency_limit`; each user's `ChatSession` (image tokens + turns) and
chat messages live in a `gr.State`.  Handlers never raise: bad input and failures become a chat
message starting with `NOTICE` (failures are also logged with their traceback).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import gradio as gr
from PIL import Image

from xraygpt.chat import ChatInputError, ChatSession
from xraygpt.data.studies import view_rank
from xraygpt.data.study_prompts import VIEW_CHOICES, guess_views, study_summary_question, view_tag
from xraygpt.data.transforms import to_grayscale
from xraygpt.models.generation import GenerationSettings
from xraygpt.ui.settings import DemoSettings
from xraygpt.ui.uploads import UploadError, read_xray

logger = logging.getLogger(__name__)

NOTICE = "⚠️"
DISCLAIMER = (
    "**Research tool, not a diagnosis.** This model summarises chest X-rays for research on "
    "vision-language models. Its answers can be wrong or invented; do not use them for any "
    "clinical decision, and do not upload identifiable patient data."
)
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
LANGUAGE_NAMES = {"en": "English", "zh": "中文"}  # the language control's labels (others show their code)
PREVIEW_SIDE = 512
STUDY_SLOTS = 3  # images of a study the demo takes (their views chosen per image), besides the prior


@dataclasses.dataclass
class UserState:
    """One browser tab's (or API client's) conversation: the chat session and the shown messages.

    `busy` is held while a request of this user runs, so that two of them (say, Ask pressed
    while the summary is still streaming) never write the same session at once.
    """

    session: ChatSession
    language: str
    messages: list[dict] = dataclasses.field(default_factory=list)
    busy: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def notice(text: str) -> dict:
    """A chat message from the app (not the model) telling the user what happened."""
    return {"role": "assistant", "content": f"{NOTICE} {text}"}


def example_images(sources: tuple[str, ...], count: int) -> list[Path]:
    """Up to `count` images (sorted by name) from each existing folder of `sources`; files as given."""
    found = []
    for source in map(Path, sources):
        if source.is_file():
            found.append(source)
        elif source.is_dir():
            found += sorted(p for p in source.iterdir() if p.suffix.lower() in EXAMPLE_SUFFIXES)[:count]
        else:
            logger.info("example images: %s is absent, skipped", source)
    return found


def preview_of(image: Image.Image) -> Image.Image:
    """An 8-bit grayscale copy at most PREVIEW_SIDE pixels per side, for display."""
    preview = to_grayscale(image)
    preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return preview


def study_preview(images: list[Image.Image]) -> Image.Image:
    """The previews of a study's images side by side (8-bit grayscale, black background)."""
    previews = [preview_of(image) for image in images]
    sheet = Image.new("L", (sum(p.width for p in previews) + 8 * (len(previews) - 1), max(p.height for p in previews)))
    x = 0
    for p in previews:
        sheet.paste(p, (x, 0))
        x += p.width + 8
    return sheet


def one_request_at_a_time(handler):
    """Run a handler only when the user's previous request has finished; otherwise say so.

    Handlers take (..., user: UserState) and yield (messages, preview, question box, user); the
    lock is released when the handler ends or is closed (Reset cancels it, a tab closes).
    """

    @functools.wraps(handler)
    def guarded(self, *args):
        user = self._user(args[-1])
        if not user.busy.acquire(blocking=False):
            user.messages.append(notice("Please wait until the current answer is finished (or press Reset)."))
            yield list(user.messages), gr.skip(), gr.skip(), user
            return
        try:
            yield from handler(self, *args[:-1], user)
        finally:
            user.busy.release()

    return guarded


class Handlers:
    """The event handlers; `model` is shared by every user, each user's state is a `UserState`.

    upload, summarize and ask yield (chat messages, preview, question box, user state), with
    `gr.skip()` for what they leave unchanged.
    """

    def __init__(self, model, settings: DemoSettings):
        self.model = model
        self.settings = settings
        self.summary_instructions = settings.summary_instructions()  # a language without prompts stops here
        # a study's summary question: the first of the language's study_summary.txt (prompts/, prompts/zh/); a
        # language without one asks its single-image summary question (the images and indication come first)
        self.study_instructions = {code: study_summary_question(code, settings.prompt_path) for code in settings.languages}

    def _user(self, state: UserState | None) -> UserState:
        if state is not None:
            return state
        return UserState(ChatSession(self.model, self.settings.context_window), self.settings.language)

    def _reply(self, user: UserState, question: str, controls: tuple) -> Iterator[str | None]:
        """Add `question` and its streamed answer to `user.messages`, yielding after each change.

        Each yield is the value for the question box: "" once the question is accepted (a
        refused question stays in the box, to be edited), else None (leave it).
        """
        messages, dropped = user.messages, user.session.dropped_turns
        try:
            temperature, num_beams, max_new_tokens = controls
            generation = GenerationSettings.from_controls(int(max_new_tokens), int(num_beams), float(temperature))
            replies = user.session.stream_reply(question or "", generation)
        except (ChatInputError, TypeError, ValueError) as exc:
            messages.append(notice(str(exc)))
            yield None
            return
        messages += [{"role": "user", "content": question.strip()}, {"role": "assistant", "content": ""}]
        slot = len(messages) - 1
        yield ""
        try:
            for text in replies:
                messages[slot] = {"role": "assistant", "content": text}
                yield None
        except Exception as exc:
            logger.exception("generation failed")
            messages[slot] = notice(f"Generation failed ({type(exc).__name__}: {str(exc)[:200]}). "
                                    "The server keeps running; please try again.")
            yield None
            return
        if not messages[slot]["content"]:
            messages[slot] = notice("The model ended its answer without any text; try again or raise the temperature.")
            yield None
        if user.session.dropped_turns > dropped:
            messages.append(notice(f"The {user.session.dropped_turns - dropped} oldest exchange(s) no longer fit "
                                   "in the model's context window and were forgotten (the image is kept)."))
            yield None

    @one_request_at_a_time
    def upload(self, file: str | None, temperature: float, num_beams: int, max_new_tokens: int, user: UserState):
        """A new image: read, check and encode it, show it, then (with auto_summary) stream a summary."""
        if file is None:  # the upload was cleared (e.g. by Reset)
            yield gr.skip(), gr.skip(), gr.skip(), user
            return
        problem = None
        try:
            image = read_xray(file, self.settings.max_image_pixels, self.settings.min_image_side)
            user.session.set_image(image)
        except UploadError as exc:
            problem = str(exc)
        except Exception as exc:
            logger.exception("could not process the upload %s", file)
            problem = f"Could not process {Path(file).name!r} ({type(exc).__name__})."

        if problem:
            user.session.reset()
            user.messages.append(notice(f"{problem} No image is loaded now."))
            yield list(user.messages), None, gr.skip(), user
            return
        user.messages = []
        yield [], preview_of(image), gr.skip(), user
        if not self.settings.auto_summary:
            user.messages.append(notice("Image loaded: press Summarise or ask a question."))
            yield list(user.messages), gr.skip(), gr.skip(), user
            return
        for _ in self._reply(user, self.summary_instructions[user.language], (temperature, num_beams, max_new_tokens)):
            yield list(user.messages), gr.skip(), gr.skip(), user

    @one_request_at_a_time
    def study(self, *args):
        """A study: (file, view) x STUDY_SLOTS, prior file, indication, the three controls, user state.
        Reads and checks every image given, encodes them once (`ChatSession.set_study`), shows them
        side by side, then (with auto_summary) streams a summary of the study."""
        *slots, prior_file, indication, temperature, num_beams, max_new_tokens, user = args
        files = [(slots[2 * k], slots[2 * k + 1]) for k in range(STUDY_SLOTS) if slots[2 * k]]
        if not files:
            user.messages.append(notice("Please give at least one image of the study."))
            yield list(user.messages), gr.skip(), gr.skip(), user
            return
        guessed = guess_views(len(files))
        problem = None
        try:
            images = [read_xray(f, self.settings.max_image_pixels, self.settings.min_image_side) for f, _ in files]
            views = [VIEW_CHOICES.get(view, guessed[k]) if view else guessed[k] for k, (_, view) in enumerate(files)]
            prior = (read_xray(prior_file, self.settings.max_image_pixels, self.settings.min_image_side)
                     if prior_file else None)
            shown = user.session.set_study(images, views, indication or "", prior, language=user.language)
        except (UploadError, ChatInputError) as exc:
            problem = str(exc)
        except Exception as exc:
            logger.exception("could not process the study")
            problem = f"Could not process the study ({type(exc).__name__})."
        if problem:
            user.session.reset()
            user.messages.append(notice(f"{problem} No image is loaded now."))
            yield list(user.messages), None, gr.skip(), user
            return
        order = sorted(range(len(images)), key=lambda k: (view_rank(views[k]), k))  # as set_study orders them
        user.messages = [notice("Study loaded: " + ", ".join(view_tag(v) for v in shown)
                                + (", prior frontal" if prior is not None else "")
                                + (f"; indication: {' '.join(indication.split())}" if indication and indication.strip()
                                   else "; no indication"))]
        yield list(user.messages), study_preview([images[k] for k in order] + ([prior] if prior else [])), gr.skip(), user
        if not self.settings.auto_summary:
            user.messages.append(notice("Press Summarise or ask a question."))
            yield list(user.messages), gr.skip(), gr.skip(), user
            return
        for _ in self._reply(user, self.study_instructions[user.language], (temperature, num_beams, max_new_tokens)):
            yield list(user.messages), gr.skip(), gr.skip(), user

    @one_request_at_a_time
    def summarize(self, temperature: float, num_beams: int, max_new_tokens: int, user: UserState):
        """Ask for a summary of the current image (or study), in the user's language."""
        questions = self.summary_instructions if user.session.study is None else self.study_instructions
        for _ in self._reply(user, questions[user.language], (temperature, num_beams, max_new_tokens)):
            yield list(user.messages), gr.skip(), gr.skip(), user

    @one_request_at_a_time
    def ask(self, question: str, temperature: float, num_beams: int, max_new_tokens: int, user: UserState):
        """A follow-up question about the current image."""
        for box in self._reply(user, question, (temperature, num_beams, max_new_tokens)):
            yield list(user.messages), gr.skip(), gr.skip() if box is None else box, user

    def set_language(self, language: str, state: UserState | None) -> UserState:
        """The language control: later summaries are asked for in `language` (one of settings.languages;
        anything else keeps the current language and is logged), and a loaded study's tags written in it."""
        user = self._user(state)
        if language in self.summary_instructions:
            user.language = language
            user.session.set_study_language(language)
        else:
            logger.warning("language %r is not one of demo.languages (%s); kept %s", language,
                           ", ".join(self.summary_instructions), user.language)
        return user

    def reset(self, state: UserState | None):
        """Forget the image and the conversation (at any time: running requests are cancelled)."""
        user = self._user(state)
        user.session.reset()
        user.messages = []
        return [], None, None, "", user


class UploadSweeper:
    """Gradio's upload folder made private to this server and swept: a new folder for this process
    (inside GRADIO_TEMP_DIR when set), where every file older than `age` seconds is deleted, checked
    every `age` seconds (a daemon thread), and which is removed when the process exits.  Gradio's
    own `delete_cache` misses raw uploads; a folder of our own can be swept without touching
    files of other Gradio servers."""

    def __init__(self, age: int):
        parent = os.environ.get("GRADIO_TEMP_DIR") or None
        if parent:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="xraygpt-demo-uploads-", dir=parent))
        os.environ["GRADIO_TEMP_DIR"] = str(self.folder)
        self.age = age
        atexit.register(shutil.rmtree, self.folder, True)
        threading.Thread(target=self._run, name="upload-sweeper", daemon=True).start()

    def sweep(self) -> int:
        """Delete the files older than `age`; returns how many."""
        now, removed = time.time(), 0
        try:
            paths = list(self.folder.rglob("*"))
        except OSError:  # the folder went away while it was walked (process exit, a test's teardown)
            return 0
        for path in paths:
            try:
                if path.is_file() and now - path.stat().st_mtime > self.age:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        return removed

    def _run(self) -> None:
        while True:
            time.sleep(self.age)
            removed = self.sweep()
            if removed:
                logger.info("deleted %d uploaded files older than %d s from %s", removed, self.age, self.folder)


_SWEEPER: UploadSweeper | None = None


def build_app(model, settings: DemoSettings) -> gr.Blocks:
    """The demo's Blocks (not launched) over `model`, an `XrayGPT` in eval mode on its device; its
    uploads go to a swept folder of this process (`UploadSweeper`)."""
    global _SWEEPER
    if _SWEEPER is None or _SWEEPER.age != settings.delete_uploads_after_s or not _SWEEPER.folder.is_dir():
        _SWEEPER = UploadSweeper(settings.delete_uploads_after_s)
    handlers = Handlers(model, settings)
    window = settings.context_window or model.llm.config.max_position_embeddings
    age = settings.delete_uploads_after_s
    with gr.Blocks(title="XrayGPT demo", analytics_enabled=False, delete_cache=(age, age)) as app:
        gr.Markdown("# XrayGPT: chest X-ray summaries and questions")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(label="Chest X-ray (PNG or JPEG; DICOM with pydicom)", type="filepath",
                                 elem_id="upload")
                preview = gr.Image(label="Image", type="pil", format="png", interactive=False, height=320,
                                   elem_id="preview")
                with gr.Row():
                    summarize = gr.Button("Summarise", variant="primary", elem_id="summarize")
                    reset = gr.Button("Reset", elem_id="reset")
                language = gr.Radio([(LANGUAGE_NAMES.get(code, code), code) for code in settings.languages],
                                    value=settings.language, label="Answer language", elem_id="language",
                                    info="the language the summary is asked for in")
                temperature = gr.Slider(0.0, 1.5, value=settings.temperature, step=0.05, label="Temperature",
                                        info="0 = deterministic; higher = more varied")
                num_beams = gr.Slider(1, 5, value=settings.num_beams, step=1, label="Beams",
                                      info="more than 1: beam search, answer shown when complete")
                max_new_tokens = gr.Slider(1, max(settings.max_new_tokens, window // 2), value=settings.max_new_tokens,
                                           step=1, label="Max new tokens")
                with gr.Accordion("Study: several views, indication, prior", open=False):
                    study_inputs = []
                    for k, guess in enumerate(guess_views(STUDY_SLOTS)):
                        with gr.Row():
                            study_inputs.append(gr.File(label=f"View {k + 1}", type="filepath",
                                                        elem_id=f"study_image_{k + 1}"))
                            study_inputs.append(gr.Dropdown(list(VIEW_CHOICES), value=view_tag(guess), label="View",
                                                            elem_id=f"study_view_{k + 1}"))
                    prior_file = gr.File(label="Prior study's frontal image (optional)", type="filepath",
                                         elem_id="study_prior")
                    indication = gr.Textbox(label="Indication (optional)", placeholder="e.g. Cough and fever.",
                                            elem_id="study_indication", max_lines=2)
                    read_study = gr.Button("Read study", elem_id="read_study")
                examples = example_images(settings.examples, settings.num_examples)
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[upload], label="Example images")
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation", elem_id="chat", height=520,
                                  placeholder="Upload a chest X-ray for a summary, then ask follow-up questions.")
                question = gr.Textbox(label="Question", placeholder="e.g. Is there any pleural effusion?",
                                      elem_id="question", max_lines=4)
                ask = gr.Button("Ask", elem_id="ask")
        controls = [temperature, num_beams, max_new_tokens]
        outputs = [chat, preview, question, state]
        shared = {"outputs": outputs, "concurrency_limit": settings.concurrency_limit, "concurrency_id": "model",
                  "show_progress": "minimal"}
        events = [
            upload.change(handlers.upload, [upload, *controls, state], api_name="upload", **shared),
            summarize.click(handlers.summarize, [*controls, state], api_name="summarize", **shared),
            read_study.click(handlers.study, [*study_inputs, prior_file, indication, *controls, state], api_name="study",
                             **shared),
            ask.click(handlers.ask, [question, *controls, state], api_name="ask", **shared),
            question.submit(handlers.ask, [question, *controls, state], api_visibility="private", **shared),
        ]
        language.change(handlers.set_language, [language, state], [state], api_name="set_language",
                        concurrency_limit=None, show_progress="hidden")
        clears = [chat, upload, preview, question, state]
        reset.click(handlers.reset, [state], clears, api_name="reset", cancels=events, concurrency_limit=None)
        for cleared in (chat, upload):  # the chat's bin and the upload's x also start over
            cleared.clear(handlers.reset, [state], clears, api_visibility="private", cancels=events,
                          concurrency_limit=None)
    app.queue(max_size=settings.max_queue_size, default_concurrency_limit=settings.concurrency_limit)
    return app


def launch(app: gr.Blocks, settings: DemoSettings, block: bool = True) -> None:
    """Serve `app` on settings.host:port and log its address; returns at once with `block=False` (tests)."""
    # only the example image files themselves are served, never the rest of their folders
    allowed = [str(p.resolve()) for p in example_images(settings.examples, settings.num_examples)]
    app.launch(
        server_name=settings.host, server_port=settings.port, share=settings.share, auth=settings.auth(),
        max_file_size=f"{settings.max_upload_mb}mb", allowed_paths=allowed, prevent_thread_lock=True,
        ssr_mode=False, quiet=True, footer_links=["api"], pwa=False, mcp_server=False,
    )
    logger.info("demo serving on %s%s (concurrency limit %d)", app.local_url,
                f" and {app.share_url}" if app.share_url else "", settings.concurrency_limit)
    if block:
        app.block_thread()
