"""Max-pooling on VTA's ALU: the simulated program equals an independent numpy max-pool for
SqueezeNet's pools and other shapes, under many tilings; a pool VTA could not do exactly is
refused; the instruction mix is what the design says (no GEMM MACs, k*k ALU passes)."""

from __future__ import annotations

import numpy as np
import pytest

from tvmsqz.vta import isa
from tvmsqz.vta.config import load_config
from tvmsqz.vta.lower import Tiling, TilingError, pack_activation, unpack_activation
from tvmsqz.vta.pool import PoolLayer, pool_out
from tvmsqz.vta.tune import search_layer

CFG = load_config()


def numpy_maxpool(x: np.ndarray, k: int, s: int, pads, ceil: int) -> np.ndarray:
    """Independent int8 max-pool: every output pixel the max of the input pixels its window
    covers (windows clipped to the input, as the graph's -inf padding means)."""
    _, c, h, w = x.shape
    ho = pool_out(h, k, s, pads[0], pads[2], ceil)
    wo = pool_out(w, k, s, pads[1], pads[3], ceil)
    out = np.empty((1, c, ho, wo), np.int8)
    for oy in range(ho):
        for ox in range(wo):
            y0, x0 = oy * s - pads[0], ox * s - pads[1]
            win = x[0, :, max(0, y0) : min(h, y0 + k), max(0, x0) : min(w, x0 + k)]
            out[0, :, oy, ox] = win.reshape(c, -1).max(axis=1)
    return out


def run_pool(layer: PoolLayer, tiling: Tiling | None, x: np.ndarray):
    prog = layer.lower(tiling or layer.default_tiling(CFG), CFG)
    out, stats = prog.run(pack_activation(x), CFG)
    return unpack_activation(out, layer.channels), stats, prog


CASES = [
    # (C, H, W, k, s, pads, ceil, nonneg input)
    (96, 111, 111, 3, 2, (0, 0, 0, 0), 1, True),  # SqueezeNet v1.0 pool1 (227x227 input)
    (256, 27, 27, 3, 2, (0, 0, 0, 0), 1, True),  # pool8
    (64, 12, 10, 3, 2, (0, 0, 0, 0), 1, True),  # ceil mode: the last windows overhang by one
    (40, 9, 9, 3, 2, (1, 1, 1, 1), 0, True),  # explicit padding, 40 -> 48 lanes
    (32, 8, 8, 2, 2, (0, 0, 0, 0), 0, False),  # signed input, no overhang
    (16, 7, 11, 3, 1, (0, 0, 0, 0), 0, False),  # stride 1: windows overlap
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_vta_maxpool_matches_numpy(case):
    c, h, w, k, s, pads, ceil, nonneg = CASES[case]
    rng = np.random.default_rng(case)
    x = rng.integers(0 if nonneg else -128, 128, (1, c, h, w)).astype(np.int8)
    layer = PoolLayer("pool", c, h, w, k, s, pads, ceil, nonneg)
    want = numpy_maxpool(x, k, s, pads, ceil)
    assert np.array_equal(layer.reference(x), want)
    space = layer.tiling_space(CFG)
    tilings = [None] + [
        Tiling(
            int(rng.choice(space["h"])),
            int(rng.choice(space["w"])),
            int(rng.choice(space["oc"])),
            1,
            1,
            int(rng.choice([1, 2])),
            "spatial",
        )
        for _ in range(12)
    ]
    ran = 0
    for t in tilings:
        try:
            got, stats, prog = run_pool(layer, t, x)
        except TilingError:
            continue  # a random tiling may not fit the accumulator
        ran += 1
        assert np.array_equal(got, want), t
        ho, wo = layer.out_hw
        cb = -(-c // 16)
        assert stats.gemm_counter == 0  # no MACs: resets only
        assert stats.alu_counter == k * k * cb * ho * wo  # one ADD + k*k-1 MAX per output vector
    assert ran >= 3


def test_pool_on_signed_input_with_overhang_is_refused():
    """VTA pads with 0, which is -inf for max only when the input cannot be negative."""
    layer = PoolLayer("pool", 32, 12, 10, 3, 2, (0, 0, 0, 0), 1, nonneg=False)
    assert any(layer.padding)
    with pytest.raises(TilingError, match="negative"):
        layer.default_tiling(CFG)


def test_pool_program_shape():
    """The stream is what docs/vta.md describes: LOAD ACC_8BIT on the compute queue, GEMM reset,
    ALU ADD + MAX, STOREs, FINISH; DRAM traffic is the input windows plus the output once."""
    layer = PoolLayer("pool1", 96, 111, 111, 3, 2, (0, 0, 0, 0), 1, True)
    t = Tiling(3, 55, 1, 1, 1, 2, "spatial")
    x = np.random.default_rng(0).integers(0, 128, (1, 96, 111, 111)).astype(np.int8)
    got, stats, prog = run_pool(layer, t, x)
    assert np.array_equal(got, numpy_maxpool(x, 3, 2, (0, 0, 0, 0), 1))
    ops = isa.decode_program(prog.insns, CFG)
    mem = {(d["opcode"], d["memory_type"]) for d in ops if d["opcode"] in (isa.LOAD, isa.STORE)}
    assert mem == {(isa.LOAD, isa.MEM_ACC_8BIT), (isa.LOAD, isa.MEM_UOP), (isa.STORE, isa.MEM_OUT)}
    alu = {d["alu_opcode"] for d in ops if d["opcode"] == isa.ALU}
    assert alu == {isa.ALU_ADD, isa.ALU_MAX}
    assert stats.out_store_bytes == 96 * 55 * 55
    # 18 tiles of 3 output rows read 7 input rows each, the last (1 row) 3; full width; 6 blocks
    assert stats.acc_load_bytes == 6 * (18 * 7 + 3) * 111 * 16


def test_tiling_search_covers_pools():
    layer = PoolLayer("pool4", 256, 55, 55, 3, 2, (0, 0, 0, 0), 1, True)
    rec = search_layer(layer, CFG, 8)
    assert rec["trials"] == 8 and rec["cycles"] <= rec["default_cycles"]
    assert rec["shape"]["kind"] == "maxpool"
    best = Tiling.from_json(rec["best"])
    x = np.random.default_rng(1).integers(0, 128, (1, 256, 55, 55)).astype(np.int8)
    got, stats, _ = run_pool(layer, best, x)
    assert np.array_equal(got, numpy_maxpool(x, 3, 2, (0, 0, 0, 0), 1))
    assert stats.cycles == rec["cycles"]  # timing-only search = the real run's cycles
