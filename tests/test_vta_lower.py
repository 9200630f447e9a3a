"""Conv lowering: one int8 conv layer on the VTA simulator equals the same int8 conv in numpy
bit-exactly, for many tilings (per-channel shifts, output channels padded to 16 as for the
classifier, both forms of the 3-channel first conv); dependency tokens; double-buffering; the
tiling search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tvmsqz.vta import isa
from tvmsqz.vta.config import load_config
from tvmsqz.vta.lower import (
    Branch,
    ConvLayer,
    Tiling,
    TilingError,
    check_tiling,
    default_tiling,
    lower_conv,
    pack_activation,
    reference_conv,
    unpack_activation,
)
from tvmsqz.vta.program import ProgramBuilder
from tvmsqz.vta.sim import Simulator
from tvmsqz.vta.tune import load_db, lookup, search_layer, tune_layers

CFG = load_config()


def make_layer(cin, h, w, branches, stride=1, relu=True, shift=9, seed=0):
    """Random int8 layer; `shift="per-channel"` draws one shift per output channel in [-2, 14]
    (negative = left shift, as the ALU's SHR does)."""
    rng = np.random.default_rng(seed)
    brs = [Branch(rng.integers(-127, 128, (o, cin, k, k)).astype(np.int8), p) for o, k, p in branches]
    o = sum(b.weight.shape[0] for b in brs)
    if isinstance(shift, str):
        shift = rng.integers(-2, 15, o)
    return ConvLayer("test", cin, h, w, brs, rng.integers(-20000, 20000, o).astype(np.int32), shift, relu, stride)


def numpy_conv_int8(layer, x):
    """Independent numpy int8 conv: direct loops over output pixels, int32 accumulate,
    round-half-up shift (per output channel), clip."""
    outs = []
    for b in layer.branches:
        k, p, s = b.kernel[0], b.pad, layer.stride
        xp = np.pad(x[0].astype(np.int32), ((0, 0), (p, p), (p, p)))
        ho, wo = layer.out_hw
        acc = np.zeros((b.weight.shape[0], ho, wo), np.int32)
        for oy in range(ho):
            for ox in range(wo):
                win = xp[:, oy * s : oy * s + k, ox * s : ox * s + k]
                acc[:, oy, ox] = np.tensordot(b.weight.astype(np.int32), win, axes=([1, 2, 3], [0, 1, 2]))
        outs.append(acc)
    acc = np.concatenate(outs).astype(np.int64) + layer.bias[:, None, None]
    shift = np.broadcast_to(np.asarray(layer.shift), (acc.shape[0],))[:, None, None]
    y = np.floor((acc + 0.0) / 2.0**shift + 0.5).astype(np.int64)
    return np.clip(y, 0 if layer.relu else -128, 127).astype(np.int8)[None]


def run_layer(layer, tiling, seed=1, x=None):
    """Run on the simulator; returns (input, output with the real channels, stats, program).
    The padding lanes of a partial last output block must come out 0 (what the host drops)."""
    rng = np.random.default_rng(seed)
    lo = 0 if seed % 2 else -128
    if x is None:
        x = rng.integers(lo, 128, (1, layer.in_channels, layer.height, layer.width)).astype(np.int8)
    prog = lower_conv(layer, tiling, CFG)
    out, stats = prog.run(pack_activation(x), CFG)
    full = unpack_activation(out)
    assert not full[:, layer.out_channels :].any()
    return x, full[:, : layer.out_channels], stats, prog


CASES = [
    # (cin, h, w, branches, stride, relu, tiling)
    (32, 9, 11, [(32, 3, 1)], 1, True, None),
    (16, 13, 13, [(64, 1, 0), (64, 3, 1)], 1, True, None),  # fused Fire expand pair
    (16, 13, 13, [(64, 1, 0), (64, 3, 1)], 1, True, Tiling(4, 5, 2, 1, 1, 1, "oc")),
    (48, 7, 7, [(16, 1, 0)], 1, True, Tiling(3, 4, 1, 1, 1, 1, "oc")),
    (64, 10, 9, [(32, 3, 1)], 2, False, Tiling(2, 3, 1, 2, 2, 1, "spatial")),
    (96, 8, 8, [(16, 1, 0)], 1, False, Tiling(8, 8, 1, 3, 2, 2, "spatial")),
    (32, 6, 6, [(48, 5, 2)], 1, True, Tiling(6, 2, 3, 1, 2, 2, "spatial")),
    # per-channel shifts (SHR by a vector held in the accumulator)
    (16, 13, 13, [(64, 1, 0), (64, 3, 1)], 1, True, Tiling(5, 13, 4, 1, 2, 2, "spatial"), "per-channel"),
    (64, 10, 9, [(32, 3, 1)], 2, False, Tiling(2, 3, 1, 2, 2, 1, "oc"), "per-channel"),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_conv_layer_bit_exact(case):
    cin, h, w, br, stride, relu, tiling, *shift = CASES[case]
    layer = make_layer(cin, h, w, br, stride, relu, shift=shift[0] if shift else 9, seed=case)
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


@pytest.mark.parametrize("tiling", [None, Tiling(5, 5, 7, 8, 2, 2, "oc"), Tiling(2, 7, 21, 4, 1, 2, "spatial")])
def test_classifier_outputs_padded_to_1008_bit_exact(tiling):
    """SqueezeNet's conv10 shape (512 -> 1000, 1x1, pad 1, ReLU) on a 5x5 map: 63 output blocks,
    the last with 8 padding lanes, per-channel shifts; every real output bit-exact, the padding
    lanes 0 (run_layer checks), and the GEMM issues exactly 63 x 32 block products per pixel."""
    layer = make_layer(512, 5, 5, [(1000, 1, 1)], shift="per-channel", seed=10)
    tiling = tiling or default_tiling(layer, CFG)
    x, got, stats, _ = run_layer(layer, tiling, seed=3)
    assert got.shape == (1, 1000, 7, 7)
    assert np.array_equal(got, numpy_conv_int8(layer, x))
    assert stats.gemm_counter == 7 * 7 * 63 * 32  # padded work: 1008/1000 of the MACs


def _first_conv(seed=0, size=41):
    """A random int8 version of SqueezeNet v1.0's conv1 (3 -> 96, 7x7, stride 2, no padding)."""
    layer = make_layer(3, size, size, [(96, 7, 0)], stride=2, shift="per-channel", seed=seed)
    x = np.random.default_rng(seed + 1).integers(-128, 128, (1, 3, size, size)).astype(np.int8)
    return layer, x


def test_first_conv_with_channels_padded_to_16_bit_exact():
    """`first_conv="pad"`: the 3 input channels padded to one 16-lane block, 49 taps per pixel."""
    layer, x = _first_conv(seed=4)
    for tiling in (default_tiling(layer, CFG), Tiling(3, 6, 2, 1, 2, 2, "oc")):
        _, got, stats, _ = run_layer(layer, tiling, x=x)
        assert np.array_equal(got, numpy_conv_int8(layer, x))
        assert stats.gemm_counter == 18 * 18 * 6 * 49


def test_first_conv_as_im2col_plus_1x1_bit_exact():
    """`first_conv="im2col"`: the host gathers each 7x7x3 window into 147 channels (10 blocks of
    16), VTA runs a 1x1 conv with the weights permuted to the same tap-major order; the result
    equals the direct 7x7 stride-2 conv on the 3-channel input, with 10 instead of 49 GEMM block
    products per output pixel."""
    from tvmsqz.vta.graph import im2col_nchw

    direct, x = _first_conv(seed=6)
    w = direct.branches[0].weight
    cols = im2col_nchw(x.astype(np.float32), 7, 2, 0).astype(np.int8)
    assert cols.shape == (1, 147, 18, 18)
    layer = ConvLayer(
        "conv1",
        147,
        18,
        18,
        [Branch(np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(96, 147, 1, 1)), 0)],
        direct.bias,
        direct.shift,
        True,
        1,
    )
    want = numpy_conv_int8(direct, x)
    for tiling in (default_tiling(layer, CFG), Tiling(4, 18, 3, 5, 2, 2, "spatial"), Tiling(18, 5, 6, 2, 2, 1, "oc")):
        _, got, stats, _ = run_layer(layer, tiling, x=cols)
        assert np.array_equal(got, want)
        assert stats.gemm_counter == 18 * 18 * 6 * 10


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
    _g0 = pb.emit(isa.gemm_insn(0, 0), after=(l0, l1))
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
