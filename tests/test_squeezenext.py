"""SqueezeNext built in: the authors' architecture, seeded weights, ONNX export, batch norm
folded at import, residual adds in the conv epilogues (x86 parity is in test_parity.py)."""

from __future__ import annotations

import collections
import io
import json
import re
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import run_cli
from torch import nn

from tvmsqz.benchmark import parity, parity_inputs
from tvmsqz.models import get_model_info, load_onnx, torch_model
from tvmsqz.models.squeezenext import CONFIGS
from tvmsqz.runtime import load as load_artifact

NAMES = [f"squeezenext_{v}" for v in CONFIGS]


def kernel_names(so) -> list[str]:
    kernels = json.loads(so.with_name(so.name + ".json").read_text())["kernels"]
    return sorted(kernels["tuned"] + kernels["untuned"])


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name", NAMES)
def test_structure_follows_the_prototxt(name):
    """Counts read off the authors' prototxts: 111 convolutions, each with a batch norm, 21 blocks
    with one 3x1 and one 1x3 each, a bias-free 1000-way classifier."""
    config = CONFIGS[name.removeprefix("squeezenext_")]
    model = torch_model(name)
    cs = convs(model)
    kinds = collections.Counter(tuple(c.kernel_size) for c in cs)
    assert len(cs) == 111 and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 111
    assert kinds[(3, 1)] == kinds[(1, 3)] == 21 == sum(config.depths)
    assert kinds[(config.stem_kernel, config.stem_kernel)] == 1
    assert all(c.bias is None for c in cs) and model.fc.bias is None and model.fc.out_features == 1000
    strided = sum(c.stride == (2, 2) for c in cs)
    # stem + one shortcut per downsampling stage (+ the main path's first 1x1 in the non-v5 nets)
    assert strided == 1 + 3 * (1 if config.main_from_shortcut else 2)
    assert [len([b for b in model.blocks if b.shortcut is not None])] == [4]
    # the separable pair alternates its order from block to block
    firsts = [tuple(b.main[2][0].kernel_size) for b in model.blocks]
    assert firsts[::2] == [(3, 1)] * len(firsts[::2]) and firsts[1::2] == [(1, 3)] * len(firsts[1::2])
    widths = [b.main[-1][0].out_channels for b in model.blocks]
    assert sorted(set(widths)) == list(config.widths)


def test_parameter_counts_match_the_paper():
    """Gholami et al. (2018), table 2: 1.0-SqNxt-23 0.72M parameters, 2.0-SqNxt-23v5 3.23M."""
    count = {n: sum(p.numel() for p in torch_model(n).parameters()) for n in NAMES}  # weights + BN affine
    assert abs(count["squeezenext_1_0_23"] / 1e6 - 0.72) < 0.005  # 0.717M
    assert abs(count["squeezenext_2_0_23v5"] / 1e6 - 3.23) < 0.01  # 3.223M
    assert count["squeezenext_1_0_23"] < count["squeezenext_1_0_23v5"] < count["squeezenext_2_0_23"]


def test_seeded_weights_and_calibrated_batch_norm():
    a, b, c = (torch_model("squeezenext_1_0_23", seed=s) for s in (0, 0, 4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if k.endswith("weight"))
    bns = [m for m in a.modules() if isinstance(m, nn.BatchNorm2d)]
    # the statistics are measured, not the defaults (mean 0, var 1): each BN really rescales
    assert all(float(m.running_mean.abs().max()) > 1e-3 for m in bns)
    assert all(not torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in bns)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    torch_model("squeezenext_1_0_23v5", seed=2)
    assert torch.equal(torch.rand(3), expected)  # the global RNG is left alone


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_folds_batch_norm_and_matches_torch(name):
    model, info = load_onnx(name)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] == 111 and ops["BatchNormalization"] == 0 and ops["Add"] == 21
    assert info.input_shape == (1, 3, 227, 227) and get_model_info(name).preprocess == "caffe"
    names, inputs = parity_inputs(info.input_shape, info.preprocess)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    net = torch_model(name)
    with torch.inference_mode():
        ref = np.concatenate([net(torch.from_numpy(x)).numpy() for x in inputs])
    got = np.concatenate([sess.run(None, {"data": x})[0] for x in inputs])
    report = parity(got, ref, "torch")
    assert report["max_rel_diff"] <= 1e-4 and report["top1_agreement"] == 1.0, report
    assert np.ptp(ref, axis=0).max() > 1e-2 * np.ptp(ref)  # the input matters


