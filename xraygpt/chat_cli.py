"""Chat about a chest X-ray in the terminal: `python -m xraygpt.chat_cli --cfg-path eval_configs/demo_tiny.yaml
--image x.png` (console script `xraygpt-chat`), or an exported model folder with `--model FOLDER`.

The same config as the demo (`model` + the optional `demo` section: device, max_new_tokens,
num_beams, temperature, context_window, auto_summary, summary_instruction, max_image_pixels,
min_image_side) and the same conversation code (`xraygpt.chat.ChatSession`).  Images are read by
`xraygpt.data.images` (PNG, JPEG, DICOM).  Answers stream token by token.

Type a question for a follow-up, or a command:
    /image PATH   read a new image (and summarise it when demo.auto_summary is true)
    /reset        forget the image and the conversation
    /help         the commands
    /quit         leave (so do Ctrl-D and Ctrl-C at the prompt; Ctrl-C during an answer stops it)
A bad image, an empty or too long question, or a question before any image is answered with one
line `error: ...` and the chat goes on (a bad `/image` keeps the current image).
"""

from __future__ import annotations

import argparse
import logging
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
COMMANDS = "/image PATH, /reset, /help, /quit (or Ctrl-D)"


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

    def load_image(self, path: str) -> None:
        """Read `path` into the session (a new conversation) and, with auto_summary, summarise it."""
        from xraygpt.data.images import load_xray

        path = path.strip().strip("'\"")
        if not path:
            self.error("/image needs a file: /image PATH")
            return
        file = Path(path).expanduser()
        try:
            xray = load_xray(file, self.settings.max_image_pixels, self.settings.min_image_side, name=f"'{path}'")
        except ValueError as exc:  # ImageReadError: one line naming the file
            self.error(exc)
            return
        self.session.set_image(xray.image)
        header = xray.header
        view = f", view {header.view}" if header.view else ""
        self.say(f"image: '{path}' ({header.width}x{header.height} {header.format}{view}); a new conversation")
        if self.settings.auto_summary:
            self.answer(self.settings.summary_instruction)

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
            self.say("reset: no image, no conversation; /image PATH to start again")
        elif command == "/image":
            self.load_image(rest)
        elif command == "/help":
            self.say(f"commands: {COMMANDS}; anything else is a question about the current image")
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
