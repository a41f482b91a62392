"""What the command-line entry points share: the config arguments and the one error path.

Every entry point (train.py, evaluate.py, demo.py, cache_features.py, `python -m
xraygpt.data.prepare`, `python -m xraygpt.evaluation.chexpert_rules`) catches `ERRORS` around its
work and reports it through `startup_error`: one line `error: <first line of the message>` on
stderr and exit status 2 (with `--debug`, where an entry point has it, the traceback instead).
The library raises only subclasses of these (ConfigError, DatasetError, RegistryError,
AtomicWriteError, a missing optional package's ImportError, ...).
"""

from __future__ import annotations

import argparse
import sys

from xraygpt.errors import first_line


def add_config_arguments(parser: argparse.ArgumentParser, cfg_help: str, options_help: str,
                         required: bool = True) -> None:
    """--cfg-path (required unless `required` is False), --options KEY=VALUE..., --print-config."""
    parser.add_argument("--cfg-path", required=required, help=cfg_help)
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help=options_help)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (all defaults filled in) and exit")


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """--model FOLDER: an exported model folder whose model replaces the config's `model` section
    (pass it to `builders.load_job_config(..., model_folder=args.model)`)."""
    parser.add_argument("--model", metavar="FOLDER", default=None,
                        help="an exported model folder (python -m xraygpt.export); replaces the config's model "
                             "section (--options model.KEY=VALUE still apply)")


# What every entry point reports in one line instead of a traceback.
ERRORS = (ValueError, KeyError, OSError, ImportError)
EXIT_STATUS = 2


def startup_error(exc: BaseException, debug: bool = False, context: str = "") -> int:
    """Print `error: [<context>: ]<first line of exc>` to stderr and return EXIT_STATUS; with `debug`,
    re-raise."""
    if debug:
        raise exc
    print(f"error: {context + ': ' if context else ''}{first_line(exc)}", file=sys.stderr)
    return EXIT_STATUS
