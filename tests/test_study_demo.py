"""Studies in the chat and the demo (#15 item 3): several images with their views, an indication and a
prior image; answers equal batch generation of the same study; the demo's /study API and its bad input."""

from __future__ import annotations

import os
import shutil

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import REPO  # noqa: E402
from xraygpt.chat import ChatInputError, ChatSession  # noqa: E402
from xraygpt.data.collate import GenerationCollator  # noqa: E402
from xraygpt.data.study_prompts import study_instruction  # noqa: E402
from xraygpt.data.transforms import MedCLIPImageEval  # noqa: E402
from xraygpt.models.generation import GenerationSettings  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = GenerationSettings(max_new_tokens=12)


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    m = tiny_model_factory(seed=2)
    torch.nn.init.normal_(m.projector.proj.weight, std=0.05)
    return m.eval()


@pytest.fixture(scope="module")
def files(tiny_assets):
    return sorted((tiny_assets["val"] / "image").iterdir())[:4]


def batch_answer(model, images, views, question, indication="", prior=None) -> str:
    """`XrayGPT.generate` on the study as a dataset sample shows it (images in the order given)."""
    process = MedCLIPImageEval(preprocessing=model.image_preprocessing)
    shown = images + ([prior] if prior is not None else [])
    sample = {"image_id": "x", "pixel_values": torch.stack([process(i) for i in shown]),
              "instruction": study_instruction(views, question, indication, ["FRONTAL"] if prior is not None else [])}
    batch = GenerationCollator(model.prompt_tokenizer)([sample])
    return model.generate(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], SETTINGS,
                          batch["image_counts"])[0]


def last(stream) -> str:
    text = ""
    for text in stream:
        pass
    return text


def test_chat_about_a_study_equals_batch_generation(model, files):
    images = [Image.open(f) for f in files[:3]]
    chat = ChatSession(model)
    # given lateral first: shown in reading order, frontal first
    shown = chat.set_study(images[:2], ["Lateral", "PA"], "Cough.", prior=images[2])
    assert shown == ["PA", "LATERAL"] and chat.image_tokens.shape[0] == 3
    question = "Describe the findings and impression of this chest X-ray study."
    answer = last(chat.stream_reply(question, SETTINGS))
    assert answer == batch_answer(model, [images[1], images[0]], ["PA", "LATERAL"], question, "Cough.", images[2])
    # a follow-up keeps the study in the first turn
    assert "Frontal (PA): <Img>" in model.prompt_tokenizer.tokenizer.decode(
        [t for t in chat.prompt_ids("Any effusion?", 12) if t >= 0])
    # views not given are guessed: first frontal, second lateral
    assert chat.set_study(images[:2]) == ["FRONTAL", "LATERAL"]
    assert last(chat.stream_reply(question, SETTINGS)) == batch_answer(model, images[:2], ["FRONTAL", "LATERAL"],
                                                                      question)
    # one image again: the paper's single-image prompt and splice
    chat.set_image(images[0])
    assert chat.study is None and chat.image_tokens.shape[0] == 1
    with pytest.raises(ChatInputError, match="at least one image"):
        chat.set_study([])
    with pytest.raises(ChatInputError, match="reserves"):
        chat.set_study(images[:1], indication="cough ### more")


def test_demo_reads_a_study(model, files, tiny_assets):
    gradio = pytest.importorskip("gradio")
    del gradio
    from gradio_client import Client, handle_file
    from test_demo import FAST, running_demo, texts

    with running_demo(model, max_new_tokens=12) as url:
        client = Client(url, verbose=False)
        # two views (defaults: Frontal, Lateral), an indication and a prior image
        job = client.submit(handle_file(str(files[0])), "Frontal", handle_file(str(files[1])), "Lateral", None,
                            "Unknown view", handle_file(str(files[2])), "Shortness of breath.", *FAST,
                            api_name="/study")
        job.result()
        chat = texts(job.outputs()[-1][0])
        assert chat[0].endswith("Study loaded: Frontal, Lateral, prior frontal; indication: Shortness of breath.")
        images = [Image.open(f) for f in files[:3]]
        expected = batch_answer(model, images[:2], ["FRONTAL", "LATERAL"],
                                "Describe the findings and impression of this chest X-ray study.",
                                "Shortness of breath.", images[2])
        assert chat[-1] == expected and chat[-2] == "Describe the findings and impression of this chest X-ray study."
        # a follow-up question is about the study
        job = client.submit("Is there any effusion?", *FAST, api_name="/ask")
        job.result()
        assert texts(job.outputs()[-1][0])[-2] == "Is there any effusion?"
        # bad input: no image, a file that is not an image
        job = client.submit(None, "Frontal", None, "Lateral", None, "Unknown view", None, "", *FAST, api_name="/study")
        job.result()
        assert "at least one image" in texts(job.outputs()[-1][0])[-1]
        bad = tiny_assets["root"] / "not_an_image.png"
        bad.write_bytes(b"hello")
        job = client.submit(handle_file(str(bad)), "Frontal", None, "Lateral", None, "Unknown view", None, "", *FAST,
                            api_name="/study")
        job.result()
        assert "No image is loaded now" in texts(job.outputs()[-1][0])[-1]


