"""Faults and bad input, as a careless or hostile user meets them (docs/reliability.md has the catalogue).

Every case runs the real CLI as a subprocess and asserts: the exit code, one `error:` line on
stderr, no traceback, the previous files intact and nothing left behind. Disk-full cases use a
small tmpfs when the tests run as root (CI does), a size limit on files (RLIMIT_FSIZE) otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO, assert_one_line_error, run_cli
from onnx import TensorProto, helper

# ------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def small_disk(tmp_path: Path, size_kib: int):
    """(folder, preexec_fn): a folder where writes fail past `size_kib` KiB.

    As root: a tmpfs of that size mounted on the folder (ENOSPC, the real thing). Otherwise the
    child process gets RLIMIT_FSIZE (EFBIG on every file it grows past the limit)."""
    folder = tmp_path / f"disk{size_kib}k"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)], capture_output=True
            ).returncode
            == 0
        )
    limit = size_kib * 1024

    def preexec() -> None:
        if not mounted:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    try:
        yield folder, preexec
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def cli(*args: str, preexec=None, env: dict | None = None, timeout: int = 900, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "tvmsqz", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
        env={**os.environ, **(env or {})},
        cwd=cwd or REPO,
    )


def leftovers(folder: Path) -> list[str]:
    """Temp files our atomic writes would leave: dot-files and .tmp names."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults")
    out = folder / "m.so"
    run_cli("compile", "squeezenet1_1", "--no-tuning", "-o", str(out))
    return out


@pytest.fixture
def x_npy(tmp_path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype("float32"))
    return path


def copy_artifact(artifact: Path, folder: Path, name: str = "a.so") -> Path:
    dest = folder / name
    shutil.copy(artifact, dest)
    shutil.copy(artifact.with_name(artifact.name + ".json"), dest.with_name(name + ".json"))
    return dest


# ------------------------------------------------------------------------ 2. usage errors


@pytest.mark.parametrize(
    "args",
    [
        ("tune", "squeezenet1_1", "--trials", "0", "-o", "x"),
        ("tune", "squeezenet1_1", "--trials", "-5", "-o", "x"),
        ("compile", "x", "--bogus"),
        ("compile",),
        (),
        ("device",),
        ("run",),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, tmp_path):
    proc = cli(*args, cwd=tmp_path)
    assert_one_line_error(proc)
    assert proc.returncode == 2
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------ 3. outputs never alias inputs


def test_compile_refuses_to_overwrite_its_onnx_input(tmp_path):
    from tvmsqz.models import load_onnx

    model, _ = load_onnx("squeezenet1_1")
    src = tmp_path / "s.onnx"
    src.write_bytes(model.SerializeToString())
    before = src.read_bytes()
    proc = cli("compile", str(src), "-o", str(src))
    assert_one_line_error(proc, "also an input")
    assert src.read_bytes() == before


def test_run_output_never_replaces_the_input_or_artifact(artifact, tmp_path, x_npy):
    so = copy_artifact(artifact, tmp_path)
    before = x_npy.read_bytes()
    assert_one_line_error(cli("run", str(so), "--input", str(x_npy), "-o", str(x_npy)), "also an input")
    assert x_npy.read_bytes() == before
    assert_one_line_error(cli("run", str(so), "--input", str(x_npy), "-o", str(so)), "also an input")
    assert so.stat().st_size == artifact.stat().st_size


# --------------------------------------------------- 4. truncated or edited artifacts


def test_truncated_artifact_is_refused_not_sigbus(artifact, tmp_path, x_npy):
    so = copy_artifact(artifact, tmp_path)
    so.write_bytes(artifact.read_bytes()[:2_000_000])
    proc = cli("run", str(so), "--input", str(x_npy))
    assert_one_line_error(proc, "truncated")
    assert proc.returncode == 2


def test_truncated_artifact_without_manifest_is_refused(artifact, tmp_path, x_npy):
    so = tmp_path / "t.so"
    so.write_bytes(artifact.read_bytes()[:2_000_000])
    proc = cli("run", str(so), "--input", str(x_npy))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "truncated" in proc.stderr


def test_edited_sha256_is_refused(artifact, tmp_path, x_npy):
    so = copy_artifact(artifact, tmp_path)
    manifest_file = so.with_name(so.name + ".json")
    manifest = json.loads(manifest_file.read_text())
    manifest["artifact"]["sha256"] = "0" * 64
    manifest_file.write_text(json.dumps(manifest))
    assert_one_line_error(cli("run", str(so), "--input", str(x_npy)), "sha256")


def test_manifestless_artifact_runs_with_a_warning_and_checks_shape(artifact, tmp_path, x_npy):
    so = tmp_path / "bare.so"
    shutil.copy(artifact, so)
    proc = cli("run", str(so), "--input", str(x_npy))
    assert proc.returncode == 0, proc.stderr
    assert "warning:" in proc.stderr and "no manifest" in proc.stderr
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 3, 227, 227), "float32"))
    proc = cli("run", str(so), "--input", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "error: input has shape [1, 3, 227, 227], the artifact expects [1, 3, 224, 224]"
    )


