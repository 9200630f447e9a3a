"""The Python API (`tvmsqz.load_model/compile/tune/bench/load`), driven directly as a user's code would.

Every model here is small (16x16 inputs) except one SqueezeNet 1.1 compile, the README example,
so the file runs in about a minute; numbers are checked against ONNX Runtime and PyTorch.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import tvmsqz
from tvmsqz.errors import TvmsqzError

REPO = Path(__file__).resolve().parents[1]


def tiny_onnx() -> onnx.ModelProto:
    from test_tune import tiny_model

    return tiny_model()


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.head = torch.nn.Conv2d(16, 10, 1)

    def forward(self, x):
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.head(torch.relu(self.conv(x))), 1), 1)


@pytest.fixture(scope="module")
def x16() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype("float32")


def test_readme_example_squeezenet_compiles_and_matches_onnxruntime():
    """The example README gives, word for word: load, compile for x86, run."""
    model = tvmsqz.load_model("squeezenet1_1")
    artifact = tvmsqz.compile(model, "x86")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype("float32")
    y = artifact.run(x)
    assert y.shape == (1, 1000)
    ref = ort_run(model.onnx, x)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * float(np.ptp(ref)))
    assert artifact.manifest["model"] == "squeezenet1_1"
    assert artifact.manifest["kernels"]["tuned"], "the shipped database applied"


def test_onnx_proto_compiles_runs_times_profiles_and_exports(tmp_path, x16):
    proto = tiny_onnx()
    model = tvmsqz.load_model(proto, name="tiny")
    assert model.input.shape == (1, 3, 16, 16) and model.name == "tiny"
    artifact = tvmsqz.compile(model, "x86", tuning=False)
    assert isinstance(artifact, tvmsqz.Artifact)
    np.testing.assert_allclose(artifact.run(x16), ort_run(proto, x16), rtol=1e-4, atol=1e-5)
    stats = artifact.time(x16, repeat=5, warmup=1)
    assert stats["runs"] == 5 and 0 < stats["min"] <= stats["median"] <= stats["p90"]
    rows = artifact.profile(x16, repeat=2)
    assert rows and all(r["time_us"] >= 0 and r["calls"] >= 1 for r in rows)
    out = artifact.export(tmp_path / "kept.so")
    assert out.is_file() and (tmp_path / "kept.so.json").is_file()
    again = tvmsqz.load(out)
    np.testing.assert_array_equal(again.run(x16), artifact.run(x16))
    assert (
        json.loads((tmp_path / "kept.so.json").read_text())["artifact"]["sha256"]
        == again.manifest["artifact"]["sha256"]
    )


def test_onnx_path_and_output_path(tmp_path, x16):
    proto = tiny_onnx()
    src = tmp_path / "tiny.onnx"
    onnx.save(proto, src)
    artifact = tvmsqz.compile(tvmsqz.load_model(src), "x86", output=tmp_path / "t.so", tuning=False)
    assert artifact.path == tmp_path / "t.so" and (tmp_path / "t.so.json").is_file()
    np.testing.assert_allclose(artifact.run(x16), ort_run(proto, x16), rtol=1e-4, atol=1e-5)


def test_torch_module_with_example_input_matches_pytorch(x16):
    net = TinyNet().eval()
    model = tvmsqz.load_model(net, example_input=torch.zeros(1, 3, 16, 16))
    assert model.name == "TinyNet" and model.input.shape == (1, 3, 16, 16)
    artifact = tvmsqz.compile(model, "x86", tuning=False)
    with torch.no_grad():
        ref = net(torch.from_numpy(x16)).numpy()
    np.testing.assert_allclose(artifact.run(x16), ref, rtol=1e-4, atol=1e-5)


def test_torch_module_without_example_input_is_one_error():
    with pytest.raises(TvmsqzError, match="example_input"):
        tvmsqz.load_model(TinyNet())


def test_unknown_source_kinds_and_names_are_errors():
    with pytest.raises(TvmsqzError, match="cannot load a model from a int"):
        tvmsqz.load_model(3)
    with pytest.raises(TvmsqzError, match="unknown"):
        tvmsqz.load_model("squeezenet9")


def test_a_shape_without_manifest_is_checked_before_the_vm(tmp_path, x16):
    """A `.so` copied without its manifest still knows its input shape (compiled into it)."""
    artifact = tvmsqz.compile(tvmsqz.load_model(tiny_onnx()), "x86", output=tmp_path / "m.so", tuning=False)
    (tmp_path / "m.so.json").unlink()
    warned = []
    bare = tvmsqz.load(tmp_path / "m.so", warn=warned.append)
    assert warned and "no manifest" in warned[0]
    assert bare.input_shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(bare.run(x16), artifact.run(x16))
    with pytest.raises(TvmsqzError, match=r"input has shape \[1, 3, 8, 8\], the artifact expects \[1, 3, 16, 16\]"):
        bare.run(np.zeros((1, 3, 8, 8), "float32"))


def test_tune_then_compile_applies_the_database(tmp_path, x16):
    model = tvmsqz.load_model(tiny_onnx())
    summary = tvmsqz.tune(model, "x86", trials=4, output=tmp_path / "db")
    assert summary["database"] == str(tmp_path / "db") and summary["records"] >= 1
    artifact = tvmsqz.compile(model, "x86", database=tmp_path / "db")
    assert artifact.manifest["database"] == str(tmp_path / "db")
    assert artifact.manifest["kernels"]["tuned"]
    np.testing.assert_allclose(artifact.run(x16), ort_run(model.onnx, x16), rtol=1e-4, atol=1e-5)


def test_tune_passes_an_explicit_no_fuse_to_the_pipeline(monkeypatch):
    """`fuse=False` is a choice, not "unset": it reaches the tuner (it once fell out with None)."""
    from tvmsqz import flow

    seen = {}
    monkeypatch.setattr(flow.TVMPipeline, "tune", lambda self, *a, **kw: seen.update(kw) or {"database": "x"})
    tvmsqz.tune(tvmsqz.load_model(tiny_onnx()), "x86", trials=1, fuse=False)
    assert seen["fuse"] is False
    assert "cold" not in seen  # a False `cold` is the default: not passed


def test_bench_refuses_an_option_it_does_not_take():
    with pytest.raises(TvmsqzError, match="does not take --bogus"):
        tvmsqz.bench(tvmsqz.load_model(tiny_onnx()), "x86", bogus=1)


def test_resolving_a_target_file_does_not_import_tvm():
    """`tvmsqz targets` and target lookups stay cheap: TVM's target is built only by the API."""
    import subprocess
    import sys

    code = "import sys; from tvmsqz.targets import get_target; get_target('x86'); print('tvm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_serving_on_loopback_with_a_remote_tracker_says_how_to_reach_it():
    from tvmsqz.device.rpc import loopback_tracker_note

    note = loopback_tracker_note("192.0.2.1:9190", "127.0.0.1", None)
    assert note.startswith("warning:") and "--custom-addr 127.0.0.1" in note and "\n" not in note
    assert loopback_tracker_note("127.0.0.1:9190", "127.0.0.1", None) is None  # a local tracker: fine
    assert loopback_tracker_note("192.0.2.1:9190", "127.0.0.1", "127.0.0.1") is None  # tunnelled
    assert loopback_tracker_note("192.0.2.1:9190", "0.0.0.0", None) is None  # reachable (and warned about)