def test_demo_asks_a_study_in_the_answer_language(model, tmp_path):
    """A study's summary question per answer language: the first of prompts/study_summary.txt, of
    prompts/zh/study_summary.txt in Chinese; a language without study prompts (fr here, which has
    single-image prompts only) asks its single-image summary question."""
    app = pytest.importorskip("xraygpt.ui.app")  # gradio: the demo extra
    from xraygpt.ui.settings import DemoSettings

    prompts = tmp_path / "prompts"
    (prompts / "fr").mkdir(parents=True)
    shutil.copytree(REPO / "prompts" / "zh", prompts / "zh")
    (prompts / "fr" / "alignment.txt").write_text("<Img><ImageHere></Img> Décrivez cette radiographie.\n",
                                                  encoding="utf-8")
    handlers = app.Handlers(model, DemoSettings(prompt_path=str(prompts / "alignment.txt"), languages=("en", "zh", "fr")))

    def first(file):
        return next(line for line in file.read_text(encoding="utf-8").splitlines() if line and line[0] != "#")

    assert handlers.study_instructions == {"en": first(REPO / "prompts" / "study_summary.txt"),
                                           "zh": first(REPO / "prompts" / "zh" / "study_summary.txt"),
                                           "fr": "Décrivez cette radiographie."}
    assert handlers.study_instructions["zh"] != handlers.summary_instructions["zh"]  # not the single-image one


def test_server_reads_a_study_sent_in_one_message(model, files):
    pytest.importorskip("fastapi")
    import concurrent.futures

    import openai

    from test_serve import _wait_for, client, data_url, image_message, running_server

    images = [Image.open(f) for f in files[:4]]
    study = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(f.read_bytes())}}
                                         for f in files[:2]] + [{"type": "text", "text": "Describe the study."}]}
    single = image_message(data_url(files[2].read_bytes()), "Describe the study.")
    expected_study = batch_answer(model, images[:2], ["FRONTAL", "LATERAL"], "Describe the study.")
    chat = ChatSession(model)
    chat.set_image(images[2])
    expected_single = last(chat.stream_reply("Describe the study.", SETTINGS))
    with running_server(model, max_batch_size=4, batch_wait_ms=2000) as (url, batcher):
        api = client(url)

        def ask(message):
            return api.chat.completions.create(model="xraygpt", messages=[message], max_tokens=12).choices[0].message.content

        assert ask(study) == expected_study  # views guessed from the order: frontal, then lateral
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # a batch mixing studies and single images
            answers = list(pool.map(ask, [study, single, study, single]))
        assert answers == [expected_study, expected_single] * 2
        _wait_for(lambda: batcher.stats()["answered"] == 5, "the worker to count the answers")  # counted after they are sent
        assert batcher.stats()["largest_batch"] > 1  # batched together
        # views and indication given (extra fields, like language): shown in reading order with the indication
        answer = api.chat.completions.create(model="xraygpt", messages=[study], max_tokens=12, extra_body={
            "views": ["lateral", "PA"], "indication": "Cough."}).choices[0].message.content
        assert answer == batch_answer(model, [images[1], images[0]], ["PA", "LATERAL"], "Describe the study.", "Cough.")
        for extra, words in (({"views": ["PA"]}, "1 views for 2 images"), ({"views": ["PA", "sideways"]}, "'sideways'"),
                             ({"indication": "a ### b"}, "indication contains '###'")):
            with pytest.raises(openai.BadRequestError, match=words):
                api.chat.completions.create(model="xraygpt", messages=[study], max_tokens=12, extra_body=extra)
