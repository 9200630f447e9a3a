"""The VTA instruction set: 128-bit instructions and 32-bit micro-ops, bit-exact.

Field order and widths follow the C bit-field structs of apache/tvm-vta `include/vta/hw_spec.h`
(`VTAMemInsn`, `VTAGemInsn`, `VTAAluInsn`, `VTAUop`). The positions are *computed* from those
widths with the C/GCC bit-field rule the hardware headers rely on: fields are packed from bit 0
of a storage unit of the declared type (uint64_t for instructions, uint32_t for micro-ops) and a
field that would straddle a unit boundary starts at the next unit. For the default configuration
this gives e.g. `dram_base` at bits [26, 58) and `y_size` at [64, 80) of a LOAD/STORE.

An instruction is a plain dict: {"opcode": LOAD|STORE|GEMM|FINISH|ALU, field: int, ...}; missing
fields are zero. `encode` returns an int (< 2**128) and `encode_program` a little-endian
(N, 2) uint64 array, word 0 holding bits [0, 64).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from .config import VTAConfig

# Opcodes (hw_spec_const.h)
LOAD, STORE, GEMM, FINISH, ALU = 0, 1, 2, 3, 4
OPCODE_NAMES = {LOAD: "LOAD", STORE: "STORE", GEMM: "GEMM", FINISH: "FINISH", ALU: "ALU"}
# Memory ids
MEM_UOP, MEM_WGT, MEM_INP, MEM_ACC, MEM_OUT, MEM_ACC_8BIT = 0, 1, 2, 3, 4, 5
MEM_NAMES = {MEM_UOP: "UOP", MEM_WGT: "WGT", MEM_INP: "INP", MEM_ACC: "ACC", MEM_OUT: "OUT", MEM_ACC_8BIT: "ACC_8BIT"}
# ALU opcodes
ALU_MIN, ALU_MAX, ALU_ADD, ALU_SHR, ALU_MUL = 0, 1, 2, 3, 4
ALU_NAMES = {ALU_MIN: "MIN", ALU_MAX: "MAX", ALU_ADD: "ADD", ALU_SHR: "SHR", ALU_MUL: "MUL"}

OPCODE_BIT_WIDTH = 3
ALU_OPCODE_BIT_WIDTH = 3
MEMOP_ID_BIT_WIDTH = 3
MEMOP_SRAM_ADDR_BIT_WIDTH = 16
MEMOP_DRAM_ADDR_BIT_WIDTH = 32
MEMOP_SIZE_BIT_WIDTH = 16
MEMOP_STRIDE_BIT_WIDTH = 16
MEMOP_PAD_BIT_WIDTH = 4
LOOP_ITER_WIDTH = 14
ALUOP_IMM_BIT_WIDTH = 16

DEP_FIELDS = ("pop_prev_dep", "pop_next_dep", "push_prev_dep", "push_next_dep")


class EncodingError(ValueError):
    """A field value does not fit its bit-field."""


@dataclass(frozen=True)
class Field:
    name: str
    lo: int  # first bit
    width: int
    signed: bool = False

    @property
    def hi(self) -> int:
        return self.lo + self.width


@dataclass(frozen=True)
class Layout:
    name: str
    fields: tuple[Field, ...]
    total_bits: int

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def names(self) -> list[str]:
        return [f.name for f in self.fields]


def pack_bitfields(name: str, decl: list[tuple[str, int, bool]], unit: int, total: int) -> Layout:
    """Place C bit-fields of `unit`-bit storage type, never straddling a unit boundary."""
    pos = 0
    fields = []
    for fname, width, signed in decl:
        if width <= 0 or width > unit:
            raise ValueError(f"{name}.{fname}: width {width}")
        if pos // unit != (pos + width - 1) // unit:
            pos = (pos // unit + 1) * unit
        fields.append(Field(fname, pos, width, signed))
        pos += width
    if pos > total:
        raise ValueError(f"{name} needs {pos} bits > {total}")
    return Layout(name, tuple(fields), total)


def _head() -> list[tuple[str, int, bool]]:
    return [("opcode", OPCODE_BIT_WIDTH, False)] + [(d, 1, False) for d in DEP_FIELDS]


@cache
def layouts(cfg: VTAConfig) -> dict[str, Layout]:
    """The bit layouts of every instruction kind and of the micro-op for `cfg`."""
    acc, inp, wgt, uop = cfg.acc_depth_log, cfg.inp_depth_log, cfg.wgt_depth_log, cfg.uop_depth_log
    mem = _head() + [
        ("memory_type", MEMOP_ID_BIT_WIDTH, False),
        ("sram_base", MEMOP_SRAM_ADDR_BIT_WIDTH, False),
        ("dram_base", MEMOP_DRAM_ADDR_BIT_WIDTH, False),
        ("y_size", MEMOP_SIZE_BIT_WIDTH, False),
        ("x_size", MEMOP_SIZE_BIT_WIDTH, False),
        ("x_stride", MEMOP_STRIDE_BIT_WIDTH, False),
        ("y_pad_0", MEMOP_PAD_BIT_WIDTH, False),
        ("y_pad_1", MEMOP_PAD_BIT_WIDTH, False),
        ("x_pad_0", MEMOP_PAD_BIT_WIDTH, False),
        ("x_pad_1", MEMOP_PAD_BIT_WIDTH, False),
    ]
    loop = [
        ("reset_reg", 1, False),
        ("uop_bgn", uop, False),
        ("uop_end", uop + 1, False),
        ("iter_out", LOOP_ITER_WIDTH, False),
        ("iter_in", LOOP_ITER_WIDTH, False),
        ("dst_factor_out", acc, False),
        ("dst_factor_in", acc, False),
    ]
    gemm = (
        _head()
        + loop
        + [
            ("src_factor_out", inp, False),
            ("src_factor_in", inp, False),
            ("wgt_factor_out", wgt, False),
            ("wgt_factor_in", wgt, False),
        ]
    )
    alu = (
        _head()
        + loop
        + [
            ("src_factor_out", acc, False),
            ("src_factor_in", acc, False),
            ("alu_opcode", ALU_OPCODE_BIT_WIDTH, False),
            ("use_imm", 1, False),
            ("imm", ALUOP_IMM_BIT_WIDTH, True),
        ]
    )
    uop_decl = [("dst_idx", acc, False), ("src_idx", max(acc, inp), False), ("wgt_idx", wgt, False)]
    return {
        "mem": pack_bitfields("VTAMemInsn", mem, 64, 128),
        "gemm": pack_bitfields("VTAGemInsn", gemm, 64, 128),
        "alu": pack_bitfields("VTAAluInsn", alu, 64, 128),
        "generic": pack_bitfields("VTAGenericInsn", _head(), 64, 128),
        "uop": pack_bitfields("VTAUop", uop_decl, 32, 32),
    }


def layout_for(opcode: int, cfg: VTAConfig) -> Layout:
    lay = layouts(cfg)
    if opcode in (LOAD, STORE):
        return lay["mem"]
    if opcode == GEMM:
        return lay["gemm"]
    if opcode == ALU:
        return lay["alu"]
    if opcode == FINISH:
        return lay["gemm"]  # test_lib.cc builds FINISH from a VTAGemInsn with zero loop fields
    raise EncodingError(f"unknown opcode {opcode}")


def _pack(layout: Layout, values: dict, strict: bool = True) -> int:
    word = 0
    known = set(layout.names())
    if strict:
        extra = [k for k in values if k not in known]
        if extra:
            raise EncodingError(f"{layout.name} has no field(s) {extra}")
    for f in layout.fields:
        v = int(values.get(f.name, 0))
        if f.signed:
            lo, hi = -(1 << (f.width - 1)), (1 << (f.width - 1)) - 1
            if not lo <= v <= hi:
                raise EncodingError(f"{layout.name}.{f.name}={v} outside [{lo}, {hi}]")
            v &= (1 << f.width) - 1
        elif not 0 <= v < (1 << f.width):
            raise EncodingError(f"{layout.name}.{f.name}={v} does not fit {f.width} bits")
        word |= v << f.lo
    return word


def _unpack(layout: Layout, word: int) -> dict:
    out = {}
    for f in layout.fields:
        v = (word >> f.lo) & ((1 << f.width) - 1)
        if f.signed and v >> (f.width - 1):
            v -= 1 << f.width
        out[f.name] = v
    return out


def encode(insn: dict, cfg: VTAConfig) -> int:
    """One instruction dict -> 128-bit integer."""
    return _pack(layout_for(int(insn["opcode"]), cfg), insn)


def decode(word: int, cfg: VTAConfig) -> dict:
    """128-bit integer -> instruction dict with every field of its kind."""
    opcode = word & ((1 << OPCODE_BIT_WIDTH) - 1)
    return _unpack(layout_for(opcode, cfg), int(word))


def encode_uop(dst_idx: int, src_idx: int, wgt_idx: int, cfg: VTAConfig) -> int:
    return _pack(layouts(cfg)["uop"], {"dst_idx": dst_idx, "src_idx": src_idx, "wgt_idx": wgt_idx})


def decode_uop(word: int, cfg: VTAConfig) -> dict:
    return _unpack(layouts(cfg)["uop"], int(word))


def encode_uops(uops: np.ndarray, cfg: VTAConfig) -> np.ndarray:
    """(N, 3) int array of (dst, src, wgt) -> (N,) uint32, vectorised, with range checks."""
    uops = np.asarray(uops, dtype=np.int64).reshape(-1, 3)
    lay = layouts(cfg)["uop"]
    out = np.zeros(len(uops), dtype=np.uint64)
    for col, f in enumerate(lay.fields):
        v = uops[:, col]
        if len(v) and (v.min() < 0 or v.max() >= (1 << f.width)):
            raise EncodingError(f"uop {f.name} out of range for {f.width} bits")
        out |= v.astype(np.uint64) << np.uint64(f.lo)
    return out.astype(np.uint32)


def decode_uops(words: np.ndarray, cfg: VTAConfig) -> np.ndarray:
    """(N,) uint32 -> (N, 3) int64 array of (dst, src, wgt)."""
    w = np.asarray(words, dtype=np.uint64)
    lay = layouts(cfg)["uop"]
    cols = [((w >> np.uint64(f.lo)) & np.uint64((1 << f.width) - 1)).astype(np.int64) for f in lay.fields]
    return np.stack(cols, axis=1) if len(w) else np.zeros((0, 3), dtype=np.int64)


def encode_program(insns: list[dict], cfg: VTAConfig) -> np.ndarray:
    """Instructions -> (N, 2) uint64 array (little-endian words: [bits 0..63, bits 64..127])."""
    out = np.zeros((len(insns), 2), dtype=np.uint64)
    mask = (1 << 64) - 1
    for i, insn in enumerate(insns):
        w = encode(insn, cfg)
        out[i, 0] = w & mask
        out[i, 1] = w >> 64
    return out


def program_words(program: np.ndarray) -> list[int]:
    p = np.asarray(program, dtype=np.uint64).reshape(-1, 2)
    return [int(lo) | (int(hi) << 64) for lo, hi in p]


def decode_program(program: np.ndarray, cfg: VTAConfig) -> list[dict]:
    return [decode(w, cfg) for w in program_words(program)]


def program_bytes(program: np.ndarray) -> bytes:
    """The byte image a board's fetch module would read (16 bytes per instruction, LE)."""
    return np.ascontiguousarray(np.asarray(program, dtype="<u8")).tobytes()


