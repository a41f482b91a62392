"""The terminal chat (python -m xraygpt.chat_cli) in a pseudo-terminal (pexpect) on the tiny model:
image, summary, follow-up, reset, bad input, quit, a study (`/study`: views given and guessed, prior,
indication, bad study lines); its answers are ChatSession's, token for token."""

import io
import os
import shutil
import sys

import pexpect
import pytest
from PIL import Image

from conftest import REPO, tiny_config, write_yaml
from xraygpt import chat_cli
from xraygpt.chat import ChatSession
from xraygpt.chat_cli import ANSWER_PREFIX, USER_PROMPT, STUDY_IMAGES, StudyCommandError, TerminalChat, parse_study
from xraygpt.data.study_prompts import DEFAULT_STUDY_PROMPT_PATH, load_questions
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


# --- /study -------------------------------------------------------------------------------------

STUDY_QUESTION = load_questions(DEFAULT_STUDY_PROMPT_PATH, "summary")[0]  # what the demo asks of a study
QUIET = DemoSettings(max_new_tokens=MAX_NEW_TOKENS, device="cpu", auto_summary=False)


@pytest.fixture(scope="module")
def study_images(tiny_assets, tmp_path_factory):
    """Three images: a frontal, a lateral (in a folder whose name has a space) and a prior."""
    folder = tmp_path_factory.mktemp("study") / "two words"
    folder.mkdir()
    frontal, lateral, prior = sorted((tiny_assets["val"] / "image").iterdir())[2:5]
    shutil.copy(lateral, folder / "lateral.png")
    return frontal, folder / "lateral.png", prior


def expected_study_answers(model, frontal, lateral, prior, indication, questions, language="en"):
    """What ChatSession answers (greedy) to `questions` about the study (frontal PA, lateral, prior), its
    tags in `language`."""
    session = ChatSession(model)
    session.set_study([Image.open(frontal), Image.open(lateral)], ["PA", "LATERAL"], indication, Image.open(prior),
                      language=language)
    return [list(session.stream_reply(q, SETTINGS.generation()))[-1] for q in questions]


def test_study_in_a_pseudo_terminal(tiny_model, images, chat_yaml, study_images):
    """/study with two images (views given and guessed, a quoted path with a space), a prior and an
    indication: the summary and a follow-up equal ChatSession.set_study's; a bad /study keeps the study
    and its conversation (the next follow-up still equals the direct session's third answer); /image
    leaves study mode (its summary is the single-image one)."""
    frontal, lateral, prior = study_images
    indication = "patient's cough and fever"
    want = expected_study_answers(tiny_model, frontal, lateral, prior, indication,
                                  [STUDY_QUESTION, FOLLOW_UP, "and the heart?"])
    (want_image,) = expected_answers(tiny_model, images[0], [DemoSettings().summary_instruction])

    child = spawn("--cfg-path", str(chat_yaml))
    try:
        child.expect_exact("no image yet: /image PATH")
        child.sendline(f"/study '{lateral}':lateral {frontal}:pa --prior {prior} --indication {indication}")
        child.expect_exact(f"study: Frontal (PA) '{frontal}', Lateral '{lateral}', prior frontal '{prior}'; "
                           f"indication: {indication}; a new conversation")
        assert read_answer(child) == want[0]  # the study's summary, asked with the demo's question
        child.sendline(FOLLOW_UP)
        assert read_answer(child) == want[1]  # the follow-up is about the study
        child.sendline(f"/study {frontal}:lateal")
        child.expect(r"error: unknown view 'lateal'[^\r\n]*\r\n")
        child.expect_exact(USER_PROMPT)
        child.sendline("and the heart?")
        assert read_answer(child) == want[2]  # the study and its two turns were kept
        child.sendline(f"/image {images[0]}")
        child.expect_exact(f"image: '{images[0]}' (112x112 PNG); a new conversation")
        assert read_answer(child) == want_image  # out of study mode
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


def test_study_views_given_and_guessed(tiny_model, study_images, tmp_path):
    """Views given by name (any case, aliases), guessed when omitted (first frontal, second lateral), put
    in reading order; a path holding ':' is not split unless a known view follows its last ':'."""
    frontal, lateral, prior = study_images
    odd = tmp_path / "scan:2024.png"  # a ':' in the file name, no view
    shutil.copy(frontal, odd)
    session = ChatSession(tiny_model)
    out = io.StringIO()
    chat = TerminalChat(session, QUIET, out)

    chat.handle(f"/study {frontal} '{lateral}'")  # both guessed
    assert session.study == (["FRONTAL", "LATERAL"], "", [], "en") and session.image_count == 2
    chat.handle(f"/study '{lateral}':LAT {frontal}:ap")  # given: reading order puts the frontal first
    assert session.study == (["AP", "LATERAL"], "", [], "en") and session.image_count == 2
    chat.handle(f"/study {odd} {odd}:ll {frontal}:unknown --prior {prior}")
    assert session.study == (["FRONTAL", "LL", "unknown"], "", ["FRONTAL"], "en") and session.image_count == 4
    lines = out.getvalue().splitlines()
    assert lines == [
        f"study: Frontal '{frontal}', Lateral '{lateral}'; no indication; a new conversation",
        f"study: Frontal (AP) '{frontal}', Lateral '{lateral}'; no indication; a new conversation",
        f"study: Frontal '{odd}', Lateral (LL) '{odd}', Unknown view '{frontal}', prior frontal '{prior}'; "
        "no indication; a new conversation",
    ]
    # the view after the last ':' only: a quoted Windows-ish path keeps its colons
    assert parse_study(r"'C:\x\scan:2.png:PA'").images == [(r"C:\x\scan:2.png", "PA")]
    assert parse_study(r"'C:\x\scan.png'").images == [(r"C:\x\scan.png", None)]
    assert parse_study("a.png --indication  \"cough,  fever\"").indication == "cough, fever"


