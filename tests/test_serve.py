"""The OpenAI-compatible server, driven with the official `openai` client (and curl for the raw SSE).

One in-process server (uvicorn in a thread, API keys, local files allowed, small limits) over the
tiny model serves the answer, stream, DICOM and refusal tests; servers whose batcher is paused
check batching and the full queue deterministically (the requests are queued before the worker
takes any); `serve.py` itself runs once as a subprocess.
"""

import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO, tiny_config, write_yaml

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from xraygpt.chat import ChatSession  # noqa: E402
from xraygpt.data.images import read_xray  # noqa: E402
from xraygpt.models.generation import GenerationSettings  # noqa: E402
from xraygpt.prompting import with_image  # noqa: E402
from xraygpt.serving.app import build_app  # noqa: E402
from xraygpt.serving.batcher import Batcher  # noqa: E402
from xraygpt.serving.settings import ServeSettings  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "sk-test-0123456789"
SUMMARY = "Describe the findings and impression of this chest X-ray."
FOLLOW_UP = "is there any effusion?"
TOKENS = 12
GREEDY = GenerationSettings(max_new_tokens=TOKENS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model, batcher=None, **overrides):
    """The API over `model` served in this process on a free 127.0.0.1 port; yields (base URL, batcher)."""
    settings = ServeSettings(port=free_port(), **{"max_new_tokens": TOKENS, **overrides})
    app = build_app(model, settings, batcher)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_config=None))
    thread = threading.Thread(target=server.run, name="test-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{settings.port}", app.state.batcher
    finally:
        server.should_exit = True
        thread.join(30)


def client(url: str, key: str = KEY, **kwargs):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120, **kwargs)


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def image_message(url: str, text: str = SUMMARY) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}


def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2"):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    return tiny_model_factory(seed=0).eval()


@pytest.fixture(scope="module")
def xray(tiny_assets):
    return sorted((tiny_assets["val"] / "image").iterdir())[0]


@pytest.fixture(scope="module")
def xray_url(xray):
    return data_url(xray.read_bytes())


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    keys = tmp_path_factory.mktemp("serve_keys") / "keys.txt"
    keys.write_text(f"# clients\n{KEY}\nsk-other\n")
    with running_server(model, api_key_file=str(keys), allow_local_files=True, max_batch_size=4, batch_wait_ms=5,
                        max_body_mb=1, max_image_pixels=4_000_000) as (url, batcher):
        yield url


def chat_answers(model, image: Image.Image, questions: list[str]) -> list[str]:
    """What the chat (the demo's session code) answers to `questions` asked in turn about `image`."""
    session = ChatSession(model)
    session.set_image(image)
    return [list(session.stream_reply(q, GREEDY))[-1] for q in questions]


def assert_serving(url: str, xray_url: str) -> None:
    """The server still answers a good request."""
    answer = client(url).chat.completions.create(model="xraygpt", messages=[image_message(xray_url)], max_tokens=4)
    assert answer.choices[0].message.content is not None


# ---------------------------------------------------------------------------------------------- answers
def test_models_and_health(server):
    assert [m.id for m in client(server).models.list()] == ["xraygpt"]
    health = httpx.get(f"{server}/health").json()  # no key needed
    assert health["status"] == "ok" and health["model"] == "xraygpt"


def test_summary_is_the_chats_answer(server, model, xray, xray_url):
    """Same template, same splice, same stopping as the chat (and so as training and batch generation)."""
    answer = client(server).chat.completions.create(model="xraygpt", messages=[image_message(xray_url)])
    expected = chat_answers(model, Image.open(xray), [SUMMARY])[0]
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected and expected
    assert choice.finish_reason in ("stop", "length") and answer.object == "chat.completion"
    frame = model.prompt_tokenizer.encode_dialogue([(with_image(SUMMARY), None)])[0]
    assert answer.usage.prompt_tokens == len(frame) and 1 <= answer.usage.completion_tokens <= TOKENS


