#!/usr/bin/env bash
# Re-vendors the Swagger UI and ReDoc files that admin/docs.go embeds into the
# binary, so /docs and /redoc work on a host with no Internet access.
#
# Versions and tarball checksums are pinned below. To upgrade: change the
# version, run the script once with VERIFY=0 to print the new integrity, check
# the release notes, pin the printed value, and run the docs tests
# (go test ./admin/ -run Docs; go test ./integration/ -run DocsBrowser).
#
# Only the files the pages load are kept, plus every licence and notice file
# that ships with them. ReDoc gets one patch (below) so it requests nothing
# from another origin.
set -euo pipefail

SWAGGER_UI_VERSION=5.35.0
SWAGGER_UI_INTEGRITY=sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==
# ReDoc stays on the 2.x line: 3.0 (Oct 2026) is a rewrite, twice the size,
# loaded as an ES module, with telemetry hooks; 2.x renders OpenAPI 3.1 fine.
REDOC_VERSION=2.5.4
REDOC_INTEGRITY=sha512-M6jWhG1qoBnH6TFmzJnstyCZ87HmOY/UzDm78mHiYihEdlV/YcS9ogOo1NlElnJMeLsyxHFe2yFc4sNjHTrABQ==

VERIFY=${VERIFY:-1}
root=$(cd "$(dirname "$0")/.." && pwd)
assets="$root/admin/assets"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fetch NAME VERSION INTEGRITY: downloads the npm tarball into $work/NAME and
# checks its sha512 against the pinned integrity.
fetch() {
	local name=$1 version=$2 integrity=$3 tgz got
	tgz=$(cd "$work" && npm pack --silent "$name@$version")
	got="sha512-$(openssl dgst -sha512 -binary "$work/$tgz" | base64 -w0)"
	if [ "$VERIFY" = 1 ] && [ "$got" != "$integrity" ]; then
		echo "integrity mismatch for $name@$version: got $got" >&2
		exit 1
	fi
	echo "$name@$version $got"
	mkdir -p "$work/$name"
	tar -xzf "$work/$tgz" -C "$work/$name"
}

# keep SRC_DIR DEST_DIR FILE...: replaces DEST_DIR with exactly FILE... from SRC_DIR.
keep() {
	local src=$1 dest=$2 f
	shift 2
	rm -rf "$dest"
	mkdir -p "$dest"
	for f in "$@"; do
		cp "$src/$f" "$dest/$f"
	done
}

fetch swagger-ui-dist "$SWAGGER_UI_VERSION" "$SWAGGER_UI_INTEGRITY"
keep "$work/swagger-ui-dist/package" "$assets/swagger-ui" \
	swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE
echo "$SWAGGER_UI_VERSION" >"$assets/swagger-ui/VERSION"

fetch redoc "$REDOC_VERSION" "$REDOC_INTEGRITY"
keep "$work/redoc/package" "$assets/redoc" LICENSE
cp "$work/redoc/package/bundles/redoc.standalone.js" \
	"$work/redoc/package/bundles/redoc.standalone.js.LICENSE.txt" "$assets/redoc/"
# The one local change: ReDoc's "API docs by Redocly" menu footer shows a
# logo from https://cdn.redoc.ly, whatever the options. An empty src loads
# nothing (the image then hides itself); the link and text stay.
logo='src:"https://cdn.redoc.ly/redoc/logo-mini.svg"'
if [ "$(grep -o -F "$logo" "$assets/redoc/redoc.standalone.js" | wc -l)" != 1 ]; then
	echo "redoc.standalone.js: the logo URL to patch was not found exactly once" >&2
	exit 1
fi
sed -i 's#src:"https://cdn\.redoc\.ly/redoc/logo-mini\.svg"#src:""#' "$assets/redoc/redoc.standalone.js"
echo "$REDOC_VERSION (patched: no cdn.redoc.ly logo; see scripts/fetch-docs-assets.sh)" >"$assets/redoc/VERSION"

du -ab "$assets/swagger-ui" "$assets/redoc" | sort -k2
