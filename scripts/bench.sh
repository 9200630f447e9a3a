#!/usr/bin/env bash
# Install tvmsqz (with the OpenVINO and ncnn peers) and run the main job: `tvmsqz bench` on the default model
# and this host's x86 target.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[peers]"   # OpenVINO and ncnn as peers
exec tvmsqz bench "$@"
