#!/usr/bin/env bash
# Build mmfv's sdist and wheel and prove the wheel works as a user gets it: in a fresh venv outside
# the source tree, torch installed as setup.sh does, then the wheel under constraints.txt, then
# `mmfv --help` and the icl stage on a tiny config. Checks the wheel ships mmfv-tiny's weights.
# Run from the repository with setup.sh's venv active (CI: .ci/run); about a minute.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
unset PYTHONPATH  # the installed wheel, not src/, must be what runs

PIP_CONSTRAINT="$root/constraints.txt" python -m pip install -q build
# sdist first, then the wheel built from it: the sdist is complete and no stale build/ leaks in
python -m build -q --outdir "$tmp/dist" . >/dev/null
wheel=("$tmp"/dist/mmfv-*.whl)
echo "built ${wheel[0]##*/}"

# the wheel holds every file of the shipped model (and py.typed)
python - "${wheel[0]}" <<'EOF'
import sys, zipfile
from pathlib import Path
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
want = {f"mmfv/models/tiny/weights/{p.name}" for p in Path("src/mmfv/models/tiny/weights").iterdir() if p.is_file()} | {"mmfv/py.typed"}
missing = sorted(want - names)
if not want - {"mmfv/py.typed"} or missing:
    sys.exit(f"check_wheel: the wheel lacks {missing or 'the tiny weights (none in src/)'}; fix [tool.setuptools.package-data] in pyproject.toml")
EOF

python -m venv "$tmp/venv"
pip="$tmp/venv/bin/python -m pip"
$pip install -q --upgrade pip
$pip install -q torch==2.13.0  # as setup.sh: this project's machines serve the CPU wheel locally
PIP_CONSTRAINT="$root/constraints.txt" $pip install -q "${wheel[0]}"

cd "$tmp"  # outside the source tree
"$tmp/venv/bin/python" -c "import mmfv, sys; sys.exit(0 if mmfv.__file__.startswith('$tmp/venv/') else f'mmfv imported from {mmfv.__file__}, not the wheel')"
"$tmp/venv/bin/mmfv" --help >/dev/null
printf '[icl]\nshots = [0, 1]\nn = 8\n[data]\ntest_scenes = 50\n' > cfg.toml
"$tmp/venv/bin/mmfv" run cfg.toml --only icl --out "$tmp/run" --quiet >/dev/null
test -s "$tmp/run/icl/results.json" || { echo "check_wheel: the installed wheel's icl stage wrote no icl/results.json" >&2; exit 1; }
echo "wheel OK: installed in a fresh venv, mmfv --help and the icl stage ran outside the source tree"
