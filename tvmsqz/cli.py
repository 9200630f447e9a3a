"""The `tvmsqz` command line, in the idiom of tvmc (`--target`, `--trials`, `--rpc-tracker`, `-o`).

Every user mistake surfaces as a `TvmsqzError`: one line on stderr, exit code 2, no traceback
and no partial artifact. Heavy imports (TVM, torch, ONNX) happen inside the commands so that
`tvmsqz --help` and the error paths stay fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import TvmsqzError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compile, tune and benchmark SqueezeNet-class CNNs with Apache TVM.")
device_app = typer.Typer(no_args_is_help=True, help="Run or emulate a device for RPC tuning and benchmarks.")
app.add_typer(device_app, name="device")
console = Console()
err_console = Console(stderr=True)

TargetOpt = typer.Option("x86", "--target", "-t", help="Target name from `tvmsqz targets`.")
DatabaseOpt = typer.Option(None, "--database", help="Tuning database folder (default: schedules/<target>/).")
NoTuningOpt = typer.Option(False, "--no-tuning", help="Ignore tuning databases: compile untuned kernels.")
FuseOpt = typer.Option(None, "--fuse/--no-fuse", help="Fuse each Fire module's expand pair into one kernel "
                       "(default: the target's measured choice, see `tvmsqz targets`); --no-fuse keeps expand convs + concat.")
InputShapeOpt = typer.Option(None, "--input-shape", help="Input name and shape, e.g. data:1,3,224,224.")
BatchOpt = typer.Option(1, "--batch", "-b", min=1, help="Batch size for built-in models.")
TrackerOpt = typer.Option(None, "--rpc-tracker", help="RPC tracker HOST:PORT for remote devices.")
KeyOpt = typer.Option(None, "--rpc-key", help="RPC device key registered with the tracker.")


def _setup_environment() -> None:
    """Pin every runtime to the same thread count and silence library chatter."""
    from .quiet import quiet_python_logs
    from .targets import host_cores

    os.environ.setdefault("TVM_NUM_THREADS", str(host_cores()))
    os.environ.setdefault("OMP_NUM_THREADS", str(host_cores()))
    quiet_python_logs()
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum, frame) -> None:
    """SIGTERM: remove this process's temp files and folders, say so, exit 143.

    Not an exception: one raised here can land inside a Python callback that TVM's C++ called
    and be swallowed there, and the process would run on. Durable files are never half-written
    (atomic renames, whole-line appends), so exiting here loses nothing that was committed.
    """
    import psutil

    from .fsutil import remove_live_temps

    for child in psutil.Process().children(recursive=True):  # builder / runner workers
        with contextlib.suppress(psutil.Error):
            child.terminate()
    remove_live_temps()
    err_console.print("[bold red]error:[/bold red] terminated", highlight=False)
    sys.stderr.flush()
    os._exit(143)


def _backend(target: str):
    """The resolved target and the backend that owns its family."""
    from .backends import get_backend
    from .targets import get_target

    spec = get_target(target)
    return spec, get_backend(spec)


def _say_default_database(spec, database: Optional[Path], no_tuning: bool) -> None:
    """After compile/bench: why the default database applied when the folder alone does not say
    (the user's own tuning output over the shipped one, a per-CPU database passed over)."""
    if database is None and not no_tuning:
        from .database import default_database_note

        note = default_database_note(spec)
        if note:
            err_console.print(f"[dim]{note}[/dim]", highlight=False, soft_wrap=True)


@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the built-in models."""
    from .models import list_models

    rows = list_models()
    if as_json:
        console.print_json(json.dumps([{
            "name": m.name, "description": m.description, "input_shape": list(m.input_shape),
            "preprocess": m.preprocess, "source": m.source, "trained": m.trained} for m in rows]))
        return
    table = Table(title="built-in models")
    for col in ("name", "input", "weights", "description"):
        table.add_column(col)
    for m in rows:
        table.add_row(m.name, "x".join(map(str, m.input_shape)),
                      "ImageNet-trained" if m.trained else "seeded init", m.description)
    console.print(table)


@app.command("targets")
def targets_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the targets defined in targets/."""
    from .targets import list_targets

    rows = list_targets()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="targets")
    for col in ("name", "family", "description"):
        table.add_column(col)
    for row in rows:
        desc = row["description"] + (f" -> {row['resolves_to']}" if "resolves_to" in row else "")
        table.add_row(row["name"], row["family"], desc)
    console.print(table)


