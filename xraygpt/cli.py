"""What the command-line entry points (train.py, evaluate.py, demo.py) share: the config
arguments and the one-line report of a start-up error."""

from __future__ import annotations

import argparse
import sys

from xraygpt.errors import first_line


def add_config_arguments(parser: argparse.ArgumentParser, cfg_help: str, options_help: str) -> None:
    """--cfg-path (required), --options KEY=VALUE..., --print-config."""
    parser.add_argument("--cfg-path", required=True, help=cfg_help)
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help=options_help)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (all defaults filled in) and exit")


def startup_error(exc: BaseException, debug: bool) -> int:
    """Print `error: <first line of exc>` to stderr and return exit status 2; with `debug`, re-raise."""
    if debug:
        raise exc
    print(f"error: {first_line(exc)}", file=sys.stderr)
    return 2
