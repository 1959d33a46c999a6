#!/usr/bin/env bash
# Second README command: set up (Mosquitto, PostgreSQL and InfluxDB when missing), then
# lint, type-check, check the import contracts and run the whole test suite (tests start
# their own Mosquitto brokers, influxd servers and gateway processes on free ports).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test

# The state-database tests also run on PostgreSQL (127.0.0.1:5432, user postgres, trust
# auth on this project's machines). Install it where it is missing (Debian/Ubuntu, as root
# or with sudo), and start the local cluster if it is installed but down.
pg_up() { .venv/bin/python -c 'import socket; socket.create_connection(("127.0.0.1", 5432), 2)' 2>/dev/null; }
if ! pg_up; then
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing PostgreSQL"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    # the tests connect as postgres over TCP without a password, as on this project's
    # machines: trust for loopback only, ahead of the packaged rules
    hba="$(ls /etc/postgresql/*/main/pg_hba.conf | head -n 1)"
    $sudo sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "==> starting PostgreSQL"
    version="$(ls /etc/postgresql | head -n 1)"
    $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
  fi
  if ! pg_up; then
    echo "warning: no PostgreSQL on 127.0.0.1:5432; the PostgreSQL half of the state-database" >&2
    echo "tests will fail. Install and start it (Debian: apt-get install postgresql), with" >&2
    echo "trust auth for user postgres on 127.0.0.1." >&2
  fi
fi
# The InfluxDB store's tests start their own influxd (tests/support/influxdb.py) from
# Debian's 'influxdb' package (1.x): install it where it is missing. The packaged service is
# not needed (each test session runs its own server on free ports), so it is not started.
if ! command -v influxd >/dev/null 2>&1 && [ ! -x /usr/bin/influxd ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  if command -v apt-get >/dev/null 2>&1; then
    echo "==> installing InfluxDB"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq influxdb >/dev/null
  else
    echo "warning: influxd is missing and this is not a Debian/Ubuntu system; the InfluxDB" >&2
    echo "store tests will fail. Install InfluxDB 1.x (or run them against your own)." >&2
  fi
fi
echo "==> ruff";  .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "==> mypy (strict: 2-3 minutes on a fresh checkout, seconds once cached)";  .venv/bin/mypy && .venv/bin/mypy dashboards/grafana/generate.py
echo "==> import contracts"; .venv/bin/lint-imports
echo "==> pytest"; .venv/bin/pytest "$@"
