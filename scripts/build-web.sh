#!/usr/bin/env bash
# Rebuild the web dashboard's committed assets (docs/decisions/0019-web-dashboard.md):
#  - Leaflet from the npm registry, pinned by web/package-lock.json, copied with its
#    license into gateway/api/webui/vendor/leaflet/ (served under /web/static/vendor/);
#  - axe-core (the accessibility check the browser tests inject) into tests/data/axe/;
#  - the simulator's Munich road network as GeoJSON (the demo's offline base layer):
#    the API never imports device_sim, so it ships the drawing, not the code.
# Needs Node.js/npm only here, never at run time. Run from anywhere; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
(cd web && npm ci --no-audit --no-fund)
vendor=gateway/api/webui/vendor/leaflet
rm -rf "$vendor" && mkdir -p "$vendor/images"
cp web/node_modules/leaflet/dist/leaflet.js web/node_modules/leaflet/dist/leaflet.css \
   web/node_modules/leaflet/LICENSE "$vendor/"
cp web/node_modules/leaflet/dist/images/*.png "$vendor/images/"
mkdir -p tests/data/axe
cp web/node_modules/axe-core/axe.min.js web/node_modules/axe-core/LICENSE tests/data/axe/
python=.venv/bin/python; [ -x "$python" ] || python=python3
"$python" - <<'PY'
import json
from pathlib import Path

from device_sim.city import MUNICH

features = []
for edge in MUNICH.edges:
    a, b = MUNICH.nodes[edge.a], MUNICH.nodes[edge.b]
    features.append(
        {
            "type": "Feature",
            "properties": {"name": edge.name},
            "geometry": {
                "type": "LineString",
                "coordinates": [[round(a.lon, 6), round(a.lat, 6)], [round(b.lon, 6), round(b.lat, 6)]],
            },
        }
    )
out = Path("gateway/api/webui/munich-roads.geojson")
out.write_text(json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":")) + "\n")
print(f"wrote {out} ({len(features)} road segments)")
PY
echo "built; commit gateway/api/webui/vendor, gateway/api/webui/munich-roads.geojson, tests/data/axe"
