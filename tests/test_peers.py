"""The peer runtimes of `tvmsqz bench`: each in its own process, with parity to ONNX Runtime.

The peers OpenVINO and ncnn (with its converter pnnx) are the optional extra `tvmsqz[peers]`,
installed in CI by the test extra; a bench without them must say they were skipped and why.
That case is simulated for real: the bench runs with a `sitecustomize` whose import hook makes
`openvino`, `ncnn` and `pnnx` unimportable in the bench process and every worker it starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, require, run_cli

from tvmsqz import peers
from tvmsqz.spec import host_cores, host_cpu_flags

OPTIONAL = ("openvino", "ncnn")


def _require_peers() -> None:
    for name in OPTIONAL:
        reason = peers.module(name).available()
        require(reason is None, f"{reason} (the `peers` extra)")


def _tiny_onnx(path: Path) -> Path:
    """Conv 3->8 (3x3) + Relu + global average pool + flatten on 1x3x16x16: seconds in every runtime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype("float32"), "w")
    bias = numpy_helper.from_array(rng.standard_normal(8).astype("float32"), "b")
    nodes = [
        helper.make_node("Conv", ["data", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8])],
        [weight, bias],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _worker(runtime: str, model: str, inputs: Path, out: Path, threads: int = 1, repeat: int = 3):
    env = {**os.environ, **peers.module(runtime).environment(threads)}
    return subprocess.run(
        [sys.executable, "-m", "tvmsqz.peers.worker", runtime, model, str(inputs), str(threads), str(repeat), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


@pytest.mark.parametrize("runtime", ["openvino", "ncnn", "openvino_default"])
def test_each_peer_worker_matches_onnxruntime_on_a_tiny_model(runtime, tmp_path):
    """Every peer module through its worker: stats that hang together, outputs equal to ORT's."""
    reason = peers.module(runtime).available()
    require(reason is None, f"{reason} (the `peers` extra)")
    sources = peers.Sources(onnx=_tiny_onnx(tmp_path / "tiny.onnx"), workdir=tmp_path, input_shape=(1, 3, 16, 16))
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.random.default_rng(0).standard_normal((3, 1, 3, 16, 16)).astype("float32"))
    results = {}
    for name in ("onnxruntime", runtime):
        out = tmp_path / f"{name}.json"
        proc = _worker(name, peers.module(name).prepare(sources), inputs, out)
        assert proc.returncode == 0, proc.stderr
        results[name] = json.loads(out.read_text())
        results[name]["outputs"] = np.load(out.with_suffix(".npy"))
        stats = results[name]["latency"]
        assert stats["runs"] == 3 and 0 < stats["min"] <= stats["median"] <= stats["p90"], stats
    ours, ref = results[runtime]["outputs"], results["onnxruntime"]["outputs"]
    assert ours.shape == ref.shape == (3, 8)
    tolerance = 5e-2 if runtime in peers.REDUCED_PRECISION else 1e-5
    assert np.abs(ours - ref).max() <= tolerance * (ref.max() - ref.min())
    info = results[runtime]["info"]
    assert info["version"] and info["precision"] in ("f32", "bf16", "f16")
    if runtime != "openvino_default":
        assert info["precision"] == "f32"


def test_ncnn_conversion_is_fp32_and_done_once_per_bench_folder(tmp_path):
    reason = peers.module("ncnn").available()
    require(reason is None, f"{reason} (the `peers` extra)")
    sources = peers.Sources(onnx=_tiny_onnx(tmp_path / "tiny.onnx"), workdir=tmp_path, input_shape=(1, 3, 16, 16))
    param = Path(peers.module("ncnn").prepare(sources))
    assert param.parent == tmp_path / "ncnn" and param.name == "model.ncnn.param"
    assert param.with_suffix(".bin").stat().st_size >= 4 * (8 * 3 * 3 * 3 + 8)  # fp32 weights, not pnnx's fp16
    stamp = param.stat().st_mtime_ns
    assert peers.module("ncnn").prepare(sources) == str(param) and param.stat().st_mtime_ns == stamp


def test_a_failing_worker_says_why_in_one_line(tmp_path):
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.zeros((1, 1, 3, 16, 16), "float32"))
    proc = _worker("onnxruntime", str(tmp_path / "missing.onnx"), inputs, tmp_path / "out.json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: onnxruntime:"), proc.stderr
    assert not (tmp_path / "out.json").exists()


