#!/usr/bin/env bash
# Refresh the Swagger UI assets the API serves at /docs (gateway/api/static/swagger-ui/)
# from the swagger-ui-dist package of the npm registry, so the docs page works offline and
# loads nothing from a CDN. Usage: scripts/refresh-swagger-ui.sh [VERSION]
# Needs npm. Swagger UI is Apache-2.0: its LICENSE and NOTICE are kept next to the assets.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-5.36.0}"
dest=gateway/api/static/swagger-ui
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@${version}" >/dev/null && tar xzf swagger-ui-dist-*.tgz)
mkdir -p "$dest"
rm -f "$dest"/*
for f in swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE NOTICE; do
  cp "$work/package/$f" "$dest/$f"
done
# the bundle's last line points at a source map that is not shipped: drop it, so the
# browser asks for nothing that is not there
sed -i '/^\/\/# sourceMappingURL=/d' "$dest/swagger-ui-bundle.js"
sed -i '/^\/\*# sourceMappingURL=.*\*\/$/d' "$dest/swagger-ui.css"
echo "$version" > "$dest/VERSION"
echo "Swagger UI $version in $dest:"
ls -l "$dest"
