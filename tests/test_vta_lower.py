"""Conv lowering: one int8 conv layer on the VTA simulator equals the same int8 conv in numpy
bit-exactly, for many tilings; dependency tokens; double-buffering; the tiling search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tvmsqz.vta import isa
from tvmsqz.vta.config import load_config
from tvmsqz.vta.lower import (Branch, ConvLayer, Tiling, TilingError, check_tiling, default_tiling, lower_conv,
                              pack_activation, reference_conv, unpack_activation)
from tvmsqz.vta.program import ProgramBuilder
from tvmsqz.vta.sim import Simulator
from tvmsqz.vta.tune import load_db, lookup, search_layer, tune_layers

CFG = load_config()


def make_layer(cin, h, w, branches, stride=1, relu=True, shift=9, seed=0):
    rng = np.random.default_rng(seed)
    brs = [Branch(rng.integers(-127, 128, (o, cin, k, k)).astype(np.int8), p) for o, k, p in branches]
    o = sum(b.weight.shape[0] for b in brs)
    return ConvLayer("test", cin, h, w, brs, rng.integers(-20000, 20000, o).astype(np.int32), shift, relu, stride)


def numpy_conv_int8(layer, x):
    """Independent numpy int8 conv: direct loops over kernel taps, int32 accumulate,
    round-half-up shift, clip."""
    outs = []
    for b in layer.branches:
        k, p, s = b.kernel[0], b.pad, layer.stride
        xp = np.pad(x[0].astype(np.int32), ((0, 0), (p, p), (p, p)))
        ho, wo = layer.out_hw
        acc = np.zeros((b.weight.shape[0], ho, wo), np.int32)
        for oy in range(ho):
            for ox in range(wo):
                win = xp[:, oy * s:oy * s + k, ox * s:ox * s + k]
                acc[:, oy, ox] = np.tensordot(b.weight.astype(np.int32), win, axes=([1, 2, 3], [0, 1, 2]))
        outs.append(acc)
    acc = np.concatenate(outs).astype(np.int64) + layer.bias[:, None, None]
    y = np.floor((acc + 0.0) / 2.0 ** layer.shift + 0.5).astype(np.int64)
    return np.clip(y, 0 if layer.relu else -128, 127).astype(np.int8)[None]


def run_layer(layer, tiling, seed=1):
    rng = np.random.default_rng(seed)
    lo = 0 if seed % 2 else -128
    x = rng.integers(lo, 128, (1, layer.in_channels, layer.height, layer.width)).astype(np.int8)
    prog = lower_conv(layer, tiling, CFG)
    out, stats = prog.run(pack_activation(x), CFG)
    return x, unpack_activation(out), stats, prog


CASES = [
    # (cin, h, w, branches, stride, relu, tiling)
    (32, 9, 11, [(32, 3, 1)], 1, True, None),
    (16, 13, 13, [(64, 1, 0), (64, 3, 1)], 1, True, None),  # fused Fire expand pair
    (16, 13, 13, [(64, 1, 0), (64, 3, 1)], 1, True, Tiling(4, 5, 2, 1, 1, 1, "oc")),
    (48, 7, 7, [(16, 1, 0)], 1, True, Tiling(3, 4, 1, 1, 1, 1, "oc")),
    (64, 10, 9, [(32, 3, 1)], 2, False, Tiling(2, 3, 1, 2, 2, 1, "spatial")),
    (96, 8, 8, [(16, 1, 0)], 1, False, Tiling(8, 8, 1, 3, 2, 2, "spatial")),
    (32, 6, 6, [(48, 5, 2)], 1, True, Tiling(6, 2, 3, 1, 2, 2, "spatial")),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_conv_layer_bit_exact(case):
    cin, h, w, br, stride, relu, tiling = CASES[case]
    layer = make_layer(cin, h, w, br, stride, relu, seed=case)
    tiling = tiling or default_tiling(layer, CFG)
    x, got, stats, prog = run_layer(layer, tiling, seed=case)
    want = numpy_conv_int8(layer, x)
    assert got.dtype == np.int8 and got.shape == want.shape
    assert np.array_equal(got, want)
    assert np.array_equal(reference_conv(layer, x), want)  # the reference used by the model tests
    assert stats.gemm_counter * 256 >= layer.macs  # every MAC went through the GEMM core
    assert stats.cycles > 0 and stats.dram_bytes > 0


def test_input_channels_not_multiple_of_16_are_zero_padded():
    layer = make_layer(24, 6, 6, [(16, 3, 1)])
    x, got, _, _ = run_layer(layer, default_tiling(layer, CFG))
    assert np.array_equal(got, numpy_conv_int8(layer, x))


def _token_counts(prog):
    insns = isa.decode_program(prog.insns, CFG)
    from tvmsqz.vta.sim import route

    counts = {}
    for i in insns:
        q = route(i)
        for f in isa.DEP_FIELDS:
            if i[f]:
                counts[(q, f)] = counts.get((q, f), 0) + 1
    return insns, counts


def test_tokens_balance_and_double_buffering_overlaps():
    layer = make_layer(64, 27, 27, [(64, 1, 0), (64, 3, 1)], seed=3)
    single = Tiling(3, 27, 8, 1, 1, 1, "spatial")
    double = Tiling(3, 27, 8, 1, 2, 2, "spatial")
    _, got1, st1, p1 = run_layer(layer, single)
    _, got2, st2, p2 = run_layer(layer, double)
    assert np.array_equal(got1, got2)
    for prog in (p1, p2):
        insns, c = _token_counts(prog)
        L, C, S = 0, 1, 2
        assert c.get((L, "push_next_dep"), 0) == c.get((C, "pop_prev_dep"), 0) > 0
        assert c.get((C, "push_prev_dep"), 0) == c.get((L, "pop_next_dep"), 0) > 0
        assert c.get((C, "push_next_dep"), 0) == c.get((S, "pop_prev_dep"), 0) > 0
        assert c.get((S, "push_prev_dep"), 0) == c.get((C, "pop_next_dep"), 0) > 0
        assert insns[-1]["opcode"] == isa.FINISH and insns[-1]["pop_next_dep"] == 1
    assert st2.cycles < st1.cycles  # loads and stores hide behind compute
    busy = sum(st2.queue_busy)
    assert st2.cycles < busy  # queues really overlap


def test_program_builder_drops_implied_dependencies():
    pb = ProgramBuilder()
    l0 = pb.emit(isa.mem_insn(isa.LOAD, isa.MEM_INP, 0, 0, 1, 1, 1))
    l1 = pb.emit(isa.mem_insn(isa.LOAD, isa.MEM_INP, 1, 0, 1, 1, 1))
    g0 = pb.emit(isa.gemm_insn(0, 0), after=(l0, l1))
    pb.emit(isa.gemm_insn(0, 0), after=(l0,))  # already implied by g0's wait
    pb.emit(isa.finish_insn())
    out = pb.finalize()
    assert [i["push_next_dep"] for i in out[:2]] == [0, 1]
    assert [i["pop_prev_dep"] for i in out[2:4]] == [1, 0]
    Simulator(CFG, np.zeros(4096, np.uint8)).run(isa.encode_program(out, CFG))


def test_tiling_checks():
    layer = make_layer(512, 13, 13, [(64, 1, 0)])
    with pytest.raises(TilingError):
        check_tiling(layer, Tiling(13, 13, 4, 32, 2, 2), CFG)  # input buffer overflow
    with pytest.raises(TilingError):
        check_tiling(layer, Tiling(13, 13, 3, 1, 2, 2), CFG)  # oc must divide
    check_tiling(layer, default_tiling(layer, CFG), CFG)


def test_tiling_search_database_resumes(tmp_path):
    layer = make_layer(32, 27, 27, [(16, 1, 0)])
    rec = search_layer(layer, CFG, 6)
    assert rec["trials"] == 6 and rec["cycles"] <= rec["default_cycles"]
    rec2 = search_layer(layer, CFG, 4, rec)
    assert rec2["trials"] == 10 and rec2["cycles"] <= rec["cycles"]
    assert len({json.dumps(t, sort_keys=True) for t, _ in rec2["measured"]}) == len(rec2["measured"])

    db_path = tmp_path / "tilings.json"
    layers = [layer, make_layer(16, 13, 13, [(32, 1, 0), (32, 3, 1)])]
    res = tune_layers(layers, CFG, 8, db_path)
    assert res["shapes"] == 2 and db_path.is_file()
    db = load_db(db_path)
    assert all(r["trials"] == 4 for r in db["records"].values())
    res2 = tune_layers(layers, CFG, 8, db_path)
    db = load_db(db_path)
    assert all(r["trials"] == 8 for r in db["records"].values())
    assert res2["best_cycles"] <= res["best_cycles"]
    best = lookup(db, layers[1], CFG)
    x, got, stats, _ = run_layer(layers[1], best)
    assert np.array_equal(got, numpy_conv_int8(layers[1], x))
    assert stats.cycles == db["records"][next(k for k in db["records"] if "o32k3" in k)]["cycles"]
