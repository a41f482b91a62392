#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs xraygpt with the pinned versions of constraints.txt.
# torch is pinned to 2.13.0: on a CPU machine pip takes the local CPU wheel when one is offered
# (e.g. via PIP_FIND_LINKS); an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed-$(cat setup.py constraints.txt | sha1sum | cut -c1-12)-${extras}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
  touch "$stamp"
fi