def test_follow_up_sees_the_earlier_turns(server, model, xray, xray_url):
    first, second = chat_answers(model, Image.open(xray), [SUMMARY, FOLLOW_UP])
    messages = [image_message(xray_url), {"role": "assistant", "content": first}, {"role": "user", "content": FOLLOW_UP}]
    answer = client(server).chat.completions.create(model="xraygpt", messages=messages)
    assert answer.choices[0].message.content == second
    alone = client(server).chat.completions.create(model="xraygpt", messages=[image_message(xray_url, FOLLOW_UP)])
    assert answer.usage.prompt_tokens > alone.usage.prompt_tokens  # the earlier turns are in the prompt


def test_streaming_gives_the_same_text_token_by_token(server, xray_url):
    whole = client(server).chat.completions.create(model="xraygpt", messages=[image_message(xray_url)])
    chunks = list(client(server).chat.completions.create(model="xraygpt", messages=[image_message(xray_url)],
                                                         stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 2, deltas
    assert "".join(deltas) == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_max_tokens_and_seeded_sampling(server, xray_url):
    api = client(server)
    whole = api.chat.completions.create(model="xraygpt", messages=[image_message(xray_url)]).choices[0].message.content
    word = whole.split()[2]
    cut = api.chat.completions.create(model="xraygpt", messages=[image_message(xray_url)], stop=[word])
    assert cut.choices[0].message.content == whole[: whole.index(word)] and cut.choices[0].finish_reason == "stop"
    streamed = api.chat.completions.create(model="xraygpt", messages=[image_message(xray_url)], stop=[word], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut.choices[0].message.content
    short = api.chat.completions.create(model="xraygpt", messages=[image_message(xray_url)], max_tokens=2)
    assert short.usage.completion_tokens == 2 and short.choices[0].finish_reason == "length"
    sampled = [api.chat.completions.create(model="xraygpt", messages=[image_message(xray_url)], temperature=1.5,
                                           seed=seed).choices[0].message.content for seed in (1, 1, 2, 3)]
    assert sampled[0] == sampled[1] and len(set(sampled)) > 1


def test_dicom_data_url_and_local_file(server, model, xray, tmp_path):
    pytest.importorskip("pydicom", minversion="3")
    pixels = np.asarray(Image.open(xray).convert("L"), dtype=np.uint16) * 16  # 12 bits
    dcm = write_dicom(tmp_path / "scan.dcm", pixels)
    expected = chat_answers(model, read_xray(dcm, 4_000_000), [SUMMARY])[0]
    api = client(server)
    sent = api.chat.completions.create(model="xraygpt", messages=[image_message(data_url(dcm.read_bytes(), "application/dicom"))])
    local = api.chat.completions.create(model="xraygpt", messages=[image_message(str(dcm))])
    as_url = api.chat.completions.create(model="xraygpt", messages=[image_message(dcm.as_uri())])
    assert sent.choices[0].message.content == local.choices[0].message.content == as_url.choices[0].message.content == expected
    inverted = write_dicom(tmp_path / "inverted.dcm", pixels, "MONOCHROME1")
    answer = api.chat.completions.create(model="xraygpt", messages=[image_message(str(inverted))])
    assert answer.choices[0].message.content == chat_answers(model, read_xray(inverted, 4_000_000), [SUMMARY])[0]


def test_curl_reads_the_raw_event_stream(server, xray_url, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "xraygpt", "stream": True, "messages": [image_message(xray_url)]}))
    out = subprocess.run([curl, "-sN", "--fail-with-body", f"{server}/v1/chat/completions", "-H", f"Authorization: Bearer {KEY}",
                          "-H", "Content-Type: application/json", "--data-binary", f"@{body}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    events = out.stdout.split("\n\n")
    assert events[-1] == "" and all(e.startswith("data: ") for e in events[:-1])
    assert events[-2] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


# ---------------------------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def bad_images(tiny_assets, tmp_path_factory, xray):
    pytest.importorskip("pydicom", minversion="3")
    root = tmp_path_factory.mktemp("bad_images")
    dcm = write_dicom(root / "scan.dcm", np.asarray(Image.open(xray).convert("L"), dtype=np.uint16) * 16)
    huge = root / "huge.png"  # a 30000x30000 PNG header (nothing decodes it: the size is refused first)
    with open(huge, "wb") as f:
        Image.new("L", (8, 8)).save(f, format="PNG")
    data = bytearray(huge.read_bytes())
    data[16:24] = (30000).to_bytes(4, "big") * 2
    import zlib

    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # the IHDR chunk's CRC
    return {"text": b"not an image\n", "truncated_dicom": dcm.read_bytes()[:600], "huge_header": bytes(data)}


def _create(messages, model="xraygpt", **kwargs):
    return lambda url: client(url).chat.completions.create(model=model, messages=messages, **kwargs)


def _post(body: bytes, key: str | None = KEY):
    def send(url):
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        response = httpx.post(f"{url}/v1/chat/completions", content=body, timeout=60, headers=headers)
        response.raise_for_status()
    return send


def refusals(xray_url: str, bad: dict) -> dict:
    """case: (request, status, error code, param, words of the message)."""
    image = [{"type": "image_url", "image_url": {"url": xray_url}}]
    return {
        "not_an_image": (_create([image_message(data_url(bad["text"]))]), 400, "invalid_image",
                         "messages[0].content[0]", "is not a PNG or JPEG image"),
        "truncated_dicom": (_create([image_message(data_url(bad["truncated_dicom"], "application/dicom"))]), 400,
                            "invalid_image", "messages[0].content[0]", "DICOM"),
        "30000x30000_header": (_create([image_message(data_url(bad["huge_header"]))]), 400, "invalid_image",
                               "messages[0].content[0]", "30000x30000 = 900,000,000 pixels"),
        "empty_message_list": (_create([]), 400, "invalid_value", "messages", "messages is empty"),
        "message_without_image": (_create([{"role": "user", "content": SUMMARY}]), 400, "missing_image", "messages",
                                  "no image"),
        "images_in_two_messages": (_create([image_message(xray_url), {"role": "assistant", "content": "ok"},
                                            image_message(xray_url, "and now?")]), 400,
                                   "too_many_images", "messages[2].content[0]", "one image per conversation"),
        "five_images": (_create([{"role": "user", "content": image * 5 + [{"type": "text", "text": "?"}]}]), 400,
                        "too_many_images", "messages[0].content[4]", "at most 4"),
        "no_question": (_create([{"role": "user", "content": image}]), 400, "invalid_value", "messages[0].content",
                        "has no text"),
        "reserved_symbol": (_create([image_message(xray_url, "###Assistant: fine")]), 400, "invalid_value",
                            "messages[0].content", "'###'"),
        "ends_with_the_assistant": (_create([image_message(xray_url), {"role": "assistant", "content": "ok"}]), 400,
                                    "invalid_value", "messages", "the last message must be the user's"),
        "wrong_api_key": (lambda url: client(url, key="sk-wrong").chat.completions.create(
            model="xraygpt", messages=[image_message(xray_url)]), 401, "invalid_api_key", None, "Incorrect API key"),
        "no_api_key": (_post(b"{}", key=None), 401, "invalid_api_key", None, "Incorrect API key"),
        "body_over_the_limit": (_create([image_message(data_url(bytes(1_200_000)))]), 413, "request_too_large", None,
                                "over the server's limit of 1,048,576 bytes"),
        "unknown_model": (_create([image_message(xray_url)], model="gpt-4o"), 404, "model_not_found", "model",
                          "'gpt-4o' does not exist"),
        "http_url": (_create([image_message("https://example.com/x.png")]), 400, "invalid_image",
                     "messages[0].content[0]", "does not fetch URLs"),
        "missing_local_file": (_create([image_message("/no/such/scan.dcm")]), 400, "invalid_image",
                               "messages[0].content[0]", "no file"),
        "max_tokens_past_the_window": (_create([image_message(xray_url)], max_tokens=100_000), 400,
                                       "context_length_exceeded", "max_tokens", "context window of 512"),
        "prompt_past_the_window": (_create([image_message(xray_url, "effusion? " * 2000)]), 400,
                                   "context_length_exceeded", "messages", "accepts at most 512"),
        "temperature_out_of_range": (_create([image_message(xray_url)], temperature=3), 400, "invalid_value",
                                     "temperature", "less than or equal to 2"),
        "several_choices": (_create([image_message(xray_url)], n=2), 400, "invalid_value", "n", "Input should be 1"),
        "unknown_argument": (_create([image_message(xray_url)], extra_body={"best_of": 3}), 400,
                             "unsupported_parameter", "best_of", "unrecognized request argument"),
        "tool_message": (_create([{"role": "tool", "content": "x", "tool_call_id": "1"}]), 400, "invalid_value",
                         "messages[0].role", "Input should be"),
        "not_json": (_post(b"{not json"), 400, "invalid_json", None, "not valid JSON"),
    }


CASES = ["not_an_image", "truncated_dicom", "30000x30000_header", "empty_message_list", "message_without_image",
         "images_in_two_messages", "five_images", "no_question", "reserved_symbol", "ends_with_the_assistant", "wrong_api_key", "no_api_key",
         "body_over_the_limit", "unknown_model", "http_url", "missing_local_file", "max_tokens_past_the_window",
         "prompt_past_the_window", "temperature_out_of_range", "several_choices", "unknown_argument", "tool_message",
         "not_json"]


@pytest.mark.parametrize("case", CASES)
def test_refusals_are_openai_errors_and_the_server_keeps_serving(server, xray_url, bad_images, case):
    send, status, code, param, words = refusals(xray_url, bad_images)[case]
    with pytest.raises((openai.APIStatusError, httpx.HTTPStatusError)) as caught:
        send(server)
    response = caught.value.response
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param and words in error["message"], error
    assert "Traceback" not in error["message"] and "\n" not in error["message"]
    assert_serving(server, xray_url)


def test_the_cases_cover_every_refusal(xray_url):
    assert set(CASES) == set(refusals(xray_url, {"text": b"", "truncated_dicom": b"", "huge_header": b""}))


def test_local_files_are_refused_unless_allowed(model, xray, xray_url):
    with running_server(model) as (url, _):
        with pytest.raises(openai.BadRequestError, match="only when the server runs with --allow-local-files"):
            client(url).chat.completions.create(model="xraygpt", messages=[image_message(str(xray))])
        assert_serving(url, xray_url)  # and without a key file no key is asked


# ---------------------------------------------------------------------------------------------- batching
def _in_threads(calls) -> tuple[list, list]:
    results, errors = [None] * len(calls), []

    def run(k, call):
        try:
            results[k] = call()
        except Exception as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k, call)) for k, call in enumerate(calls)]
    for t in threads:
        t.start()
    return threads, (results, errors)


