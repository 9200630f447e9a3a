"""The channel-blocked, concat-free x86 graph: parity with ONNX Runtime, and its shape.

Every built-in model compiles in NCHW16c (the AVX-512 target's layout; NCHW8c on AVX2) with
concat-free Fire modules and is compared with ONNX Runtime on the same input. The compiled
graph has no concatenate kernel and exactly two activation layout transforms (model input and
output): none between Fire modules.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import require_cpu, run_cli

from tvmsqz.models import load_onnx

MODELS = ["squeezenet1_0", "squeezenet1_1", "squeezenet1_0_bypass", "squeezenet1_0_complex_bypass", "squeezenet1_0_dc"]


def _graph(target: str, model: str, fuse: bool = True):
    import tvm

    from tvmsqz.build import prepare
    from tvmsqz.frontend import load_model
    from tvmsqz.targets import get_target

    spec = get_target(target)
    mod = prepare(load_model(model).mod, spec, fuse=fuse)
    return [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)], mod


@pytest.mark.parametrize("target,block", [("x86-avx512", 16), ("x86-avx2", 8)])
def test_default_x86_graph_is_blocked_and_concat_free(target, block):
    names, mod = _graph(target, "squeezenet1_1")
    assert not [n for n in names if n.startswith("concatenate")], names
    calls = [line for line in mod["main"].script().splitlines() if "R.call_tir" in line]
    assert sum("fire_expand_into_" in line for line in calls) == 16  # 8 Fire modules x 2 branches
    assert sum("call_tir_inplace" in line for line in calls) == 8  # the second branch writes in place
    # activation layout transforms: one at the input, one at the output, none between layers
    assert sum("layout_transform" in line for line in calls) == 2, calls
    assert all(f"{block}), dtype" in line for line in calls if "fire_expand_into_" in line)


@pytest.mark.parametrize("model,bypassed", [("squeezenet1_0_bypass", 4), ("squeezenet1_0_complex_bypass", 8)])
def test_bypass_adds_live_in_the_expand_epilogues(model, bypassed):
    """No `concatenate_add` kernel: each expand conv of a bypassed Fire module writes its blocks
    of the shared buffer and adds its blocks of the bypass in the same pass, reading the bypass
    in place (no slice kernel, no copy)."""
    names, mod = _graph("x86-avx512", model)
    assert not [n for n in names if "concatenate" in n], names
    kernels = [n for n in names if "strided_slice" in n and not n.startswith("fire_expand_into_")]
    assert kernels == [n for n in kernels if "reshape" in n], kernels  # the classifier's 1024 -> 1000 only
    calls = [line for line in mod["main"].script().splitlines() if "R.call_tir" in line]
    assert sum("fire_expand_into_" in line for line in calls) == 16
    with_bypass = [line for line in calls if "fire_expand_into_" in line and "relu" in line and line.count("_add") >= 2]
    assert len(with_bypass) == 2 * bypassed, with_bypass
    assert sum("layout_transform" in line for line in calls) == 2, calls


def test_no_fuse_keeps_the_concatenate_kernels():
    names, _ = _graph("x86-avx512", "squeezenet1_1", fuse=False)
    assert len([n for n in names if n.startswith("concatenate")]) == 4, names  # distinct kernels (shapes)
    assert not [n for n in names if n.startswith("fire_expand_into_")]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_blocked_concat_free_parity_with_onnxruntime(model, tmp_path):
    require_cpu({"avx512f", "avx512bw", "avx512vl"}, "running the AVX-512 build")
    so = tmp_path / "m.so"
    run_cli("compile", model, "--target", "x86-avx512", "--no-tuning", "-o", str(so))
    manifest = json.loads(so.with_name(so.name + ".json").read_text())
    assert manifest["fused"] is True
    assert not [k for k in manifest["kernels"]["untuned"] + manifest["kernels"]["tuned"] if k.startswith("concatenate")]
    from tvmsqz.runtime import load

    onnx_model, _ = load_onnx(model)
    shape = manifest["input"]["shape"]
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    artifact = load(so)
    rng = np.random.default_rng(7)
    for _ in range(2):
        x = rng.standard_normal(shape).astype("float32") * (50 if model.endswith("_dc") else 1)
        want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        got = artifact.run(x)
        assert np.abs(got - want).max() <= 1e-4 * (want.max() - want.min())
        assert got.argmax() == want.argmax()


def _odd_channel_model(c: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(c)
    inits = {
        "w1": rng.standard_normal((c, 3, 3, 3)).astype("float32"),
        "b1": rng.standard_normal(c).astype("float32"),
        "w2": rng.standard_normal((c, c, 1, 1)).astype("float32"),
        "b2": rng.standard_normal(c).astype("float32"),
        "w3": rng.standard_normal((24, c, 3, 3)).astype("float32"),
        "b3": rng.standard_normal(24).astype("float32"),
    }
    nodes = [
        helper.make_node("Conv", ["data", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "odd",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 24])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("channels", [6, 8, 10, 12])
def test_channel_counts_that_do_not_divide_by_the_block(channels, tmp_path):
    """8 and 12 take a smaller block (8c, 4c); 6 and 10 leave their convs NCHW: all compile and match ORT."""
    require_cpu({"avx512f", "avx512bw", "avx512vl"}, "running the AVX-512 build")
    model = _odd_channel_model(channels)
    path = tmp_path / "odd.onnx"
    path.write_bytes(model.SerializeToString())
    run_cli("compile", str(path), "--target", "x86-avx512", "--no-tuning", "-o", str(tmp_path / "odd.so"))
    from tvmsqz.runtime import load

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
    got = load(tmp_path / "odd.so").run(x)
    assert np.abs(got - want).max() <= 1e-4 * (want.max() - want.min())