def test_bench_times_every_installed_peer_in_its_own_process_with_parity_to_ort(tmp_path):
    _require_peers()
    out = tmp_path / "bench.json"
    proc = run_cli("bench", "squeezenet1_1", "--repeat", "5", "--no-tuning", "--fuse", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["methodology"] == "each runtime in its own fresh process, one after the other"
    assert report["peers_skipped"] == {}, report["peers_skipped"]
    fp32 = ["tvm", "onnxruntime", "openvino", "ncnn", "torch"]
    assert list(report["latency_ms"]) == fp32
    assert list(report["latency_ms_1thread"]) == fp32 if host_cores() > 1 else report["latency_ms"]
    for latency in (report["latency_ms"], report["latency_ms_1thread"]):
        for name, stats in latency.items():
            assert stats["runs"] == 5 and 0 < stats["min"] <= stats["median"] <= stats["p90"], (name, stats)

    par = report["parity"]
    for name in ("openvino", "ncnn"):  # fp32 peers: the same numbers as ORT up to float rounding
        assert par[name]["runtime"] == name and par[name]["reference"] == "onnxruntime"
        assert par[name]["max_rel_diff"] <= 1e-4 and par[name]["top1_agreement"] == 1.0, par[name]
        assert par[name]["inputs"] == par["inputs"] >= 6
        assert report["peer_info"][name]["precision"] == "f32"
    assert par["max_rel_diff"] <= 1e-4 and par["top1_agreement"] == 1.0  # TVM vs ORT, as before

    lat = report["latency_ms"]
    fastest = report["fastest_peer"]
    assert fastest in ("onnxruntime", "openvino", "ncnn")  # torch and reduced precision are not in the race
    assert lat[fastest]["median"] == min(lat[n]["median"] for n in ("onnxruntime", "openvino", "ncnn"))
    assert report["ratio_vs_fastest_peer"] == pytest.approx(lat["tvm"]["median"] / lat[fastest]["median"])
    one = report["latency_ms_1thread"]
    assert report["ratio_vs_onnxruntime_1thread"] == pytest.approx(one["tvm"]["median"] / one["onnxruntime"]["median"])

    ref = report["reduced_precision"]["openvino_default"]
    bf16_host = bool({"avx512_bf16", "amx_bf16"} & host_cpu_flags())
    assert ref["precision"] == ("bf16" if bf16_host else "f32")  # what OpenVINO says it used
    assert ref["ratio"] == pytest.approx(lat["tvm"]["median"] / ref["latency_ms"]["median"])
    assert "openvino_default" not in lat and par["openvino_default"]["top1_agreement"] >= 5 / 9
    assert report["versions"]["openvino"] and report["versions"]["ncnn"] and report["versions"]["pnnx"]
    text = " ".join(proc.stdout.split())  # rich wraps lines at the terminal's width
    assert "reduced precision (not an fp32 peer): openvino_default" in text
    assert "ncnn" in text and "fastest fp32 peer" in text


def test_bench_without_the_peers_installed_says_which_were_skipped_and_why(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        textwrap.dedent('''
        import sys

        class _NotInstalled:
            """As if `pip uninstall openvino ncnn pnnx` had run: every import of them fails."""
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("openvino", "ncnn", "pnnx"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, _NotInstalled())
    ''')
    )
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}
    check = subprocess.run(
        [sys.executable, "-c", "import openvino"], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert check.returncode != 0 and "No module named 'openvino'" in check.stderr  # the simulation is real

    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench", "squeezenet1_1", "--repeat", "3", "--no-tuning", "--no-torch", "--fuse", "--json", str(out), env=env
    )
    report = json.loads(out.read_text())
    skipped = report["peers_skipped"]
    assert set(skipped) == {"openvino", "openvino_default", "ncnn", "torch"}, skipped
    for name, package in (("openvino", "openvino"), ("openvino_default", "openvino"), ("ncnn", "ncnn")):
        assert package in skipped[name] and "tvmsqz[peers]" in skipped[name], skipped[name]
    assert "--no-torch" in skipped["torch"]
    assert list(report["latency_ms"]) == ["tvm", "onnxruntime"]
    assert report["reduced_precision"] == {} and report["fastest_peer"] == "onnxruntime"
    assert report["ratio_vs_fastest_peer"] == report["ratio_vs_onnxruntime"]
    assert not {"openvino", "ncnn", "openvino_default"} & set(report["parity"])
    assert "openvino" not in report["versions"] and "ncnn" not in report["versions"]
    text = " ".join(proc.stdout.split())  # rich wraps lines at the terminal's width
    assert "skipped openvino:" in text and "skipped ncnn:" in text


def test_sigterm_during_a_worker_ends_the_worker_too(tmp_path):
    """The CLI leaves through `os._exit` on SIGTERM; the worker it was timing must not run on."""
    import signal
    import time

    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-m", "tvmsqz", "bench", "squeezenet1_1", "--no-tuning", "--no-torch", "--repeat", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        bench, workers = psutil.Process(proc.pid), []
        deadline = time.monotonic() + 300
        while not workers and time.monotonic() < deadline and proc.poll() is None:
            for child in bench.children(recursive=True):
                try:
                    if "tvmsqz.peers.worker" in child.cmdline():
                        workers.append(child)
                except psutil.Error:  # a child that ended meanwhile
                    pass
            time.sleep(0.1)
        assert workers, "the bench never started a worker"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 143, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, [w.pid for w in alive]
    assert not list(tmp_path.glob("tvmsqz-bench-*"))
