"""Load a compiled artifact and run it: needs only the TVM runtime and numpy.

This module is what a device runs, so it must not import the compiler side of tvmsqz
(onnx, torch, the Relax frontend). The manifest beside the `.so` says what input to feed and
which family's backend loads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifact import Artifact
from .errors import TvmsqzError
from .manifest import manifest_path, read_manifest, verify_files
from .vm import check_input, prefer_runtime_lib, tvm_import, tvm_libraries_mapped

__all__ = [
    "Artifact",
    "check_input",
    "load",
    "prefer_runtime_lib",
    "read_manifest",
    "top_k",
    "tvm_import",
    "tvm_libraries_mapped",
]

#: The family whose loader opens a `.so` that has no manifest (nothing says otherwise; a TVM
#: VM module on the CPU is what `tvmsqz compile` writes by default).
MANIFESTLESS_FAMILY = "cpu"


def load(path: str | Path, *, warn=None) -> Artifact:
    """Verify an artifact against its manifest, then load it with its family's backend.

    A `.so` without a manifest still loads (as a CPU artifact), with a warning through `warn`:
    nothing then vouches for its bytes or its input.
    """
    from .backends import backend_for_family

    path = Path(path)
    if not path.is_file():
        raise TvmsqzError(f"no such file: {path}")
    manifest = read_manifest(path)
    if manifest is None:
        if warn is not None:
            warn(
                f"warning: {path} has no manifest ({manifest_path(path).name}): its checksum and input "
                "cannot be checked"
            )
        return backend_for_family(MANIFESTLESS_FAMILY).load_artifact(path, None)
    verify_files(path, manifest)
    return backend_for_family(manifest["target"]["family"]).load_artifact(path, manifest)


def top_k(scores: np.ndarray, k: int = 5, index: int = 0) -> list[tuple[int, float]]:
    """The `k` best (class, score) of sample `index` of a batch of scores."""
    flat = np.asarray(scores).reshape(scores.shape[0], -1)[index]
    order = np.argsort(-flat)[:k]
    return [(int(i), float(flat[i])) for i in order]
