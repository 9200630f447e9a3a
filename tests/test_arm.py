"""ARM targets: cross-compiled artifacts, the emulated aarch64 device, remote tuning, faults.

Needs what `scripts/setup_arm.sh` installs (cross toolchains, qemu-user + binfmt_misc, the
aarch64 root). Without it these tests skip locally and FAIL in CI (`conftest.require`).

The emulated device is qemu-user: its timings are never ARM performance, and no test asserts
anything about them beyond their `emulated` label.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from tvmsqz import device as D
from tvmsqz import toolchain as cross
from tvmsqz.errors import TvmsqzError
from tvmsqz.paths import TARGETS_DIR

pytestmark = pytest.mark.arm

AARCH64_TARGETS = ["arm", "arm-a53", "arm-a76"]
ARMV7_TARGETS = ["armv7", "armv7-a7", "armv7-a9"]
EMU_KEY = "arm-emu-test"
INPUT_SHAPE = (1, 3, 32, 32)


def _need_cc(cc: str) -> None:
    require(shutil.which(cc) is not None, f"cross compiler {cc} not found: run scripts/setup_arm.sh")


def _need_emulator() -> None:
    problem = D.emulator_problem()
    require(not problem, f"{problem}: run scripts/setup_arm.sh")


def load_target(name: str) -> dict:
    return json.loads((TARGETS_DIR / f"{name}.json").read_text())


def small_net():
    """A small conv net (conv-relu-pool-conv-relu-mean) as a Relax IRModule, weights inlined."""
    from tvm import relax

    rng = np.random.RandomState(0)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype("float32")
    w2 = (rng.standard_normal((16, 8, 1, 1)) * 0.3).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("data", ty=relax.TensorType(shape=INPUT_SHAPE, dtype="float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, relax.const(w1), padding=1)))
            y = bb.emit(relax.op.nn.max_pool2d(y, pool_size=2, strides=2))
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(y, relax.const(w2))))
            y = bb.emit_output(relax.op.mean(y, axis=[2, 3]))
        bb.emit_func_output(y)
    return bb.get()


def _tvm_target(name: str):
    import tvm

    return tvm.target.Target(load_target(name)["tvm"])


def _lowered(target):
    from tvm import relax

    with target:
        return relax.get_pipeline("zero")(small_net())


def build_artifact(target_name: str, out: Path, database=None) -> Path:
    """Build `small_net` for targets/<target_name>.json into `out` (a .so).

    Stands in for `tvmsqz compile MODEL --target NAME -o OUT [--database]` until the CLI has
    the ARM targets; the tests only depend on this signature.
    """
    import tvm
    from tvm import relax

    spec = load_target(target_name)
    _need_cc(spec["export"]["cc"])
    target = tvm.target.Target(spec["tvm"])
    mod = _lowered(target)
    if database is not None:
        with target, database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    ex = tvm.compile(mod, target)
    return cross.export_cross(ex, out, spec["export"]["cc"])


def host_reference(x: np.ndarray) -> np.ndarray:
    """The x86 build of the same model, run on this host."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(small_net(), "llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def assert_parity(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max()))
    diff = float(np.abs(out - ref).max())
    assert diff <= 1e-5 * scale, f"max abs diff {diff} vs x86 build (scale {scale})"


# ------------------------------------------------------------------------------ target data


@pytest.mark.parametrize("name", AARCH64_TARGETS + ARMV7_TARGETS)
def test_target_files(name):
    spec = load_target(name)
    assert spec["name"] == name and spec["family"] == "cpu"
    tvm_cfg = spec["tvm"]
    assert tvm_cfg["kind"] == "llvm" and tvm_cfg["mcpu"].startswith("cortex-")
    assert spec["rpc"]["required_for_tuning"] is True
    if name in ARMV7_TARGETS:
        assert tvm_cfg["mtriple"].startswith("armv7") and tvm_cfg["mfloat-abi"] == "hard"
        assert spec["export"]["cc"] == "arm-linux-gnueabihf-g++"
        assert spec["emulator"]["runnable"] is False  # no armv7 TVM wheels
    else:
        assert tvm_cfg["mtriple"] == "aarch64-linux-gnu"
        assert spec["export"]["cc"] == "aarch64-linux-gnu-g++"
        assert spec["emulator"]["runnable"] is True
    assert load_target("arm")["tvm"]["mcpu"] == "cortex-a72"  # the default: Raspberry Pi 4


# ------------------------------------------------------------------------------ ELF artifacts


