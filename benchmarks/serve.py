"""The OpenAI-compatible server under load: dynamic batching vs batching off, latency, and a flood.

    python benchmarks/serve.py [--cfg-path eval_configs/serve_tiny.yaml] [--options KEY=VALUE ...]
                               [--clients 32] [--requests 4] [--max-tokens 48] [--batch-size 16]
                               [--batch-wait-ms 10] [--max-queue 64] [--flood 400] [--threads 1]
                               [--image PATH]

The model is the config's (by default the embedded model `bash scripts/quickstart.sh` trains; without
it the script says so in one line and exits 2).  `serve.py` runs as a subprocess on a free port of
127.0.0.1 (torch with --threads threads), twice:

  dynamic batching (B)  --max-batch-size B --batch-wait-ms W
  batching off          --max-batch-size 1

Each time, after one warm-up request, --clients concurrent clients (the official `openai` client,
async) each send --requests chat completions one after another: the image (--image, default the
first image of the embedded test split) as a data: URL, one of four questions, greedy, at most
--max-tokens tokens.  Printed per mode: requests sent, answered, lost (any error), seconds,
requests/s, output tokens/s, p50 / p95 latency per request, batches run and the largest; then the
throughput ratio (batching / off) and whether both modes gave the same answers.  Finally a flood:
--flood requests at once at the batching server (queue --max-queue), counted by status (200, 429,
other), with /health asked while the flood is in flight and after it, and whether the server is
still running.  Figures are timings of this machine, not checked by any test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xraygpt import builders  # noqa: E402
from xraygpt.cli import ERRORS, startup_error  # noqa: E402

QUESTIONS = ("Describe the findings and impression of this chest X-ray.",
             "Summarise this chest X-ray.",
             "What does this radiograph show?",
             "Write the findings and impression for this image.")
DEFAULT_IMAGES = REPO / "dataset" / "embedded" / "data" / "openi" / "test" / "image"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg-path", default=str(REPO / "eval_configs" / "serve_tiny.yaml"))
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides for serve.py")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--flood", type=int, default=400, help="requests sent at once at the end")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--image", help="the image sent (default: the embedded test split's first)")
    return parser.parse_args(argv)


def missing_model_file(cfg) -> str | None:
    """The first file of the model that is not there (paths as serve.py reads them, from the repository)."""
    for key, value in (("model.ckpt", cfg.model.ckpt), ("model.encoder.checkpoint", cfg.model.encoder.checkpoint),
                       ("model.llm.path", cfg.model.llm.path)):
        if value and not (REPO / value).exists():
            return f"{key} {value}"
    return None


def image_url(path: str | None) -> tuple[str, str]:
    """(data: URL, what it is) of --image, the embedded test split's first image, or a drawn stand-in."""
    if path is None and DEFAULT_IMAGES.is_dir():
        path = str(sorted(DEFAULT_IMAGES.iterdir())[0])
    if path is None:
        from PIL import Image

        buffer = io.BytesIO()
        Image.linear_gradient("L").resize((224, 224)).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), "a drawn 224x224 gradient"
    data = Path(path).read_bytes()
    kind = "application/dicom" if data[128:132] == b"DICM" else "image/png"
    return f"data:{kind};base64," + base64.b64encode(data).decode(), path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, batch_size: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, str(REPO / "serve.py"), "--cfg-path", str(Path(args.cfg_path).resolve()), "--port", str(port),
           "--max-batch-size", str(batch_size), "--batch-wait-ms", str(args.batch_wait_ms),
           "--max-queue", str(args.max_queue)]
    if args.options:
        cmd += ["--options", *args.options]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"serve.py did not start: {proc.communicate()[1][-2000:]}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))] if ordered else float("nan")


def messages(url: str, k: int) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": QUESTIONS[k % len(QUESTIONS)]}]}]


async def load(url: str, image: str, clients: int, requests: int, max_tokens: int) -> dict:
    import openai

    api = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=1800)
    await api.chat.completions.create(model="xraygpt", messages=messages(image, 0), max_tokens=max_tokens)  # warm-up
    latencies, tokens, answers, lost = [], 0, {}, []

    async def client(c: int) -> None:
        nonlocal tokens
        for r in range(requests):
            k = c * requests + r
            start = time.perf_counter()
            try:
                out = await api.chat.completions.create(model="xraygpt", messages=messages(image, k),
                                                        max_tokens=max_tokens, temperature=0)
            except Exception as exc:  # counted as lost, shown below
                lost.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - start)
            tokens += out.usage.completion_tokens
            answers[k] = out.choices[0].message.content

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    seconds = time.perf_counter() - start
    await api.close()
    return {"sent": clients * requests, "answered": len(latencies), "lost": lost, "seconds": seconds,
            "tokens": tokens, "latencies": latencies, "answers": answers}


