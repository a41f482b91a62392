#!/usr/bin/env bash
# Installs Debian's chromium + chromium-driver for the demo's browser test (tests/test_demo_browser.py).
# Never fails: without a browser that test is skipped and says why.  Other binaries can be used
# with XRAYGPT_CHROMIUM=/path/to/chromium XRAYGPT_CHROMEDRIVER=/path/to/chromedriver.
set -uo pipefail
chromium="${XRAYGPT_CHROMIUM:-/usr/bin/chromium}"
driver="${XRAYGPT_CHROMEDRIVER:-/usr/bin/chromedriver}"
if [ -x "$chromium" ] && [ -x "$driver" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no apt-get here; the browser test will be skipped" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif sudo -n true 2>/dev/null; then
  sudo="sudo -n"
else
  echo "install_browser: not root and no password-less sudo; the browser test will be skipped" >&2
  exit 0
fi
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver; } >/dev/null; then
  echo "install_browser: apt-get could not install chromium chromium-driver; the browser test will be skipped" >&2
fi
exit 0