# ---- convenience constructors (used by the lowering and the tests) ----


def _deps(deps: dict | None) -> dict:
    d = dict(deps or {})
    bad = [k for k in d if k not in DEP_FIELDS]
    if bad:
        raise EncodingError(f"unknown dependency flag(s) {bad}")
    return d


def mem_insn(
    opcode: int,
    memory_type: int,
    sram_base: int,
    dram_base: int,
    y_size: int,
    x_size: int,
    x_stride: int,
    y_pad_0: int = 0,
    y_pad_1: int = 0,
    x_pad_0: int = 0,
    x_pad_1: int = 0,
    **deps,
) -> dict:
    return {
        "opcode": opcode,
        "memory_type": memory_type,
        "sram_base": sram_base,
        "dram_base": dram_base,
        "y_size": y_size,
        "x_size": x_size,
        "x_stride": x_stride,
        "y_pad_0": y_pad_0,
        "y_pad_1": y_pad_1,
        "x_pad_0": x_pad_0,
        "x_pad_1": x_pad_1,
        **_deps(deps),
    }


def gemm_insn(
    uop_bgn: int,
    uop_end: int,
    iter_out: int = 1,
    iter_in: int = 1,
    dst_factor_out: int = 0,
    dst_factor_in: int = 0,
    src_factor_out: int = 0,
    src_factor_in: int = 0,
    wgt_factor_out: int = 0,
    wgt_factor_in: int = 0,
    reset_reg: int = 0,
    **deps,
) -> dict:
    return {
        "opcode": GEMM,
        "reset_reg": reset_reg,
        "uop_bgn": uop_bgn,
        "uop_end": uop_end,
        "iter_out": iter_out,
        "iter_in": iter_in,
        "dst_factor_out": dst_factor_out,
        "dst_factor_in": dst_factor_in,
        "src_factor_out": src_factor_out,
        "src_factor_in": src_factor_in,
        "wgt_factor_out": wgt_factor_out,
        "wgt_factor_in": wgt_factor_in,
        **_deps(deps),
    }


