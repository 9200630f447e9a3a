"""VTA instruction and micro-op encoding: bit positions as include/vta/hw_spec.h lays them out
for the default configuration (vta_config.json), and encode/decode round trips."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tvmsqz.vta import isa
from tvmsqz.vta.config import VTAConfig, load_config

CFG = load_config()

# (field, first bit, width) written out by hand from hw_spec.h / hw_spec_const.h with the
# default config: LOG_UOP_BUFF_DEPTH=13, LOG_INP_BUFF_DEPTH=11, LOG_WGT_BUFF_DEPTH=10,
# LOG_ACC_BUFF_DEPTH=11; uint64_t bit-fields never straddle a 64-bit word.
MEM = [
    ("opcode", 0, 3),
    ("pop_prev_dep", 3, 1),
    ("pop_next_dep", 4, 1),
    ("push_prev_dep", 5, 1),
    ("push_next_dep", 6, 1),
    ("memory_type", 7, 3),
    ("sram_base", 10, 16),
    ("dram_base", 26, 32),
    ("y_size", 64, 16),
    ("x_size", 80, 16),
    ("x_stride", 96, 16),
    ("y_pad_0", 112, 4),
    ("y_pad_1", 116, 4),
    ("x_pad_0", 120, 4),
    ("x_pad_1", 124, 4),
]
GEMM = [
    ("opcode", 0, 3),
    ("pop_prev_dep", 3, 1),
    ("pop_next_dep", 4, 1),
    ("push_prev_dep", 5, 1),
    ("push_next_dep", 6, 1),
    ("reset_reg", 7, 1),
    ("uop_bgn", 8, 13),
    ("uop_end", 21, 14),
    ("iter_out", 35, 14),
    ("iter_in", 49, 14),
    ("dst_factor_out", 64, 11),
    ("dst_factor_in", 75, 11),
    ("src_factor_out", 86, 11),
    ("src_factor_in", 97, 11),
    ("wgt_factor_out", 108, 10),
    ("wgt_factor_in", 118, 10),
]
ALU = GEMM[:10] + [
    ("dst_factor_out", 64, 11),
    ("dst_factor_in", 75, 11),
    ("src_factor_out", 86, 11),
    ("src_factor_in", 97, 11),
    ("alu_opcode", 108, 3),
    ("use_imm", 111, 1),
    ("imm", 112, 16),
]
UOP = [("dst_idx", 0, 11), ("src_idx", 11, 11), ("wgt_idx", 22, 10)]


def test_default_config_matches_vta_config_json():
    assert (CFG.uop_depth, CFG.inp_depth, CFG.wgt_depth, CFG.acc_depth) == (8192, 2048, 1024, 2048)
    assert (CFG.inp_elem_bytes, CFG.wgt_elem_bytes, CFG.acc_elem_bytes, CFG.out_elem_bytes) == (16, 256, 64, 16)
    assert CFG.bus_bytes == 8 and CFG.block == 16 and CFG.batch == 1
    assert CFG == VTAConfig()  # targets/vta.json holds the defaults


@pytest.mark.parametrize("kind,expected", [("mem", MEM), ("gemm", GEMM), ("alu", ALU), ("uop", UOP)])
def test_field_layouts(kind, expected):
    lay = isa.layouts(CFG)[kind]
    assert [(f.name, f.lo, f.width) for f in lay.fields] == expected


def test_known_load_word():
    ins = isa.mem_insn(
        isa.LOAD,
        isa.MEM_INP,
        sram_base=5,
        dram_base=0x12345,
        y_size=3,
        x_size=7,
        x_stride=55,
        y_pad_0=1,
        y_pad_1=2,
        x_pad_0=3,
        x_pad_1=15,
        push_next_dep=1,
        pop_next_dep=1,
    )
    want = (
        0
        | (1 << 4)
        | (1 << 6)
        | (2 << 7)
        | (5 << 10)
        | (0x12345 << 26)
        | (3 << 64)
        | (7 << 80)
        | (55 << 96)
        | (1 << 112)
        | (2 << 116)
        | (3 << 120)
        | (15 << 124)
    )
    assert isa.encode(ins, CFG) == want
    words = isa.encode_program([ins], CFG)
    assert words.dtype == np.uint64 and words.shape == (1, 2)
    assert int(words[0, 0]) == want & (2**64 - 1) and int(words[0, 1]) == want >> 64
    # little-endian byte image: the first byte holds the opcode and flag bits
    assert isa.program_bytes(words)[0] == want & 0xFF


def test_known_alu_word_negative_immediate():
    ins = isa.alu_insn(isa.ALU_SHR, 4, 5, iter_out=2, iter_in=3, dst_factor_out=6, dst_factor_in=1, use_imm=1, imm=-3)
    w = isa.encode(ins, CFG)
    assert (w >> 112) & 0xFFFF == (-3) & 0xFFFF
    assert (w >> 108) & 0x7 == isa.ALU_SHR and (w >> 111) & 1 == 1
    assert isa.decode(w, CFG)["imm"] == -3


def test_known_uop_word():
    assert isa.encode_uop(2047, 1, 1023, CFG) == 2047 | (1 << 11) | (1023 << 22)
    assert isa.encode_uop(0, 2047, 0, CFG) == 2047 << 11


def _random_insn(rng: random.Random, kind: str) -> dict:
    fields = {"mem": MEM, "gemm": GEMM, "alu": ALU}[kind]
    d = {}
    for name, _, width in fields:
        if name == "imm":
            d[name] = rng.randrange(-(1 << 15), 1 << 15)
        else:
            d[name] = rng.randrange(0, 1 << width)
    d["opcode"] = {"mem": rng.choice([isa.LOAD, isa.STORE]), "gemm": isa.GEMM, "alu": isa.ALU}[kind]
    return d


@pytest.mark.parametrize("kind", ["mem", "gemm", "alu"])
def test_instruction_round_trip(kind):
    rng = random.Random(kind)
    insns = [_random_insn(rng, kind) for _ in range(300)]
    words = isa.encode_program(insns, CFG)
    back = isa.decode_program(words, CFG)
    assert back == insns
    # and the encoding is exactly the sum of the fields at their positions
    fields = {"mem": MEM, "gemm": GEMM, "alu": ALU}[kind]
    for ins, w in zip(insns, isa.program_words(words)):
        want = sum((ins[n] & ((1 << wd) - 1)) << lo for n, lo, wd in fields)
        assert w == want


def test_finish_round_trip():
    w = isa.encode(isa.finish_insn(pop_next_dep=1), CFG)
    assert w == isa.FINISH | (1 << 4)
    assert isa.decode(w, CFG)["opcode"] == isa.FINISH


def test_uop_round_trip_vectorised():
    rng = np.random.default_rng(0)
    u = np.stack([rng.integers(0, 2048, 500), rng.integers(0, 2048, 500), rng.integers(0, 1024, 500)], 1)
    words = isa.encode_uops(u, CFG)
    assert words.dtype == np.uint32
    assert all(int(wd) == isa.encode_uop(*map(int, row), CFG) for wd, row in zip(words[:50], u[:50]))
    assert np.array_equal(isa.decode_uops(words, CFG), u)
    assert isa.decode_uop(int(words[7]), CFG) == dict(zip(["dst_idx", "src_idx", "wgt_idx"], map(int, u[7])))


@pytest.mark.parametrize("bad", [{"sram_base": 1 << 16}, {"y_pad_0": 16}, {"dram_base": -1}, {"bogus": 1}])
def test_out_of_range_fields_are_rejected(bad):
    ins = {**isa.mem_insn(isa.LOAD, isa.MEM_INP, 0, 0, 1, 1, 1)}
    ins.update(bad)
    with pytest.raises(isa.EncodingError):
        isa.encode(ins, CFG)
    with pytest.raises(isa.EncodingError):
        isa.encode(isa.alu_insn(isa.ALU_ADD, 0, 1, use_imm=1, imm=1 << 15), CFG)
    with pytest.raises(isa.EncodingError):
        isa.encode_uops(np.array([[2048, 0, 0]]), CFG)


def test_layout_follows_config():
    # a smaller accumulator (LOG_ACC_BUFF_SIZE 16 -> 10-bit indices) moves the later fields
    cfg = VTAConfig.from_json({"LOG_ACC_BUFF_SIZE": 16})
    lay = isa.layouts(cfg)
    assert lay["uop"].field("src_idx").lo == 10 and lay["uop"].field("wgt_idx").lo == 21
    g = lay["gemm"]
    assert g.field("dst_factor_in").lo == 74 and g.field("src_factor_out").lo == 84
    assert g.field("wgt_factor_in").lo == 116


def test_config_whose_uop_overflows_32_bits_is_rejected():
    from tvmsqz.errors import TvmsqzError

    with pytest.raises(TvmsqzError):
        VTAConfig.from_json({"LOG_ACC_BUFF_SIZE": 18})
