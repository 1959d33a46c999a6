#!/usr/bin/env bash
# First README command: set up, then run the broker, the gateway, the API and a few
# simulated vehicles driving around Munich. Ctrl-C stops everything.
# Extra arguments go to `telematics up` (see: .venv/bin/telematics up --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/telematics up --demo "$@"
