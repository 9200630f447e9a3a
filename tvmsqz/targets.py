"""Targets as data: `targets/*.json` -> `TargetSpec`.

Every target-specific fact (LLVM CPU name, triple, cross compiler, schedule folder, RPC and
emulator settings, accelerator parameters) lives in the JSON files. This module reads and
validates them (a malformed file is one line naming the file and the field) and resolves what
every family shares: `alias_of` (the `x86` alias picks `x86-avx512` or `x86-avx2` by the
`requires_cpu_flags` of the candidates) and `"num-cores": "host"`. Whatever depends on the
family (a CUDA architecture read off the GPU, say) is the family backend's `resolve_target_data`,
looked up by name at call time: importing this module loads no backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .backends import FAMILIES, backend_for_family
from .errors import TvmsqzError
from .paths import TARGETS_DIR
from .spec import TargetSpec, host_cores, host_cpu_flags

__all__ = ["TargetSpec", "get_target", "list_targets", "load_target_file", "host_cores", "host_cpu_flags"]

#: Aliases resolved from the host: alias -> candidate target files, best first.
_ALIASES = {"auto-x86": ("x86-avx512", "x86-avx2")}

_STR = {"type": "string", "maxLength": 256}
_STR_LIST = {"type": "array", "items": _STR, "maxItems": 64}

#: A graph layout (target data `layout`, and an `int8` section's own).
_LAYOUT = {
    "type": "object",
    "required": ["conv2d"],
    "properties": {
        "conv2d": {"enum": ["NCHW", "NCHWc", "NHWC"]},
        "block": {"enum": [4, 8, 16]},
        "winograd": {"enum": [0, 2, 4]},
        "winograd_min_size": {"type": "integer", "minimum": 0, "maximum": 4096},
        "classifier_pad": {"type": "integer", "minimum": 0, "maximum": 256},
    },
    "if": {"properties": {"conv2d": {"const": "NCHWc"}}},
    "then": {"required": ["block"]},
}

#: Bounds on the numbers a target file may give TVM (a core count of 10**30 is a typo, and TVM's
#: C++ would refuse it with a traceback).
_CORES = {"type": "integer", "minimum": 1, "maximum": 4096}
_GPU_INT = {"type": "integer", "minimum": 1, "maximum": 1 << 31}
#: The TVM target of a host (the CPU side of a CUDA target): TVM's CPU kinds only.
_TVM_HOST = {
    "type": "object",
    "required": ["kind"],
    "properties": {
        "kind": {"enum": ["llvm", "c"]},
        "mcpu": _STR,
        "mtriple": _STR,
        "mattr": _STR_LIST,
        "mfloat-abi": _STR,
        "num-cores": _CORES,
    },
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "family"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
        "family": {"enum": list(FAMILIES)},
        "description": _STR,
        "alias_of": {"enum": sorted(_ALIASES)},
        "tvm": {
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": {"enum": ["llvm", "cuda"]},
                "mcpu": _STR,
                "mtriple": _STR,
                "mattr": _STR_LIST,
                "mfloat-abi": _STR,
                "arch": _STR,
                "num-cores": {"anyOf": [_CORES, {"const": "host"}]},
                "host": _TVM_HOST,
                **{
                    k: _GPU_INT
                    for k in (
                        "max_threads_per_block",
                        "max_shared_memory_per_block",
                        "thread_warp_size",
                        "registers_per_block",
                    )
                },
            },
        },
        "schedules": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
        "requires_cpu_flags": _STR_LIST,
        "export": {"type": "object", "properties": {"cc": {"type": ["string", "null"]}}},
        "fuse": {
            "type": "object",
            "properties": {k: {"type": "boolean"} for k in ("enabled", "fold_squeeze", "fold_bypass")},
        },
        "rpc": {"type": "object", "properties": {"default_key": _STR, "required_for_tuning": {"type": "boolean"}}},
        "emulator": {"type": "object", "properties": {"qemu": _STR, "runnable": {"type": "boolean"}, "why": _STR}},
        "layout": _LAYOUT,
        "space": {"enum": ["blocked", "generic"]},
        # int8 (`--precision int8`): the dot-product kernels of the blocked uint8 x int8 convs
        # (`backends/cpu/kernels/int8.py`), the TVM target attributes they need, the CPU flags
        # of hosts that run them and the shipped schedules of int8 builds.
        "int8": {
            "type": "object",
            "properties": {
                "dot": {"enum": ["vnni", "avx512bw", "avx2", "sdot", "neon"]},
                "layout": _LAYOUT,
                "mattr": _STR_LIST,
                "requires_cpu_flags": _STR_LIST,
                "schedules": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
            },
        },
        "host": _STR,
        "tiling_db": _STR,
        "vta": {"type": "object"},
        "cycle_model": {"type": "object"},
    },
    "allOf": [
        # a concrete target (not an alias) of a TVM-compiled family needs its TVM target
        {
            "if": {"properties": {"family": {"enum": ["cpu", "cuda"]}}, "not": {"required": ["alias_of"]}},
            "then": {"required": ["tvm"]},
        },
    ],
}


def _field_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        parts.append(missing)
    return ".".join(p for p in parts if p) or "(top level)"


def load_target_file(path: Path) -> dict[str, Any]:
    """Read and validate one target file; a malformed file is one `TvmsqzError` line."""
    import jsonschema

    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise TvmsqzError(f"cannot read target file {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TvmsqzError(f"target file {path} is not valid JSON: {exc}") from None
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        raise TvmsqzError(f"target file {path}: field {_field_path(err)!r}: {err.message}")
    return raw


def _target_file(name: str) -> Path:
    """A shipped target by name, or a target file given by path (`--target my.json`)."""
    if name.endswith(".json") or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise TvmsqzError(f"no such target file: {path}")
        return path
    path = TARGETS_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TARGETS_DIR.glob("*.json")))
        raise TvmsqzError(f"unknown target {name!r} (known: {known})")
    return path


def _resolve_alias(alias: str) -> str:
    flags = host_cpu_flags()
    for candidate in _ALIASES[alias]:
        if set(load_target_file(_target_file(candidate)).get("requires_cpu_flags", [])) <= flags:
            return candidate
    raise TvmsqzError(f"this host's CPU has none of {', '.join(_ALIASES[alias])}; name a target explicitly")


def _resolve_values(config: dict[str, Any]) -> dict[str, Any]:
    resolved = dict(config)
    if config.get("num-cores") == "host":
        resolved["num-cores"] = host_cores()
    return resolved


def get_target(name: str) -> TargetSpec:
    """Load, validate and resolve a target by name (`x86`, `arm`, `cuda`, `vta`, ...) or file path."""
    raw = load_target_file(_target_file(name))
    if "alias_of" in raw:
        raw = load_target_file(_target_file(_resolve_alias(raw["alias_of"])))
    if isinstance(raw.get("host"), str):  # a target whose host part runs on another target (VTA's CPU side)
        raw = {**raw, "host_target": _host_target(raw["host"], raw["name"])}
    raw = backend_for_family(raw["family"]).resolve_target_data(raw)
    tvm_config = raw.get("tvm")
    spec = TargetSpec(
        name=raw["name"],
        family=raw["family"],
        description=raw.get("description", ""),
        tvm_config=_resolve_values(tvm_config) if tvm_config else None,
        schedules=raw.get("schedules"),
        cc=(raw.get("export") or {}).get("cc"),
        data=raw,
    )
    return spec


def check_tvm_target(spec: TargetSpec, source: str) -> None:
    """Build the TVM target now, so that a section TVM refuses (an unknown kind or option the
    schema lets through) is one line naming the target file, not a C++ traceback mid-compile."""
    try:
        _ = spec.target  # constructing it is the check
    except TvmsqzError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises ValueError/TVMError/... for a bad config
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else type(exc).__name__
        detail = detail.split(" Target creation from config dict failed")[0]
        raise TvmsqzError(f"target {source}: TVM refuses its 'tvm' section: {detail}") from None


def _host_target(host: str, of: str) -> dict[str, Any]:
    """The resolved host target a target file names (`"host": "x86"`): what its backend needs to
    compile the host part, without resolving targets itself ({name, tvm, requires_cpu_flags, cc})."""
    spec = get_target(host)
    if spec.family != "cpu" or spec.tvm_config is None:
        raise TvmsqzError(f"target {of!r}: its host {host!r} is not a CPU target")
    return {
        "name": spec.name,
        "tvm": spec.tvm_config,
        "requires_cpu_flags": list(spec.data.get("requires_cpu_flags") or []),
        "cc": spec.cc,
    }


def list_targets() -> list[dict[str, Any]]:
    """Every shipped target file, with aliases shown as what they resolve to on this host."""
    rows = []
    for path in sorted(TARGETS_DIR.glob("*.json")):
        raw = load_target_file(path)
        row = {"name": raw["name"], "family": raw["family"], "description": raw.get("description", "")}
        if "alias_of" in raw:
            try:
                row["resolves_to"] = _resolve_alias(raw["alias_of"])
            except TvmsqzError as exc:
                row["resolves_to"] = f"unavailable ({exc})"
        rows.append(row)
    return rows
