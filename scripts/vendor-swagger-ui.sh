#!/usr/bin/env bash
# Refreshes the Swagger UI files `/docs` serves (host/assets/swagger-ui/) from the npm
# registry: `bash scripts/vendor-swagger-ui.sh 5.36.0`. The package is checked against the
# registry's integrity hash before anything is copied; rebuild the host afterwards.
set -euo pipefail

version="${1:?usage: vendor-swagger-ui.sh <swagger-ui-dist version>}"
root="$(cd "$(dirname "$0")/.." && pwd)"
target="$root/host/assets/swagger-ui"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
integrity="$(npm view "swagger-ui-dist@$version" dist.integrity)"
tarball="$(npm pack "swagger-ui-dist@$version" --silent)"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [[ "$actual" != "$integrity" ]]; then
    echo "vendor-swagger-ui: $tarball does not match the registry's integrity $integrity" >&2
    exit 1
fi
tar xzf "$tarball"
for file in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css \
    favicon-32x32.png LICENSE NOTICE; do
    cp "package/$file" "$target/$file"
done
sed -i -E "s/\`swagger-ui-dist\` [0-9.]+/\`swagger-ui-dist\` $version/" "$target/README.md"
echo "vendor-swagger-ui: swagger-ui-dist $version copied into $target"