@app.command("compile")
def compile_cmd(
    model: str = typer.Argument(..., help="Built-in model name, .onnx file or Deep Compression .net file."),
    target: str = TargetOpt,
    output: Path = typer.Option(Path("model.so"), "-o", "--output", help="Artifact path (.so)."),
    input_shape: Optional[str] = InputShapeOpt,
    batch: int = BatchOpt,
    database: Optional[Path] = DatabaseOpt,
    no_tuning: bool = NoTuningOpt,
    fuse: Optional[bool] = FuseOpt,
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Refuse models whose planned intermediate "
                                             "memory exceeds this (default 2G), e.g. 512M, 8G."),
) -> None:
    """Compile MODEL for a target into a self-contained .so (weights inside) plus a manifest."""
    from .build import check_writable

    spec, backend = _backend(target)
    check_writable(output, inputs=[Path(model)])
    with err_console.status(f"compiling {model} for {spec.name}"):
        line = backend.compile_model(model, spec, output, batch=batch, input_shape=input_shape, database=database,
                                     no_tuning=no_tuning, fuse=fuse, max_memory=max_memory, log=err_console)
    _say_default_database(spec, database, no_tuning)
    console.print(line)


@app.command("run")
def run_cmd(
    artifact: Path = typer.Argument(..., help="A .so written by `tvmsqz compile`."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Input .npy (default: a seeded random tensor)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the raw output array to this .npy."),
    top: int = typer.Option(5, "--top", min=1, help="How many classes to print."),
    cast: bool = typer.Option(False, "--cast", help="Convert an input of another dtype to the model's."),
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Run inputs holding NaN or inf."),
) -> None:
    """Run an artifact on this host and print the top classes."""
    import numpy as np

    from .runtime import check_input, load, prefer_runtime_lib, top_k

    prefer_runtime_lib()  # as on a device: libtvm_runtime.so only, when tvm is not imported yet

    if output is not None:
        from .build import check_writable

        check_writable(output, inputs=[artifact] + ([input] if input is not None else []))
    runner = load(artifact, warn=lambda msg: err_console.print(f"[yellow]{msg}[/yellow]", highlight=False, soft_wrap=True))
    if input is not None:
        if not input.is_file():
            raise TvmsqzError(f"no such file: {input}")
        try:
            x = np.load(input, allow_pickle=False)
        except Exception as exc:
            raise TvmsqzError(f"cannot read {input} as a .npy array: {exc}") from None
    else:
        shape = runner.input_shape
        if shape is None:
            raise TvmsqzError(f"{artifact} has no manifest beside it; pass --input x.npy")
        x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    x = check_input(x, runner.input_shape, getattr(runner, "input_dtype", "float32"), cast=cast,
                    allow_nonfinite=allow_nonfinite)
    y = runner.run(x)
    if output is not None:
        from .fsutil import atomic_path

        with atomic_path(output) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, y)
    names = None
    if y.reshape(y.shape[0], -1).shape[1] == 1000:
        from .images import class_names

        names = class_names()
    table = Table(title=f"top-{top} ({artifact.name})")
    for col in ("rank", "class", "name", "score"):
        table.add_column(col)
    for rank, (cls, score) in enumerate(top_k(y, top), 1):
        table.add_row(str(rank), str(cls), names[cls] if names else "", f"{score:.5g}")
    console.print(table)


