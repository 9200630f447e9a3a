"""Which NVIDIA architectures exist, which one this machine's GPU is, and which GPUs run which.

Everything here reads `nvidia-smi` or strings; nothing imports TVM, so resolving a target file
(`tvmsqz.targets.get_target`) stays cheap on machines that never compile for CUDA.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from ...errors import TvmsqzError
from ...spec import TargetSpec

#: Real NVIDIA SM architectures (Turing and newer: what CUDA 12 and 13 compile for).
KNOWN_ARCHS = (
    "sm_75",
    "sm_80",
    "sm_86",
    "sm_87",
    "sm_88",
    "sm_89",
    "sm_90",
    "sm_90a",
    "sm_100",
    "sm_100a",
    "sm_101",
    "sm_103",
    "sm_110",
    "sm_120",
    "sm_121",
)
#: What `"arch": "auto"` means on a machine without a GPU (H100/H200, the GPUs tuned for).
DEFAULT_ARCH = "sm_90"


def detect_gpu_arch() -> str | None:
    """`sm_XY` of the first GPU `nvidia-smi` reports, or None without a GPU or driver.

    `nvidia-smi` rather than the CUDA driver API: it answers without loading libcuda into this
    process (which would pin a CUDA context in every compile), and its absence is the cheapest
    "no GPU here" signal. Not cached, so a test can put a fake `nvidia-smi` on PATH.
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"\s*(\d+)\.(\d+)", out.stdout) if out.returncode == 0 else None
    return f"sm_{match.group(1)}{match.group(2)}" if match else None


def check_arch(arch: object, target_name: str = "cuda") -> str:
    """The architecture if it is a known SM version, else a one-line `TvmsqzError`.

    Checked before anything is compiled: nvcc's own message for a bad `-gencode` comes minutes
    into a build and does not name the target file that is wrong.
    """
    if arch == "auto":
        raise TvmsqzError(
            f"target {target_name!r}: CUDA architecture 'auto' was not resolved "
            "(tvmsqz.targets must call tvmsqz.backends.cuda.resolve_target_data)"
        )
    if not isinstance(arch, str) or arch not in KNOWN_ARCHS:
        raise TvmsqzError(
            f"target {target_name!r}: unknown CUDA architecture {arch!r} (known: {', '.join(KNOWN_ARCHS)})"
        )
    return arch


def arch_number(arch: str) -> str:
    """`sm_90a` -> `90a`: the spelling `-gencode` and the schedule folders (`cuda-sm90a`) use."""
    return arch.split("_", 1)[1]


def base_arch(arch: str) -> str:
    """`sm_90a` -> `sm_90`: what fatbin headers and `nvcc --list-gpu-code` name for `a`/`f` code."""
    return arch.rstrip("af")


def compute_capability(arch: str) -> tuple[int, int, str]:
    """`sm_86` -> (8, 6, ""), `sm_90a` -> (9, 0, "a"), `sm_121` -> (12, 1, "")."""
    digits = base_arch(arch_number(arch))
    return int(digits[:-1]), int(digits[-1]), arch_number(arch)[len(digits) :]


def gpu_runs_arch(gpu_arch: str, arch: str) -> bool:
    """Whether a GPU of `gpu_arch` can run an artifact built for `arch`.

    An artifact holds SASS for `arch` plus its PTX, and the driver JIT-compiles PTX for any newer
    GPU, so plain `sm_XY` code runs on every GPU of compute capability >= X.Y. Architecture-
    specific code (`sm_90a`) runs only on exactly that GPU; family code (`sm_100f`) on that major
    version.
    """
    g_major, g_minor, _ = compute_capability(gpu_arch)
    major, minor, suffix = compute_capability(arch)
    if suffix == "a":
        return (g_major, g_minor) == (major, minor)
    if suffix == "f":
        return g_major == major and g_minor >= minor
    return (g_major, g_minor) >= (major, minor)


def spec_arch(spec: TargetSpec) -> str:
    """The checked architecture of a resolved CUDA target."""
    return check_arch((spec.tvm_config or {}).get("arch"), spec.name)