# --------------------------------------------------------------- 5. writes on a full disk


def test_compile_on_a_full_disk_keeps_the_previous_artifact(tmp_path):
    with small_disk(tmp_path, 1024) as (disk, preexec):
        old = disk / "m.so"
        old.write_bytes(b"previous artifact")
        proc = cli("compile", "squeezenet1_1", "--no-tuning", "-o", str(old), preexec=preexec)
        assert_one_line_error(proc, str(old))
        assert old.read_bytes() == b"previous artifact"
        assert not (disk / "m.so.json").exists()
        assert leftovers(disk) == []


def test_run_output_on_a_full_disk_leaves_no_partial_npy(artifact, tmp_path, x_npy):
    so = copy_artifact(artifact, tmp_path)
    with small_disk(tmp_path, 1) as (disk, preexec):
        out = disk / "y.npy"
        np.save(out, np.arange(3))  # a previous result, 152 bytes
        before = out.read_bytes()
        big = tmp_path / "big.npy"  # an output larger than the disk: batch 1000 classes float32 = 4 KB
        proc = cli("run", str(so), "--input", str(x_npy), "-o", str(out), preexec=preexec)
        assert_one_line_error(proc, str(out))
        assert out.read_bytes() == before
        assert leftovers(disk) == []
        assert not big.exists()


def test_bench_json_on_a_full_disk_keeps_the_previous_report(tmp_path):
    with small_disk(tmp_path, 8) as (disk, preexec):
        report = disk / "bench.json"
        report.write_text('{"previous": true}\n')
        proc = cli(
            "bench",
            "squeezenet1_1",
            "--no-tuning",
            "--no-torch",
            "--repeat",
            "3",
            "--json",
            str(report),
            preexec=preexec,
            env={"TMPDIR": str(tmp_path)},
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1, proc.stderr
        assert (
            proc.stderr.strip().splitlines()[-1] == f"error: cannot write {report}: no space left on device"
            or "file too large" in proc.stderr
        )
        assert json.loads(report.read_text()) == {"previous": True}
        assert leftovers(disk) == []
    assert not list(tmp_path.glob("tvmsqz-bench-*"))


# ------------------------------------------------------------------- 7. edited manifests


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda m: m["input"].__setitem__("shape", [1, 3, 227]), "input.shape"),
        (lambda m: m["input"].__setitem__("dtype", "bogus"), "input.dtype"),
        (lambda m: m["target"].__setitem__("family", "quantum"), "target.family"),
        (lambda m: m.__setitem__("input", "x"), "input"),
    ],
)
def test_edited_manifest_is_one_line(artifact, tmp_path, x_npy, edit, needle):
    so = copy_artifact(artifact, tmp_path)
    manifest_file = so.with_name(so.name + ".json")
    manifest = json.loads(manifest_file.read_text())
    edit(manifest)
    manifest_file.write_text(json.dumps(manifest))
    assert_one_line_error(cli("run", str(so), "--input", str(x_npy)), needle)


def test_manifest_with_another_input_shape_is_checked(artifact, tmp_path, x_npy):
    so = copy_artifact(artifact, tmp_path)
    manifest_file = so.with_name(so.name + ".json")
    manifest = json.loads(manifest_file.read_text())
    manifest["input"]["shape"] = [1, 3, 227, 227]
    manifest_file.write_text(json.dumps(manifest))
    assert_one_line_error(cli("run", str(so), "--input", str(x_npy)), "expects [1, 3, 227, 227]")


# -------------------------------------------------------------- 8. models that are refused


def test_non_classifier_onnx_is_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 224, 224])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add", [x], [y])
    path = tmp_path / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    proc = cli("compile", str(path), "-o", str(tmp_path / "add.so"))
    assert_one_line_error(proc, "image classifier")
    assert not (tmp_path / "add.so").exists()