@app.command("bench")
def bench_cmd(
    model: str = typer.Argument("squeezenet1_1", help="Built-in model name, .onnx/.net file, or a compiled .so "
                                "(with its manifest) to measure on an RPC device."),
    target: str = TargetOpt,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON."),
    batch: int = BatchOpt,
    input_shape: Optional[str] = InputShapeOpt,
    repeat: int = typer.Option(50, "--repeat", min=3, help="Timed runs per runtime."),
    database: Optional[Path] = DatabaseOpt,
    no_tuning: bool = NoTuningOpt,
    fuse: Optional[bool] = FuseOpt,
    no_torch: bool = typer.Option(False, "--no-torch", help="Skip the PyTorch comparison."),
    rpc_tracker: Optional[str] = TrackerOpt,
    rpc_key: Optional[str] = KeyOpt,
) -> None:
    """Latency, memory, accuracy parity and per-kernel profile against ONNX Runtime and PyTorch."""
    from .bench import print_report

    spec, backend = _backend(target)
    if json_out is not None:
        from .build import check_writable

        check_writable(json_out, inputs=[Path(model)])
    report = backend.bench_model(model, spec, batch=batch, input_shape=input_shape, repeat=repeat, database=database,
                                 no_tuning=no_tuning, fuse=fuse, with_torch=not no_torch, rpc_tracker=rpc_tracker,
                                 rpc_key=rpc_key, log=err_console)
    _say_default_database(spec, database, no_tuning)
    print_report(report, console)
    if json_out is not None:
        from .fsutil import atomic_write

        atomic_write(json_out, json.dumps(report, indent=2) + "\n")
        err_console.print(f"[dim]wrote {json_out}[/dim]")


@app.command("tune")
def tune_cmd(
    model: str = typer.Argument(..., help="Built-in model name, .onnx/.net file."),
    target: str = TargetOpt,
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Total measurement trials across all kernels "
                                         "(default 64, unbounded with --time-budget alone; with --resume: the "
                                         "folder's total, trials already in it included)."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Wall-clock limit, e.g. 90s, 30m, 1.5h: "
                                              "stop at the first batch boundary past it (with --trials: whichever "
                                              "comes first)."),
    cold: bool = typer.Option(False, "--cold", help="In a new folder, skip the warm start (re-measuring the "
                              "shipped database's best records of these kernels on this CPU first)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Database folder (default: the user data "
                                          "folder, see `tvmsqz targets --json`; never the shipped schedules)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the records already in the database."),
    batch: int = BatchOpt,
    input_shape: Optional[str] = InputShapeOpt,
    fuse: Optional[bool] = FuseOpt,
    rpc_tracker: Optional[str] = TrackerOpt,
    rpc_key: Optional[str] = KeyOpt,
    space: Optional[str] = typer.Option(None, "--space", help="Design space: 'blocked' (the direct-conv space for "
                                        "channel-blocked convolutions, the default) or 'generic' (MetaSchedule's own)."),
) -> None:
    """Auto-tune every kernel of MODEL with MetaSchedule and its XGBoost cost model."""
    import inspect

    from .tune.budget import DEFAULT_TRIALS, parse_duration

    if space not in (None, "blocked", "generic"):
        raise TvmsqzError(f"--space must be 'blocked' or 'generic', not {space!r}")
    seconds = parse_duration(time_budget) if time_budget is not None else None
    spec, backend = _backend(target)
    extra = {key: value for key, value in (("time_budget", seconds), ("cold", cold)) if value}
    takes = inspect.signature(backend.tune_model).parameters
    refused = [f"--{key.replace('_', '-')}" for key in extra if key not in takes]
    if refused:  # a backend's tune that does not take them would silently ignore them
        raise TvmsqzError(f"target {spec.name} does not take {', '.join(refused)}")
    if trials is None and seconds is None:
        trials = DEFAULT_TRIALS
    _summary, line = backend.tune_model(model, spec, trials=trials, output=output, resume=resume, batch=batch,
                                        input_shape=input_shape, fuse=fuse, rpc_tracker=rpc_tracker,
                                        rpc_key=rpc_key, space=space, log=err_console, **extra)
    console.print(line)


