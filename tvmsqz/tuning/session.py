"""One tuning run: setup, warm start (earlier records, or the shipped database's), the batch loop, the summary.

The loop replaces MetaSchedule's task scheduler so that trials go where model time is
(`allocator.Allocator`), and drives search, builder, runner, database and cost model from Python
(a Ctrl-C raised inside a Python callback that C++ called comes back as `RuntimeError('')`, not
KeyboardInterrupt; see `signals`). Every task has a MetaSchedule `TuneContext` (post-order-apply
space, evolutionary search); one XGBoost cost model is shared by all tasks.

Two databases, on purpose: the search works on an in-memory `MemoryDatabase` (seeded with the
folder's earlier records), and every measured candidate is committed to the folder by
`records.TuningFolder` (durable, checked appends) before it counts. Builder and runner come from
the target's backend (`tuning_builder_runner`), which knows local pools, RPC devices and GPUs;
nothing here branches on a target family.

Warm start, two kinds. `--resume` continues the folder's own records (counted, seeding the search
and the cost model, never measured again). A new or empty folder instead starts from the target's
shipped database (`database.shipped_database`: the one tuned on this CPU model, else the portable
one), unless `warm=False` (`--cold`): the best few shipped records of every task whose workload it
holds are measured again on this host first, committed with this host's times, and seed the search
and the cost model like the folder's own would. Those measurements are trials of the run.

The run ends when the allocator has spent `trials`, every task is exhausted, the time budget is
spent (checked between batches, so the run ends at a batch boundary), or on Ctrl-C; the summary
says which (`stopped`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from ..errors import TvmsqzError
from ..fsutil import LOCK_NAME, folder_lock
from ..spec import TargetSpec, host_cores
from .allocator import (
    MIN_BATCH,
    MINOR_TRIALS,
    Allocator,
    TaskState,
    default_batch,
    default_population,
    estimated_model_ms,
    median_run_s,
)
from .budget import UNBOUNDED_TRIALS, format_duration, resolve_trials, sizing_trials
from .progress import Progress
from .records import TuningFolder, check_folder_path, trace_key
from .signals import Interrupted, StopRequest, TuningInterrupted
from .tasks import extract, kernel_flops

#: Batches in a row without one valid measurement before a task is given up as failed.
MAX_FAILED_BATCHES = 3
#: Batches in a row that produce no new candidate before a task counts as exhausted.
MAX_EMPTY_BATCHES = 3
#: Records per task used to warm-start the cost model on `--resume`.
WARM_START_RECORDS = 256


# ----------------------------------------------------------------------------- helpers


def resolve_measure(spec: TargetSpec, measure: str | None) -> str:
    """How candidates are timed: the caller's choice, else the target's `tuning.measure`, else warm."""
    from ..builder import MEASURE_MODES

    chosen = measure or (spec.data.get("tuning", {}) or {}).get("measure") or "warm"
    if chosen not in MEASURE_MODES:
        raise TvmsqzError(f"--measure must be one of {', '.join(MEASURE_MODES)}, not {chosen!r}")
    return chosen


def rpc_settings(spec: TargetSpec, tracker: str | None, key: str | None) -> dict | None:
    """{"tracker", "key"} for RPC tuning, or None for this host; the target's `rpc` data decides."""
    rpc = spec.data.get("rpc", {}) or {}
    if tracker is None:
        if rpc.get("required_for_tuning"):
            raise TvmsqzError(
                f"tuning for {spec.name} needs a device: pass --rpc-tracker HOST:PORT --rpc-key KEY "
                "(start emulated devices with `tvmsqz device emulate start`)"
            )
        if key is not None:
            raise TvmsqzError("--rpc-key needs --rpc-tracker HOST:PORT")
        return None
    key = key or rpc.get("default_key")
    if not key:
        raise TvmsqzError("--rpc-tracker needs --rpc-key KEY (the key the devices registered with)")
    return {"tracker": tracker, "key": key}


def _ms_logger() -> logging.Logger:
    """MetaSchedule's per-task logger: silent unless TVMSQZ_VERBOSE is set."""
    logger = logging.getLogger("tvmsqz.metaschedule")
    if os.environ.get("TVMSQZ_VERBOSE"):
        logger.setLevel(logging.INFO)
        logger.propagate = True
    else:
        logger.setLevel(logging.CRITICAL)
        logger.propagate = False
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
    return logger


def _floats(values) -> list[float]:
    return [float(v.value if hasattr(v, "value") else v) for v in (values or [])]


def _run_secs(result) -> float | None:
    """Median run time in seconds of a runner result, None when it failed."""
    if result.error_msg is not None:
        return None
    return median_run_s(_floats(result.run_secs))


