#!/usr/bin/env bash
# The whole test suite on real servers, with its own set-up (README).
set -euo pipefail
cd "$(dirname "$0")/.."
CRYPTOMON_SETUP_BROWSER=1 scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest -q "$@"