def _wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.02)


def test_waiting_requests_share_one_batch_and_answer_as_alone(model, xray, xray_url):
    """Three requests queued while the worker is paused are generated as one batch (prompts of different
    lengths, left-padded), each answer equal to the chat's one-at-a-time answer; a streaming one too."""
    batcher = Batcher(model, max_batch_size=8, batch_wait_ms=0, max_queue=8)
    batcher.pause()
    questions = [SUMMARY, FOLLOW_UP, "what about the heart and the lungs on this image?"]
    with running_server(model, batcher) as (url, _):
        api = client(url)
        calls = [lambda q=q: api.chat.completions.create(model="xraygpt", messages=[image_message(xray_url, q)])
                 for q in questions[:2]]
        calls.append(lambda: "".join(c.choices[0].delta.content or "" for c in api.chat.completions.create(
            model="xraygpt", messages=[image_message(xray_url, questions[2])], stream=True) if c.choices))
        threads, (results, errors) = _in_threads(calls)
        _wait_for(lambda: batcher.stats()["queued"] == 3, "three queued requests")
        batcher.resume()
        for t in threads:
            t.join(120)
    assert not errors, errors
    _wait_for(lambda: batcher.stats()["answered"] == 3, "the worker to count the answers")  # counted after they are sent
    stats = batcher.stats()
    assert stats["batches"] == 1 and stats["largest_batch"] == 3 and stats["answered"] == 3
    expected = [chat_answers(model, Image.open(xray), [q])[0] for q in questions]
    assert [r.choices[0].message.content for r in results[:2]] + [results[2]] == expected


