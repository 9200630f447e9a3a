"""The `tvmsqz` command line, in the idiom of tvmc (`--target`, `--trials`, `--rpc-tracker`, `-o`).

A thin layer over the Python API (`tvmsqz.api`): each command parses its options, calls the
API and prints what it returns; it imports no other tvmsqz module but `errors`, `quiet`,
`fsutil` and `version`. Every user mistake surfaces as a `TvmsqzError`: one line on stderr, exit
code 2, no traceback and no partial artifact. The API is imported inside the commands so that
`tvmsqz --help`, `--version` and the error paths stay fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import TvmsqzError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Compile, tune and benchmark SqueezeNet-class CNNs with Apache TVM.",
)
device_app = typer.Typer(help="Run or emulate a device for RPC tuning and benchmarks.")
app.add_typer(device_app, name="device")
console = Console()
err_console = Console(stderr=True)

TargetOpt = typer.Option("x86", "--target", "-t", help="Target name from `tvmsqz targets`.")
DatabaseOpt = typer.Option(
    None,
    "--database",
    help="Tuning database folder (default: your own tuning output for the "
    "target, else the shipped schedules for this CPU; both are named on stderr).",
)
NoTuningOpt = typer.Option(False, "--no-tuning", help="Ignore tuning databases: compile untuned kernels.")
FuseOpt = typer.Option(
    None,
    "--fuse/--no-fuse",
    help="Fuse each Fire module's expand pair into one kernel "
    "(default: the target's measured choice, see `tvmsqz targets`); --no-fuse keeps expand convs + concat.",
)
PrecisionOpt = typer.Option(
    None,
    "--precision",
    help="fp32 or int8 (default: the target's, fp32 on CPUs; a QDQ model is int8). int8 quantizes the "
    "model after calibration (--calibrate); input and output stay fp32.",
)
CalibrateOpt = typer.Option(
    None,
    "--calibrate",
    help="int8 calibration inputs: a folder of jpg/png photos (preprocessed as the model expects) "
    "or a .npy/.npz of input tensors (default: the built-in sample photos).",
)
CalibrationMethodOpt = typer.Option(
    None, "--calibration-method", help="Activation ranges for int8: mse (default), minmax, percentile, entropy."
)
Fp32LayersOpt = typer.Option(
    None,
    "--fp32-layers",
    help="Comma-separated conv names (or first, last) kept fp32 in an int8 model (default: none).",
)
CompressOpt = typer.Option(
    False,
    "--compress",
    help="Keep the conv weights out of the .so in MODEL.weights beside it (Deep Compression: "
    "pruning, weight sharing, Huffman coding), decoded at load.",
)
CompressBitsOpt = typer.Option(
    None,
    "--compress-bits",
    help="Weight-sharing codebook bits per layer, 1-8 (default 8: lossless for the Deep Compression model).",
)
CompressDensityOpt = typer.Option(
    None, "--compress-density", help="Share of weights kept by magnitude pruning, (0, 1] (default 1)."
)


def _compress(compress: bool, bits: int | None, density: float | None) -> dict:
    """The compress keywords for the API: none unless one of the three options was given."""
    if not compress and bits is None and density is None:
        return {}
    return {"compress": True, "compress_bits": bits, "compress_density": density}


def _layers(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


InputShapeOpt = typer.Option(None, "--input-shape", help="Input name and shape, e.g. data:1,3,224,224.")
#: The largest batch any command takes (frontend.INPUT_BOUNDS, kept here so a typo fails in the parser).
MAX_BATCH = 4096
BatchOpt = typer.Option(1, "--batch", "-b", min=1, max=MAX_BATCH, help="Batch size for built-in models.")
TrackerOpt = typer.Option(None, "--rpc-tracker", help="RPC tracker HOST:PORT for remote devices.")
KeyOpt = typer.Option(None, "--rpc-key", help="RPC device key registered with the tracker.")


def _setup_environment() -> None:
    """Pin every runtime to the same thread count and silence library chatter."""
    from .quiet import quiet_python_logs
    from .spec import host_cores

    os.environ.setdefault("TVM_NUM_THREADS", str(host_cores()))
    os.environ.setdefault("OMP_NUM_THREADS", str(host_cores()))
    quiet_python_logs()
    global _STDERR_FD
    if _STDERR_FD is None:
        with contextlib.suppress(OSError):
            _STDERR_FD = os.dup(2)  # the real stderr, even while quiet_stderr points fd 2 at /dev/null
    signal.signal(signal.SIGTERM, _terminate)


#: A duplicate of the process's stderr, taken at start-up: the SIGTERM handler writes its one line
#: there, because the signal can arrive while `quiet.quiet_stderr` has fd 2 on /dev/null (export).
_STDERR_FD: int | None = None


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
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    fd = _STDERR_FD if _STDERR_FD is not None else 2
    with contextlib.suppress(OSError):
        os.write(fd, b"error: terminated\n")
    os._exit(143)


def _api():
    """The API module, imported when a command runs (keeps --help and usage errors fast)."""
    from . import api

    return api


def _say_default_database(target: str, database: Optional[Path], no_tuning: bool) -> None:
    """After compile/bench: why the default database applied when the folder alone does not say."""
    if database is None and not no_tuning:
        note = _api().default_database_note(target)
        if note:
            err_console.print(Text(note, style="dim"), highlight=False, soft_wrap=True)


def _check_writable(path: Path, inputs: list[Path], *, manifest: bool = False) -> None:
    _api().check_writable(path, inputs, manifest=manifest)


def _help_and_fail(ctx: typer.Context) -> None:
    """A group called without a command: its help, then one error line and exit 2."""
    console.print(ctx.get_help(), highlight=False)
    raise TvmsqzError("no command given (see the list above)")


def _version(value: bool) -> None:
    if value:
        from .version import __version__

        console.print(f"tvmsqz {__version__}", highlight=False)
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Compile, tune and benchmark SqueezeNet-class CNNs with Apache TVM."""
    if ctx.invoked_subcommand is None:
        _help_and_fail(ctx)