def test_study_in_chinese_asks_the_chinese_study_question(tiny_model, study_images):
    """With language zh, /study summarises with the demo's Chinese study question, the first of
    prompts/zh/study_summary.txt (not the single-image one), after Chinese view tags, and answers as
    ChatSession does."""
    frontal, lateral, prior = study_images
    zh_question = load_questions(DEFAULT_STUDY_PROMPT_PATH, "summary", "zh")[0]
    (want,) = expected_study_answers(tiny_model, frontal, lateral, prior, "cough", [zh_question], language="zh")
    session = ChatSession(tiny_model)
    out = io.StringIO()
    chat = TerminalChat(session, DemoSettings(max_new_tokens=MAX_NEW_TOKENS, device="cpu", language="zh"), out)
    assert chat.study_question() == zh_question != STUDY_QUESTION
    chat.handle(f"/study {frontal}:pa '{lateral}':lateral --prior {prior} --indication cough")
    assert session.turns == [(zh_question, want)] and out.getvalue().splitlines()[-1] == ANSWER_PREFIX + want
    assert session.study[3] == "zh"


def test_study_takes_what_the_demo_takes():
    app = pytest.importorskip("xraygpt.ui.app")  # gradio: the demo extra
    assert STUDY_IMAGES == app.STUDY_SLOTS


@pytest.mark.parametrize("line, says", [
    ("/study", "/study needs at least one image"),
    ("/study --indication cough", "/study needs at least one image"),
    ("/study {missing}", "cannot read '{missing}'"),
    ("/study {frontal} {notes}", "'{notes}' is not a PNG or JPEG image"),
    ("/study {frontal}:lateal", "unknown view 'lateal' for '{frontal}'; accepted: PA, AP, FRONTAL, LATERAL, LL"),
    ("/study {frontal} --prior", "--prior needs a path"),
    ("/study {frontal} --prior --indication cough", "--prior needs a path"),
    ("/study {frontal} --prior {missing}", "cannot read '{missing}'"),
    ("/study {frontal} {frontal} {frontal} {frontal}", f"a study takes at most {STUDY_IMAGES} images"),
    ("/study {frontal} --indication cough <ImageHere> fever", "The indication contains '<ImageHere>'"),
    ("/study {frontal} --indication cough ### fever", "The indication contains '###'"),
    ("/study {frontal} --views PA", "unknown option --views"),
    ("/study '{frontal}", "No closing quotation"),
])
@pytest.mark.parametrize("before", ["image", "study"])
def test_bad_study_is_one_error_line_and_keeps_the_conversation(tiny_model, study_images, tmp_path, line, says,
                                                               before):
    frontal, lateral, prior = study_images
    (tmp_path / "notes.txt").write_text("not an image\n")
    names = {"frontal": frontal, "missing": tmp_path / "missing.png", "notes": tmp_path / "notes.txt"}
    session = ChatSession(tiny_model)
    if before == "image":
        session.set_image(Image.open(prior))
    else:
        session.set_study([Image.open(frontal), Image.open(lateral)], ["PA", "LATERAL"], "Cough.", Image.open(prior))
    session.turns = [("an earlier question", "an earlier answer")]
    tokens, study, turns = session.image_tokens, session.study, list(session.turns)
    out = io.StringIO()
    chat = TerminalChat(session, SETTINGS, out)  # auto_summary: nothing may be asked either
    assert chat.handle(line.format(**names)) is True
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says.format(**names) in lines[0], lines
    assert session.image_tokens is tokens and session.study == study and session.turns == turns


def test_help_lists_study_and_reset_leaves_study_mode(tiny_model, study_images):
    frontal, lateral, prior = study_images
    session = ChatSession(tiny_model)
    out = io.StringIO()
    chat = TerminalChat(session, QUIET, out)
    chat.handle("/help")
    assert "/study PATH[:VIEW] [PATH[:VIEW] ...] [--prior PATH] [--indication TEXT]" in out.getvalue()
    chat.handle(f"/study {frontal} --indication cough")
    assert session.study == (["FRONTAL"], "cough", [], "en")
    chat.handle("/reset")
    assert session.study is None and session.image_count == 0
    with pytest.raises(StudyCommandError, match="at least one image"):
        parse_study("   ")
