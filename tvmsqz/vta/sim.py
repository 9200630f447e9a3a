"""A behavioural simulator of VTA, written from the ISA.

What it does is what apache/tvm-vta's functional simulator (`src/sim/sim_driver.cc` with the
queue logic of `sim_tlpp.cc`) does:

* instructions are routed to three queues: LOAD of INP/WGT -> load queue; LOAD of UOP/ACC/
  ACC_8BIT, GEMM, ALU and FINISH -> compute queue; STORE -> store queue;
* each queue runs in order; an instruction first pops the dependency tokens its `pop_*` flags
  ask for (waiting while a token queue is empty), executes, then pushes the tokens its `push_*`
  flags ask for. Token queues: load->compute, compute->load, compute->store, store->compute;
* LOAD fills SRAM row-major with (y_pad_0 + y_size + y_pad_1) x (x_pad_0 + x_size + x_pad_1)
  elements, zero padding; STORE moves accumulator rows to DRAM truncating int32 to int8;
  GEMM accumulates int8 x int8 products into int32 with wrap-around; ALU applies MIN/MAX/ADD/
  SHR/MUL lane-wise (SHR by a negative amount shifts left);
* SRAM accesses out of a buffer's depth are errors (the reference's CHECKs);
* the run ends at FINISH. Where the reference would spin forever (no queue can make progress
  and FINISH has not run) this simulator raises `DeadlockError`.

Differences, all on the side of strictness: instructions left in a queue after FINISH and
dependency tokens left unpopped at the end are errors (the reference silently keeps stale
tokens for the next run); LOAD of memory type OUT and dependency flags naming a queue that does
not exist (e.g. a load popping from "prev") are errors.

It also keeps a cycle *estimate* (see `CycleModel` and docs/vta.md): every queue has its own
clock; an instruction starts when its queue is free and the tokens it pops have been pushed,
and takes `insn_overhead` plus
  LOAD/STORE: dram_latency + ceil(bytes / bus_bytes)
  GEMM: gemm_ii x iter_out x iter_in x (uop_end - uop_bgn)   (reset as well)
  ALU:  alu_ii  x iter_out x iter_in x (uop_end - uop_bgn)
DRAM traffic is counted per memory type like the reference profiler.

Execution is vectorised with numpy: a GEMM whose weight index does not move with the loop
iterations is computed as one float64 matrix product per destination micro-op group (exact:
every partial sum of int8 products stays far below 2**53) and accumulated modulo 2**32; other
GEMMs and every ALU instruction whose iterations could observe each other's writes fall back to
the literal loop order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from . import isa
from .config import VTAConfig


class VTASimError(RuntimeError):
    """The program did something the hardware/reference simulator rejects."""


class DeadlockError(VTASimError):
    """No queue can make progress and FINISH has not executed."""


class SRAMBoundsError(VTASimError):
    """An SRAM access falls outside its buffer."""


LOAD_Q, COMPUTE_Q, STORE_Q = 0, 1, 2
QUEUE_NAMES = ("load", "compute", "store")


def wrap32(x: np.ndarray) -> np.ndarray:
    """int64 -> int32 with two's-complement wrap-around."""
    return ((np.asarray(x, dtype=np.int64) + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)


@dataclass
class SimStats:
    cycles: int = 0
    queue_busy: list = field(default_factory=lambda: [0, 0, 0])
    inp_load_bytes: int = 0
    wgt_load_bytes: int = 0
    acc_load_bytes: int = 0
    uop_load_bytes: int = 0
    out_store_bytes: int = 0
    insn_fetch_bytes: int = 0
    gemm_counter: int = 0  # GEMM uop iterations (not counting resets), like the reference profiler
    alu_counter: int = 0
    insn_count: int = 0

    @property
    def dram_bytes(self) -> int:
        """Loads + stores (what the reference profiler counts); instruction fetch not included."""
        return (
            self.inp_load_bytes + self.wgt_load_bytes + self.acc_load_bytes + self.uop_load_bytes + self.out_store_bytes
        )

    def as_dict(self) -> dict:
        return {
            "cycles": int(self.cycles),
            "dram_bytes": int(self.dram_bytes),
            "inp_load_bytes": int(self.inp_load_bytes),
            "wgt_load_bytes": int(self.wgt_load_bytes),
            "acc_load_bytes": int(self.acc_load_bytes),
            "uop_load_bytes": int(self.uop_load_bytes),
            "out_store_bytes": int(self.out_store_bytes),
            "insn_fetch_bytes": int(self.insn_fetch_bytes),
            "gemm_uop_iters": int(self.gemm_counter),
            "alu_uop_iters": int(self.alu_counter),
            "instructions": int(self.insn_count),
            "queue_busy_cycles": {n: int(b) for n, b in zip(QUEUE_NAMES, self.queue_busy)},
        }


def route(insn: dict) -> int:
    op = insn["opcode"]
    if op == isa.LOAD:
        return LOAD_Q if insn["memory_type"] in (isa.MEM_INP, isa.MEM_WGT) else COMPUTE_Q
    if op == isa.STORE:
        return STORE_Q
    if op in (isa.GEMM, isa.ALU, isa.FINISH):
        return COMPUTE_Q
    raise VTASimError(f"unknown opcode {op}")


class Simulator:
    """One VTA device: SRAM buffers, a byte-addressed DRAM, and the three queues.

    `dram` is a 1-D uint8 numpy array that the simulator reads and writes in place; DRAM
    addresses in instructions are in units of the memory type's element size, as on hardware.
    """

    def __init__(self, cfg: VTAConfig, dram: np.ndarray | None = None, *, timing_only: bool = False):
        self.cfg = cfg
        self.timing_only = timing_only
        b = cfg.block
        self.inp = np.zeros((cfg.inp_depth, cfg.batch * b), dtype=np.int8)
        self.wgt = np.zeros((cfg.wgt_depth, b, b), dtype=np.int8)
        self.acc = np.zeros((cfg.acc_depth, cfg.batch * b), dtype=np.int32)
        self.uop = np.zeros((cfg.uop_depth, 3), dtype=np.int64)  # decoded (dst, src, wgt)
        self.dram = dram if dram is not None else np.zeros(0, dtype=np.uint8)
        self.stats = SimStats()

    # ------------------------------------------------------------------ DRAM views
    def _view(self, elem_bytes: int, dtype, lanes_shape) -> np.ndarray:
        n = len(self.dram) // elem_bytes
        return self.dram[: n * elem_bytes].view(dtype).reshape((n,) + lanes_shape)

    def _dram_rows(self, insn: dict, n_elems: int) -> np.ndarray:
        y = np.arange(insn["y_size"], dtype=np.int64)[:, None]
        x = np.arange(insn["x_size"], dtype=np.int64)[None, :]
        idx = insn["dram_base"] + y * insn["x_stride"] + x
        if idx.size and (idx.max() >= n_elems):
            raise VTASimError(f"DRAM access beyond the end of memory: {isa.describe(insn)}")
        return idx

    # ------------------------------------------------------------------ run
    def run(self, program: np.ndarray | list, *, strict: bool = True) -> SimStats:
        """Execute a program ((N, 2) uint64 words or a list of instruction dicts) until FINISH."""
        if isinstance(program, list):
            insns = [dict(i) for i in program]
            # fill missing fields the way an encoder would (validates ranges too)
            insns = [isa.decode(isa.encode(i, self.cfg), self.cfg) for i in insns]
        else:
            insns = isa.decode_program(program, self.cfg)
        queues = [deque(), deque(), deque()]
        for i, insn in enumerate(insns):
            queues[route(insn)].append((i, insn))
        self.stats.insn_count += len(insns)
        self.stats.insn_fetch_bytes += len(insns) * self.cfg.insn_bytes
        # token FIFOs hold push timestamps
        l2g, g2l, s2g, g2s = deque(), deque(), deque(), deque()
        # per queue: (pop_prev, pop_next, push_prev, push_next) token queues; None = no such queue
        wiring = {
            LOAD_Q: (None, g2l, None, l2g),
            COMPUTE_Q: (l2g, s2g, g2l, g2s),
            STORE_Q: (g2s, None, s2g, None),
        }
        clock = [0, 0, 0]
        finished = False
        while not finished:
            progress = False
            for q in (LOAD_Q, COMPUTE_Q, STORE_Q):
                pop_prev, pop_next, push_prev, push_next = wiring[q]
                while queues[q]:
                    idx, insn = queues[q][0]
                    flags = [insn.get(f, 0) for f in isa.DEP_FIELDS]
                    for flag, tq, fname in zip(flags, wiring[q], isa.DEP_FIELDS):
                        if flag and tq is None:
                            raise VTASimError(
                                f"instruction {idx} ({isa.describe(insn)}) on the {QUEUE_NAMES[q]} queue "
                                f"sets {fname}, but that queue has no such neighbour"
                            )
                    if (flags[0] and not pop_prev) or (flags[1] and not pop_next):
                        break  # blocked on a token
                    start = clock[q]
                    if flags[0]:
                        start = max(start, pop_prev.popleft())
                    if flags[1]:
                        start = max(start, pop_next.popleft())
                    queues[q].popleft()
                    try:
                        dur = self._execute(insn)
                    except VTASimError as exc:
                        raise type(exc)(f"instruction {idx}: {exc}") from None
                    end = start + dur
                    clock[q] = end
                    self.stats.queue_busy[q] += dur
                    if flags[2]:
                        push_prev.append(end)
                    if flags[3]:
                        push_next.append(end)
                    progress = True
                    if insn["opcode"] == isa.FINISH:
                        finished = True
                        break
                if finished:
                    break
            if not finished and not progress:
                pending = {
                    QUEUE_NAMES[q]: (queues[q][0][0], isa.describe(queues[q][0][1])) for q in range(3) if queues[q]
                }
                if not pending:
                    raise DeadlockError(
                        "every queue drained without a FINISH instruction: the device would never signal completion"
                    )
                tokens = {
                    "load->compute": len(l2g),
                    "compute->load": len(g2l),
                    "store->compute": len(s2g),
                    "compute->store": len(g2s),
                }
                raise DeadlockError(f"deadlock: no queue can make progress; heads {pending}; tokens available {tokens}")
        if strict:
            left = {QUEUE_NAMES[q]: len(queues[q]) for q in range(3) if queues[q]}
            if left:
                raise VTASimError(f"FINISH executed with instructions still queued: {left}")
            dangling = {
                n: len(t)
                for n, t in (
                    ("load->compute", l2g),
                    ("compute->load", g2l),
                    ("store->compute", s2g),
                    ("compute->store", g2s),
                )
                if t
            }
            if dangling:
                raise VTASimError(f"dependency tokens left unpopped at FINISH: {dangling}")
        self.stats.cycles += max(clock)
        return self.stats

    # ------------------------------------------------------------------ instructions
    def _execute(self, insn: dict) -> int:
        op = insn["opcode"]
        cm = self.cfg.cycles
        if op == isa.LOAD:
            return cm.insn_overhead + self._load(insn)
        if op == isa.STORE:
            return cm.insn_overhead + self._store(insn)
        if op == isa.GEMM:
            n = insn["iter_out"] * insn["iter_in"] * max(0, insn["uop_end"] - insn["uop_bgn"])
            if not insn["reset_reg"]:
                self.stats.gemm_counter += n
            if not self.timing_only:
                self._gemm(insn)
            return cm.insn_overhead + cm.gemm_ii * n
        if op == isa.ALU:
            n = insn["iter_out"] * insn["iter_in"] * max(0, insn["uop_end"] - insn["uop_bgn"])
            self.stats.alu_counter += n
            if not self.timing_only:
                self._alu(insn)
            return cm.insn_overhead + cm.alu_ii * n
        if op == isa.FINISH:
            return cm.insn_overhead
        raise VTASimError(f"unknown opcode {op}")

    def _transfer_cycles(self, nbytes: int) -> int:
        cm = self.cfg.cycles
        return cm.dram_latency + -(-nbytes // self.cfg.bus_bytes)

    def _load(self, insn: dict) -> int:
        cfg = self.cfg
        mt = insn["memory_type"]
        if insn["x_size"] == 0:
            return 0
        if mt == isa.MEM_INP:
            sram, eb, view = self.inp, cfg.inp_elem_bytes, (np.int8, (cfg.batch * cfg.block,))
        elif mt == isa.MEM_WGT:
            sram, eb, view = self.wgt, cfg.wgt_elem_bytes, (np.int8, (cfg.block, cfg.block))
        elif mt == isa.MEM_ACC:
            sram, eb, view = self.acc, cfg.acc_elem_bytes, (np.int32, (cfg.batch * cfg.block,))
        elif mt == isa.MEM_ACC_8BIT:
            sram, eb, view = self.acc, cfg.acc_elem_bytes // 4, (np.int8, (cfg.batch * cfg.block,))
        elif mt == isa.MEM_UOP:
            sram, eb, view = self.uop, cfg.uop_elem_bytes, (np.uint32, ())
        else:
            raise VTASimError(f"LOAD of memory type {isa.MEM_NAMES.get(mt, mt)} is not supported")
        nbytes = insn["x_size"] * insn["y_size"] * eb
        counter = {
            isa.MEM_INP: "inp_load_bytes",
            isa.MEM_WGT: "wgt_load_bytes",
            isa.MEM_ACC: "acc_load_bytes",
            isa.MEM_ACC_8BIT: "acc_load_bytes",
            isa.MEM_UOP: "uop_load_bytes",
        }[mt]
        setattr(self.stats, counter, getattr(self.stats, counter) + nbytes)
        ytot = insn["y_pad_0"] + insn["y_size"] + insn["y_pad_1"]
        xtot = insn["x_pad_0"] + insn["x_size"] + insn["x_pad_1"]
        end = insn["sram_base"] + ytot * xtot
        if end > len(sram):
            raise SRAMBoundsError(
                f"LOAD {isa.MEM_NAMES[mt]} writes SRAM [{insn['sram_base']}, {end}) beyond depth {len(sram)}"
            )
        if self.timing_only and mt != isa.MEM_UOP:
            return self._transfer_cycles(nbytes)
        dview = self._view(eb, view[0], view[1])
        idx = self._dram_rows(insn, len(dview))
        data = dview[idx]  # (y, x, ...)
        if mt == isa.MEM_UOP:
            data = isa.decode_uops(data.reshape(-1), cfg).reshape(insn["y_size"], insn["x_size"], 3)
        elif mt == isa.MEM_ACC_8BIT:
            data = data.astype(np.int32)
        tile = np.zeros((ytot, xtot) + sram.shape[1:], dtype=sram.dtype)
        tile[insn["y_pad_0"] : insn["y_pad_0"] + insn["y_size"], insn["x_pad_0"] : insn["x_pad_0"] + insn["x_size"]] = (
            data
        )
        sram[insn["sram_base"] : end] = tile.reshape((-1,) + sram.shape[1:])
        return self._transfer_cycles(nbytes)

    def _store(self, insn: dict) -> int:
        cfg = self.cfg
        if insn["x_size"] == 0:
            return 0
        if insn["memory_type"] != isa.MEM_OUT:
            raise VTASimError(f"STORE of memory type {isa.MEM_NAMES.get(insn['memory_type'])} is not supported")
        if insn["y_pad_0"] or insn["y_pad_1"] or insn["x_pad_0"] or insn["x_pad_1"]:
            raise VTASimError("STORE with padding is not supported")
        n = insn["x_size"] * insn["y_size"]
        nbytes = n * cfg.out_elem_bytes
        self.stats.out_store_bytes += nbytes
        end = insn["sram_base"] + n
        if end > cfg.out_depth:
            raise SRAMBoundsError(f"STORE reads SRAM [{insn['sram_base']}, {end}) beyond depth {cfg.out_depth}")
        if not self.timing_only:
            dview = self._view(cfg.out_elem_bytes, np.int8, (cfg.batch * cfg.block,))
            idx = self._dram_rows(insn, len(dview))
            src = self.acc[insn["sram_base"] : end].reshape(insn["y_size"], insn["x_size"], -1)
            dview[idx] = src.astype(np.int8)  # astype truncates to the low 8 bits (wraps)
        return self._transfer_cycles(nbytes)

    # ------------------------------------------------------------------ GEMM / ALU
    def _loop_indices(self, insn: dict, src_is_acc: bool):
        """(U,) uop arrays and (O*I,) loop offsets; with bounds checks."""
        bgn, end = insn["uop_bgn"], insn["uop_end"]
        if end > self.cfg.uop_depth or bgn > end:
            raise SRAMBoundsError(f"micro-op range [{bgn}, {end}) outside the uop buffer")
        u = self.uop[bgn:end]
        o = np.arange(insn["iter_out"], dtype=np.int64)[:, None]
        i = np.arange(insn["iter_in"], dtype=np.int64)[None, :]
        d_oi = (o * insn["dst_factor_out"] + i * insn["dst_factor_in"]).ravel()
        s_oi = (o * insn["src_factor_out"] + i * insn["src_factor_in"]).ravel()
        return u, d_oi, s_oi, o, i

    def _check(self, lo_hi, depth, what):
        lo, hi = lo_hi
        if hi >= depth or lo < 0:
            raise SRAMBoundsError(f"{what} index {hi} outside depth {depth}")

    def _gemm(self, insn: dict) -> None:
        u, d_oi, s_oi, o, i = self._loop_indices(insn, False)
        if len(u) == 0 or len(d_oi) == 0:
            return
        dmax = u[:, 0].max() + d_oi.max()
        self._check((0, dmax), self.cfg.acc_depth, "GEMM accumulator")
        if insn["reset_reg"]:
            dst = (u[:, 0][:, None] + d_oi[None, :]).ravel()
            self.acc[dst] = 0
            return
        w_oi = (o * insn["wgt_factor_out"] + i * insn["wgt_factor_in"]).ravel()
        self._check((0, u[:, 1].max() + s_oi.max()), self.cfg.inp_depth, "GEMM input")
        self._check((0, u[:, 2].max() + w_oi.max()), self.cfg.wgt_depth, "GEMM weight")
        acc = self.acc.astype(np.int64)
        if not w_oi.any():
            # Group micro-ops by destination: one exact float64 matmul per group.
            inj = len(np.unique(d_oi)) == len(d_oi)
            inp = self.inp.astype(np.float64)
            wgt = self.wgt.astype(np.float64)
            for d in np.unique(u[:, 0]):
                group = u[u[:, 0] == d]
                for g in range(0, len(group), 64):  # bound the im2col matrix size
                    sel = group[g : g + 64]
                    x = inp[sel[:, 1][:, None] + s_oi[None, :]]  # (n, OI, 16)
                    x = x.transpose(1, 0, 2).reshape(len(s_oi), -1)  # (OI, n*16), k fastest
                    w = wgt[sel[:, 2]].transpose(0, 2, 1).reshape(-1, wgt.shape[1])  # (n*16 k, 16 j)
                    c = (x @ w).astype(np.int64)
                    if inj:
                        acc[d + d_oi] += c
                    else:
                        np.add.at(acc, d + d_oi, c)
        else:
            # General case: per (o, i, u) entry, in chunks.
            dst = (u[:, 0][None, :] + d_oi[:, None]).ravel()
            src = (u[:, 1][None, :] + s_oi[:, None]).ravel()
            wid = (u[:, 2][None, :] + w_oi[:, None]).ravel()
            for s in range(0, len(dst), 4096):
                sl = slice(s, s + 4096)
                c = np.einsum("nk,njk->nj", self.inp[src[sl]].astype(np.int64), self.wgt[wid[sl]].astype(np.int64))
                np.add.at(acc, dst[sl], c)
        self.acc[:] = wrap32(acc)

    @staticmethod
    def _alu_fn(opcode: int):
        def shr(x, y):
            y = np.broadcast_to(y, x.shape)
            right = x >> np.clip(y, 0, 63)
            left = x << np.clip(-y, 0, 63)
            return np.where(y >= 0, right, left)

        fns = {
            isa.ALU_MIN: np.minimum,
            isa.ALU_MAX: np.maximum,
            isa.ALU_ADD: np.add,
            isa.ALU_SHR: shr,
            isa.ALU_MUL: np.multiply,
        }
        if opcode not in fns:
            raise VTASimError(f"unknown ALU opcode {opcode}")
        return fns[opcode]

    def _alu(self, insn: dict) -> None:
        u, d_oi, s_oi, _, _ = self._loop_indices(insn, True)
        if len(u) == 0 or len(d_oi) == 0:
            return
        fn = self._alu_fn(insn["alu_opcode"])
        # loop order is (o, i, u): u fastest
        dst = (d_oi[:, None] + u[:, 0][None, :]).ravel()
        src = (s_oi[:, None] + u[:, 1][None, :]).ravel()
        depth = self.cfg.acc_depth
        self._check((dst.min(), dst.max()), depth, "ALU destination")
        use_imm = bool(insn["use_imm"])
        if not use_imm:
            self._check((src.min(), src.max()), depth, "ALU source")
        imm = np.int64(insn["imm"])
        n = len(dst)
        safe = len(np.unique(dst)) == n
        if safe and not use_imm:
            writer = np.full(depth, n, dtype=np.int64)
            writer[dst] = np.arange(n)
            safe = bool(np.all(writer[src] >= np.arange(n)))  # every read sees the original value
        if safe:
            a = self.acc[dst].astype(np.int64)
            b = imm if use_imm else self.acc[src].astype(np.int64)
            self.acc[dst] = wrap32(fn(a, b))
            return
        acc = self.acc  # literal order
        for e in range(n):
            a = acc[dst[e]].astype(np.int64)
            b = imm if use_imm else acc[src[e]].astype(np.int64)
            acc[dst[e]] = wrap32(fn(a, b))