@pytest.mark.parametrize("name", AARCH64_TARGETS + ARMV7_TARGETS)
def test_artifact_is_elf_for_the_right_machine(name, tmp_path):
    so = build_artifact(name, tmp_path / f"{name}.so")
    info = cross.elf_info(so)
    if name in ARMV7_TARGETS:
        assert info == {"machine": "arm", "class": 32, "endian": "little", "float_abi": "hard"}
        expect = "ARM, EABI5"
    else:
        assert info["machine"] == "aarch64" and info["class"] == 64
        expect = "ARM aarch64"
    with open(so, "rb") as f:  # e_machine by hand too: 0xB7 aarch64, 0x28 ARM
        f.seek(18)
        assert int.from_bytes(f.read(2), "little") == (0x28 if name in ARMV7_TARGETS else 0xB7)
    if shutil.which("file"):
        assert expect in subprocess.run(["file", "-b", str(so)], capture_output=True, text=True, check=True).stdout
    assert not list(tmp_path.glob(".*.so")), "export left a temporary file"


def test_export_with_a_missing_cross_compiler_is_a_clear_error(tmp_path):
    import tvm

    ex = tvm.compile(small_net(), _tvm_target("arm"))
    with pytest.raises(TvmsqzError, match="cross compiler no-such-g\\+\\+ not found"):
        cross.export_cross(ex, tmp_path / "x.so", "no-such-g++")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ tracker faults


def test_tracker_down_fails_fast():
    port = D.free_port()
    where = f"127.0.0.1:{port}"
    for call in (
        lambda: D.check_tracker(where),
        lambda: D.rpc_session(where, "arm"),
        lambda: D.make_rpc_runner_builder(where, "arm", "aarch64-linux-gnu-g++"),
    ):
        t0 = time.monotonic()
        with pytest.raises(TvmsqzError, match=f"^cannot reach RPC tracker at {where}: "):
            call()
        assert time.monotonic() - t0 < 5


def test_bad_tracker_address():
    with pytest.raises(TvmsqzError, match="HOST:PORT"):
        D.parse_host_port("localhost:notaport")
    assert D.parse_host_port("10.0.0.2:9190") == ("10.0.0.2", 9190)
    assert D.parse_host_port("rpi4") == ("rpi4", 9190)


def test_tracker_without_devices_names_the_key():
    tracker = D.start_tracker("127.0.0.1", None)
    try:
        with pytest.raises(TvmsqzError, match="no device is registered under key 'rasp4'"):
            D.rpc_session(tracker.address, "rasp4")
    finally:
        D.stop(tracker)
    assert not tracker.alive()


def test_device_serve_registers_with_the_tracker(tmp_path):
    """`tvmsqz device serve` (here natively on the x86 host, standing in for a board)."""
    tracker = D.start_tracker("127.0.0.1", None, log_dir=tmp_path)
    port = D.free_port()
    cmd = D.serve_command(
        tracker.address, "board-test", host="127.0.0.1", port=port, port_end=port + 1, custom_addr="127.0.0.1"
    )
    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc = D.Proc(
        "server",
        server.pid,
        server.pid,
        "127.0.0.1",
        port,
        str(tmp_path / "serve.log"),
        key="board-test",
        tracker=tracker.address,
        popen=server,
    )
    try:
        D.wait_registered([proc], timeout=120)
        remote = D.rpc_session(tracker.address, "board-test", timeout=30)
        info = D.device_info(remote)
        assert info["emulated"] is False and info["machine"] == os.uname().machine
    finally:
        D.stop(proc)
        D.stop(tracker)
    assert not proc.alive() and not tracker.alive()


# ------------------------------------------------------------------------------ emulated device


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    """A private tracker and two emulated aarch64 servers, shared by this module's tests."""
    _need_emulator()
    with D.emulated_devices_procs(2, EMU_KEY, log_dir=tmp_path_factory.mktemp("emu-logs")) as devs:
        yield devs
    for proc in [devs.tracker, *devs.servers]:
        assert not proc.alive(), f"{proc.role} {proc.address} still running after stop"


def test_emulated_devices_registered(emu):
    devices = D.list_devices(emu.tracker.address, EMU_KEY)
    assert sorted(d["port"] for d in devices) == sorted(s.port for s in emu.servers)