@device_app.callback(invoke_without_command=True)
def device_callback(ctx: typer.Context) -> None:
    """Run or emulate a device for RPC tuning and benchmarks."""
    if ctx.invoked_subcommand is None:
        _help_and_fail(ctx)


def _print_whole(table: Table, cells: list[tuple[str, ...]]) -> None:
    """Print `table` at least as wide as its short columns need (names are what users type next:
    a narrow or piped terminal wraps the last, descriptive column, never cuts a name)."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)] if cells else []
    needed = sum(widths) + 3 * len(widths) + 4 + 24  # cell padding and borders, 24 for the description
    if needed <= console.width:
        console.print(table)
        return
    wide = Console(width=needed, file=console.file, force_terminal=console.is_terminal, no_color=console.no_color)
    wide.print(table)


@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the built-in models."""
    rows = _api().list_models()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="built-in models")
    table.add_column("name", no_wrap=True)
    table.add_column("input", no_wrap=True)
    table.add_column("weights", no_wrap=True)
    table.add_column("description", overflow="fold")
    cells = []
    for m in rows:
        cells.append(
            (
                m["name"],
                "x".join(map(str, m["input_shape"])),
                "ImageNet-trained" if m["trained"] else "seeded init",
                m["description"],
            )
        )
        table.add_row(*cells[-1])
    _print_whole(table, cells)


