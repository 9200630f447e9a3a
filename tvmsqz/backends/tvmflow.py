"""The TVM build flow shared by the families TVM compiles (cpu, cuda): compile, bench, tune, load.

A family backend (`backends/cpu`, `backends/cuda`) re-exports these as its command hooks and
supplies the family-specific pieces they call back into (`device_type`, `export`, passes,
`tuning_builder_runner`). Data flows one way: model -> Relax IR (`frontend`) -> passes and
tuned schedules (`build`) -> artifact (`export`) -> runner (`runtime`) / report (`bench`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import TvmsqzError
from ..spec import TargetSpec


def _database(spec: TargetSpec, database: Path | None, no_tuning: bool) -> Path | None:
    from ..database import default_database

    if no_tuning:
        return None
    return database if database is not None else default_database(spec)


def tuning_report_lines(report) -> list[str]:
    """What the build applied, for the CLI's stderr (rich markup)."""
    if report.database is None:
        return [f"[dim]tuning: none applied ({len(report.kernels)} kernels untuned)[/dim]"]
    lines = [f"[dim]tuning: {len(report.tuned)}/{len(report.kernels)} kernels tuned from {report.database}[/dim]"]
    if report.untuned:
        lines.append(f"[yellow]no tuned record for: {', '.join(report.untuned)}[/yellow]")
    return lines


def compile_model(model: str, spec: TargetSpec, output: Path, *, batch: int = 1, input_shape: str | None = None,
                  database: Path | None = None, no_tuning: bool = False, fuse: bool | None = None,
                  max_memory: str | None = None, log=None, **_: Any) -> str:
    """Import, compile (applying the target's database) and export `model`; the line to print."""
    from ..build import DEFAULT_MAX_MEMORY, compile_module, export_artifact, parse_size
    from ..frontend import load_model

    limit = parse_size(max_memory) if max_memory else DEFAULT_MAX_MEMORY
    db = _database(spec, database, no_tuning)
    loaded = load_model(model, batch=batch, input_shape=input_shape)
    executable, report = compile_module(loaded.mod, spec, database=db, fuse=fuse, max_memory=limit)
    manifest = export_artifact(executable, spec, output, model=loaded.name, input_spec=loaded.input, report=report)
    if log is not None:
        for line in tuning_report_lines(report):
            log.print(line)
    return (f"wrote {output} ({manifest['artifact']['bytes']} bytes, {spec.name}, "
            f"{len(report.kernels)} kernels, {report.seconds:.1f} s) and {output.name}.json")


def bench_model(model: str, spec: TargetSpec, *, database: Path | None = None, no_tuning: bool = False,
                **options: Any) -> dict:
    """`tvmsqz bench` for a TVM-compiled target (see `tvmsqz.bench.run_bench`)."""
    from ..bench import run_bench

    return run_bench(model, spec, database=_database(spec, database, no_tuning), **options)


def default_tuning_dir(spec: TargetSpec) -> Path:
    """Where `tune` writes without `-o`: the user data folder, never the shipped schedules.

    `database.choose_database` prefers a valid database there over the shipped ones.
    """
    from ..database import user_tuning_dir

    return user_tuning_dir(spec)


def tune_model(model: str, spec: TargetSpec, *, trials: int | None = None, output: Path | None = None,
               resume: bool = False, batch: int = 1, input_shape: str | None = None, fuse: bool | None = None,
               rpc_tracker: str | None = None, rpc_key: str | None = None, space: str | None = None,
               time_budget: float | None = None, cold: bool = False, log=None, **_: Any) -> tuple[dict, str]:
    """MetaSchedule + XGBoost over every kernel of `model`; (summary, line to print).

    `time_budget` (s) and `trials` bound the run, whichever comes first; `cold` skips the warm
    start from the shipped database (see `tune.session`).
    """
    from ..frontend import load_model
    from ..tune import tune_model as run_tuning

    out = output or default_tuning_dir(spec)
    loaded = load_model(model, batch=batch, input_shape=input_shape)
    summary = run_tuning(loaded.mod, spec, trials=trials, work_dir=out, resume=resume, fuse=fuse,
                         rpc_tracker=rpc_tracker, rpc_key=rpc_key, space=space, time_budget=time_budget,
                         warm=not cold, log=log)
    stopped = "; stopped on the time budget" if summary["stopped"] == "time budget" else ""
    return summary, (f"database: {out} ({summary['records']} records, {summary['tuned_tasks']}/"
                     f"{summary['tasks']} kernels tuned, {summary['seconds']:.0f} s{stopped})")


def load_artifact(path: Path, manifest: dict | None, device_type: str) -> Any:
    """A loaded `.so` on a device of `device_type` ("cpu", "cuda"); runtime side, no compiler import."""
    from ..runtime import Artifact

    return Artifact.open(path, manifest, device_type)


def local_builder_runner(*, workers: int, measure_threads: int, f_export=None):
    """(builder, runner) measuring on this host: one persistent builder pool, MetaSchedule's runner."""
    from ..builder import PersistentBuilder, make_local_runner

    builder = PersistentBuilder(max_workers=workers, timeout_sec=60.0, f_export=f_export)
    builder.warm_up()
    return builder, make_local_runner(measure_threads)


def rpc_builder_runner(spec: TargetSpec, rpc: dict, *, f_export=None):
    """(builder, runner) measuring on the devices behind an RPC tracker."""
    from ..device import make_rpc_runner_builder

    return make_rpc_runner_builder(rpc["tracker"], rpc["key"], spec.cc, f_export=f_export)
