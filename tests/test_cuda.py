"""CUDA target without a GPU: artifacts are built, hold device code for the requested
architecture, the untuned GPU schedules compute the right numbers, and user mistakes (an unknown
architecture, no nvcc) give one-line errors.

Nothing here needs a GPU. Compiling needs an nvcc, which `scripts/setup_cuda.sh` installs from
PyPI where no CUDA toolkit is (the `nvcc_path` fixture: a failure under CI, a skip elsewhere).
What does (latency, parity on the device) is `benchmarks/gpu_bench.py`,
run on a lent GPU machine; see docs/cuda.md.

The numeric checks run the *GPU-scheduled* TensorIR on this CPU: the schedules are built exactly as
for CUDA, except that `Schedule.bind` is a no-op, so every loop that would be a CUDA thread stays
a serial loop with the same tiling, caching, inlining and epilogue fusion; that module is then
compiled for LLVM and compared with PyTorch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
import tvm
from conftest import assert_one_line_error, require, run_cli
from tvm import relax, s_tir, tirx

from tvmsqz.backends import cuda, get_backend
from tvmsqz.backends.cuda import blob, detect, fatbin, nvcc, rules
from tvmsqz.build import compile_module, export_artifact, prepare
from tvmsqz.errors import TvmsqzError
from tvmsqz.frontend import import_onnx
from tvmsqz.passes.fuse import fuse_fire
from tvmsqz.paths import TARGETS_DIR
from tvmsqz.spec import TargetSpec
from tvmsqz.targets import get_target

FIXED = {"cuda-sm80": "sm_80", "cuda-sm86": "sm_86", "cuda-sm89": "sm_89", "cuda-sm90": "sm_90"}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


class TinyFire(torch.nn.Module):
    """A small classifier with one Fire module (squeeze 1x1, expand 1x1 + 3x3, concat)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, stride=2)
        self.squeeze = torch.nn.Conv2d(16, 8, 1)
        self.e1 = torch.nn.Conv2d(8, 16, 1)
        self.e3 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.head = torch.nn.Conv2d(32, 10, 1)

    def forward(self, x):
        relu = torch.nn.functional.relu
        x = torch.nn.functional.max_pool2d(relu(self.stem(x)), 3, 2, ceil_mode=True)
        s = relu(self.squeeze(x))
        x = torch.cat([relu(self.e1(s)), relu(self.e3(s))], 1)
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(relu(self.head(x)), 1), 1)


@pytest.fixture(scope="module")
def tiny():
    from tvmsqz.models import export_onnx

    torch.manual_seed(0)
    model = TinyFire().eval()
    mod, spec = import_onnx(export_onnx(model, (1, 3, 32, 32)))
    return model, mod, spec


@pytest.fixture
def nvcc_path() -> str:
    """The nvcc tvmsqz compiles with (PATH, the nvidia-cuda-nvcc pip package, CUDA_HOME)."""
    found = nvcc.locate_nvcc()
    require(found is not None, "no nvcc found (scripts/setup_cuda.sh installs nvidia-cuda-nvcc)")
    return found


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """fake_smi("9.0") puts an `nvidia-smi` printing that compute capability first on PATH;
    fake_smi(None) leaves none on PATH. The one boundary GPU detection is mocked at."""

    def install(output: str | None, exit_code: int = 0) -> None:
        folder = tmp_path / "smi-bin"
        folder.mkdir(exist_ok=True)
        if output is not None:
            fake = folder / "nvidia-smi"
            fake.write_text(f"#!/bin/sh\necho '{output}'\nexit {exit_code}\n")
            fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
        keep = [
            d for d in os.environ["PATH"].split(os.pathsep) if d and not os.path.exists(os.path.join(d, "nvidia-smi"))
        ]
        monkeypatch.setenv("PATH", os.pathsep.join([str(folder), *keep]))

    return install


def hide_nvcc(monkeypatch, path: str) -> None:
    """No nvcc anywhere tvmsqz looks: PATH is `path`, no pip package, no CUDA_HOME/CUDA_PATH."""
    monkeypatch.setenv("PATH", path)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(nvcc, "PIP_NVCC_DISTRIBUTIONS", ())


@contextlib.contextmanager
def serial_threads():
    """Build GPU schedules with every `bind` skipped: same loop nest, serial instead of threads."""
    bind = s_tir.Schedule.bind
    s_tir.Schedule.bind = lambda self, loop, thread: None
    try:
        yield
    finally:
        s_tir.Schedule.bind = bind


