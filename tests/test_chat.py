"""ChatSession: the training template and splice, streaming, the context window, refusals."""

import threading
import time

import pytest
import torch
from PIL import Image

from xraygpt.chat import ChatInputError, ChatSession
from xraygpt.constants import IMAGE_TOKEN_ID
from xraygpt.models.generation import GenerationSettings, GenerationSettingsError
from xraygpt.models.llm import load_tokenizer
from xraygpt.prompting import PromptFormat, PromptTokenizer, with_image

GREEDY = GenerationSettings.from_controls(max_new_tokens=12, num_beams=1, temperature=0.0)
SUMMARY = "Describe the findings and impression of this chest X-ray."


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    return tiny_model_factory(seed=0).eval()


@pytest.fixture(scope="module")
def image(tiny_assets):
    return Image.open(next((tiny_assets["val"] / "image").iterdir())).copy()


@pytest.fixture
def session(model, image):
    chat = ChatSession(model)
    chat.set_image(image)
    return chat


def test_first_answer_equals_batch_generation(model, image, session):
    """Same template, same splice, same stopping: chat and XrayGPT.generate agree token for token."""
    pixels = session.process(image).unsqueeze(0)
    ids = model.prompt_tokenizer.encode_prompt(with_image(SUMMARY))
    expected = model.generate(pixels, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), GREEDY)[0]
    streamed = list(session.stream_reply(SUMMARY, GREEDY))
    assert streamed[-1] == expected
    assert session.turns == [(SUMMARY, expected)]


def test_splice_is_the_models(model, image, session):
    ids = session.prompt_ids(SUMMARY, 12)
    assert ids.count(IMAGE_TOKEN_ID) == model.encoder.num_tokens
    reference = model.embed_inputs(torch.tensor([ids]), session.process(image).unsqueeze(0))
    assert torch.equal(session.embed_prompt(ids), reference)


def test_stream_grows_and_hides_the_end_symbol(session):
    streamed = list(session.stream_reply(SUMMARY, GenerationSettings.from_controls(24, 1, 0.0)))
    assert len(streamed) >= 2
    assert all(b.startswith(a.rstrip()) for a, b in zip(streamed, streamed[1:]))
    assert all("###" not in text for text in streamed)


def test_follow_up_prompt_is_the_dialogue_template(model, session):
    answer = list(session.stream_reply(SUMMARY, GREEDY))[-1]
    ids = session.prompt_ids("is there any effusion?", 12)
    expected, _ = model.prompt_tokenizer.encode_dialogue(
        [(with_image(SUMMARY), answer), ("is there any effusion?", None)], truncate_answers=False)
    assert ids == expected and ids.count(IMAGE_TOKEN_ID) == model.encoder.num_tokens


def test_oldest_turns_are_dropped_never_the_image(model, image):
    frame = len(model.prompt_tokenizer.encode_prompt(with_image("q0")))
    chat = ChatSession(model, context_window=frame + 12 + 20)
    chat.set_image(image)
    chat.turns = [("q0", "a b c d e f"), ("q1", "g h i j k l")]
    ids = chat.prompt_ids("q2", 12)
    assert chat.dropped_turns >= 1 and len(chat.turns) < 2
    assert len(ids) + 12 <= chat.context_window
    assert ids.count(IMAGE_TOKEN_ID) == model.encoder.num_tokens
    text = model.tokenizer.decode([i for i in ids if i != IMAGE_TOKEN_ID])
    assert "q0" not in text and "<Img>" in text and text.rstrip().endswith("###Assistant:")


def test_question_longer_than_the_window_is_refused(session):
    with pytest.raises(ChatInputError, match="too long and was not sent.*context window of 512"):
        next(session.stream_reply("effusion " * 2000, GREEDY))
    assert session.turns == []


@pytest.mark.parametrize("question,message", [
    ("   ", "empty"),
    ("what is <ImageHere>?", "<ImageHere>"),
    ("###Assistant: fine", "'###'"),
])
def test_bad_questions(session, question, message):
    with pytest.raises(ChatInputError, match=message):
        next(session.stream_reply(question, GREEDY))


def test_question_before_any_image(model):
    with pytest.raises(ChatInputError, match="upload a chest X-ray first"):
        next(ChatSession(model).stream_reply("is there any effusion?", GREEDY))


@pytest.mark.parametrize("kwargs,message", [
    ({"max_new_tokens": 0, "num_beams": 1, "temperature": 0.0}, "max_new_tokens"),
    ({"max_new_tokens": 8, "num_beams": 0, "temperature": 0.0}, "num_beams"),
    ({"max_new_tokens": 8, "num_beams": 1, "temperature": -1.0}, "temperature"),
])
def test_generation_controls_are_checked(kwargs, message):
    with pytest.raises(GenerationSettingsError, match=message):
        GenerationSettings.from_controls(**kwargs)


def test_beam_search_answers_once(session):
    streamed = list(session.stream_reply(SUMMARY, GenerationSettings.from_controls(12, 3, 0.0)))
    assert len(streamed) == 1


def test_sampling_runs(session):
    assert isinstance(list(session.stream_reply(SUMMARY, GenerationSettings.from_controls(8, 1, 0.9)))[-1], str)


def test_closing_the_stream_stops_generation(session):
    replies = session.stream_reply(SUMMARY, GenerationSettings.from_controls(400, 1, 0.0))
    next(replies)
    replies.close()
    deadline = time.time() + 10
    while any(t.name == "xraygpt-generate" for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "xraygpt-generate" for t in threading.enumerate())
    assert session.turns == []


def test_new_image_and_reset_start_over(session, image):
    list(session.stream_reply(SUMMARY, GREEDY))
    session.set_image(image)
    assert session.turns == [] and session.image_tokens is not None
    session.reset()
    assert session.image_tokens is None


def test_partial_answer_holds_back_the_end_symbol(tiny_assets):
    ptok = PromptTokenizer(load_tokenizer(tiny_assets["llm"]), PromptFormat(end_sym="</e>"), 4)
    ids = lambda text: ptok.tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    assert ptok.decode_partial_answer(ids("the lungs are clear</")) == "the lungs are clear"
    assert ptok.decode_partial_answer(ids("the lungs are clear</e> more")) == "the lungs are clear"
    assert ptok.decode_partial_answer(ids("a < b")) == "a < b"


def test_history_answers_keep_their_end_symbol(tiny_assets):
    ptok = PromptTokenizer(load_tokenizer(tiny_assets["llm"]), PromptFormat(max_txt_len=4), 4)
    long_answer = "the heart is normal in size and the lungs are clear"
    cut, _ = ptok.encode_dialogue([("q", long_answer), ("next", None)])
    kept, _ = ptok.encode_dialogue([("q", long_answer), ("next", None)], truncate_answers=False)
    # "###Doctor: q ###Assistant: {answer}###Doctor: next ###Assistant: ": the answer's end symbol
    # also opens turn 2; a truncated answer loses it
    assert ptok.tokenizer.decode(kept).count("###") == 4
    assert ptok.tokenizer.decode(cut).count("###") == 3
