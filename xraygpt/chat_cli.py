"""Chat about a chest X-ray in the terminal: `python -m xraygpt.chat_cli --cfg-path eval_configs/demo_tiny.yaml
--image x.png` (console script `xraygpt-chat`), or an exported model folder with `--model FOLDER`.

The same config as the demo (`model` + the optional `demo` section: device, max_new_tokens,
num_beams, temperature, context_window, auto_summary, summary_instruction, max_image_pixels,
min_image_side) and the same conversation code (`xraygpt.chat.ChatSession`).  Images are read by
`xraygpt.data.images` (PNG, JPEG, DICOM).  Answers stream token by token.

Type a question for a follow-up, or a command:
    /image PATH   read a new image (and summarise it when demo.auto_summary is true)
    /study PATH[:VIEW] [PATH[:VIEW] ...] [--prior PATH] [--indication TEXT]
                  read a study (`ChatSession.set_study`, as the demo's study upload): up to
                  STUDY_IMAGES images, each with its view (any name `studies.canonical_view` reads:
                  PA, AP, FRONTAL, LATERAL, LAT, LL, AP AXIAL, ..., or unknown; omitted: the first
                  frontal, the second lateral), the prior study's frontal image and the indication
                  (the rest of the line, as written).  Paths are split as a shell does (`shlex`:
                  quote a path with spaces; on Windows backslashes are kept); only a known view
                  name after a path's last ':' is read as its view.  It prints the images in
                  reading order (frontal first) and, with auto_summary, summarises the study (the
                  demo's question: the first of prompts/study_summary.txt, in Chinese of
                  prompts/zh/study_summary.txt)
    /reset        forget the image (or study) and the conversation
    /help         the commands
    /quit         leave (so do Ctrl-D and Ctrl-C at the prompt; Ctrl-C during an answer stops it)
A bad image, an empty or too long question, or a question before any image is answered with one
line `error: ...` and the chat goes on (a bad `/image` keeps the current image).  So is a bad
`/study` (no path, a missing or undecodable file, an unknown view, `--prior` without a path, more
than STUDY_IMAGES images, an indication holding a symbol the prompt template reserves): the current
image or study and its conversation are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import TextIO

from xraygpt import runtime

runtime.offline_environment()  # before transformers is imported

from omegaconf import OmegaConf  # noqa: E402

from xraygpt import builders  # noqa: E402
from xraygpt.cli import ERRORS, add_config_arguments, add_model_argument, startup_error  # noqa: E402
from xraygpt.ui.settings import DemoSettings, demo_settings  # noqa: E402

USER_PROMPT = "you> "
ANSWER_PREFIX = "xraygpt> "
COMMANDS = ("/image PATH, /study PATH[:VIEW] [PATH[:VIEW] ...] [--prior PATH] [--indication TEXT], /reset, /help, "
            "/quit (or Ctrl-D)")
STUDY_IMAGES = 3  # images of a study the terminal takes besides the prior: the demo's STUDY_SLOTS (ui/app.py)


class StudyCommandError(ValueError):
    """A `/study` line that cannot be read, explained in one line."""


@dataclasses.dataclass(frozen=True)
class StudyCommand:
    """What a `/study` line asks for: image paths with their views as given (None: to be guessed),
    the prior's path (None: no prior) and the indication ("" without one)."""

    images: list[tuple[str, str | None]]
    prior: str | None = None
    indication: str = ""


def accepted_views() -> str:
    """The view names `/study` reads, for messages (case does not matter)."""
    from xraygpt.data.studies import MIMIC_VIEW_POSITIONS, UNKNOWN_VIEW, VIEW_ORDER

    others = sorted(MIMIC_VIEW_POSITIONS - set(VIEW_ORDER))
    return ", ".join([*VIEW_ORDER, "LAT", "LEFT LATERAL", *others, UNKNOWN_VIEW])


def split_view(token: str) -> tuple[str, str | None]:
    """(path, view) of a `PATH[:VIEW]` token: the text after the last ':' is a view only when it is a
    name `canonical_view` knows (or `unknown`) and the whole token is not an existing file
    (`C:\\x.png`, `a:b.png` stay paths).  A suffix that is no view after an existing file's path is
    refused (a misspelt view)."""
    from xraygpt.data.studies import UNKNOWN_VIEW, canonical_view

    head, sep, tail = token.rpartition(":")
    if not sep or not head or Path(token).expanduser().exists():
        return token, None
    view = canonical_view(tail)
    if view != UNKNOWN_VIEW or tail.strip().lower() == UNKNOWN_VIEW:  # `unknown` may be said, as in the demo
        return head, view
    if tail and Path(head).expanduser().is_file():
        raise StudyCommandError(f"unknown view {tail!r} for '{head}'; accepted: {accepted_views()} "
                                "(quote names with spaces)")
    return token, None


