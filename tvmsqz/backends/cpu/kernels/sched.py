"""Schedule primitives shared by the CPU kernels' spaces (direct and Winograd).

Why one module: both spaces must emit the same trace instructions for the same decisions
(MetaSchedule replays traces; the shipped databases hold them), so they share these.
"""

from __future__ import annotations

from .constants import UNROLL_STEPS


def block_named(sch, name: str):
    """The block `name` of a (fused) kernel, or None.

    Looked up by name: the lookup is part of the schedule's trace, and MetaSchedule replays
    traces, so it must not depend on anything but the workload (a walk over child blocks did).
    """
    from tvm.s_tir import ScheduleError

    try:
        return sch.get_sblock(name)
    except (ScheduleError, ValueError, RuntimeError):
        return None


def sample_unroll(sch) -> None:
    """The searched unroll depth of a whole kernel: MetaSchedule's `unroll_explicit` annotation on
    the root block, one of `UNROLL_STEPS` (the same instructions in every space here, so traces
    replay alike)."""
    root = sch.get_sblock("root")
    step = sch.sample_categorical(list(UNROLL_STEPS), [1.0 / len(UNROLL_STEPS)] * len(UNROLL_STEPS))
    sch.annotate(root, "meta_schedule.unroll_explicit", step)


def epilogue_at(sch, block, loop) -> None:
    """Inline the elementwise chain after the conv, then compute its last block per register tile.

    A side input of the chain computed in the kernel (the channel-block slice of a Fire bypass,
    `passes.bypass`) is inlined into its reader first: the epilogue reads the bypass in place.
    Kernels without one get no extra instruction, so the shipped traces replay unchanged.
    """
    consumers = sch.get_consumers(block)
    while consumers:
        (consumer,) = consumers[:1]
        for side in sch.get_producers(consumer):
            if not sch.get(side).same_as(sch.get(block)) and not sch.get_producers(side):
                sch.compute_inline(side)
        nxt = sch.get_consumers(consumer)
        if not nxt:
            sch.reverse_compute_at(consumer, loop, preserve_unit_loops=True)
            inner = sch.get_loops(consumer)[-1]
            sch.vectorize(inner)
            return
        sch.compute_inline(consumer)
        consumers = nxt
