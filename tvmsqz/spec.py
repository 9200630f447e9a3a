"""`TargetSpec`, the resolved target every module passes around, and the host facts it needs.

A leaf module: it imports nothing of tvmsqz but errors and paths, so `targets`, `backends` and
everything else can depend on it without import cycles.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TvmsqzError
from .paths import SCHEDULES_DIR

#: The target families, one backend each (`tvmsqz/backends/<family>`); a target file or manifest
#: naming another is refused.
FAMILIES = ("cpu", "cuda", "vta")


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
    """A resolved target: the TVM target dict plus the target file's data for its backend."""

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
        """The shipped (read-only) schedule folder of this target, if it names one."""
        return SCHEDULES_DIR / self.schedules if self.schedules else None

    def for_precision(self, precision: str) -> TargetSpec:
        """The spec int8 builds use: the target data's `int8` section adds its LLVM attributes
        (`mattr`, e.g. +avx512vnni, which the portable x86-64-v4 target lacks), its layout (ARM's
        int8 kernels run NCHW4c where its fp32 graph stays NCHW), its CPU flags and
        its own schedule folder (a database applies only to the exact target it was tuned for,
        so int8 records never mix with fp32 ones); fp32, or a target without the section: self."""
        section = self.data.get("int8") if precision == "int8" else None
        if not section or self.tvm_config is None:
            return self
        config = dict(self.tvm_config)
        mattr = list(config.get("mattr") or []) + [
            a for a in section.get("mattr", []) if a not in config.get("mattr", [])
        ]
        if mattr:
            config["mattr"] = mattr
        data = dict(self.data)
        data["requires_cpu_flags"] = list(data.get("requires_cpu_flags") or []) + list(
            section.get("requires_cpu_flags") or []
        )
        data["precision"] = "int8"
        if section.get("layout"):  # int8 kernels may want a blocked layout the fp32 graph does not use
            data["layout"] = section["layout"]
        schedules = section.get("schedules", self.schedules)
        return dataclasses.replace(self, tvm_config=config, schedules=schedules, data=data)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "tvm": self.tvm_config,
            "schedules": self.schedules,
            "cc": self.cc,
        }