def run_kernel_on_cpu(func, args: list[np.ndarray]) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target="llvm")
    tensors = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def kernel_args(func, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal([int(d) for d in p.shape.values]).astype(str(p.dtype)) for p in func.ty.params]


def rule_for(func, spec) -> str:
    with spec.target:
        for rule in rules.default_rules():
            if rule.apply(func, spec.target, False) is not None:
                return type(rule).__name__
    return "none"


def torch_out(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# ----------------------------------------------------------------------------------------------
# target data
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_targets_name_their_architecture(name):
    spec = get_target(name)
    assert spec.family == "cuda"
    assert spec.tvm_config["arch"] == FIXED[name]
    assert spec.schedules == "cuda-" + FIXED[name].replace("_", "")
    assert str(spec.target.arch) == FIXED[name]
    assert spec.target.kind.name == "cuda"
    assert spec.target.host.kind.name == "llvm"
    assert get_backend(spec) is cuda


def test_auto_target_resolves_to_a_real_architecture():
    """`cuda` = this machine's GPU; without one (CI), sm_90. Needs targets.py's CUDA hook."""
    spec = get_target("cuda")
    expected = cuda.detect_gpu_arch() or cuda.DEFAULT_ARCH
    assert spec.tvm_config["arch"] == expected
    assert spec.schedules == "cuda-" + expected.replace("_", "")
    assert str(spec.target.arch) == expected


def test_auto_arch_follows_nvidia_smi(fake_smi):
    fake_smi("8.6")
    assert cuda.detect_gpu_arch() == "sm_86"
    raw = json.loads((TARGETS_DIR / "cuda.json").read_text())
    resolved = cuda.resolve_target_data(raw)
    assert resolved["tvm"]["arch"] == "sm_86" and resolved["schedules"] == "cuda-sm86"
    assert raw["tvm"]["arch"] == "auto"  # the input is not modified
    assert get_target("cuda").tvm_config["arch"] == "sm_86"


def test_auto_arch_without_gpu_defaults_to_sm90(fake_smi):
    fake_smi(None)
    resolved = cuda.resolve_target_data(json.loads((TARGETS_DIR / "cuda.json").read_text()))
    assert resolved["tvm"]["arch"] == "sm_90" and resolved["schedules"] == "cuda-sm90"
    assert "no GPU" in resolved["arch_source"]


@pytest.mark.parametrize(
    "smi, runs",
    [
        ("9.0", {"cuda-sm80": True, "cuda-sm86": True, "cuda-sm89": True, "cuda-sm90": True}),
        ("8.6", {"cuda-sm80": True, "cuda-sm86": True, "cuda-sm89": False, "cuda-sm90": False}),
        ("7.5", {"cuda-sm80": False, "cuda-sm86": False, "cuda-sm89": False, "cuda-sm90": False}),
        (None, {"cuda-sm80": False, "cuda-sm86": False, "cuda-sm89": False, "cuda-sm90": False}),
    ],
)
def test_runs_on_host_follows_the_gpu_nvidia_smi_reports(fake_smi, smi, runs):
    """SASS + PTX for sm_XY runs on a GPU of compute capability >= X.Y (PTX JIT); no GPU, no run."""
    fake_smi(smi)
    assert {name: cuda.runs_on_host(get_target(name)) for name in runs} == runs


def test_runs_on_host_without_a_working_driver(fake_smi):
    """nvidia-smi present but failing (driver not loaded, no device): not runnable here."""
    fake_smi("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", exit_code=9)
    assert cuda.detect_gpu_arch() is None
    assert cuda.runs_on_host(get_target("cuda-sm80")) is False


def test_arch_specific_code_runs_only_on_its_gpu():
    assert detect.gpu_runs_arch("sm_90", "sm_90a") and not detect.gpu_runs_arch("sm_100", "sm_90a")
    assert detect.gpu_runs_arch("sm_103", "sm_100f") and not detect.gpu_runs_arch("sm_120", "sm_100f")
    assert detect.gpu_runs_arch("sm_120", "sm_86") and not detect.gpu_runs_arch("sm_86", "sm_87")


def test_backend_hooks():
    spec = get_target("cuda-sm90")
    assert cuda.device_type(spec) == "cuda"
    assert cuda.pass_config(spec) == {"relax.backend.use_cuda_graph": True}
    assert cuda.post_database_passes(spec) == []
    assert cuda.device(spec) == tvm.cuda(0)


@pytest.mark.parametrize("value, graph", [("0", False), ("off", False), ("1", True), ("", True)])
def test_cuda_graph_can_be_turned_off_for_a_build(monkeypatch, value, graph):
    """TVMSQZ_CUDA_GRAPH=0 builds without RewriteCUDAGraph (how the H200 bench measured the graph's effect)."""
    monkeypatch.setenv("TVMSQZ_CUDA_GRAPH", value)
    assert cuda.pass_config(get_target("cuda-sm90")) == {"relax.backend.use_cuda_graph": graph}


@pytest.mark.parametrize("arch", ["sm_12", "sm_9", "compute_90", "auto", "", None, 90])
def test_unknown_architecture_is_refused(arch):
    raw = {"name": "cuda-bad", "family": "cuda", "tvm": {"kind": "cuda", "arch": arch}, "schedules": None}
    with pytest.raises(TvmsqzError) as err:
        if arch == "auto":
            cuda.check_arch(arch, "cuda-bad")
        else:
            cuda.resolve_target_data(raw)
    message = str(err.value)
    assert "\n" not in message and "cuda-bad" in message
    assert "architecture" in message


def test_unknown_architecture_stops_compile_before_compiling(tiny, monkeypatch):
    _, mod, _ = tiny
    spec = TargetSpec(name="cuda-sm12", family="cuda", description="", tvm_config={"kind": "cuda", "arch": "sm_12"})
    calls = []
    monkeypatch.setattr(tvm, "compile", lambda *a, **k: calls.append(a))
    with pytest.raises(TvmsqzError, match="unknown CUDA architecture 'sm_12'"):
        compile_module(mod, spec)
    assert not calls


def test_missing_nvcc_is_a_one_line_error(monkeypatch, tmp_path):
    hide_nvcc(monkeypatch, str(tmp_path))
    assert shutil.which("nvcc") is None and nvcc.locate_nvcc() is None
    with pytest.raises(TvmsqzError) as err:
        cuda.check_toolchain(get_target("cuda-sm90"))
    message = str(err.value)
    assert "nvcc" in message and "PATH" in message and "pip install nvidia-cuda-nvcc" in message
    assert "\n" not in message


def _fake_toolkit(root, release: str = "13.0") -> str:
    """A stand-in nvcc under `root/bin` that answers --version and --list-gpu-code."""
    (root / "bin").mkdir(parents=True)
    fake = root / "bin" / "nvcc"
    fake.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version) echo "Cuda compilation tools, release {release}, V{release}.1";;\n'
        "  --list-gpu-code) echo sm_80 sm_90;; esac\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return str(fake)