def test_absurd_input_shape_on_a_dynamic_model_is_refused(tmp_path):
    from tvmsqz.models import load_onnx

    model, _ = load_onnx("squeezenet1_1")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    path = tmp_path / "dyn.onnx"
    path.write_bytes(model.SerializeToString())
    proc = cli("compile", str(path), "--input-shape", "data:1,3,100000,100000", "-o", str(tmp_path / "d.so"))
    assert_one_line_error(proc, "outside")
    proc = cli("compile", "squeezenet1_1", "--no-tuning", "--max-memory", "1M", "-o", str(tmp_path / "d.so"))
    assert_one_line_error(proc, "intermediate memory", "--max-memory")
    assert not list(tmp_path.glob("d.so*"))


# ----------------------------------------------------------------------- 9. input values


def test_nonfinite_and_foreign_dtype_inputs_are_refused(artifact, tmp_path, x_npy):
    so = copy_artifact(artifact, tmp_path)
    x = np.load(x_npy)
    x[0, 0, 0, 0] = np.inf
    np.save(tmp_path / "inf.npy", x)
    assert_one_line_error(cli("run", str(so), "--input", str(tmp_path / "inf.npy")), "NaN/inf", "--allow-nonfinite")
    assert cli("run", str(so), "--input", str(tmp_path / "inf.npy"), "--allow-nonfinite").returncode == 0
    for dtype in ("float64", "int8"):
        np.save(tmp_path / f"{dtype}.npy", np.load(x_npy).astype(dtype))
        assert_one_line_error(cli("run", str(so), "--input", str(tmp_path / f"{dtype}.npy")), dtype, "--cast")
    assert cli("run", str(so), "--input", str(tmp_path / "float64.npy"), "--cast").returncode == 0
    np.save(tmp_path / "c.npy", np.load(x_npy).astype("complex64"))
    assert_one_line_error(cli("run", str(so), "--input", str(tmp_path / "c.npy"), "--cast"), "complex64")


# ------------------------------------------------------------------------ 10. the smaller ones


def test_target_file_without_family_is_one_line(tmp_path):
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps({"name": "evil", "tvm": {"kind": "llvm"}}))
    assert_one_line_error(
        cli("compile", "squeezenet1_1", "--target", str(evil), "-o", str(tmp_path / "e.so")), str(evil), "family"
    )


