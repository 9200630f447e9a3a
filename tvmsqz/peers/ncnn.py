"""ncnn on the CPU, converted from the same ONNX file by pnnx.

`pnnx model.onnx inputshape=[N,C,H,W] fp16=0` writes `model.ncnn.param/.bin`; `fp16=0` because
pnnx stores the ncnn weights as fp16 by default, which would not be an fp32 peer. The
conversion runs once per bench, in the bench's temp folder, and never downloads anything.
ncnn has no batch axis: a batch of N runs as N extractions, one image each. fp16/bf16 storage
and arithmetic are switched off at load time for the same reason as `fp16=0`.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .base import PeerUnavailable, Session, Sources, not_installed

#: ncnn options that would make it compute or store in reduced precision where the CPU allows.
REDUCED_PRECISION_OPTIONS = (
    "use_fp16_storage",
    "use_fp16_packed",
    "use_fp16_arithmetic",
    "use_bf16_storage",
    "use_bf16_packed",
)


def pnnx_executable() -> str | None:
    """The pnnx converter binary: inside the `pnnx` wheel (found without importing it: its
    `__init__` imports torch), else a `pnnx` on PATH."""
    try:
        spec = importlib.util.find_spec("pnnx")
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "pnnx"
        if binary.is_file():
            return str(binary)
    return shutil.which("pnnx")


def available() -> str | None:
    missing = not_installed("ncnn")
    if missing is None and pnnx_executable() is None:
        return "pnnx (the ONNX to ncnn converter) is not installed (pip install 'tvmsqz[peers]')"
    return missing


def prepare(sources: Sources) -> str:
    """Convert the ONNX file to ncnn in `workdir/ncnn` (reused within the bench run)."""
    folder = sources.workdir / "ncnn"
    param = folder / "model.ncnn.param"
    if param.is_file():
        return str(param)
    folder.mkdir(exist_ok=True)
    _copy_for_pnnx(sources.onnx, folder / "model.onnx")  # pnnx writes its by-products beside its input
    shape = ",".join(map(str, sources.input_shape))
    cmd = [pnnx_executable() or "pnnx", "model.onnx", f"inputshape=[{shape}]", "fp16=0", "device=cpu"]
    try:
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerUnavailable(f"pnnx could not convert the model: {exc}") from None
    if proc.returncode != 0 or not param.is_file() or not param.with_suffix(".bin").is_file():
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise PeerUnavailable(
            f"pnnx could not convert the model (exit {proc.returncode}): {lines[-1].strip() if lines else 'no output'}"
        )
    return str(param)


def _copy_for_pnnx(onnx_path: Path, dest: Path) -> None:
    """`onnx_path` at the lowest IR version its opsets allow: pnnx parses ONNX with an embedded
    ONNX Runtime that refuses IR versions newer than its own (the onnx package writes its
    newest), although nothing in a model of those opsets needs them."""
    import onnx
    from onnx.helper import find_min_ir_version_for

    model = onnx.load(str(onnx_path))
    model.ir_version = min(model.ir_version, find_min_ir_version_for(list(model.opset_import)))
    onnx.save(model, str(dest))


def environment(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads)}  # the OpenMP pool; opt.num_threads sizes each extraction's team


def open(model: str, threads: int) -> Session:
    """Load `model` (`.ncnn.param`, its `.bin` beside it) with `threads` threads, fp32 only."""
    import ncnn

    net = ncnn.Net()
    net.opt.num_threads = threads
    net.opt.use_vulkan_compute = False
    for option in REDUCED_PRECISION_OPTIONS:
        setattr(net.opt, option, False)
    if net.load_param(model) != 0 or net.load_model(str(Path(model).with_suffix(".bin"))) != 0:
        raise RuntimeError(f"ncnn could not load {model}")
    in_name, out_name = net.input_names()[0], net.output_names()[0]

    def mats(x: np.ndarray) -> list:
        # ncnn.Mat(array) wraps the array's memory; the clone owns a copy, so nothing can read freed memory
        images = np.ascontiguousarray(x, dtype=np.float32)
        return [ncnn.Mat(images[i]).clone() for i in range(images.shape[0])]

    def extract(mat):
        with net.create_extractor() as ex:
            ex.input(in_name, mat)
            _, out = ex.extract(out_name)
            return np.array(out)  # a copy, made before the extractor releases its blobs

    def run(x: np.ndarray) -> np.ndarray:
        return np.stack([extract(m).reshape(-1) for m in mats(x)])

    def timer(x: np.ndarray):
        inputs = mats(x)

        def run_once() -> None:
            for mat in inputs:
                with net.create_extractor() as ex:
                    ex.input(in_name, mat)
                    ex.extract(out_name)

        return run_once

    return Session(
        run,
        timer,
        {"version": ncnn.__version__, "precision": "f32", "converter": "pnnx fp16=0", "pnnx": _pnnx_version()},
    )


def _pnnx_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pnnx")
    except PackageNotFoundError:
        return None