def test_nvcc_of_the_pip_package_is_found_off_path(monkeypatch, tmp_path):
    """The nvidia-cuda-nvcc wheel's nvcc (inside site-packages, on no PATH) is found through the
    installed distribution's file list, and put on PATH for TVM's bare `nvcc` calls."""
    site = tmp_path / "site"
    fake = _fake_toolkit(site / "nvidia" / "cu13")
    info = site / "nvidia_cuda_nvcc-13.0.88.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nvidia-cuda-nvcc\nVersion: 13.0.88\n")
    (info / "RECORD").write_text("nvidia/cu13/bin/nvcc,,\nnvidia_cuda_nvcc-13.0.88.dist-info/RECORD,,\n")
    hide_nvcc(monkeypatch, str(tmp_path / "empty"))
    monkeypatch.setattr(nvcc, "PIP_NVCC_DISTRIBUTIONS", ("nvidia-cuda-nvcc",))
    monkeypatch.syspath_prepend(str(site))
    assert nvcc.find_nvcc() == fake
    assert cuda.check_toolchain(get_target("cuda-sm90")) == fake
    assert shutil.which("nvcc") == fake
    assert nvcc.nvcc_version(fake) == "13.0"
    with pytest.raises(TvmsqzError, match="cannot compile for sm_86"):
        cuda.check_toolchain(get_target("cuda-sm86"))