@app.command("package")
def package_cmd(
    artifact: Path = typer.Argument(..., help="A .so written by `tvmsqz compile` (with its manifest)."),
    output: Path = typer.Option(..., "-o", "--output", help="Bundle folder to write (replaced if it is a bundle)."),
    tar: bool = typer.Option(False, "--tar", help="Also write OUTPUT.tar.gz (one folder inside)."),
    strip: bool = typer.Option(True, "--strip/--no-strip", help="Strip the runtime libraries with the target's strip."),
    runtime_from: Optional[Path] = typer.Option(None, "--runtime-from", help="Take the TVM runtime from this "
                                                "site-packages folder, install prefix or wheel file (e.g. armv7)."),
) -> None:
    """Bundle ARTIFACT with the TVM runtime and runners for its architecture: no TVM install needed."""
    from .bundle import build_bundle

    bundle = build_bundle(artifact, output, tar=tar, strip=strip, runtime_from=runtime_from,
                          log=lambda msg: err_console.print(f"[dim]{msg}[/dim]", highlight=False))
    sizes = bundle["sizes"]
    console.print(f"wrote {output} ({bundle['arch']}: runtime {sizes['runtime_bytes'] / 1e6:.1f} MB, model "
                  f"{sizes['model_bytes'] / 1e6:.1f} MB, runners {sizes['runner_bytes'] / 1e6:.2f} MB)"
                  + (f" and {bundle['tar']}" if "tar" in bundle else "")
                  + f"; run it with {output}/bin/tvmsqz-run or python3 {output}/bin/tvmsqz-run.py", highlight=False,
                  soft_wrap=True)


@device_app.command("serve")
def device_serve(
    tracker: str = typer.Option(..., "--rpc-tracker", help="Tracker HOST:PORT to register with."),
    key: str = typer.Option(..., "--rpc-key", help="Device key, e.g. rpi4."),
    host: str = typer.Option("0.0.0.0", "--host"),
    port: int = typer.Option(9090, "--port"),
) -> None:
    """Start the TVM RPC server on this board (runs until Ctrl-C)."""
    from .device import serve

    serve(tracker=tracker, key=key, host=host, port=port)


@device_app.command("emulate")
def device_emulate(
    action: str = typer.Argument(..., help="start | stop | status"),
    count: int = typer.Option(2, "--count", "-n", min=1, help="Emulated aarch64 devices to start."),
    key: str = typer.Option("arm-emu", "--rpc-key"),
    tracker_port: int = typer.Option(9190, "--tracker-port"),
) -> None:
    """Start/stop emulated aarch64 devices (qemu-user, chroot) behind a local tracker."""
    from . import device

    if action == "start":
        info = device.emulate_start(count=count, key=key, tracker_port=tracker_port)
        console.print(f"\\[emulated] tracker 127.0.0.1:{info['tracker_port']}, key {key}, {count} device(s). "
                      "Emulated timings are not ARM performance.")
    elif action == "stop":
        device.emulate_stop()
        console.print("\\[emulated] stopped")
    elif action == "status":
        console.print_json(json.dumps(device.emulate_status()))
    else:
        raise TvmsqzError(f"unknown action {action!r}: use start, stop or status")


def _usage_error_classes() -> tuple[type, ...]:
    """click's exception module as the installed typer uses it: its bundled copy (0.29) or click."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - a typer that uses the click package
        from click import exceptions
    return exceptions.ClickException, exceptions.NoArgsIsHelpError, typer.Exit, typer.Abort


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Console entry point: every failure is one line on stderr and a non-zero exit code."""
    _setup_environment()
    click_error, no_args, click_exit, click_abort = _usage_error_classes()
    try:
        rc = app(standalone_mode=False)
    except TvmsqzError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except no_args as exc:  # bare `tvmsqz` or `tvmsqz device`: the help, then one line and exit 2
        console.print(exc.ctx.get_help() if exc.ctx is not None else "", highlight=False)
        _fail("no command given (see the list above)")
    except click_error as exc:  # usage errors: unknown option, missing argument, bad value
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) is not None else ""
        _fail(f"{where}{exc.format_message()}", 2)
    except click_exit as exc:
        sys.exit(exc.exit_code)
    except click_abort:
        _fail("aborted", 130)
    except OSError as exc:  # a disk or permission problem the command did not anticipate
        from .fsutil import os_error

        _fail(str(os_error(exc.filename or "a file", exc)))
    if isinstance(rc, int) and rc:  # typer returns Exit codes (Ctrl-C: 130) instead of raising
        if rc == 130:
            _fail("interrupted", 130)
        sys.exit(rc)


if __name__ == "__main__":
    main()