@app.command("targets")
def targets_cmd(
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON (with `user_schedules`: where `tune` writes without -o)."
    ),
) -> None:
    """List the targets defined in targets/."""
    rows = _api().list_targets()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="targets")
    table.add_column("name", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("description", overflow="fold")
    cells = []
    for row in rows:
        desc = row["description"] + (f" -> {row['resolves_to']}" if "resolves_to" in row else "")
        cells.append((row["name"], row["family"], desc))
        table.add_row(*cells[-1])
    _print_whole(table, cells)


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
    max_memory: Optional[str] = typer.Option(
        None,
        "--max-memory",
        help="Refuse models whose planned intermediate memory exceeds this (default 2G), e.g. 512M, 8G.",
    ),
    precision: Optional[str] = PrecisionOpt,
    calibrate: Optional[Path] = CalibrateOpt,
    calibration_method: Optional[str] = CalibrationMethodOpt,
    fp32_layers: Optional[str] = Fp32LayersOpt,
    compress: bool = CompressOpt,
    compress_bits: Optional[int] = CompressBitsOpt,
    compress_density: Optional[float] = CompressDensityOpt,
    preprocess: Optional[str] = typer.Option(
        None,
        "--preprocess",
        help="Photo preprocessing `run --image` applies: torchvision or caffe (default: the model's own; torchvision).",
    ),
) -> None:
    """Compile MODEL for a target into a self-contained .so (weights inside) plus a manifest."""
    api = _api()
    spec = api.resolve_target(target)
    _check_writable(output, [Path(model), *api.target_files(target)], manifest=True)
    with err_console.status(Text(f"compiling {model} for {spec.name}")):
        loaded = api.load_model(model, batch=batch, input_shape=input_shape, import_now=False)
        artifact = api.compile(
            loaded,
            spec,
            output=output,
            database=database,
            tuning=not no_tuning,
            fuse=fuse,
            max_memory=max_memory,
            precision=precision,
            calibrate=calibrate,
            calibration_method=calibration_method,
            fp32_layers=_layers(fp32_layers),
            preprocess=preprocess,
            log=err_console,
            **_compress(compress, compress_bits, compress_density),
        )
    _say_default_database(target, database, no_tuning)
    manifest = artifact.manifest
    kernels = manifest.get("kernels", {}).get("total")
    others = [f"{entry['file']} ({entry['bytes']} bytes)" for entry in manifest.get("files", [])]
    console.print(
        f"wrote {output} ({manifest['artifact']['bytes']} bytes, {spec.name}"
        + (f", {kernels} kernels" if kernels is not None else "")
        + (f", {manifest['compile_seconds']:.1f} s" if "compile_seconds" in manifest else "")
        + ")"
        + "".join(f", {o}" for o in others)
        + f" and {output.name}.json"
        + (f"; {manifest['note']}" if manifest.get("note") else ""),
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


@app.command("run")
def run_cmd(
    artifact: Path = typer.Argument(..., help="A .so written by `tvmsqz compile`."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Input .npy (default: a seeded random tensor)."),
    image: Optional[list[Path]] = typer.Option(
        None,
        "--image",
        help="A photo (jpg, png, ...), preprocessed as the manifest records; repeat for several.",
    ),
    preprocess: Optional[str] = typer.Option(
        None, "--preprocess", help="Override the manifest's photo preprocessing: torchvision or caffe."
    ),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the raw output array to this .npy."),
    top: int = typer.Option(5, "--top", min=1, help="How many classes to print."),
    as_json: bool = typer.Option(False, "--json", help="Print the top classes as JSON instead of a table."),
    cast: bool = typer.Option(False, "--cast", help="Convert an input of another dtype to the model's."),
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Run inputs holding NaN or inf."),
) -> None:
    """Run an artifact on this host and print the top classes (of each --image)."""
    import numpy as np

    api = _api()
    api.prefer_runtime_lib()  # as on a device: libtvm_runtime.so only, when tvm is not imported yet
    if image and input is not None:
        raise TvmsqzError("give --input or --image, not both")
    if preprocess is not None and not image:
        raise TvmsqzError("--preprocess applies to --image only")
    if preprocess is not None and preprocess not in ("torchvision", "caffe"):
        raise TvmsqzError(f"unknown --preprocess {preprocess!r}: expected torchvision or caffe")
    if output is not None:
        _check_writable(
            output, [*api.artifact_files(artifact)] + ([input] if input is not None else []) + list(image or [])
        )
    runner = api.load(
        artifact, warn=lambda msg: err_console.print(Text(msg, style="yellow"), highlight=False, soft_wrap=True)
    )
    labels: list[str]
    convention = None
    if image:
        photos, convention = api.image_inputs(image, runner.manifest, preprocess)
        y = _run_photos(api, runner, photos)
        labels = [str(p) for p in image]
    else:
        if input is not None:
            if not input.is_file():
                raise TvmsqzError(f"no such file: {input}")
            try:
                x = np.load(input, allow_pickle=False)
            except Exception as exc:  # noqa: BLE001 - numpy's loader raises many types for a bad file
                raise TvmsqzError(f"cannot read {input} as a .npy array: {exc}") from None
        else:
            shape = runner.input_shape
            if shape is None:
                raise TvmsqzError(f"{artifact} has no manifest beside it; pass --input x.npy")
            x = _random_input(shape, runner.input_dtype or "float32")
        x = api.check_input(x, runner.input_shape, runner.input_dtype, cast=cast, allow_nonfinite=allow_nonfinite)
        y = runner.run(x)
        labels = [str(input) if input is not None else "random input"]
    if output is not None:
        from .fsutil import atomic_path

        with atomic_path(output) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, y)
    results = [
        {
            "input": label,
            "top": [
                {"rank": rank, "class": cls, "name": name, "score": score}
                for rank, cls, name, score in api.top_classes(y, top, index)
            ],
        }
        for index, label in enumerate(labels)
    ]
    if as_json:
        import json

        doc = {"artifact": str(artifact), "preprocess": convention, "results": results}
        console.print_json(json.dumps(doc))
        return
    for result in results:
        table = Table(title=f"top-{top}: {Path(result['input']).name} ({artifact.name})")
        for col in ("rank", "class", "name", "score"):
            table.add_column(col)
        for row in result["top"]:
            table.add_row(str(row["rank"]), str(row["class"]), row["name"], f"{row['score']:.5g}")
        console.print(table)


def _run_photos(api, runner, photos: list):
    """Each photo through the artifact in batches of its compiled batch size (the last batch
    padded by repeating its last photo): one (len(photos), ...) output."""
    import numpy as np

    batch = int((runner.input_shape or [1])[0])
    outputs = []
    for start in range(0, len(photos), batch):
        chunk = photos[start : start + batch]
        x = np.concatenate(chunk + [chunk[-1]] * (batch - len(chunk)))
        x = api.check_input(x, runner.input_shape, runner.input_dtype)
        outputs.append(np.asarray(runner.run(x))[: len(chunk)])
    return np.concatenate(outputs)


def _random_input(shape, dtype: str):
    """`run`'s seeded input in the model's own dtype (an fp16 or int8 artifact needs no --cast)."""
    import numpy as np

    rng = np.random.default_rng(0)
    kind = np.dtype(dtype)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        return rng.integers(info.min, int(info.max) + 1, size=tuple(shape), dtype=kind)
    return rng.standard_normal(tuple(shape)).astype(kind)


@app.command("bench")
def bench_cmd(
    model: str = typer.Argument(
        "squeezenet1_1",
        help="Built-in model name, .onnx/.net file, or a compiled .so (with its manifest) to measure on an RPC device.",
    ),
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
    precision: Optional[str] = PrecisionOpt,
    calibrate: Optional[Path] = CalibrateOpt,
    calibration_method: Optional[str] = CalibrationMethodOpt,
    fp32_layers: Optional[str] = Fp32LayersOpt,
    compress: bool = CompressOpt,
    compress_bits: Optional[int] = CompressBitsOpt,
    compress_density: Optional[float] = CompressDensityOpt,
) -> None:
    """Latency, memory, accuracy parity and per-kernel profile against ONNX Runtime and PyTorch
    (with --precision int8: against ONNX Runtime's and OpenVINO's int8, and agreement with fp32;
    with --compress: the weight file's bytes, decode time and cost against the plain artifact)."""
    api = _api()
    spec = api.resolve_target(target)
    if json_out is not None:
        _check_writable(json_out, [Path(model), *api.target_files(target)])
    source = (
        model
        if model.endswith(".so")
        else api.load_model(model, batch=batch, input_shape=input_shape, import_now=False)
    )
    report = api.bench(
        source,
        spec,
        repeat=repeat,
        database=database,
        tuning=not no_tuning,
        fuse=fuse,
        with_torch=not no_torch,
        rpc_tracker=rpc_tracker,
        rpc_key=rpc_key,
        precision=precision,
        calibrate=calibrate,
        calibration_method=calibration_method,
        fp32_layers=_layers(fp32_layers),
        log=err_console,
        **_compress(compress, compress_bits, compress_density),
    )
    _say_default_database(target, database, no_tuning)
    report.print(console)
    if json_out is not None:
        from .fsutil import atomic_write

        atomic_write(json_out, report.to_json() + "\n")
        err_console.print(Text(f"wrote {json_out}", style="dim"), highlight=False, soft_wrap=True)


@app.command("tune")
def tune_cmd(
    model: str = typer.Argument(..., help="Built-in model name, .onnx/.net file."),
    target: str = TargetOpt,
    trials: Optional[int] = typer.Option(
        None,
        "--trials",
        min=1,
        help="Total measurement trials across all kernels "
        "(default 64, unbounded with --time-budget alone; with --resume: the "
        "folder's total, trials already in it included).",
    ),
    time_budget: Optional[str] = typer.Option(
        None,
        "--time-budget",
        help="Wall-clock limit, e.g. 90s, 30m, 1.5h: "
        "stop at the first batch boundary past it (with --trials: whichever "
        "comes first).",
    ),
    cold: bool = typer.Option(
        False,
        "--cold",
        help="In a new folder, skip the warm start (re-measuring the "
        "shipped database's best records of these kernels on this CPU first).",
    ),
    output: Optional[Path] = typer.Option(
        None,
        "-o",
        "--output",
        help="Database folder (default: the target's "
        "`user_schedules` folder, see `tvmsqz targets --json`; never the shipped "
        "schedules).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the records already in the database."),
    batch: int = BatchOpt,
    input_shape: Optional[str] = InputShapeOpt,
    fuse: Optional[bool] = FuseOpt,
    rpc_tracker: Optional[str] = TrackerOpt,
    rpc_key: Optional[str] = KeyOpt,
    space: Optional[str] = typer.Option(
        None,
        "--space",
        help="Design space: 'blocked' (the direct-conv space for "
        "channel-blocked convolutions, the default) or 'generic' (MetaSchedule's own).",
    ),
    precision: Optional[str] = PrecisionOpt,
    calibrate: Optional[Path] = CalibrateOpt,
    calibration_method: Optional[str] = CalibrationMethodOpt,
    fp32_layers: Optional[str] = Fp32LayersOpt,
    measure: Optional[str] = typer.Option(
        None,
        "--measure",
        help="How a candidate is timed on a CPU: 'warm' (runs back to back, the x86 default: its "
        "estimate was the closer to the compiled model's time) or 'flush' (caches flushed before each run).",
    ),
    model_time: Optional[bool] = typer.Option(
        None,
        "--model-time/--no-model-time",
        help="After tuning, compile the model and time it here beside the tuner's estimate (default: on).",
    ),
) -> None:
    """Auto-tune every kernel of MODEL with MetaSchedule and its XGBoost cost model."""
    api = _api()
    if space not in (None, "blocked", "generic"):
        raise TvmsqzError(f"--space must be 'blocked' or 'generic', not {space!r}")
    spec = api.resolve_target(target)
    loaded = api.load_model(model, batch=batch, input_shape=input_shape, import_now=False)
    summary = api.tune(
        loaded,
        spec,
        trials=trials,
        output=output,
        resume=resume,
        time_budget=time_budget,
        cold=cold,
        fuse=fuse,
        space=space,
        rpc_tracker=rpc_tracker,
        rpc_key=rpc_key,
        precision=precision,
        calibrate=calibrate,
        calibration_method=calibration_method,
        fp32_layers=_layers(fp32_layers),
        measure=measure,
        model_time=model_time,
        log=err_console,
    )
    console.print(_tune_line(summary), highlight=False, soft_wrap=True, markup=False)


@app.command("explore")
def explore_cmd(
    target: str = TargetOpt,
    output: Path = typer.Option(Path("explore"), "-o", "--output", help="Results folder (a rerun resumes it)."),
    time_budget: Optional[str] = typer.Option(
        None, "--time-budget", help="Wall-clock limit for the whole run, e.g. 30m: stops between points."
    ),
    points: Optional[int] = typer.Option(None, "--points", min=1, help="Measure at most this many design points."),
    per_point: Optional[str] = typer.Option(
        None, "--per-point", help="Tuning time per point, e.g. 60s (default: an equal share of the budget left)."
    ),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Tuning trials per point (cap)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
) -> None:
    """Measure SqueezeNet / SqueezeNext design points on TARGET: size, MACs, latency, Pareto front."""
    api = _api()
    data = api.explore(
        target,
        output=output,
        time_budget=time_budget,
        points=points,
        per_point=per_point,
        trials=trials,
        say=lambda line: err_console.print(Text(line, style="dim"), highlight=False, soft_wrap=True),
    )
    if as_json:
        console.print_json(json.dumps(data))
        return
    front = set(data["pareto"])
    table = Table(title=f"design points on {data['target']} ({data['note']})")
    for column in ("point", "params M", "GMAC", "fp32 MB", "int8 MB", "DC MB", "latency ms", "Pareto"):
        table.add_column(column, justify="left" if column == "point" else "right", overflow="fold")
    for row in data["points"]:
        latency = f"{row['latency_ms']:.3f}" if row.get("latency_ms") is not None else f"error: {row.get('error')}"
        table.add_row(
            row["label"] or row["key"],
            f"{row['params'] / 1e6:.2f}",
            f"{row['macs'] / 1e9:.2f}",
            f"{row['bytes_fp32'] / 1e6:.2f}",
            f"{row['bytes_int8'] / 1e6:.2f}",
            f"{row['bytes_compressed'] / 1e6:.2f}",
            latency,
            "*" if row["key"] in front else "",
        )
    console.print(table)
    console.print(
        f"{len(data['points'])} points ({data['measured_this_run']} this run, stopped: {data['stopped']}); "
        f"wrote {data['json']} and {data['plot']}",
        highlight=False,
        soft_wrap=True,
    )


def _tune_line(summary: dict) -> str:
    """The closing line of `tune`: where the database is and what it holds."""
    if "records" not in summary:  # a pipeline with a summary of its own shape (VTA's tilings)
        return json.dumps(summary, indent=1)
    stopped = "; stopped on the time budget" if summary.get("stopped") == "time budget" else ""
    graph = summary.get("in_graph") or {}
    in_graph = (
        f"; model {graph['in_graph_ms']:.3f} ms in the graph vs {graph['estimated_ms']:.3f} ms estimated "
        f"({graph['ratio']:.2f}x)"
        if graph.get("ratio")
        else ""
    )
    return (
        f"database: {summary['database']} ({summary['records']} records, {summary['tuned_tasks']}/"
        f"{summary['tasks']} kernels tuned, {summary['seconds']:.0f} s{stopped}){in_graph}"
    )


@app.command("package")
def package_cmd(
    artifact: Path = typer.Argument(..., help="A .so written by `tvmsqz compile` (with its manifest)."),
    output: Path = typer.Option(..., "-o", "--output", help="Bundle folder to write (replaced if it is a bundle)."),
    tar: bool = typer.Option(False, "--tar", help="Also write OUTPUT.tar.gz (one folder inside)."),
    strip: bool = typer.Option(True, "--strip/--no-strip", help="Strip the runtime libraries with the target's strip."),
    runtime_from: Optional[Path] = typer.Option(
        None,
        "--runtime-from",
        help="Take the TVM runtime from this site-packages folder, install prefix or wheel file (e.g. armv7).",
    ),
    compress: bool = typer.Option(
        False,
        "--compress",
        help="Bundle the model with its weights in a weight file (an artifact compiled without --compress "
        "is compiled again from its source model, same target and database).",
    ),
    compress_bits: Optional[int] = CompressBitsOpt,
    compress_density: Optional[float] = CompressDensityOpt,
) -> None:
    """Bundle ARTIFACT with the TVM runtime and runners for its architecture: no TVM install needed."""
    bundle = _api().package(
        artifact,
        output,
        tar=tar,
        strip=strip,
        runtime_from=runtime_from,
        log=lambda msg: err_console.print(Text(msg, style="dim"), highlight=False, soft_wrap=True),
        **_compress(compress, compress_bits, compress_density),
    )
    sizes = bundle["sizes"]
    console.print(
        f"wrote {output} ({bundle['arch']}: runtime {sizes['runtime_bytes'] / 1e6:.1f} MB, model "
        f"{sizes['model_bytes'] / 1e6:.1f} MB, runners {sizes['runner_bytes'] / 1e6:.2f} MB)"
        + (f" and {bundle['tar']}" if "tar" in bundle else "")
        + f"; run it with {output}/bin/tvmsqz-run or python3 {output}/bin/tvmsqz-run.py"
        + f"; manifest sha256 {bundle['model']['manifest_sha256']}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


@device_app.command("serve")
def device_serve(
    tracker: str = typer.Option(..., "--rpc-tracker", help="Tracker HOST:PORT to register with."),
    key: str = typer.Option(..., "--rpc-key", help="Device key, e.g. rpi4."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on (default: this machine only). TVM RPC has no authentication: "
        "anyone who reaches the port can run code here, so any other address prints a warning (docs/arm.md).",
    ),
    port: int = typer.Option(9090, "--port"),
    custom_addr: Optional[str] = typer.Option(
        None, "--custom-addr", help="The address the tracker hands to clients (e.g. 127.0.0.1 behind an SSH tunnel)."
    ),
) -> None:
    """Start the TVM RPC server on this board (runs until Ctrl-C)."""
    _api().serve_device(tracker=tracker, key=key, host=host, port=port, custom_addr=custom_addr)


@device_app.command("emulate")
def device_emulate(
    action: str = typer.Argument(..., help="start | stop | status"),
    count: int = typer.Option(2, "--count", "-n", min=1, help="Emulated aarch64 devices to start."),
    key: str = typer.Option("arm-emu", "--rpc-key"),
    tracker_port: int = typer.Option(9190, "--tracker-port"),
) -> None:
    """Start/stop emulated aarch64 devices (qemu-user, chroot) behind a local tracker."""
    info = _api().emulate_devices(action, count=count, key=key, tracker_port=tracker_port)
    if action == "start":
        console.print(
            f"\\[emulated] tracker 127.0.0.1:{info['tracker_port']}, key {key}, {count} device(s). "
            "Emulated timings are not ARM performance."
        )
    elif action == "stop":
        console.print("\\[emulated] stopped")
    else:
        console.print_json(json.dumps(info))


#: The longest message `_fail` prints (a linker's or TVM's whole log is not a message).
MAX_ERROR_CHARS = 600
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`message` as one printable line: line breaks and other control characters (a file name
    may hold a newline) become their escapes, and a message over `limit` characters is cut."""
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(message).strip())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _fail(message: str, code: int = 2) -> None:
    """The one error line: `error: MESSAGE`, never markup-interpreted, never wrapped, one line."""
    line = Text("error:", style="bold red")
    line.append(" " + one_line(message))
    err_console.print(line, highlight=False, soft_wrap=True, markup=False, emoji=False)
    sys.exit(code)


def _internal_error(exc: BaseException) -> str:
    """An exception no command anticipated (a TVM error, a bug) as one line; TVMSQZ_VERBOSE=1
    prints the traceback first."""
    _print_traceback(exc)
    if isinstance(exc, MemoryError):
        return "out of memory (the model or input is too large for this machine)"
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    detail = lines[-1] if lines else ""
    if "bad_alloc" in detail or "Cannot allocate memory" in detail:
        return "out of memory (the model or input is too large for this machine)"
    return f"internal error ({type(exc).__name__}): {detail} (rerun with TVMSQZ_VERBOSE=1 for the traceback)"


def _print_traceback(exc: BaseException) -> None:
    """With TVMSQZ_VERBOSE=1 (or TVMSQZ_DEBUG=1): the whole traceback, before the one line."""
    if any(os.environ.get(k, "") not in ("", "0") for k in ("TVMSQZ_VERBOSE", "TVMSQZ_DEBUG")):
        import traceback

        traceback.print_exception(exc)


def main() -> None:
    """Console entry point: every failure is one line on stderr and a non-zero exit code."""
    _setup_environment()
    try:
        rc = app(standalone_mode=False)
    except TvmsqzError as exc:
        if exc.__cause__ is not None:  # an internal compiler error: TVM's own traceback on request
            _print_traceback(exc.__cause__)
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except typer.TyperException as exc:  # usage errors (typer's click): unknown option, missing argument
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        _fail(f"{where}{message}", 2)
    except OSError as exc:  # a disk or permission problem the command did not anticipate
        from .fsutil import os_error

        _fail(str(os_error(exc.filename or "a file", exc)))
    except RecursionError:
        _fail("input nested too deeply")
    except Exception as exc:  # noqa: BLE001 - a TVM error or a bug: still one line (TVMSQZ_VERBOSE shows it)
        _fail(_internal_error(exc))
    if isinstance(rc, int) and rc:  # typer returns Exit codes (Ctrl-C: 130) instead of raising
        if rc == 130:
            _fail("interrupted", 130)
        sys.exit(rc)


if __name__ == "__main__":
    main()