def test_a_full_queue_answers_429_at_once_and_health_still_answers(model, xray_url):
    batcher = Batcher(model, max_batch_size=4, batch_wait_ms=0, max_queue=2)
    batcher.pause()
    with running_server(model, batcher) as (url, _):
        api = client(url)
        threads, (results, errors) = _in_threads(
            [lambda: api.chat.completions.create(model="xraygpt", messages=[image_message(xray_url)])] * 2)
        _wait_for(lambda: batcher.stats()["queued"] == 2, "a full queue")
        with pytest.raises(openai.RateLimitError) as caught:
            api.chat.completions.create(model="xraygpt", messages=[image_message(xray_url)])
        assert caught.value.response.json()["error"]["code"] == "queue_full"
        assert caught.value.response.headers["retry-after"] == "1"
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert health["status"] == "ok" and health["queued"] == 2
        batcher.resume()
        for t in threads:
            t.join(120)
        assert not errors and all(r.choices[0].message.content is not None for r in results)
        assert_serving(url, xray_url)


def test_a_client_leaving_mid_stream_ends_its_generation(model, xray_url):
    with running_server(model, max_new_tokens=400) as (url, batcher):
        body = {"model": "xraygpt", "stream": True, "max_tokens": 400, "messages": [image_message(xray_url)]}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            events = response.iter_lines()
            assert next(events).startswith("data: ")  # the role chunk: generation is under way
        _wait_for(lambda: batcher.stats()["cancelled"] == 1 and batcher.stats()["running"] == 0,
                  "the generation to end")
        assert_serving(url, xray_url)