def _remove_artifact(builder, path: str | None) -> None:
    if not path:
        return
    remove = getattr(builder, "remove_artifact", None)
    if remove is not None:
        remove(path)
    else:  # what MetaSchedule's RemoveBuildArtifact does
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _batch_from_env() -> int | None:
    """`TVMSQZ_TUNE_BATCH` (tests and experiments pin the batch size with it)."""
    value = os.environ.get("TVMSQZ_TUNE_BATCH")
    if not value:
        return None
    try:
        return max(1, int(value))
    except ValueError:
        raise TvmsqzError(f"TVMSQZ_TUNE_BATCH={value!r} is not a number") from None


# ----------------------------------------------------------------------------- entry point


def tune_model(
    mod,
    spec: TargetSpec,
    *,
    trials: int | None = None,
    work_dir: Path,
    resume: bool = False,
    fuse: bool | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    log=None,
    batch: int | None = None,
    population: int | None = None,
    seed: int | None = None,
    space: str | None = None,
    time_budget: float | None = None,
    warm: bool = True,
    measure: str | None = None,
) -> dict:
    """Tune every worthwhile kernel of `mod` for `spec`; records go to `work_dir`.

    `trials` is the total number of measurements in `work_dir`, those of earlier sessions
    included (so `resume=True` with the same number finishes an interrupted run); None means
    unbounded with a `time_budget`, else `budget.DEFAULT_TRIALS`. `time_budget` (wall seconds,
    counted once the folder is locked) ends the run at the first batch boundary past it; with
    `trials` too, whichever comes first. `warm` (on unless `--cold`): in a folder without
    records, first re-measure the shipped database's best records of each task on this host.
    The folder is locked for the whole run: a second tune of the same folder waits (saying so
    on `log`), then resumes from the first one's records. `log` is a rich Console for progress
    (None: silent). Returns a summary dict: `records`, `tasks`, `tuned_tasks`, `skipped`,
    `untuned`, `trials`, `new_trials`, `budget` (None: unbounded), `time_budget_s`, `stopped`
    ("trials", "time budget", "exhausted", "interrupted"), `warm_start` (None, or what the
    shipped warm start re-measured), `seconds`, `seconds_per_trial`, `best_estimated_ms`,
    `history` [(trials, estimated_ms, wall_s)], `per_task`, `interrupted`. `space` picks the
    design space per task through the backend ("blocked": the direct-conv space for blocked
    convs, "generic": MetaSchedule's own; None: the target's choice). `measure` says how a
    candidate is timed on a CPU ("warm" or "flush", `builder.MEASURE_MODES`; None: the target's
    `tuning.measure`, else warm).
    """
    start = time.perf_counter()
    work_dir = Path(work_dir)
    trials = resolve_trials(trials, time_budget)
    if spec.tvm_config is None:
        raise TvmsqzError(f"target {spec.name} does not tune with MetaSchedule")
    rpc = rpc_settings(spec, rpc_tracker, rpc_key)
    if rpc is not None:
        from ..device import check_tracker

        check_tracker(rpc["tracker"])  # TvmsqzError before any slow work when it is down
    check_folder_path(work_dir)
    if batch is None:
        batch = _batch_from_env()
    measure = resolve_measure(spec, measure)

    def waiting() -> None:
        if log is not None:
            log.print(f"waiting for {work_dir}: another tune is using it", highlight=False, soft_wrap=True)

    created = not work_dir.exists()
    try:
        return _tune_locked(
            mod,
            spec,
            work_dir,
            waiting,
            trials=trials,
            resume=resume,
            fuse=fuse,
            rpc=rpc,
            log=log,
            batch=batch,
            population=population,
            seed=seed,
            space=space,
            time_budget=time_budget,
            warm=warm,
            start=start,
            measure=measure,
        )
    except BaseException:
        if created:  # a run that failed before writing anything leaves no empty folder behind
            _remove_if_empty(work_dir)
        raise


def _remove_if_empty(folder: Path) -> None:
    """Remove a tuning folder holding nothing but its lock file (and empty database files)."""
    import contextlib
    import shutil

    with contextlib.suppress(OSError):
        if all(p.name == LOCK_NAME or (p.is_file() and p.stat().st_size == 0) for p in folder.iterdir()):
            shutil.rmtree(folder)


