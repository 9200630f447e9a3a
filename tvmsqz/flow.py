"""The TVM pipeline shared by the families TVM compiles (cpu, cuda): compile, bench, tune, load.

Data flows one way: a `frontend.Model` (loaded once by the API) -> Relax IR -> passes and tuned
schedules (`build`, with the backend's hooks) -> artifact on disk (`backend.export`) -> runner
(`backend.load_artifact`) / report (`bench`). A backend with a pipeline of its own (VTA) names it
in its `pipeline` attribute; `TVM_PIPELINE` below is what the others use. Backends supply hooks
and never import this module.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from rich.markup import escape

from .errors import TvmsqzError
from .frontend import Model
from .spec import TargetSpec


def resolve_database(spec: TargetSpec, database: Path | None, tuning: bool) -> Path | None:
    """The database a build applies: none without tuning, the user's choice, else the default
    one for this target (`database.default_database`: the user's own tuning output, the shipped
    per-CPU folder, the portable one)."""
    from .database import default_database

    if not tuning:
        return None
    return Path(database) if database is not None else default_database(spec)


def precision_fields(model: Model) -> dict:
    """Manifest fields of the model's precision: "int8" with what the quantizer recorded
    (calibration source, method, layers kept fp32), or "fp32"."""
    if not model.quantized:
        return {"precision": "fp32"}
    report = model.quant_report or {"source": "QDQ model as given (quantized outside tvmsqz)"}
    return {"precision": "int8", "quantization": report}


def tuning_report_lines(report) -> list[str]:
    """What the build applied, for the CLI's stderr (rich markup); its warnings first."""
    warned = [f"[yellow]warning: {escape(w)}[/yellow]" for w in getattr(report, "warnings", [])]
    if report.database is None:
        return [*warned, f"[dim]tuning: none applied ({len(report.kernels)} kernels untuned)[/dim]"]
    lines = [
        *warned,
        f"[dim]tuning: {len(report.tuned)}/{len(report.kernels)} kernels tuned from {report.database}[/dim]",
    ]
    if report.untuned:
        lines.append(f"[yellow]no tuned record for: {', '.join(report.untuned)}[/yellow]")
    return lines


def default_tuning_dir(spec: TargetSpec) -> Path:
    """Where `tune` writes without an output: the user data folder, never the shipped schedules.

    `database.choose_database` prefers a valid database there over the shipped ones.
    """
    from .database import user_tuning_dir

    return user_tuning_dir(spec)


#: Timed runs of the compiled model after a tune (after the worker's warm-up runs).
MODEL_TIME_RUNS = 200


def model_in_graph(
    model: Model,
    spec: TargetSpec,
    backend: ModuleType,
    database: Path,
    log=None,
    *,
    fuse: bool | None = None,
    since: float | None = None,
) -> dict:
    """Compile `model` with `database` (and the tune's `fuse`) and time it here in a fresh process
    (as `bench` times TVM): `{in_graph_ms, estimated_ms, ratio, threads, runs}`; `ratio` is
    in-graph over the estimate (the sum of the database's best kernel times x calls, the kernels
    timed alone). `since`: when the tune started; its worker processes are waited for first."""
    import tempfile

    import numpy as np

    from . import peers
    from .build import compile_module, export_artifact
    from .frontend import random_input
    from .spec import host_cores

    if log is not None:
        log.print("[dim]timing the compiled model with the new database (in-graph vs the tuner's estimate)[/dim]")
    threads = int(spec.tvm_config.get("num-cores") or host_cores()) if spec.tvm_config else host_cores()
    with tempfile.TemporaryDirectory(prefix="tvmsqz-model-time-") as tmp:
        workdir = Path(tmp)
        executable, report = compile_module(model.mod, spec, database=database, fuse=fuse, backend=backend)
        so_path = workdir / "model.so"
        export_artifact(
            executable, spec, so_path, model=model.name, input_spec=model.input, report=report, backend=backend
        )
        inputs = workdir / "inputs.npy"
        np.save(inputs, random_input(model.input)[None])
        sources = peers.Sources(onnx=workdir / "none.onnx", workdir=workdir, artifact=so_path)
        if since is not None:  # the tuner's builder and runner workers must not share the cores with the timing
            _wait_for_children(since)
        got = peers.run_worker(
            "tvm", peers.module("tvm").prepare(sources), inputs, threads, MODEL_TIME_RUNS, workdir / "tvm.json"
        )
    median = float(got["latency"]["median"])
    est = report.estimated_ms
    result = {
        "in_graph_ms": round(median, 4),
        "estimated_ms": est,
        "ratio": round(median / est, 3) if est else None,
        "threads": threads,
        "runs": MODEL_TIME_RUNS,
        "kernels_with_record": f"{report.estimate_kernels}/{len(report.kernels)}",
    }
    if log is not None:
        log.print(
            f"in the graph: {median:.3f} ms (median of {MODEL_TIME_RUNS} runs, {threads} threads, own process) vs the "
            f"tuner's estimate {est if est is None else f'{est:.3f}'} ms (best kernel times x calls, "
            f"{result['kernels_with_record']} kernels with a record)"
            + (f": {result['ratio']:.2f}x" if result["ratio"] else ""),
            highlight=False,
            soft_wrap=True,
        )
    return result