def test_aarch64_artifact_runs_on_emulated_device_with_parity(emu, tmp_path):
    so = build_artifact("arm", tmp_path / "small-arm.so")
    x = np.random.RandomState(1).rand(*INPUT_SHAPE).astype("float32")
    out = D.run_remote(so, emu.tracker.address, EMU_KEY, x)
    assert_parity(out, host_reference(x))

    timing = D.time_remote(so, emu.tracker.address, EMU_KEY, x, number=2, repeat=2)
    assert timing["emulated"] is True and "say nothing about ARM performance" in timing["note"]
    assert timing["device"]["machine"] == "aarch64" and timing["runs"] == 2

    # What `tvmsqz bench --rpc-tracker` uses: several inputs, one session, capped emulated runs.
    xs = [x, np.random.RandomState(3).rand(*INPUT_SHAPE).astype("float32")]
    bench = D.remote_bench(so, load_target("arm"), emu.tracker.address, EMU_KEY, xs, repeat=50)
    assert len(bench["outputs"]) == 2
    for xi, oi in zip(xs, bench["outputs"]):
        assert_parity(oi, host_reference(xi))
    assert bench["emulated"] is True and bench["latency"]["emulated"] is True
    assert bench["latency"]["runs"] == 5 and "note" in bench["latency"]


def test_cli_compiles_squeezenet_for_arm_and_benches_it_on_the_emulated_device(emu, tmp_path, compiled):
    """`tvmsqz compile --target arm` then `tvmsqz bench model.so --rpc-tracker`: parity with the x86 build."""
    import json

    from conftest import run_cli

    from tvmsqz.runtime import load as load_artifact

    so = tmp_path / "sq11-a72.so"
    run_cli("compile", "squeezenet1_1", "--target", "arm", "-o", str(so), "--no-tuning")
    assert cross.elf_machine(so) == "aarch64"
    manifest = json.loads(so.with_name(so.name + ".json").read_text())
    assert manifest["target"]["name"] == "arm" and manifest["target"]["cc"] == "aarch64-linux-gnu-g++"

    x = np.random.default_rng(7).standard_normal((1, 3, 224, 224)).astype("float32")
    on_device = D.run_remote(so, emu.tracker.address, EMU_KEY, x)
    on_x86 = load_artifact(compiled("squeezenet1_1")).run(x)
    assert np.abs(on_device - on_x86).max() <= 1e-5 * (on_x86.max() - on_x86.min())

    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench",
        str(so),
        "--target",
        "arm",
        "--rpc-tracker",
        emu.tracker.address,
        "--rpc-key",
        EMU_KEY,
        "--repeat",
        "3",
        "--no-torch",
        "--json",
        str(out),
    )
    report = json.loads(out.read_text())
    assert report["emulated"] is True and report["ratio_vs_onnxruntime"] is None
    assert report["parity"]["max_rel_diff"] <= 1e-4 and report["parity"]["top1_agreement"] == 1.0
    assert "EMULATED" in proc.stdout


@pytest.mark.parametrize(
    "model", ["squeezenext_1_0_23", "squeezenext_1_0_23v5", "squeezenext_2_0_23", "squeezenext_2_0_23v5"]
)
def test_squeezenext_cross_compiled_matches_pytorch_on_the_emulated_device(emu, tmp_path, model):
    """SqueezeNext's 3x1/1x3 convs, strided 1x1s and residual epilogues, built for aarch64 by the CLI,
    against PyTorch on a real photo and a random input."""
    import torch
    from conftest import run_cli

    from tvmsqz.benchmark import parity
    from tvmsqz.images import preprocess, sample_images
    from tvmsqz.models import torch_model

    so = tmp_path / f"{model}-arm.so"
    run_cli("compile", model, "--target", "arm", "-o", str(so), "--no-tuning")
    assert cross.elf_machine(so) == "aarch64"
    photo = preprocess(dict(sample_images())["chelsea"], "caffe", 227)
    noise = np.random.default_rng(5).uniform(-120, 120, (1, 3, 227, 227)).astype("float32")
    net = torch_model(model)
    for x in (photo, noise):
        on_device = D.run_remote(so, emu.tracker.address, EMU_KEY, x)
        with torch.inference_mode():
            want = net(torch.from_numpy(x)).numpy()
        report = parity(on_device, want, "torch")
        assert report["max_rel_diff"] <= 1e-4 and report["top1_agreement"] == 1.0, report


