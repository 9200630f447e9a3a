"""Which task gets the next batch of trials: coverage first, then each task's share of model time.

Pure Python and no TVM import, so the policy is testable (and tested) without tuning anything.
"""

from __future__ import annotations

import dataclasses
import math

#: Largest batch of candidates measured per search round (the search costs the same for 4 or 32).
MAX_BATCH = 32
MIN_BATCH = 4
#: Assumed throughput (FLOP/s) for the prior of a task that has no measurement yet.
PRIOR_FLOPS_PER_S = 50e9


@dataclasses.dataclass
class TaskState:
    """What the allocator knows about one tuning task."""

    name: str
    calls: int  # how many times the model calls this kernel (MetaSchedule's task weight)
    flops: float  # FLOPs of one call (`estimate_tir_flops`)
    trials: int = 0  # measured candidates, failures included (earlier sessions too)
    new_trials: int = 0  # ... in this session
    valid: int = 0  # measurements that produced a run time
    best_s: float | None = None  # best measured run time of one call
    failed_batches: int = 0  # batches in a row with no valid measurement
    empty_batches: int = 0  # batches in a row in which the search proposed nothing new
    exhausted: bool = False  # the search space is used up (or the task failed for good)

    @property
    def covered(self) -> bool:
        return self.best_s is not None

    @property
    def prior_s(self) -> float:
        """Model time this task costs before anything was measured: FLOPs x calls / 50 GFLOP/s."""
        return max(self.flops, 1.0) * self.calls / PRIOR_FLOPS_PER_S

    @property
    def model_s(self) -> float:
        """This task's share of the model latency: best run time x calls (prior if unmeasured)."""
        return self.best_s * self.calls if self.best_s is not None else self.prior_s

    def record(self, run_s: float | None) -> None:
        """Account one measured candidate of this session (`run_s` None for a failed build or run)."""
        self.new_trials += 1
        self.account(run_s)

    def account(self, run_s: float | None) -> None:
        """Account one measured candidate (this session's or an earlier one's) as a spent trial."""
        self.trials += 1
        if run_s is not None and math.isfinite(run_s) and run_s < 1e9:
            self.valid += 1
            if self.best_s is None or run_s < self.best_s:
                self.best_s = run_s


def median_run_s(values) -> float | None:
    """Median of a measurement's run times (s); None for none, or MetaSchedule's 1e10 failure marker."""
    values = sorted(float(v) for v in values or [])
    if not values:
        return None
    median = values[len(values) // 2]
    return median if 0 < median < 1e9 else None


def estimated_model_ms(tasks: list[TaskState]) -> float | None:
    """Sum over tuned tasks of best latency x calls, in ms; None until every task has one."""
    live = [t for t in tasks if not (t.exhausted and not t.covered)]
    if not live or any(not t.covered for t in live):
        return None
    return sum(t.best_s * t.calls for t in live) * 1e3


class Allocator:
    """Decides which task gets the next batch of trials, and how many.

    * Coverage first: while a task has no valid measurement it gets the next batch (heaviest
      prior, FLOPs x calls, first), sized to leave an equal share for the other uncovered tasks.
      A task without a record would run as naive loops (~100x slower), so coverage proceeds
      even past the trial budget, one trial per task if need be.
    * Then by time share: each batch goes to the task whose share of the trials spent lags its
      share of the estimated model time (best measured latency x calls) the most. Big
      convolutions thus get most of the budget, re-weighted after every batch; there is no flat
      per-task cap.
    """

    def __init__(self, tasks: list[TaskState], budget: int, batch: int) -> None:
        self.tasks = tasks
        self.budget = budget  # total trials for these tasks, earlier sessions included
        self.batch = batch

    @property
    def spent(self) -> int:
        return sum(t.trials for t in self.tasks)

    @property
    def remaining(self) -> int:
        return self.budget - self.spent

    def next(self) -> tuple[int, int] | None:
        """(task index, trials) for the next batch, or None when tuning is done."""
        active = [i for i, t in enumerate(self.tasks) if not t.exhausted]
        uncovered = [i for i in active if not self.tasks[i].covered]
        if uncovered:
            i = max(uncovered, key=lambda k: self.tasks[k].prior_s)
            share = self.remaining // len(uncovered)
            return i, max(1, min(self.batch, share))
        if self.remaining <= 0 or not active:
            return None
        total_time = sum(self.tasks[i].model_s for i in active)
        total_trials = sum(self.tasks[i].trials for i in active) + self.batch

        def lag(i: int) -> float:
            task = self.tasks[i]
            return task.model_s / total_time * total_trials - task.trials

        i = max(active, key=lag)
        return i, min(self.batch, self.remaining)


def default_batch(trials: int, n_tasks: int) -> int:
    """Candidates per search round: about two rounds per task, between 4 and 32."""
    return max(MIN_BATCH, min(MAX_BATCH, trials // max(1, 2 * n_tasks)))


def default_population(batch: int) -> int:
    """Evolutionary-search population for a batch size: 16 per candidate, 128 to 512.

    A search round's cost is proportional to the population (mutation and postprocessing of
    every member, ~75% of the round); MetaSchedule's fixed 512 took 22 s per round on a tiny
    conv here, 128 took 6 s. Small batches do not need a large population to pick from.
    """
    return max(128, min(512, 16 * batch))
