"""The tuning tasks of a model: exactly the kernels `build.compile_module` looks up later.

Tasks come from `build.prepare(mod, spec, fuse=...)` under the target, so each tuned workload
is the PrimFunc the compiler later finds in the database. Kernels without a reduction block
(reshape, concatenate, copies, elementwise) are skipped: their design space has a single point,
so tuning them only wastes trials; they run as TVM legalized them.
"""

from __future__ import annotations

from ..spec import TargetSpec


def worth_tuning(mod) -> bool:
    """A kernel is worth tuning when it has a reduction block (conv, dense, pool, mean).

    Reshape, concatenate and other copies have none: their search space is one schedule.
    """
    from tvm.s_tir.analysis import find_anchor_sblock

    try:
        return find_anchor_sblock(mod) is not None
    except Exception:  # noqa: BLE001 - an unusual kernel: let MetaSchedule try it
        return True


def extract(mod, spec: TargetSpec, *, fuse: bool | None = None, warn=None):
    """(tasks to tune, names skipped) for `mod` as `compile_module` will see it; `warn(line)`
    hears of a graph the layout passes declined (it is tuned as plain NCHW, as it compiles)."""
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    from ..build import BuildReport, prepare

    report = BuildReport()
    prepared = prepare(mod, spec, fuse=fuse, report=report)
    for line in report.warnings:
        if warn is not None:
            warn(line)
    tasks, skipped = [], []
    for task in [*extract_tasks(prepared, spec.target), *inplace_tasks(prepared, spec)]:
        (tasks if worth_tuning(task.dispatched[0]) else skipped).append(task)
    return tasks, sorted(t.task_name for t in skipped)


def inplace_tasks(prepared, spec: TargetSpec) -> list:
    """Tasks for the kernels only `call_tir_inplace` calls (the second branch of a concat-free
    Fire module): MetaSchedule's extraction (TVM 0.27) follows `call_tir` alone, so without this
    the heaviest convolutions would never be tuned. The database lookup at compile time covers
    every PrimFunc, so these records apply like any other."""
    import tvm
    from tvm.s_tir.meta_schedule import ExtractedTask

    from ..build import kernel_calls

    calls = kernel_calls(prepared, ops=("relax.call_tir_inplace",))
    tasks = []
    for name, weight in sorted(calls.items()):
        task_mod = tvm.IRModule({"main": prepared[name].with_attr("global_symbol", "main")})
        tasks.append(ExtractedTask(name, task_mod, spec.target, [task_mod], weight))
    return tasks


def kernel_flops(mod) -> float:
    """FLOPs of one call of a kernel (0 when TVM cannot count them): the allocator's prior."""
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except Exception:  # noqa: BLE001
        return 0.0
