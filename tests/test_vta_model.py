"""Whole quantised SqueezeNet on VTA (simulated) against the quantised numpy reference, the
artifact round trip (TVM host code + VTA instruction streams), bench and tune.

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
    require((DEEP_COMPRESSION_DIR / "compressed_SqueezeNet.net").is_file(),
            f"Deep Compression SqueezeNet not in {DEEP_COMPRESSION_DIR}")

SMALL = 99


@pytest.fixture(scope="module")
def dc_small():
    """(ONNX model with a 99x99 input, graph, calibration inputs, evaluation inputs)."""
    from tvmsqz.images import preprocess, sample_images
    from tvmsqz.models import load_onnx
    from tvmsqz.vta.graph import from_onnx

    model, info = load_onnx("squeezenet1_0_dc")
    model = copy.deepcopy(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = SMALL
    graph = from_onnx(model)
    imgs = sample_images()
    cal = [preprocess(np.ascontiguousarray(im[:, ::-1]), "caffe", SMALL) for _, im in imgs[:3]]
    ev = [preprocess(im, "caffe", SMALL) for _, im in imgs[:3]]
    return model, graph, cal, ev


@pytest.fixture(scope="module")
def qnet(dc_small):
    from tvmsqz.vta.quant import quantize_graph

    _, graph, cal, _ = dc_small
    return quantize_graph(graph, cal)


def test_partition_offloads_fire_convolutions(qnet):
    from tvmsqz.vta.graph import VTAUnit

    units = qnet.vta_units()
    names = [u.name for u in units]
    assert len(units) == 16  # fire2..fire9: squeeze + fused expand pair
    assert names[:2] == ["fire2/conv1x1_1", "fire2/concat"]
    assert all(len(u.convs) == 2 for u in units if u.name.endswith("concat"))
    host_kinds = [[op.kind for op in s.ops] for s in qnet.host_segments()]
    assert host_kinds == [["conv", "maxpool"], ["maxpool"], ["maxpool"], ["conv", "gap", "flatten", "softmax"]]
    off, total = qnet.macs()
    assert 0.5 < off / total < 0.8
    assert all(isinstance(s, VTAUnit) or s.inputs for s in qnet.stages)
    # power-of-two requantisation: shifts are small non-negative integers
    assert all(0 <= L.shift <= 16 for L in qnet.layers.values())


def test_whole_network_on_simulator_matches_quantised_reference(dc_small, qnet):
    from tvmsqz.vta.config import load_config
    from tvmsqz.vta.lower import default_tiling, lower_conv

    cfg = load_config()
    _, _, _, ev = dc_small
    progs = {out: lower_conv(L, default_tiling(L, cfg), cfg) for out, L in qnet.layers.items()}
    cycles = []

    def on_vta(unit, layer, x):
        y, st = progs[unit.output].run(x, cfg)
        cycles.append(st.cycles)
        return y

    for x in ev:
        rec_sim, rec_ref = {}, {}
        y_sim = qnet.run(x, vta=on_vta, record=rec_sim)
        y_ref = qnet.run(x, record=rec_ref)
        assert rec_sim.keys() == rec_ref.keys()
        for t in rec_sim:
            assert np.array_equal(rec_sim[t], rec_ref[t]), t  # every int8 activation bit-exact
        assert np.array_equal(y_sim, y_ref)
    assert len(cycles) == 16 * len(ev) and min(cycles) > 0


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
    from tvmsqz.vta import bench_vta, compile_vta, load_vta, sidecar_path
    from tvmsqz.vta import isa
    from tvmsqz.vta.lower import reference_conv, unpack_activation

    model, graph, cal, ev = dc_small
    out = tmp_path / "dc.so"
    man = compile_vta(model, out, calibration_images=cal)
    assert out.is_file() and sidecar_path(out).is_file() and sidecar_path(out).name == "dc.vta.npz"
    assert man["vta_layers"] == 16 and man["host_segments"] == 4 and 0.5 < man["mac_offload_share"] < 0.8
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

    for x in ev[:2]:
        rec = {}
        y = m.run(x, record=rec)
        # every VTA layer of the artifact computes exactly the reference int8 conv of its input
        for L in manifest["layers"]:
            layer = qnet.layers[L["output"]]
            assert L["shift"] == layer.shift
            xin = unpack_activation(rec[L["input"]], layer.in_channels)
            assert np.array_equal(unpack_activation(rec[L["output"]]), reference_conv(layer, xin)), L["name"]
        y_ref = qnet.run(x)  # host in numpy: may differ from TVM in float rounding only
        assert y.shape == (1, 1000) and abs(float(y.sum()) - 1) < 1e-4
        assert np.abs(y - y_ref).max() < 0.05
        assert y.argmax() == y_ref.argmax()
    st = m.last_stats
    assert st["cycles"] == sum(L["cycles"] for L in st["layers"]) > 0
    assert st["dram_bytes"] > 0 and len(st["layers"]) == 16
    assert st["macs_offloaded"] == man["macs_offloaded"]

    with pytest.raises(Exception, match="input shape"):
        m.run(np.zeros((1, 3, 10, 10), np.float32))

    rep = bench_vta(m, [("a", ev[0]), ("b", ev[1])])
    for key in ("simulated_cycles", "dram_bytes", "mac_offload_share", "top1_agreement_vs_fp32",
                "top5_overlap_vs_fp32", "per_layer"):
        assert key in rep
    assert rep["images"] == 2 and rep["top1_agreement_vs_fp32"] >= 0.5 and rep["top5_overlap_vs_fp32"] >= 0.6
    assert "no FPGA board" in rep["device"]


def test_missing_sidecar_is_a_user_error(tmp_path):
    from tvmsqz.errors import TvmsqzError
    from tvmsqz.vta import load_vta

    (tmp_path / "x.so").write_bytes(b"")
    with pytest.raises(TvmsqzError, match="sidecar"):
        load_vta(tmp_path / "x.so")


def test_tune_vta_on_the_model(tmp_path):
    from tvmsqz.vta import tune_vta

    db = tmp_path / "vta-tilings.json"
    res = tune_vta("squeezenet1_0_dc", 14, db)
    assert res["shapes"] == 14 and db.is_file()
    assert res["model_cycles_tuned"] <= res["model_cycles_default"]


@pytest.mark.slow
def test_full_size_dc_model_on_real_photos(tmp_path):
    """The real 227x227 model, calibrated on mirrored photos, evaluated on the photos."""
    from tvmsqz.vta import bench_vta, compile_vta

    out = tmp_path / "dc227.so"
    man = compile_vta("squeezenet1_0_dc", out)
    rep = bench_vta(out)
    assert rep["images"] == 6
    assert rep["top1_agreement_vs_fp32"] >= 5 / 6
    assert rep["top5_overlap_vs_fp32"] >= 0.8
    assert rep["simulated_cycles"] > 10**6 and rep["dram_bytes"] > 10**6
    assert abs(rep["mac_offload_share"] - man["mac_offload_share"]) < 1e-12
    print(json.dumps({k: v for k, v in rep.items() if k not in ("per_layer",)}, indent=1))
