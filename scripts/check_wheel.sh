#!/usr/bin/env bash
# Build mmfv's sdist and wheel and prove the wheel works as a user gets it: it holds every package
# file (mmfv-tiny's weights included); in a fresh venv outside the source tree, with torch installed
# as setup.sh does and the wheel under constraints.txt, `mmfv --help` and the icl stage on a tiny
# config run. From the repository with setup.sh's venv active (CI: .ci/run); a minute or two.
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

python - "${wheel[0]}" <<'PY'
import subprocess, sys, zipfile
from pathlib import Path
try:  # the tracked files; outside a git checkout, the files on disk
    files = subprocess.run(["git", "ls-files", "src/mmfv"], capture_output=True, text=True, check=True).stdout.split()
except (OSError, subprocess.CalledProcessError):
    files = [str(p) for p in Path("src/mmfv").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
want = {f.removeprefix("src/") for f in files}
missing = sorted(want - set(zipfile.ZipFile(sys.argv[1]).namelist()))
if not any("/tiny/weights/" in f for f in want) or missing:
    sys.exit(f"check_wheel: the wheel lacks {missing or 'the tiny weights'}; fix [tool.setuptools.package-data] in pyproject.toml")
print(f"the wheel holds all {len(want)} package files")
PY

python -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q torch==2.13.0  # as setup.sh: this project's machines serve the CPU wheel locally
PIP_CONSTRAINT="$root/constraints.txt" "${pip[@]}" install -q "${wheel[0]}"

cd "$tmp"  # outside the source tree
"$tmp/venv/bin/python" -c "import mmfv, sys; sys.exit(0 if mmfv.__file__.startswith('$tmp/venv/') else f'mmfv imported from {mmfv.__file__}, not the wheel')"
"$tmp/venv/bin/mmfv" --help >/dev/null
printf '[icl]\nshots = [0, 1]\nn = 8\n[data]\ntest_scenes = 50\n' > cfg.toml
"$tmp/venv/bin/mmfv" run cfg.toml --only icl --out "$tmp/run" --quiet >/dev/null
test -s "$tmp/run/icl/results.json" || { echo "check_wheel: the installed wheel's icl stage wrote no icl/results.json" >&2; exit 1; }
echo "wheel OK: installed in a fresh venv, mmfv --help and the icl stage ran outside the source tree"