def test_tune_refuses_a_bad_space_and_duration():
    model = tvmsqz.load_model(tiny_onnx())
    with pytest.raises(TvmsqzError, match="space"):
        tvmsqz.tune(model, "x86", trials=1, space="fancy")
    with pytest.raises(TvmsqzError):
        tvmsqz.tune(model, "x86", time_budget="soon")


def test_cross_compiled_artifact_is_returned_unloaded(tmp_path):
    """An ARM artifact compiles and exports here, and says why it cannot run here."""
    from conftest import require

    from tvmsqz.toolchain import cross_compiler

    require(cross_compiler("aarch64-linux-gnu-g++") is not None, "aarch64 cross compiler (scripts/setup_arm.sh)")
    artifact = tvmsqz.compile(tvmsqz.load_model(tiny_onnx()), "arm", tuning=False)
    assert isinstance(artifact, tvmsqz.Artifact) and artifact.input_shape == (1, 3, 16, 16)
    assert artifact.manifest["target"]["name"] == "arm"
    with pytest.raises(TvmsqzError, match="does not run on this host"):
        artifact.run(np.zeros((1, 3, 16, 16), "float32"))
    out = artifact.export(tmp_path / "arm.so")
    assert out.is_file() and (tmp_path / "arm.so.json").is_file()


def test_bench_report_object(tmp_path):
    """`tvmsqz.bench` returns a BenchReport whose JSON is the CLI's report."""
    report = tvmsqz.bench(tvmsqz.load_model(tiny_onnx()), "x86", repeat=3, tuning=False, with_torch=False)
    data = json.loads(report.to_json())
    assert data["model"] and data["latency_ms"]["tvm"]["runs"] == 3
    assert data["parity"]["max_rel_diff"] < 1e-4 and data["parity"]["top1_agreement"] == 1.0
    assert report["target"] == data["target"]


def test_cli_imports_only_the_api():
    """The CLI is a thin layer: every tvmsqz module it imports is the API or a leaf helper."""
    allowed = {"tvmsqz.api", "tvmsqz.errors", "tvmsqz.quiet", "tvmsqz.spec", "tvmsqz.fsutil", "tvmsqz.version"}
    tree = ast.parse((REPO / "tvmsqz" / "cli.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [f"tvmsqz.{node.module}" if node.module else f"tvmsqz.{a.name}" for a in node.names]
            imported.update(names)
    assert imported and imported <= allowed, imported - allowed


def test_package_imports_nothing_heavy_until_used():
    import subprocess
    import sys

    code = (
        "import sys, tvmsqz; assert tvmsqz.__version__; "
        "print(sorted(m for m in ('tvm', 'onnx', 'torch', 'tvmsqz.api') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
