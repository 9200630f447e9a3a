"""Which task gets the next batch of trials: coverage first, then the largest expected gain.

Ansor's gradient task scheduler (Zheng et al., OSDI 2020, section 6) adapted to one database and
one model: after every task has a record, a batch goes to the task whose model time is expected
to drop the most per trial, calls x (ALPHA x its recent improvement rate + (1 - ALPHA) x an
optimistic forward estimate: the larger of its average improvement per trial so far and
its distance to BETA x the time at the fastest similar kernel's throughput). A task that
stopped improving (converged) or whose search space is used up (exhausted) gets nothing more
while another can still gain; pools, means and layout transforms (minor kernels) get at most
`MINOR_TRIALS`. Only when no task is expected to gain does the
budget go by model-time share, so no budget is left unused while a kernel may still improve; a
run whose kernels are all exhausted (or minor and capped) ends there instead of spending the
rest of its time budget on pools.

Pure Python and no TVM import, so the policy is testable (and tested) without tuning anything.
"""

from __future__ import annotations

import dataclasses
import math

from ..database import median_run_s  # noqa: F401 - re-exported: the tuner's name for it

#: Largest batch of candidates measured per search round (the search costs the same for 4 or 32).
MAX_BATCH = 32
MIN_BATCH = 4
#: Assumed throughput (FLOP/s) for the prior of a task that has no measurement yet.
PRIOR_FLOPS_PER_S = 50e9
#: Weight of the measured (backward) improvement rate against the optimistic forward one (Ansor: 0.2).
ALPHA = 0.2
#: Slack on the fastest similar kernel's throughput in the forward estimate (Ansor: 2).
BETA = 2.0
#: Trials over which a task's recent improvement is measured, and after which no improvement of
#: at least `CONVERGED_GAIN` (relative) means it has converged.
WINDOW = 48
CONVERGED_GAIN = 0.01
#: Most trials a minor kernel (pool, mean, layout transform: a few % of the time, small spaces) gets.
MINOR_TRIALS = 16
#: Names of the kernels that do the model's arithmetic; every other kernel is minor.
MAJOR_KERNEL_WORDS = ("conv", "dense", "matmul", "winograd")


def is_minor(name: str) -> bool:
    """A pool, mean, softmax or layout transform: not a conv / dense / matmul (by its kernel name,
    which TVM's legalization and fusion build from the ops it holds)."""
    lowered = name.lower()
    return not any(word in lowered for word in MAJOR_KERNEL_WORDS)


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
    minor: bool = False  # pool / mean / layout transform: capped at MINOR_TRIALS
    curve: list = dataclasses.field(default_factory=list)  # best run time (s or None) after each trial
    reason: str = ""  # why the last batch went here, or why the task gets no more (the table's "why")
    picks: dict = dataclasses.field(default_factory=dict)  # this run's measured trials by reason

    def __post_init__(self) -> None:
        if not self.minor:
            self.minor = is_minor(self.name)

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
        """Account one measured candidate of this session (`run_s` None for a failed build or run),
        under the reason its batch was given for (`reason`)."""
        self.new_trials += 1
        self.picks[self.reason] = self.picks.get(self.reason, 0) + 1
        self.account(run_s)

    def account(self, run_s: float | None) -> None:
        """Account one measured candidate (this session's or an earlier one's) as a spent trial."""
        self.trials += 1
        if run_s is not None and math.isfinite(run_s) and run_s < 1e9:
            self.valid += 1
            if self.best_s is None or run_s < self.best_s:
                self.best_s = run_s
        self.curve.append(self.best_s)

    def best_before(self, trials_ago: int) -> float | None:
        """The best run time `trials_ago` trials back (None when it had none then)."""
        if trials_ago >= len(self.curve):
            return None
        return self.curve[-1 - trials_ago]

    @property
    def converged(self) -> bool:
        """No relative improvement of `CONVERGED_GAIN` over the last `WINDOW` trials."""
        then = self.best_before(WINDOW)
        return then is not None and self.best_s is not None and then - self.best_s < CONVERGED_GAIN * then

    @property
    def capped(self) -> bool:
        return self.minor and self.trials >= MINOR_TRIALS


