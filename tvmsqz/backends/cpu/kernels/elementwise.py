"""Default schedule of the kernels the tuner leaves alone: elementwise chains and layout copies.

Why: a kernel without a reduction has one schedule in the tuner's eyes and is never tuned, so
it ran as TVM legalized it: every fused operation its own serial loop nest over a full
intermediate buffer, on one thread. The int8 graph's input kernel (quantize, layout, regroup to
4 lanes) took 34.5 us at 1 thread that way, 10.1 us with this schedule: every block inlined into
the last, its outer loops fused and parallel, the innermost unrolled when short (the lanes of a
blocked layout), the rest left to LLVM's vectorizer.
"""

from __future__ import annotations

#: The innermost loop is unrolled up to this extent (the lanes of NCHW[x]c blocks).
UNROLL_LANES = 16


def schedule_elementwise(func):
    """`func` scheduled as above, or None when it has a reduction, fewer than three loops in its
    last block, or a block that does not inline (left as it was: correct, slow)."""
    from tvm import tirx as tir
    from tvm.s_tir import Schedule, ScheduleError

    sch = Schedule(func)
    try:
        root = sch.get_sblock("root")
        blocks = sch.get_child_blocks(root)
        if not blocks or any(iv.iter_type != tir.IterVar.DataPar for b in blocks for iv in sch.get(b).iter_vars):
            return None
        for block in blocks[:-1]:
            sch.compute_inline(block)
        (last,) = sch.get_child_blocks(root)
        loops = sch.get_loops(last)
        if len(loops) < 3:
            return None
        sch.parallel(sch.fuse(*loops[:-2]))
        inner = int(sch.get(loops[-1]).extent)
        if inner <= UNROLL_LANES:
            sch.unroll(loops[-1])
    except (ScheduleError, ValueError, RuntimeError):
        return None
    return sch.mod["main"]
