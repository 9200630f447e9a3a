#!/usr/bin/env bash
# Install tvmsqz with its test extras and every system package the tests need, then run the
# whole test suite. This is the command README gives and the one CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
# System packages (cross compilers, qemu-user, the emulated aarch64 root) for the ARM tests.
bash scripts/setup_arm.sh
# CUDA's compiler for the CUDA compile tests: nothing when an nvcc exists, else nvidia-cuda-nvcc from PyPI.
bash scripts/setup_cuda.sh
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]"
# The house rules before the tests: lint, format, import layers (pyproject.toml).
BIN="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")"
echo "test.sh: ruff check, ruff format --check, lint-imports" >&2
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$BIN/lint-imports" --no-cache
exec "$PY" -m pytest -q -p no:cacheprovider --durations=15 "$@"
