"""CPU family (x86, aarch64, armv7): host checks, weight prepacking, (cross-)export, tuning.

ARM is this backend with a cross toolchain (`export.cc` in the target file): artifacts are
cross-linked on the host (`cross.export_cross`) and tuned over TVM RPC on the devices.

Tuned CPU convolutions want weights in blocked layouts. MetaSchedule's layout rewrite records
that wish; the passes here fold the weight transform into constants at compile time, so the
artifact keeps the plain `main(data)` interface and users never call a transform function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import TvmsqzError
from ...spec import TargetSpec, host_cpu_flags

DEVICE_TYPE = "cpu"


#: Whether this family's artifacts load through the TVM runtime library alone: CPU artifacts need
#: nothing but `libtvm_runtime.so` (`TVM_USE_RUNTIME_LIB=1`).
RUNTIME_ONLY = True

#: Precisions `--precision` accepts here, the default first: fp32, and int8 through QDQ folding
#: (`passes.qdq`) with tensorized dot-product kernels where the target names them (`int8.dot`),
#: TVM's generic int8 convolution elsewhere.
PRECISIONS = ("fp32", "int8")


def resolve_target_data(raw: dict) -> dict:
    """CPU target files need no family-specific resolution (aliases and "host" cores are generic)."""
    return raw


def runs_on_host(spec: TargetSpec) -> bool:
    """A native (not cross-linked) target whose required CPU flags this host has."""
    if spec.cc:
        return False
    return set(spec.data.get("requires_cpu_flags") or ()) <= host_cpu_flags()


def device_type(spec: TargetSpec | None = None) -> str:
    return DEVICE_TYPE


def device(spec: TargetSpec | None = None):
    import tvm

    return tvm.cpu(0)


#: The shared TVM pipeline (`tvmsqz.flow`) compiles, benches and tunes this family.
pipeline = None


def load_artifact(path: Path, manifest: dict | None) -> Any:
    """A loaded `.so` in a Relax VM on the CPU; runtime side, no compiler import."""
    from ...vm import VMArtifact

    return VMArtifact.open(path, manifest, DEVICE_TYPE)


def pre_tuning_passes(spec: TargetSpec) -> list:
    """Weights are layout-free (MetaSchedule may rewrite their layout, folded at compile time),
    except int8 kernels' (`kernels.int8.keep_weight_layout`)."""
    import tvm
    from tvm import relax

    from .kernels.int8 import keep_weight_layout

    keep = tvm.transform.module_pass(lambda mod, ctx: keep_weight_layout(mod), opt_level=0, name="KeepInt8Weights")
    return [relax.transform.AttachAttrLayoutFreeBuffers(), keep]


def post_database_passes(spec: TargetSpec) -> list:
    from tvm import relax

    from ...passes.fuse import LowerFireViews

    return [
        # SplitLayoutRewritePreproc drops root-block match_buffers (TVM 0.27), which the Fire
        # kernels use for their output slices: lower those views first.
        LowerFireViews(),
        relax.transform.SplitLayoutRewritePreproc(),
        relax.transform.LiftTransformParams(),
        relax.transform.FoldConstant(),
    ]


def layout_passes(spec: TargetSpec) -> list:
    """The target's activation layout (target data `layout`): NCHW[x]c blocked by the vector
    width, as measured fastest on x86; NCHW (nothing to do) where a target says so. `winograd`
    (2 or 4) turns the 3x3 stride-1 convs into Winograd F(m, 3) kernels (`kernels/winograd.py`);
    `classifier_pad` pads the classifier's outputs to a multiple of it (`tvmsqz.passes.pad_classes`)."""
    from .kernels.legalize import blocked_layout_passes

    layout = spec.data.get("layout") or {}
    if layout.get("conv2d") == "NHWC":
        from ...passes.layout import nhwc_layout_passes

        return nhwc_layout_passes()
    if layout.get("conv2d") != "NCHWc":
        return []
    return blocked_layout_passes(
        int(layout["block"]),
        int(layout.get("winograd", 0)),
        int(layout.get("classifier_pad", 0)),
        int(layout.get("winograd_min_size", 0)),
        (spec.data.get("int8") or {}).get("dot"),
    )


def default_schedule(mod, spec: TargetSpec):
    """Blocked convolutions without a tuned record get the heuristic direct-conv schedule; other
    CPU kernels stay as TVM legalized them (correct, slow)."""
    from .kernels.direct_space import apply_default

    return apply_default(mod)


def space_generator(spec: TargetSpec, task_mod, space: str | None = None):
    """MetaSchedule's design space for one task: the blocked direct-conv space for blocked
    convolutions (`kernels/direct_space.py`), MetaSchedule's generic space for everything else and
    when `space` (or the target data's `space`) is "generic"."""
    from .kernels.direct_space import is_blocked_conv
    from .kernels.direct_space import space_generator as conv_space

    choice = space or spec.data.get("space", "blocked")
    if choice == "blocked" and is_blocked_conv(task_mod["main"]):
        return conv_space()
    return "post-order-apply"


def pass_config(spec: TargetSpec) -> dict:
    return {}


#: The chunk-claiming parallel launcher (see its header), linked into every CPU artifact.
PARALLEL_LAUNCH_SOURCE = Path(__file__).with_name("parallel_launch.c")


def export(executable, spec: TargetSpec, path: Path) -> None:
    """Write the shared library atomically: a partial file never appears at `path`.

    The library carries `parallel_launch.c`: its kernels' parallel loops run on threads that claim
    chunks as they free up (installed at load by the runtime, `vm.install_parallel_launch`), so a
    slow or shared core no longer holds up every kernel as TVM's static split does.
    """
    # The linker may be a C++ driver (TVM uses g++): "-x c" compiles the source as the C it is.
    options = ["-x", "c", str(PARALLEL_LAUNCH_SOURCE), "-x", "none", "-O2", "-pthread"]
    if spec.cc:  # cross-linked: the device needs no compiler
        from ...toolchain import export_cross

        export_cross(executable, path, spec.cc, options=options)
        return
    from ...fsutil import export_library

    export_library(executable, path, options=options)


def tuning_builder_runner(
    spec: TargetSpec, rpc: dict | None, *, workers: int, measure_threads: int, measure: str = "warm"
):
    """Local builds and measurements on this host (`measure`: warm or cache-flushed timing, see
    `builder.MEASURE_MODES`), or cross builds measured on RPC devices (warm)."""
    if rpc is None:
        from ...builder import local_builder_runner

        return local_builder_runner(workers=workers, measure_threads=measure_threads, measure=measure)
    if measure != "warm":
        raise TvmsqzError("--measure flush times candidates on this host; RPC devices time them warm")
    from ...device import make_rpc_runner_builder

    return make_rpc_runner_builder(rpc["tracker"], rpc["key"], spec.cc)
