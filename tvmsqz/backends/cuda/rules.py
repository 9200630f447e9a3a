"""GPU schedules for kernels that no tuning record scheduled: dlight's rules plus `FusedConv`.

An untuned build must still be correct and must not run any kernel single-threaded. dlight covers
single convolutions (Matmul), the global average pool (Reduction) and pools/reshapes (Fallback),
but it has no rule for a kernel with several convolutions (the fused Fire kernels of
`tvmsqz.passes.fuse`): it would give those to Fallback, one thread per output with a global temporary
and a separate launch per convolution. `FusedConv` is that rule.

Importing this module imports TVM; the backend imports it only when it schedules.
"""

from __future__ import annotations

import functools

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.schedule import SBlockRV
from tvm.target import Target


class FusedConv(GPUScheduleRule):
    """Kernels with two or more NCHW convolutions (the fused Fire kernels of `tvmsqz.passes.fuse`).

    Per convolution block, one launch: padding inlined into the reads; threadIdx.x over output
    pixels (coalesced NCHW loads and stores), threadIdx.y over output-channel groups; each thread
    accumulates `c_tile` output channels in registers (every input value it loads is used
    `c_tile` times); bias, ReLU, residual add and the store into the output's channel slice run
    on the registers (no global temporary, no separate epilogue launch).
    """

    def __init__(self, threads_x: int = 32, threads_y: int = 4, c_tile: int = 4, unroll: int = 64):
        self.threads_x, self.threads_y, self.c_tile, self.unroll = threads_x, threads_y, c_tile, unroll

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        try:
            root = sch.get_sblock("root")
            blocks = sch.get_child_blocks(root)
        except Exception:  # noqa: BLE001 - not a plain s_tir function
            return None

        def is_reduction(block: SBlockRV) -> bool:
            return self._is_reduction(sch, block)

        reductions = [b for b in blocks if is_reduction(b)]
        if len(reductions) < 2 or not all(self._conv_like(sch, b) for b in reductions):
            return None
        try:
            for block in blocks:
                if not is_reduction(block):
                    try:
                        sch.compute_inline(block)  # padding (and squeeze epilogues feeding convs)
                    except Exception:  # noqa: BLE001 - not inlinable: an output or a reused value
                        pass
            handled: set[str] = set()
            for block in reductions:
                handled |= self._schedule_conv(sch, block)
            for block in sch.get_child_blocks(root):  # anything left: one thread per element
                if sch.get(block).name_hint in handled:
                    continue
                if is_reduction(block):
                    return None
                loops = sch.get_loops(block)
                if not loops:
                    loops = [sch.add_unit_loop(block)]
                bx, tx = sch.split(sch.fuse(*loops), factors=[None, 256])
                sch.bind(bx, "blockIdx.x")
                sch.bind(tx, "threadIdx.x")
        except Exception:  # noqa: BLE001 - any failed step: leave the kernel to the next rule
            return None
        return sch

    @staticmethod
    def _is_reduction(sch: s_tir.Schedule, block: SBlockRV) -> bool:
        return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)

    @staticmethod
    def _conv_like(sch: s_tir.Schedule, block: SBlockRV) -> bool:
        """An NCHW conv: 4 spatial output axes, then only reduction axes, one 4-D write."""
        ivs = sch.get(block).iter_vars
        kinds = [iv.iter_type for iv in ivs]
        n_spatial = sum(k == tirx.IterVar.DataPar for k in kinds)
        return (
            len(sch.get_loops(block)) == len(ivs)
            and n_spatial == 4
            and kinds[:4] == [tirx.IterVar.DataPar] * 4
            and all(k == tirx.IterVar.CommReduce for k in kinds[4:])
            and len(kinds) > 4
            and len(sch.get(block).writes) == 1
            and len(sch.get(block).writes[0].region) == 4
        )

    def _schedule_conv(self, sch: s_tir.Schedule, block: SBlockRV) -> set[str]:
        """Schedule one conv block; returns the names of the blocks it placed."""
        loops = sch.get_loops(block)
        n, f, y, x, *rs = loops
        channels = int(sch.get(f).extent)
        c_tile = next(t for t in (self.c_tile, 2, 1) if channels % t == 0)
        sch.reorder(f, n, y, x, *rs)
        p = sch.fuse(n, y, x)
        f0, f1, f2 = sch.split(f, factors=[None, self.threads_y, c_tile])
        p0, p1 = sch.split(p, factors=[None, self.threads_x])
        sch.reorder(f0, p0, f1, p1, *rs, f2)
        sch.bind(f0, "blockIdx.y")
        sch.bind(p0, "blockIdx.x")
        sch.bind(f1, "threadIdx.y")
        sch.bind(p1, "threadIdx.x")
        write_back = sch.cache_write(block, 0, "local")
        placed = {sch.get(block).name_hint, sch.get(write_back).name_hint}
        sch.reverse_compute_at(write_back, p1, preserve_unit_loops=True)
        for consumer in sch.get_consumers(write_back):
            if self._is_reduction(sch, consumer):
                continue  # another conv reads this one (folded squeeze): it stays in global memory
            try:  # bias + ReLU (+ residual) straight from the registers into the output slice
                sch.reverse_compute_inline(consumer)
                continue
            except Exception:  # noqa: BLE001 - TVM raises ScheduleError or ValueError
                pass
            try:
                sch.reverse_compute_at(consumer, p1, preserve_unit_loops=True)
                placed.add(sch.get(consumer).name_hint)
            except Exception:  # noqa: BLE001 - left to the one-thread-per-element binding
                pass
        init = sch.decompose_reduction(block, rs[0])
        placed |= {sch.get(init).name_hint, sch.get(block).name_hint}  # "<conv>_init", "<conv>_update"
        sch.annotate(p1, "pragma_auto_unroll_max_step", self.unroll)
        sch.annotate(p1, "pragma_unroll_explicit", 1)
        return placed


@functools.lru_cache(maxsize=1)
def default_rules() -> tuple:
    """dlight's GPU rules, with `FusedConv` ahead of the one-thread-per-output Fallback.

    Order matters: the first rule that accepts a kernel schedules it, and Fallback accepts all.
    """
    return (
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        FusedConv(),
        dl.gpu.Fallback(),
    )