def test_a_client_leaving_while_queued_is_skipped(model, xray_url):
    batcher = Batcher(model, max_batch_size=4, batch_wait_ms=0, max_queue=4)
    batcher.pause()
    with running_server(model, batcher) as (url, _):
        body = {"model": "xraygpt", "messages": [image_message(xray_url)]}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
        _wait_for(lambda: [job.cancelled.is_set() for job in list(batcher.queue.queue)] == [True],
                  "the server to notice the client left")
        batcher.resume()
        assert_serving(url, xray_url)
        _wait_for(lambda: batcher.stats()["answered"] == 1, "the worker to count the answer")  # counted after it is sent
        assert batcher.stats()["cancelled"] == 1


# ---------------------------------------------------------------------------------------------- serve.py
@pytest.fixture(scope="module")
def serve_yaml(tiny_assets, model, tmp_path_factory):
    """A serve config over the tiny assets with a projection checkpoint written here."""
    root = tmp_path_factory.mktemp("serve_cfg")
    torch.save({"model": model.trainable_state_dict()}, root / "checkpoint_last.pt")
    section = tiny_config(tiny_assets, root / "unused")["model"]
    section["ckpt"] = str(root / "checkpoint_last.pt")
    return write_yaml({"model": section, "serve": {"max_new_tokens": 8}}, root / "serve.yaml")


