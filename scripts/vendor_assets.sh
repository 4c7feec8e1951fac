#!/usr/bin/env bash
# Refresh the dashboard's vendored browser assets from the npm registry.
#
#   scripts/vendor_assets.sh            fetch the pinned versions below, check them, copy them in
#   scripts/vendor_assets.sh --check    only compare the files in the package with the pinned tarball
#
# The dashboard serves every asset from the installed package (no CDN, no
# external fonts); the charting library is uPlot (MIT), as a minified file with
# its licence, in src/unsflow/dashboard/static/vendor/. To move to another
# version: change UPLOT_VERSION and UPLOT_INTEGRITY together (the integrity is
# `npm view uplot@VERSION dist.integrity`), run this script, run the browser
# tests (tests/e2e/test_dashboard_browser.py), commit the result.
set -euo pipefail

UPLOT_VERSION=1.6.32
UPLOT_INTEGRITY=sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST=src/unsflow/dashboard/static/vendor
CHECK=0
[ "${1:-}" = --check ] && CHECK=1

die() { printf 'vendor_assets: error: %s\n' "$*" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || die "npm not found (apt-get install npm, or Node.js from nodejs.org)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack "uplot@$UPLOT_VERSION" --silent >/dev/null) ||
    die "npm pack uplot@$UPLOT_VERSION failed"
tarball=$work/uplot-$UPLOT_VERSION.tgz
got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
[ "$got" = "$UPLOT_INTEGRITY" ] || die "uplot-$UPLOT_VERSION.tgz integrity $got, expected $UPLOT_INTEGRITY"
tar -xzf "$tarball" -C "$work"

declare -A FILES=(
    [package/dist/uPlot.iife.min.js]=uPlot.iife.min.js
    [package/dist/uPlot.min.css]=uPlot.min.css
    [package/LICENSE]=uPlot.LICENSE
)
status=0
mkdir -p "$DEST"
for src in "${!FILES[@]}"; do
    dst=$DEST/${FILES[$src]}
    if [ "$CHECK" = 1 ]; then
        cmp -s "$work/$src" "$dst" || { echo "vendor_assets: $dst differs from uplot@$UPLOT_VERSION" >&2; status=1; }
    else
        cp "$work/$src" "$dst"
    fi
done
if [ "$CHECK" = 0 ]; then
    cat >"$DEST/VERSIONS" <<EOT
# Written by scripts/vendor_assets.sh; do not edit by hand.
uplot $UPLOT_VERSION $UPLOT_INTEGRITY https://registry.npmjs.org/uplot/-/uplot-$UPLOT_VERSION.tgz
EOT
    echo "vendor_assets: uplot $UPLOT_VERSION -> $DEST"
fi
exit "$status"
