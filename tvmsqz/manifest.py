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
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8 / JSON, nested too deep
        raise TvmsqzError(f"manifest {path} is corrupt (not JSON)") from None
    check_manifest(manifest, path)
    return manifest


#: Bounds on the input a manifest may declare: those `frontend.check_input_bounds` compiles
#: (batch, channels, height/width), and at most MAX_INPUT_ELEMENTS in all (a runner allocates it).
INPUT_BOUNDS = {"batch": (1, 4096), "channels": (1, 4), "size": (8, 4096)}
MAX_INPUT_ELEMENTS = 1 << 30
_BYTES = {"type": "integer", "minimum": 0, "maximum": 1 << 44}
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_FILE_ENTRY = {
    "type": "object",
    "required": ["file", "bytes", "sha256"],
    "properties": {"file": {"type": "string", "minLength": 1, "maxLength": 255}, "bytes": _BYTES, "sha256": _SHA256},
}


def _dim(what: str) -> dict:
    low, high = INPUT_BOUNDS[what]
    return {"type": "integer", "minimum": low, "maximum": high}


#: What a manifest must be before any field is used (JSON Schema 2020-12; `jsonschema`).
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["target", "input", "artifact"],
    "properties": {
        "format": {"type": "string", "maxLength": 64},
        "model": {"type": "string", "maxLength": 4096},
        "target": {
            "type": "object",
            "required": ["family"],
            "properties": {"family": {"enum": list(FAMILIES)}, "name": {"type": "string", "maxLength": 256}},
        },
        "input": {
            "type": "object",
            "required": ["shape"],
            "properties": {
                "name": {"type": "string", "maxLength": 256},
                "shape": {"type": "array", "minItems": 4, "maxItems": 4},
                "dtype": {"enum": list(DTYPES)},
                "layout": {"enum": ["NCHW", "NHWC"]},
            },
            # The shape's axes in the input's layout (NCHW unless it says NHWC).
            "if": {"required": ["layout"], "properties": {"layout": {"const": "NHWC"}}},
            "then": {
                "properties": {"shape": {"prefixItems": [_dim("batch"), _dim("size"), _dim("size"), _dim("channels")]}}
            },
            "else": {
                "properties": {"shape": {"prefixItems": [_dim("batch"), _dim("channels"), _dim("size"), _dim("size")]}}
            },
        },
        "artifact": {"type": "object", "required": ["bytes", "sha256"], "properties": _FILE_ENTRY["properties"]},
        "files": {"type": "array", "items": _FILE_ENTRY, "maxItems": 64},
        "precision": {"enum": ["fp32", "int8"]},
        "preprocess": {
            "type": "object",
            "properties": {"convention": {"enum": ["torchvision", "caffe"]}, "size": _dim("size")},
        },
        "quantization": {"type": "object"},
    },
}


def _schema_error(manifest: Any) -> str | None:
    """The first schema violation as `field 'a.b': why` (None when the manifest conforms)."""
    import jsonschema

    errors = sorted(
        jsonschema.Draft202012Validator(SCHEMA).iter_errors(manifest), key=lambda e: (len(e.absolute_path), e.path)
    )
    if not errors:
        return None
    err = errors[0]
    parts = [str(p) for p in err.absolute_path]
    if err.validator == "required" and "'" in err.message:
        parts.append(err.message.split("'")[1])
    field = ".".join(parts) or "(top level)"
    if field == "input" and err.validator == "type":
        return "field 'input': no input description (not an object)"
    message = err.message if len(err.message) <= 200 else err.message[:200] + "..."
    return f"field {field!r}: {message}"


def check_manifest(manifest: Any, path: Path) -> None:
    """Refuse a manifest whose fields cannot describe a tvmsqz artifact (edited by hand, foreign,
    hostile): validated against `SCHEMA` (types, bounds, sha256 form), then the checks a schema
    cannot say (file names beside the artifact, the input's total size)."""

    def bad(what: str) -> TvmsqzError:
        return TvmsqzError(f"manifest {path} is invalid: {what}")

    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    problem = _schema_error(manifest)
    if problem:
        raise bad(problem)
    shape = manifest["input"]["shape"]
    elements = 1
    for d in shape:
        elements *= d
    if elements > MAX_INPUT_ELEMENTS:
        raise bad(f"field 'input.shape': {shape} is {elements} elements, over {MAX_INPUT_ELEMENTS}")
    for extra in manifest.get("files", []):
        name = extra["file"]
        if not is_plain_name(name):
            raise bad(f"files entry {name!r} is not a file name beside the artifact")


def is_plain_name(name: str) -> bool:
    """A file name with no folder part: what a manifest may name (its files lie beside it), so
    that no manifest field reaches a path outside the artifact's folder."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def prebuilt_manifest(path: Path, target_name: str) -> dict:
    """The manifest of an artifact compiled earlier that a command is about to measure for the
    target `target_name`: it must exist, have a valid manifest, and have been built for that target."""
    path = Path(path)
    if not path.is_file():
        raise TvmsqzError(f"no such file: {path}")
    manifest = read_manifest(path)
    if manifest is None:
        raise TvmsqzError(f"{path} has no manifest ({path.name}.json) beside it; bench needs to know its model")
    built_for = (manifest.get("target") or {}).get("name")
    if built_for != target_name:
        raise TvmsqzError(f"{path.name} was compiled for {built_for}, not {target_name}")
    return manifest


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