def _tune_locked(
    mod,
    spec: TargetSpec,
    work_dir: Path,
    waiting,
    *,
    trials,
    resume,
    fuse,
    rpc,
    log,
    batch,
    population,
    seed,
    space,
    time_budget,
    warm,
    start,
    measure,
) -> dict:
    """The run itself, holding the folder lock (see `tune_model`)."""
    with folder_lock(work_dir, on_wait=waiting):
        # Everything that reads the folder happens under the lock: a run that waited sees the
        # records of the one before it, and counts them against `trials`.
        folder = TuningFolder.open(work_dir, spec, resume)
        state = Session(spec, folder, log, start, folder.read_summary() if resume else {})
        state.time_budget = time_budget
        state.deadline = None if time_budget is None else time.perf_counter() + time_budget
        state.warm = warm and folder.records == 0  # a folder with records resumes from its own
        state.measure = measure
        for repair in folder.repairs:
            state.say(f"[yellow]repaired database: {repair}[/yellow]")
        failed = True
        try:
            state.setup(
                mod, fuse=fuse, rpc=rpc, trials=trials, batch=batch, population=population, seed=seed, space=space
            )
            state.loop()
            failed = False
        except (Interrupted, KeyboardInterrupt):
            state.interrupted = True
            state.stopped = "interrupted"
            failed = False
        finally:
            state.close()
            if state.allocator is not None:
                try:
                    folder.write_summary(state.summary())
                except TvmsqzError as exc:  # the records are the database; the summary is a report
                    if not failed:
                        state.say(f"[yellow]{exc}[/yellow]")
        summary = state.summary()
    if state.interrupted:
        raise TuningInterrupted(
            f"tuning interrupted after {summary['trials']} trials; the database in {work_dir} is valid "
            f"({summary['records']} records): continue with the same command plus --resume",
            summary,
        )
    return summary


def tune(mod, target: TargetSpec, trials: int, work_dir: Path, **kwargs) -> dict:
    """`tune_model` with positional arguments (the name docs/design.md uses)."""
    return tune_model(mod, target, trials=trials, work_dir=work_dir, **kwargs)


# ----------------------------------------------------------------------------- the session