def parse_study(text: str) -> StudyCommand:
    """The `StudyCommand` of the text after `/study` (module docstring); StudyCommandError when it
    is not one.  Tokens are split as a POSIX shell does (`shlex`; on Windows a backslash is kept as
    written, not an escape); `--indication` takes the rest of the
    line as written (quotes around all of it dropped), so an apostrophe needs no quoting there."""
    lexer = shlex.shlex(io.StringIO(text), posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    if os.name == "nt":
        lexer.escape = ""  # a backslash separates Windows paths; quote a path with spaces instead
    images: list[tuple[str, str | None]] = []
    prior, indication = None, ""
    try:
        while (token := lexer.get_token()) is not None:
            if token == "--indication":
                indication = lexer.instream.read().strip()
                if len(indication) > 1 and indication[0] == indication[-1] and indication[0] in "'\"":
                    indication = indication[1:-1]
                break
            if token == "--prior":
                prior = lexer.get_token()
                if prior is None or prior.startswith("--") or not prior.strip():
                    raise StudyCommandError("--prior needs a path: --prior PATH")
            elif token.startswith("--"):
                raise StudyCommandError(f"unknown option {token}; /study takes --prior PATH and --indication TEXT")
            else:
                images.append(split_view(token))
    except StudyCommandError:
        raise
    except ValueError as exc:  # shlex: an unclosed quote
        raise StudyCommandError(f"/study: {exc} (close the quote around the path)") from None
    if not images:
        raise StudyCommandError("/study needs at least one image: /study PATH[:VIEW] [PATH[:VIEW] ...] "
                                "[--prior PATH] [--indication TEXT]")
    if len(images) > STUDY_IMAGES:
        raise StudyCommandError(f"a study takes at most {STUDY_IMAGES} images (besides --prior), got {len(images)}")
    return StudyCommand(images, prior, " ".join(indication.split()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xraygpt-chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, "demo YAML (eval_configs/demo_*.yaml): its model and demo sections",
                         "override config keys, e.g. demo.max_new_tokens=80 model.ckpt=run/checkpoints/checkpoint_last.pt",
                         required=False)
    add_model_argument(parser)
    parser.add_argument("--image", help="an image to start with (PNG, JPEG or DICOM)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for start-up errors")
    args = parser.parse_args(argv)
    if args.cfg_path is None and args.model is None:
        parser.error("give --cfg-path, --model or both")
    return args


class TerminalChat:
    """The read-answer loop over one `ChatSession`, writing to `out`."""

    def __init__(self, session, settings: DemoSettings, out: TextIO):
        self.session = session
        self.settings = settings
        self.generation = settings.generation()
        self.out = out

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def error(self, message: str) -> None:
        self.say(f"error: {' '.join(str(message).split())}")  # one line

    def read_xray(self, path: str):
        """The `XrayImage` (image + header) of `path` with the demo's size limits; ImageReadError (a
        ValueError) in one line naming the file as given."""
        from xraygpt.data.images import load_xray

        return load_xray(Path(path).expanduser(), self.settings.max_image_pixels, self.settings.min_image_side,
                         name=f"'{path}'")

    def load_image(self, path: str) -> None:
        """Read `path` into the session (a new conversation) and, with auto_summary, summarise it."""
        path = path.strip().strip("'\"")
        if not path:
            self.error("/image needs a file: /image PATH")
            return
        try:
            xray = self.read_xray(path)
        except ValueError as exc:  # ImageReadError: one line naming the file
            self.error(exc)
            return
        self.session.set_image(xray.image)
        header = xray.header
        view = f", view {header.view}" if header.view else ""
        self.say(f"image: '{path}' ({header.width}x{header.height} {header.format}{view}); a new conversation")
        if self.settings.auto_summary:
            self.answer(self.settings.summary_instruction)

    def study_question(self) -> str:
        """The question a study's summary asks, in the settings' language, as the demo asks it: the first
        of that language's study_summary.txt (prompts/, prompts/zh/); a language without one, its
        single-image summary question (`study_prompts.study_summary_question`)."""
        from xraygpt.data.study_prompts import study_summary_question

        return study_summary_question(self.settings.language, self.settings.prompt_path)

    def load_study(self, text: str) -> None:
        """Read the study of a `/study` line into the session (a new conversation) and, with
        auto_summary, summarise it; any bad input is one error line and the session is unchanged."""
        from xraygpt.data.studies import view_rank
        from xraygpt.data.study_prompts import guess_views, view_tag

        try:
            command = parse_study(text)
            question = self.study_question() if self.settings.auto_summary else ""
            images = [self.read_xray(path).image for path, _ in command.images]
            prior = self.read_xray(command.prior).image if command.prior is not None else None
            guessed = guess_views(len(images))
            views = [view or guessed[k] for k, (_, view) in enumerate(command.images)]
            self.session.set_study(images, views, command.indication, prior, language=self.settings.language)
        except ValueError as exc:  # StudyCommandError, ImageReadError, ChatInputError, PromptFileError
            self.error(exc)
            return
        order = sorted(range(len(views)), key=lambda k: (view_rank(views[k]), k))  # as set_study orders them
        shown = [f"{view_tag(views[k])} '{command.images[k][0]}'" for k in order]
        if prior is not None:
            shown.append(f"prior frontal '{command.prior}'")
        indication = f"indication: {command.indication}" if command.indication else "no indication"
        self.say(f"study: {', '.join(shown)}; {indication}; a new conversation")
        if self.settings.auto_summary:
            self.answer(question)

    def answer(self, question: str) -> None:
        """Stream the answer to `question`; ChatInputError becomes one error line; Ctrl-C stops the answer."""
        from xraygpt.chat import ChatInputError

        try:
            stream = self.session.stream_reply(question, self.generation)
        except ChatInputError as exc:
            self.error(exc)
            return
        self.out.write(ANSWER_PREFIX)
        self.out.flush()
        shown = ""
        try:
            for text in stream:
                if text.startswith(shown):
                    self.out.write(text[len(shown):])
                else:  # the text so far changed (rare): show it again on a new line
                    self.out.write("\n" + ANSWER_PREFIX + text)
                shown = text
                self.out.flush()
        except KeyboardInterrupt:
            stream.close()  # stops generation; the unfinished answer is not kept as a turn
            self.say(" [stopped]")
            return
        self.say("")

    def handle(self, line: str) -> bool:
        """Act on one input line; False when the chat should end."""
        line = line.strip()
        if not line:
            return True
        command, _, rest = line.partition(" ")
        if command in ("/quit", "/exit"):
            return False
        if command == "/reset":
            self.session.reset()
            self.say("reset: no image, no conversation; /image PATH or /study PATH ... to start again")
        elif command == "/image":
            self.load_image(rest)
        elif command == "/study":
            self.load_study(rest)
        elif command == "/help":
            self.say(f"commands: {COMMANDS}; anything else is a question about the current image or study")
        elif line.startswith("/"):
            self.error(f"unknown command {command}; commands: {COMMANDS}")
        else:
            self.answer(line)
        return True

    def run(self, read=input) -> None:
        """Read lines with `read(prompt)` until /quit, EOF or Ctrl-C at the prompt."""
        while True:
            try:
                line = read(USER_PROMPT)
            except (EOFError, KeyboardInterrupt):
                self.say("")
                return
            try:
                if not self.handle(line):
                    return
            except KeyboardInterrupt:  # Ctrl-C while an image is read or encoded
                self.say(" [interrupted]")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.setup_logging(0, logging.WARNING)  # the chat is the output; warnings still show
    try:
        _, cfg = builders.load_job_config(args.cfg_path, args.options, job="demo", model_folder=args.model)
        if args.print_config:
            sys.stdout.write(OmegaConf.to_yaml(cfg))
            return 0
        settings = demo_settings(cfg)
        model = builders.build_model(cfg.model).to(runtime.resolve_device(settings.device)).eval()
    except ERRORS as exc:
        return startup_error(exc, args.debug)
    from xraygpt.chat import ChatSession

    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    chat = TerminalChat(ChatSession(model, settings.context_window), settings, sys.stdout)
    chat.say(f"XrayGPT terminal chat. Commands: {COMMANDS}. Research tool, not a diagnosis.")
    try:
        if args.image:
            chat.load_image(args.image)
        else:
            chat.say("no image yet: /image PATH")
    except KeyboardInterrupt:
        chat.say(" [interrupted]")
    chat.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
