"""CUDA artifacts in runtime-only bundles (no GPU needed).

A CUDA bundle carries libtvm_runtime_cuda.so and the CUDA runtime it links (libcudart.so.N)
beside libtvm_runtime.so / libtvm_ffi.so, never the compiler; its Python runner drives the VM
on the GPU (measured on an H200: benchmarks/results/gpu-h200), its C++ runner refuses it in one
line. Where no NVIDIA driver is installed (CI) the Python runner refuses in one line too. The
copies the runner makes between host and device memory go through the same runtime calls for
every device, so they are checked here on the CPU device.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from tvmsqz.bundle import build_bundle
from tvmsqz.bundle.runtimes import find_runtime, needed_libs
from tvmsqz.errors import TvmsqzError
from tvmsqz.manifest import sha256

PYRUNNER = Path(__file__).resolve().parents[1] / "tvmsqz" / "bundle" / "pyrunner.py"


def _pyrunner():
    spec = importlib.util.spec_from_file_location("tvmsqz_pyrunner_under_test", PYRUNNER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cuda_bundle(compiled, tmp_path_factory):
    from tvmsqz.backends.cuda import nvcc

    require(nvcc.locate_nvcc() is not None, "no nvcc found (scripts/setup_cuda.sh installs nvidia-cuda-nvcc)")
    so = compiled("squeezenet1_1", target="cuda-sm90")
    out = tmp_path_factory.mktemp("cuda-bundle") / "sq"
    return so, build_bundle(so, out)


def test_cuda_artifact_packages_with_the_cuda_runtime(cuda_bundle):
    so, info = cuda_bundle
    root = Path(info["path"])
    assert info["device"] == "cuda" and info["target"] == "cuda-sm90"
    libs = sorted(p.name for p in (root / "lib").iterdir())
    cudart = [n for n in libs if n.startswith("libcudart.so.")]
    assert len(cudart) == 1, libs
    assert set(libs) == {"libtvm_ffi.so", "libtvm_runtime.so", "libtvm_runtime_cuda.so", cudart[0]}
    # the CUDA runtime carried is the one libtvm_runtime_cuda.so was linked against, loaded first
    assert cudart[0] in needed_libs(root / "lib" / "libtvm_runtime_cuda.so")
    assert info["runtime"]["device_libs"] == [cudart[0], "libtvm_runtime_cuda.so"]
    # runtime only: no compiler library anywhere in the bundle
    assert not any("compiler" in p.name for p in root.rglob("*"))
    listed = {e["file"]: e for e in info["files"]}
    for name in libs:
        entry = listed[f"lib/{name}"]
        assert entry["part"] == "runtime" and entry["sha256"] == sha256(root / "lib" / name)
    assert listed[info["model"]["file"]]["sha256"] == sha256(so)
    assert json.loads((root / "bundle.json").read_text())["device"] == "cuda"
    assert info["sizes"]["runtime_bytes"] < 12e6


def test_cpp_runner_refuses_a_cuda_bundle_in_one_line(cuda_bundle):
    root = Path(cuda_bundle[1]["path"])
    proc = subprocess.run([str(root / "bin" / "tvmsqz-run")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: this bundle runs on the cuda device, which the C++ runner does not drive: use python3 bin/tvmsqz-run.py"
    ]


def test_python_runner_on_a_cuda_bundle(cuda_bundle):
    """Without an NVIDIA driver: one line naming libcuda.so.1. With one (a GPU machine): it runs."""
    root = Path(cuda_bundle[1]["path"])
    proc = subprocess.run(
        [sys.executable, str(root / "bin" / "tvmsqz-run.py"), "--repeat", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if ctypes.util.find_library("cuda") is None:
        assert proc.returncode == 2, proc.stdout
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "libtvm_runtime_cuda.so" in lines[0] and "libcuda.so.1" in lines[0], lines
    else:
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["device"] == "cuda" and report["output_shape"] == [1, 1000]


def test_a_bundle_for_an_unknown_device_is_refused(cuda_bundle, tmp_path):
    so, _ = cuda_bundle
    manifest = json.loads(Path(f"{so}.json").read_text())
    manifest["target"]["family"] = "vta"
    fake = tmp_path / so.name
    fake.write_bytes(so.read_bytes())
    Path(f"{fake}.json").write_text(json.dumps(manifest))
    with pytest.raises(TvmsqzError, match="bundles carry the TVM runtime for cpu, cuda only"):
        from tvmsqz.bundle.build import bundle_target

        bundle_target(fake, manifest)


@pytest.mark.parametrize("dtype", ["float32", "int8", "int64"])
def test_runner_device_copies_round_trip(dtype, tmp_path):
    """copy_to_device / copy_tensor / sync: the calls a GPU input and output go through, with
    their Device and DataType arguments, here on the CPU device (a wrong packing is a type
    error or a wrong dtype/shape)."""
    pr = _pyrunner()
    runtime = find_runtime("x86_64", None)
    libdir = tmp_path / "lib"
    libdir.mkdir()
    for name, path in runtime.libs.items():
        (libdir / name).symlink_to(path)
    rt = pr.Runtime(str(libdir))
    model = pr.Model.__new__(pr.Model)  # the copies only; no artifact needed
    model.rt, model.device, model._keep = rt, pr.Device(pr.KDL_CPU, 0), []
    x = pr.aligned_copy((np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5))
    host = model.host_tensor(x)
    copy = pr.copy_to_device(rt, host, x.shape, dtype, pr.Device(pr.KDL_CPU, 0))
    x[...] = 0  # the copy owns its memory
    back = model._to_host(copy)  # device-agnostic: copies into a fresh host tensor
    y = model.to_numpy(back)
    assert y.dtype == np.dtype(dtype) and y.shape == (2, 3, 5)
    np.testing.assert_array_equal(y, (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5))
    with pytest.raises(pr.Refusal, match="unknown to this runner"):
        pr.Model(rt, "unused.so", device="rocm")