class Session:
    """One tuning run: the MetaSchedule objects, the task states and the loop."""

    def __init__(self, spec: TargetSpec, folder: TuningFolder, log, start: float, previous: dict) -> None:
        from ..backends import get_backend

        self.spec = spec
        self.backend = get_backend(spec)
        self.folder = folder
        self.log = log
        self.start = start
        self.previous = previous
        self.interrupted = False
        self.tasks: list[TaskState] = []
        self.contexts: list = []
        self.workloads: list = []  # in-memory `Workload` per task (what the search looks up)
        self.disk_index: list[int] = []  # per task: its line in the folder's workload file
        self.seen: list[set] = []  # per task: the measured schedules' module hashes and trace keys
        self.pretuned: set[int] = set()
        self.skipped: list[str] = []
        self.history: list[list] = [list(h) for h in previous.get("history", []) if isinstance(h, list)]
        self.wall_offset = float(previous.get("seconds_total", 0.0) or 0.0)
        self.builder = self.runner = self.database = self.cost_model = None
        self.progress: Progress | None = None
        self.allocator: Allocator | None = None
        self.rpc: dict | None = None
        self.device_type = ""
        self.batch = 0
        self.population = 0
        self.stop = StopRequest(self._on_first_interrupt)
        self.timings = {"setup": 0.0, "search": 0.0, "build": 0.0, "run": 0.0, "learn": 0.0}
        self.time_budget: float | None = None
        self.deadline: float | None = None  # perf_counter() at which the time budget is spent
        self.warm = False  # re-measure the shipped database's best records first (`_reuse_shipped`)
        self.warm_start: dict | None = previous.get("warm_start")  # the summary's record of it
        self.sizing = 0  # the trial count batches and the warm start are sized for
        self.stopped: str | None = None
        self.measure = "warm"  # how candidates are timed (`builder.MEASURE_MODES`)

    # -- output ---------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.note(text)
        elif self.log is not None:
            self.log.print(text, highlight=False, soft_wrap=True)

    def _on_first_interrupt(self) -> None:
        self.say("[yellow]stopping after this batch (its records are saved); Ctrl-C again to stop now[/yellow]")

    # -- setup ----------------------------------------------------------------------------------

    def setup(
        self,
        mod,
        *,
        fuse: bool | None,
        rpc: dict | None,
        trials: int,
        batch: int | None,
        population: int | None,
        seed: int | None,
        space: str | None = None,
    ) -> None:
        from ..builder import import_tensor_intrin

        self.stop.__enter__()
        host_threads = host_cores()
        measure_threads = int(self.spec.tvm_config.get("num-cores") or host_threads)
        self.rpc = rpc
        import_tensor_intrin()

        from tvm.s_tir import meta_schedule as ms

        extracted, self.skipped = extract(
            mod, self.spec, fuse=fuse, warn=lambda line: self.say(f"[yellow]warning: {escape(line)}[/yellow]")
        )
        if not extracted:
            raise TvmsqzError("nothing to tune: the model has no kernel with a reduction (conv, dense, pool)")
        self.sizing = sizing_trials(trials, self.time_budget)
        self.batch = batch or default_batch(self.sizing, len(extracted))
        self.population = population or default_population(self.batch)
        # Local workers start now and import TVM while the runner starts and the first search
        # runs. A batch of 4 builds in ~1 s on one worker; a second would only cost start-up CPU.
        workers = 1 if self.batch <= MIN_BATCH else host_threads
        self.builder, self.runner = self.backend.tuning_builder_runner(
            self.spec, rpc, workers=workers, measure_threads=measure_threads, measure=self.measure
        )
        self.device_type = self.backend.device_type(self.spec)
        self.database = ms.database.MemoryDatabase()
        self.cost_model = ms.cost_model.XGBModel(num_tuning_cores=host_threads)
        logger = _ms_logger()
        for n, task in enumerate(extracted):
            task_mod = task.dispatched[0]
            self.tasks.append(TaskState(task.task_name, int(task.weight), kernel_flops(task_mod)))
            self.contexts.append(
                ms.TuneContext(
                    mod=task_mod,
                    target=self.spec.target,
                    space_generator=self.backend.space_generator(self.spec, task_mod, space),
                    search_strategy=ms.search_strategy.EvolutionarySearch(population_size=self.population),
                    task_name=task.task_name,
                    logger=logger,
                    rand_state=-1 if seed is None else seed + n,
                    num_threads=host_threads,
                )
            )
            workload = self.database.commit_workload(task_mod)
            self.workloads.append(workload)
            self.disk_index.append(self.folder.workload_index(workload))
            self.seen.append(set())
        self._warm_start()
        spent = sum(t.trials for t in self.tasks)
        self.allocator = Allocator(self.tasks, trials, self.batch)
        self.timings["setup"] = time.perf_counter() - self.start
        where = f"devices {rpc['key']} at {rpc['tracker']}" if rpc else f"this host, {measure_threads} threads"
        self.say(
            f"tuning {len(self.tasks)} kernels for {self.spec.name} on {where}: {self._limits(trials)}, "
            f"{self.batch} per search round (population {self.population}), XGBoost cost model, "
            f"{self.measure} timing; "
            f"database {self.folder.path}"
        )
        if self.skipped:
            self.say(f"[dim]not tuned (no reduction, one possible schedule): {', '.join(self.skipped)}[/dim]")
        if spent:
            self.say(
                f"resuming: {spent} trials already in the database, "
                f"{sum(t.covered for t in self.tasks)}/{len(self.tasks)} kernels have a record"
            )
            if spent >= trials and all(t.covered for t in self.tasks):
                self.say(
                    f"[yellow]nothing left to do: {spent} >= --trials {trials}; pass a larger --trials "
                    f"to tune further[/yellow]"
                )
        if trials < len(self.tasks):
            self.say(
                f"[yellow]--trials {trials} is below the {len(self.tasks)} kernels to tune: each still "
                f"gets one trial (an untuned kernel runs ~100x slower)[/yellow]"
            )
        shown = "inf" if trials >= UNBOUNDED_TRIALS else str(max(trials, len(self.tasks)))
        self.progress = Progress(self.log, self.tasks, shown, self.start, time_budget=self.time_budget)

    def _limits(self, trials: int) -> str:
        """The run's limits in words: "64 trials", "until 30 min have passed", or both."""
        parts = [] if trials >= UNBOUNDED_TRIALS else [f"{trials} trials"]
        if self.time_budget is not None:
            parts.append(
                f"{'or ' if parts else 'until '}{format_duration(self.time_budget)} (time budget, "
                f"{'whichever comes first' if parts else 'trials unbounded'})"
            )
        return " ".join(parts)

    def _warm_start(self) -> None:
        """Count earlier trials per task, set each task's best, train the cost model on them.

        The earlier records move from the folder's read-only database into the search's
        in-memory one, so the evolutionary search seeds from them as it would from the folder.
        """
        from tvm.s_tir.meta_schedule.database import TuningRecord
        from tvm.s_tir.meta_schedule.runner import RunnerResult

        earlier = self.folder.earlier
        self.folder.release_earlier()
        if earlier is None:
            return
        records = earlier.get_all_tuning_records()
        for i, workload in enumerate(self.workloads):
            if not earlier.has_workload(workload.mod):
                continue
            # Known, so this returns the loaded workload and writes nothing.
            known = earlier.commit_workload(workload.mod)
            for rec in records:
                if not rec.workload.same_as(known):
                    continue
                self.tasks[i].account(median_run_s(_floats(rec.run_secs)))
                self.database.commit_tuning_record(
                    TuningRecord(
                        trace=rec.trace,
                        workload=workload,
                        run_secs=rec.run_secs,
                        target=rec.target,
                        args_info=rec.args_info,
                    )
                )
            # The earlier records count as trials, but their order says nothing about recent
            # progress: the task's improvement curve starts from their best (converged means
            # `WINDOW` trials of this run without gain).
            self.tasks[i].curve = [self.tasks[i].best_s]
            top = self.database.get_top_k(workload, WARM_START_RECORDS)
            candidates, results = [], []
            for rec in top:
                try:
                    cand = rec.as_measure_candidate()
                except Exception:  # noqa: BLE001 - a record whose trace no longer replays
                    continue
                self._mark_seen(i, cand, rec.trace)
                candidates.append(cand)
                results.append(RunnerResult(_floats(rec.run_secs), None))
            if candidates:
                self.cost_model.update(self.contexts[i], candidates, results)

    # -- loop -----------------------------------------------------------------------------------

    def loop(self) -> None:
        """The batches, the shipped warm start first; `stopped` says why it ended."""
        if self.warm:
            self._reuse_shipped()
        while True:
            if self._out_of_time():
                return
            pick = self.allocator.next()
            if pick is None:
                done = all(t.exhausted or t.capped for t in self.tasks) and self.allocator.remaining > 0
                self.stopped = "exhausted" if done else "trials"
                if done:
                    self.say(
                        "every kernel's search space is used up (pools, means and transforms had their "
                        f"{MINOR_TRIALS} trials): tuning is done"
                    )
                return
            index, n = pick
            try:
                self._batch(index, n)
            except (KeyboardInterrupt, TvmsqzError):
                raise
            except Exception as exc:  # noqa: BLE001 - a failed batch is counted, logged and retried
                if self.stop.count >= 2:  # Ctrl-C inside a TVM callback surfaces as another error
                    raise KeyboardInterrupt from None
                # One kernel whose search or build machinery breaks must not end the whole run.
                task = self.tasks[index]
                task.exhausted = True
                task.reason = "failed (search or build error)"
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                self.say(
                    f"[red]{task.name}: tuning failed ({type(exc).__name__}: "
                    f"{lines[-1][:160] if lines else ''}); it keeps its best record so far[/red]"
                )
            if self.stop.count:
                raise Interrupted

    def _out_of_time(self) -> bool:
        """Whether the time budget is spent (then `stopped` says so); asked between batches only.

        The first batch always runs, so even a budget that setup used up leaves a database.
        """
        if self.deadline is None or time.perf_counter() < self.deadline or not any(t.new_trials for t in self.tasks):
            return False
        if self.stopped is None:
            self.stopped = "time budget"
            untuned = [t.name for t in self.tasks if not t.covered and not t.exhausted]
            self.say(
                f"[yellow]time budget of {format_duration(self.time_budget)} spent after "
                f"{sum(t.new_trials for t in self.tasks)} trials of this run: stopping at this batch boundary"
                + (f"; no record yet for {', '.join(untuned)} (tune longer with --resume)" if untuned else "")
                + "[/yellow]"
            )
        return True

    # -- warm start from the shipped database ---------------------------------------------------

    def _reuse_shipped(self) -> None:
        """Measure the shipped database's best records of each task again, on this host, first.

        Shipped times come from the machine that tuned them; the records that were fastest there
        are the likeliest to be fast here too, but only a measurement here says how fast. Each
        re-measured record is committed to the folder with this host's times (so it is a record
        of this database and a trial of this run), seeds the search and trains the cost model.
        """
        from ..database import database_problem, shipped_database
        from .shipped import best_records, per_task

        source, notes = shipped_database(self.spec)
        for note in notes:
            self.say(f"[yellow]warm start: {note}[/yellow]")
        self.warm_start = {"source": None if source is None else str(source), "records": 0, "tasks": 0, "per_task": []}
        if source is not None and source.resolve() == self.folder.path.resolve():
            source = None
        why = None if source is None else database_problem(source, self.spec)
        if source is None or why is not None:
            self.say(
                f"[dim]warm start: {'no shipped database for ' + self.spec.name if why is None else why}; "
                f"tuning cold[/dim]"
            )
            return
        self.progress.phase(f"reading the best shipped records from {source}")
        found = best_records(source, self.workloads, self.spec, per_task(self.sizing, len(self.tasks)))
        if not any(found):
            self.say(
                f"[dim]warm start: nothing to re-measure, {source} has no record for these "
                f"{len(self.tasks)} kernels; tuning cold[/dim]"
            )
            return
        self.say(
            f"warm start: re-measuring the best {sum(map(len, found))} shipped records of "
            f"{sum(1 for recs in found if recs)}/{len(self.tasks)} kernels from {source} on this host first"
        )
        # Heaviest first (as coverage goes): a time budget that ends the warm start early has
        # spent it where the model's time is.
        for index in sorted(range(len(found)), key=lambda i: -self.tasks[i].prior_s):
            shipped = found[index]
            if not shipped or self._out_of_time():
                continue
            try:
                self._remeasure(index, shipped)
            except (KeyboardInterrupt, TvmsqzError):
                raise
            except Exception as exc:  # noqa: BLE001 - the search can still tune this kernel
                if self.stop.count >= 2:
                    raise KeyboardInterrupt from None
                self.say(
                    f"[yellow]warm start: {self.tasks[index].name}: re-measuring failed "
                    f"({type(exc).__name__}); searching it cold[/yellow]"
                )
            if self.stop.count:
                raise Interrupted
        self._report_warm_start(source, found)

    def _report_warm_start(self, source: Path, found: list) -> None:
        """The warm start in the summary and on the log: per kernel and summed, here vs shipped."""
        # Re-measured kernels with a valid run here (those are the ones a comparison means something for).
        compared = [
            (self.tasks[i], recs)
            for i, recs in enumerate(found)
            if recs and self.tasks[i].new_trials and self.tasks[i].best_s is not None
        ]
        here_ms = sum(t.best_s * t.calls for t, _ in compared) * 1e3
        shipped_ms = sum(min(r.shipped_s for r in recs) * t.calls for t, recs in compared) * 1e3
        records = sum(row["records"] for row in self.warm_start["per_task"])
        self.warm_start.update(
            records=records,
            tasks=len(self.warm_start["per_task"]),
            shipped_ms=round(shipped_ms, 4),
            here_ms=round(here_ms, 4),
        )
        for row in self.warm_start["per_task"]:
            here = f"{row['here_us']:.1f} us here" if row["here_us"] is not None else "no valid run here"
            self.say(
                f"[dim]  {row['name']}: {here}, {row['shipped_us']:.1f} us shipped "
                f"({row['valid']}/{row['records']} records ran)[/dim]"
            )
        self.say(
            f"warm start: re-measured {records} shipped records of {self.warm_start['tasks']}/"
            f"{len(self.tasks)} kernels from {source} on this host: best {here_ms:.3f} ms here vs "
            f"{shipped_ms:.3f} ms shipped (sum of best x calls over the {len(compared)} that ran)"
            + ("" if self.stopped else "; searching from them")
        )

    def _remeasure(self, index: int, shipped: list) -> None:
        """Build, run and commit one task's shipped records (their traces, this host's times)."""
        task = self.tasks[index]
        batch_start = time.perf_counter()
        candidates, traces, times = [], [], []
        for item in shipped:
            try:
                cand = item.record.as_measure_candidate()
            except Exception:  # noqa: BLE001 - a trace that no longer replays on this workload
                continue
            self._mark_seen(index, cand, item.record.trace)  # the search must not propose it again
            candidates.append(cand)
            traces.append(item.record.trace)
            times.append(item.shipped_s)
        if not candidates:
            return
        task.reason = "warm start"  # its trials count under it
        run_s = self._measure_and_commit(index, candidates, traces=traces)
        valid = [s for s in run_s if s is not None]
        self.warm_start["per_task"].append(
            {
                "name": task.name,
                "records": len(run_s),
                "valid": len(valid),
                "shipped_us": round(min(times) * 1e6, 3),
                "here_us": round(min(valid) * 1e6, 3) if valid else None,
            }
        )
        self._batch_done(index, len(candidates), len(valid), batch_start)

    # -- search -----------------------------------------------------------------------------------

    def _pretune(self, index: int) -> None:
        if index in self.pretuned:
            return
        from ..quiet import quiet_stderr

        ctx = self.contexts[index]
        with quiet_stderr():  # C++ warns 'Unknown schedule rule "meta_schedule.pool_max"' (harmless)
            spaces = ctx.generate_design_space()
        ctx.pre_tuning(
            max_trials=1 << 30,
            num_trials_per_iter=self.batch,
            design_spaces=spaces,
            database=self.database,
            cost_model=self.cost_model,
        )
        self.pretuned.add(index)

    def _new_candidates(self, index: int, n: int) -> list | None:
        """Up to `n` candidates never measured for this task (None: the search space is used up)."""
        from tvm_ffi import structural_hash

        self._pretune(index)
        proposed = self.contexts[index].generate_measure_candidates()
        if proposed is None:
            return None
        candidates, seen = [], self.seen[index]
        for cand in proposed:
            keys = (structural_hash(cand.sch.mod), trace_key(cand.sch.trace))
            if not seen.intersection(keys):  # not measured in this run, an earlier one or the warm start
                seen.update(keys)
                candidates.append(cand)
            if len(candidates) == n:
                break
        return candidates

    def _mark_seen(self, index: int, cand, trace) -> None:
        """Remember a measured schedule by module hash and by trace (see `records.trace_key`)."""
        from tvm_ffi import structural_hash

        self.seen[index].update((structural_hash(cand.sch.mod), trace_key(trace)))

    def _measure(self, candidates: list, name: str) -> tuple[list, list]:
        """Build and run `candidates`: (builder results, runner results), one each per candidate."""
        from tvm.s_tir.meta_schedule.builder import BuilderInput
        from tvm.s_tir.meta_schedule.runner import RunnerInput, RunnerResult

        t_build = time.perf_counter()
        inputs = [BuilderInput(c.sch.mod, self.spec.target) for c in candidates]
        build = getattr(self.builder, "build_batch", None) or self.builder.build
        built = build(inputs)
        t_run = time.perf_counter()
        self.timings["build"] += t_run - t_build

        self.progress.phase(f"measuring {len(candidates)} candidates of {name}")
        to_run = [
            RunnerInput(b.artifact_path, self.device_type, c.args_info)
            for c, b in zip(candidates, built)
            if b.error_msg is None
        ]
        futures = iter(self.runner.run(to_run) if to_run else [])
        results = [
            RunnerResult(None, b.error_msg) if b.error_msg is not None else next(futures).result() for b in built
        ]
        self.timings["run"] += time.perf_counter() - t_run
        return built, results

    def _batch(self, index: int, n: int) -> None:
        task = self.tasks[index]
        batch_start = time.perf_counter()
        self.progress.phase(f"searching {task.name}")
        candidates = self._new_candidates(index, n)
        self.timings["search"] += time.perf_counter() - batch_start
        if candidates is None:
            task.exhausted = True
            task.reason = "search space exhausted"
            self.say(f"[dim]{task.name}: search space exhausted after {task.trials} trials[/dim]")
            return
        if not candidates:
            task.empty_batches += 1
            if task.empty_batches >= MAX_EMPTY_BATCHES:
                task.exhausted = True
                task.reason = f"exhausted (no new candidate in {MAX_EMPTY_BATCHES} searches)"
                self.say(f"[dim]{task.name}: no new candidates, done after {task.trials} trials[/dim]")
            return
        task.empty_batches = 0
        run_s = self._measure_and_commit(index, candidates, notify=True)
        self._batch_done(index, len(candidates), sum(s is not None for s in run_s), batch_start)

    def _measure_and_commit(
        self, index: int, candidates: list, *, notify: bool = False, traces: list | None = None
    ) -> list[float | None]:
        """Build and run one task's candidates, commit each record, learn; run time per record kept.

        `notify`: tell the task's search strategy (only for candidates it proposed). `traces`:
        the traces to record instead of the candidates' own (a re-measured shipped record keeps
        its trace exactly as shipped).
        """
        from tvm.s_tir.meta_schedule.database import TuningRecord

        task, ctx = self.tasks[index], self.contexts[index]
        self.progress.phase(f"building {len(candidates)} candidates of {task.name}")
        built, results = self._measure(candidates, task.name)
        if notify:
            ctx.notify_runner_results(candidates, results)
        stopping = self.stop.count > 0
        kept: list[float | None] = []
        learn_c, learn_r = [], []
        for n, (cand, b, result) in enumerate(zip(candidates, built, results)):
            _remove_artifact(self.builder, b.artifact_path)
            run_s = _run_secs(result)
            if stopping and run_s is None:
                continue  # a failure after Ctrl-C may be the signal's doing: do not record it
            record = TuningRecord(
                trace=cand.sch.trace if traces is None else traces[n],
                workload=self.workloads[index],
                run_secs=_floats(result.run_secs) if run_s is not None else [1e10],  # 1e10: failed
                target=self.spec.target,
                args_info=cand.args_info,
            )
            # On disk first (TvmsqzError when it cannot be written): only then does it count.
            self.folder.commit_record(self.disk_index[index], record)
            self.database.commit_tuning_record(record)
            task.record(run_s)
            kept.append(run_s)
            if b.error_msg is None:
                learn_c.append(cand)
                learn_r.append(result)
        t_learn = time.perf_counter()
        if learn_c:
            self.cost_model.update(ctx, learn_c, learn_r)
        self.timings["learn"] += time.perf_counter() - t_learn
        self._check_failures(task, built, results, sum(s is not None for s in kept))
        return kept

    def _batch_done(self, index: int, n: int, n_valid: int, batch_start: float) -> None:
        """The tuning curve's point and the progress line after a batch."""
        spent = sum(t.trials for t in self.tasks)
        self.history.append([spent, estimated_model_ms(self.tasks), round(self.wall(), 2)])
        self.progress.batch_done(index, n, n_valid, time.perf_counter() - batch_start)

    def _check_failures(self, task: TaskState, built: list, results: list, n_valid: int) -> None:
        """Give up a task that never measures; stop when every RPC device is gone."""
        if n_valid == 0 and not task.covered:
            task.failed_batches += 1
            if task.failed_batches >= MAX_FAILED_BATCHES:
                task.exhausted = True
                task.reason = "failed (no valid measurement)"
                reason = next((r.error_msg for r in results if r.error_msg), "no run time")
                self.say(
                    f"[red]{task.name}: {MAX_FAILED_BATCHES} batches without one valid measurement; "
                    f"it stays untuned ({str(reason).strip().splitlines()[0][:120]})[/red]"
                )
        else:
            task.failed_batches = 0
        ran = [r for b, r in zip(built, results) if b.error_msg is None]
        if self.rpc is not None and ran and all(_run_secs(r) is None for r in ran):
            # Every measurement failed: fine if one device dropped out, fatal if none is left.
            from ..device import require_devices

            require_devices(self.rpc["tracker"], self.rpc["key"])  # TvmsqzError when none is left

    # -- end ------------------------------------------------------------------------------------

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.start

    def close(self) -> None:
        """Stop the UI, the search contexts and the workers; restore the SIGINT handler."""
        if self.progress is not None:
            self.progress.stop()
        for i in sorted(self.pretuned):
            try:
                self.contexts[i].post_tuning()
            except Exception:  # noqa: BLE001
                pass
        if self.builder is not None and hasattr(self.builder, "shutdown"):
            try:
                self.builder.shutdown()
            except Exception:  # noqa: BLE001
                pass
        pool = getattr(self.runner, "pool", None) if self.runner is not None else None
        if pool is not None:
            try:
                pool.shutdown(wait=False)
            except Exception:  # noqa: BLE001
                pass
        self.stop.__exit__(None, None, None)

    def summary(self) -> dict[str, Any]:
        """What `tune_model` returns and `tuning_summary.json` holds; `records` are those on disk."""
        new_trials = sum(t.new_trials for t in self.tasks)
        seconds = time.perf_counter() - self.start
        per_task = [
            {
                "name": t.name,
                "calls": t.calls,
                "flops": t.flops,
                "trials": t.trials,
                "new_trials": t.new_trials,
                "minor": t.minor,
                "allocation": dict(t.picks),
                "why": t.reason,
                "valid": t.valid,
                "best_us": None if t.best_s is None else round(t.best_s * 1e6, 3),
                "gflops": None if t.best_s is None or not t.flops else round(t.flops / t.best_s / 1e9, 2),
            }
            for t in self.tasks
        ]
        return {
            "target": self.spec.name,
            "work_dir": str(self.folder.path),
            "records": self.folder.records,
            "tasks": len(self.tasks),
            "tuned_tasks": sum(t.covered for t in self.tasks),
            "untuned": [t.name for t in self.tasks if not t.covered],
            "skipped": self.skipped,
            "trials": sum(t.trials for t in self.tasks),
            "new_trials": new_trials,
            "budget": self.allocator.budget if self.allocator and self.allocator.budget < UNBOUNDED_TRIALS else None,
            "time_budget_s": self.time_budget,
            "stopped": self.stopped,
            "warm_start": self.warm_start,
            "batch": self.batch,
            "population": self.population,
            "measure": self.measure,
            "seconds": seconds,
            "seconds_total": self.wall(),
            "seconds_per_trial": seconds / new_trials if new_trials else None,
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "best_estimated_ms": estimated_model_ms(self.tasks),
            "history": [tuple(h) for h in self.history],
            "per_task": per_task,
            "interrupted": self.interrupted,
        }
