#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: the virtual environment and the packages (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cryptomon-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  echo "$want" > "$stamp"
fi
# The dashboard's chart library (npm registry, never a CDN); with CRYPTOMON_SETUP_BROWSER=1 (the test
# command) also Debian's chromium for the browser tests.
if [ "${CRYPTOMON_SETUP_BROWSER:-0}" = 1 ]; then
  scripts/setup-browser.sh
elif command -v npm >/dev/null; then
  scripts/setup-browser.sh --vendor-only
else
  echo "setup: npm not found; the symbol page's chart needs static/vendor (scripts/setup-browser.sh --vendor-only)" >&2
fi
