"""CUDA family (NVIDIA GPUs): the backend hooks. The work is in the modules beside this one.

* `detect`: known SM architectures, the GPU `nvidia-smi` reports, which GPU runs which code.
* `nvcc`: finding nvcc (PATH, the `nvidia-cuda-nvcc` pip package, CUDA_HOME) and compiling
  CUDA source to a fatbin through `tvm.support.nvcc`.
* `fatbin`: reading fatbins, cubins and ELF symbols as bytes (no GPU needed).
* `blob`: the module blob `export_library` embeds, and the rewrite that puts fatbins in it.
* `rules`: the default GPU schedules (dlight + `FusedConv`).

What this backend guarantees:

* **Architecture.** `targets/cuda-sm80|86|89|90.json` fix the SM architecture; `targets/cuda.json`
  says `"arch": "auto"`, which `resolve_target_data` turns into the architecture of the first
  GPU that `nvidia-smi` reports, or `sm_90` (with a note on stderr) on a machine without one.
  An architecture that is not a real NVIDIA SM version is refused before anything is compiled.
* **nvcc.** Device code is compiled by nvcc, a missing one is refused before anything is
  compiled. No GPU is needed to compile.
* **Artifact.** `export` writes a `.so` whose embedded CUDA module holds a *fatbin* with SASS for
  the requested architecture plus its PTX (so newer GPUs can JIT it); the GPU machine needs only
  the TVM runtime and the driver.
* **Untuned kernels.** `default_schedule` gives every kernel that no tuning record scheduled a GPU
  schedule (`rules`).
* **Launch overhead.** `pass_config` turns on Relax's `RewriteCUDAGraph`: the kernels of one
  inference are captured once into a CUDA graph and replayed with one launch.

Importing this package imports no TVM (target files are resolved through it on every machine);
`rules` and the TVM-side of `nvcc`/`blob` load when a build needs them.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import TvmsqzError
from ...spec import TargetSpec
from .blob import artifact_device_code, pack_imports_for
from .detect import DEFAULT_ARCH, KNOWN_ARCHS, arch_number, check_arch, detect_gpu_arch, gpu_runs_arch, spec_arch
from .nvcc import check_toolchain, find_nvcc, nvcc_version, prefer_nvcc

__all__ = [
    "DEFAULT_ARCH",
    "KNOWN_ARCHS",
    "artifact_device_code",
    "candidate_export",
    "check_arch",
    "check_toolchain",
    "default_schedule",
    "detect_gpu_arch",
    "device",
    "device_type",
    "export",
    "find_nvcc",
    "load_artifact",
    "nvcc_version",
    "pass_config",
    "pipeline",
    "post_database_passes",
    "pre_tuning_passes",
    "resolve_target_data",
    "runs_on_host",
    "tuning_builder_runner",
]

#: The shared TVM pipeline (`tvmsqz.flow`) compiles, benches and tunes this family.
pipeline = None

DEVICE_TYPE = "cuda"
log = logging.getLogger("tvmsqz")


# ----------------------------------------------------------------------------------------------
# Target data
# ----------------------------------------------------------------------------------------------


#: Whether this family's artifacts load through the TVM runtime library alone: runtime-only TVM
#: skips the hooks that load `libtvm_runtime_cuda.so`: CUDA artifacts keep the full library.
RUNTIME_ONLY = False

#: Precisions `--precision` accepts here, the default first: fp32 only (int8 on CUDA is not built yet).
PRECISIONS = ("fp32",)


def resolve_target_data(raw: dict) -> dict:
    """Resolve a CUDA target file's `"arch": "auto"` (and `"schedules": "auto"`) and validate it.

    Called by `tvmsqz.targets.get_target` for every target of family `cuda`; returns a new dict.
    """
    raw = dict(raw)
    tvm_config = dict(raw.get("tvm") or {})
    arch = tvm_config.get("arch")
    if arch == "auto":
        arch = detect_gpu_arch()
        if arch is None:
            arch = DEFAULT_ARCH
            _note_default_arch()
            raw["arch_source"] = "default (no GPU found)"
        else:
            raw["arch_source"] = "detected with nvidia-smi"
        tvm_config["arch"] = arch
    check_arch(arch, raw.get("name", "cuda"))
    raw["tvm"] = tvm_config
    prefer_nvcc()
    if raw.get("schedules") == "auto":
        raw["schedules"] = f"cuda-sm{arch_number(arch)}"
    return raw


@functools.lru_cache(maxsize=1)
def _note_default_arch() -> None:
    log.warning(
        "note: no GPU found (nvidia-smi); target cuda compiles for %s (pick cuda-sm80, cuda-sm86, "
        "cuda-sm89 or cuda-sm90 to choose)",
        DEFAULT_ARCH,
    )


def runs_on_host(spec: TargetSpec) -> bool:
    """Whether this machine's GPU (the first `nvidia-smi` reports) can run the target's artifacts."""
    gpu = detect_gpu_arch()
    return gpu is not None and gpu_runs_arch(gpu, spec_arch(spec))


def device_type(spec: TargetSpec | None = None) -> str:
    """ "cuda": the device name `tvm.device`, the runtime and MetaSchedule's runner take."""
    return DEVICE_TYPE


