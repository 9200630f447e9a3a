"""VTA hardware parameters as data.

The parameters are those of apache/tvm-vta `config/vta_config.json` (log2 widths and buffer
sizes); everything else (element sizes, buffer depths, instruction field widths) is derived the
way `include/vta/hw_spec_const.h` derives it. The defaults are `targets/vta.json`'s; a VTA target
file (`tvmsqz compile --target my-vta.json`) may give others, e.g. LOG_BLOCK 5 for a 32x32 GEMM
core (BLOCK_IN = BLOCK_OUT = 2**LOG_BLOCK: this VTA has one block size for both).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tvmsqz.errors import TvmsqzError

_REQUIRED = (
    "LOG_INP_WIDTH",
    "LOG_WGT_WIDTH",
    "LOG_ACC_WIDTH",
    "LOG_BATCH",
    "LOG_BLOCK",
    "LOG_UOP_BUFF_SIZE",
    "LOG_INP_BUFF_SIZE",
    "LOG_WGT_BUFF_SIZE",
    "LOG_ACC_BUFF_SIZE",
)

# Defaults of apache/tvm-vta config/vta_config.json (the "sim" target, 64-bit AXI bus).
DEFAULT_HW = {
    "LOG_INP_WIDTH": 3,
    "LOG_WGT_WIDTH": 3,
    "LOG_ACC_WIDTH": 5,
    "LOG_BATCH": 0,
    "LOG_BLOCK": 4,
    "LOG_UOP_BUFF_SIZE": 15,
    "LOG_INP_BUFF_SIZE": 15,
    "LOG_WGT_BUFF_SIZE": 18,
    "LOG_ACC_BUFF_SIZE": 17,
    "LOG_BUS_WIDTH": 6,
}

DEFAULT_CYCLES = {"clock_mhz": 100, "insn_overhead": 4, "dram_latency": 32, "gemm_ii": 1, "alu_ii": 2}


@dataclass(frozen=True)
class CycleModel:
    """Constants of the cycle *estimate* (see docs/vta.md); not measured on hardware."""

    clock_mhz: float = 100.0
    insn_overhead: int = 4  # decode/issue cycles added to every instruction
    dram_latency: int = 32  # first-beat latency of every DRAM load/store instruction
    gemm_ii: int = 1  # cycles per GEMM micro-op iteration (HLS pipeline II=1)
    alu_ii: int = 2  # cycles per ALU micro-op iteration (HLS pipeline II=2)


@dataclass(frozen=True)
class VTAConfig:
    LOG_INP_WIDTH: int = 3
    LOG_WGT_WIDTH: int = 3
    LOG_ACC_WIDTH: int = 5
    LOG_BATCH: int = 0
    LOG_BLOCK: int = 4
    LOG_UOP_BUFF_SIZE: int = 15
    LOG_INP_BUFF_SIZE: int = 15
    LOG_WGT_BUFF_SIZE: int = 18
    LOG_ACC_BUFF_SIZE: int = 17
    LOG_BUS_WIDTH: int = 6
    cycles: CycleModel = field(default_factory=CycleModel)

    def __post_init__(self):
        if self.LOG_INP_WIDTH != 3 or self.LOG_WGT_WIDTH != 3 or self.LOG_ACC_WIDTH != 5:
            raise TvmsqzError("tvmsqz's VTA support needs int8 inputs/weights and an int32 accumulator")
        if self.LOG_BATCH != 0:
            raise TvmsqzError("tvmsqz's VTA support needs BATCH=1")
        if self.uop_depth_log < 1 or min(self.inp_depth_log, self.wgt_depth_log, self.acc_depth_log) < 1:
            raise TvmsqzError("VTA buffer sizes too small for the element sizes")
        acc, inp = self.acc_depth_log, self.inp_depth_log
        if acc + max(acc, inp) + self.wgt_depth_log > 32:
            raise TvmsqzError("VTA buffer depths too large: a micro-op's indices must fit 32 bits")

    # ---- derived sizes (hw_spec_const.h) ----
    @property
    def batch(self) -> int:
        return 1 << self.LOG_BATCH

    @property
    def block(self) -> int:
        return 1 << self.LOG_BLOCK

    block_in = block_out = block

    @property
    def inp_elem_bytes(self) -> int:
        return (self.batch * self.block * (1 << self.LOG_INP_WIDTH)) // 8

    @property
    def wgt_elem_bytes(self) -> int:
        return (self.block * self.block * (1 << self.LOG_WGT_WIDTH)) // 8

    @property
    def acc_elem_bytes(self) -> int:
        return (self.batch * self.block * (1 << self.LOG_ACC_WIDTH)) // 8

    @property
    def out_elem_bytes(self) -> int:
        return (self.batch * self.block * (1 << self.LOG_INP_WIDTH)) // 8

    uop_elem_bytes = 4
    insn_bytes = 16

    @property
    def uop_depth_log(self) -> int:
        return self.LOG_UOP_BUFF_SIZE - 5 + 3

    @property
    def inp_depth_log(self) -> int:
        return self.LOG_INP_BUFF_SIZE - self.LOG_BATCH - self.LOG_BLOCK - self.LOG_INP_WIDTH + 3

    @property
    def wgt_depth_log(self) -> int:
        return self.LOG_WGT_BUFF_SIZE - 2 * self.LOG_BLOCK - self.LOG_WGT_WIDTH + 3

    @property
    def acc_depth_log(self) -> int:
        return self.LOG_ACC_BUFF_SIZE - self.LOG_BATCH - self.LOG_BLOCK - self.LOG_ACC_WIDTH + 3

    @property
    def uop_depth(self) -> int:
        return 1 << self.uop_depth_log

    @property
    def inp_depth(self) -> int:
        return 1 << self.inp_depth_log

    @property
    def wgt_depth(self) -> int:
        return 1 << self.wgt_depth_log

    @property
    def acc_depth(self) -> int:
        return 1 << self.acc_depth_log

    @property
    def out_depth(self) -> int:  # LOG_OUT_BUFF_SIZE = LOG_ACC_BUFF_SIZE + OUT_WIDTH - ACC_WIDTH
        return self.acc_depth

    @property
    def bus_bytes(self) -> int:
        return (1 << self.LOG_BUS_WIDTH) // 8

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["cycles"] = asdict(self.cycles)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> VTAConfig:
        d = dict(d or {})
        cyc = d.pop("cycles", None)
        hw = {k: int(v) for k, v in d.items() if k.startswith("LOG_")}
        unknown = [k for k in hw if k not in DEFAULT_HW]
        if unknown:
            raise TvmsqzError(f"unknown VTA parameters: {', '.join(unknown)}")
        merged = {**DEFAULT_HW, **hw}
        cm = CycleModel(
            **{k: v for k, v in {**DEFAULT_CYCLES, **(cyc or {})}.items() if k in CycleModel.__dataclass_fields__}
        )
        return cls(**merged, cycles=cm)


def config_from_target(data: dict[str, Any]) -> VTAConfig:
    """The `VTAConfig` of a VTA target's data (a `TargetSpec.data`, or a target file's JSON): its
    "vta" hardware parameters (LOG_* keys; others such as TARGET/HW_VER are informational) and
    its "cycle_model" (the `note` and other non-parameters ignored). Missing ones default."""
    hw = data.get("vta", data)
    if not isinstance(hw, dict):
        raise TvmsqzError('a VTA target\'s "vta" field must be an object of LOG_* parameters')
    hw = {k: v for k, v in hw.items() if k.startswith("LOG_")}
    return VTAConfig.from_json({**hw, "cycles": data.get("cycle_model")})


def load_config(source: str | Path | dict | VTAConfig | None = None) -> VTAConfig:
    """A `VTAConfig` from a config object, a dict (a VTA target's data or a `to_json()` dict), a
    JSON file (a VTA target file or a bare parameter dict), or None: the defaults, which are
    `targets/vta.json`'s (apache/tvm-vta's `vta_config.json`, BLOCK 16). The VTA pipeline passes
    the target's data (`config_from_target(spec.data)`); nothing here reads the targets folder."""
    if isinstance(source, VTAConfig):
        return source
    if source is None:
        return VTAConfig.from_json(None)
    if isinstance(source, dict):
        if "vta" in source or "cycle_model" in source or "family" in source:
            return config_from_target(source)
        return VTAConfig.from_json(source)
    path = Path(source)
    if not path.is_file():
        raise TvmsqzError(f"no such VTA config: {path}")
    return config_from_target(_peek(path))


def _peek(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TvmsqzError(f"{path} is not a readable JSON file: {exc}") from None
    if not isinstance(raw, dict):
        raise TvmsqzError(f"{path} is not a VTA config (a JSON object)")
    return raw
