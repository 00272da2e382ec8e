#!/usr/bin/env bash
# Screenshot a results folder's report/report.html in headless Chromium (Debian: apt-get install chromium).
#   usage: scripts/screenshot_report.sh RESULTS_DIR [OUT.png] [HEIGHT_PX] [WIDTH_PX]
# OUT defaults to RESULTS_DIR/report/screenshot.png; the page is cut at HEIGHT_PX (default 6000).
set -euo pipefail
if [[ $# -lt 1 || ! -f "$1/report/report.html" ]]; then
  echo "usage: $0 RESULTS_DIR [OUT.png] [HEIGHT_PX] [WIDTH_PX]  (RESULTS_DIR/report/report.html must exist: build it with mmfv.report.build_report)" >&2
  exit 2
fi
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
  echo "no chromium found: apt-get update && apt-get install -y chromium" >&2
  exit 2
fi
dir=$(cd "$1" && pwd)
out=${2:-$dir/report/screenshot.png}
height=${3:-6000}
width=${4:-1280}
case $out in /*) ;; *) out=$PWD/$out ;; esac
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" \
  --window-size="$width,$height" --screenshot="$out" "file://$dir/report/report.html" >/dev/null 2>&1
[[ -s "$out" ]] || { echo "chromium wrote no screenshot to $out" >&2; exit 1; }
echo "$out"
