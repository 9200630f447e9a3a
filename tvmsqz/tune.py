"""MetaSchedule tuning with the XGBoost cost model: task selection, trial allocation, resume.

Flow (`tune_model`):

1. Tasks come from `build.prepare(mod, spec, fuse=...)` under the target, so each tuned workload
   is exactly the PrimFunc that `build.compile_module` later looks up in the database.
   Kernels without a reduction block (reshape, concatenate, copies, elementwise) are skipped:
   their design space has a single point, so tuning them only wastes trials; they run as
   TVM legalized them. Convolutions, dense layers and pooling/mean reductions are tuned.
2. Every task has a MetaSchedule `TuneContext` (post-order-apply space, evolutionary search);
   one XGBoost cost model is shared by all tasks. The loop below replaces MetaSchedule's task
   scheduler so that trials go where model time is (see `Allocator`), and drives search,
   builder, runner, database and cost model from Python (a Ctrl-C raised inside a Python
   callback that C++ called comes back as `RuntimeError('')`, not KeyboardInterrupt).
3. Each measured candidate is committed to a `JSONDatabase` in `work_dir` right away (one line
   appended per record), so an interrupted or killed run leaves a valid database; `resume=True`
   repairs a truncated last line, counts the trials already spent, trains the cost model on the
   earlier records and seeds the search with them.

Ctrl-C: the first one finishes the current batch, saves it and stops; a second one stops at once.
Either way the database stays valid and `tune_model` raises `TuningInterrupted` (a TvmsqzError:
one line and exit code 2 through the CLI) whose message says how to resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from .database import RECORD_FILE, WORKLOAD_FILE, check_database
from .errors import TvmsqzError
from .targets import TargetSpec, host_cores

SUMMARY_FILE = "tuning_summary.json"
#: Largest batch of candidates measured per search round (the search costs the same for 4 or 32).
MAX_BATCH = 32
MIN_BATCH = 4
#: Batches in a row without one valid measurement before a task is given up as failed.
MAX_FAILED_BATCHES = 3
#: Batches in a row that produce no new candidate before a task counts as exhausted.
MAX_EMPTY_BATCHES = 3
#: Assumed throughput (FLOP/s) for the prior of a task that has no measurement yet.
PRIOR_FLOPS_PER_S = 50e9
#: Records per task used to warm-start the cost model on `--resume`.
WARM_START_RECORDS = 256


# ----------------------------------------------------------------------------- trial allocation


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
        """Account one measured candidate (`run_s` None for a failed build or run)."""
        self.trials += 1
        self.new_trials += 1
        if run_s is not None and math.isfinite(run_s) and run_s < 1e9:
            self.valid += 1
            if self.best_s is None or run_s < self.best_s:
                self.best_s = run_s


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


# ----------------------------------------------------------------------------- database folder


def repair_tail(path: Path) -> str | None:
    """Make a JSON-lines file appendable again after a killed writer; returns what was done.

    A writer killed mid-line leaves a last line without its newline. If that line is valid JSON
    only the newline is missing (added); otherwise the partial line is dropped. A complete bad
    line (one that ends with a newline) is corruption, not truncation: it is left for
    `database.check_database` to report.
    """
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    head, sep, last = data.rpartition(b"\n")
    try:
        json.loads(last)
    except ValueError:
        with open(path, "r+b") as handle:
            handle.truncate(len(head) + len(sep))
        return f"dropped a truncated last line ({len(last)} bytes) from {path.name}"
    with open(path, "ab") as handle:
        handle.write(b"\n")
    return f"added the missing final newline to {path.name}"


def count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def open_work_dir(work_dir: Path, spec: TargetSpec, resume: bool) -> dict:
    """Check the database folder before any slow work: refuse, repair or validate it."""
    if work_dir.exists() and not work_dir.is_dir():
        raise TvmsqzError(f"database folder {work_dir} is a file; pass -o DIR")
    records = count_lines(work_dir / RECORD_FILE)
    if records and not resume:
        raise TvmsqzError(
            f"{work_dir} already holds a tuning database ({records} records); pass --resume to "
            f"continue it, or choose another -o folder")
    repairs = [r for r in (repair_tail(work_dir / WORKLOAD_FILE), repair_tail(work_dir / RECORD_FILE)) if r]
    if (work_dir / WORKLOAD_FILE).is_file() and (work_dir / RECORD_FILE).is_file():
        records = check_database(work_dir, spec)  # TvmsqzError: corrupt, or another target
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TvmsqzError(f"cannot create database folder {work_dir}: {exc.strerror}") from None
    if not os.access(work_dir, os.W_OK):
        raise TvmsqzError(f"database folder {work_dir} is not writable")
    return {"records": records, "repairs": repairs}


def _read_summary(work_dir: Path) -> dict:
    try:
        data = json.loads((work_dir / SUMMARY_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_summary(work_dir: Path, summary: dict) -> None:
    tmp = work_dir / (SUMMARY_FILE + ".tmp")
    try:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(tmp, work_dir / SUMMARY_FILE)
    except OSError:
        pass


# ----------------------------------------------------------------------------- tasks


def worth_tuning(mod) -> bool:
    """A kernel is worth tuning when it has a reduction block (conv, dense, pool, mean).

    Reshape, concatenate and other copies have none: their search space is one schedule.
    """
    from tvm.s_tir.analysis import find_anchor_sblock

    try:
        return find_anchor_sblock(mod) is not None
    except Exception:  # noqa: BLE001 - an unusual kernel: let MetaSchedule try it
        return True


def extract(mod, spec: TargetSpec, *, fuse: bool | None = None):
    """(tasks to tune, names skipped) for `mod` as `compile_module` will see it."""
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    from .build import prepare

    prepared = prepare(mod, spec, fuse=fuse)
    tasks, skipped = [], []
    for task in extract_tasks(prepared, spec.target):
        (tasks if worth_tuning(task.dispatched[0]) else skipped).append(task)
    return tasks, sorted(t.task_name for t in skipped)


def _flops(mod) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except Exception:  # noqa: BLE001
        return 0.0


# ----------------------------------------------------------------------------- RPC


def _rpc_settings(spec: TargetSpec, tracker: str | None, key: str | None) -> dict | None:
    rpc = spec.data.get("rpc", {}) or {}
    if tracker is None:
        if rpc.get("required_for_tuning"):
            raise TvmsqzError(
                f"tuning for {spec.name} needs a device: pass --rpc-tracker HOST:PORT --rpc-key KEY "
                "(start emulated devices with `tvmsqz device emulate start`)")
        if key is not None:
            raise TvmsqzError("--rpc-key needs --rpc-tracker HOST:PORT")
        return None
    key = key or rpc.get("default_key")
    if not key:
        raise TvmsqzError("--rpc-tracker needs --rpc-key KEY (the key the devices registered with)")
    return {"tracker": tracker, "key": key}


# ----------------------------------------------------------------------------- Ctrl-C


class _StopRequest:
    """First SIGINT: finish the batch, save it, stop. Second SIGINT: KeyboardInterrupt now."""

    def __init__(self, on_first) -> None:
        self.count = 0
        self._on_first = on_first
        self._previous = None
        self._installed = False

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            self._on_first()
            return
        raise KeyboardInterrupt


class _Interrupted(Exception):
    pass


class TuningInterrupted(TvmsqzError):
    """Tuning stopped by Ctrl-C; the database is valid and `--resume` continues it.

    A `TvmsqzError` (one line, exit 2 through the CLI) rather than `KeyboardInterrupt`: typer
    turns a KeyboardInterrupt into a return value that `cli.main` does not pass to `sys.exit`,
    so the process would exit 0 as if tuning had finished.
    """

    def __init__(self, message: str, summary: dict) -> None:
        super().__init__(message)
        self.summary = summary


# ----------------------------------------------------------------------------- progress


class _Progress:
    """Progress on a rich console: a live table on a terminal, one line per batch otherwise."""

    def __init__(self, console, tasks: list[TaskState], budget: int, start: float) -> None:
        self.console = console
        self.tasks = tasks
        self.budget = budget
        self.start = start
        self.status = ""
        self.live = None
        if console is not None and console.is_terminal:
            from rich.live import Live

            self.live = Live(self._render(), console=console, refresh_per_second=2, transient=False)
            self.live.start()

    def note(self, text: str) -> None:
        if self.console is None:
            return
        if self.live is not None:
            self.live.console.print(text, highlight=False)
        else:
            self.console.print(text, highlight=False, soft_wrap=True)

    def phase(self, text: str) -> None:
        self.status = text
        if self.live is not None:
            self.live.update(self._render(), refresh=True)

    def batch_done(self, index: int, n: int, n_valid: int, seconds: float) -> None:
        if self.console is None:
            return
        if self.live is not None:
            self.status = ""
            self.live.update(self._render(), refresh=True)
            return
        task = self.tasks[index]
        spent = sum(t.trials for t in self.tasks)
        est = estimated_model_ms(self.tasks)
        best = f"{task.best_s * 1e6:9.1f} us" if task.best_s is not None else "   no valid"
        self.console.print(
            f"[{spent:>5}/{self.budget}] {task.name:<38.38} +{n:<2} ({n_valid} ok) best {best}"
            f"  model est {'%.3f ms' % est if est is not None else '   --   '}"
            f"  {seconds:5.1f} s  {time.perf_counter() - self.start:6.0f} s",
            highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.live is not None:
            self.status = ""
            self.live.update(self._render(), refresh=True)
            self.live.stop()
            self.live = None
        elif self.console is not None and any(t.trials for t in self.tasks):
            self.status = ""
            width = self.console.width  # not a terminal: 80 columns would cut kernel names
            self.console.width = max(width, 110)
            try:
                self.console.print(self._render(), highlight=False)
            finally:
                self.console.width = width

    def _render(self):
        from rich.console import Group
        from rich.table import Table

        est = estimated_model_ms(self.tasks)
        total = sum(t.model_s for t in self.tasks if t.covered) or 1.0
        table = Table(box=None, pad_edge=False, show_edge=False)
        for col, justify in (("kernel", "left"), ("calls", "right"), ("MFLOP", "right"),
                             ("trials", "right"), ("best us", "right"), ("GFLOP/s", "right"),
                             ("time share", "right")):
            table.add_column(col, justify=justify, no_wrap=True)
        for task in self.tasks:
            if task.best_s is not None:
                best = f"{task.best_s * 1e6:.1f}"
                speed = f"{task.flops / task.best_s / 1e9:.1f}" if task.flops else "-"
                share = f"{100 * task.model_s / total:.1f}%"
            else:
                best = "failed" if task.exhausted else "-"
                speed = share = "-"
            table.add_row(task.name, str(task.calls), f"{task.flops / 1e6:.1f}", str(task.trials), best, speed, share)
        spent = sum(t.trials for t in self.tasks)
        elapsed = time.perf_counter() - self.start
        line = (f"trials {spent}/{self.budget}  |  estimated model latency "
                f"{'%.3f ms' % est if est is not None else '--'}  |  {elapsed:.0f} s")
        if self.status:
            line += f"  |  {self.status}"
        return Group(table, line)


# ----------------------------------------------------------------------------- tuning


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


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    median = values[len(values) // 2]
    return median if 0 < median < 1e9 else None


def _run_secs(result) -> float | None:
    """Median run time in seconds of a runner result, None when it failed."""
    if result.error_msg is not None:
        return None
    return _median(_floats(result.run_secs))


def _remove_artifact(builder, path: str | None) -> None:
    if not path:
        return
    remove = getattr(builder, "remove_artifact", None)
    if remove is not None:
        remove(path)
    else:  # what MetaSchedule's RemoveBuildArtifact does
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def tune_model(mod, spec: TargetSpec, *, trials: int, work_dir: Path, resume: bool = False,
               fuse: bool | None = None, rpc_tracker: str | None = None, rpc_key: str | None = None,
               log=None, batch: int | None = None, population: int | None = None,
               seed: int | None = None) -> dict:
    """Tune every worthwhile kernel of `mod` for `spec`; records go to `work_dir`.

    `trials` is the total number of measurements for the model, those of earlier sessions in
    `work_dir` included (so `resume=True` with the same number finishes an interrupted run).
    `log` is a rich Console for progress (None: silent). Returns a summary dict: `records`,
    `tasks`, `tuned_tasks`, `skipped`, `untuned`, `trials`, `new_trials`, `seconds`,
    `seconds_per_trial`, `best_estimated_ms`, `history` [(trials, estimated_ms, wall_s)],
    `per_task`, `interrupted`.
    """
    start = time.perf_counter()
    work_dir = Path(work_dir)
    if trials < 1:
        raise TvmsqzError("--trials must be at least 1")
    if spec.tvm_config is None:
        raise TvmsqzError(f"target {spec.name} does not tune with MetaSchedule")
    rpc = _rpc_settings(spec, rpc_tracker, rpc_key)
    if rpc is not None:
        from .device import check_tracker

        check_tracker(rpc["tracker"])  # TvmsqzError before any slow work when it is down
    opened = open_work_dir(work_dir, spec, resume)

    if batch is None and os.environ.get("TVMSQZ_TUNE_BATCH"):
        try:
            batch = max(1, int(os.environ["TVMSQZ_TUNE_BATCH"]))
        except ValueError:
            raise TvmsqzError(f"TVMSQZ_TUNE_BATCH={os.environ['TVMSQZ_TUNE_BATCH']!r} is not a number") from None

    previous = _read_summary(work_dir) if resume else {}
    state = _Session(spec, work_dir, log, start, previous)
    for repair in opened["repairs"]:
        state.say(f"[yellow]repaired database: {repair}[/yellow]")
    try:
        state.setup(mod, fuse=fuse, rpc=rpc, trials=trials, batch=batch, population=population, seed=seed)
        state.loop()
    except (_Interrupted, KeyboardInterrupt):
        state.interrupted = True
    finally:
        state.close()
        if state.allocator is not None and work_dir.is_dir():
            _write_summary(work_dir, state.summary())
    summary = state.summary()
    if state.interrupted:
        raise TuningInterrupted(
            f"tuning interrupted after {summary['trials']} trials; the database in {work_dir} is valid "
            f"({summary['records']} records): continue with the same command plus --resume", summary)
    return summary


def tune(mod, target: TargetSpec, trials: int, work_dir: Path, **kwargs) -> dict:
    """`tune_model` with positional arguments (the name docs/design.md uses)."""
    return tune_model(mod, target, trials=trials, work_dir=work_dir, **kwargs)


class _Session:
    """One tuning run: the MetaSchedule objects, the task states and the loop."""

    def __init__(self, spec: TargetSpec, work_dir: Path, log, start: float, previous: dict) -> None:
        self.spec = spec
        self.work_dir = work_dir
        self.log = log
        self.start = start
        self.previous = previous
        self.interrupted = False
        self.tasks: list[TaskState] = []
        self.contexts: list = []
        self.workloads: list = []
        self.seen: list[set] = []
        self.pretuned: set[int] = set()
        self.skipped: list[str] = []
        self.history: list[list] = [list(h) for h in previous.get("history", []) if isinstance(h, list)]
        self.wall_offset = float(previous.get("seconds_total", 0.0) or 0.0)
        self.builder = self.runner = self.database = self.cost_model = None
        self.progress: _Progress | None = None
        self.allocator: Allocator | None = None
        self.rpc = None
        self.batch = 0
        self.population = 0
        self.stop = _StopRequest(self._on_first_interrupt)
        self.timings = {"setup": 0.0, "search": 0.0, "build": 0.0, "run": 0.0, "learn": 0.0}

    # -- output ---------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.note(text)
        elif self.log is not None:
            self.log.print(text, highlight=False, soft_wrap=True)

    def _on_first_interrupt(self) -> None:
        self.say("[yellow]stopping after this batch (its records are saved); Ctrl-C again to stop now[/yellow]")

    # -- setup ----------------------------------------------------------------------------------

    def setup(self, mod, *, fuse: bool | None, rpc: dict | None, trials: int, batch: int | None,
              population: int | None, seed: int | None) -> None:
        from .builder import PersistentBuilder, import_tensor_intrin, make_local_runner

        self.stop.__enter__()
        host_threads = host_cores()
        measure_threads = int(self.spec.tvm_config.get("num-cores") or host_threads)
        self.rpc = rpc
        import_tensor_intrin()

        from tvm.s_tir import meta_schedule as ms

        extracted, self.skipped = extract(mod, self.spec, fuse=fuse)
        if not extracted:
            raise TvmsqzError("nothing to tune: the model has no kernel with a reduction (conv, dense, pool)")
        self.batch = batch or default_batch(trials, len(extracted))
        self.population = population or default_population(self.batch)
        if rpc is None:
            # Workers start now and import TVM while the runner starts and the first search runs.
            # A batch of 4 builds in ~1 s on one worker; a second would only cost start-up CPU.
            workers = 1 if self.batch <= MIN_BATCH else host_threads
            self.builder = PersistentBuilder(max_workers=workers, timeout_sec=60.0)
            self.builder.warm_up()
            self.runner = make_local_runner(measure_threads)
        else:
            from .device import make_rpc_runner_builder

            self.builder, self.runner = make_rpc_runner_builder(rpc["tracker"], rpc["key"], self.spec.cc)
        self.database = ms.database.JSONDatabase(
            path_workload=str(self.work_dir / WORKLOAD_FILE),
            path_tuning_record=str(self.work_dir / RECORD_FILE), allow_missing=True)
        self.cost_model = ms.cost_model.XGBModel(num_tuning_cores=host_threads)
        logger = _ms_logger()
        for n, task in enumerate(extracted):
            task_mod = task.dispatched[0]
            self.tasks.append(TaskState(task.task_name, int(task.weight), _flops(task_mod)))
            self.contexts.append(ms.TuneContext(
                mod=task_mod, target=self.spec.target, space_generator="post-order-apply",
                search_strategy=ms.search_strategy.EvolutionarySearch(population_size=self.population),
                task_name=task.task_name, logger=logger,
                rand_state=-1 if seed is None else seed + n, num_threads=host_threads))
            self.workloads.append(self.database.commit_workload(task_mod))
            self.seen.append(set())
        self._warm_start()
        spent = sum(t.trials for t in self.tasks)
        self.allocator = Allocator(self.tasks, trials, self.batch)
        self.timings["setup"] = time.perf_counter() - self.start
        where = f"devices {rpc['key']} at {rpc['tracker']}" if rpc else f"this host, {measure_threads} threads"
        self.say(f"tuning {len(self.tasks)} kernels for {self.spec.name} on {where}: {trials} trials, "
                 f"{self.batch} per search round (population {self.population}), XGBoost cost model; "
                 f"database {self.work_dir}")
        if self.skipped:
            self.say(f"[dim]not tuned (no reduction, one possible schedule): {', '.join(self.skipped)}[/dim]")
        if spent:
            self.say(f"resuming: {spent} trials already in the database, "
                     f"{sum(t.covered for t in self.tasks)}/{len(self.tasks)} kernels have a record")
            if spent >= trials and all(t.covered for t in self.tasks):
                self.say(f"[yellow]nothing left to do: {spent} >= --trials {trials}; pass a larger --trials "
                         f"to tune further[/yellow]")
        if trials < len(self.tasks):
            self.say(f"[yellow]--trials {trials} is below the {len(self.tasks)} kernels to tune: each still "
                     f"gets one trial (an untuned kernel runs ~100x slower)[/yellow]")
        self.progress = _Progress(self.log, self.tasks, max(trials, len(self.tasks)), self.start)

    def _warm_start(self) -> None:
        """Count earlier trials per task, set each task's best, train the cost model on them."""
        from tvm_ffi import structural_hash
        from tvm.s_tir.meta_schedule.runner import RunnerResult

        records = self.database.get_all_tuning_records()
        if not records:
            return
        for i, workload in enumerate(self.workloads):
            mine = [r for r in records if r.workload.same_as(workload)]
            for rec in mine:
                self.tasks[i].trials += 1
                value = _median(_floats(rec.run_secs))
                if value is not None:
                    self.tasks[i].valid += 1
                    if self.tasks[i].best_s is None or value < self.tasks[i].best_s:
                        self.tasks[i].best_s = value
            self.tasks[i].new_trials = 0
            top = self.database.get_top_k(workload, WARM_START_RECORDS)
            candidates, results = [], []
            for rec in top:
                try:
                    cand = rec.as_measure_candidate()
                except Exception:  # noqa: BLE001 - a record whose trace no longer replays
                    continue
                self.seen[i].add(structural_hash(cand.sch.mod))
                candidates.append(cand)
                results.append(RunnerResult(_floats(rec.run_secs), None))
            if candidates:
                self.cost_model.update(self.contexts[i], candidates, results)

    # -- loop -----------------------------------------------------------------------------------

    def loop(self) -> None:
        while True:
            pick = self.allocator.next()
            if pick is None:
                return
            index, n = pick
            try:
                self._batch(index, n)
            except (KeyboardInterrupt, TvmsqzError):
                raise
            except Exception as exc:
                if self.stop.count >= 2:  # Ctrl-C inside a TVM callback surfaces as another error
                    raise KeyboardInterrupt from None
                # One kernel whose search or build machinery breaks must not end the whole run.
                task = self.tasks[index]
                task.exhausted = True
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                self.say(f"[red]{task.name}: tuning failed ({type(exc).__name__}: "
                         f"{lines[-1][:160] if lines else ''}); it keeps its best record so far[/red]")
            if self.stop.count:
                raise _Interrupted

    def _pretune(self, index: int) -> None:
        if index in self.pretuned:
            return
        from .quiet import quiet_stderr

        ctx = self.contexts[index]
        with quiet_stderr():  # C++ warns 'Unknown schedule rule "meta_schedule.pool_max"' (harmless)
            spaces = ctx.generate_design_space()
        ctx.pre_tuning(max_trials=1 << 30, num_trials_per_iter=self.batch, design_spaces=spaces,
                       database=self.database, cost_model=self.cost_model)
        self.pretuned.add(index)

    def _batch(self, index: int, n: int) -> None:
        from tvm_ffi import structural_hash
        from tvm.s_tir.meta_schedule.builder import BuilderInput
        from tvm.s_tir.meta_schedule.database import TuningRecord
        from tvm.s_tir.meta_schedule.runner import RunnerInput, RunnerResult

        task, ctx = self.tasks[index], self.contexts[index]
        batch_start = time.perf_counter()
        self.progress.phase(f"searching {task.name}")
        self._pretune(index)
        proposed = ctx.generate_measure_candidates()
        if proposed is None:
            task.exhausted = True
            self.say(f"[dim]{task.name}: search space exhausted after {task.trials} trials[/dim]")
            return
        candidates = []
        for cand in proposed:
            key = structural_hash(cand.sch.mod)
            if key not in self.seen[index]:  # not measured in an earlier session either
                self.seen[index].add(key)
                candidates.append(cand)
            if len(candidates) == n:
                break
        t_search = time.perf_counter()
        self.timings["search"] += t_search - batch_start
        if not candidates:
            task.empty_batches += 1
            if task.empty_batches >= MAX_EMPTY_BATCHES:
                task.exhausted = True
                self.say(f"[dim]{task.name}: no new candidates, done after {task.trials} trials[/dim]")
            return
        task.empty_batches = 0

        self.progress.phase(f"building {len(candidates)} candidates of {task.name}")
        inputs = [BuilderInput(c.sch.mod, self.spec.target) for c in candidates]
        build = getattr(self.builder, "build_batch", None) or self.builder.build
        built = build(inputs)
        t_build = time.perf_counter()
        self.timings["build"] += t_build - t_search

        self.progress.phase(f"measuring {len(candidates)} candidates of {task.name}")
        device_type = "cpu" if self.spec.target.kind.name == "llvm" else self.spec.target.kind.name
        to_run = [RunnerInput(b.artifact_path, device_type, c.args_info)
                  for c, b in zip(candidates, built) if b.error_msg is None]
        futures = iter(self.runner.run(to_run) if to_run else [])
        results = []
        for b in built:
            if b.error_msg is not None:
                results.append(RunnerResult(None, b.error_msg))
            else:
                results.append(next(futures).result())
        self.timings["run"] += time.perf_counter() - t_build

        ctx.notify_runner_results(candidates, results)
        stopping = self.stop.count > 0
        n_valid = 0
        learn_c, learn_r = [], []
        for cand, b, result in zip(candidates, built, results):
            _remove_artifact(self.builder, b.artifact_path)
            run_s = _run_secs(result)
            if stopping and run_s is None:
                continue  # a failure after Ctrl-C may be the signal's doing: do not record it
            n_valid += run_s is not None
            self.database.commit_tuning_record(TuningRecord(
                trace=cand.sch.trace, workload=self.workloads[index],
                run_secs=_floats(result.run_secs) if run_s is not None else [1e10],  # 1e10: failed
                target=self.spec.target, args_info=cand.args_info))
            task.record(run_s)
            if b.error_msg is None:
                learn_c.append(cand)
                learn_r.append(result)
        t_learn = time.perf_counter()
        if learn_c:
            self.cost_model.update(ctx, learn_c, learn_r)
        self.timings["learn"] += time.perf_counter() - t_learn
        if n_valid == 0 and not task.covered:
            task.failed_batches += 1
            if task.failed_batches >= MAX_FAILED_BATCHES:
                task.exhausted = True
                reason = next((r.error_msg for r in results if r.error_msg), "no run time")
                self.say(f"[red]{task.name}: {MAX_FAILED_BATCHES} batches without one valid measurement; "
                         f"it stays untuned ({str(reason).strip().splitlines()[0][:120]})[/red]")
        else:
            task.failed_batches = 0
        ran = [r for b, r in zip(built, results) if b.error_msg is None]
        if self.rpc is not None and ran and all(_run_secs(r) is None for r in ran):
            # Every measurement failed: fine if one device dropped out, fatal if none is left.
            from .device import require_devices

            require_devices(self.rpc["tracker"], self.rpc["key"])  # TvmsqzError when none is left
        spent = sum(t.trials for t in self.tasks)
        self.history.append([spent, estimated_model_ms(self.tasks), round(self.wall(), 2)])
        self.progress.batch_done(index, len(candidates), n_valid, time.perf_counter() - batch_start)

    # -- end ------------------------------------------------------------------------------------

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.start

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        for i in sorted(self.pretuned):
            try:
                self.contexts[i].post_tuning()
            except Exception:  # noqa: BLE001
                pass
        for obj in (self.builder,):
            if obj is not None and hasattr(obj, "shutdown"):
                try:
                    obj.shutdown()
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
        from .database import has_database

        records = count_lines(self.work_dir / RECORD_FILE) if has_database(self.work_dir) else 0
        new_trials = sum(t.new_trials for t in self.tasks)
        seconds = time.perf_counter() - self.start
        per_task = [{
            "name": t.name, "calls": t.calls, "flops": t.flops, "trials": t.trials, "valid": t.valid,
            "best_us": None if t.best_s is None else round(t.best_s * 1e6, 3),
            "gflops": None if t.best_s is None or not t.flops else round(t.flops / t.best_s / 1e9, 2),
        } for t in self.tasks]
        return {
            "target": self.spec.name,
            "work_dir": str(self.work_dir),
            "records": records,
            "tasks": len(self.tasks),
            "tuned_tasks": sum(t.covered for t in self.tasks),
            "untuned": [t.name for t in self.tasks if not t.covered],
            "skipped": self.skipped,
            "trials": sum(t.trials for t in self.tasks),
            "new_trials": new_trials,
            "budget": self.allocator.budget if self.allocator else None,
            "batch": self.batch,
            "population": self.population,
            "seconds": seconds,
            "seconds_total": self.wall(),
            "seconds_per_trial": seconds / new_trials if new_trials else None,
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "best_estimated_ms": estimated_model_ms(self.tasks),
            "history": [tuple(h) for h in self.history],
            "per_task": per_task,
            "interrupted": self.interrupted,
        }
