#!/usr/bin/env bash
# Install tvmsqz and run the main job: `tvmsqz bench` on the default model and this host's x86 target.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install --quiet --disable-pip-version-check -e .
exec tvmsqz bench "$@"
