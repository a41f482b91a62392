"""The Gradio demo, driven through gradio_client against the tiny model on 127.0.0.1.

One in-process server serves the session, bad-input and concurrency tests; one `demo.py`
subprocess checks the entry point (config + checkpoint, flags, no outbound connection).
"""

import contextlib
import logging
import os
import socket
import subprocess
import sys
import shutil
import threading
import time
import urllib.error
import urllib.request

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import REPO, tiny_config, write_yaml  # noqa: E402

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AuthenticationError  # noqa: E402

from xraygpt.ui.app import NOTICE, Handlers, build_app, example_images, launch  # noqa: E402
from xraygpt.ui.settings import DemoSettings, demo_settings, load_demo_config  # noqa: E402

FAST = (0.0, 1, 12)  # temperature, beams, max new tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_demo(model, **overrides):
    """The demo app over `model`, served in this process on a free 127.0.0.1 port; yields its URL."""
    settings = DemoSettings(port=free_port(), **overrides)
    app = build_app(model, settings)
    launch(app, settings, block=False)
    try:
        yield f"http://127.0.0.1:{settings.port}/"
    finally:
        app.close()


@pytest.fixture(scope="module")
def tiny_model(tiny_model_factory):
    return tiny_model_factory(seed=0).eval()


@pytest.fixture(scope="module")
def server(tiny_model, tiny_assets):
    with running_demo(tiny_model, concurrency_limit=2, max_new_tokens=12,
                      examples=(str(tiny_assets["val"] / "image"),), num_examples=2) as url:
        yield url


@pytest.fixture(scope="module")
def xray(tiny_assets):
    return sorted((tiny_assets["val"] / "image").iterdir())[0]


def texts(chat: list[dict]) -> list[str]:
    """The text of each chat message (Gradio 6 returns content as a list of typed parts)."""
    return ["".join(part.get("text", "") for part in m["content"]) for m in chat]


def upload(client: Client, path, controls=FAST) -> list[list[dict]]:
    """Upload `path`; returns every streamed chat value, the last one complete."""
    job = client.submit(handle_file(str(path)), *controls, api_name="/upload")
    job.result()
    return [out[0] for out in job.outputs() if isinstance(out[0], list)]


def ask(client: Client, question: str, controls=FAST) -> tuple[list[dict], list[str]]:
    """Ask `question`; returns the final chat and the values the question box was set to."""
    job = client.submit(question, *controls, api_name="/ask")
    job.result()
    outputs = job.outputs()
    return outputs[-1][0], [box for _, _, box in outputs if isinstance(box, str)]


def test_full_session_streams_and_keeps_history(server, xray):
    client = Client(server, verbose=False)
    streamed = upload(client, xray)
    partials = {texts(chat)[-1] for chat in streamed if len(chat) == 2}
    assert len([p for p in partials if p]) >= 2, f"no streaming: {partials}"
    chat = streamed[-1]
    assert [m["role"] for m in chat] == ["user", "assistant"] and texts(chat)[1] and NOTICE not in texts(chat)[1]
    chat, boxes = ask(client, "is there any effusion?")
    assert len(chat) == 4 and texts(chat)[2] == "is there any effusion?" and texts(chat)[3] and boxes == [""]
    chat, _ = ask(client, "what about the heart?")
    assert len(chat) == 6 and texts(chat)[5] and NOTICE not in texts(chat)[5]
    chat = client.predict(*FAST, api_name="/summarize")[0]
    assert len(chat) == 8
    assert client.predict(api_name="/reset")[0] == []
    chat, _ = ask(client, "and now?")
    assert len(chat) == 1 and "upload a chest X-ray first" in texts(chat)[0]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_uploads")
    (root / "notes.txt").write_text("not an image\n")
    Image.new("L", (1, 1), 128).save(root / "tiny.png")
    Image.new("L", (10_000, 10_000)).save(root / "huge.png", compress_level=1)
    return root


def _upload_file(name):
    return lambda client, files, xray: upload(client, files / name)[-1]


def _ask_after_upload(question):
    def run(client, files, xray):
        upload(client, xray)
        return ask(client, question)[0]
    return run


