"""The tvmsqz artifact, loaded as a device would: TVM's runtime library only, no compiler side.

`TVM_USE_RUNTIME_LIB=1` keeps `libtvm_compiler` out of the process (CPU artifacts, see `open`)
and the compiler-side Python packages (torch, onnx, ...) are made unimportable: `import tvm`
would otherwise pull in torch, whose OpenMP pool a device does not have. `TVM_NUM_THREADS`
sizes TVM's thread pool.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from .base import PeerUnavailable, Session, Sources, not_installed

COMPILER_SIDE = ("torch", "onnx", "onnxruntime", "onnxscript", "xgboost", "scipy", "sklearn", "skimage", "matplotlib")


class _NotOnDevice:
    """Meta-path finder refusing the compiler-side packages, as they are absent on a device."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in COMPILER_SIDE:
            raise ImportError(f"{name} is not on a deployment device")
        return None


def available() -> str | None:
    return not_installed("tvm", "it is a dependency of tvmsqz")


def prepare(sources: Sources) -> str:
    if sources.artifact is None:
        raise PeerUnavailable("the artifact runs on an RPC device, not on this host")
    return str(sources.artifact)


def environment(threads: int) -> dict[str, str]:
    return {"TVM_NUM_THREADS": str(threads), "TVM_USE_RUNTIME_LIB": "1"}


def open(model: str, threads: int) -> Session:
    """Load the `.so` through its manifest's backend, as `tvmsqz run` does.

    Only CPU artifacts run runtime-only: TVM loads a GPU's runtime library (libtvm_runtime_cuda)
    from its backend hooks, which runtime-only mode skips, so those keep the full library."""
    from ..backends import backend_for_family
    from ..manifest import read_manifest

    family = ((read_manifest(Path(model)) or {}).get("target") or {}).get("family", "cpu")
    if backend_for_family(family).RUNTIME_ONLY:
        sys.meta_path.insert(0, _NotOnDevice())
    elif "tvm" not in sys.modules:
        os.environ.pop("TVM_USE_RUNTIME_LIB", None)
    import tvm

    from ..runtime import load

    artifact = load(model)
    runtime_only = bool(getattr(tvm.base, "_RUNTIME_ONLY", False))

    def run(x: np.ndarray) -> np.ndarray:
        return artifact.run(x)

    return Session(run, artifact.timer, {"version": tvm.__version__, "precision": "f32", "runtime_only": runtime_only})
