#!/usr/bin/env bash
# Second README command: set up, then lint, type-check and run the whole test suite
# (tests start their own Mosquitto brokers and gateway processes on free ports).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test

# The state-database tests also run on PostgreSQL (127.0.0.1:5432, user postgres, trust
# auth on this project's machines). Start the local cluster if it is installed but down.
if ! .venv/bin/python -c 'import socket; socket.create_connection(("127.0.0.1", 5432), 2)' 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "==> starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  else
    echo "warning: no PostgreSQL on 127.0.0.1:5432; the PostgreSQL half of tests/test_statedb.py" >&2
    echo "and tests/test_commands_e2e.py will fail. Install and start it (Debian: apt-get install" >&2
    echo "postgresql), with trust auth for user postgres on 127.0.0.1." >&2
  fi
fi
echo "==> ruff";  .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "==> mypy";  .venv/bin/mypy
echo "==> pytest"; .venv/bin/pytest "$@"