def test_tune_on_two_emulated_devices_then_compile_applies_records(emu, tmp_path):
    from tvm.s_tir import meta_schedule as ms

    tracker = emu.tracker.address
    target = _tvm_target("arm")
    D.preload_tensor_intrin()
    builder, runner = D.make_rpc_runner_builder(tracker, EMU_KEY, "aarch64-linux-gnu-g++")
    assert runner.pool._threadpool._max_workers == 2
    work = tmp_path / "tune"
    try:
        ms.relax_integration.tune_relax(
            _lowered(target),
            {},
            target,
            str(work),
            max_trials_global=4,
            num_trials_per_iter=4,
            op_names=["fused_conv2d_relu"],
            builder=builder,
            runner=runner,
        )  # one task, one round
    finally:
        builder.shutdown()
    db = ms.database.JSONDatabase(work_dir=str(work))
    good = [r for r in db.get_all_tuning_records() if r.run_secs and float(r.run_secs[0]) < 1e9]
    assert good, "no successful measurement in the database"

    import tvm
    from tvm import relax

    with target, db:
        applied = relax.transform.MetaScheduleApplyDatabase()(_lowered(target))
    scheduled = [
        gv.name_hint
        for gv, f in applied.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled")
    ]
    assert "fused_conv2d_relu" in scheduled, scheduled

    so = build_artifact("arm", tmp_path / "small-arm-tuned.so", database=db)
    x = np.random.RandomState(2).rand(*INPUT_SHAPE).astype("float32")
    assert_parity(D.run_remote(so, tracker, EMU_KEY, x), host_reference(x))


def test_emulate_start_and_stop_from_another_process(tmp_path):
    """`device emulate start` in one process, `stop` in another: nothing is left running."""
    _need_emulator()
    env = {**os.environ, "TVMSQZ_EMU_STATE": str(tmp_path / "state")}
    start = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from tvmsqz import device as D; "
            f"print(json.dumps(D.emulate_start(1, key='emu-cli-test', tracker_port={D.free_port()})))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert start.returncode == 0, start.stderr
    state = json.loads(start.stdout.strip().splitlines()[-1])
    assert state["running"] and state["emulated"] and len(state["devices"]) == 1
    saved = json.loads((tmp_path / "state" / "state.json").read_text())
    pgids = [saved["tracker"]["pgid"]] + [s["pgid"] for s in saved["servers"]]
    assert all(D.group_members(g) for g in pgids)

    stop = subprocess.run(
        [sys.executable, "-c", "from tvmsqz import device as D; print(D.emulate_stop())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stop.returncode == 0, stop.stderr
    assert not any(D.group_members(g) for g in pgids)
    assert not (tmp_path / "state" / "state.json").exists()


def _matmul():
    from tvm import te

    a = te.placeholder((64, 64), name="A")
    b = te.placeholder((64, 64), name="B")
    k = te.reduce_axis((0, 64), name="k")
    c = te.compute((64, 64), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    return te.create_prim_func([a, b, c]).with_attr("global_symbol", "main")


def _records(work: Path) -> int:
    from tvm.s_tir import meta_schedule as ms

    return len(ms.database.JSONDatabase(work_dir=str(work)).get_all_tuning_records())


def test_cli_int8_for_arm_runs_on_the_emulated_device(emu, tmp_path):
    """`tvmsqz compile --precision int8 --target arm` on the emulated aarch64 device agrees with
    ONNX Runtime running the same QDQ model (the quantizer is deterministic: same calibration,
    same graph); the runtime-only bundle's share is in test_bundle. Emulated timings mean nothing
    and are not read. Runs before the test that kills the module's servers."""
    import json

    import onnxruntime as ort
    from conftest import run_cli

    import tvmsqz
    from tvmsqz.images import photo, preprocess
    from tvmsqz.quant.qdq import quantize_model

    so = tmp_path / "sq11-int8-arm.so"
    run_cli("compile", "squeezenet1_1", "--target", "arm", "--precision", "int8", "-o", str(so))
    assert cross.elf_machine(so) == "aarch64"
    manifest = json.loads(so.with_name(so.name + ".json").read_text())
    assert manifest["precision"] == "int8"
    kernels = manifest["kernels"]["tuned"] + manifest["kernels"]["untuned"]
    assert sum("conv2d_nchwc_neon" in k for k in kernels) >= 18  # the NEON dot kernels, not TVM's generic conv
    x = preprocess(photo("astronaut.png"), "torchvision", 224)
    on_device = D.run_remote(so, emu.tracker.address, EMU_KEY, x)
    model = tvmsqz.load_model("squeezenet1_1", import_now=False)
    qdq = quantize_model(model, None).onnx
    sess = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = sess.run(None, {model.onnx.graph.input[0].name: x})[0]
    assert on_device.argmax() == reference.argmax()
    assert np.abs(on_device - reference).max() <= 0.05 * np.abs(reference).max()


@pytest.mark.parametrize(("target", "block"), [("arm", "conv2d_nchwc_neon"), ("arm-a76", "conv2d_nchwc_sdot")])
def test_int8_kernels_bit_exact_on_the_emulated_device(emu, tmp_path, target, block):
    """The ARM int8 kernels (NEON on the A72, sdot on the A76: int8 x int8, so the uint8 codes
    are shifted and the weight sums added back) equal the numpy integer reference bit for bit:
    first conv (3 channels, zero point 128), 1x1, padded 3x3, strided 3x3, and a padded conv on
    an asymmetric input (its padding holds the zero point's code)."""
    from test_int8 import QDQBuilder
    from tvm.relax.frontend.onnx import from_onnx

    from tvmsqz.build import compile_module
    from tvmsqz.targets import get_target

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 23, 23)).astype(np.float32)
    b = QDQBuilder(x, rng)
    b.conv(32, 3, sx=0.02, zx=128)
    b.conv(16, 1, sx=0.05, zx=0)
    b.conv(32, 3, pad=1, sx=0.03, zx=0)
    b.conv(48, 3, stride=2, sx=0.04, zx=0, relu=False)
    b.conv(16, 3, pad=1, sx=0.03, zx=100)
    b.quantize_output(0.02)
    mod = from_onnx(b.model(x.shape), shape_dict={"x": list(x.shape)}, keep_params_in_input=False)
    spec = get_target(target).for_precision("int8")
    executable, report = compile_module(mod, spec)
    assert sum(block in k for k in report.kernels) == 5
    so = cross.export_cross(executable, tmp_path / "int8-kernels.so", spec.cc)
    np.testing.assert_array_equal(D.run_remote(so, emu.tracker.address, EMU_KEY, x), b.ref)


# Keep last: it kills the module's emulated servers.
def test_killed_device_server_mid_tune_keeps_database(emu, tmp_path):
    tracker = emu.tracker.address
    target = _tvm_target("arm")
    D.preload_tensor_intrin()
    builder, runner = D.make_rpc_runner_builder(
        tracker, EMU_KEY, "aarch64-linux-gnu-g++", session_timeout=60, request_timeout=60
    )
    killed: list[float] = []

    def kill_first_server_when_busy():
        deadline = time.monotonic() + 600
        while not killed and time.monotonic() < deadline:
            with_queue = D.tracker_summary(tracker)["queue_info"].get(EMU_KEY, {})
            if with_queue and with_queue["free"] < len(emu.servers):
                D.stop(emu.servers[0])
                killed.append(time.monotonic())
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_first_server_when_busy, daemon=True)
    killer.start()
    try:
        _tune_kill_and_lose_all(emu, tracker, target, builder, runner, killed, killer, tmp_path)
    finally:
        builder.shutdown()