def test_run_output_name_is_exactly_what_was_asked(artifact, tmp_path, x_npy):
    so = copy_artifact(artifact, tmp_path)
    proc = cli("run", str(so), "--input", str(x_npy), "-o", str(tmp_path / "yout"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "yout").is_file() and not (tmp_path / "yout.npy").exists()
    assert np.load(tmp_path / "yout").shape == (1, 1000)


def test_artifacts_are_not_executable_files(artifact):
    assert artifact.stat().st_mode & 0o777 == 0o644


def test_bench_checks_the_tracker_before_compiling(tmp_path):
    start = time.monotonic()
    proc = cli("bench", "squeezenet1_1", "--target", "arm", "--rpc-tracker", "127.0.0.1:1", "--rpc-key", "nobody")
    assert_one_line_error(proc, "127.0.0.1:1")
    assert time.monotonic() - start < 20


def test_sigterm_during_bench_removes_its_temp_folder(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvmsqz", "bench", "squeezenet1_1", "--no-tuning", "--no-torch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("tvmsqz-bench-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert list(tmp_path.glob("tvmsqz-bench-*")), "the bench never made its temp folder"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "error: terminated"
    assert not list(tmp_path.glob("tvmsqz-bench-*"))


def test_tune_with_an_unregistered_rpc_key_leaves_no_folder(tmp_path):
    from tvmsqz.device.procs import stop
    from tvmsqz.device.rpc import start_tracker

    tracker = start_tracker("127.0.0.1", None, log_dir=tmp_path)
    try:
        out = tmp_path / "new-db"
        proc = cli(
            "tune",
            "squeezenet1_1",
            "--target",
            "arm",
            "--rpc-tracker",
            tracker.address,
            "--rpc-key",
            "nobody-here",
            "--trials",
            "4",
            "-o",
            str(out),
        )
        assert_one_line_error(proc, "nobody-here")
        assert not out.exists()
    finally:
        stop(tracker)


def test_sigterm_during_tune_leaves_a_valid_database_and_no_build_folder(tmp_path):
    from tvmsqz.database import check_database
    from tvmsqz.targets import get_target

    db = tmp_path / "db"
    env = {**os.environ, "TMPDIR": str(tmp_path), "TVMSQZ_DATA": str(tmp_path / "user")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvmsqz", "tune", "squeezenet1_1", "--trials", "200", "--cold", "-o", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    record_file = db / "database_tuning_record.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if record_file.is_file() and record_file.stat().st_size > 0:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "error: terminated"
    assert check_database(db, get_target("x86")) == len(record_file.read_text().splitlines()) > 0
    assert not list(tmp_path.glob("tvmsqz-build-*"))


# ------------------------------------------------- issue 26: hostile input outside the catalogue


def _constant_of_shape_model(path: Path, elements: int) -> None:
    shape = onnx.numpy_helper.from_array(np.array([elements], dtype=np.int64), "shp")
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
    nodes = [
        helper.make_node("ConstantOfShape", ["shp"], ["big"], value=value),
        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
        helper.make_node("GlobalAveragePool", ["data"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Add", ["f", "s"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_constant_of_shape_of_36g_elements_is_refused_at_import(tmp_path):
    model = tmp_path / "cos.onnx"
    _constant_of_shape_model(model, 36_000_000_000)
    proc = cli("compile", str(model), "--no-tuning", "-o", str(tmp_path / "o.so"))
    assert_one_line_error(proc, "ConstantOfShape", "too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cos.onnx"]


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda t: t["tvm"].__setitem__("num-cores", 10**30), "num-cores"),
        (lambda t: t["tvm"].__setitem__("host", {"kind": "bogus"}), "tvm.host.kind"),
    ],
)
def test_hostile_target_files_are_one_line(tmp_path, edit, needle):
    target = json.loads((REPO / "targets" / "x86-avx2.json").read_text())
    target["name"] = "hostile"
    edit(target)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(target))
    proc = cli("compile", "squeezenet1_1", "--target", str(path), "--no-tuning", "-o", str(tmp_path / "o.so"))
    assert_one_line_error(proc, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


@pytest.mark.parametrize("batch", ["99999999999999999999", "100000", "0"])
def test_absurd_batch_is_one_line(tmp_path, batch):
    proc = cli("compile", "squeezenet1_1", "--batch", batch, "-o", str(tmp_path / "o.so"))
    assert_one_line_error(proc, "--batch")
    assert not list(tmp_path.iterdir())


GOOD_PROTOTXT = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 227\ninput_dim: 227\n'


@pytest.mark.parametrize(
    "body,needle",
    [
        (
            'layer { name: "c" type: "Convolution" bottom: "data" convolution_param { num_output: 8 kernel_size: 3 } }',
            "exactly one top",
        ),
        (
            'layer { name: "c" type: "Convolution" top: "c" convolution_param { num_output: 8 kernel_size: 3 } }',
            "exactly one top",
        ),
        ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX } }', "kernel_size"),
        (
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
            "convolution_param { num_output: 8 kernel_size: 200000 } }",
            "kernel_size 200000",
        ),
        ("a { " * 5000 + "}" * 5000, "nested deeper"),
    ],
)
def test_hostile_prototxt_beside_a_net_is_one_line(tmp_path, body, needle):
    (tmp_path / "m.net").write_bytes(b"\0" * 64)
    (tmp_path / "SqueezeNet_deploy.prototxt").write_text(GOOD_PROTOTXT + body)
    proc = cli("compile", str(tmp_path / "m.net"), "--no-tuning", "-o", str(tmp_path / "o.so"))
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "o.so").exists()


def test_prototxt_input_dim_that_is_a_word_is_one_line(tmp_path):
    (tmp_path / "m.net").write_bytes(b"\0" * 64)
    (tmp_path / "SqueezeNet_deploy.prototxt").write_text(GOOD_PROTOTXT.replace("input_dim: 3", "input_dim: foo"))
    assert_one_line_error(cli("compile", str(tmp_path / "m.net"), "-o", str(tmp_path / "o.so")), "'foo'")


def test_corrupt_user_database_is_passed_over_not_fatal(artifact, tmp_path):
    """Random bytes in the user's own tuning output: compile still works, saying it passed it over."""
    data = tmp_path / "data"
    user = data / "schedules" / "x86-avx512"
    for name in ("x86-avx512", "x86-avx2"):
        folder = data / "schedules" / name
        folder.mkdir(parents=True)
        (folder / "database_workload.json").write_bytes(b"\xff\xfe random \x00 bytes")
        (folder / "database_tuning_record.json").write_bytes(b"\xff\xfe random")
    proc = cli("compile", "squeezenet1_1", "-o", str(tmp_path / "o.so"), env={"TVMSQZ_DATA": str(data)})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "passed over your tuning output" in proc.stderr
    assert "not UTF-8" in proc.stderr
    assert user.is_dir()
    bad = cli("compile", "squeezenet1_1", "--database", str(user), "-o", str(tmp_path / "p.so"))
    assert_one_line_error(bad, "corrupt")


def test_full_tmpdir_during_compile_is_harmless(tmp_path):
    """A full system temp folder: TVM's export works in a private folder beside the output, so the
    compile succeeds (or fails in one line) and leaves nothing in either place."""
    with small_disk(tmp_path, 64) as (tmpdir, preexec):
        (tmpdir / "filler").write_bytes(b"\0" * 60 * 1024) if os.geteuid() == 0 else None
        out = tmp_path / "out"
        out.mkdir()
        proc = cli("compile", "squeezenet1_1", "--no-tuning", "-o", str(out / "m.so"), env={"TMPDIR": str(tmpdir)})
        if proc.returncode != 0:
            assert_one_line_error(proc)
        assert leftovers(out) == []
        assert sorted(p.name for p in tmpdir.iterdir()) in ([], ["filler"])


def test_sigterm_during_export_prints_its_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvmsqz", "compile", "squeezenet1_1", "--no-tuning", "-o", str(out / "m.so")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    deadline = time.time() + 600
    while time.time() < deadline and not list(out.glob(".tvmsqz-work-*")):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert list(out.glob(".tvmsqz-work-*")), "the export never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == "error: terminated", err
    assert sorted(p.name for p in out.iterdir()) == []
    assert not list(tmp_path.glob("tmp*"))


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "uint8"])
def test_run_random_input_uses_the_models_dtype(dtype):
    """`run` without --input builds its seeded input in the manifest's dtype (no --cast needed)."""
    from tvmsqz.cli import _random_input

    x = _random_input([1, 3, 8, 8], dtype)
    assert x.dtype == np.dtype(dtype) and x.shape == (1, 3, 8, 8) and np.unique(x).size > 2