def test_nvcc_under_cuda_home_is_found_off_path(monkeypatch, tmp_path):
    fake = _fake_toolkit(tmp_path / "cuda")
    hide_nvcc(monkeypatch, str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    assert nvcc.find_nvcc() == fake


def test_real_nvcc_off_path_compiles_a_kernel(nvcc_path, monkeypatch, tmp_path):
    """The real nvcc, reachable only through CUDA_HOME, compiles TVM's source into a fatbin."""
    hide_nvcc(monkeypatch, _path_without_nvcc())  # the host compiler nvcc calls stays on PATH
    monkeypatch.setenv("CUDA_HOME", os.path.dirname(os.path.dirname(nvcc_path)))
    code = (
        '#include <cuda.h>\nextern "C" __global__ void __launch_bounds__(256) k(float* __restrict__ x) '
        "{ x[threadIdx.x] = __expf(x[threadIdx.x]); }\n"
    )
    fat = nvcc.compile_cuda_source(code, "sm_86")
    info = fatbin.device_code_info(fat, "fatbin")
    assert info["sass"] == ["sm_86"] and info["ptx"] == ["sm_86"]
    _, _, header, _ = struct.unpack_from("<IHHQ", fat, 0)  # the first entry is the cubin (SASS)
    _, _, entry_header, size = struct.unpack_from("<HHIQ", fat, header)
    cubin = fat[header + entry_header : header + entry_header + size]
    assert fatbin.cubin_arch(cubin) == "sm_86" and fatbin.device_code_info(cubin, "cubin")["format"] == "cubin"
    with pytest.raises(TvmsqzError, match=r"nvcc could not compile the kernels for sm_86: .*error") as err:
        nvcc.compile_cuda_source(code + "not C++;\n", "sm_86")
    assert "\n" not in str(err.value)


def _path_without_nvcc() -> str:
    keep = [d for d in os.environ["PATH"].split(os.pathsep) if d and not os.path.exists(os.path.join(d, "nvcc"))]
    return os.pathsep.join([os.path.dirname(sys.executable), *keep])


def test_cli_missing_nvcc_exits_2_with_one_line(tmp_path):
    """`tvmsqz compile` as a user runs it, on a machine where no nvcc is anywhere tvmsqz looks.

    A pip-installed nvcc lives in the same site-packages as TVM and cannot be hidden from a
    subprocess by its environment, so the subprocess starts the CLI with the pip lookup off.
    """
    out = tmp_path / "x.so"
    env = {**os.environ, "PATH": _path_without_nvcc()}
    env.pop("CUDA_HOME", None)
    env.pop("CUDA_PATH", None)
    start = (
        "import runpy, sys; import tvmsqz.backends.cuda.nvcc as n; n.PIP_NVCC_DISTRIBUTIONS = (); "
        "sys.argv[0] = 'tvmsqz'; runpy.run_module('tvmsqz', run_name='__main__')"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            start,
            "compile",
            "squeezenet1_1",
            "--target",
            "cuda-sm90",
            "--no-tuning",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc, "nvcc", "PATH")
    assert not out.exists()


def test_cli_unknown_architecture_exits_2_with_one_line(tmp_path):
    """A user's own target file (`--target path.json`) naming an architecture that does not exist."""
    bad = json.loads((TARGETS_DIR / "cuda-sm90.json").read_text())
    bad.update(name="cuda-sm12", schedules="cuda-sm12")
    bad["tvm"]["arch"] = "sm_12"
    target_file = tmp_path / "cuda-sm12.json"
    target_file.write_text(json.dumps(bad))
    out = tmp_path / "x.so"
    proc = run_cli("compile", "squeezenet1_1", "--target", str(target_file), "--no-tuning", "-o", str(out), check=False)
    assert proc.returncode == 2
    assert_one_line_error(proc, "sm_12", "architecture")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# device code in the artifact
# ----------------------------------------------------------------------------------------------


def assert_device_code_for(path, arch: str) -> None:
    modules = cuda.artifact_device_code(path)
    assert len(modules) == 1, modules
    module = modules[0]
    assert module["fmt"] == "fatbin" and module["format"] == "fatbin"
    assert module["sass"] == [arch] and module["ptx"] == [arch]
    kinds = {(e["kind"], e["arch"]) for e in module["entries"]}
    assert kinds == {("elf", arch), ("ptx", arch)}
    for entry in module["entries"]:
        if entry["kind"] == "elf":
            assert entry["elf_machine"] == 190  # EM_CUDA: a cubin
        else:
            assert entry["ptx_target"] == arch  # `.target sm_XY` in the PTX text
    data = path.read_bytes()
    assert f".target {arch}".encode() in data
    assert b'extern "C" __global__' not in data  # no CUDA source left to compile on the device


def test_small_fire_net_compiles_to_sm80_fatbin(tiny, tmp_path, nvcc_path):
    _, mod, input_spec = tiny
    spec = get_target("cuda-sm80")
    executable, report = compile_module(mod, spec)
    assert any(k.startswith("fire_") for k in report.kernels), report.kernels
    out = tmp_path / "tiny.so"
    manifest = export_artifact(executable, spec, out, model="tiny", input_spec=input_spec, report=report)
    assert manifest["target"]["tvm"]["arch"] == "sm_80"
    assert_device_code_for(out, "sm_80")
    source = next(m for m in executable.mod.imports[0].imports if m.kind == "cuda").inspect_source("cuda")
    kernels = set(re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", source))
    assert cuda.artifact_device_code(out)[0]["kernels"] == len(kernels) > 0


def test_tuning_candidates_for_a_remote_gpu_carry_device_code(nvcc_path):
    """RPC tuning: a candidate built without a GPU is exported with nvcc-compiled device code."""
    import pickle

    from tvm import te

    spec = get_target("cuda-sm89")
    a = te.placeholder((1024,), name="A")
    b = te.compute((1024,), lambda i: a[i] * 2.0, name="B")
    sch = s_tir.Schedule(te.create_prim_func([a, b]))
    (loop,) = sch.get_loops(sch.get_sblock("B"))
    bx, tx = sch.split(loop, [None, 256])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    rt_mod = tvm.tirx.build(sch.mod, target=spec.target)
    f_export = pickle.loads(pickle.dumps(cuda.candidate_export(spec)))
    path = f_export(rt_mod)
    try:
        (module,) = cuda.artifact_device_code(path)
        assert module["sass"] == ["sm_89"] and module["ptx"] == ["sm_89"] and module["kernels"] == 1
    finally:
        shutil.rmtree(os.path.dirname(path))


def test_cuda_graph_capture_is_compiled_in(tiny):
    """RewriteCUDAGraph ran: the VM replays one captured graph (needs build.py's pass_config hook)."""
    _, mod, _ = tiny
    executable, _ = compile_module(mod, get_target("cuda-sm90"))
    stats = executable.stats()
    assert "vm.builtin.cuda_graph.run_or_capture" in stats
    assert "cuda_graph_capture" in stats


@pytest.mark.parametrize("model", ["squeezenet1_1", "squeezenext_1_0_23"])
def test_cli_artifact_holds_sm90_device_code(compiled, nvcc_path, model):
    so = compiled(model, target="cuda-sm90")
    assert_device_code_for(so, "sm_90")
    manifest = json.loads(so.with_name(so.name + ".json").read_text())
    assert manifest["target"]["name"] == "cuda-sm90"
    assert manifest["target"]["tvm"]["arch"] == "sm_90"
    assert manifest["kernels"]["total"] >= 15


# ----------------------------------------------------------------------------------------------
# default schedules: every kernel bound, the fused Fire kernels tiled, and the numbers right
# ----------------------------------------------------------------------------------------------


def test_every_squeezenet_kernel_gets_a_gpu_schedule():
    from tvmsqz.frontend import load_model

    spec = get_target("cuda-sm90")
    mod = prepare(load_model("squeezenet1_1").mod, spec, fuse=True)  # FusedConv (cuda-sm90 defaults to unfused)
    rules = {gv.name_hint: rule_for(f, spec) for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    fire = {k: v for k, v in rules.items() if k.startswith("fire_")}
    assert len(fire) == 4 and set(fire.values()) == {"FusedConv"}, rules
    convs = {k: v for k, v in rules.items() if "conv2d" in k}
    assert convs and set(convs.values()) == {"Matmul"}, rules
    assert "none" not in rules.values()
    scheduled = cuda.default_schedule(mod, spec)
    for gv, func in scheduled.functions_items():
        if isinstance(func, tirx.PrimFunc):
            assert func.attrs["tirx.is_scheduled"], gv.name_hint


def test_tuned_kernels_are_left_alone():
    """A kernel a tuning database scheduled (tirx.is_scheduled) keeps its schedule."""
    from tvmsqz.frontend import load_model

    spec = get_target("cuda-sm90")
    mod = prepare(load_model("squeezenet1_1").mod, spec, fuse=True)  # FusedConv (cuda-sm90 defaults to unfused)
    name = next(gv.name_hint for gv in mod.get_global_vars() if gv.name_hint.startswith("fire_"))
    marked = mod[name].with_attr("tirx.is_scheduled", True)
    mod[name] = marked
    out = cuda.default_schedule(mod, spec)
    tvm.ir.assert_structural_equal(out[name], marked)


@pytest.mark.parametrize("model", ["squeezenet1_1", "squeezenext_1_0_23v5"])
def test_untuned_schedules_match_pytorch(model):
    """The whole untuned CUDA module, threads run as loops on the CPU, equals PyTorch (SqueezeNext:
    its 3x1/1x3 convs and residual epilogues get GPU schedules too)."""
    from tvmsqz.frontend import load_model
    from tvmsqz.models import get_model_info, torch_model

    spec = get_target("cuda-sm90")
    mod = prepare(load_model(model).mod, spec, fuse=True)  # FusedConv (cuda-sm90 defaults to unfused)
    with serial_threads():
        mod = cuda.default_schedule(mod, spec)
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            assert func.attrs["tirx.is_scheduled"], gv.name_hint
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    scale = 50.0 if get_model_info(model).preprocess == "caffe" else 1.0
    x = (np.random.default_rng(0).standard_normal(get_model_info(model).input_shape) * scale).astype("float32")
    y = vm["main"](tvm.runtime.tensor(x))
    y = (y if hasattr(y, "numpy") else y[0]).numpy()
    want = torch_out(torch_model(model), x)
    assert np.abs(y - want).max() <= 1e-4 * (want.max() - want.min())
    assert int(y.argmax()) == int(want.argmax())


@pytest.mark.parametrize("model, batch", [("squeezenet1_0_complex_bypass", 1), ("squeezenet1_0_bypass", 2)])
def test_fused_fire_kernel_schedule_is_exact(model, batch):
    """FusedConv on folded-squeeze, bypass and batched Fire kernels computes what the kernel says."""
    from tvmsqz.frontend import load_model

    spec = get_target("cuda-sm90")
    mod = fuse_fire(load_model(model, batch=batch).mod, fold_squeeze=(batch == 1))
    with spec.target:
        mod = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(), relax.get_pipeline("zero")])(mod)
    fire = sorted(
        (gv.name_hint, f)
        for gv, f in mod.functions_items()
        if isinstance(f, tirx.PrimFunc) and gv.name_hint.startswith("fire_")
    )
    assert fire
    rule = rules.FusedConv()
    for name, func in fire[:3]:
        assert rule_for(func, spec) == "FusedConv", name
        with spec.target, serial_threads():
            scheduled = rule.apply(func, spec.target, False).mod["main"]
        args = kernel_args(func)
        want = run_kernel_on_cpu(func, [a.copy() for a in args])
        got = run_kernel_on_cpu(scheduled, [a.copy() for a in args])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_fused_conv_rule_declines_other_kernels():
    """Single convolutions stay with dlight's Matmul; non-conv reductions are not taken."""
    from tvmsqz.frontend import load_model

    spec = get_target("cuda-sm90")
    mod = prepare(load_model("squeezenet1_1").mod, spec, fuse=False)
    rule = rules.FusedConv()
    with spec.target:
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc):
                assert rule.apply(func, spec.target, False) is None, gv.name_hint


