"""Serve a trained model through OpenAI's chat-completions API: `python serve.py --cfg-path eval_configs/serve_tiny.yaml`.

Listens on http://127.0.0.1:8000 by default (`POST /v1/chat/completions`, `GET /v1/models`,
`GET /health`); settings come from the config's `serve:` section, overridden by the flags below.
Without API keys (`--api-key-file`) only this machine may connect.  `--model FOLDER` serves an
exported model folder (python -m xraygpt.export) instead of, or over, the config's model section.
Offline by construction: no hub, no URL fetched.  The library is `xraygpt/serving/`.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from xraygpt import runtime  # noqa: E402  (before transformers reads the environment)

runtime.offline_environment()

from omegaconf import OmegaConf  # noqa: E402

from xraygpt import builders  # noqa: E402
from xraygpt.cli import ERRORS, add_config_arguments, add_model_argument, startup_error  # noqa: E402
from xraygpt.serving.settings import serve_settings  # noqa: E402

# serve.<key> set by the flag of the same name when given
FLAGS = ("host", "port", "api_key_file", "max_batch_size", "batch_wait_ms", "max_queue")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, "serve YAML (eval_configs/serve_*.yaml); optional with --model",
                         "override config keys, e.g. serve.max_new_tokens=80 model.ckpt=run/checkpoints/checkpoint_last.pt",
                         required=False)
    add_model_argument(parser)
    parser.add_argument("--host", help="interface to bind (serve.host; default 127.0.0.1; another needs --api-key-file)")
    parser.add_argument("--port", type=int, help="TCP port (serve.port; default 8000)")
    parser.add_argument("--api-key-file", help="file of API keys, one per line; requests must send one (serve.api_key_file)")
    parser.add_argument("--allow-local-files", action="store_true",
                        help="accept image_url file paths on this machine, not only data: URLs (serve.allow_local_files)")
    parser.add_argument("--max-batch-size", type=int, help="requests generated together; 1 = batching off (serve.max_batch_size)")
    parser.add_argument("--batch-wait-ms", type=float, help="how long a batch waits for more requests (serve.batch_wait_ms)")
    parser.add_argument("--max-queue", type=int, help="requests waiting; more get 429 (serve.max_queue)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for start-up errors")
    args = parser.parse_args(argv)
    if args.cfg_path is None and args.model is None:
        parser.error("give --cfg-path, --model FOLDER, or both")
    return args


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (OSError when taken or not an interface of this machine)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.setup_logging(0)
    flags = [f"serve.{key}={getattr(args, key)}" for key in FLAGS if getattr(args, key) is not None]
    flags += ["serve.allow_local_files=true"] if args.allow_local_files else []
    try:
        _, cfg = builders.load_job_config(args.cfg_path, [*args.options, *flags], job="serve", model_folder=args.model)
        if args.print_config:
            sys.stdout.write(OmegaConf.to_yaml(cfg))
            return 0
        settings = serve_settings(cfg)
        settings.api_keys()  # a bad key file fails here, before the model loads
    except ERRORS as exc:
        return startup_error(exc, args.debug)
    try:  # a taken port fails now, not after the model has loaded
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        return startup_error(exc, args.debug, f"cannot serve on {settings.host}:{settings.port}")
    try:
        model = builders.build_model(cfg.model).to(runtime.resolve_device(settings.device)).eval()
    except ERRORS as exc:
        sock.close()
        return startup_error(exc, args.debug)
    import uvicorn  # the web stack is imported only to serve

    from xraygpt.serving.app import build_app

    logging.getLogger(__name__).info("serving on http://%s:%d/v1", settings.host, settings.port)
    uvicorn.Server(uvicorn.Config(build_app(model, settings), log_config=None)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
