"""Lowering one int8 convolution layer (or a fused group of convolutions sharing an input, such
as a Fire module's expand1x1 + expand3x3 pair) to a VTA program.

Data layouts in DRAM (BATCH=1, BLOCK=16 shown; `cfg.block` in general):
  activations  (C/16, H, W, 16) int8           element (cb, y, x) = 16 bytes
  weights      per output block ob: (C_in/16, KH, KW) elements of (16 out, 16 in) int8
  bias         (C_out/16, 16) int32             loaded into the accumulator once
  shifts       (C_out/16, 16) int32             per-channel requantisation shifts (if not one)
  output       (C_out/16, Ho, Wo, 16) int8      branches concatenated along channels

Channel counts round up to whole blocks: padding input lanes meet zero weights, padding output
lanes (the classifier's 1000 -> 1008) get zero weights, bias and shift, so they store 0.

Tiling (`Tiling`): output tiles of h x w pixels and oc blocks, reducing over ic input blocks
per GEMM; `nbuf` slots in the input and weight buffers and `nacc` accumulator slots give
double-buffering (a LOAD into a slot only waits for the GEMM that last read it, a GEMM reset
only for the STOREs that drained its slot); `order` picks whether spatial tiles or output-
channel tiles are the outer loop (what stays resident between tiles). Per tile:

  GEMM reset ; for each ic tile: [LOAD INP, LOAD WGT on the load queue] GEMM ;
  ALU ADD bias ; ALU SHR shift ; ALU MAX lo ; ALU MIN 127 ; STORE per output block

Rounding is folded into the bias (bias + 2**(shift-1)), so requantisation is exactly the ALU's
arithmetic shift and clip; with per-channel shifts the SHR reads them lane-wise from a vector
in the accumulator (like the bias ADD) instead of an immediate, at the same cost. GEMM micro-ops
loop over (output block, input block, kernel tap); the instruction's two loops walk output rows and
columns.
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
    shift: int | np.ndarray  # one right shift for the layer, or one per output channel
    relu: bool = True
    stride: int = 1

    kind = "conv"

    @property
    def out_range(self) -> tuple[int, int]:
        """The requantised output's clip range (the ReLU is the lower bound 0)."""
        return (0 if self.relu else -128), 127

    @property
    def shifts(self) -> np.ndarray:
        """(sum O,) int64 per-channel shifts (a scalar shift broadcast)."""
        return np.broadcast_to(np.asarray(self.shift, dtype=np.int64), (self.out_channels,)).copy()

    @property
    def uniform_shift(self) -> int | None:
        """The layer's one shift if `shift` is a scalar (SHR with an immediate), else None (an
        array, even of equal values: SHR by a per-lane shift vector held in the accumulator, so
        that a shape-only layer of the tiling search lowers to the same program)."""
        return int(self.shift) if np.ndim(self.shift) == 0 else None

    def __post_init__(self):
        sizes = {self._out_size(b) for b in self.branches}
        if len(sizes) != 1:
            raise ValueError(f"{self.name}: branches give different output sizes {sizes}")
        for k, b in enumerate(self.branches):
            if b.weight.dtype != np.int8:
                raise ValueError(f"{self.name}: branch weights must be int8")
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
        return int(
            sum(b.weight.shape[0] * b.weight.shape[1] * b.kernel[0] * b.kernel[1] for b in self.branches) * ho * wo
        )

    def shape_key(self) -> str:
        """What the program's shape depends on (tiling database key): sizes, and whether the
        requantisation shifts per channel (one more vector load, a different SHR)."""
        br = "+".join(f"o{b.weight.shape[0]}k{b.kernel[0]}x{b.kernel[1]}p{b.pad}" for b in self.branches)
        extra = "_pcs" if self.uniform_shift is None else ""
        return f"c{self.in_channels}h{self.height}w{self.width}s{self.stride}_{br}{extra}"

    def shape_dict(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "height": self.height,
            "width": self.width,
            "stride": self.stride,
            "branches": [
                {"out": int(b.weight.shape[0]), "kernel": list(b.kernel), "pad": b.pad} for b in self.branches
            ],
            "per_channel_shift": self.uniform_shift is None,
        }

    # The layer interface shared with `pool.PoolLayer`: what the tiling search, the compiler and
    # the quantised reference call, so that they need not know which kind of layer they hold.
    def lower(self, tiling: Tiling, cfg: VTAConfig) -> VTAProgram:
        return lower_conv(self, tiling, cfg)

    def check_tiling(self, tiling: Tiling, cfg: VTAConfig) -> dict:
        return check_tiling(self, tiling, cfg)

    def default_tiling(self, cfg: VTAConfig) -> Tiling:
        return default_tiling(self, cfg)

    def tiling_space(self, cfg: VTAConfig) -> dict:
        return tiling_space(self, cfg)

    def reference(self, x: np.ndarray) -> np.ndarray:
        return reference_conv(self, x)


