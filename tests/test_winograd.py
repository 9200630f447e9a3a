"""Winograd F(m, 3) convolutions in the blocked layout (`tvmsqz.backends.cpu.kernels.winograd`).

The transform matrices compute a correlation; the four-stage kernel, with its default schedule
and with schedules sampled from its search space, matches a direct convolution; the x86-avx512
graph takes this path for exactly the 3x3 stride-1 convolutions, with the weight transform
folded into constants at compile time; a short tune finds and applies schedules for it; and a
target that turns it off gets the direct kernels back, with the same outputs.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import require_cpu, run_cli
from onnx import TensorProto, helper, numpy_helper

from tvmsqz.backends.cpu.kernels import winograd


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices_compute_a_2d_correlation(m):
    a_t, g, b_t = winograd.matrices(m)
    rng = np.random.default_rng(m)
    d = rng.standard_normal((m + 2, m + 2))
    k = rng.standard_normal((3, 3))
    y = a_t @ ((g @ k @ g.T) * (b_t @ d @ b_t.T)) @ a_t.T
    want = np.array([[np.sum(d[i : i + 3, j : j + 3] * k) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def _direct(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """NCHW[x]c reference: unblock, correlate with numpy, reblock."""
    n, cb, h, wd, ib = x.shape
    kb, _, r, s, _, ob = w.shape
    plain = x.transpose(0, 1, 4, 2, 3).reshape(n, cb * ib, h, wd)
    kernel = w.transpose(0, 5, 1, 4, 2, 3).reshape(kb * ob, cb * ib, r, s)
    padded = np.pad(plain, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - 2, wd + 2 * pad - 2
    out = np.zeros((n, kb * ob, oh, ow))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,kc->nkhw", padded[:, :, i : i + oh, j : j + ow], kernel[:, :, i, j])
    return out.reshape(n, kb, ob, oh, ow).transpose(0, 1, 3, 4, 2)


def _kernel(cin: int, cout: int, hw: int, pad: int, tile: int, lanes: int):
    from tvm import te

    data = te.placeholder((1, cin // lanes, hw, hw, lanes), name="data")
    packed = te.placeholder((tile + 2, tile + 2, cout // lanes, cin // lanes, lanes, lanes), name="packed")
    out = winograd.conv2d_nchwc_winograd(data, packed, (pad, pad, pad, pad), tile)
    relu = te.compute(out.shape, lambda *i: te.max(out(*i), 0.0), name="relu")
    return te.create_prim_func([data, packed, relu]).with_attr("global_symbol", "main")


def _weights(w: np.ndarray, tile: int) -> np.ndarray:
    import tvm
    from tvm import te

    k = te.placeholder(w.shape, name="k")
    u = winograd.weight_transform(k, tile)
    f = tvm.compile(te.create_prim_func([k, u]), target="llvm")
    out = tvm.runtime.empty([int(d) for d in u.shape], "float32")
    f(tvm.runtime.tensor(w), out)
    return out.numpy()


@pytest.mark.parametrize(
    "cin,cout,hw,pad,tile,lanes",
    [
        (32, 48, 13, 1, 4, 16),  # 13 is not a multiple of the tile: partial tiles at the edge
        (16, 32, 12, 0, 4, 16),  # no padding
        (16, 16, 9, 1, 2, 8),  # F(2,3), AVX2's 8 lanes
    ],
)
def test_kernel_matches_direct_convolution(cin, cout, hw, pad, tile, lanes):
    import tvm
    from tvm.s_tir import Schedule

    rng = np.random.default_rng(cin + hw)
    x = rng.standard_normal((1, cin // lanes, hw, hw, lanes)).astype("float32")
    w = (rng.standard_normal((cout // lanes, cin // lanes, 3, 3, lanes, lanes)) * 0.2).astype("float32")
    want = np.maximum(_direct(x.astype(np.float64), w.astype(np.float64), pad), 0)
    u = _weights(w, tile)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    schedules = [Schedule(_kernel(cin, cout, hw, pad, tile, lanes))]
    schedules[0] = winograd.schedule_winograd(schedules[0])
    for seed in (1, 2, 3):  # points of the tuning space
        sch = Schedule(_kernel(cin, cout, hw, pad, tile, lanes), seed=seed)
        schedules.append(winograd.schedule_winograd(sch, sample=True))
    for sch in schedules:
        f = tvm.compile(sch.mod, target=target)
        out = tvm.runtime.empty(want.shape, "float32")
        f(tvm.runtime.tensor(x), tvm.runtime.tensor(u), out)
        got = out.numpy()
        assert np.abs(got - want).max() <= 1e-5 * (want.max() - want.min()), sch.trace


def _graph_calls_of(model: str, target: str) -> list[str]:
    from tvmsqz.build import prepare
    from tvmsqz.frontend import load_model
    from tvmsqz.targets import get_target

    mod = prepare(load_model(model).mod, get_target(target))
    return [line for line in mod["main"].script().splitlines() if "R.call_tir" in line]


def _graph_calls(target: str) -> list[str]:
    return _graph_calls_of("squeezenet1_1", target)


def test_x86_graph_takes_winograd_for_the_3x3_stride1_convs_on_large_maps():
    from tvmsqz.paths import TARGETS_DIR

    floor = json.loads((TARGETS_DIR / "x86-avx512.json").read_text())["layout"]["winograd_min_size"]
    assert 13 < floor <= 27
    calls = _graph_calls("x86-avx512")
    wino = [c for c in calls if "winograd" in c]
    # fire2-5's expand3x3 (55x55, 27x27 maps); fire6-9's (13x13) stay direct like conv1 (stride 2)
    # and the 1x1 convs.
    assert len(wino) == 4 and all("fire_expand_into_conv2d_nchwc_winograd" in c for c in wino), wino
    assert all("13, 13, 16" not in c.split("=")[0] for c in wino), wino
    assert not [c for c in calls if "winograd_weight" in c]  # folded into constants at compile time
    assert not [c for c in calls if "concatenate" in c]


def test_prime_output_width_is_computed_padded_and_cropped():
    from tvmsqz.backends.cpu.kernels.constants import padded_width

    assert padded_width(109) == 112  # SqueezeNet 1.0's conv1: 109 is prime
    assert [padded_width(w) for w in (111, 55, 54, 27, 13)] == [111, 55, 54, 27, 13]  # a tile divides them
    calls = [c for c in _graph_calls_of("squeezenet1_0", "x86-avx512") if "fused_conv2d_nchwc_add_relu1" in c]
    assert calls and "(1, 6, 109, 109, 16)" in calls[0]  # the graph sees the real width


def test_target_without_winograd_keeps_direct_convs_and_the_same_outputs(tmp_path):
    require_cpu({"avx512f", "avx512bw", "avx512vl"}, "running the AVX-512 build")
    from tvmsqz.paths import TARGETS_DIR
    from tvmsqz.runtime import load

    data = json.loads((TARGETS_DIR / "x86-avx512.json").read_text())
    assert data["layout"]["winograd"] == 4  # the default this file's other tests exercise
    data["layout"]["winograd"] = 0
    data["name"] = "x86-avx512-direct"
    target = tmp_path / "direct.json"
    target.write_text(json.dumps(data))
    outputs = []
    for name, where in (("x86-avx512", "wino.so"), (str(target), "direct.so")):
        so = tmp_path / where
        run_cli("compile", "squeezenet1_1", "--target", name, "--no-tuning", "-o", str(so))
        kernels = json.loads(so.with_name(so.name + ".json").read_text())["kernels"]["untuned"]
        assert any("winograd" in k for k in kernels) == (where == "wino.so"), kernels
        x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype("float32")
        outputs.append(load(so).run(x))
    wino, direct = outputs
    assert np.abs(wino - direct).max() <= 1e-4 * (direct.max() - direct.min())
    assert wino.argmax() == direct.argmax()


def _wino_model() -> onnx.ModelProto:
    """conv3x3 3->16 (direct: 3 input channels) -> relu -> conv3x3 16->32 (Winograd) -> relu -> GAP."""
    rng = np.random.default_rng(5)
    arrays = {
        "w1": rng.standard_normal((16, 3, 3, 3)).astype("float32") * 0.3,
        "b1": rng.standard_normal(16).astype("float32") * 0.1,
        "w2": rng.standard_normal((32, 16, 3, 3)).astype("float32") * 0.2,
        "b2": rng.standard_normal(32).astype("float32") * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["data", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wino",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 20, 20])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_short_tune_finds_and_applies_winograd_schedules(tmp_path):
    require_cpu({"avx512f", "avx512bw", "avx512vl"}, "running the AVX-512 build")
    from tvmsqz.runtime import load

    model = _wino_model()
    onnx.save(model, tmp_path / "wino.onnx")
    db, so = tmp_path / "db", tmp_path / "wino.so"
    run_cli("tune", str(tmp_path / "wino.onnx"), "--target", "x86-avx512", "--trials", "12", "--cold", "-o", str(db))
    summary = json.loads((db / "tuning_summary.json").read_text())
    wino = [t for t in summary["per_task"] if "winograd" in t["name"]]
    assert len(wino) == 1 and wino[0]["trials"] >= 1 and wino[0]["best_us"] > 0, summary["per_task"]
    run_cli("compile", str(tmp_path / "wino.onnx"), "--target", "x86-avx512", "--database", str(db), "-o", str(so))
    tuned = json.loads(so.with_name(so.name + ".json").read_text())["kernels"]["tuned"]
    assert any("winograd" in k for k in tuned), tuned
    x = np.random.default_rng(2).standard_normal((1, 3, 20, 20)).astype("float32")
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
    np.testing.assert_allclose(load(so).run(x), want, rtol=1e-4, atol=1e-5)


def test_padded_classifier_is_blocked_and_sliced_back(tmp_path):
    """`layout.classifier_pad`: the 1000-class conv runs as 1024 outputs in NCHW16c (no 8c), the
    scores are sliced back to 1000, and the outputs match ONNX Runtime."""
    require_cpu({"avx512f", "avx512bw", "avx512vl"}, "running the AVX-512 build")
    from tvmsqz.build import prepare
    from tvmsqz.frontend import load_model
    from tvmsqz.models import load_onnx
    from tvmsqz.paths import TARGETS_DIR
    from tvmsqz.runtime import load
    from tvmsqz.targets import get_target

    data = json.loads((TARGETS_DIR / "x86-avx512.json").read_text())
    assert data["layout"].get("classifier_pad") == 32  # the shipped default
    spec = get_target("x86-avx512")
    script = prepare(load_model("squeezenet1_1").mod, spec)["main"].script()
    assert "(1, 64, 13, 13, 16)" in script and "(1, 125, 13, 13, 8)" not in script  # 1024 = 64 x 16 lanes
    assert "R.strided_slice" in script or "strided_slice" in script
    so = tmp_path / "m.so"
    run_cli("compile", "squeezenet1_1", "--target", "x86-avx512", "--no-tuning", "-o", str(so))
    onnx_model, _ = load_onnx("squeezenet1_1")
    x = np.random.default_rng(11).standard_normal((1, 3, 224, 224)).astype("float32")
    want = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"data": x}
    )[0]
    got = load(so).run(x)
    assert got.shape == (1, 1000)
    assert np.abs(got - want).max() <= 1e-4 * (want.max() - want.min()) and got.argmax() == want.argmax()


def test_pad_classifier_leaves_other_graphs_alone():
    from tvm import relax

    from tvmsqz.frontend import import_onnx
    from tvmsqz.passes.pad_classes import pad_classifier

    mod, _ = import_onnx(_wino_model())  # 32 outputs: already a multiple of 32
    assert pad_classifier(mod, 32).same_as(mod) or pad_classifier(mod, 32)["main"].script() == mod["main"].script()
    padded = pad_classifier(relax.transform.DecomposeOpsForInference()(mod), 48)
    assert "(1, 48, 20, 20)" in padded["main"].script()  # 32 -> 48: padded, then sliced
    assert "(1, 32)" in padded["main"].script()


def test_pad_classifier_leaves_a_head_the_block_divides():
    from tvm import relax

    from tvmsqz.frontend import import_onnx
    from tvmsqz.passes.pad_classes import pad_classifier

    mod = relax.transform.DecomposeOpsForInference()(import_onnx(_wino_model())[0])  # 32 classes
    assert "(1, 64, 20, 20)" in pad_classifier(mod, 64)["main"].script()  # no block given: padded
    assert pad_classifier(mod, 64, block=16)["main"].script() == mod["main"].script()  # 16 divides 32: as is
