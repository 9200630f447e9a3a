"""Runtime-only bundles (`tvmsqz package`): build, run without TVM, refuse bad copies and inputs.

Real processes on real files: the CLI builds the bundles, the runners run as a device runs
them, x86 bundles on this host and aarch64 bundles chrooted into the TVM-less aarch64 root
(`scripts/setup_arm.sh` builds it) under qemu-user. Outputs are compared with the x86 build as
`tvmsqz run` (runtime library only) computes them. Timings under qemu-user are emulated and no
test reads them as ARM performance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, require, run_cli

from tvmsqz import bundle as B
from tvmsqz.device import emulator_problem
from tvmsqz.toolchain import elf_machine

SHAPE = (1, 3, 224, 224)
TVM_LIBS_NEVER = ("libtvm_compiler.so", "libtvm.so")


def _x(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype("float32")


def _need_cross() -> None:
    require(
        shutil.which("aarch64-linux-gnu-g++") is not None, "aarch64-linux-gnu-g++ not found: run scripts/setup_arm.sh"
    )
    problem = emulator_problem()
    require(not problem, f"{problem}: run scripts/setup_arm.sh (the aarch64 wheels are installed there)")


def _need_bare_root() -> Path:
    _need_cross()
    problem = B.bare_root_problem()
    require(not problem, f"{problem}: run scripts/setup_arm.sh")
    return B.bare_arm_root()


def assert_refusal(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A runner's refusal: exit 2, exactly one line on stderr starting `error:`, nothing crashed."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_matches(y: np.ndarray, ref: np.ndarray) -> None:
    """The issue's bar: max abs diff <= 1e-5 of the output range, top-1 equal."""
    assert y.shape == ref.shape and y.dtype == ref.dtype
    span = float(ref.max() - ref.min())
    diff = float(np.abs(y - ref).max())
    assert diff <= 1e-5 * span, f"max abs diff {diff} > 1e-5 of the range {span}"
    assert int(y.argmax()) == int(ref.argmax())


def tvm_run(so: Path, x_path: Path, out: Path) -> np.ndarray:
    """The x86 build's output as `tvmsqz run` computes it."""
    run_cli("run", str(so), "--input", str(x_path), "-o", str(out))
    return np.load(out)


