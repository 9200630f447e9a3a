"""The CLI as a user runs it: real subprocesses, real files, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
from conftest import assert_one_line_error, run_cli
from onnx import TensorProto, helper

from tvmsqz.models import load_onnx


def test_models_lists_builtins():
    rows = json.loads(run_cli("models", "--json").stdout)
    names = {r["name"] for r in rows}
    assert {
        "squeezenet1_0",
        "squeezenet1_1",
        "squeezenet1_0_bypass",
        "squeezenet1_0_complex_bypass",
        "squeezenet1_0_dc",
    } <= names
    assert "squeezenet1_1" in run_cli("models").stdout


def test_targets_lists_x86_resolved_from_host():
    rows = {r["name"]: r for r in json.loads(run_cli("targets", "--json").stdout)}
    flags = open("/proc/cpuinfo").read()
    assert rows["x86"]["resolves_to"] == ("x86-avx512" if " avx512f" in flags else "x86-avx2")
    for name in ("x86-avx512", "x86-avx2"):
        assert rows[name]["family"] == "cpu"


def test_compile_writes_artifact_and_manifest(compiled):
    so = compiled("squeezenet1_1")
    manifest = json.loads(so.with_name(so.name + ".json").read_text())
    assert manifest["model"] == "squeezenet1_1"
    assert manifest["input"] == {"name": "data", "shape": [1, 3, 224, 224], "dtype": "float32"}
    assert manifest["artifact"]["bytes"] == so.stat().st_size
    assert manifest["target"]["tvm"]["mcpu"] in ("x86-64-v4", "x86-64-v3")
    import hashlib

    assert manifest["artifact"]["sha256"] == hashlib.sha256(so.read_bytes()).hexdigest()


def test_run_prints_top5_and_writes_raw_output(compiled, tmp_path):
    so = compiled("squeezenet1_1")
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    proc = run_cli("run", str(so), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"))
    y = np.load(tmp_path / "y.npy")
    model, _ = load_onnx("squeezenet1_1")
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"data": x})[0]
    assert y.shape == (1, 1000)
    assert np.abs(y - want).max() <= 1e-4 * (want.max() - want.min())
    from tvmsqz.images import class_names

    best = int(np.argmax(y))
    assert class_names()[best] in proc.stdout
    assert proc.stdout.count("\n") > 5


FRESH = textwrap.dedent("""
    import sys
    class Block:  # the device has no compiler side: make those packages unimportable
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnx", "onnxruntime", "tvmsqz", "xgboost"):
                raise ImportError(f"{name} is not installed on the device")
    sys.meta_path.insert(0, Block())
    import numpy as np, tvm
    from tvm.runtime.vm import VirtualMachine
    lib = tvm.runtime.load_module(sys.argv[1])
    vm = VirtualMachine(lib, tvm.cpu())
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], vm["main"](tvm.runtime.tensor(x)).numpy())
    heavy = sorted(m for m in ("torch", "onnx", "onnxruntime", "tvmsqz") if m in sys.modules)
    print("HEAVY", heavy)
""")


def test_artifact_loads_in_fresh_process_with_only_tvm_runtime(compiled, tmp_path):
    """The .so is self-contained: weights inside, no tvmsqz/onnx/torch needed to run it."""
    so = compiled("squeezenet1_1")
    moved = tmp_path / "elsewhere.so"  # no manifest beside it, no source model around
    moved.write_bytes(so.read_bytes())
    x = np.random.default_rng(4).standard_normal((1, 3, 224, 224)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [sys.executable, "-I", "-c", FRESH, str(moved), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    model, _ = load_onnx("squeezenet1_1")
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"data": x})[0]
    got = np.load(tmp_path / "y.npy")
    assert np.abs(got - want).max() <= 1e-4 * (want.max() - want.min())


def _not_a_classifier(path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "not_onnx",
        "not_classifier",
        "bad_shape",
        "wrong_shape",
        "unknown_target",
        "unknown_model",
        "unwritable",
        "missing_dir",
    ],
)
def test_bad_input_gives_one_line_and_no_artifact(case, tmp_path):
    out = tmp_path / "out.so"
    args = ["compile", "squeezenet1_1", "--target", "x86", "-o", str(out), "--no-tuning"]
    needle = {
        "missing": "no such file",
        "not_onnx": "not a valid onnx",
        "not_classifier": "4-d",
        "bad_shape": "input-shape",
        "wrong_shape": "does not match",
        "unknown_target": "unknown target",
        "unknown_model": "unknown model",
        "unwritable": "not writable",
        "missing_dir": "does not exist",
    }[case]
    if case == "missing":
        args[1] = str(tmp_path / "nope.onnx")
    elif case == "not_onnx":
        (tmp_path / "junk.onnx").write_text("this is not a protobuf\n" * 20)
        args[1] = str(tmp_path / "junk.onnx")
    elif case == "not_classifier":
        _not_a_classifier(tmp_path / "relu.onnx")
        args[1] = str(tmp_path / "relu.onnx")
    elif case == "bad_shape":
        args += ["--input-shape", "data:1,3,224"]
    elif case == "wrong_shape":
        args += ["--input-shape", "data:1,4,224,224"]
    elif case == "unknown_target":
        args[3] = "pdp11"
    elif case == "unknown_model":
        args[1] = "resnet50"
    elif case == "unwritable":
        locked = tmp_path / "locked"
        locked.mkdir()
        os.chmod(locked, 0o500)
        out = locked / "out.so"
        args[5] = str(out)
        if os.geteuid() == 0:  # root ignores permission bits: use a read-only filesystem path instead
            out = __import__("pathlib").Path("/proc/tvmsqz-out.so")
            args[5] = str(out)
    elif case == "missing_dir":
        out = tmp_path / "no" / "such" / "dir" / "out.so"
        args[5] = str(out)
    proc = run_cli(*args, check=False, timeout=300)
    assert_one_line_error(proc, needle)
    assert proc.returncode == 2
    assert not out.exists()
    assert not list(tmp_path.glob("**/*.so")), "a partial artifact was left behind"


def test_run_rejects_wrong_input_shape(compiled, tmp_path):
    so = compiled("squeezenet1_1")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 100, 100), dtype="float32"))
    assert_one_line_error(run_cli("run", str(so), "--input", str(tmp_path / "x.npy"), check=False), "expects")
    assert_one_line_error(run_cli("run", str(tmp_path / "none.so"), check=False), "no such file")


def test_models_and_targets_tables_keep_whole_names_in_a_narrow_terminal():
    """Names are what users type next: a narrow (or piped, 80-column) table wraps descriptions,
    never cuts a name."""
    from tvmsqz.models import list_models
    from tvmsqz.targets import list_targets

    models = run_cli("models", env={"COLUMNS": "60"}).stdout
    assert all(m.name in models for m in list_models())
    targets = run_cli("targets", env={"COLUMNS": "60"}).stdout
    assert all(t["name"] in targets for t in list_targets())
