"""ONNX import: opset 9+, with or without shape info, initializers or Constant nodes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvmsqz.build import compile_module
from tvmsqz.errors import TvmsqzError
from tvmsqz.frontend import discover_input, import_onnx, parse_input_shape
from tvmsqz.runtime import load as load_artifact
from tvmsqz.targets import get_target


def tiny_classifier(
    opset: int, *, shapes: bool = True, constants: bool = False, legacy_inputs: bool = False, batch_dim: int | str = 1
) -> onnx.ModelProto:
    """conv -> relu -> global average pool -> flatten: a classifier-shaped graph."""
    rng = np.random.default_rng(opset)
    w = rng.standard_normal((8, 3, 3, 3)).astype("float32")
    b = rng.standard_normal(8).astype("float32")
    tensors = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    nodes = []
    if constants:
        nodes += [helper.make_node("Constant", [], [t.name], value=t) for t in tensors]
        initializers = []
    else:
        initializers = tensors
    nodes += [
        helper.make_node("Conv", ["data", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["out"]),
    ]
    dims = [batch_dim, 3, 16, 16] if shapes else None
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, dims)]
    if legacy_inputs:  # old exporters listed initializers as graph inputs too
        inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in tensors]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8] if shapes else None)]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 8
    return model


@pytest.mark.parametrize(
    "opset,constants,legacy", [(9, False, True), (11, True, False), (13, False, False), (17, True, False)]
)
def test_import_variants_match_onnxruntime(opset, constants, legacy, tmp_path):
    model = tiny_classifier(opset, constants=constants, legacy_inputs=legacy)
    mod, spec = import_onnx(model)
    assert spec.name == "data" and spec.shape == (1, 3, 16, 16)
    ex, _ = compile_module(mod, get_target("x86"), fuse=False)
    ex.export_library(str(tmp_path / "m.so"))
    x = np.random.default_rng(1).standard_normal(spec.shape).astype("float32")
    got = load_artifact(tmp_path / "m.so").run(x)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"data": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_missing_shape_needs_input_shape():
    model = tiny_classifier(13, shapes=False)
    with pytest.raises(TvmsqzError, match="--input-shape"):
        import_onnx(model)
    mod, spec = import_onnx(model, "data:1,3,16,16")
    assert spec.shape == (1, 3, 16, 16)


def test_dynamic_batch_resolved_by_input_shape():
    model = tiny_classifier(13, batch_dim="N")
    assert discover_input(model).shape == (1, 3, 16, 16)
    assert discover_input(model, "data:4,3,16,16").shape == (4, 3, 16, 16)


@pytest.mark.parametrize(
    "text,match", [("data:1,3,224", "4 positive"), ("data:a,b,c,d", "expected NAME"), ("data:1,3,0,16", "4 positive")]
)
def test_bad_input_shape_text(text, match):
    with pytest.raises(TvmsqzError, match=match):
        parse_input_shape(text)


def test_input_shape_conflicts_are_refused():
    model = tiny_classifier(13)
    with pytest.raises(TvmsqzError, match="does not match"):
        discover_input(model, "data:1,3,32,32")
    with pytest.raises(TvmsqzError, match="names 'image'"):
        discover_input(model, "image:1,3,16,16")


def test_non_image_models_are_refused():
    two = tiny_classifier(13)
    two.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1, 4]))
    with pytest.raises(TvmsqzError, match="exactly one input"):
        discover_input(two)
    flat = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "flat",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        ),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    with pytest.raises(TvmsqzError, match="4-D"):
        discover_input(flat)
