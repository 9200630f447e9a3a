"""Where the project's data folders live.

`targets/` and `schedules/` sit beside the package in the source tree (the install is
editable); `TVMSQZ_HOME` points elsewhere for a relocated checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("TVMSQZ_HOME", Path(__file__).resolve().parent.parent))
TARGETS_DIR = PROJECT_ROOT / "targets"
SCHEDULES_DIR = PROJECT_ROOT / "schedules"
# Shared data that lives beside the checkout and must never be copied into it.
SHARED_DIR = Path(os.environ.get("TVMSQZ_SHARED", PROJECT_ROOT.parent / "shared"))
DEEP_COMPRESSION_DIR = SHARED_DIR / "models" / "squeezenet-v1.0-deep-compression"
CACHE_DIR = Path(os.environ.get("TVMSQZ_CACHE", Path.home() / ".cache" / "tvmsqz"))