BAD_INPUTS = {
    "non_image": (_upload_file("notes.txt"), "'notes.txt' is not a PNG or JPEG image"),
    "one_pixel": (_upload_file("tiny.png"), "is 1x1 pixels"),
    "10000x10000": (_upload_file("huge.png"), "10000x10000 = 100,000,000 pixels"),
    "empty_question": (_ask_after_upload("   "), "The question is empty"),
    "question_before_image": (lambda client, files, xray: ask(client, "is there any effusion?")[0],
                              "upload a chest X-ray first"),
    "question_20000_chars": (_ask_after_upload("effusion? " * 2000), "too long and was not sent"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_a_chat_message_and_the_server_keeps_serving(server, bad_files, xray, case, caplog):
    action, expected = BAD_INPUTS[case]
    client = Client(server, verbose=False)
    chat = action(client, bad_files, xray)
    last = texts(chat)[-1]
    assert last.startswith(NOTICE) and expected in last, last
    assert "Traceback" not in last
    chat = upload(Client(server, verbose=False), xray)[-1]
    assert len(chat) == 2 and texts(chat)[1] and NOTICE not in texts(chat)[1]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_refused_question_stays_in_the_box(server, xray):
    client = Client(server, verbose=False)
    upload(client, xray)
    question = "effusion? " * 2000
    chat, boxes = ask(client, question)
    assert boxes == [] and len(chat) == 3  # the question box keeps the question


def test_eight_concurrent_sessions_complete(server, xray):
    answers, errors = {}, []

    def session(k: int) -> None:
        try:
            client = Client(server, verbose=False)
            chat = upload(client, xray, (0.0, 1, 8))[-1]
            chat, _ = ask(client, f"question {k}?", (0.0, 1, 8))
            answers[k] = texts(chat)
        except Exception as exc:  # collected and reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=session, args=(k,)) for k in range(8)]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(answers) == 8, f"{8 - len(answers)} sessions did not finish in {time.time() - start:.0f}s"
    for k, chat in answers.items():
        assert len(chat) == 4 and chat[1] and chat[3] and chat[2] == f"question {k}?"
        assert not any(text.startswith(NOTICE) for text in chat)


def test_one_request_at_a_time_per_user(tiny_model, xray):
    """Handlers called directly (as Gradio does, step by step): Ask during a summary is told to wait."""
    handlers = Handlers(tiny_model, DemoSettings(max_new_tokens=12))
    summary = handlers.upload(str(xray), *FAST, None)
    chat, _, _, user = next(summary)  # the image is set; the summary has not started yet
    chat, _, _, user = list(handlers.ask("is there any effusion?", *FAST, user))[-1]
    assert [m["content"] for m in chat] == [f"{NOTICE} Please wait until the current answer is finished (or press Reset)."]
    chat = list(summary)[-1][0]
    assert [m["role"] for m in chat] == ["assistant", "user", "assistant"] and chat[-1]["content"]
    chat = list(handlers.ask("is there any effusion?", *FAST, user))[-1][0]
    assert len(chat) == 5 and not chat[-1]["content"].startswith(NOTICE)
    summary = handlers.summarize(*FAST, user)
    next(summary)
    summary.close()  # what Reset's cancel does: generation stops, the lock is released
    chat = list(handlers.ask("and the heart?", *FAST, user))[-1][0]
    assert len(chat) == 9 and chat[-2]["content"] == "and the heart?" and len(user.session.turns) == 3


def test_long_conversations_forget_the_oldest_exchanges_not_the_image(tiny_model, xray):
    from xraygpt.prompting import with_image

    frame = len(tiny_model.prompt_tokenizer.encode_prompt(with_image(DemoSettings().summary_instruction)))
    handlers = Handlers(tiny_model, DemoSettings(max_new_tokens=12, context_window=frame + 12 + 40))
    chat, _, _, user = list(handlers.upload(str(xray), *FAST, None))[-1]
    for k in range(4):
        chat, _, _, user = list(handlers.ask(f"is there any effusion on side {k}?", *FAST, user))[-1]
    notices = [m["content"] for m in chat if m["content"].startswith(NOTICE)]
    assert notices and all("were forgotten (the image is kept)" in n for n in notices)
    assert user.session.dropped_turns >= 1 and user.session.image_tokens is not None
    assert [m["content"] for m in chat if m["role"] == "user"][-1] == "is there any effusion on side 3?"


def test_examples_and_disclaimer_are_served(server, tiny_assets):
    config = Client(server, verbose=False).config
    html = urllib.request.urlopen(server, timeout=30).read().decode()
    assert "Research tool, not a diagnosis" in str(config) and "XrayGPT demo" in html
    assert len(example_images((str(tiny_assets["val"] / "image"), "no/such/folder"), 2)) == 2


def test_login_from_auth_file(tiny_model, xray, tmp_path):
    (tmp_path / "users.txt").write_text("alice:s3cret\n")
    with running_demo(tiny_model, max_new_tokens=4, examples=(), auth_file=str(tmp_path / "users.txt")) as url:
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            Client(url, verbose=False)
        chat = upload(Client(url, auth=("alice", "s3cret"), verbose=False), xray)[-1]
        assert len(chat) == 2


# ---------------------------------------------------------------- the entry point

OUTBOUND_GUARD = '''
import runpy, socket, sys
log = open(sys.argv[1], "a")
LOCAL = ("127.0.0.1", "localhost", "::1", "0.0.0.0", None)
def note(host):
    if host not in LOCAL:
        log.write(f"{host}\\n"); log.flush()
real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex
def getaddrinfo(host, *a, **k):
    note(host); return real_getaddrinfo(host, *a, **k)
def connect(self, address):
    note(address[0] if isinstance(address, tuple) else None); return real_connect(self, address)
def connect_ex(self, address):
    note(address[0] if isinstance(address, tuple) else None); return real_connect_ex(self, address)
socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = getaddrinfo, connect, connect_ex
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


@pytest.fixture(scope="module")
def demo_yaml(tiny_assets, tiny_model, tmp_path_factory):
    """A demo config over the tiny assets with a projection checkpoint written here."""
    import torch

    root = tmp_path_factory.mktemp("demo_cfg")
    torch.save({"model": tiny_model.trainable_state_dict()}, root / "checkpoint_last.pt")
    model = tiny_config(tiny_assets, root / "unused")["model"]
    model["ckpt"] = str(root / "checkpoint_last.pt")
    return write_yaml({"model": model, "demo": {"max_new_tokens": 8, "examples": []}}, root / "demo.yaml")


def test_demo_py_serves_offline_on_localhost(demo_yaml, xray, tmp_path):
    port = free_port()
    guard, log = tmp_path / "guard.py", tmp_path / "outbound.txt"
    guard.write_text(OUTBOUND_GUARD)
    log.touch()
    env = {k: v for k, v in os.environ.items() if k not in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_DISABLE_TELEMETRY")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, str(guard), str(log), str(REPO / "demo.py"), "--cfg-path", str(demo_yaml),
                             "--port", str(port), "--concurrency-limit", "2"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        chat = upload(Client(url, verbose=False), xray)[-1]
        assert len(chat) == 2 and texts(chat)[1] and NOTICE not in texts(chat)[1]
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "Traceback" not in output, output[-3000:]
    assert log.read_text() == "", f"outbound connections: {log.read_text()}"


def test_demo_py_bad_config_is_one_line(demo_yaml, tmp_path, capsys):
    import demo

    cfg = yaml.safe_load(demo_yaml.read_text())
    cfg["model"]["ckpt"] = str(tmp_path / "missing.pt")
    assert demo.main(["--cfg-path", str(write_yaml(cfg, tmp_path / "bad.yaml"))]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' progress bars
    assert last.startswith("error: checkpoint ") and last.endswith("missing.pt does not exist")
    assert demo.main(["--cfg-path", str(demo_yaml), "--options", "demo.prot=1"]) == 2
    assert "demo.port" in capsys.readouterr().err
    assert demo.main(["--cfg-path", str(demo_yaml), "--concurrency-limit", "0"]) == 2
    assert "demo.concurrency_limit must be at least 1" in capsys.readouterr().err


def test_demo_py_port_in_use(demo_yaml, capsys):
    import demo

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert demo.main(["--cfg-path", str(demo_yaml), "--port", str(port)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: cannot serve on 127.0.0.1:{port}")


def test_flags_override_the_config(demo_yaml, capsys):
    import demo

    assert demo.main(["--cfg-path", str(demo_yaml), "--host", "0.0.0.0", "--port", "9001", "--share", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["demo"]
    assert printed["host"] == "0.0.0.0" and printed["port"] == 9001 and printed["share"] is True
    assert printed["max_new_tokens"] == 8 and DemoSettings().host == "127.0.0.1" and DemoSettings().share is False


@pytest.mark.parametrize("path", sorted((REPO / "eval_configs").glob("demo_*.yaml")), ids=lambda p: p.name)
def test_demo_configs_validate(path):
    settings = demo_settings(load_demo_config(path))
    assert settings.host == "127.0.0.1" and not settings.share


def test_only_example_images_are_served_and_uploads_are_deleted(tiny_model, tiny_assets, xray, tmp_path, monkeypatch):
    """The whole examples folder was served (an .html placed there came back inline), and uploads
    were never deleted from Gradio's temporary folder."""
    examples = tmp_path / "examples"
    examples.mkdir()
    shutil.copy(xray, examples / "a.png")
    (examples / "page.html").write_text("<script>alert(1)</script>")
    (examples / "notes.txt").write_text("private")
    uploads = tmp_path / "gradio-tmp"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    with running_demo(tiny_model, max_new_tokens=2, examples=(str(examples),), delete_uploads_after_s=1) as url:
        def status(path):
            try:
                return urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=30).status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status(examples / "a.png") == 200
        assert status(examples / "page.html") >= 400 and status(examples / "notes.txt") >= 400
        seen: set = set()  # watched while uploading: under load the upload can be older than 1 s when it returns
        done = threading.Event()

        def watch():
            while not done.is_set():
                seen.update(p for p in uploads.rglob("*") if p.is_file())
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            upload(Client(url, verbose=False), xray)
        finally:
            done.set()
            watcher.join()
        stored = sorted(seen)
        assert stored, "the upload should have been stored under GRADIO_TEMP_DIR"
        deadline = time.monotonic() + 20
        while any(p.exists() for p in stored) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(p.exists() for p in stored), (stored, os.environ.get("GRADIO_TEMP_DIR"))
    assert (examples / "a.png").is_file()
