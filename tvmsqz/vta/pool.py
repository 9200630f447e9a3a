"""Max-pooling on VTA's ALU, so that activations stay in VTA's layout between layers.

VTA has no pooling unit; its ALU works on the accumulator, lane-wise on 16-wide vectors, and
MAX with a second accumulator operand is one of its ops. A max-pool layer is therefore:

  per output tile (h x w pixels, `oc` channel blocks):
    compute: LOAD ACC_8BIT   the tile's input window (int8 from DRAM, sign-extended into the
                             accumulator; one load per channel block, halo/ceil-mode overhang as
                             zero padding)
    compute: GEMM reset      the tile's output slot
    compute: ALU ADD         output += window tap (0, 0)          (a copy: the slot is zero)
    compute: ALU MAX  x k*k-1  output = max(output, window tap (ky, kx))
    store:   STORE per channel block

Each ALU instruction walks output rows/columns with its two loops (src factors stride x window
width / stride) and the channel blocks with its micro-ops, so no instruction writes a cell
twice and no instruction reads a cell another iteration of it writes. The window lives in one
accumulator region (the compute queue runs in order, so the next tile's load cannot overtake
the ALU ops still reading it); the output has `nacc` slots so that STOREs of one tile overlap
the next tile's work.

Zero padding equals the graph's -inf padding only when the input is non-negative (it comes
from a ReLU) and every window holds at least one real element (the ONNX/Caffe ceil-mode rule),
so a pool that needs padding runs on VTA only with `nonneg=True`; otherwise `check_pool_tiling`
refuses it and the partition leaves the pool on the host.

Cost in the cycle model: LOAD ACC_8BIT moves 16 bytes per element over the 64-bit bus (2 cycles
each, on the compute queue), reset 1 and each ALU op 2 cycles per output vector: about
4 x 2 + 1 + 2 * 9 = 27 cycles per 16 output channels of a 3x3 stride-2 pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import isa
from .config import VTAConfig
from .lower import Tiling, TilingError, UopKernels, VTAProgram, _tiles, assemble, ceil_div, divisors, emit_stores
from .program import ProgramBuilder


def pool_out(n: int, k: int, s: int, p0: int, p1: int, ceil: int) -> int:
    """Output size of a pooling window along one axis (ONNX/Caffe rule: with ceil mode the last
    window must start inside the input or its leading padding)."""
    if ceil:
        o = -(-(n + p0 + p1 - k) // s) + 1
        if (o - 1) * s >= n + p0:
            o -= 1
        return o
    return (n + p0 + p1 - k) // s + 1


@dataclass
class PoolLayer:
    """An int8 max-pool on VTA: (C/16, H, W, 16) -> (C/16, Ho, Wo, 16), same scale in and out."""

    name: str
    channels: int
    height: int
    width: int
    kernel: int
    stride: int
    pads: tuple = (0, 0, 0, 0)  # ONNX order: top, left, bottom, right
    ceil: int = 0
    nonneg: bool = False  # the input is >= 0 (a ReLU's output): zero padding is exact

    kind = "maxpool"
    macs = 0  # no multiply-adds: all ALU work

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def out_channels(self) -> int:
        return self.channels

    @property
    def out_hw(self) -> tuple[int, int]:
        k, s, p = self.kernel, self.stride, self.pads
        return (pool_out(self.height, k, s, p[0], p[2], self.ceil), pool_out(self.width, k, s, p[1], p[3], self.ceil))

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) rows/columns the windows reach outside the input."""
        ho, wo = self.out_hw
        k, s = self.kernel, self.stride
        top, left = self.pads[0], self.pads[1]
        return (top, left, max(0, (ho - 1) * s + k - self.height - top), max(0, (wo - 1) * s + k - self.width - left))

    @property
    def compares(self) -> int:
        ho, wo = self.out_hw
        return self.channels * ho * wo * (self.kernel * self.kernel - 1)

    def shape_key(self) -> str:
        p = "x".join(map(str, self.pads))
        return (
            f"maxpool_c{self.channels}h{self.height}w{self.width}k{self.kernel}s{self.stride}p{p}"
            f"{'c' if self.ceil else ''}{'n' if self.nonneg else ''}"
        )

    def shape_dict(self) -> dict:
        return {
            "kind": "maxpool",
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "kernel": self.kernel,
            "stride": self.stride,
            "pads": list(self.pads),
            "ceil": int(self.ceil),
            "nonneg": bool(self.nonneg),
        }

    # the layer interface (see `lower.ConvLayer`)
    def lower(self, tiling: Tiling, cfg: VTAConfig) -> VTAProgram:
        return lower_pool(self, tiling, cfg)

    def check_tiling(self, tiling: Tiling, cfg: VTAConfig) -> dict:
        return check_pool_tiling(self, tiling, cfg)

    def default_tiling(self, cfg: VTAConfig) -> Tiling:
        return default_pool_tiling(self, cfg)

    def tiling_space(self, cfg: VTAConfig) -> dict:
        return pool_tiling_space(self, cfg)

    def reference(self, x: np.ndarray) -> np.ndarray:
        return reference_pool(self, x)


