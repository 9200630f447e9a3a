"""CPU family (x86, aarch64, armv7): weight prepacking and (cross-)export.

Tuned CPU convolutions want weights in blocked layouts. MetaSchedule's layout rewrite records
that wish; the passes here fold the weight transform into constants at compile time, so the
artifact keeps the plain `main(data)` interface and users never call a transform function.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..quiet import quiet_stderr
from ..targets import TargetSpec


def pre_tuning_passes(spec: TargetSpec) -> list:
    from tvm import relax

    return [relax.transform.AttachAttrLayoutFreeBuffers()]


def post_database_passes(spec: TargetSpec) -> list:
    from tvm import relax

    from ..fuse import LowerFireViews

    return [
        # SplitLayoutRewritePreproc drops root-block match_buffers (TVM 0.27), which the Fire
        # kernels use for their output slices: lower those views first.
        LowerFireViews(),
        relax.transform.SplitLayoutRewritePreproc(),
        relax.transform.LiftTransformParams(),
        relax.transform.FoldConstant(),
    ]


def default_schedule(mod, spec: TargetSpec):
    """CPU kernels without a tuned record stay as TVM legalized them (correct, slow)."""
    return mod


def export(executable, spec: TargetSpec, path: Path) -> None:
    """Write the shared library atomically: a partial file never appears at `path`."""
    import tvm

    if spec.cc:  # cross-linked: the device needs no compiler
        from ..device import export_cross

        export_cross(executable, path, spec.cc)
        return
    fd, tmp = tempfile.mkstemp(suffix=".so", prefix=".tvmsqz-", dir=path.parent)
    os.close(fd)
    try:
        with quiet_stderr():
            executable.export_library(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pass_config(spec: TargetSpec) -> dict:
    return {}


def device(spec: TargetSpec):
    import tvm

    return tvm.cpu(0)
