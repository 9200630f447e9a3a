"""Lowering one int8 convolution layer (or a fused group of convolutions sharing an input, such
as a Fire module's expand1x1 + expand3x3 pair) to a VTA program.

Data layouts in DRAM (BATCH=1, BLOCK=16):
  activations  (C/16, H, W, 16) int8           element (cb, y, x) = 16 bytes
  weights      per output block ob: (C_in/16, KH, KW) elements of (16 out, 16 in) int8
  bias         (C_out/16, 16) int32             loaded into the accumulator once
  output       (C_out/16, Ho, Wo, 16) int8      branches concatenated along channels

Tiling (`Tiling`): output tiles of h x w pixels and oc blocks, reducing over ic input blocks
per GEMM; `nbuf` slots in the input and weight buffers and `nacc` accumulator slots give
double-buffering (a LOAD into a slot only waits for the GEMM that last read it, a GEMM reset
only for the STOREs that drained its slot); `order` picks whether spatial tiles or output-
channel tiles are the outer loop (what stays resident between tiles). Per tile:

  GEMM reset ; for each ic tile: [LOAD INP, LOAD WGT on the load queue] GEMM ;
  ALU ADD bias ; ALU SHR shift ; ALU MAX lo ; ALU MIN 127 ; STORE per output block

Rounding is folded into the bias (bias + 2**(shift-1)), so requantisation is exactly the ALU's
arithmetic shift and clip. GEMM micro-ops loop over (output block, input block, kernel tap);
the instruction's two loops walk output rows and columns.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np

from . import isa
from .config import VTAConfig
from .program import ProgramBuilder

ALIGN = 256  # DRAM region alignment (largest element size)


class TilingError(ValueError):
    """The tiling does not fit the hardware (buffers, field widths)."""


@dataclass(frozen=True)
class Branch:
    weight: np.ndarray  # (O, I, KH, KW) int8, O % 16 == 0
    pad: int

    @property
    def kernel(self) -> tuple[int, int]:
        return self.weight.shape[2], self.weight.shape[3]


@dataclass
class ConvLayer:
    """An int8 conv (+ bias, shift, clip) on VTA. Several branches share the input and their
    outputs are concatenated along channels (all branches must give the same output size)."""

    name: str
    in_channels: int
    height: int
    width: int
    branches: list
    bias: np.ndarray  # (sum O,) int32, *without* the rounding term
    shift: int
    relu: bool = True
    stride: int = 1

    def __post_init__(self):
        sizes = {self._out_size(b) for b in self.branches}
        if len(sizes) != 1:
            raise ValueError(f"{self.name}: branches give different output sizes {sizes}")
        for b in self.branches:
            if b.weight.shape[0] % 16 or b.weight.dtype != np.int8:
                raise ValueError(f"{self.name}: branch weights must be int8 with O % 16 == 0")
            if b.weight.shape[1] != self.in_channels:
                raise ValueError(f"{self.name}: weight input channels {b.weight.shape[1]} != {self.in_channels}")

    def _out_size(self, b: Branch) -> tuple[int, int]:
        kh, kw = b.kernel
        return ((self.height + 2 * b.pad - kh) // self.stride + 1, (self.width + 2 * b.pad - kw) // self.stride + 1)

    @property
    def out_hw(self) -> tuple[int, int]:
        return self._out_size(self.branches[0])

    @property
    def out_channels(self) -> int:
        return sum(b.weight.shape[0] for b in self.branches)

    @property
    def macs(self) -> int:
        ho, wo = self.out_hw
        return int(sum(b.weight.shape[0] * b.weight.shape[1] * b.kernel[0] * b.kernel[1] for b in self.branches) * ho * wo)

    def shape_key(self) -> str:
        br = "+".join(f"o{b.weight.shape[0]}k{b.kernel[0]}x{b.kernel[1]}p{b.pad}" for b in self.branches)
        return f"c{self.in_channels}h{self.height}w{self.width}s{self.stride}_{br}"

    def shape_dict(self) -> dict:
        return {"in_channels": self.in_channels, "height": self.height, "width": self.width, "stride": self.stride,
                "branches": [{"out": int(b.weight.shape[0]), "kernel": list(b.kernel), "pad": b.pad} for b in self.branches]}


@dataclass(frozen=True)
class Tiling:
    h: int  # output rows per tile
    w: int  # output columns per tile
    oc: int  # output channel blocks per tile
    ic: int  # input channel blocks per GEMM step (divides C_in/16)
    nbuf: int = 2  # input/weight buffer slots
    nacc: int = 2  # accumulator slots
    order: str = "spatial"  # "spatial": spatial tiles outer; "oc": output-channel tiles outer

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Tiling":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def align(n: int, a: int = ALIGN) -> int:
    return ceil_div(n, a) * a


# ---------------------------------------------------------------------------- packing

def pack_activation(x: np.ndarray, block: int = 16) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) int8 -> (ceil(C/16), H, W, 16), zero-padded channels."""
    x = np.asarray(x)
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError("VTA lowering is for batch 1")
        x = x[0]
    c, h, w = x.shape
    cb = ceil_div(c, block)
    xp = np.zeros((cb * block, h, w), dtype=x.dtype)
    xp[:c] = x
    return np.ascontiguousarray(xp.reshape(cb, block, h, w).transpose(0, 2, 3, 1))


