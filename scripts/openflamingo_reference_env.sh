#!/usr/bin/env bash
# Install the reference OpenFlamingo code (test-only) into a plain folder, never into .venv.
#
#   bash scripts/openflamingo_reference_env.sh [TARGET]
#
# open-flamingo 2.0.1 pins torch==2.0.1 and pulls open_clip (which needs torchvision), so it cannot
# live beside mmfv's torch. We install it --no-deps into TARGET (default: a folder under the temp
# dir keyed by the pinned versions) together with the two pure-python helpers it imports (einops,
# einops-exts) and open_clip_torch 2.20.0 (the open_clip of OpenFlamingo v2's training time, whose
# VisionTransformer returns the patch tokens *without* ln_post). Nothing there is importable unless a
# test puts TARGET on sys.path; tests/models/test_openflamingo.py does so and stubs what open_clip's
# package __init__ would drag in (torchvision). Prints TARGET on success. Idempotent.
set -euo pipefail
PINS=(open-flamingo==2.0.1 open_clip_torch==2.20.0 einops==0.8.1 einops-exts==0.0.4)
KEY=$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-12)
TARGET=${1:-${TMPDIR:-/tmp}/mmfv-openflamingo-ref-$KEY}
if [[ -f "$TARGET/.complete" ]]; then
  echo "$TARGET"
  exit 0
fi
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")/.." && pwd)
export PIP_CONSTRAINT=${PIP_CONSTRAINT:-$HERE/constraints.txt}
mkdir -p "$(dirname "$TARGET")"
PARTIAL=$(mktemp -d "$TARGET.partial.XXXXXX")
trap 'rm -rf "$PARTIAL"' EXIT
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
  --target "$PARTIAL" "${PINS[@]}" >&2
touch "$PARTIAL/.complete"
if [[ ! -f "$TARGET/.complete" ]]; then  # another run may have finished first: keep its copy
  rm -rf "$TARGET"
  mv "$PARTIAL" "$TARGET" || [[ -f "$TARGET/.complete" ]]
fi
echo "$TARGET"