def _export_with_batch_norm(name: str) -> onnx.ModelProto:
    """The same network as the built-in export, but with every BatchNormalization kept."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            torch_model(name),
            (torch.zeros(1, 3, 227, 227),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["data"],
            output_names=["output"],
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    return onnx.load_from_string(buf.getvalue())


def test_batch_norm_in_the_onnx_file_is_folded_at_import(tmp_path, compiled):
    """A file that keeps its 111 BatchNormalization nodes compiles to exactly the kernels of the
    folded export (conv + bias + ReLU [+ residual add + ReLU]) and matches ONNX Runtime on it."""
    model = _export_with_batch_norm("squeezenext_1_0_23")
    assert collections.Counter(n.op_type for n in model.graph.node)["BatchNormalization"] == 111
    path = tmp_path / "sqnxt-bn.onnx"
    onnx.save(model, path)
    so = tmp_path / "sqnxt-bn.so"
    run_cli("compile", str(path), "-o", str(so), "--no-tuning", "--preprocess", "caffe")
    with_bn, folded = kernel_names(so), kernel_names(compiled("squeezenext_1_0_23"))
    assert [k for k in with_bn if "conv2d" in k] == [k for k in folded if "conv2d" in k]
    # the rest (pool, mean, classifier, layout transforms) differ in TVM's numbering only
    assert sorted(re.sub(r"\d+", "", k) for k in with_bn) == sorted(re.sub(r"\d+", "", k) for k in folded)
    assert not [k for k in with_bn if "subtract" in k or "divide" in k or "batch_norm" in k]
    names, inputs = parity_inputs((1, 3, 227, 227), "caffe")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    artifact = load_artifact(so)
    got = np.concatenate([artifact.run(x) for x in inputs])
    ref = np.concatenate([sess.run(None, {"data": x})[0] for x in inputs])
    report = parity(got, ref, "onnxruntime")
    assert report["max_rel_diff"] <= 1e-4 and report["top1_agreement"] == 1.0, report


def test_residual_adds_live_in_the_conv_epilogues(compiled):
    """No kernel of its own for the 21 residual sums: each is in the epilogue of the conv that
    produces the block's output (conv + bias + ReLU + add + ReLU)."""
    for name in ("squeezenext_1_0_23", "squeezenext_1_0_23v5"):
        kernels = kernel_names(compiled(name))
        assert all("conv2d" in k or "add" not in k for k in kernels), kernels
        residual = [k for k in kernels if k.count("add") >= 2 and "conv2d" in k]
        assert residual, kernels


def test_fold_keeps_a_conv_with_another_use():
    """A conv whose output also leaves the graph is not folded (its BN decomposes), and both
    outputs still match ONNX Runtime."""
    import tvm
    from onnx import TensorProto, helper, numpy_helper
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from tvmsqz.passes.batchnorm import fold_batchnorm

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype("float32"), "w"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype("float32"), "g"),
        numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "b"),
        numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "m"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype("float32"), "v"),
    ]
    nodes = [
        helper.make_node("Conv", ["data", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"]),
        helper.make_node("Add", ["bn", "c"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mod = fold_batchnorm()(from_onnx(model, shape_dict={"data": [1, 3, 8, 8]}))
    ops = collections.Counter()

    def count(e) -> None:
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            ops[e.op.name] += 1

    relax.analysis.post_order_visit(mod["main"], count)
    assert ops["relax.nn.batch_norm"] == 1  # declined: the conv has a second use
    x = rng.standard_normal((1, 3, 8, 8)).astype("float32")
    exe = tvm.compile(relax.transform.DecomposeOpsForInference()(mod), target="llvm")
    got = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