def alu_insn(
    alu_opcode: int,
    uop_bgn: int,
    uop_end: int,
    iter_out: int = 1,
    iter_in: int = 1,
    dst_factor_out: int = 0,
    dst_factor_in: int = 0,
    src_factor_out: int = 0,
    src_factor_in: int = 0,
    use_imm: int = 0,
    imm: int = 0,
    reset_reg: int = 0,
    **deps,
) -> dict:
    return {
        "opcode": ALU,
        "reset_reg": reset_reg,
        "uop_bgn": uop_bgn,
        "uop_end": uop_end,
        "iter_out": iter_out,
        "iter_in": iter_in,
        "dst_factor_out": dst_factor_out,
        "dst_factor_in": dst_factor_in,
        "src_factor_out": src_factor_out,
        "src_factor_in": src_factor_in,
        "alu_opcode": alu_opcode,
        "use_imm": use_imm,
        "imm": imm,
        **_deps(deps),
    }


def finish_insn(**deps) -> dict:
    return {"opcode": FINISH, **_deps(deps)}


def describe(insn: dict) -> str:
    """One readable line per instruction (for `--dump` style debugging)."""
    op = insn["opcode"]
    deps = "".join(c if insn.get(f) else "-" for c, f in zip("ppPP", DEP_FIELDS))
    name = OPCODE_NAMES.get(op, str(op))
    if op in (LOAD, STORE):
        return (
            f"{name:6s} {deps} {MEM_NAMES.get(insn['memory_type'], '?')} sram={insn['sram_base']} "
            f"dram={insn['dram_base']} y={insn['y_size']} x={insn['x_size']} stride={insn['x_stride']} "
            f"pad=({insn['y_pad_0']},{insn['y_pad_1']},{insn['x_pad_0']},{insn['x_pad_1']})"
        )
    if op in (GEMM, ALU):
        s = (
            f"{name:6s} {deps} {'reset ' if insn.get('reset_reg') else ''}uop=[{insn['uop_bgn']},"
            f"{insn['uop_end']}) it=({insn['iter_out']},{insn['iter_in']}) dst=({insn['dst_factor_out']},"
            f"{insn['dst_factor_in']}) src=({insn['src_factor_out']},{insn['src_factor_in']})"
        )
        if op == GEMM:
            return s + f" wgt=({insn['wgt_factor_out']},{insn['wgt_factor_in']})"
        return (
            s + f" {ALU_NAMES.get(insn['alu_opcode'], '?')} {'imm=' + str(insn['imm']) if insn['use_imm'] else 'src'}"
        )
    return f"{name:6s} {deps}"
