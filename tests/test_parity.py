"""Every built-in model, compiled by the CLI, against ONNX Runtime and PyTorch on the same inputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tvmsqz.benchmark import parity, parity_inputs
from tvmsqz.images import class_names
from tvmsqz.models import get_model_info, load_onnx, torch_model
from tvmsqz.runtime import load as load_artifact

BUILTINS = [
    "squeezenet1_0",
    "squeezenet1_1",
    "squeezenet1_0_bypass",
    "squeezenet1_0_complex_bypass",
    "squeezenet1_0_dc",
    "squeezenext_1_0_23",
    "squeezenext_1_0_23v5",
    "squeezenext_2_0_23",
    "squeezenext_2_0_23v5",
]


def outputs_for(model: str, so, inputs):
    artifact = load_artifact(so)
    onnx_model, _ = load_onnx(model)
    sess = ort.InferenceSession(onnx_model.SerializeToString())
    tvm_out = np.concatenate([artifact.run(x) for x in inputs])
    ort_out = np.concatenate([sess.run(None, {"data": x})[0] for x in inputs])
    return tvm_out, ort_out


@pytest.mark.parametrize("model", BUILTINS)
def test_builtin_model_matches_onnxruntime(model, compiled):
    info = get_model_info(model)
    names, inputs = parity_inputs(info.input_shape, info.preprocess)
    assert len(inputs) >= 6 and any("chelsea" in n for n in names)  # random tensors and real photos
    tvm_out, ort_out = outputs_for(model, compiled(model), inputs)
    report = parity(tvm_out, ort_out, "onnxruntime")
    assert report["max_rel_diff"] <= 1e-4, report
    assert report["top1_agreement"] == 1.0, report
    if info.source == "torch":
        with torch.inference_mode():
            net = torch_model(model)
            torch_out = np.concatenate([net(torch.from_numpy(x)).numpy() for x in inputs])
        report = parity(tvm_out, torch_out, "torch")
        assert report["max_rel_diff"] <= 1e-4, report
        assert report["top1_agreement"] == 1.0, report
    # the outputs carry information: different inputs give clearly different scores
    spread = np.ptp(tvm_out, axis=0).max()
    assert spread > 1e-2 * (ort_out.max() - ort_out.min()), spread


def test_deep_compression_model_recognises_real_photos(compiled):
    """The ImageNet-trained model, compiled from its .net file, names what is in the photos."""
    from conftest import run_cli

    from tvmsqz.images import preprocess, sample_images
    from tvmsqz.models.deep_compression import default_net_path

    so = compiled("squeezenet1_0_dc")
    artifact = load_artifact(so)
    photos = dict(sample_images())
    names = class_names()
    expect = {
        "chelsea": {"tabby", "tiger cat", "Egyptian cat"},
        "coffee": {"espresso", "cup", "coffee mug"},
        "motorcycle": {"moped", "motor scooter"},
    }
    for photo, classes in expect.items():
        top1 = names[int(artifact.run(preprocess(photos[photo], "caffe", 227)).argmax())]
        assert top1 in classes, (photo, top1)
    # the raw .net path compiles to the same network as the built-in name
    net_so = so.with_name("dc-from-net.so")
    run_cli("compile", str(default_net_path()), "-o", str(net_so), "--no-tuning", "--fuse")
    x = preprocess(photos["chelsea"], "caffe", 227)
    np.testing.assert_allclose(load_artifact(net_so).run(x), artifact.run(x), rtol=1e-5, atol=1e-6)
