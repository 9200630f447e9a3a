"""Building VTA programs: instructions in one sequential order with explicit data dependencies,
turned into the ISA's dependency tokens.

The lowering emits instructions as a sequential program (each queue's instructions appear in
the order that queue will run them) and states, for each instruction, which earlier instructions
on *other* queues it must wait for (a GEMM waits for the LOADs that filled its buffers; a LOAD
into a buffer slot waits for the last GEMM that read the slot; a STORE waits for the ALU op that
finished its accumulators; a GEMM reset waits for the STOREs that drained its accumulators).

`finalize` keeps, per direction (load->compute, compute->load, compute->store, store->compute),
only the dependencies not already implied by an earlier wait, and turns each into one push on
the producer and one pop on the consumer. Because every queue runs in order and the kept
producers and consumers are both strictly increasing, the k-th pop meets the k-th push, and
since every dependency points backwards in one global order the program cannot deadlock.
"""

from __future__ import annotations

from . import isa
from .sim import COMPUTE_Q, LOAD_Q, STORE_Q, route

# (producer queue, consumer queue) -> (producer push flag, consumer pop flag)
_DIRECTIONS = {
    (LOAD_Q, COMPUTE_Q): ("push_next_dep", "pop_prev_dep"),
    (COMPUTE_Q, LOAD_Q): ("push_prev_dep", "pop_next_dep"),
    (COMPUTE_Q, STORE_Q): ("push_next_dep", "pop_prev_dep"),
    (STORE_Q, COMPUTE_Q): ("push_prev_dep", "pop_next_dep"),
}


class ProgramBuilder:
    def __init__(self):
        self.insns: list[dict] = []
        self.queues: list[int] = []
        self.after: list[tuple[int, ...]] = []

    def emit(self, insn: dict, after=()) -> int:
        """Append `insn`; it must wait for the instructions (indices) in `after`."""
        idx = len(self.insns)
        self.insns.append(dict(insn))
        self.queues.append(route(insn))
        self.after.append(tuple(a for a in after if a is not None))
        return idx

    def finalize(self) -> list[dict]:
        out = [dict(i) for i in self.insns]
        for i in out:
            for f in isa.DEP_FIELDS:
                i[f] = 0
        last_waited = {d: -1 for d in _DIRECTIONS}
        for c, (qc, deps) in enumerate(zip(self.queues, self.after)):
            newest: dict[tuple[int, int], int] = {}
            for p in deps:
                if p >= c:
                    raise ValueError(f"instruction {c} waits for a later instruction {p}")
                qp = self.queues[p]
                if qp == qc:
                    continue  # same queue: in-order already
                key = (qp, qc)
                if key not in _DIRECTIONS:
                    raise ValueError(f"no token queue from the {qp} queue to the {qc} queue")
                newest[key] = max(newest.get(key, -1), p)
            for key, p in newest.items():
                if p > last_waited[key]:
                    push, pop = _DIRECTIONS[key]
                    out[p][push] = 1
                    out[c][pop] = 1
                    last_waited[key] = p
        return out