async def flood(url: str, image: str, count: int, max_tokens: int) -> dict:
    import httpx

    body = {"model": "xraygpt", "messages": messages(image, 0), "max_tokens": max_tokens}
    limits = httpx.Limits(max_connections=count + 8, max_keepalive_connections=count + 8)
    async with httpx.AsyncClient(timeout=1800, limits=limits) as http:
        async def one():
            try:
                return (await http.post(f"{url}/v1/chat/completions", json=body)).status_code
            except httpx.HTTPError as exc:
                return type(exc).__name__

        async def health_during():
            await asyncio.sleep(0.5)
            start = time.perf_counter()
            status = (await http.get(f"{url}/health", timeout=60)).status_code
            return status, time.perf_counter() - start

        *statuses, during = await asyncio.gather(*(one() for _ in range(count)), health_during())
        after = (await http.get(f"{url}/health", timeout=60)).status_code
    return {"statuses": statuses, "during": during, "after": after}


def health(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/health", timeout=30).json()


def row(name: str, result: dict, stats: dict) -> str:
    lat = result["latencies"]
    return (f"{name:<24}{result['sent']:>9}{result['answered']:>10}{len(result['lost']):>6}{result['seconds']:>9.1f}"
            f"{result['answered'] / result['seconds']:>9.2f}{result['tokens'] / result['seconds']:>10.1f}"
            f"{percentile(lat, 50):>9.2f}{percentile(lat, 95):>9.2f}{stats['batches']:>9}{stats['largest_batch']:>9}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _, cfg = builders.load_job_config(args.cfg_path, args.options, job="serve")
    except ERRORS as exc:
        return startup_error(exc)
    missing = missing_model_file(cfg)
    if missing:
        print(f"no trained model to serve: {missing} is missing (run `bash scripts/quickstart.sh` first, or give "
              "--cfg-path / --options naming one)", file=sys.stderr)
        return 2
    image, what = image_url(args.image)
    print(f"{args.clients} clients x {args.requests} requests, at most {args.max_tokens} tokens each, greedy; "
          f"image: {what}; server torch threads: {args.threads}")
    modes = [(f"dynamic batching ({args.batch_size})", args.batch_size), ("batching off", 1)]
    results, floods = {}, None
    header = (f"{'mode':<24}{'requests':>9}{'answered':>10}{'lost':>6}{'seconds':>9}{'req/s':>9}{'tokens/s':>10}"
              f"{'p50 s':>9}{'p95 s':>9}{'batches':>9}{'largest':>9}")
    lines = [header]
    for name, size in modes:
        proc, url = start_server(args, size)
        try:
            results[name] = asyncio.run(load(url, image, args.clients, args.requests, args.max_tokens))
            lines.append(row(name, results[name], health(url)))
            if size > 1 and args.flood:
                floods = asyncio.run(flood(url, image, args.flood, args.max_tokens))
                floods["alive"] = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(60)
    print("\n".join(lines))
    batched, single = (results[name] for name, _ in modes)
    for name, result in results.items():
        for problem in sorted(set(result["lost"]))[:3]:
            print(f"{name}: lost: {problem}")
    rate = [r["answered"] / r["seconds"] for r in (batched, single)]
    print(f"throughput with dynamic batching / batching off: {rate[0] / rate[1]:.2f}x")
    same = sum(batched["answers"].get(k) == v for k, v in single["answers"].items())
    print(f"answers identical in both modes: {same} of {len(single['answers'])}")
    if floods is not None:
        counts: dict = {}
        for status in floods["statuses"]:
            counts[status] = counts.get(status, 0) + 1
        other = sum(n for s, n in counts.items() if s not in (200, 429))
        status, seconds = floods["during"]
        print(f"flood of {args.flood} requests at once (queue {args.max_queue}, batches of {args.batch_size}): "
              f"200: {counts.get(200, 0)}, 429: {counts.get(429, 0)}, other: {other}; /health during the flood: "
              f"{status} in {seconds:.2f}s, after: {floods['after']}; server running: {'yes' if floods['alive'] else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
