"""The terminal chat (python -m xraygpt.chat_cli) in a pseudo-terminal (pexpect) on the tiny model:
image, summary, follow-up, reset, bad input, quit; its answers are ChatSession's, token for token."""

import io
import os
import sys

import pexpect
import pytest
from PIL import Image

from conftest import REPO, tiny_config, write_yaml
from xraygpt import chat_cli
from xraygpt.chat import ChatSession
from xraygpt.chat_cli import ANSWER_PREFIX, USER_PROMPT, TerminalChat
from xraygpt.training.checkpoint import atomic_save
from xraygpt.ui.settings import DemoSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_NEW_TOKENS = 12
SETTINGS = DemoSettings(max_new_tokens=MAX_NEW_TOKENS, device="cpu")
FOLLOW_UP = "is there any effusion?"


@pytest.fixture(scope="module")
def tiny_model(tiny_model_factory):
    return tiny_model_factory(seed=0).eval()


@pytest.fixture(scope="module")
def images(tiny_assets):
    return sorted((tiny_assets["val"] / "image").iterdir())[:2]


@pytest.fixture(scope="module")
def chat_yaml(tiny_model, tiny_assets, tmp_path_factory):
    """A demo config over the tiny assets with the model's projection as its checkpoint."""
    root = tmp_path_factory.mktemp("chat_cli")
    atomic_save({"model": tiny_model.trainable_state_dict()}, root / "checkpoint_last.pt")
    model = tiny_config(tiny_assets, root / "unused")["model"]
    model["ckpt"] = str(root / "checkpoint_last.pt")
    return write_yaml({"model": model, "demo": {"max_new_tokens": MAX_NEW_TOKENS, "device": "cpu"}}, root / "chat.yaml")


def expected_answers(model, image_path, questions):
    """What ChatSession answers (greedy, as the chat's settings) to `questions` about the image."""
    session = ChatSession(model)
    session.set_image(Image.open(image_path))
    return [list(session.stream_reply(q, SETTINGS.generation()))[-1] for q in questions]


def spawn(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return pexpect.spawn(sys.executable, ["-m", "xraygpt.chat_cli", *args], cwd=str(REPO), env=env,
                         encoding="utf-8", timeout=180, dimensions=(40, 1000))


def read_answer(child) -> str:
    """The streamed answer up to the next prompt."""
    child.expect_exact(ANSWER_PREFIX)
    child.expect_exact("\r\n" + USER_PROMPT)
    return child.before.replace("\r\n", "\n")


def test_session_in_a_pseudo_terminal(tiny_model, images, chat_yaml, tmp_path):
    first, second = images
    summary = DemoSettings().summary_instruction
    want_summary, want_follow_up = expected_answers(tiny_model, first, [summary, FOLLOW_UP])
    (want_second,) = expected_answers(tiny_model, second, [summary])
    (tmp_path / "notes.txt").write_text("not an image\n")

    child = spawn("--cfg-path", str(chat_yaml), "--image", str(first))
    try:
        child.expect_exact(f"image: '{first}' (112x112 PNG); a new conversation")
        assert read_answer(child) == want_summary  # the summary, asked on its own
        child.sendline(FOLLOW_UP)
        assert read_answer(child) == want_follow_up  # the follow-up sees the first exchange
        child.sendline("effusion? " * 300)
        child.expect(r"error: The question is too long and was not sent: it takes \d+ tokens[^\r\n]*\r\n")
        child.expect_exact(USER_PROMPT)
        child.sendline("/reset")
        child.expect_exact("reset: no image, no conversation")
        child.sendline(FOLLOW_UP)
        child.expect_exact("error: Please upload a chest X-ray first")
        child.sendline(f"/image {tmp_path / 'notes.txt'}")
        child.expect_exact("is not a PNG or JPEG image")
        child.sendline("/launch")
        child.expect_exact("error: unknown command /launch")
        child.sendline(f"/image {second}")
        child.expect_exact(f"image: '{second}' (112x112 PNG); a new conversation")
        assert read_answer(child) == want_second
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


@pytest.mark.parametrize("leave", ["eof", "ctrl_c"])
def test_eof_and_ctrl_c_at_the_prompt_exit_cleanly(chat_yaml, leave):
    child = spawn("--cfg-path", str(chat_yaml))
    try:
        child.expect_exact("no image yet: /image PATH")
        child.expect_exact(USER_PROMPT)
        child.sendeof() if leave == "eof" else child.sendintr()
        child.expect(pexpect.EOF)
        assert "Traceback" not in child.before
    finally:
        child.close()
    assert child.exitstatus == 0 and child.signalstatus is None


class Writes(io.StringIO):
    """A text stream that counts its writes."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


def test_answers_stream_token_by_token(tiny_model, images):
    (want,) = expected_answers(tiny_model, images[0], [FOLLOW_UP])
    session = ChatSession(tiny_model)
    session.set_image(Image.open(images[0]))
    out = Writes()
    TerminalChat(session, SETTINGS, out).answer(FOLLOW_UP)
    pieces = [w for w in out.writes[1:-1] if w]  # between the prefix and the final newline
    assert out.writes[0] == ANSWER_PREFIX and len(pieces) >= 2, out.writes
    assert "".join(pieces) == want


def test_start_up_errors_are_one_line(tmp_path, capsys):
    assert chat_cli.main(["--cfg-path", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing.yaml" in err[0]


def test_ctrl_c_during_an_answer_stops_it_and_the_chat_goes_on(chat_yaml, images):
    """A long answer (400 new tokens; the untrained tiny model does not stop early) is stopped by
    Ctrl-C once it has started; the unfinished answer is not kept, and the next question is answered."""
    child = spawn("--cfg-path", str(chat_yaml), "--image", str(images[0]), "--options", "demo.max_new_tokens=400",
                  "demo.auto_summary=false")
    try:
        child.expect_exact("a new conversation")
        child.expect_exact(USER_PROMPT)
        child.sendline(FOLLOW_UP)
        child.expect_exact(ANSWER_PREFIX)
        child.expect(r"\S")  # the answer has started streaming
        child.sendintr()
        child.expect_exact(" [stopped]\r\n" + USER_PROMPT)
        child.sendline("/quit")
        child.expect(pexpect.EOF)
        assert "Traceback" not in child.before
    finally:
        child.close()
    assert child.exitstatus == 0