# ----------------------------------------------------------------------------------------------
# the packed-module format that export rewrites
# ----------------------------------------------------------------------------------------------


def _bytes(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def test_blob_round_trip_and_compiled_payload_split():
    fmap = _bytes(b"\x01" + b"\x00" * 7) + b"fake function table"
    fatbin = struct.pack("<IHHQ", 0xBA55ED50, 1, 16, 0)
    payload = _bytes(b"cubin") + fmap + _bytes(fatbin)
    fmt, got_fmap, code = blob.split_cuda_payload(payload)
    assert (fmt, got_fmap, code) == ("cubin", fmap, fatbin)
    source = b'extern "C" __global__ void k() {}'
    src_payload = _bytes(b"cuda") + fmap + _bytes(source)
    assert blob.split_cuda_payload(src_payload, source) == ("cuda", fmap, source)
    tree = struct.pack("<QQQ", 2, 0, 1) + struct.pack("<QQ", 1, 1)
    modules = [("relax.VMExecutable", b"vm"), ("_lib", None), ("cuda", payload)]
    packed = blob.build_blob(tree, modules)
    assert blob.parse_blob(packed) == (tree, modules)
    with pytest.raises(ValueError):
        blob.split_cuda_payload(_bytes(b"cubin") + fmap + b"garbage")
