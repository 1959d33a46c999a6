#!/usr/bin/env bash
# Second README command: set up, then lint, type-check and run the whole test suite
# (tests start their own Mosquitto brokers and gateway processes on free ports).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
echo "==> ruff";  .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "==> mypy";  .venv/bin/mypy
echo "==> pytest"; .venv/bin/pytest "$@"
