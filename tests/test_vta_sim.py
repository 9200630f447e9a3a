"""The behavioural simulator on hand-made programs with known results: LOAD/STORE (strides,
padding, truncation), GEMM (int8 x int8 -> int32, wrap-around, reset), ALU ops, dependency
tokens, deadlock and SRAM bounds detection, cycle estimate and DRAM byte counts."""

from __future__ import annotations

import numpy as np
import pytest

from tvmsqz.vta import isa
from tvmsqz.vta.config import load_config
from tvmsqz.vta.sim import DeadlockError, Simulator, SRAMBoundsError, VTASimError

CFG = load_config()
L, S = isa.LOAD, isa.STORE


class Dram:
    """Byte-addressed test DRAM; `put` places an array at a 256-byte aligned offset."""

    def __init__(self, size=1 << 20):
        self.mem = np.zeros(size, np.uint8)
        self.top = 0

    def put(self, arr) -> int:
        b = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        off = self.top
        self.mem[off : off + len(b)] = b
        self.top = -(-(off + len(b)) // 256) * 256 + 256
        return off

    def reserve(self, nbytes) -> int:
        return self.put(np.zeros(nbytes, np.uint8))

    def get(self, off, dtype, shape):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.mem[off : off + n].view(dtype).reshape(shape)


def uop_load(dram, uops, sram_base=0):
    words = isa.encode_uops(np.asarray(uops), CFG)
    off = dram.put(words)
    return isa.mem_insn(L, isa.MEM_UOP, sram_base, off // 4, 1, len(words), len(words))


def run(dram, insns, **kw):
    sim = Simulator(CFG, dram.mem, **kw)
    words = isa.encode_program(insns, CFG)
    sim.run(words)
    return sim


def test_gemm_matches_matmul_and_store_truncates():
    rng = np.random.default_rng(1)
    d = Dram()
    # A (4 rows x 32 in) times W^T (32 in -> 32 out): 4 inputs, 2 input blocks, 2 output blocks
    a = rng.integers(-128, 128, (4, 32)).astype(np.int8)
    w = rng.integers(-128, 128, (32, 32)).astype(np.int8)
    inp = a.reshape(4, 2, 16).transpose(1, 0, 2)  # (ib, row, 16): element (ib, row)
    wgt = w.reshape(2, 16, 2, 16).transpose(0, 2, 1, 3)  # (ob, ib, 16o, 16i)
    inp_off, wgt_off = d.put(inp), d.put(wgt)
    out_off = d.reserve(2 * 4 * 16)
    # uops: for ob, ib: acc[ob*4 + row] += inp[ib*4 + row] . wgt[ob*2 + ib]; rows via iter_in
    uops = [(ob * 4, ib * 4, ob * 2 + ib) for ob in range(2) for ib in range(2)]
    prog = [
        isa.mem_insn(L, isa.MEM_INP, 0, inp_off // 16, 1, 8, 8, push_next_dep=1),
        isa.mem_insn(L, isa.MEM_WGT, 0, wgt_off // 256, 1, 4, 4, push_next_dep=1),
        uop_load(d, uops + [(0, 0, 0)]),
        isa.gemm_insn(4, 5, iter_out=1, iter_in=8, dst_factor_in=1, reset_reg=1),
        isa.gemm_insn(0, 4, iter_out=1, iter_in=4, dst_factor_in=1, src_factor_in=1, pop_prev_dep=1),
        isa.gemm_insn(0, 0, pop_prev_dep=1),  # empty GEMM only to consume the second token
        isa.mem_insn(S, isa.MEM_OUT, 0, out_off // 16, 2, 4, 4, pop_prev_dep=1, push_prev_dep=1),
        isa.finish_insn(pop_next_dep=1),
    ]
    prog[4]["push_next_dep"] = 0
    prog[5]["push_next_dep"] = 1
    prog[6]["pop_prev_dep"] = 1
    sim = run(d, prog)
    ref = a.astype(np.int32) @ w.astype(np.int32).T  # (4, 32)
    acc = sim.acc[:8].reshape(2, 4, 16).transpose(1, 0, 2).reshape(4, 32)
    assert np.array_equal(acc, ref)
    out = d.get(out_off, np.int8, (2, 4, 16)).transpose(1, 0, 2).reshape(4, 32)
    assert np.array_equal(out, ref.astype(np.int8))  # low 8 bits, wrapped
    st = sim.stats
    assert st.gemm_counter == 16
    assert st.inp_load_bytes == 8 * 16 and st.wgt_load_bytes == 4 * 256 and st.out_store_bytes == 8 * 16
    assert st.uop_load_bytes == 5 * 4 and st.dram_bytes == 128 + 1024 + 128 + 20
    assert st.insn_fetch_bytes == 16 * len(prog)


def test_gemm_int32_accumulator_wraps():
    d = Dram()
    inp = np.full((1, 16), -128, np.int8)
    wgt = np.full((1, 16, 16), -128, np.int8)
    acc0 = np.full((1, 16), 2**31 - 100, np.int32)
    io, wo, ao = d.put(inp), d.put(wgt), d.put(acc0)
    prog = [
        isa.mem_insn(L, isa.MEM_INP, 0, io // 16, 1, 1, 1),
        isa.mem_insn(L, isa.MEM_WGT, 0, wo // 256, 1, 1, 1, push_next_dep=1),
        isa.mem_insn(L, isa.MEM_ACC, 0, ao // 64, 1, 1, 1),
        uop_load(d, [(0, 0, 0)]),
        isa.gemm_insn(0, 1, iter_out=3, pop_prev_dep=1),  # add 3 x 16 x 16384 = 786432
        isa.finish_insn(),
    ]
    sim = run(d, prog)
    want = np.int64(2**31 - 100) + 3 * 16 * 16384
    want = (want + 2**31) % 2**32 - 2**31
    assert (sim.acc[0] == want).all() and want < 0


def test_load_padding_and_stride():
    d = Dram()
    img = np.arange(5 * 7 * 16).reshape(5, 7, 16).astype(np.int8)  # rows of 7 elements
    off = d.put(img)
    # a 3x4 window starting at (1, 2), with 1 row of padding above, 2 columns right
    ins = isa.mem_insn(L, isa.MEM_INP, 10, off // 16 + 1 * 7 + 2, 3, 4, 7, y_pad_0=1, y_pad_1=0, x_pad_0=0, x_pad_1=2)
    sim = Simulator(CFG, d.mem)
    sim.inp[:] = 99
    sim.run(
        isa.encode_program([{**ins, "push_next_dep": 1}, isa.gemm_insn(0, 0, pop_prev_dep=1), isa.finish_insn()], CFG)
    )
    got = sim.inp[10 : 10 + 4 * 6].reshape(4, 6, 16)
    want = np.zeros((4, 6, 16), np.int8)
    want[1:, :4] = img[1:4, 2:6]
    assert np.array_equal(got, want)
    assert (sim.inp[:10] == 99).all() and (sim.inp[34:] == 99).all()
    assert sim.stats.inp_load_bytes == 3 * 4 * 16  # padding is not DRAM traffic


def test_acc_8bit_load_sign_extends():
    d = Dram()
    v = np.array([[-128, -1, 0, 1, 127] + [5] * 11], np.int8)
    off = d.put(v)
    sim = run(d, [isa.mem_insn(L, isa.MEM_ACC_8BIT, 3, off // 16, 1, 1, 1), isa.finish_insn()])
    assert sim.acc[3].tolist() == v[0].astype(np.int32).tolist()


def _alu_program(d, acc, op, use_imm, imm, uops, **loop):
    off = d.put(acc)
    return [
        isa.mem_insn(L, isa.MEM_ACC, 0, off // 64, 1, len(acc), len(acc)),
        uop_load(d, uops),
        isa.alu_insn(op, 0, len(uops), use_imm=use_imm, imm=imm, **loop),
        isa.finish_insn(),
    ]


@pytest.mark.parametrize(
    "op,imm,fn",
    [
        (isa.ALU_MIN, 5, lambda a: np.minimum(a, 5)),
        (isa.ALU_MAX, -7, lambda a: np.maximum(a, -7)),
        (isa.ALU_ADD, -300, lambda a: a - 300),
        (isa.ALU_SHR, 3, lambda a: a >> 3),  # arithmetic: rounds towards -inf
        (isa.ALU_SHR, -2, lambda a: a << 2),  # negative shift = left shift
        (isa.ALU_MUL, 3, lambda a: a * 3),
    ],
)
def test_alu_immediate(op, imm, fn):
    rng = np.random.default_rng(op)
    acc = rng.integers(-(10**6), 10**6, (6, 16)).astype(np.int32)
    d = Dram()
    prog = _alu_program(d, acc, op, 1, imm, [(0, 0, 0)], iter_out=2, iter_in=3, dst_factor_out=3, dst_factor_in=1)
    sim = run(d, prog)
    assert np.array_equal(sim.acc[:6], fn(acc.astype(np.int64)).astype(np.int32))
    assert sim.stats.alu_counter == 6


def test_alu_two_operands_and_wrap():
    d = Dram()
    acc = np.zeros((4, 16), np.int32)
    acc[0] = 2**31 - 1
    acc[1] = 1
    acc[2] = np.arange(16) - 8
    acc[3] = 3
    # acc[0] += acc[1] (wraps), acc[2] = max(acc[2], acc[3])
    prog = _alu_program(d, acc, isa.ALU_ADD, 0, 0, [(0, 1, 0)])
    sim = run(d, prog)
    assert (sim.acc[0] == -(2**31)).all()
    d2 = Dram()
    sim = run(d2, _alu_program(d2, acc, isa.ALU_MAX, 0, 0, [(2, 3, 0)]))
    assert sim.acc[2].tolist() == np.maximum(np.arange(16) - 8, 3).tolist()


def _literal(sim_acc, insn, uops, inp=None, wgt=None):
    """The reference semantics, literally: three nested loops in order."""
    acc = sim_acc.astype(np.int64).copy()
    for o in range(insn["iter_out"]):
        for i in range(insn["iter_in"]):
            for u in range(insn["uop_bgn"], insn["uop_end"]):
                dst = uops[u][0] + o * insn["dst_factor_out"] + i * insn["dst_factor_in"]
                src = uops[u][1] + o * insn["src_factor_out"] + i * insn["src_factor_in"]
                if insn["opcode"] == isa.GEMM:
                    wi = uops[u][2] + o * insn["wgt_factor_out"] + i * insn["wgt_factor_in"]
                    acc[dst] += wgt[wi].astype(np.int64) @ inp[src].astype(np.int64)
                else:
                    b = insn["imm"] if insn["use_imm"] else acc[src]
                    a = acc[dst]
                    r = {
                        isa.ALU_ADD: a + b,
                        isa.ALU_MAX: np.maximum(a, b),
                        isa.ALU_MIN: np.minimum(a, b),
                        isa.ALU_MUL: a * b,
                    }[insn["alu_opcode"]]
                    acc[dst] = (r + 2**31) % 2**32 - 2**31
    return ((acc + 2**31) % 2**32 - 2**31).astype(np.int32)


@pytest.mark.parametrize("seed", range(8))
def test_random_gemm_and_alu_match_literal_loops(seed):
    """Overlapping destinations, moving weight indices, ALU reading what it writes: the
    vectorised paths must equal the literal loop order."""
    rng = np.random.default_rng(seed)
    sim = Simulator(CFG, np.zeros(0, np.uint8))
    sim.inp[:64] = rng.integers(-128, 128, (64, 16))
    sim.wgt[:32] = rng.integers(-128, 128, (32, 16, 16))
    sim.acc[:64] = rng.integers(-(2**31), 2**31, (64, 16))
    n = int(rng.integers(1, 6))
    uops = np.stack([rng.integers(0, 8, n), rng.integers(0, 8, n), rng.integers(0, 4, n)], 1)
    sim.uop[:n] = uops
    f = lambda: int(rng.integers(0, 4))  # noqa: E731
    g = isa.decode(
        isa.encode(
            isa.gemm_insn(
                0,
                n,
                iter_out=int(rng.integers(1, 4)),
                iter_in=int(rng.integers(1, 4)),
                dst_factor_out=f(),
                dst_factor_in=f(),
                src_factor_out=f(),
                src_factor_in=f(),
                wgt_factor_out=f() % 2,
                wgt_factor_in=f() % 3,
            ),
            CFG,
        ),
        CFG,
    )
    want = _literal(sim.acc, g, uops, sim.inp, sim.wgt)
    sim._gemm(g)
    assert np.array_equal(sim.acc, want)
    for op in (isa.ALU_ADD, isa.ALU_MAX, isa.ALU_MUL):
        a = isa.decode(
            isa.encode(
                isa.alu_insn(
                    op,
                    0,
                    n,
                    iter_out=2,
                    iter_in=2,
                    dst_factor_out=f(),
                    dst_factor_in=f(),
                    src_factor_out=f(),
                    src_factor_in=f(),
                    use_imm=int(rng.integers(0, 2)),
                    imm=int(rng.integers(-5, 5)),
                ),
                CFG,
            ),
            CFG,
        )
        want = _literal(sim.acc, a, uops)
        sim._alu(a)
        assert np.array_equal(sim.acc, want), op


def test_tokens_order_execution():
    """STORE waits for the compute token; FINISH waits for the store token."""
    d = Dram()
    acc = np.arange(16, dtype=np.int32)[None]
    ao = d.put(acc)
    out = d.reserve(16)
    prog = [
        isa.mem_insn(S, isa.MEM_OUT, 0, out // 16, 1, 1, 1, pop_prev_dep=1, push_prev_dep=1),
        isa.mem_insn(L, isa.MEM_ACC, 0, ao // 64, 1, 1, 1, push_next_dep=1),
        isa.finish_insn(pop_next_dep=1),
    ]
    sim = run(d, prog)
    assert d.get(out, np.int8, (16,)).tolist() == list(range(16))  # the store saw the loaded value
    assert sim.stats.cycles > 0


def test_deadlock_is_detected():
    d = Dram()
    prog = [
        # compute waits for a load token that the load queue only pushes after a compute token
        isa.gemm_insn(0, 0, pop_prev_dep=1, push_prev_dep=1),
        isa.mem_insn(L, isa.MEM_INP, 0, 0, 1, 1, 1, pop_next_dep=1, push_next_dep=1),
        isa.finish_insn(),
    ]
    with pytest.raises(DeadlockError, match="deadlock"):
        run(d, prog)


def test_program_without_finish_never_completes():
    with pytest.raises(DeadlockError, match="FINISH"):
        run(Dram(), [isa.mem_insn(L, isa.MEM_INP, 0, 0, 1, 1, 1)])


def test_finish_before_store_is_an_error():
    d = Dram()
    prog = [isa.mem_insn(S, isa.MEM_OUT, 0, 0, 1, 1, 1, pop_prev_dep=1), isa.finish_insn()]
    with pytest.raises(VTASimError, match="still queued"):
        run(d, prog)


def test_unpopped_tokens_are_reported():
    with pytest.raises(VTASimError, match="unpopped"):
        run(Dram(), [isa.gemm_insn(0, 0, push_next_dep=1), isa.finish_insn()])


def test_invalid_dependency_flag():
    with pytest.raises(VTASimError, match="no such neighbour"):
        run(Dram(), [isa.mem_insn(L, isa.MEM_WGT, 0, 0, 1, 1, 1, pop_prev_dep=1), isa.finish_insn()])


def test_sram_bounds():
    d = Dram()
    with pytest.raises(SRAMBoundsError):
        run(d, [isa.mem_insn(L, isa.MEM_INP, 2040, 0, 1, 10, 10), isa.finish_insn()])
    with pytest.raises(SRAMBoundsError):
        run(d, [uop_load(d, [(2040, 0, 0)]), isa.gemm_insn(0, 1, iter_in=10, dst_factor_in=1), isa.finish_insn()])
    with pytest.raises(VTASimError):
        run(d, [isa.mem_insn(S, isa.MEM_OUT, 0, 0, 1, 1, 1, x_pad_0=1), isa.finish_insn()])


def test_cycle_estimate_overlaps_queues():
    """Two independent loads and a GEMM: load and compute overlap only as the tokens allow."""
    cm = CFG.cycles
    d = Dram(1 << 22)
    off = d.reserve(1024 * 256)
    big = isa.mem_insn(L, isa.MEM_WGT, 0, off // 256, 1, 512, 512)
    gemm = isa.gemm_insn(0, 1, iter_out=1000)
    load_c = cm.insn_overhead + cm.dram_latency + 512 * 256 // 8
    gemm_c = cm.insn_overhead + 1000 * cm.gemm_ii
    # dependent: GEMM waits for the load
    sim = Simulator(CFG, d.mem, timing_only=True)
    sim.run(isa.encode_program([{**big, "push_next_dep": 1}, {**gemm, "pop_prev_dep": 1}, isa.finish_insn()], CFG))
    assert sim.stats.cycles == load_c + gemm_c + cm.insn_overhead
    # independent: they overlap
    sim = Simulator(CFG, d.mem, timing_only=True)
    sim.run(isa.encode_program([big, gemm, isa.finish_insn()], CFG))
    assert sim.stats.cycles == load_c
