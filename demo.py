"""Chat with a trained model in the browser: `python demo.py --cfg-path eval_configs/demo_tiny.yaml`,
or an exported model folder: `python demo.py --model models/xraygpt-stage2` (its model replaces the
config's `model` section; `--cfg-path` is then optional).

Serves on http://127.0.0.1:7860 by default; settings come from the config's `demo:` section,
overridden by the flags below.  Offline by construction: no analytics, no telemetry, no hub.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from xraygpt import runtime  # noqa: E402  (before transformers and gradio read the environment)

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
runtime.offline_environment()

from omegaconf import OmegaConf  # noqa: E402

from xraygpt import builders  # noqa: E402
from xraygpt.cli import ERRORS, add_config_arguments, add_model_argument, startup_error  # noqa: E402
from xraygpt.ui.settings import demo_settings  # noqa: E402

# demo.<key> set by the flag of the same name when given
FLAGS = ("host", "port", "auth_file", "concurrency_limit", "language")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, "demo YAML (eval_configs/demo_*.yaml)",
                         "override config keys, e.g. demo.max_new_tokens=80 model.ckpt=run/checkpoints/checkpoint_last.pt",
                         required=False)
    add_model_argument(parser)
    parser.add_argument("--host", help="interface to bind (demo.host; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (demo.port; default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (demo.share)")
    parser.add_argument("--auth-file", help="file of user:password lines; asks for a login (demo.auth_file)")
    parser.add_argument("--concurrency-limit", type=int, help="answers generated at once (demo.concurrency_limit)")
    parser.add_argument("--language", help="answer language the demo opens with, e.g. en or zh (demo.language)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for start-up errors")
    args = parser.parse_args(argv)
    if args.cfg_path is None and args.model is None:
        parser.error("give --cfg-path, --model or both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.setup_logging(0)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes of 127.0.0.1
    flags = [f"demo.{key}={getattr(args, key)}" for key in FLAGS if getattr(args, key) is not None]
    flags += ["demo.share=true"] if args.share else []
    try:
        _, cfg = builders.load_job_config(args.cfg_path, [*args.options, *flags], job="demo", model_folder=args.model)
        if args.print_config:
            sys.stdout.write(OmegaConf.to_yaml(cfg))
            return 0
        settings = demo_settings(cfg)
        settings.auth()  # a bad auth file fails here, before the model loads
        settings.summary_instructions()  # and a language without prompts
        model = builders.build_model(cfg.model).to(runtime.resolve_device(settings.device)).eval()
    except ERRORS as exc:
        return startup_error(exc, args.debug)
    from xraygpt.ui.app import build_app, launch  # Gradio is imported only to serve

    try:
        launch(build_app(model, settings), settings)
    except OSError as exc:  # the port is taken, the host is not an interface of this machine, ...
        return startup_error(exc, args.debug, f"cannot serve on {settings.host}:{settings.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
