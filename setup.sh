#!/usr/bin/env bash
# One-time set-up on a fresh machine: a venv in .venv with the CPU torch wheel first, then mmfv.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
PIP_CONSTRAINT="$PWD/constraints.txt" python -m pip install -q -e ".[test]"