@pytest.fixture(scope="module")
def reference(x86_so, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A fixed input file and the x86 build's output for it."""
    folder = tmp_path_factory.mktemp("ref")
    np.save(folder / "x.npy", _x())
    return folder / "x.npy", tvm_run(x86_so, folder / "x.npy", folder / "ref.npy")


@pytest.fixture(scope="module")
def arm_so(tmp_path_factory) -> Path:
    _need_cross()
    so = tmp_path_factory.mktemp("arm") / "sq11-arm.so"
    run_cli("compile", "squeezenet1_1", "--target", "arm", "--no-tuning", "-o", str(so))
    return so


@pytest.fixture(scope="module")
def arm_bundle(arm_so, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("armb") / "sq11-arm"
    run_cli("package", str(arm_so), "-o", str(out))
    return out


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def _runpath(path: Path) -> str | None:
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as fh:
        for section in ELFFile(fh).iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags():
                    if tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH"):
                        return tag.runpath if tag.entry.d_tag == "DT_RUNPATH" else tag.rpath
    return None


# ------------------------------------------------------------------------------ building


def check_layout(bundle: Path, arch: str, so: Path) -> dict:
    """bundle.json lists every file with its true size and sha256; the binaries are for `arch`."""
    from tvmsqz.manifest import sha256

    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["format"] == B.FORMAT and manifest["arch"] == arch
    assert manifest["input"] == {"name": "data", "shape": list(SHAPE), "dtype": "float32"}
    listed = {e["file"]: e for e in manifest["files"]}
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {"bundle.json"}
    assert set(listed) == on_disk
    for rel, entry in listed.items():
        assert entry["bytes"] == (bundle / rel).stat().st_size and entry["sha256"] == sha256(bundle / rel), rel
    assert (bundle / manifest["model"]["file"]).read_bytes() == so.read_bytes()  # the model, unchanged
    assert (bundle / f"model/{so.name}.json").read_bytes() == so.with_name(so.name + ".json").read_bytes()
    for rel in ("lib/libtvm_runtime.so", "lib/libtvm_ffi.so", B.CPP_RUNNER):
        assert elf_machine(bundle / rel) == arch, rel
    assert _runpath(bundle / B.CPP_RUNNER) == "$ORIGIN/../lib"
    assert not [p for p in bundle.rglob("*") if p.name in TVM_LIBS_NEVER]
    assert os.access(bundle / B.CPP_RUNNER, os.X_OK)
    sizes = manifest["sizes"]
    parts = {part: sum(e["bytes"] for e in manifest["files"] if e["part"] == part) for part in ("runtime", "model")}
    assert sizes["runtime_bytes"] == parts["runtime"] and sizes["model_bytes"] == parts["model"]
    assert sizes["runtime_bytes"] <= sizes["runtime_unstripped_bytes"]
    assert len((bundle / "share/labels.txt").read_text().splitlines()) == 1000
    return manifest


def test_package_x86_bundle(x86_bundle, x86_so):
    manifest = check_layout(x86_bundle, "x86_64", x86_so)
    assert (
        manifest["runtime"]["apache-tvm"]
        == json.loads(x86_so.with_name(x86_so.name + ".json").read_text())["versions"]["tvm"]
    )
    tar = x86_bundle.with_name(x86_bundle.name + ".tar.gz")
    with tarfile.open(tar) as tf:
        names = {m.name for m in tf.getmembers() if m.isfile()}
        mode = tf.getmember(f"{x86_bundle.name}/{B.CPP_RUNNER}").mode
    assert names == {f"{x86_bundle.name}/{p.relative_to(x86_bundle)}" for p in x86_bundle.rglob("*") if p.is_file()}
    assert mode & 0o111


def test_package_aarch64_bundle_from_the_aarch64_wheels(arm_bundle, arm_so):
    manifest = check_layout(arm_bundle, "aarch64", arm_so)
    assert manifest["triple"] == "aarch64-linux-gnu" and manifest["built_with"]["cc"] == "aarch64-linux-gnu-g++"
    assert "arm64-root" in manifest["runtime"]["source"]


def test_package_takes_the_runtime_from_wheel_files(arm_so, tmp_path):
    """No aarch64 root at all: the runtime comes out of apache-tvm / apache-tvm-ffi wheel files
    (rebuilt here from the root's installed files), and the compiler library stays packed."""
    import zipfile

    from tvmsqz.device import arm_root

    _need_cross()
    site, wheels = arm_root() / "opt/tvm-site", tmp_path / "wheels"
    wheels.mkdir()
    ffi_files = [str(p.relative_to(site)) for p in (site / "tvm_ffi/include").rglob("*") if p.is_file()]
    members = {
        "apache_tvm-0.27.0.post1-py3-none-manylinux_2_28_aarch64.whl": [
            "tvm/lib/libtvm_runtime.so",
            "apache_tvm-0.27.0.post1.dist-info/METADATA",
        ],
        "apache_tvm_ffi-0.1.14.post1-cp311-cp311-manylinux_2_28_aarch64.whl": [
            "tvm_ffi/lib/libtvm_ffi.so",
            "apache_tvm_ffi-0.1.14.post1.dist-info/METADATA",
            *ffi_files,
        ],
    }
    for name, files in members.items():
        with zipfile.ZipFile(wheels / name, "w") as zf:
            for rel in files:
                zf.write(site / rel, rel)
            if name.startswith("apache_tvm-"):
                zf.writestr("tvm/lib/libtvm_compiler.so", b"\x7fELF stand-in for the 240 MB compiler")
    cache = tmp_path / "cache"
    out = tmp_path / "b"
    run_cli(
        "package",
        str(arm_so),
        "-o",
        str(out),
        "--runtime-from",
        str(wheels),
        env={"TVMSQZ_CACHE": str(cache), "TVMSQZ_ARM_ROOT": str(tmp_path / "no-root")},
    )
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["runtime"]["source"].endswith(".whl"), manifest["runtime"]
    assert manifest["runtime"]["apache-tvm"] == "0.27.0.post1"
    assert elf_machine(out / "lib/libtvm_runtime.so") == elf_machine(out / "lib/libtvm_ffi.so") == "aarch64"
    assert not list(cache.rglob("libtvm_compiler.so")), "the compiler library was unpacked"


def test_package_armv7_says_there_is_no_runtime(tmp_path):
    require(shutil.which("arm-linux-gnueabihf-g++") is not None, "arm-linux-gnueabihf-g++: run scripts/setup_arm.sh")
    so = tmp_path / "sq11-armv7.so"
    run_cli("compile", "squeezenet1_1", "--target", "armv7", "--no-tuning", "-o", str(so))
    proc = run_cli("package", str(so), "-o", str(tmp_path / "b"), check=False)
    from conftest import assert_one_line_error

    assert_one_line_error(proc, "no TVM runtime for armv7a-linux-gnueabihf", "--runtime-from")
    assert not (tmp_path / "b").exists()


def test_package_refusals(x86_so, tmp_path):
    from conftest import assert_one_line_error

    work = tmp_path / "m"
    work.mkdir()
    so = work / x86_so.name
    shutil.copyfile(x86_so, so)
    proc = run_cli("package", str(so), "-o", str(tmp_path / "b1"), check=False)
    assert_one_line_error(proc, "has no manifest")
    manifest = json.loads(x86_so.with_name(x86_so.name + ".json").read_text())
    manifest["versions"]["tvm"] = "0.26.0"
    (work / (so.name + ".json")).write_text(json.dumps(manifest))
    assert_one_line_error(
        run_cli("package", str(so), "-o", str(tmp_path / "b2"), check=False), "compiled by TVM 0.26.0"
    )
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken/notes.txt").write_text("mine")
    assert_one_line_error(
        run_cli("package", str(x86_so), "-o", str(tmp_path / "taken"), check=False), "is not a bundle"
    )
    assert (tmp_path / "taken/notes.txt").read_text() == "mine"
    so.write_bytes(so.read_bytes()[:1000])
    (work / (so.name + ".json")).write_text(x86_so.with_name(x86_so.name + ".json").read_text())
    assert_one_line_error(run_cli("package", str(so), "-o", str(tmp_path / "b3"), check=False), "truncated")


# ------------------------------------------------------------------------------ x86 runners


@pytest.mark.parametrize("runner", B.RUNNERS)
def test_x86_runner_matches_the_tvm_build(runner, x86_bundle, reference, tmp_path):
    x_path, ref = reference
    y_path = tmp_path / "y.npy"
    proc = B.run_bundle(x86_bundle, ["--input", x_path, "-o", y_path, "--repeat", "3", "--json"], runner=runner)
    report = B.runner_report(proc)
    assert_matches(np.load(y_path), ref)
    assert report["runner"] == runner and report["top"][0][0] == int(ref.argmax())
    assert report["latency_ms"]["runs"] == 3 and report["latency_ms"]["min"] > 0
    assert report["peak_rss_bytes"] > 0
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("model squeezenet1_1") and "latency over 3 runs" in proc.stdout
    assert sum(1 for ln in lines if ln[:2].strip().isdigit()) == 5  # the top-5 rows, with class names
    labels = (x86_bundle / "share/labels.txt").read_text().splitlines()
    assert labels[int(ref.argmax())] in proc.stdout


def test_x86_runners_agree_on_the_seeded_input(x86_bundle, tmp_path):
    """Without --input both runners generate the same tensor (splitmix64): identical outputs."""
    outs = {}
    for runner in B.RUNNERS:
        proc = B.run_bundle(
            x86_bundle, ["-o", tmp_path / f"{runner}.npy", "--repeat", "1", "--seed", "7"], runner=runner
        )
        assert proc.returncode == 0, proc.stderr
        assert "seeded random, seed 7" in proc.stdout
        outs[runner] = np.load(tmp_path / f"{runner}.npy")
    np.testing.assert_array_equal(outs["cpp"], outs["python"])


@pytest.mark.parametrize("runner", B.RUNNERS)
def test_x86_runner_refuses_a_truncated_or_modified_model(runner, x86_bundle, tmp_path):
    bundle = _copy(x86_bundle, tmp_path / "b")
    model = bundle / json.loads((bundle / "bundle.json").read_text())["model"]["file"]
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    assert_refusal(B.run_bundle(bundle, ["--repeat", "1"], runner=runner), model.name, "truncated")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(flipped))
    assert_refusal(B.run_bundle(bundle, ["--repeat", "1"], runner=runner), "does not match the sha256")
    model.unlink()
    assert_refusal(B.run_bundle(bundle, ["--repeat", "1"], runner=runner), "is missing")
    model.write_bytes(data)  # intact again, but bundle.json no longer vouches for it
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["files"] = [e for e in manifest["files"] if e["file"] != manifest["model"]["file"]]
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    assert_refusal(B.run_bundle(bundle, ["--repeat", "1"], runner=runner), "lists no size and sha256 for the model")


@pytest.mark.parametrize("runner", B.RUNNERS)
def test_x86_runner_refuses_a_wrong_input(runner, x86_bundle, tmp_path):
    np.save(tmp_path / "small.npy", np.zeros((1, 3, 32, 32), "float32"))
    np.save(tmp_path / "f64.npy", np.zeros(SHAPE, "float64"))
    assert_refusal(
        B.run_bundle(x86_bundle, ["--input", tmp_path / "small.npy"], runner=runner),
        "has shape [1, 3, 32, 32], the model expects [1, 3, 224, 224]",
    )
    assert_refusal(B.run_bundle(x86_bundle, ["--input", tmp_path / "f64.npy"], runner=runner), "dtype")
    assert_refusal(B.run_bundle(x86_bundle, ["--repeat", "0"], runner=runner), "--repeat")


# ------------------------------------------------------------------------------ runtime-only loading


def test_tvmsqz_run_maps_the_runtime_library_only(x86_so, tmp_path):
    """A real `tvmsqz run` process: at exit, /proc/self/maps has libtvm_runtime but no compiler."""
    maps = tmp_path / "maps.json"
    code = (
        "import atexit, json, sys\n"
        "from tvmsqz.runtime import tvm_libraries_mapped\n"
        f"atexit.register(lambda: open({str(maps)!r}, 'w').write(json.dumps(tvm_libraries_mapped())))\n"
        f"sys.argv = ['tvmsqz', 'run', {str(x86_so)!r}]\n"
        "from tvmsqz.cli import main\nmain()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "top-5" in proc.stdout
    mapped = json.loads(maps.read_text())
    assert "libtvm_runtime.so" in mapped and "libtvm_ffi.so" in mapped
    assert not set(mapped) & set(TVM_LIBS_NEVER), mapped


def test_memory_probe_runtime_only_and_full(x86_so):
    """The bench's TVM memory figure is the runtime-only process; the full wheel's is beside it."""
    got = {}
    for kind in ("tvm", "tvm-full"):
        proc = subprocess.run(
            [sys.executable, "-m", "tvmsqz.memprobe", kind, str(x86_so), "1,3,224,224", "2", "2"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        got[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["tvm"]["runtime_only"] is True and "libtvm_compiler.so" not in got["tvm"]["tvm_libraries"]
    assert got["tvm-full"]["runtime_only"] is False and "libtvm_compiler.so" in got["tvm-full"]["tvm_libraries"]
    assert got["tvm"]["peak_rss_bytes"] < got["tvm-full"]["peak_rss_bytes"]


# ------------------------------------------------------------------------------ aarch64, no TVM installed


def test_bare_root_has_no_tvm():
    root = _need_bare_root()
    proc = subprocess.run(
        [
            shutil.which("chroot") or "/usr/sbin/chroot",
            str(root),
            "/usr/bin/python3",
            "-c",
            "import numpy, importlib.util as u; print(u.find_spec('tvm'), u.find_spec('tvm_ffi'))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "None"]
    assert not list(root.glob("**/libtvm*.so"))


@pytest.mark.parametrize("runner", B.RUNNERS)
def test_aarch64_runner_in_the_tvm_less_root_matches_the_x86_build(runner, arm_bundle, reference, tmp_path):
    root = _need_bare_root()
    x_path, ref = reference
    y_path = tmp_path / "y.npy"
    proc = B.run_bundle(
        arm_bundle,
        ["--input", "{work}/x.npy", "-o", "{work}/y.npy", "--repeat", "1", "--warmup", "0", "--json"],
        runner=runner,
        root=root,
        inputs={"x.npy": x_path},
        outputs={"y.npy": y_path},
        timeout=900,
    )
    report = B.runner_report(proc)
    assert report["arch"] == "aarch64" and report["runner"] == runner
    assert_matches(np.load(y_path), ref)


@pytest.mark.parametrize("runner", B.RUNNERS)
def test_aarch64_runner_refusals_in_the_tvm_less_root(runner, arm_bundle, tmp_path):
    root = _need_bare_root()
    bundle = _copy(arm_bundle, tmp_path / "b")
    np.save(tmp_path / "small.npy", np.zeros((1, 3, 32, 32), "float32"))
    assert_refusal(
        B.run_bundle(
            bundle,
            ["--input", "{work}/small.npy"],
            runner=runner,
            root=root,
            inputs={"small.npy": tmp_path / "small.npy"},
            timeout=600,
        ),
        "has shape [1, 3, 32, 32], the model expects [1, 3, 224, 224]",
    )
    model = bundle / json.loads((bundle / "bundle.json").read_text())["model"]["file"]
    model.write_bytes(model.read_bytes()[:100_000])
    assert_refusal(B.run_bundle(bundle, [], runner=runner, root=root, timeout=600), "truncated")


# ------------------------------------------------------------------------------ bench


def test_bench_reports_the_bundle_beside_onnxruntime(x86_so, tmp_path):
    """`tvmsqz bench` on a shipped artifact: runner peaks and latency, in the same run as ORT's."""
    out = tmp_path / "bench.json"
    proc = run_cli("bench", str(x86_so), "--target", "x86", "--repeat", "5", "--no-torch", "--json", str(out))
    report = json.loads(out.read_text())
    mem, bundle = report["memory"], report["bundle"]
    assert "error" not in bundle, bundle
    ort = mem["onnxruntime_peak_rss_bytes"]
    assert mem["tvm_runtime_only"] is True and "libtvm_compiler.so" not in mem["tvm_libraries"]
    assert "libtvm_compiler.so" in mem["tvm_full_libraries"]
    assert mem["tvm_peak_rss_bytes"] < mem["tvm_full_peak_rss_bytes"]
    assert mem["bundle_cpp_peak_rss_bytes"] <= 0.5 * ort, (mem["bundle_cpp_peak_rss_bytes"], ort)
    assert mem["bundle_python_peak_rss_bytes"] <= 1.0 * ort, (mem["bundle_python_peak_rss_bytes"], ort)
    assert mem["bundle_cpp_vs_onnxruntime_peak_rss"] == mem["bundle_cpp_peak_rss_bytes"] / ort
    for name in B.RUNNERS:
        entry = bundle["runners"][name]
        assert entry["top1_equal_to_tvm"] is True
        assert entry["max_rel_diff_vs_tvm"] <= 1e-5
        assert entry["latency_ms"]["rounds"] == 3 and entry["latency_ms"]["runs"] >= 5
        # the same kernels on the same threads as the runtime-only TVM process timed in the same
        # rounds: their best runs agree (medians drift with the shared host's load)
        assert 0.5 < mem[f"bundle_{name}_latency_min_vs_tvm"] < 2, bundle
    assert (
        bundle["runtime_bytes"] + bundle["model_bytes"]
        < bundle["total_bytes"]
        < 2 * (bundle["runtime_bytes"] + bundle["model_bytes"])
    )
    assert mem["bundle_runtime_bytes"] == bundle["runtime_bytes"]
    assert "bundle cpp runner" in proc.stdout


@pytest.mark.parametrize("runner", B.RUNNERS)
def test_x86_runner_output_on_a_full_disk_keeps_the_previous_file_and_leaves_no_temp(runner, x86_bundle, tmp_path):
    """`-o` on a disk too small for the output: one line, the previous array intact, no `*.tmp.PID`."""
    from conftest import require
    from test_faults import small_disk

    require(os.geteuid() == 0, "root, to mount a 1 KiB tmpfs as the full disk (CI runs as root)")
    x_path = tmp_path / "x.npy"
    np.save(x_path, _x())
    with small_disk(tmp_path, 1) as (disk, _preexec):
        out = disk / "y.npy"
        np.save(out, np.arange(3))  # a previous result, 152 bytes; the new one is 4 KB
        before = out.read_bytes()
        proc = B.run_bundle(x86_bundle, ["--input", x_path, "-o", out, "--repeat", "1"], runner=runner)
        assert_refusal(proc, str(out))
        assert out.read_bytes() == before
        assert sorted(p.name for p in disk.iterdir()) == ["y.npy"]


def test_int8_aarch64_bundle_runs_in_the_tvm_less_root(tmp_path):
    """An int8 SqueezeNet 1.1 for aarch64, packaged, run by the C++ runner in the aarch64 root
    with no TVM: same top-1 as ONNX Runtime running the same QDQ model, outputs within 5% of
    its range."""
    import onnxruntime as ort

    import tvmsqz
    from tvmsqz.images import photo, preprocess
    from tvmsqz.quant.qdq import quantize_model

    root = _need_bare_root()
    so, bundle = tmp_path / "int8-arm.so", tmp_path / "bundle"
    run_cli("compile", "squeezenet1_1", "--target", "arm", "--precision", "int8", "-o", str(so))
    run_cli("package", str(so), "-o", str(bundle))
    x = preprocess(photo("grace_hopper.jpg"), "torchvision", 224)
    np.save(tmp_path / "x.npy", x)
    y_path = tmp_path / "y.npy"
    proc = B.run_bundle(
        bundle,
        ["--input", "{work}/x.npy", "-o", "{work}/y.npy", "--repeat", "1", "--warmup", "0", "--json"],
        runner="cpp",
        root=root,
        inputs={"x.npy": tmp_path / "x.npy"},
        outputs={"y.npy": y_path},
        timeout=900,
    )
    assert B.runner_report(proc)["arch"] == "aarch64"
    model = tvmsqz.load_model("squeezenet1_1", import_now=False)
    qdq = quantize_model(model, None).onnx
    sess = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = sess.run(None, {model.onnx.graph.input[0].name: x})[0]
    ours = np.load(y_path)
    assert ours.argmax() == reference.argmax()
    assert np.abs(ours - reference).max() <= 0.05 * np.abs(reference).max()