def test_error_line_is_one_line_without_markup(tmp_path):
    name = tmp_path / "a[bold red]b\nc.so"
    proc = cli("run", str(name))
    assert_one_line_error(proc, "[bold red]", "\\n")


@pytest.mark.parametrize(
    "state",
    [
        '{"tracker": 5}',
        "[1, 2]",
        '{"tracker": {"role": "tracker", "pid": 1, "pgid": 1, "host": "h", "port": 1, "log": "l"}, "servers": []}',
        "\xff not json",
    ],
)
def test_emulator_state_with_unexpected_json_is_one_line(tmp_path, state):
    (tmp_path / "state.json").write_text(state, errors="surrogateescape")
    for action in ("status", "stop"):
        (tmp_path / "state.json").write_text(state)
        proc = cli("device", "emulate", action, env={"TVMSQZ_EMU_STATE": str(tmp_path)})
        assert_one_line_error(proc, "emulator state")


def test_sigterm_during_package_install_leaves_no_partial_folder(tmp_path, monkeypatch):
    """What the SIGTERM handler does (`fsutil.remove_live_temps`, then exit 143) while `package`
    copies the staged bundle next to its destination: the hidden `.NAME.partial-*` copy goes too,
    and the previous bundle at the destination is untouched."""
    from tvmsqz import fsutil
    from tvmsqz.bundle import build as bundle_build

    stage = tmp_path / "stage"
    (stage / "model").mkdir(parents=True)
    (stage / "model" / "m.so").write_bytes(b"x" * 1000)
    out = tmp_path / "b"
    out.mkdir()
    (out / "bundle.json").write_text('{"previous": true}')
    monkeypatch.setattr(bundle_build, "check_output", lambda out: None)
    real_copytree = shutil.copytree

    depth, left = [], []

    def copy_then_terminate(src, dst, *args, **kwargs):
        depth.append(dst)
        try:
            result = real_copytree(src, dst, *args, **kwargs)
        finally:
            depth.pop()
        if not depth:  # the top-level copy (subfolders recurse through copytree)
            fsutil.remove_live_temps()  # the handler's clean-up, mid-copy; then it calls os._exit:
            left.extend(sorted(p.name for p in tmp_path.iterdir()))  # no `finally` runs after that
            raise SystemExit(143)
        return result

    monkeypatch.setattr(bundle_build.shutil, "copytree", copy_then_terminate)
    with pytest.raises(SystemExit):
        bundle_build._install(stage, out, '{"new": true}')
    assert left == ["b", "stage"]  # what os._exit(143) would have left: no `.b.partial-*`
    assert json.loads((out / "bundle.json").read_text()) == {"previous": True}
