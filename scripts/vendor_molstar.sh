#!/usr/bin/env bash
# Vendor the Mol* viewer (npm package `molstar`, MIT) for the site's 3D view: the prebuilt
# bundle build/viewer/molstar.js and molstar.css, plus the licence, into site/static/molstar/
# (git-ignored; the site build copies it into the site's static folder). Pinned version and
# the registry's sha512 integrity of the package tarball; run by `make setup`.
# Without npm (or the network) it says so and leaves the site without the 3D view.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=5.11.0
INTEGRITY='sha512-Jv2oHkKoCpzrhqLmGlknepm0pfRsoTDebsGRkvXpbUFb6p+JIAkhLyM3uqV2twC6VR83ZbXtdswOtouPhozpuQ=='
DEST=site/static/molstar
if [ -f "$DEST/VERSION" ] && [ "$(cat "$DEST/VERSION")" = "$VERSION" ] && [ -f "$DEST/molstar.js" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "warning: npm not found; the site's 3D viewer (Mol* $VERSION) is not installed" >&2
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && npm pack --silent "molstar@$VERSION" >/dev/null 2>"$tmp/npm.log"); then
    echo "warning: npm pack molstar@$VERSION failed ($(tail -n1 "$tmp/npm.log")); no 3D viewer" >&2
    exit 0
fi
tgz="$tmp/molstar-$VERSION.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
if [ "$got" != "$INTEGRITY" ]; then
    echo "error: molstar-$VERSION.tgz does not match its pinned integrity ($got)" >&2
    exit 1
fi
tar -xzf "$tgz" -C "$tmp" package/build/viewer/molstar.js package/build/viewer/molstar.css package/LICENSE
mkdir -p "$DEST"
cp "$tmp/package/build/viewer/molstar.js" "$tmp/package/build/viewer/molstar.css" "$DEST/"
cp "$tmp/package/LICENSE" "$DEST/LICENSE"
echo "$VERSION" > "$DEST/VERSION"
echo "vendored Mol* $VERSION (MIT) into $DEST"
