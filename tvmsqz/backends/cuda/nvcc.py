"""Finding nvcc and compiling CUDA source to a fatbin, on top of `tvm.support.nvcc`.

TVM's `compile_cuda` is the nvcc driver (same flags as TVM's own build-time compile, fast math
included; `TVM_CUDA_NVCC_NO_FAST_MATH=1` turns it off, as it does for TVM). What TVM lacks, and
this module adds:

* **Where nvcc is.** TVM runs a bare `nvcc` from PATH. A fresh machine has no CUDA toolkit;
  `scripts/setup_cuda.sh` pip-installs `nvidia-cuda-nvcc`, whose nvcc sits inside
  site-packages and is on no PATH. `find_nvcc` looks on PATH, then in that pip package, then
  under `CUDA_HOME` and `CUDA_PATH`, and `use_nvcc` puts the one found first on PATH, so TVM's
  calls (here, in its build-time callback and in MetaSchedule's builder workers, which inherit
  the environment) run the same nvcc.
* **Checks before compiling.** A missing nvcc, or one too old for the target's architecture
  (`nvcc --list-gpu-code`), is a one-line `TvmsqzError` before minutes of building, not a
  traceback from a subprocess at export.
* **What the fatbin holds.** SASS for the architecture *and* its PTX (so a newer GPU can JIT it),
  uncompressed so that `fatbin.device_code_info` can read the PTX's `.target`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import shutil
import subprocess
from pathlib import Path

from ...errors import TvmsqzError
from ...spec import TargetSpec
from .detect import arch_number, base_arch, spec_arch

#: pip distributions that ship an nvcc (CUDA 13 names it without a suffix, CUDA 12 with `-cu12`).
PIP_NVCC_DISTRIBUTIONS = ("nvidia-cuda-nvcc", "nvidia-cuda-nvcc-cu12")

_NOT_FOUND = (
    "nvcc (the CUDA toolkit compiler) was not found on PATH, in the nvidia-cuda-nvcc pip package, "
    "or under CUDA_HOME / CUDA_PATH; CUDA targets need it to compile device code (no GPU needed): "
    "pip install nvidia-cuda-nvcc (what scripts/setup_cuda.sh does) or add a CUDA 12/13 toolkit's "
    "bin/ to PATH"
)


def _executable(path: Path | str) -> str | None:
    return str(path) if os.path.isfile(path) and os.access(path, os.X_OK) else None


def pip_nvcc() -> str | None:
    """The nvcc of an installed `nvidia-cuda-nvcc` wheel (inside site-packages), if any."""
    for name in PIP_NVCC_DISTRIBUTIONS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for entry in dist.files or ():
            if entry.parts[-2:] == ("bin", "nvcc"):
                found = _executable(Path(str(dist.locate_file(entry))))
                if found:
                    return found
    return None


def locate_nvcc() -> str | None:
    """Path of the nvcc to use, or None: PATH, then the pip package, then `CUDA_HOME`/`CUDA_PATH`.

    PATH first so that a user's own toolkit wins over anything tvmsqz's setup installed.
    """
    found = shutil.which("nvcc") or pip_nvcc()
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if found is None and os.environ.get(var):
            found = _executable(Path(os.environ[var]) / "bin" / "nvcc")
    return found


def find_nvcc() -> str:
    """`locate_nvcc`, or a one-line `TvmsqzError` saying how to get an nvcc."""
    found = locate_nvcc()
    if found is None:
        raise TvmsqzError(_NOT_FOUND)
    return found


def use_nvcc(nvcc: str) -> str:
    """Put `nvcc`'s folder first on PATH (unless PATH already finds it) and return `nvcc`."""
    if shutil.which("nvcc") != nvcc:
        os.environ["PATH"] = os.pathsep.join([os.path.dirname(nvcc), os.environ.get("PATH", "")])
    return nvcc


def prefer_nvcc() -> None:
    """Where a GPU is present TVM compiles kernels while building (and in MetaSchedule's builder
    workers); make that use nvcc too: TVM's default, NVRTC, needs the cuda-python package. A
    user's own TVM_CUDA_COMPILE_MODE is kept."""
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")


@functools.lru_cache(maxsize=8)
def nvcc_archs(nvcc: str) -> tuple[str, ...] | None:
    """The real architectures this nvcc compiles for (`--list-gpu-code`; TVM has no such query)."""
    try:
        out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return tuple(out.stdout.split()) if out.returncode == 0 else None


@functools.lru_cache(maxsize=8)
def nvcc_version(nvcc: str) -> str:
    """`13.0` for the toolkit `nvcc` belongs to (TVM's `get_cuda_version`), or "unknown"."""
    from tvm.support.nvcc import get_cuda_version

    try:
        version = get_cuda_version(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    except (OSError, RuntimeError, StopIteration, ValueError):
        return "unknown"
    return ".".join(str(part) for part in version[:2])


def check_toolchain(spec: TargetSpec) -> str:
    """Refuse, before compiling, a bad architecture or a missing/too old nvcc; returns nvcc's path."""
    arch = spec_arch(spec)
    nvcc = use_nvcc(find_nvcc())
    supported = nvcc_archs(nvcc)
    if supported is not None and base_arch(arch) not in supported:
        raise TvmsqzError(
            f"nvcc {nvcc_version(nvcc)} at {nvcc} cannot compile for {arch} "
            f"(it supports {', '.join(supported)}); use a newer CUDA toolkit or another target"
        )
    prefer_nvcc()
    return nvcc


def _first_error(message: str) -> str:
    """The first compiler error line of TVM's `RuntimeError` (source, then nvcc's output)."""
    output = message.split("Compilation error:", 1)[-1].strip().splitlines()
    return next((line for line in output if "error" in line.lower()), output[-1] if output else "").strip()


def compile_cuda_source(code: str, arch: str, nvcc: str | None = None) -> bytes:
    """CUDA C++ source -> fatbin with SASS for `arch` and its PTX (uncompressed, readable)."""
    import tvm
    from tvm.support.nvcc import compile_cuda

    use_nvcc(nvcc or find_nvcc())
    num = arch_number(arch)
    # TVM reads the compute version off the current target even when -gencode is given.
    with tvm.target.Target({"kind": "cuda", "arch": arch}):
        try:
            return bytes(
                compile_cuda(
                    code,
                    target_format="fatbin",
                    compiler="nvcc",
                    arch=["-gencode", f"arch=compute_{num},code=[sm_{num},compute_{num}]"],
                    options=["-Xfatbin=-compress=false"],
                )
            )
        except (OSError, RuntimeError) as exc:
            raise TvmsqzError(f"nvcc could not compile the kernels for {arch}: {_first_error(str(exc))}") from None
