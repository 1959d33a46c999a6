#!/usr/bin/env bash
# Set up this checkout: Mosquitto (from the OS packages, when missing), a virtual
# environment in .venv and the project with its Python dependencies.
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh test     also the test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "test" ] && extras="[test]"

# mosquitto (broker and mosquitto_passwd) and mosquitto-clients (mosquitto_pub/_sub, used by
# the benchmarks and tests)
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ] \
   || ! command -v mosquitto_pub >/dev/null 2>&1 \
   || ! command -v mosquitto_passwd >/dev/null 2>&1; then
  echo "==> installing Mosquitto (mosquitto, mosquitto-clients)"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  if command -v apt-get >/dev/null 2>&1; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
  else
    echo "Mosquitto is missing and this is not a Debian/Ubuntu system: install the" >&2
    echo "'mosquitto' broker and its clients with your package manager, then run again." >&2
    exit 1
  fi
fi

# the per-vehicle message budget and the vehicle password check are Mosquitto plugins of ours
# (gateway/broker/plugin/budget.c, decision 0048; vehicle_auth.c, decision 0055), compiled
# where the broker runs: a C compiler and Mosquitto's plugin headers (mosquitto-dev:
# mosquitto_broker.h, mosquitto_plugin.h; libmosquitto-dev: mosquitto.h), and for the
# password check OpenSSL's (libssl-dev: openssl/evp.h, libcrypto). Without them `telematics
# up` still runs, without the budget and with vehicle passwords in the password file (a
# broker-wide reload per change), and says so.
has_header() { [ -f "/usr/include/$1" ] || [ -f "/usr/local/include/$1" ]; }
if ! command -v cc >/dev/null 2>&1 || ! has_header mosquitto_broker.h \
   || ! has_header mosquitto_plugin.h || ! has_header mosquitto.h \
   || ! has_header openssl/evp.h; then
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  if command -v apt-get >/dev/null 2>&1; then
    echo "==> installing the broker plugins' build tools (gcc, mosquitto-dev, libssl-dev)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      gcc libc6-dev mosquitto-dev libmosquitto-dev libssl-dev >/dev/null
  else
    echo "warning: no C compiler, Mosquitto plugin headers or OpenSSL headers, and this is" >&2
    echo "not Debian/Ubuntu: the broker will run without the per-vehicle message budget" >&2
    echo "(decision 0048) and reload for every vehicle password change (decision 0055)." >&2
  fi
fi

# test mode: the web dashboard's browser tests (tests/test_web_*.py) drive Debian's Chromium
# with Playwright for Python (Playwright's own browser download is not used)
if [ "${1:-}" = "test" ] && ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  if command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Chromium (for the browser tests)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: chromium is missing and this is not a Debian/Ubuntu system; the web" >&2
    echo "dashboard's browser tests will fail. Install Chromium at /usr/bin/chromium." >&2
  fi
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Python 3.11 or newer is needed (found: $("$python" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$python" -m venv .venv
fi
# the install is editable (code changes need none); it is done again only when
# pyproject.toml changed since, so a restart needs no package index and prints nothing
stamp=".venv/.installed${extras:+-test}"
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  echo "==> .venv is up to date (pyproject.toml unchanged since its install)"
else
  # each package is named as pip takes it: the first install takes a minute or two, and
  # printed nothing meanwhile; pip's warnings and errors still reach stderr whole
  echo "==> installing the project into .venv (the first time a minute or two)"
  # pip upgrades itself first: the newer pip installs the project's packages faster than
  # the one a venv comes with, more than making up for its own install (first run with
  # Python 3.11's pip 23.2 kept: 39 s of CPU instead of 31, 130 s instead of 102 here)
  echo "    upgrading pip"
  .venv/bin/python -m pip install -q --upgrade pip
  PYTHONUNBUFFERED=1 .venv/bin/python -m pip install --progress-bar off -e ".${extras}" \
    | while IFS= read -r line; do
        case "$line" in
          Collecting*|Successfully*) echo "    $line" ;;
          # then half a minute of unpacking and compiling, after a line naming them all
          Installing*) echo "    ${line:0:72} ..." ;;
        esac
      done
  echo "$wanted" > "$stamp"
fi