@dataclass(frozen=True)
class Tiling:
    h: int  # output rows per tile
    w: int  # output columns per tile
    oc: int  # output channel blocks per tile
    ic: int  # input channel blocks per GEMM step (divides C_in/BLOCK)
    nbuf: int = 2  # input/weight buffer slots
    nacc: int = 2  # accumulator slots
    order: str = "spatial"  # "spatial": spatial tiles outer; "oc": output-channel tiles outer

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Tiling:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def align(n: int, a: int = ALIGN) -> int:
    return ceil_div(n, a) * a


# ---------------------------------------------------------------------------- packing


def pack_activation(x: np.ndarray, block: int = 16) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) int8 -> (ceil(C/block), H, W, block), zero-padded channels."""
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
    """(CB, H, W, block) -> (1, C, H, W)."""
    cb, h, w, b = p.shape
    x = p.transpose(0, 3, 1, 2).reshape(cb * b, h, w)
    if channels is not None:
        x = x[:channels]
    return x[None]


def layer_geometry(layer: ConvLayer, block: int = 16):
    """(input blocks, per output block (branch, KH, KW, pad, block within branch)); channel
    counts are rounded up to whole blocks (the padding lanes carry zero weights)."""
    ib = ceil_div(layer.in_channels, block)
    for k, b in enumerate(layer.branches[:-1]):
        if b.weight.shape[0] % block:
            # the concatenated output is blocked: only the last branch may end in a partial block
            raise ValueError(f"{layer.name}: only the last branch may have O % {block} != 0 (branch {k})")
    obs = []  # per output block: (branch index, KH, KW, pad, weight block offset within branch)
    for bi, b in enumerate(layer.branches):
        kh, kw = b.kernel
        for o in range(ceil_div(b.weight.shape[0], block)):
            obs.append((bi, kh, kw, b.pad, o))
    return ib, obs


def pack_weights(layer: ConvLayer, block: int = 16) -> tuple[np.ndarray, list[int]]:
    """Weights as WGT elements, per output block contiguous (ib, kh, kw); returns (elements
    (N, 16, 16) int8, element offset of each output block)."""
    ib, obs = layer_geometry(layer, block)
    elems, offsets, pos = [], [], 0
    for bi, kh, kw, _pad, o in obs:
        w = layer.branches[bi].weight[o * block : (o + 1) * block]  # (<=16, I, kh, kw)
        wp = np.zeros((block, ib * block, kh, kw), dtype=np.int8)
        wp[: w.shape[0], : w.shape[1]] = w
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
                patch = xp[:, ky : ky + s * (ho - 1) + 1 : s, kx : kx + s * (wo - 1) + 1 : s]  # (I, ho, wo)
                acc += np.einsum("oi,ihw->ohw", w[:, :, ky, kx], patch)
        outs.append(acc)
    acc = np.concatenate(outs) + requant_bias(layer)[:, None, None]
    acc = ((acc + (1 << 31)) % (1 << 32)) - (1 << 31)  # int32 accumulator
    y = shift_arith(acc, layer.shifts[:, None, None])
    lo, hi = layer.out_range
    return np.clip(y, lo, hi).astype(np.int8)[None]


def shift_arith(x: np.ndarray, s) -> np.ndarray:
    """The ALU's SHR: arithmetic right shift, a negative amount shifting left (lane-wise when
    `s` is an array)."""
    s = np.asarray(s, dtype=np.int64)
    return np.where(s >= 0, x >> np.maximum(s, 0), x << np.maximum(-s, 0))


def requant_bias(layer: ConvLayer) -> np.ndarray:
    """The bias the accumulator gets: bias + rounding term 2**(shift-1) (per channel)."""
    sh = layer.shifts
    rnd = np.where(sh > 0, np.left_shift(1, np.maximum(sh - 1, 0)), 0)
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
            dram[self.inp_offset : self.inp_offset + x.nbytes] = x.reshape(-1).view(np.uint8)
        sim = Simulator(cfg, dram, timing_only=timing_only)
        stats = sim.run(self.insns)
        n = int(np.prod(self.out_shape))
        out = dram[self.out_offset : self.out_offset + n].view(np.int8).reshape(self.out_shape).copy()
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
    consts = ob * (1 if layer.uniform_shift is not None else 2)  # bias (+ per-channel shift) vectors
    need = {"inp": t.nbuf * inp_slot, "wgt": t.nbuf * wgt_slot, "acc": t.nacc * acc_slot + consts}
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


class UopKernels:
    """Micro-op kernels of one program and the compute queue's micro-op buffer.

    Kernels are deduplicated by key and stored consecutively in the program's DRAM micro-op
    section; `ensure` emits a LOAD UOP only when the kernel is not resident (the buffer is
    refilled from the start when full). The compute queue runs in order, so these loads need
    no dependency tokens.
    """

    def __init__(self, pb: ProgramBuilder, cfg: VTAConfig):
        self.pb, self.cfg = pb, cfg
        self.kernels: dict = {}
        self.dram: dict = {}  # key -> uop offset in the DRAM section
        self.chunks: list = []
        self.total = 0
        self.cache: OrderedDict = OrderedDict()
        self.ptr = 0

    def kernel(self, key, make):
        """Register the kernel `make()` ((dst, src, wgt) rows) under `key` once; returns `key`."""
        if key not in self.kernels:
            k = np.asarray(make(), dtype=np.int64).reshape(-1, 3)
            self.kernels[key] = k
            self.dram[key] = self.total
            self.chunks.append(isa.encode_uops(k, self.cfg))
            self.total += len(k)
        return key

    def size(self, key) -> int:
        return len(self.kernels[key])

    def ensure(self, key) -> int:
        """Base index of kernel `key` in the micro-op buffer, loading it if needed."""
        if key in self.cache:
            return self.cache[key]
        n = self.size(key)
        if self.ptr + n > self.cfg.uop_depth:
            self.cache.clear()
            self.ptr = 0
        base = self.ptr
        ins = isa.mem_insn(isa.LOAD, isa.MEM_UOP, base, 0, 1, n, n)
        ins["_rel"] = ("uop", self.dram[key])
        self.pb.emit(ins)
        self.cache[key] = base
        self.ptr += n
        return base

    def blob(self) -> np.ndarray:
        return np.concatenate(self.chunks).view(np.uint8) if self.chunks else np.zeros(0, np.uint8)


def _elem_bytes(memory_type: int, cfg: VTAConfig) -> int:
    """Bytes per DRAM address unit of a memory type (ACC_8BIT loads int8 data: 16 bytes)."""
    return {
        isa.MEM_UOP: cfg.uop_elem_bytes,
        isa.MEM_WGT: cfg.wgt_elem_bytes,
        isa.MEM_INP: cfg.inp_elem_bytes,
        isa.MEM_ACC: cfg.acc_elem_bytes,
        isa.MEM_ACC_8BIT: cfg.inp_elem_bytes,
        isa.MEM_OUT: cfg.out_elem_bytes,
    }[memory_type]


def assemble(
    name: str,
    pb: ProgramBuilder,
    uops: UopKernels,
    consts: list,
    in_shape: tuple,
    out_shape: tuple,
    cfg: VTAConfig,
    *,
    macs: int,
    tiling: Tiling,
    meta: dict,
) -> VTAProgram:
    """Lay out the layer's DRAM segment (micro-ops, the `consts` sections in order, input,
    output; each aligned to 256 bytes or a whole element), resolve every LOAD/STORE's `_rel` = (section, element
    offset) into its `dram_base`, and encode the instruction stream.

    Addresses are resolved only here because the micro-op section's size is known only after
    the whole program has been emitted."""
    sections = [("uop", uops.blob())] + [(n, np.ascontiguousarray(a).reshape(-1).view(np.uint8)) for n, a in consts]
    sections += [
        ("inp", np.zeros(int(np.prod(in_shape)), np.uint8)),
        ("out", np.zeros(int(np.prod(out_shape)), np.uint8)),
    ]
    # every section starts at a whole element of any memory type (DRAM addresses count elements;
    # 256 bytes, one 16x16 weight block, in the default configuration)
    unit = max(ALIGN, cfg.wgt_elem_bytes, cfg.acc_elem_bytes, cfg.inp_elem_bytes, cfg.out_elem_bytes)
    offsets, pos = {}, 0
    for sec, data in sections:
        offsets[sec] = pos
        pos = align(pos + data.nbytes, unit)
    const = np.zeros(offsets["inp"], dtype=np.uint8)
    for sec, data in sections[:-2]:
        const[offsets[sec] : offsets[sec] + data.nbytes] = data
    insns = pb.finalize()
    for ins in insns:
        rel = ins.pop("_rel", None)
        if rel is not None:
            sec, elem = rel
            ins["dram_base"] = offsets[sec] // _elem_bytes(ins["memory_type"], cfg) + elem
    try:
        words = isa.encode_program(insns, cfg)
    except isa.EncodingError as exc:
        raise TilingError(f"{name}: {exc}") from None
    return VTAProgram(
        name=name,
        insns=words,
        dram_const=const,
        inp_offset=offsets["inp"],
        out_offset=offsets["out"],
        dram_size=pos,
        in_shape=tuple(in_shape),
        out_shape=tuple(out_shape),
        macs=macs,
        tiling=tiling,
        meta={"instructions": len(insns), "uops": uops.total, **meta},
    )


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
    bias_elems.reshape(-1)[: len(bias)] = bias.astype(np.int32)  # padding channels: bias 0 -> output 0
    consts = [("wgt", wgt_elems), ("bias", bias_elems)]
    shift = layer.uniform_shift
    if shift is None:  # per-channel shifts: one more vector per output block, SHR reads it
        shift_elems = np.zeros((ob, blk), dtype=np.int32)
        shift_elems.reshape(-1)[: layer.out_channels] = layer.shifts
        consts.append(("shift", shift_elems))

    inp_slot_base = [k * geo["inp_slot"] for k in range(t.nbuf)]
    wgt_slot_base = [k * geo["wgt_slot"] for k in range(t.nbuf)]
    acc_slot_base = [k * geo["acc_slot"] for k in range(t.nacc)]
    bias_base = cfg.acc_depth - ob
    shift_base = bias_base - ob

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
                        rows.append(
                            (aslot + ol * th * tw, islot + il * hin * win + (ky + off) * win + (kx + off), wslot + wpos)
                        )
                        wpos += 1
        return rows

    in_shape = (ib, h, w, blk)
    out_shape = (ob, ho, wo, blk)

    pb = ProgramBuilder()
    uops = UopKernels(pb, cfg)
    icache = _SlotCache(t.nbuf)
    wcache = _SlotCache(t.nbuf)
    acc_last_reader = [None] * t.nacc
    acc_next = 0
    last_store = None

    # bias (and per-channel shifts) into the accumulator (compute queue)
    for base, sec in ((bias_base, "bias"), (shift_base, "shift"))[: 1 if shift is not None else 2]:
        ins = isa.mem_insn(isa.LOAD, isa.MEM_ACC, base, 0, 1, ob, ob)
        ins["_rel"] = (sec, 0)
        pb.emit(ins)

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
        rkey = uops.kernel(("alu", abase, 0), lambda: [(abase, 0, 0)])
        ub = uops.ensure(rkey)
        pb.emit(
            isa.gemm_insn(ub, ub + 1, iter_out=t.oc, iter_in=p, dst_factor_out=p, dst_factor_in=1, reset_reg=1),
            after=(acc_last_reader[aslot],),
        )
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
                    ins = isa.mem_insn(
                        isa.LOAD,
                        isa.MEM_INP,
                        ibase + il * hin * win,
                        0,
                        ry1 - ry0,
                        rx1 - rx0,
                        w,
                        ypad0,
                        ypad1,
                        xpad0,
                        xpad1,
                    )
                    ins["_rel"] = ("inp", (i0 + il) * h * w + ry0 * w + rx0)
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
                    ins["_rel"] = ("wgt", wgt_off[o0 + ol] + i0 * kk)
                    last = pb.emit(ins, after=(wcache.last_reader[wslot],) if first else ())
                    first = False
                    pos += t.ic * kk
                wcache.filled_by[wslot] = last
            gkey = uops.kernel(
                ("gemm", th, tw, o0, ibase, wbase, abase), lambda: gemm_uops(th, tw, o0, ibase, wbase, abase)
            )
            ub = uops.ensure(gkey)
            nu = uops.size(gkey)
            g = pb.emit(
                isa.gemm_insn(
                    ub,
                    ub + nu,
                    iter_out=th,
                    iter_in=tw,
                    dst_factor_out=tw,
                    dst_factor_in=1,
                    src_factor_out=s * win,
                    src_factor_in=s,
                ),
                after=(icache.filled_by[islot], wcache.filled_by[wslot]),
            )
            icache.last_reader[islot] = g
            wcache.last_reader[wslot] = g
            n_gemm_steps += 1
        # requantise: + bias (incl. rounding), >> shift, clip
        bkey = uops.kernel(("alu", abase, bias_base + o0), lambda: [(abase, bias_base + o0, 0)])
        ub = uops.ensure(bkey)
        pb.emit(
            isa.alu_insn(
                isa.ALU_ADD,
                ub,
                ub + 1,
                iter_out=t.oc,
                iter_in=p,
                dst_factor_out=p,
                dst_factor_in=1,
                src_factor_out=1,
                src_factor_in=0,
            )
        )
        if shift is None:
            skey = uops.kernel(("alu", abase, shift_base + o0), lambda: [(abase, shift_base + o0, 0)])
            ub = uops.ensure(skey)
            pb.emit(
                isa.alu_insn(
                    isa.ALU_SHR,
                    ub,
                    ub + 1,
                    iter_out=t.oc,
                    iter_in=p,
                    dst_factor_out=p,
                    dst_factor_in=1,
                    src_factor_out=1,
                    src_factor_in=0,
                )
            )
            ub = uops.ensure(rkey)
        else:
            ub = uops.ensure(rkey)
            pb.emit(
                isa.alu_insn(
                    isa.ALU_SHR,
                    ub,
                    ub + 1,
                    iter_out=t.oc,
                    iter_in=p,
                    dst_factor_out=p,
                    dst_factor_in=1,
                    use_imm=1,
                    imm=shift,
                )
            )
        lo, hi = layer.out_range
        pb.emit(
            isa.alu_insn(
                isa.ALU_MAX, ub, ub + 1, iter_out=t.oc, iter_in=p, dst_factor_out=p, dst_factor_in=1, use_imm=1, imm=lo
            )
        )
        last_alu = pb.emit(
            isa.alu_insn(
                isa.ALU_MIN, ub, ub + 1, iter_out=t.oc, iter_in=p, dst_factor_out=p, dst_factor_in=1, use_imm=1, imm=hi
            )
        )
        last_store = emit_stores(pb, abase, t.oc, th, tw, o0 * ho * wo + r0 * wo + c0, ho * wo, wo, last_alu)
        acc_last_reader[aslot] = last_store
    pb.emit(isa.finish_insn(), after=(last_store,))
    return assemble(
        layer.name,
        pb,
        uops,
        consts,
        in_shape,
        out_shape,
        cfg,
        macs=layer.macs,
        tiling=tiling,
        meta={"gemm_steps": n_gemm_steps, **geo},
    )


def emit_stores(
    pb: ProgramBuilder,
    abase: int,
    nblocks: int,
    th: int,
    tw: int,
    out_elem: int,
    block_stride: int,
    row_stride: int,
    after: int,
) -> int:
    """STORE a tile of `nblocks` channel blocks (th x tw pixels each, consecutive in the
    accumulator from `abase`) to the output at element `out_elem`; the first STORE waits for
    `after` (the last ALU op of the tile). Returns the last STORE's index."""
    last = None
    for ol in range(nblocks):
        ins = isa.mem_insn(isa.STORE, isa.MEM_OUT, abase + ol * th * tw, 0, th, tw, row_stride)
        ins["_rel"] = ("out", out_elem + ol * block_stride)
        last = pb.emit(ins, after=(after,) if ol == 0 else ())
    return last


# ---------------------------------------------------------------------------- tiling space


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def tiling_space(layer: ConvLayer, cfg: VTAConfig) -> dict[str, list]:
    ib, obs = layer_geometry(layer, cfg.block)
    ho, wo = layer.out_hw
    widths = sorted(set(divisors(wo)) | set(range(ceil_div(wo, 4), wo + 1)))
    return {
        "h": list(range(1, ho + 1)),
        "w": widths,
        "oc": divisors(len(obs)),
        "ic": divisors(ib),
        "nbuf": [1, 2],
        "nacc": [1, 2],
        "order": ["spatial", "oc"],
    }


def is_valid(layer, t: Tiling, cfg: VTAConfig) -> bool:
    """Whether `t` fits `layer` (any layer kind: it asks the layer's own check)."""
    try:
        layer.check_tiling(t, cfg)
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