def unpack_activation(p: np.ndarray, channels: int | None = None) -> np.ndarray:
    """(CB, H, W, 16) -> (1, C, H, W)."""
    cb, h, w, b = p.shape
    x = p.transpose(0, 3, 1, 2).reshape(cb * b, h, w)
    if channels is not None:
        x = x[:channels]
    return x[None]


def layer_geometry(layer: ConvLayer, block: int = 16):
    ib = ceil_div(layer.in_channels, block)
    obs = []  # per output block: (branch index, KH, KW, pad, weight block offset within branch)
    for bi, b in enumerate(layer.branches):
        kh, kw = b.kernel
        for o in range(b.weight.shape[0] // block):
            obs.append((bi, kh, kw, b.pad, o))
    return ib, obs


def pack_weights(layer: ConvLayer, block: int = 16) -> tuple[np.ndarray, list[int]]:
    """Weights as WGT elements, per output block contiguous (ib, kh, kw); returns (elements
    (N, 16, 16) int8, element offset of each output block)."""
    ib, obs = layer_geometry(layer, block)
    elems, offsets, pos = [], [], 0
    for bi, kh, kw, _pad, o in obs:
        w = layer.branches[bi].weight[o * block:(o + 1) * block]  # (16, I, kh, kw)
        wp = np.zeros((block, ib * block, kh, kw), dtype=np.int8)
        wp[:, : w.shape[1]] = w
        # -> (ib, kh, kw, 16 out, 16 in)
        e = wp.reshape(block, ib, block, kh, kw).transpose(1, 3, 4, 0, 2).reshape(-1, block, block)
        offsets.append(pos)
        elems.append(e)
        pos += len(e)
    return np.ascontiguousarray(np.concatenate(elems)), offsets


def reference_conv(layer: ConvLayer, x: np.ndarray) -> np.ndarray:
    """numpy int reference of what the VTA program computes: (1, C, H, W) int8 -> (1, O, Ho, Wo) int8."""
    x = np.asarray(x, dtype=np.int64)[0]
    ho, wo = layer.out_hw
    s = layer.stride
    outs = []
    for b in layer.branches:
        kh, kw = b.kernel
        xp = np.pad(x, ((0, 0), (b.pad, b.pad), (b.pad, b.pad)))
        acc = np.zeros((b.weight.shape[0], ho, wo), dtype=np.int64)
        w = b.weight.astype(np.int64)
        for ky in range(kh):
            for kx in range(kw):
                patch = xp[:, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s]  # (I, ho, wo)
                acc += np.einsum("oi,ihw->ohw", w[:, :, ky, kx], patch)
        outs.append(acc)
    acc = np.concatenate(outs) + requant_bias(layer)[:, None, None]
    acc = ((acc + (1 << 31)) % (1 << 32)) - (1 << 31)  # int32 accumulator
    y = shift_arith(acc, layer.shift)
    lo = 0 if layer.relu else -128
    return np.clip(y, lo, 127).astype(np.int8)[None]


def shift_arith(x: np.ndarray, s: int) -> np.ndarray:
    return (x >> s) if s >= 0 else (x << -s)


def requant_bias(layer: ConvLayer) -> np.ndarray:
    """The bias the accumulator gets: bias + rounding term 2**(shift-1)."""
    rnd = (1 << (layer.shift - 1)) if layer.shift > 0 else 0
    return layer.bias.astype(np.int64) + rnd


# ---------------------------------------------------------------------------- program

@dataclass
class VTAProgram:
    """One layer's VTA program plus the DRAM image it runs against.

    DRAM addresses in the instructions are relative to the start of this layer's DRAM segment
    (byte 0 = `dram_image[0]`): a board runtime would place the segment at a physical address
    aligned to 256 bytes and add base/element_size to every `dram_base` (see `relocations`).
    """

    name: str
    insns: np.ndarray  # (N, 2) uint64
    dram_const: np.ndarray  # uint8: uops | weights | bias (placed at byte 0)
    inp_offset: int  # byte offsets of the input and output activations
    out_offset: int
    dram_size: int
    in_shape: tuple  # (IB, H, W, 16)
    out_shape: tuple  # (OB, Ho, Wo, 16)
    macs: int
    tiling: Tiling
    meta: dict = field(default_factory=dict)

    def new_dram(self) -> np.ndarray:
        d = np.zeros(self.dram_size, dtype=np.uint8)
        d[: len(self.dram_const)] = self.dram_const
        return d

    def run(self, x_packed: np.ndarray, cfg: VTAConfig, dram: np.ndarray | None = None, *, timing_only=False):
        """Run on a fresh simulator; returns (output (OB, Ho, Wo, 16) int8, SimStats)."""
        from .sim import Simulator

        if dram is None:
            dram = self.new_dram()
        if not timing_only:
            x = np.ascontiguousarray(x_packed, dtype=np.int8)
            if x.shape != tuple(self.in_shape):
                raise ValueError(f"{self.name}: input shape {x.shape} != {self.in_shape}")
            dram[self.inp_offset:self.inp_offset + x.nbytes] = x.reshape(-1).view(np.uint8)
        sim = Simulator(cfg, dram, timing_only=timing_only)
        stats = sim.run(self.insns)
        n = int(np.prod(self.out_shape))
        out = dram[self.out_offset:self.out_offset + n].view(np.int8).reshape(self.out_shape).copy()
        return out, stats

    def relocations(self, cfg: VTAConfig) -> list[int]:
        return [i for i, d in enumerate(isa.decode_program(self.insns, cfg)) if d["opcode"] in (isa.LOAD, isa.STORE)]


class _SlotCache:
    """LRU assignment of keys to buffer slots; remembers the last reader of each slot."""

    def __init__(self, nslots: int):
        self.keys = [None] * nslots
        self.lru = OrderedDict((i, None) for i in range(nslots))
        self.last_reader = [None] * nslots  # instruction index
        self.filled_by = [None] * nslots  # last load instruction index

    def lookup(self, key):
        for s, k in enumerate(self.keys):
            if k == key:
                self.lru.move_to_end(s)
                return s, True
        s = next(iter(self.lru))
        self.lru.move_to_end(s)
        self.keys[s] = key
        return s, False


def _tiles(n: int, t: int) -> list[tuple[int, int]]:
    return [(s, min(t, n - s)) for s in range(0, n, t)]


def check_tiling(layer: ConvLayer, t: Tiling, cfg: VTAConfig) -> dict:
    """Buffer footprints of a tiling; raises `TilingError` when it does not fit."""
    ib, obs = layer_geometry(layer, cfg.block)
    ob = len(obs)
    ho, wo = layer.out_hw
    s = layer.stride
    khm = max(b.kernel[0] for b in layer.branches)
    kwm = max(b.kernel[1] for b in layer.branches)
    if not (1 <= t.h <= ho and 1 <= t.w <= wo and 1 <= t.oc <= ob and 1 <= t.ic <= ib):
        raise TilingError("tile sizes out of range")
    if ib % t.ic or ob % t.oc:
        raise TilingError("ic and oc must divide the channel blocks")
    if t.nbuf not in (1, 2) or t.nacc not in (1, 2) or t.order not in ("spatial", "oc"):
        raise TilingError("nbuf/nacc must be 1 or 2, order 'spatial' or 'oc'")
    hin = (t.h - 1) * s + khm
    win = (t.w - 1) * s + kwm
    inp_slot = t.ic * hin * win
    wgt_slot = max(sum(t.ic * obs[j][1] * obs[j][2] for j in range(o0, o0 + t.oc)) for o0 in range(0, ob, t.oc))
    acc_slot = t.oc * t.h * t.w
    need = {"inp": t.nbuf * inp_slot, "wgt": t.nbuf * wgt_slot, "acc": t.nacc * acc_slot + ob}
    if need["inp"] > cfg.inp_depth:
        raise TilingError(f"input buffer: {need['inp']} > {cfg.inp_depth}")
    if need["wgt"] > cfg.wgt_depth:
        raise TilingError(f"weight buffer: {need['wgt']} > {cfg.wgt_depth}")
    if need["acc"] > cfg.acc_depth:
        raise TilingError(f"accumulator buffer: {need['acc']} > {cfg.acc_depth}")
    if wgt_slot + 2 > cfg.uop_depth:
        raise TilingError("micro-op kernel larger than the micro-op buffer")
    lim = (1 << cfg.acc_depth_log) - 1
    if s * win > (1 << cfg.inp_depth_log) - 1 or t.w > lim or t.h * t.w > lim:
        raise TilingError("loop factors do not fit their fields")
    if max(b.pad for b in layer.branches) > 15:
        raise TilingError("padding above 15")
    return {"inp_slot": inp_slot, "wgt_slot": wgt_slot, "acc_slot": acc_slot, "hin": hin, "win": win, **need}


def lower_conv(layer: ConvLayer, tiling: Tiling, cfg: VTAConfig) -> VTAProgram:
    """Lower `layer` with `tiling` to a `VTAProgram` (raises `TilingError` if it does not fit)."""
    blk = cfg.block
    geo = check_tiling(layer, tiling, cfg)
    ib, obs = layer_geometry(layer, blk)
    ob = len(obs)
    h, w = layer.height, layer.width
    ho, wo = layer.out_hw
    s = layer.stride
    pmax = max(b.pad for b in layer.branches)
    khm = max(b.kernel[0] for b in layer.branches)
    kwm = max(b.kernel[1] for b in layer.branches)
    t = tiling

    wgt_elems, wgt_off = pack_weights(layer, blk)
    bias = requant_bias(layer)
    if bias.min() < -(1 << 31) or bias.max() >= (1 << 31):
        raise TilingError(f"{layer.name}: bias does not fit int32")
    bias_elems = np.zeros((ob, blk), dtype=np.int32)
    bias_elems.reshape(-1)[: len(bias)] = bias.astype(np.int32)

    inp_slot_base = [k * geo["inp_slot"] for k in range(t.nbuf)]
    wgt_slot_base = [k * geo["wgt_slot"] for k in range(t.nbuf)]
    acc_slot_base = [k * geo["acc_slot"] for k in range(t.nacc)]
    bias_base = cfg.acc_depth - ob

    # ---- micro-op kernels (deduplicated), stored consecutively in DRAM
    kernels: dict[tuple, np.ndarray] = {}
    kernel_dram: dict[tuple, int] = {}
    kernel_chunks: list[np.ndarray] = []
    n_uops_total = 0

    def kernel(key, make):
        nonlocal n_uops_total
        if key not in kernels:
            k = np.asarray(make(), dtype=np.int64).reshape(-1, 3)
            kernels[key] = k
            kernel_dram[key] = n_uops_total
            kernel_chunks.append(isa.encode_uops(k, cfg))
            n_uops_total += len(k)
        return key

    def gemm_uops(th, tw, o0, islot, wslot, aslot):
        hin = (th - 1) * s + khm
        win = (tw - 1) * s + kwm
        rows = []
        wpos = 0
        for ol in range(t.oc):
            _bi, kh, kw, pad, _o = obs[o0 + ol]
            off = pmax - pad
            for il in range(t.ic):
                for ky in range(kh):
                    for kx in range(kw):
                        rows.append((aslot + ol * th * tw,
                                     islot + il * hin * win + (ky + off) * win + (kx + off),
                                     wslot + wpos))
                        wpos += 1
        return rows

    # ---- DRAM layout
    wgt_bytes = wgt_elems.nbytes
    bias_bytes = bias_elems.nbytes
    in_shape = (ib, h, w, blk)
    out_shape = (ob, ho, wo, blk)

    pb = ProgramBuilder()
    # uop buffer cache (compute queue, in order: no tokens needed)
    uop_cache: OrderedDict = OrderedDict()
    uop_ptr = [0]
    uop_loads: list[tuple[int, tuple]] = []  # (insn index, kernel key) patched with DRAM base later

    def ensure_uops(key) -> int:
        if key in uop_cache:
            return uop_cache[key]
        n = len(kernels[key])
        if uop_ptr[0] + n > cfg.uop_depth:
            uop_cache.clear()
            uop_ptr[0] = 0
        base = uop_ptr[0]
        idx = pb.emit(isa.mem_insn(isa.LOAD, isa.MEM_UOP, base, 0, 1, n, n))
        uop_loads.append((idx, key))
        uop_cache[key] = base
        uop_ptr[0] += n
        return base

    icache = _SlotCache(t.nbuf)
    wcache = _SlotCache(t.nbuf)
    acc_last_reader = [None] * t.nacc
    acc_next = 0
    last_store = None

    # bias into the accumulator (compute queue)
    bias_load = pb.emit(isa.mem_insn(isa.LOAD, isa.MEM_ACC, bias_base, 0, 1, ob, ob))

    sp_tiles = [(r0, rh, c0, cw) for r0, rh in _tiles(ho, t.h) for c0, cw in _tiles(wo, t.w)]
    oc_tiles = list(range(0, ob, t.oc))
    if t.order == "spatial":
        work = [(sp, o0) for sp in sp_tiles for o0 in oc_tiles]
    else:
        work = [(sp, o0) for o0 in oc_tiles for sp in sp_tiles]

    n_gemm_steps = 0
    for (r0, th, c0, tw), o0 in work:
        aslot = acc_next
        acc_next = (acc_next + 1) % t.nacc
        abase = acc_slot_base[aslot]
        p = th * tw
        # reset accumulators (waits for the STOREs that drained this slot)
        rkey = kernel(("alu", abase, 0), lambda: [(abase, 0, 0)])
        ub = ensure_uops(rkey)
        pb.emit(isa.gemm_insn(ub, ub + 1, iter_out=t.oc, iter_in=p, dst_factor_out=p, dst_factor_in=1,
                              reset_reg=1), after=(acc_last_reader[aslot],))
        # input window of this spatial tile
        y0 = r0 * s - pmax
        y1 = (r0 + th - 1) * s - pmax + khm
        x0 = c0 * s - pmax
        x1 = (c0 + tw - 1) * s - pmax + kwm
        ypad0, ypad1 = max(0, -y0), max(0, y1 - h)
        xpad0, xpad1 = max(0, -x0), max(0, x1 - w)
        ry0, ry1, rx0, rx1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
        hin, win = y1 - y0, x1 - x0
        for i0 in range(0, ib, t.ic):
            # input blocks i0 .. i0+ic
            islot, ihit = icache.lookup(("inp", r0, c0, th, tw, i0))
            ibase = inp_slot_base[islot]
            if not ihit:
                last = None
                for il in range(t.ic):
                    ins = isa.mem_insn(isa.LOAD, isa.MEM_INP, ibase + il * hin * win,
                                       (i0 + il) * h * w + ry0 * w + rx0, ry1 - ry0, rx1 - rx0, w,
                                       ypad0, ypad1, xpad0, xpad1)
                    last = pb.emit(ins, after=(icache.last_reader[islot],) if il == 0 else ())
                icache.filled_by[islot] = last
            wslot, whit = wcache.lookup(("wgt", o0, i0))
            wbase = wgt_slot_base[wslot]
            if not whit:
                last = None
                pos = 0
                first = True
                for ol in range(t.oc):
                    _bi, kh, kw, _pad, _o = obs[o0 + ol]
                    kk = kh * kw
                    ins = isa.mem_insn(isa.LOAD, isa.MEM_WGT, wbase + pos, 0, 1, t.ic * kk, t.ic * kk)
                    ins["_wgt_elem"] = wgt_off[o0 + ol] + i0 * kk
                    last = pb.emit(ins, after=(wcache.last_reader[wslot],) if first else ())
                    first = False
                    pos += t.ic * kk
                wcache.filled_by[wslot] = last
            gkey = kernel(("gemm", th, tw, o0, ibase, wbase, abase),
                          lambda: gemm_uops(th, tw, o0, ibase, wbase, abase))
            ub = ensure_uops(gkey)
            nu = len(kernels[gkey])
            g = pb.emit(isa.gemm_insn(ub, ub + nu, iter_out=th, iter_in=tw, dst_factor_out=tw, dst_factor_in=1,
                                      src_factor_out=s * win, src_factor_in=s),
                        after=(icache.filled_by[islot], wcache.filled_by[wslot]))
            icache.last_reader[islot] = g
            wcache.last_reader[wslot] = g
            n_gemm_steps += 1
        # requantise: + bias (incl. rounding), >> shift, clip
        bkey = kernel(("alu", abase, bias_base + o0), lambda: [(abase, bias_base + o0, 0)])
        ub = ensure_uops(bkey)
        pb.emit(isa.alu_insn(isa.ALU_ADD, ub, ub + 1, iter_out=t.oc, iter_in=p, dst_factor_out=p, dst_factor_in=1,
                             src_factor_out=1, src_factor_in=0))
        ub = ensure_uops(rkey)
        pb.emit(isa.alu_insn(isa.ALU_SHR, ub, ub + 1, iter_out=t.oc, iter_in=p, dst_factor_out=p, dst_factor_in=1,
                             use_imm=1, imm=layer.shift))
        pb.emit(isa.alu_insn(isa.ALU_MAX, ub, ub + 1, iter_out=t.oc, iter_in=p, dst_factor_out=p, dst_factor_in=1,
                             use_imm=1, imm=0 if layer.relu else -128))
        last_alu = pb.emit(isa.alu_insn(isa.ALU_MIN, ub, ub + 1, iter_out=t.oc, iter_in=p, dst_factor_out=p,
                                        dst_factor_in=1, use_imm=1, imm=127))
        for ol in range(t.oc):
            ins = isa.mem_insn(isa.STORE, isa.MEM_OUT, abase + ol * p, 0, th, tw, wo)
            ins["_out_elem"] = (o0 + ol) * ho * wo + r0 * wo + c0
            last_store = pb.emit(ins, after=(last_alu,) if ol == 0 else ())
        acc_last_reader[aslot] = last_store
    pb.emit(isa.finish_insn(), after=(last_store,))

    # ---- DRAM layout, then patch DRAM addresses
    uop_bytes = n_uops_total * cfg.uop_elem_bytes
    uop_off = 0
    wgt_off_b = align(uop_bytes)
    bias_off = align(wgt_off_b + wgt_bytes)
    inp_off = align(bias_off + bias_bytes)
    out_off = align(inp_off + int(np.prod(in_shape)))
    dram_size = align(out_off + int(np.prod(out_shape)))
    const = np.zeros(inp_off, dtype=np.uint8)
    if kernel_chunks:
        allu = np.concatenate(kernel_chunks)
        const[uop_off:uop_off + uop_bytes] = allu.view(np.uint8)
    const[wgt_off_b:wgt_off_b + wgt_bytes] = wgt_elems.reshape(-1).view(np.uint8)
    const[bias_off:bias_off + bias_bytes] = bias_elems.reshape(-1).view(np.uint8)

    insns = pb.finalize()
    for idx, key in uop_loads:
        insns[idx]["dram_base"] = uop_off // cfg.uop_elem_bytes + kernel_dram[key]
    insns[bias_load]["dram_base"] = bias_off // cfg.acc_elem_bytes
    for ins in insns:
        if ins["opcode"] == isa.LOAD and ins["memory_type"] == isa.MEM_WGT:
            ins["dram_base"] = wgt_off_b // cfg.wgt_elem_bytes + ins.pop("_wgt_elem")
        elif ins["opcode"] == isa.LOAD and ins["memory_type"] == isa.MEM_INP:
            ins["dram_base"] += inp_off // cfg.inp_elem_bytes
        elif ins["opcode"] == isa.STORE:
            ins["dram_base"] = out_off // cfg.out_elem_bytes + ins.pop("_out_elem")
    try:
        words = isa.encode_program(insns, cfg)
    except isa.EncodingError as exc:
        raise TilingError(f"{layer.name}: {exc}") from None
    return VTAProgram(
        name=layer.name, insns=words, dram_const=const, inp_offset=inp_off, out_offset=out_off,
        dram_size=dram_size, in_shape=in_shape, out_shape=out_shape, macs=layer.macs, tiling=tiling,
        meta={"instructions": len(insns), "uops": n_uops_total, "gemm_steps": n_gemm_steps, **geo},
    )


# ---------------------------------------------------------------------------- tiling space

def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def tiling_space(layer: ConvLayer, cfg: VTAConfig) -> dict[str, list]:
    ib, obs = layer_geometry(layer, cfg.block)
    ho, wo = layer.out_hw
    widths = sorted(set(divisors(wo)) | set(range(ceil_div(wo, 4), wo + 1)))
    return {"h": list(range(1, ho + 1)), "w": widths,
            "oc": divisors(len(obs)), "ic": divisors(ib), "nbuf": [1, 2], "nacc": [1, 2], "order": ["spatial", "oc"]}


def is_valid(layer: ConvLayer, t: Tiling, cfg: VTAConfig) -> bool:
    try:
        check_tiling(layer, t, cfg)
        return True
    except TilingError:
        return False


def default_tiling(layer: ConvLayer, cfg: VTAConfig) -> Tiling:
    """A reasonable untuned tiling: double-buffered, whole input channels if they fit, rows as
    many as fit, all output blocks if they fit, full width."""
    ib, obs = layer_geometry(layer, cfg.block)
    ho, wo = layer.out_hw
    for ic in sorted(divisors(ib), reverse=True):
        for oc in sorted(divisors(len(obs)), reverse=True):
            for w in (wo, ceil_div(wo, 2), ceil_div(wo, 4)):
                for hh in range(ho, 0, -1):
                    t = Tiling(hh, w, oc, ic, 2, 2, "spatial")
                    if is_valid(layer, t, cfg):
                        return t
    for t in itertools.product(range(1, ho + 1), [1], [1], [1]):
        cand = Tiling(t[0], 1, 1, 1, 1, 1, "spatial")
        if is_valid(layer, cand, cfg):
            return cand
    raise TilingError(f"{layer.name}: no tiling fits the VTA buffers")