def _wait_for_children(since: float, timeout: float = 10.0) -> None:
    """Give the worker processes the tune started (children created since `since`; its pools are
    shut down without waiting) up to `timeout` to exit, so they do not take cores from the model
    being timed. Nothing is killed, and an API caller's older children are not waited for."""
    import psutil

    mine = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.create_time() >= since - 1.0:
                mine.append(child)
        except psutil.Error:
            continue
    psutil.wait_procs(mine, timeout=timeout)


def _update_summary(folder: Path, in_graph: dict) -> None:
    """Add the in-graph figures to the folder's `tuning_summary.json` (atomically; a report only)."""
    import json

    from .fsutil import atomic_write
    from .tuning import SUMMARY_FILE

    path = Path(folder) / SUMMARY_FILE
    try:
        data = json.loads(path.read_text())
        data["in_graph"] = in_graph
        atomic_write(path, json.dumps(data, indent=1) + "\n")
    except (OSError, ValueError, TvmsqzError):
        pass


class TVMPipeline:
    """compile / bench / tune / load through TVM's Relax build, for a backend's hooks."""

    name = "tvm"

    def compile(
        self,
        model: Model,
        spec: TargetSpec,
        backend: ModuleType,
        output: Path,
        *,
        database: Path | None = None,
        tuning: bool = True,
        fuse: bool | None = None,
        max_memory: str | int | None = None,
        log=None,
        compress: bool = False,
        compress_bits: int | None = None,
        compress_density: float | None = None,
        **options: Any,
    ) -> dict:
        """Build `model` (applying the target's database) and export it; returns the manifest.

        With `compress`, the convolution weights go to a weight file beside the `.so`
        (`tvmsqz.compress`: weight sharing at `compress_bits`, pruning to `compress_density`,
        Huffman coded) and the artifact binds them at load; the manifest's `weights` names it."""
        from .build import DEFAULT_MAX_MEMORY, compile_module, export_artifact, parse_size

        _no_options(spec, options)
        if not compress and (compress_bits is not None or compress_density is not None):
            raise TvmsqzError("--compress-bits and --compress-density need --compress")
        limit = DEFAULT_MAX_MEMORY if max_memory is None else parse_size(str(max_memory))
        db = resolve_database(spec, database, tuning)
        packed = None
        mod = model.mod
        if compress:
            from .compress.model import compress as compress_weights

            packed = compress_weights(
                model,
                8 if compress_bits is None else compress_bits,
                1.0 if compress_density is None else compress_density,
            )
            mod = packed.mod
            if not packed.lossless:
                from .compress.model import measure_agreement

                size = int(model.input.shape[-1])
                packed.agreement = measure_agreement(model.onnx, packed.onnx, model.preprocess, size)
                if log is not None:
                    a = packed.agreement
                    log.print(
                        f"compressed weights: {len(packed.blob)} bytes; agreement with the uncompressed model on "
                        f"{a['inputs']} photo views: top-1 {a['top1_agreement']:.1%}, "
                        f"top-5 overlap {a['top5_overlap']:.1%}"
                    )
        executable, report = compile_module(mod, spec, database=db, fuse=fuse, max_memory=limit, backend=backend)
        extra = {
            "compile_seconds": round(report.seconds, 2),
            # what `tvmsqz run --image` applies to a photo before this artifact sees it
            "preprocess": {"convention": model.preprocess, "size": int(model.input.nchw[2])},
            **precision_fields(model),
        }
        files = []
        if packed is not None:
            from .compress.model import weights_path
            from .fsutil import atomic_write

            weights = weights_path(output)
            atomic_write(weights, packed.blob)
            files.append(weights)
            extra["weights"] = packed.manifest_fields(weights.name)
        try:
            manifest = export_artifact(
                executable,
                spec,
                output,
                model=model.name,
                input_spec=model.input,
                report=report,
                backend=backend,
                extra=extra,
                extra_files=files,
            )
        except BaseException:
            for path in files:  # no weight file without its artifact and manifest
                path.unlink(missing_ok=True)
            raise
        if log is not None:
            for line in tuning_report_lines(report):
                log.print(line, soft_wrap=True, highlight=False)
        else:
            import warnings

            for text in report.warnings:  # API callers without a log still hear of a fallback
                warnings.warn(text, RuntimeWarning, stacklevel=3)
        return manifest

    def bench(
        self,
        model: Model | None,
        spec: TargetSpec,
        backend: ModuleType,
        *,
        database: Path | None = None,
        tuning: bool = True,
        prebuilt: Path | None = None,
        **options: Any,
    ) -> dict:
        """The bench report (see `tvmsqz.benchmark.run_bench`)."""
        from .benchmark import run_bench

        known = {
            "repeat",
            "fuse",
            "with_torch",
            "rpc_tracker",
            "rpc_key",
            "log",
            "precision",
            "calibrate",
            "calibration_method",
            "fp32_layers",
            "compress",
            "compress_bits",
            "compress_density",
        }
        _no_options(spec, {k: v for k, v in options.items() if k not in known})
        if options.get("precision") == "int8" and prebuilt is None:
            spec = spec.for_precision("int8")  # the int8 target and its own database
        return run_bench(
            model,
            spec,
            database=resolve_database(spec, database, tuning),
            prebuilt=prebuilt,
            backend=backend,
            **{k: v for k, v in options.items() if k in known},
        )

    def tune(
        self,
        model: Model,
        spec: TargetSpec,
        backend: ModuleType,
        *,
        trials: int | None = None,
        output: Path | None = None,
        resume: bool = False,
        fuse: bool | None = None,
        rpc_tracker: str | None = None,
        rpc_key: str | None = None,
        space: str | None = None,
        time_budget: float | None = None,
        cold: bool = False,
        measure: str | None = None,
        model_time: bool = True,
        log=None,
        **options: Any,
    ) -> dict:
        """MetaSchedule + XGBoost over every kernel of `model`; the run's summary.

        `time_budget` (s) and `trials` bound the run, whichever comes first; `cold` skips the warm
        start from the shipped database; `measure` how candidates are timed (see `tune.session`).
        `model_time`: compile the model with the new database and time it here, in its own
        process, beside the tuner's estimate (the summary's `in_graph`): the estimate sums kernels
        timed alone, and only the model says what the graph loses between them.
        """
        import time

        from .tuning import tune_model as run_tuning

        _no_options(spec, options)
        started = time.time()
        out = Path(output) if output is not None else default_tuning_dir(spec)
        summary = run_tuning(
            model.mod,
            spec,
            trials=trials,
            work_dir=out,
            resume=resume,
            fuse=fuse,
            rpc_tracker=rpc_tracker,
            rpc_key=rpc_key,
            space=space,
            time_budget=time_budget,
            warm=not cold,
            measure=measure,
            log=log,
        )
        summary["database"] = str(out)
        if model_time and rpc_tracker is None and backend.runs_on_host(spec):
            try:
                summary["in_graph"] = model_in_graph(model, spec, backend, out, log, fuse=fuse, since=started)
            except Exception as exc:  # noqa: BLE001 - a report after the tuning: the records are safe
                lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
                why = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
                summary["in_graph"] = {"error": why}
                if log is not None:
                    log.print(f"[yellow]warning: the model could not be timed after tuning ({escape(why)})[/yellow]")
            _update_summary(out, summary["in_graph"])
        return summary

    def measure(
        self,
        model: Model,
        spec: TargetSpec,
        backend: ModuleType,
        work_dir: Path,
        *,
        trials: int | None = None,
        time_budget: float | None = None,
        repeat: int = 20,
    ) -> dict:
        """One design point for `tvmsqz explore`: a short tune into `work_dir` (warm-started from
        the shipped records), a compile with it, and the median of `repeat` timed runs here.

        The latency is this host's: a target whose artifacts do not run here cannot be explored.
        """
        import time

        import numpy as np

        from .frontend import random_input
        from .runtime import load as load_artifact

        if not backend.runs_on_host(spec):
            raise TvmsqzError(f"explore measures on this host, and {spec.name} artifacts do not run here")
        from .database import WORKLOAD_FILE, merge_databases

        database = Path(work_dir) / "tuning"
        summary = self.tune(
            model, spec, backend, trials=trials, output=database, time_budget=time_budget, model_time=False
        )
        # A short tune re-measures or tunes only some kernels: the others keep the default
        # database's records (the shipped schedules), as a plain `compile` would apply them.
        applied = Path(work_dir) / "applied"
        sources = [d for d in (resolve_database(spec, None, True), database) if d and (d / WORKLOAD_FILE).is_file()]
        merge_databases(sources, applied, keep=1)
        so = Path(work_dir) / "model.so"
        report = self.compile(model, spec, backend, so, database=applied, tuning=True)
        artifact = load_artifact(so)
        x = random_input(model.input)
        for _ in range(3):
            artifact.run(x)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            artifact.run(x)
            times.append(time.perf_counter() - start)
        del artifact
        so.unlink(missing_ok=True)  # the point's databases stay (resume, inspection); 29 artifacts would not
        return {
            "latency_ms": float(np.median(times) * 1e3),
            "latency_unit": "measured ms (median)",
            "tuned_kernels": f"{len(report['kernels']['tuned'])}/{report['kernels']['total']}",
            "tuned_this_run": f"{summary['tuned_tasks']}/{summary['tasks']}",
            "tuning_trials": int(summary["trials"]),
            "tuning_seconds": round(float(summary["seconds"]), 1),
        }

    def print_report(self, report: dict, console) -> None:
        from .benchmark import print_report

        print_report(report, console)


def _no_options(spec: TargetSpec, options: dict[str, Any]) -> None:
    """Options another pipeline takes mean nothing here: refuse them rather than ignore them."""
    given = sorted(key for key, value in options.items() if value not in (None, False))
    if given:
        raise TvmsqzError(f"target {spec.name} does not take {', '.join('--' + k.replace('_', '-') for k in given)}")


#: The pipeline of every backend whose `pipeline` is None.
TVM_PIPELINE = TVMPipeline()