def reference_pool(layer: PoolLayer, x: np.ndarray) -> np.ndarray:
    """numpy int8 max-pool with the graph's semantics (windows overhanging the input ignore the
    overhang): (1, C, H, W) int8 -> (1, C, Ho, Wo) int8."""
    x = np.asarray(x)[0]
    ho, wo = layer.out_hw
    k, s = layer.kernel, layer.stride
    top, left, bottom, right = layer.padding
    xp = np.pad(x.astype(np.int16), ((0, 0), (top, bottom), (left, right)), constant_values=-129)
    out = np.full((x.shape[0], ho, wo), -129, np.int16)
    for ky in range(k):
        for kx in range(k):
            np.maximum(out, xp[:, ky : ky + s * (ho - 1) + 1 : s, kx : kx + s * (wo - 1) + 1 : s], out=out)
    return out.astype(np.int8)[None]


def check_pool_tiling(layer: PoolLayer, t: Tiling, cfg: VTAConfig) -> dict:
    """Accumulator footprint of a pool tiling; raises `TilingError` when it does not fit (or the
    pool cannot be exact on VTA at all)."""
    cb = ceil_div(layer.channels, cfg.block)
    ho, wo = layer.out_hw
    k, s = layer.kernel, layer.stride
    if any(layer.padding) and not layer.nonneg:
        raise TilingError(f"{layer.name}: windows overhang the input and it may be negative: VTA pads with 0")
    if max(layer.padding) > 15:
        raise TilingError("padding above 15")
    if not (1 <= t.h <= ho and 1 <= t.w <= wo and 1 <= t.oc <= cb) or cb % t.oc:
        raise TilingError("tile sizes out of range (oc must divide the channel blocks)")
    if t.ic != 1 or t.nbuf != 1 or t.order != "spatial" or t.nacc not in (1, 2):
        raise TilingError("a pool tiling has ic=1, nbuf=1, order 'spatial' and nacc 1 or 2")
    hin, win = (t.h - 1) * s + k, (t.w - 1) * s + k
    window = t.oc * hin * win
    out_slot = t.oc * t.h * t.w
    need = window + t.nacc * out_slot
    if need > cfg.acc_depth:
        raise TilingError(f"accumulator buffer: {need} > {cfg.acc_depth}")
    if k * k * t.oc + 1 > cfg.uop_depth:
        raise TilingError("micro-op kernels larger than the micro-op buffer")
    lim = (1 << cfg.acc_depth_log) - 1
    if s * win > lim or t.w > lim or t.h * t.w > lim:
        raise TilingError("loop factors do not fit their fields")
    return {"window": window, "out_slot": out_slot, "acc": need, "hin": hin, "win": win}