def load_artifact(path: Path, manifest: dict | None) -> Any:
    """A CUDA `.so` in a Relax VM on the first GPU (runtime side: no compiler, no nvcc needed)."""
    from ...vm import VMArtifact

    return VMArtifact.open(path, manifest, DEVICE_TYPE)


def device(spec: TargetSpec | None = None):
    """The first GPU: the one `detect_gpu_arch` (and so `runs_on_host`) looked at."""
    import tvm

    return tvm.cuda(0)


# ----------------------------------------------------------------------------------------------
# TVM build flow
# ----------------------------------------------------------------------------------------------


def pre_tuning_passes(spec: TargetSpec) -> list:
    """GPU tuning needs no layout rewrite; this is where a bad arch or missing nvcc stops a build."""
    check_toolchain(spec)
    return []


def post_database_passes(spec: TargetSpec) -> list:
    return []


def layout_passes(spec: TargetSpec) -> list:
    """GPU kernels stay NCHW (dlight and the fused-conv rule are written for it)."""
    return []


def space_generator(spec: TargetSpec, task_mod, space: str | None = None):
    """MetaSchedule's generic GPU space for every task."""
    return "post-order-apply"


def default_schedule(mod, spec: TargetSpec):
    """Schedule every kernel that no tuning record scheduled (`tirx.is_scheduled` unset)."""
    from tvm.s_tir import dlight as dl

    from .rules import default_rules

    with spec.target:
        return dl.ApplyDefaultSchedule(*default_rules())(mod)


def pass_config(spec: TargetSpec) -> dict:
    """PassContext options for `tvm.compile`: capture each inference into a CUDA graph.

    `TVMSQZ_CUDA_GRAPH=0` in the environment builds without the graph (every kernel launched
    one by one), which is how `benchmarks/gpu_bench.py` measures what the graph saves.
    """
    return {"relax.backend.use_cuda_graph": cuda_graph_enabled()}


def cuda_graph_enabled() -> bool:
    """False when `TVMSQZ_CUDA_GRAPH` is `0`, `false`, `no` or `off`; True otherwise."""
    return os.environ.get("TVMSQZ_CUDA_GRAPH", "1").strip().lower() not in ("0", "false", "no", "off")


def export(executable, spec: TargetSpec, path: Path) -> None:
    """Write the `.so` atomically, its CUDA kernels compiled by nvcc for the target's arch."""
    from ...fsutil import export_library

    check_toolchain(spec)
    export_library(executable, path, fpack_imports=pack_imports_for(executable.mod, spec))


def _export_candidate(arch: str, rt_mod) -> str:
    """MetaSchedule builder export for RPC tuning: a `.so` with nvcc-compiled device code."""
    spec = TargetSpec(name=f"cuda-{arch}", family="cuda", description="", tvm_config={"kind": "cuda", "arch": arch})
    check_toolchain(spec)  # a builder worker: nvcc onto its PATH
    path = os.path.join(tempfile.mkdtemp(prefix="tvmsqz-cand-"), "candidate.so")
    rt_mod.export_library(path, fpack_imports=pack_imports_for(getattr(rt_mod, "mod", rt_mod), spec))
    return path


def candidate_export(spec: TargetSpec) -> Callable[[Any], str]:
    """`f_export` for a MetaSchedule builder whose candidates run on a remote GPU (RPC tuning).

    Built on a machine without a GPU, a candidate holds CUDA source (TVM compiles it only where a
    GPU is present); this export compiles it with nvcc for the target's arch, so the GPU machine
    needs only the TVM runtime. Picklable (builder workers receive it): a partial of a
    module-level function over the arch string, not a closure over the spec.
    """
    return functools.partial(_export_candidate, spec_arch(spec))


def tuning_builder_runner(
    spec: TargetSpec, rpc: dict | None, *, workers: int, measure_threads: int, measure: str = "warm"
):
    """Build and measure on this machine's GPU, or build here and measure on RPC GPUs.

    `measure` is a CPU cache setting: GPU kernels are always timed warm (flush is refused).

    Locally TVM compiles the candidates itself (a GPU is present); over RPC the builder host may
    have none, so `candidate_export` gives them nvcc-compiled device code.
    """
    if measure != "warm":
        raise TvmsqzError("--measure flush is a CPU cache setting: GPU kernels are timed warm")
    if rpc is None:
        from ...builder import local_builder_runner

        return local_builder_runner(workers=workers, measure_threads=measure_threads)
    from ...device import make_rpc_runner_builder

    return make_rpc_runner_builder(rpc["tracker"], rpc["key"], spec.cc, f_export=candidate_export(spec))
