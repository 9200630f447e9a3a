"""A schedule space made for direct convolution in the channel-blocked layout (`legalize`, `direct`).

MetaSchedule's generic CPU space (multi-level tiling over every loop) is large and converges
slowly on these convolutions; the NeoCPU schedule is known to be near the machine's peak for
them. This module is that schedule with its few real choices left to the search:

    parallel   n x output-channel tiles x output rows (fused), one thread per chunk
    register   a tile of `ow_tile` output columns x `oc_tile` channel blocks of accumulators
    reduce     input-channel blocks, kernel rows, kernel columns, then one channel lane:
               each step broadcasts one input value against an `x`-lane vector of weights
    vector     the innermost output-channel lane (the block)
    epilogue   bias + ReLU (+ anything elementwise FuseOps put after the conv) applied to the
               register tile right after it is computed; the padding is read in place

`ow_tile` and `oc_tile` are perfect-tile samples (divisors, so no tail loops), the unroll depth
is MetaSchedule's `unroll_explicit` sample: about 5 x 3 x 4 points per conv, which the XGBoost
search covers in 32-64 trials. `schedule_conv(sch, block, ow_tile=..., oc_tile=...)` with fixed
values is the untuned default.
"""

from __future__ import annotations

from .constants import CONV_BLOCK, MAX_ACCUMULATORS
from .elementwise import schedule_elementwise
from .int8 import int8_block, schedule_int8
from .sched import block_named, epilogue_at, sample_unroll
from .winograd import is_winograd, schedule_winograd


def conv_block(sch):
    """The blocked-conv reduction block of a (fused) kernel, or None."""
    return block_named(sch, CONV_BLOCK)


def default_tiles(out_w: int, k_chunks: int) -> tuple[int, int]:
    """Heuristic register tile for an untuned conv: widest divisor of the output width that,
    with two channel blocks where possible, fits the accumulator budget."""
    oc_tile = 2 if k_chunks % 2 == 0 else 1
    ow_tile = max(d for d in range(1, out_w + 1) if out_w % d == 0 and d * oc_tile <= MAX_ACCUMULATORS // 2 + 2)
    return ow_tile, oc_tile


def schedule_conv(sch, block, *, ow_tile: int | None = None, oc_tile: int | None = None, sample: bool = False):
    """Apply the blocked direct-conv schedule to `block` (see the module docstring)."""
    n, oc, oh, ow, ob, ic, kh, kw = sch.get_loops(block)
    (kernel,) = [r.source for r in sch.get(block).reads if len(r.source.shape) == 6]
    in_lanes = int(kernel.shape[4])  # the input channel block (1 for the first conv)
    for producer in sch.get_producers(block):  # the padding is read in place
        if sch.get(producer).name_hint.endswith("pad"):
            sch.compute_inline(producer)
    out_w, k_chunks = int(sch.get(ow).extent), int(sch.get(oc).extent)
    if sample:
        ow_factors = sch.sample_perfect_tile(ow, n=2, max_innermost_factor=MAX_ACCUMULATORS)
        oc_factors = sch.sample_perfect_tile(oc, n=2, max_innermost_factor=4)
    else:
        if ow_tile is None or oc_tile is None:
            ow_tile, oc_tile = default_tiles(out_w, k_chunks)
        ow_factors, oc_factors = [None, ow_tile], [None, oc_tile]
    ico, ici = sch.split(ic, [None, in_lanes])
    owo, owi = sch.split(ow, ow_factors)
    oco, oci = sch.split(oc, oc_factors)
    sch.reorder(n, oco, oh, owo, ico, kh, kw, ici, oci, owi, ob)
    outer = sch.fuse(n, oco, oh)
    sch.parallel(outer)
    epilogue_at(sch, block, owo)
    sch.vectorize(ob)
    sch.unroll(owi)
    sch.unroll(oci)
    if sample:
        sample_unroll(sch)
    else:
        sch.unroll(kw)
    return sch


def space_fn(sch) -> None:
    """`ScheduleFn` body for MetaSchedule: the sampled blocked-conv (Winograd, int8) schedule."""
    if is_winograd(sch):
        schedule_winograd(sch, sample=True)
        return
    block, intrin = int8_block(sch)
    if block is not None:
        schedule_int8(sch, block, intrin, sample=True)
        return
    block = conv_block(sch)
    if block is not None:
        schedule_conv(sch, block, sample=True)


def space_generator():
    """The MetaSchedule space generator for blocked-conv tasks (LLVM postprocessors and mutators)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.space_generator.ScheduleFn(space_fn, sch_rules=[], postprocs="llvm", mutator_probs="llvm")


def is_blocked_conv(func) -> bool:
    """Whether a PrimFunc holds a blocked (direct or Winograd) convolution (and so gets this space)."""
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    return is_winograd(sch) or conv_block(sch) is not None or int8_block(sch)[0] is not None


def apply_default(mod):
    """Give every unscheduled blocked-conv kernel the heuristic schedule (no tuning record), and
    every kernel without a reduction (never tuned) the parallel elementwise one."""
    from tvm import tirx as tir
    from tvm.s_tir import Schedule

    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tir.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled")):
            continue
        sch = Schedule(func)
        block = conv_block(sch)
        int8, intrin = int8_block(sch)
        if is_winograd(sch):
            schedule_winograd(sch)
        elif int8 is not None:
            schedule_int8(sch, int8, intrin)
        elif block is not None:
            schedule_conv(sch, block)
        else:
            scheduled = schedule_elementwise(func)
            if scheduled is not None:
                mod[gv] = scheduled.with_attr("tirx.is_scheduled", True)
            continue
        mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return mod
