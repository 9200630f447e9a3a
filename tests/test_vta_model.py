"""Whole quantised SqueezeNet on VTA (simulated) against the quantised numpy reference: every
convolution (the first as im2col + 1x1, or with channels padded; the classifier padded to 1008
outputs) and every max-pool on VTA; the artifact round trip (TVM host code + VTA instruction
streams), bench and tune.

The fast tests run the real ImageNet-trained Deep Compression SqueezeNet v1.0 (from
../shared/models) on real photos at a reduced input size (99x99: every layer, smaller maps);
the full 227x227 model runs once under the `slow` marker."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from conftest import require

from tvmsqz.paths import DEEP_COMPRESSION_DIR


@pytest.fixture(autouse=True, scope="module")
def _deep_compression_present():
    require(
        (DEEP_COMPRESSION_DIR / "compressed_SqueezeNet.net").is_file(),
        f"Deep Compression SqueezeNet not in {DEEP_COMPRESSION_DIR}",
    )


SMALL = 99


@pytest.fixture(scope="module")
def dc_small():
    """(ONNX model with a 99x99 input, graph prepared for VTA (im2col first conv), calibration
    inputs, evaluation inputs)."""
    from tvmsqz.images import preprocess, sample_images
    from tvmsqz.models import load_onnx
    from tvmsqz.vta.graph import from_onnx, prepare

    model, info = load_onnx("squeezenet1_0_dc")
    model = copy.deepcopy(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = SMALL
    graph = prepare(from_onnx(model))
    imgs = sample_images()
    cal = [preprocess(np.ascontiguousarray(im[:, ::-1]), "caffe", SMALL) for _, im in imgs[:3]]
    ev = [preprocess(im, "caffe", SMALL) for _, im in imgs[:3]]
    return model, graph, cal, ev


@pytest.fixture(scope="module")
def qnet(dc_small):
    from tvmsqz.vta.quant import quantize_graph

    _, graph, cal, _ = dc_small
    return quantize_graph(graph, cal)


def test_partition_puts_every_conv_and_pool_on_vta(dc_small, qnet):
    from tvmsqz.vta.graph import VTAUnit, from_onnx, partition, prepare

    units = qnet.vta_units()
    names = [u.name for u in units]
    assert len(units) == 21  # conv1, 3 max-pools, fire2..fire9 (squeeze + fused expand pair), conv10
    assert names[:4] == ["conv1", "pool1", "fire2/conv1x1_1", "fire2/concat"] and names[-1] == "conv_final"
    assert [u.name for u in units if u.kind == "maxpool"] == ["pool1", "pool4", "pool8"]
    assert all(len(u.convs) == 2 for u in units if u.name.endswith("concat"))
    host_kinds = [[op.kind for op in s.ops] for s in qnet.host_segments()]
    assert host_kinds == [["im2col"], ["gap", "flatten", "softmax"]]
    off, total = qnet.macs()
    assert off == total > 0  # every multiply-add on VTA
    assert qnet.layers["relu_conv1"].in_channels == 147 and qnet.layers["relu_conv_final"].out_channels == 1000
    assert all(isinstance(s, VTAUnit) or s.inputs for s in qnet.stages)
    # power-of-two requantisation with one shift per output channel: small integers
    assert all(-8 <= L.shifts.min() and L.shifts.max() <= 24 for L in qnet.layers.values() if L.kind == "conv")
    # max-pools keep their input's scale and zero point
    for u in units:
        if u.kind == "maxpool":
            assert qnet.qexp[u.output] == qnet.qexp[u.input]
            assert np.array_equal(qnet.zero.get(u.output, 0), qnet.zero.get(u.input, 0))

    model = dc_small[0]
    pad = partition(prepare(from_onnx(model), "pad"))
    assert pad[0] == [] and isinstance(pad[1], VTAUnit) and pad[1].convs[0].attrs["weight"].shape[1:] == (3, 7, 7)
    no_pools = partition(dc_small[1], pools=False)
    assert [op.kind for st in no_pools if not isinstance(st, VTAUnit) for op in st] == [
        "im2col",
        "maxpool",
        "maxpool",
        "maxpool",
        "gap",
        "flatten",
        "softmax",
    ]


def test_input_zero_points_make_photo_input_lossless(dc_small, qnet):
    """The photos are integers after Caffe preprocessing; with per-channel zero points the im2col
    of the input is quantised at step 1 without clipping, i.e. exactly."""
    from tvmsqz.vta.graph import im2col_nchw
    from tvmsqz.vta.lower import unpack_activation

    _, graph, _, ev = dc_small
    t = "relu_conv1/im2col"
    assert qnet.qexp[t] == 0 and len(qnet.zero[t]) == 147
    seg = qnet.host_segments()[0]
    for x in ev:
        q = unpack_activation(qnet.host_numpy(seg, [x])[0], 147).astype(np.float32)
        cols = im2col_nchw(x, 7, 2, 0)
        assert np.array_equal(q - qnet.zero[t].reshape(1, -1, 1, 1), cols)


def _simulate(qnet, cfg, ev):
    """Every stage boundary of the network with VTA layers on the simulator and with the numpy
    int reference, plus the cycles of the simulated layers."""
    progs = {out: L.lower(L.default_tiling(cfg), cfg) for out, L in qnet.layers.items()}
    cycles = []

    def on_vta(unit, layer, x):
        y, st = progs[unit.output].run(x, cfg)
        cycles.append(st.cycles)
        return y

    for x in ev:
        rec_sim, rec_ref = {}, {}
        y_sim = qnet.run(x, vta=on_vta, record=rec_sim)
        y_ref = qnet.run(x, record=rec_ref)
        yield rec_sim, rec_ref, y_sim, y_ref
    assert len(cycles) == len(progs) * len(ev) and min(cycles) > 0


def test_whole_network_on_simulator_matches_quantised_reference(dc_small, qnet):
    from tvmsqz.vta.config import load_config

    _, _, _, ev = dc_small
    for rec_sim, rec_ref, y_sim, y_ref in _simulate(qnet, load_config(), ev):
        assert rec_sim.keys() == rec_ref.keys() and len(rec_sim) == 23
        for t in rec_sim:
            assert np.array_equal(rec_sim[t], rec_ref[t]), t  # every int8 activation bit-exact
        assert np.array_equal(y_sim, y_ref)


def test_padded_first_conv_and_host_pools_variant_matches_reference(dc_small):
    """The other two lowerings: conv1 with 3 channels padded to 16 (the model input only
    quantised on the host), max-pools on the host; again every int8 tensor bit-exact."""
    from tvmsqz.vta.config import load_config
    from tvmsqz.vta.graph import from_onnx, prepare
    from tvmsqz.vta.quant import quantize_graph

    model, _, cal, ev = dc_small
    qn = quantize_graph(prepare(from_onnx(model), "pad"), cal, pools=False)
    assert qn.layers["relu_conv1"].in_channels == 3 and len(qn.vta_units()) == 18
    assert qn.macs()[0] == qn.macs()[1]
    for rec_sim, rec_ref, y_sim, y_ref in _simulate(qn, load_config(), ev[:1]):
        for t in rec_sim:
            assert np.array_equal(rec_sim[t], rec_ref[t]), t
        assert np.array_equal(y_sim, y_ref)


def test_calibration_does_not_depend_on_string_hashing(tmp_path):
    """Calibration subsamples with one RNG: the tensors must be visited in a fixed order (they
    were visited in set order, which changes with PYTHONHASHSEED)."""
    import subprocess
    import sys

    script = tmp_path / "cal.py"
    script.write_text(
        "import copy, json, numpy as np\n"
        "from tvmsqz.images import preprocess, sample_images\n"
        "from tvmsqz.models import load_onnx\n"
        "from tvmsqz.vta.graph import from_onnx, prepare\n"
        "from tvmsqz.vta.quant import quantize_graph\n"
        "m = copy.deepcopy(load_onnx('squeezenet1_0_dc')[0])\n"
        "d = m.graph.input[0].type.tensor_type.shape.dim\n"
        "d[2].dim_value = d[3].dim_value = 67\n"
        "cal = [preprocess(im, 'caffe', 67) for _, im in sample_images()[:2]]\n"
        "q = quantize_graph(prepare(from_onnx(m)), cal)\n"
        "print(json.dumps({'e': q.qexp, 'z': {k: v.tolist() for k, v in q.zero.items()}}, sort_keys=True))\n"
    )
    outs = []
    for seed in ("1", "2"):
        env = {**__import__("os").environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout.strip().splitlines()[-1])
    assert outs[0] == outs[1]


def test_quantised_model_tracks_fp32(dc_small, qnet):
    from tvmsqz.vta.graph import run_fp32

    _, graph, _, ev = dc_small
    agree = 0
    for x in ev:
        y32, _ = run_fp32(graph, x)
        yq = qnet.run(x)
        agree += int(y32.argmax() == yq.argmax())
        assert len(set(np.argsort(-y32[0])[:5]) & set(np.argsort(-yq[0])[:5])) >= 3
    assert agree >= len(ev) - 1


def test_artifact_round_trip_and_bench(dc_small, qnet, tmp_path):
    from tvmsqz.vta import bench_vta, compile_vta, isa, load_vta, sidecar_path
    from tvmsqz.vta.lower import pack_activation, unpack_activation

    model, graph, cal, ev = dc_small
    out = tmp_path / "dc.so"
    man = compile_vta(model, out, calibration_images=cal)
    assert out.is_file() and sidecar_path(out).is_file() and sidecar_path(out).name == "dc.vta.npz"
    assert man["vta_layers"] == 21 and man["host_segments"] == 2 and man["mac_offload_share"] == 1.0
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind

    m = load_vta(out)
    with np.load(sidecar_path(out)) as z:
        insns = z["insns_0"]
        manifest = json.loads(bytes(z["manifest"]).decode())
    assert insns.dtype == np.uint64 and insns.shape[1] == 2
    decoded = isa.decode_program(insns, m.cfg)
    assert decoded[-1]["opcode"] == isa.FINISH
    assert {d["opcode"] for d in decoded} == {isa.LOAD, isa.STORE, isa.GEMM, isa.ALU, isa.FINISH}
    assert manifest["note"].endswith("no FPGA board has run it")

    seg0 = qnet.host_segments()[0]
    for x in ev[:2]:
        rec = {}
        y = m.run(x, record=rec)
        # the TVM host's quantised im2col (int8-first gather) is bit-identical to numpy's
        assert np.array_equal(rec["relu_conv1/im2col"], qnet.host_numpy(seg0, [x])[0])
        # every VTA layer of the artifact computes exactly the reference int8 layer of its input
        for L in manifest["layers"]:
            layer = qnet.layers[L["output"]]
            assert L["kind"] == layer.kind
            xin = unpack_activation(rec[L["input"]], layer.in_channels)
            assert np.array_equal(rec[L["output"]], pack_activation(layer.reference(xin))), L["name"]
        y_ref = qnet.run(x)  # host in numpy: may differ from TVM in float rounding only
        assert y.shape == (1, 1000) and abs(float(y.sum()) - 1) < 1e-4
        assert np.abs(y - y_ref).max() < 0.05
        assert y.argmax() == y_ref.argmax()
    st = m.last_stats
    assert st["cycles"] == sum(L["cycles"] for L in st["layers"]) > 0
    assert st["dram_bytes"] > 0 and len(st["layers"]) == 21
    assert st["macs_offloaded"] == man["macs_offloaded"]
    assert [s["where"] for s in st["stages"]] == ["host"] + ["vta"] * 21 + ["host"]
    where = {r["op"]: r["where"] for r in manifest["placement"]}
    assert where["conv1"] == where["pool1"] == where["conv_final"] == "vta"
    assert where["conv1/im2col"] == where["pool_final"] == where["prob"] == "host"
    assert all(r["why"] for r in manifest["placement"] if r["where"] == "host")

    with pytest.raises(Exception, match="input shape"):
        m.run(np.zeros((1, 3, 10, 10), np.float32))

    rep = bench_vta(m, [("a", ev[0]), ("b", ev[1])])
    for key in (
        "simulated_cycles",
        "dram_bytes",
        "mac_offload_share",
        "top1_agreement_vs_fp32",
        "top5_overlap_vs_fp32",
        "per_layer",
        "on_host",
        "host_ms_per_image",
    ):
        assert key in rep
    assert rep["images"] == 2 and rep["top1_agreement_vs_fp32"] >= 0.5 and rep["top5_overlap_vs_fp32"] >= 0.6
    assert "no FPGA board" in rep["device"]
    for row in rep["per_image"]:
        assert row["simulated_ms"] == rep["simulated_ms_at_clock"] and row["host_ms"] > 0
    vta_rows = [r for r in rep["per_layer"] if r["where"] == "vta"]
    assert sum(r["macs"] for r in vta_rows) == rep["macs_total"]
    for r in vta_rows:
        assert r["peak_macs_per_cycle"] == 256 and 0 <= r["macs_per_cycle"] <= 256
        assert r["macs_per_cycle"] == round(r["macs"] / r["cycles"], 2)
        assert (r["gemm_lane_use"] is None) == (r["kind"] == "maxpool")
    assert {r["kind"] for r in rep["on_host"]} == {"im2col", "gap", "flatten", "softmax"}


def test_missing_sidecar_is_a_user_error(tmp_path):
    from tvmsqz.errors import TvmsqzError
    from tvmsqz.vta import load_vta

    (tmp_path / "x.so").write_bytes(b"")
    with pytest.raises(TvmsqzError, match="sidecar"):
        load_vta(tmp_path / "x.so")


def test_tune_vta_on_the_model(tmp_path):
    from tvmsqz.vta import tune_vta

    db = tmp_path / "vta-tilings.json"
    res = tune_vta("squeezenet1_0_dc", 19, db)
    assert res["shapes"] == 19 and db.is_file()  # 14 Fire shapes + conv1 + 3 pools + conv10
    keys = {r["key"].split("/")[1] for r in res["layers"]}
    assert {"c147h111w111s1_o96k1x1p0_pcs", "c512h13w13s1_o1000k1x1p1_pcs"} <= keys
    assert sum(k.startswith("maxpool_") for k in keys) == 3
    assert res["model_cycles_tuned"] <= res["model_cycles_default"]


@pytest.mark.slow
def test_full_size_dc_model_on_real_photos(tmp_path):
    """The real 227x227 model, calibrated on mirrored photos, evaluated on the photos."""
    from tvmsqz.vta import bench_vta, compile_vta

    out = tmp_path / "dc227.so"
    man = compile_vta("squeezenet1_0_dc", out)
    rep = bench_vta(out)
    assert rep["images"] == 6 and man["mac_offload_share"] >= 0.95
    assert rep["top1_agreement_vs_fp32"] >= 5 / 6
    assert rep["top5_overlap_vs_fp32"] >= 0.8
    assert rep["simulated_cycles"] > 10**6 and rep["dram_bytes"] > 10**6
    assert abs(rep["mac_offload_share"] - man["mac_offload_share"]) < 1e-12
    print(json.dumps({k: v for k, v in rep.items() if k not in ("per_layer",)}, indent=1))


def test_bias_correction_changes_only_biases_and_removes_mean_error(dc_small, qnet):
    """Empirical bias correction (on by default): same exponents, weights and shifts as without
    it, only int32 biases differ; on the calibration images the per-channel mean error of the
    classifier's output against fp32 shrinks. (Bit-exactness of the corrected network on the
    simulator: `test_whole_network_on_simulator_matches_quantised_reference`, which uses it.)"""
    from tvmsqz.vta.graph import run_fp32
    from tvmsqz.vta.lower import unpack_activation
    from tvmsqz.vta.quant import dequantize_np, quantize_graph

    _, graph, cal, _ = dc_small
    raw = quantize_graph(graph, cal, bias_correction=False)
    assert raw.qexp == qnet.qexp and raw.zero.keys() == qnet.zero.keys()
    assert "bias_correction" in qnet.calibration and "bias_correction" not in raw.calibration
    changed = 0
    for t, L in qnet.layers.items():
        R = raw.layers[t]
        if L.kind != "conv":
            continue
        assert np.array_equal(L.shifts, R.shifts) and L.bias.dtype == np.int32
        for a, b in zip(L.branches, R.branches):
            assert np.array_equal(a.weight, b.weight)
        changed += int(not np.array_equal(L.bias, R.bias))
    assert changed == len([L for L in qnet.layers.values() if L.kind == "conv"])
    t = "relu_conv_final"
    c = graph.shapes[t][1]

    def mean_err(qn):
        errs = []
        for x in cal:
            rec = {}
            qn.run(x, record=rec)
            yq = dequantize_np(unpack_activation(rec[t], c), qn.qexp[t], qn.zero.get(t))
            yf = run_fp32(graph, x, keep={t})[1][t]
            errs.append((yq - yf).mean(axis=(0, 2, 3)))
        return float(np.sqrt(np.mean(np.mean(errs, axis=0) ** 2)))

    assert mean_err(qnet) < 0.9 * mean_err(raw)