def estimated_model_ms(tasks: list[TaskState]) -> float | None:
    """Sum over tuned tasks of best latency x calls, in ms; None until every task has one."""
    live = [t for t in tasks if not (t.exhausted and not t.covered)]
    if not live or any(not t.covered for t in live):
        return None
    return sum(t.best_s * t.calls for t in live) * 1e3


class Allocator:
    """Decides which task gets the next batch of trials, and how many (see the module docstring).

    * Coverage first: while a task has no valid measurement it gets the next batch (heaviest
      prior, FLOPs x calls, first), sized to leave an equal share for the other uncovered tasks.
      A task without a record would run as naive loops (~100x slower), so coverage proceeds
      even past the trial budget, one trial per task if need be.
    * Then by expected gain (`gain`), re-estimated after every batch; a converged, exhausted or
      capped minor task gets none while another is expected to gain.
    * When none is, by time share: the task whose share of the trials lags its share of the
      model time the most (the budget is spent where the time is, not left unused). When only
      capped minor tasks are left (every other space exhausted), tuning is done.

    Every pick sets the task's `reason` and counts in its `picks`, which the progress table and
    the summary show.
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

    def _peak_flops(self, minor: bool) -> float:
        """The best throughput among covered tasks of the same kind (Ansor's "similar tasks")."""
        rates = [t.flops / t.best_s for t in self.tasks if t.covered and t.minor == minor and t.flops and t.best_s]
        return max(rates, default=0.0)

    def gain(self, task: TaskState) -> float:
        """Model seconds a trial of this task is expected to save (0: expect nothing).

        backward: the best run time's drop over the last `WINDOW` trials, per trial. forward
        (optimistic, Ansor's): the larger of the average drop per trial so far (best / trials) and
        the distance to BETA x the time at the fastest similar kernel's throughput.
        """
        if task.exhausted or not task.covered or task.capped or task.converged:
            return 0.0
        window = min(WINDOW, len(task.curve) - 1)
        then = task.best_before(window) if window > 0 else None
        backward = (then - task.best_s) / window if then is not None else 0.0
        peak = self._peak_flops(task.minor)
        headroom = task.best_s - BETA * task.flops / peak if peak > 0 and task.flops else 0.0
        forward = max(task.best_s / max(1, task.trials), headroom)
        return task.calls * (ALPHA * backward + (1 - ALPHA) * forward)

    def _capped(self, i: int, n: int) -> int:
        """A batch of `n`, cut for a minor task so it ends at MINOR_TRIALS (at least 1)."""
        task = self.tasks[i]
        return max(1, min(n, MINOR_TRIALS - task.trials)) if task.minor else n

    def _pick(self, i: int, n: int, reason: str) -> tuple[int, int]:
        self.tasks[i].reason = reason  # the batch's trials count under it (`TaskState.record`)
        return i, n

    def next(self) -> tuple[int, int] | None:
        """(task index, trials) for the next batch, or None when tuning is done."""
        active = [i for i, t in enumerate(self.tasks) if not t.exhausted]
        uncovered = [i for i in active if not self.tasks[i].covered]
        if uncovered:
            i = max(uncovered, key=lambda k: self.tasks[k].prior_s)
            share = self.remaining // len(uncovered)
            return self._pick(i, self._capped(i, max(1, min(self.batch, share))), "coverage")
        if self.remaining <= 0 or not active:
            return None
        n = min(self.batch, self.remaining)
        gains = {i: self.gain(self.tasks[i]) for i in active}
        for i in active:  # the table says why a task is not picked
            task = self.tasks[i]
            if task.capped:
                task.reason = f"minor: capped at {MINOR_TRIALS}"
            elif task.converged:
                task.reason = f"converged (<{CONVERGED_GAIN:.0%} in {WINDOW} trials)"
        best = max(active, key=lambda k: gains[k])
        if gains[best] > 0:
            return self._pick(best, self._capped(best, n), "expected gain")
        eligible = [i for i in active if not self.tasks[i].capped]
        if not eligible:  # every kernel is exhausted, and the minor ones have had their handful
            return None
        total_time = sum(self.tasks[i].model_s for i in eligible)
        total_trials = sum(self.tasks[i].trials for i in eligible) + self.batch

        def lag(i: int) -> float:
            task = self.tasks[i]
            return task.model_s / total_time * total_trials - task.trials

        i = max(eligible, key=lag)
        return self._pick(i, self._capped(i, n), "time share (no gain expected)")


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
