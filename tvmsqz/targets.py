"""Targets as data: `targets/*.json` -> `TargetSpec`.

Every target-specific fact (LLVM CPU name, triple, cross compiler, schedule folder, RPC and
emulator settings, accelerator parameters) lives in the JSON files; code here only resolves the
few values that depend on the host ("host" core counts, the `x86` alias).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TvmsqzError
from .paths import SCHEDULES_DIR, TARGETS_DIR


def host_cpu_flags() -> set[str]:
    """CPU feature flags of this host, from /proc/cpuinfo (empty when unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def host_cores() -> int:
    """Cores this process may run on: the thread count every runtime is pinned to."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the TVM target dict plus what the rest of tvmsqz needs to know."""

    name: str
    family: str
    description: str
    tvm_config: dict[str, Any] | None
    schedules: str | None = None
    cc: str | None = None
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @functools.cached_property
    def target(self):
        """The `tvm.target.Target`; tuning and compiling share this exact object's config."""
        import tvm

        if self.tvm_config is None:
            raise TvmsqzError(f"target {self.name!r} has no TVM target")
        return tvm.target.Target(self.tvm_config)

    @property
    def schedules_dir(self) -> Path | None:
        return SCHEDULES_DIR / self.schedules if self.schedules else None

    @property
    def runs_on_host(self) -> bool:
        """Whether an artifact for this target can run in this process."""
        flags = self.data.get("requires_cpu_flags")
        if self.family != "cpu" or self.cc:
            return False
        return not flags or set(flags) <= host_cpu_flags()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "tvm": self.tvm_config,
            "schedules": self.schedules,
            "cc": self.cc,
        }


def _load_raw(name: str) -> dict[str, Any]:
    path = TARGETS_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TARGETS_DIR.glob("*.json")))
        raise TvmsqzError(f"unknown target {name!r} (known: {known})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TvmsqzError(f"target file {path} is not valid JSON: {exc}") from None


def _resolve_alias(alias: str) -> str:
    if alias == "auto-x86":
        flags = host_cpu_flags()
        for candidate in ("x86-avx512", "x86-avx2"):
            if set(_load_raw(candidate).get("requires_cpu_flags", [])) <= flags:
                return candidate
        raise TvmsqzError("this host's CPU has neither AVX-512 nor AVX2; name an x86 target explicitly")
    return alias


def _resolve_values(config: dict[str, Any]) -> dict[str, Any]:
    resolved = dict(config)
    for key, value in config.items():
        if value == "host" and key == "num-cores":
            resolved[key] = host_cores()
    return resolved


def get_target(name: str) -> TargetSpec:
    """Load and resolve a target by name (`x86`, `x86-avx512`, `arm`, `cuda`, `vta`, ...)."""
    raw = _load_raw(name)
    if "alias_of" in raw:
        raw = _load_raw(_resolve_alias(raw["alias_of"]))
    if raw.get("family") == "cuda":  # the GPU architecture may come from the GPU present
        from .backends.cuda import resolve_target_data

        raw = resolve_target_data(raw)
    tvm_config = raw.get("tvm")
    return TargetSpec(
        name=raw["name"],
        family=raw["family"],
        description=raw.get("description", ""),
        tvm_config=_resolve_values(tvm_config) if tvm_config else None,
        schedules=raw.get("schedules"),
        cc=(raw.get("export") or {}).get("cc"),
        data=raw,
    )


def list_targets() -> list[dict[str, Any]]:
    """Every target file, with aliases shown as what they resolve to on this host."""
    rows = []
    for path in sorted(TARGETS_DIR.glob("*.json")):
        raw = json.loads(path.read_text())
        row = {"name": raw["name"], "family": raw["family"], "description": raw.get("description", "")}
        if "alias_of" in raw:
            try:
                row["resolves_to"] = _resolve_alias(raw["alias_of"])
            except TvmsqzError as exc:
                row["resolves_to"] = f"unavailable ({exc})"
        rows.append(row)
    return rows
