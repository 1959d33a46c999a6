#!/usr/bin/env bash
# Regenerate third_party/vss/vss-catalog.csv from a VSS release with COVESA's vss-tools.
#   scripts/refresh-vss.sh            the commit the vendored export came from (ce67f927)
#   scripts/refresh-vss.sh v5.0       a release tag (or any branch or commit)
# Needs network access (git clone from GitHub, vss-tools from PyPI); it cannot run offline.
# The tests never run it: they read the vendored copy only.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:-ce67f927}
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "==> cloning the VSS specification at $ref"
git clone -q https://github.com/COVESA/vehicle_signal_specification.git "$work/vss"
git -C "$work/vss" checkout -q "$ref"
commit=$(git -C "$work/vss" rev-parse --short=8 HEAD)

echo "==> installing vss-tools into a throwaway environment"
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q vss-tools

echo "==> exporting (vspec export csv, instances expanded)"
spec="$work/vss/spec"
"$work/venv/bin/vspec" export csv \
  --vspec "$spec/VehicleSignalSpecification.vspec" \
  --units "$spec/units.yaml" \
  --quantities "$spec/quantities.yaml" \
  --output "$work/vss-catalog.csv"
cp "$work/vss-catalog.csv" third_party/vss/vss-catalog.csv
cp "$work/vss/LICENSE" third_party/vss/LICENSE
echo "wrote third_party/vss/vss-catalog.csv from VSS $ref (commit $commit);"
echo "update the commit in third_party/vss/README.md and run: .venv/bin/pytest tests/test_catalog.py"
