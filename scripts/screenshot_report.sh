#!/usr/bin/env bash
# Render a results folder's report.html in headless Chromium (Debian's package) to a PNG.
# usage: scripts/screenshot_report.sh RESULTS_DIR [OUT.png] [HEIGHT]
set -euo pipefail
dir=$(cd "$1" && pwd); out=${2:-$dir/report/screenshot.png}; h=${3:-5000}
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1200,"$h" \
  --screenshot="$out" "file://$dir/report/report.html" 2>/dev/null
rm -rf "$profile"; echo "$out"
