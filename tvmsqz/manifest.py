"""The manifest beside every artifact (`model.so` -> `model.so.json`): what a device checks.

It names the model, the target (and so the backend that loads it), the input, the tuning that
was applied and the exact bytes of every file (size and sha256). `verify` runs before anything
is loaded: a truncated or edited `.so` is refused in one line instead of crashing the process
(a truncated shared object kills `dlopen`'s caller with SIGBUS).
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import TvmsqzError
from .spec import FAMILIES
from .version import __version__

FORMAT = "tvmsqz-artifact/1"
DTYPES = ("float32", "float16", "int8", "uint8")


def manifest_path(artifact: Path) -> Path:
    """`model.so` -> `model.so.json`."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256(path)}


def write_manifest(artifact: Path, fields: dict[str, Any], *, extra_files: Iterable[Path] = ()) -> dict:
    """Write the manifest of a freshly exported artifact atomically; returns it."""
    from .fsutil import atomic_write

    try:
        import tvm

        tvm_version = tvm.__version__
    except ImportError:  # pragma: no cover - the compiler side always has TVM
        tvm_version = None
    manifest = {
        "format": FORMAT,
        **fields,
        "versions": {"tvmsqz": __version__, "tvm": tvm_version, "python": platform.python_version()},
        "artifact": file_entry(artifact),
        "files": [file_entry(p) for p in extra_files],
    }
    atomic_write(manifest_path(artifact), json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(artifact: Path) -> dict | None:
    """The manifest beside `artifact`, validated; None when there is none."""
    path = manifest_path(artifact)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise TvmsqzError(f"manifest {path} is corrupt (not JSON)") from None
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: Any, path: Path) -> None:
    """Refuse a manifest whose fields cannot describe a tvmsqz artifact (edited by hand, foreign)."""

    def bad(what: str) -> TvmsqzError:
        return TvmsqzError(f"manifest {path} is invalid: {what}")

    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    target = manifest.get("target")
    if not isinstance(target, dict) or target.get("family") not in FAMILIES:
        raise bad(f"target.family must be one of {', '.join(FAMILIES)}")
    spec = manifest.get("input")
    if not isinstance(spec, dict):
        raise bad("no input description")
    shape = spec.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape)):
        raise bad(f"input.shape {shape!r} is not 4 positive integers")
    if spec.get("dtype", "float32") not in DTYPES:
        raise bad(f"input.dtype {spec.get('dtype')!r} is not one of {', '.join(DTYPES)}")
    entry = manifest.get("artifact")
    if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)):
        raise bad("artifact.bytes / artifact.sha256 missing")


def verify_files(artifact: Path, manifest: dict) -> None:
    """Size and sha256 of the artifact (and its extra files) against the manifest."""
    entries = [(artifact, manifest["artifact"])]
    entries += [(artifact.with_name(e["file"]), e) for e in manifest.get("files", []) if isinstance(e, dict)]
    for path, entry in entries:
        if not path.is_file():
            raise TvmsqzError(f"{path} is missing (listed in {manifest_path(artifact).name})")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise TvmsqzError(
                f"{path} is {size} bytes, its manifest says {entry.get('bytes')}: truncated or replaced; copy it again"
            )
        if sha256(path) != entry.get("sha256"):
            raise TvmsqzError(f"{path} does not match the sha256 in its manifest: modified or corrupt; copy it again")
