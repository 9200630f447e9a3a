"""Where tvmsqz's data lives, whether it runs from a checkout or from an installed wheel.

* Shipped data (`targets/*.json`, `schedules/<target>/`) is package data: a wheel carries the
  repository's top-level `targets/` and `schedules/` folders as `tvmsqz/_data/{targets,schedules}`
  (see `pyproject.toml`), found with `importlib.resources`. An editable install or a source
  checkout has no `_data` folder; there the repository folders themselves are the package data.
  Shipped data is read-only: nothing tvmsqz runs writes into it.
* User data (tuning output when no `-o` is given) goes to the platform's user data folder
  (`platformdirs`: `~/.local/share/tvmsqz` on Linux), caches (the emulated aarch64 root, bench
  temp files) to the user cache folder. `TVMSQZ_DATA` and `TVMSQZ_CACHE` override them.
* The Deep Compression model is shared data beside the checkout (`../shared/models/...`), never
  copied into the repository: `TVMSQZ_SHARED` names it; otherwise it is looked for beside the
  source tree and beside the current folder and its parents.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import platformdirs

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_ROOT = _PACKAGE_DIR.parent


def _shipped(name: str) -> Path:
    """`targets` or `schedules`: the wheel's package data, else the checkout's folder."""
    packaged = importlib.resources.files("tvmsqz") / "_data" / name
    if packaged.is_dir():
        return Path(str(packaged))
    return _SOURCE_ROOT / name


TARGETS_DIR = _shipped("targets")
# `TVMSQZ_SCHEDULES`: another shipped-schedules root (tests; a site-wide copy of the databases).
SCHEDULES_DIR = Path(os.environ["TVMSQZ_SCHEDULES"]) if os.environ.get("TVMSQZ_SCHEDULES") else _shipped("schedules")
USER_DATA_DIR = Path(os.environ.get("TVMSQZ_DATA") or platformdirs.user_data_dir("tvmsqz"))
USER_SCHEDULES_DIR = USER_DATA_DIR / "schedules"
CACHE_DIR = Path(os.environ.get("TVMSQZ_CACHE") or platformdirs.user_cache_dir("tvmsqz"))


def _find_shared() -> Path:
    if os.environ.get("TVMSQZ_SHARED"):
        return Path(os.environ["TVMSQZ_SHARED"])
    for base in (_SOURCE_ROOT, Path.cwd(), *Path.cwd().parents):
        candidate = base.parent / "shared" if base == _SOURCE_ROOT else base / "shared"
        if (candidate / "models").is_dir():
            return candidate
    return _SOURCE_ROOT.parent / "shared"


SHARED_DIR = _find_shared()
DEEP_COMPRESSION_DIR = SHARED_DIR / "models" / "squeezenet-v1.0-deep-compression"