def test_serve_py_serves_on_localhost(serve_yaml, xray_url, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--cfg-path", str(serve_yaml), "--port", str(port),
                             "--max-batch-size", "2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: proc.poll() is not None or _health(url), "serve.py to answer /health", 180)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert httpx.get(f"{url}/health").json()["max_batch_size"] == 2
        answer = client(url).chat.completions.create(model="xraygpt", messages=[image_message(xray_url)])
        assert answer.choices[0].message.content and answer.usage.completion_tokens <= 8
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert "Traceback" not in output, output[-3000:]


def _health(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_py_start_up_errors_are_one_line(serve_yaml, tmp_path, capsys):
    import serve

    assert serve.main(["--cfg-path", str(serve_yaml), "--host", "0.0.0.0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {serve_yaml}: serve.host 0.0.0.0 lets other machines connect: set serve.api_key_file "
        "(--api-key-file) to serve beyond 127.0.0.1")
    assert serve.main(["--cfg-path", str(serve_yaml), "--host", "0.0.0.0", "--api-key-file", str(tmp_path / "no.txt")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"serve.api_key_file {tmp_path / 'no.txt'} does not exist")
    assert serve.main(["--cfg-path", str(serve_yaml), "--max-batch-size", "0"]) == 2
    assert "serve.max_batch_size must be at least 1" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main(["--cfg-path", str(serve_yaml), "--port", str(port)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: cannot serve on 127.0.0.1:{port}")


def test_flags_override_the_config(serve_yaml, tmp_path, capsys):
    import serve

    (tmp_path / "keys.txt").write_text("k1\n")
    assert serve.main(["--cfg-path", str(serve_yaml), "--host", "0.0.0.0", "--api-key-file", str(tmp_path / "keys.txt"),
                       "--port", "9001", "--allow-local-files", "--max-batch-size", "1", "--max-queue", "3",
                       "--batch-wait-ms", "2.5", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["serve"]
    assert printed["host"] == "0.0.0.0" and printed["port"] == 9001 and printed["allow_local_files"] is True
    assert printed["max_batch_size"] == 1 and printed["max_queue"] == 3 and printed["batch_wait_ms"] == 2.5
    assert printed["max_new_tokens"] == 8 and ServeSettings().host == "127.0.0.1"


def test_readme_documents_every_serve_key():
    import dataclasses

    readme = REPO.joinpath("README.md").read_text()
    section = readme[readme.index("## Serving (OpenAI-compatible API)"):]
    missing = [f.name for f in dataclasses.fields(ServeSettings) if f"`{f.name}`" not in section]
    assert not missing, f"README.md's Serving section does not document serve: {missing}"


# ---------------------------------------------------------------------------------------------- the benchmark
def _benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_benchmark_prints_both_modes_and_the_flood(serve_yaml, xray):
    """Figures are timings and not checked; what is: every row and line is printed, nothing is lost.
    The queue holds as many requests as there are clients: with fewer, the three clients' requests
    could all arrive before the batcher takes one, and the third would rightly be refused (429)."""
    proc = _benchmark("--cfg-path", str(serve_yaml), "--clients", "3", "--requests", "1", "--max-tokens", "4",
                      "--batch-size", "2", "--max-queue", "3", "--flood", "20", "--image", str(xray))
    assert proc.returncode == 0, proc.stderr[-3000:]

    rows = re.findall(r"^(dynamic batching \(2\)|batching off)\s+3\s+3\s+0\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+"
                      r"\s+\d+\s+(\d+)$", proc.stdout, re.M)
    assert [name for name, _ in rows] == ["dynamic batching (2)", "batching off"], proc.stdout
    assert rows[1][1] == "1" and int(rows[0][1]) <= 2  # batching off runs batches of one
    assert re.search(r"^throughput with dynamic batching / batching off: [\d.]+x$", proc.stdout, re.M)
    assert "answers identical in both modes: 3 of 3" in proc.stdout
    flood = re.search(r"^flood of 20 requests at once \(queue 3, batches of 2\): 200: (\d+), 429: (\d+), other: 0; "
                      r"/health during the flood: 200 in [\d.]+s, after: 200; server running: yes$", proc.stdout, re.M)
    assert flood and int(flood.group(1)) + int(flood.group(2)) == 20, proc.stdout


def test_benchmark_without_a_model_says_so_in_one_line(serve_yaml, tmp_path):
    cfg = yaml.safe_load(serve_yaml.read_text())
    cfg["model"]["ckpt"] = str(tmp_path / "stage2" / "checkpoint_last.pt")
    proc = _benchmark("--cfg-path", str(write_yaml(cfg, tmp_path / "serve.yaml")))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"no trained model to serve: model.ckpt {cfg['model']['ckpt']} is missing (run `bash scripts/quickstart.sh` "
        "first, or give --cfg-path / --options naming one)"]


def test_serve_py_takes_an_exported_model_folder(model, tiny_assets, tmp_path, capsys):
    """--model FOLDER (python -m xraygpt.export's folder) replaces the config's model; no config file needed."""
    import serve
    from xraygpt.export import main as export_main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_yaml(tiny_config(tiny_assets, run), run / "config.yaml")
    torch.save({"model": model.trainable_state_dict()}, run / "checkpoints" / "checkpoint_last.pt")
    folder = tmp_path / "xraygpt-tiny"
    assert export_main(["--run", str(run), "--out", str(folder)]) == 0
    capsys.readouterr()
    assert serve.main(["--model", str(folder), "--port", "8123", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["ckpt"] == str(folder / "projection.safetensors") and printed["serve"]["port"] == 8123
    with pytest.raises(SystemExit):
        serve.parse_args([])  # neither a config nor a model folder
