"""Hostile ONNX graphs end cleanly (issue 23): a property-based test mutates a small valid
classifier (drop an initializer, a wrong dtype, a cycle, an unknown op, a zero or huge
dimension, a dangling input) and `tvmsqz compile` on the result either writes a working
artifact or prints one `error:` line with exit 2: never a traceback, never a file left behind.

The mutants are compiled in-process first (fast, many examples: a `TvmsqzError` or a result,
nothing else), then a handful through the real CLI subprocess.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from tvmsqz.errors import TvmsqzError

pytestmark = pytest.mark.slow

IN_PROCESS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
CLI = settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

MUTATIONS = (
    "drop_initializer",
    "wrong_dtype",
    "cycle",
    "unknown_op",
    "zero_dim",
    "huge_dim",
    "dangling_input",
    "wrong_input_dtype",
    "bad_weight_shape",
)


def small_classifier() -> onnx.ModelProto:
    """data (1,3,16,16) -> Conv 3x3 (8) -> Relu -> Conv 1x1 (4) -> GlobalAveragePool -> Flatten."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["data", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["output"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def mutate(model: onnx.ModelProto, kind: str, pick: int) -> onnx.ModelProto:
    """`model` with one hostile change; `pick` chooses which node / initializer it hits."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    init = g.initializer[pick % len(g.initializer)]
    node = g.node[pick % len(g.node)]
    dims = g.input[0].type.tensor_type.shape.dim
    if kind == "drop_initializer":
        g.initializer.remove(init)
    elif kind == "wrong_dtype":
        values = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(values.astype([np.int64, np.float64, np.int8][pick % 3]), init.name))
    elif kind == "cycle":
        later = g.node[(pick % (len(g.node) - 1)) + 1]
        g.node[0].input[0] = later.output[0]
    elif kind == "unknown_op":
        node.op_type = ["FancyConv", "Frobnicate", "NonMaxSuppression2"][pick % 3]
    elif kind == "zero_dim":
        dims[pick % 4].dim_value = 0
    elif kind == "huge_dim":
        dims[2 + pick % 2].dim_value = [100_000, 2**31, 10**12][pick % 3]
    elif kind == "dangling_input":
        node.input[0] = f"nowhere_{pick}"
    elif kind == "wrong_input_dtype":
        g.input[0].type.tensor_type.elem_type = [TensorProto.INT32, TensorProto.STRING, TensorProto.BOOL][pick % 3]
    elif kind == "bad_weight_shape":
        values = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(values.reshape(-1)[: max(1, values.size - 1 - pick % 3)], init.name))
    return out


def test_the_unmutated_classifier_compiles_and_matches_onnxruntime() -> None:
    """The seed graph is valid: every failure below is the mutation's doing."""
    import onnxruntime as ort

    import tvmsqz

    model = small_classifier()
    onnx.checker.check_model(model)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"data": x})[0]
    y = tvmsqz.compile(tvmsqz.load_model(model, name="small"), "x86").run(x)
    assert np.max(np.abs(y - ref)) <= 1e-4 * np.ptp(ref)


@IN_PROCESS
@given(kind=st.sampled_from(MUTATIONS), pick=st.integers(min_value=0, max_value=50))
def test_mutants_compile_or_raise_one_line(kind: str, pick: int) -> None:
    """In-process: a mutant gives an artifact or one `TvmsqzError` line, nothing else."""
    import tvmsqz

    mutant = mutate(small_classifier(), kind, pick)
    try:
        artifact = tvmsqz.compile(tvmsqz.load_model(mutant, name="mutant"), "x86")
    except TvmsqzError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message.strip(), message
        assert "Traceback" not in message
        return
    x = np.zeros(artifact.input_shape, artifact.input_dtype)
    assert np.asarray(artifact.run(x)).shape[0] == artifact.input_shape[0]


@CLI
@given(kind=st.sampled_from(MUTATIONS), pick=st.integers(min_value=0, max_value=50))
def test_mutants_through_the_cli(kind: str, pick: int, tmp_path_factory) -> None:
    """The real CLI: exit 0 with the artifact and its manifest, or exit 2 with one `error:` line,
    no traceback, and nothing but the input file left in the folder."""
    folder = tmp_path_factory.mktemp("mutant")
    path = folder / "mutant.onnx"
    onnx.save(mutate(small_classifier(), kind, pick), path)
    out = folder / "mutant.so"
    proc = run_cli("compile", str(path), "-o", str(out), check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:
        assert out.is_file() and Path(str(out) + ".json").is_file()
        return
    assert proc.returncode == 2, (kind, pick, proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), (kind, pick, proc.stderr)
    assert sorted(p.name for p in folder.iterdir()) == ["mutant.onnx"], list(folder.iterdir())