def lower_pool(layer: PoolLayer, tiling: Tiling, cfg: VTAConfig) -> VTAProgram:
    """Lower a max-pool with `tiling` to a `VTAProgram` (raises `TilingError` if it does not fit)."""
    t = tiling
    geo = check_pool_tiling(layer, t, cfg)
    blk = cfg.block
    cb = ceil_div(layer.channels, blk)
    h, w = layer.height, layer.width
    ho, wo = layer.out_hw
    k, s = layer.kernel, layer.stride
    top, left = layer.pads[0], layer.pads[1]
    wbase = 0
    out_base = [geo["window"] + j * geo["out_slot"] for j in range(t.nacc)]

    pb = ProgramBuilder()
    uops = UopKernels(pb, cfg)
    acc_last_reader = [None] * t.nacc
    last_store = None
    n_tiles = 0
    for r0, th, c0, tw in [(r0, rh, c0, cw) for r0, rh in _tiles(ho, t.h) for c0, cw in _tiles(wo, t.w)]:
        hin, win = (th - 1) * s + k, (tw - 1) * s + k
        y0, x0 = r0 * s - top, c0 * s - left
        ry0, ry1, rx0, rx1 = max(0, y0), min(h, y0 + hin), max(0, x0), min(w, x0 + win)
        pads = (ry0 - y0, y0 + hin - ry1, rx0 - x0, x0 + win - rx1)
        p = th * tw
        for o0 in range(0, cb, t.oc):
            aslot = n_tiles % t.nacc
            obase = out_base[aslot]
            n_tiles += 1
            for cl in range(t.oc):
                ins = isa.mem_insn(
                    isa.LOAD, isa.MEM_ACC_8BIT, wbase + cl * hin * win, 0, ry1 - ry0, rx1 - rx0, w, *pads
                )
                ins["_rel"] = ("inp", (o0 + cl) * h * w + ry0 * w + rx0)
                pb.emit(ins)
            rkey = uops.kernel(("reset", obase), lambda: [(obase, 0, 0)])
            ub = uops.ensure(rkey)
            pb.emit(
                isa.gemm_insn(ub, ub + 1, iter_out=t.oc, iter_in=p, dst_factor_out=p, dst_factor_in=1, reset_reg=1),
                after=(acc_last_reader[aslot],),
            )
            last_alu = None
            for tap in range(k * k):
                ky, kx = divmod(tap, k)
                key = uops.kernel(
                    ("tap", obase, p, hin, win, tap),
                    lambda: [(obase + cl * p, wbase + cl * hin * win + ky * win + kx, 0) for cl in range(t.oc)],
                )
                ub = uops.ensure(key)
                last_alu = pb.emit(
                    isa.alu_insn(
                        isa.ALU_ADD if tap == 0 else isa.ALU_MAX,
                        ub,
                        ub + t.oc,
                        iter_out=th,
                        iter_in=tw,
                        dst_factor_out=tw,
                        dst_factor_in=1,
                        src_factor_out=s * win,
                        src_factor_in=s,
                    )
                )
            last_store = emit_stores(pb, obase, t.oc, th, tw, o0 * ho * wo + r0 * wo + c0, ho * wo, wo, last_alu)
            acc_last_reader[aslot] = last_store
    pb.emit(isa.finish_insn(), after=(last_store,))
    return assemble(
        layer.name,
        pb,
        uops,
        [],
        (cb, h, w, blk),
        (cb, ho, wo, blk),
        cfg,
        macs=0,
        tiling=t,
        meta={"tiles": n_tiles, "compares": layer.compares, **geo},
    )


def pool_tiling_space(layer: PoolLayer, cfg: VTAConfig) -> dict[str, list]:
    """The search space of `tune.search_layer`, in `Tiling`'s fields: input channel steps and
    input/weight slots mean nothing for a pool (fixed at 1), nor does the loop order."""
    ho, wo = layer.out_hw
    widths = sorted(set(divisors(wo)) | set(range(ceil_div(wo, 4), wo + 1)))
    return {
        "h": list(range(1, ho + 1)),
        "w": widths,
        "oc": divisors(ceil_div(layer.channels, cfg.block)),
        "ic": [1],
        "nbuf": [1],
        "nacc": [1, 2],
        "order": ["spatial"],
    }


def default_pool_tiling(layer: PoolLayer, cfg: VTAConfig) -> Tiling:
    """Untuned: two output slots, as many channel blocks and rows as fit at full width (then
    half, quarter width)."""
    ho, wo = layer.out_hw
    for oc in sorted(divisors(ceil_div(layer.channels, cfg.block)), reverse=True):
        for w in (wo, ceil_div(wo, 2), ceil_div(wo, 4), 1):
            lo, hi = 0, ho  # largest h that fits: the footprint grows with h
            while lo < hi:
                mid = (lo + hi + 1) // 2
                try:
                    check_pool_tiling(layer, Tiling(mid, w, oc, 1, 1, 2, "spatial"), cfg)
                    lo = mid
                except TilingError:
                    hi = mid - 1
            if lo:
                return Tiling(lo, w, oc, 1, 1, 2, "spatial")
    # the only remaining reasons are structural (padding on a signed input): say which
    check_pool_tiling(layer, Tiling(1, 1, 1, 1, 1, 1, "spatial"), cfg)
    raise TilingError(f"{layer.name}: no tiling fits the VTA accumulator")  # pragma: no cover


__all__ = [
    "PoolLayer",
    "pool_out",
    "reference_pool",
    "check_pool_tiling",
    "lower_pool",
    "pool_tiling_space",
    "default_pool_tiling",
]