def _tune_kill_and_lose_all(emu, tracker, target, builder, runner, killed, killer, tmp_path):
    from tvm.s_tir import meta_schedule as ms

    work = tmp_path / "tune"
    watch = D.make_device_watch(tracker, EMU_KEY)
    ms.tune_tir(
        _matmul(),
        target,
        str(work),
        max_trials_global=4,
        num_trials_per_iter=2,
        builder=builder,
        runner=runner,
        measure_callbacks=ms.MeasureCallback.create("default") + [watch],
    )
    killer.join(5)
    assert killed, "the device server was never busy"
    assert not emu.servers[0].alive()
    assert watch.error is None
    n_before = _records(work)
    assert n_before >= 3  # the other device went on measuring
    assert D.device_count(tracker, EMU_KEY) == 1

    # The last device goes too: tuning stops with a clear error and keeps its database.
    D.stop(emu.servers[1])
    watch = D.make_device_watch(tracker, EMU_KEY)
    with pytest.raises(Exception, match="no device is registered under key"):
        ms.tune_tir(
            _matmul(),
            target,
            str(work),
            max_trials_global=8,
            num_trials_per_iter=2,
            builder=builder,
            runner=runner,
            measure_callbacks=ms.MeasureCallback.create("default") + [watch],
        )
    assert isinstance(watch.error, TvmsqzError)
    assert _records(work) >= n_before
    for name in ("database_workload.json", "database_tuning_record.json"):
        for line in (work / name).read_text().splitlines():
            json.loads(line)  # every line is a complete record
