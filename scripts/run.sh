#!/usr/bin/env bash
# The whole system on this machine (embedded servers unless DATABASE_URL etc. are set) (README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python manage.py run_monitor "$@"
