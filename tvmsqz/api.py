"""tvmsqz's Python API: load a model once, then compile, tune, bench and load artifacts.

The CLI (`tvmsqz.cli`) is a thin layer over these functions, in the way tvmc's `load/compile/
tune/run` and MLC-LLM's `interface/` sit under their command lines: one code path. ::

    import tvmsqz
    model = tvmsqz.load_model("squeezenet1_1")          # or an .onnx path, an onnx.ModelProto,
    artifact = tvmsqz.compile(model, "x86")             # a torch.nn.Module + example input
    scores = artifact.run(x)                            # (1, 1000)
    artifact.export("sq11.so")                          # .so + manifest
    report = tvmsqz.bench(model, "x86")                     # latency, memory, parity vs the peers
    print(report.to_json())

Every function raises `tvmsqz.TvmsqzError` (one line, no traceback in the CLI) for bad input.
The target's backend supplies the hooks; a backend with a pipeline of its own (VTA) names it in
its `pipeline` attribute, the TVM-compiled families use `flow.TVM_PIPELINE`.
"""

from __future__ import annotations

import atexit
import json
import operator
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifact import Artifact, ArtifactBase
from .errors import TvmsqzError
from .spec import TargetSpec
from .vm import check_input, prefer_runtime_lib

if TYPE_CHECKING:  # the frontend imports onnx: `tvmsqz run` (runtime side) never needs it
    from .frontend import Model

__all__ = [
    "Artifact",
    "BenchReport",
    "Model",
    "Target",
    "bench",
    "check_input",
    "check_writable",
    "compile",
    "artifact_files",
    "default_database_note",
    "emulate_devices",
    "explore",
    "image_inputs",
    "list_models",
    "list_targets",
    "load",
    "load_model",
    "package",
    "prefer_runtime_lib",
    "resolve_target",
    "serve_device",
    "target_files",
    "top_classes",
    "tune",
]

#: A target as the API takes it: a name from `tvmsqz targets`, a target file path, or a resolved spec.
Target = str | Path | TargetSpec


def resolve_target(target: Target) -> TargetSpec:
    """The resolved `TargetSpec` of a target name, target file path or spec (returned as is)."""
    from .targets import check_tvm_target, get_target

    if isinstance(target, TargetSpec):
        return target
    spec = get_target(str(target))
    if spec.tvm_config is not None:  # what TVM refuses in the file: one line now, not mid-compile
        check_tvm_target(spec, str(target))
    return spec


def _pipeline(spec: TargetSpec):
    """(backend, pipeline) of a target: the backend's own pipeline, or the shared TVM one."""
    from .backends import get_backend
    from .flow import TVM_PIPELINE

    backend = get_backend(spec)
    return backend, getattr(backend, "pipeline", None) or TVM_PIPELINE


def load_model(
    source: Any,
    *,
    batch: int = 1,
    input_shape: str | tuple | None = None,
    example_input: Any = None,
    name: str | None = None,
    import_now: bool = True,
) -> Model:
    """Load a model once, for `compile`, `tune` and `bench`.

    `source` is a built-in name (`tvmsqz models`), an `.onnx` path, a Deep Compression `.net`
    path, an `onnx.ModelProto`, or a `torch.nn.Module` with `example_input` (a tensor or a shape
    tuple: the module is exported to ONNX at that static shape). `batch` sets the batch of
    built-in models and of files with a dynamic batch; `input_shape` (`"data:1,3,224,224"` or a
    tuple) names a shape the file does not give; `name` names a proto or module source (a path
    or a built-in keeps its own). With `import_now` (the default) the Relax import happens here,
    so a model TVM cannot import fails at once; without it, on first use (VTA never needs it).
    """
    from .frontend import INPUT_BOUNDS, model_from_onnx
    from .frontend import load_model as load_source

    low, high = INPUT_BOUNDS["batch"]
    try:
        ok = not isinstance(batch, bool) and low <= operator.index(batch) <= high
    except TypeError:
        ok = False
    if not ok:
        raise TvmsqzError(f"batch must be an integer in {low}..{high}, not {batch!r}")
    batch = operator.index(batch)
    if isinstance(source, (str, Path)):
        return load_source(str(source), batch=batch, input_shape=input_shape, import_now=import_now)
    import onnx

    if isinstance(source, onnx.ModelProto):
        return model_from_onnx(
            source,
            name=name or source.graph.name or "onnx-model",
            batch=batch,
            input_shape=input_shape,
            import_now=import_now,
        )
    if _is_torch_module(source):
        from .models import export_onnx

        if example_input is None:
            raise TvmsqzError("a torch.nn.Module needs example_input= (a tensor or an input shape) to be exported")
        try:
            shape = tuple(int(d) for d in getattr(example_input, "shape", example_input))
        except (TypeError, ValueError):
            raise TvmsqzError(f"example_input must be a tensor or a shape tuple, not {example_input!r}") from None
        if len(shape) != 4:
            raise TvmsqzError(f"example_input must be a 4-D NCHW image batch, got shape {list(shape)}")
        from .frontend import check_input_bounds

        check_input_bounds("example_input", shape)
        try:
            proto = export_onnx(source, shape)
        except Exception as exc:  # noqa: BLE001 - torch's exporter raises many types; all mean "cannot export"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TvmsqzError(f"cannot export the torch module to ONNX: {first}") from None
        return model_from_onnx(proto, name=name or type(source).__name__, batch=batch, import_now=import_now)
    raise TvmsqzError(
        f"cannot load a model from a {type(source).__name__}: give a built-in name, an .onnx or .net "
        "path, an onnx.ModelProto or a torch.nn.Module"
    )


def _is_torch_module(obj: Any) -> bool:
    """Whether `obj` is a torch module, without importing torch for the other kinds of source."""
    return any(f"{c.__module__}.{c.__name__}" == "torch.nn.modules.module.Module" for c in type(obj).__mro__)


def _at_precision(
    loaded: Model,
    spec: TargetSpec,
    backend,
    precision: str | None,
    calibrate: Any = None,
    method: str | None = None,
    fp32_layers: tuple[str, ...] | list[str] = (),
    log=None,
) -> tuple[Model, TargetSpec]:
    """(model, spec) at `precision` (None: the target's default, its backend's first).

    int8 on a target the shared TVM pipeline compiles: the model is quantized here by the
    project's quantizer (`quant.qdq`, calibrated on `calibrate`: a folder of images, a .npy/.npz
    of inputs, None for the built-in photos) into a QDQ graph, unless it is QDQ already (ONNX
    Runtime's `quantize_static`, NNCF: imported as it is); the spec gains the target's `int8`
    section (`TargetSpec.for_precision`). A backend with a pipeline of its own (VTA) quantizes
    inside it."""
    allowed = tuple(getattr(backend, "PRECISIONS", ("fp32",)))
    chosen = precision or ("int8" if loaded.quantized and "int8" in allowed else allowed[0])
    if chosen not in ("fp32", "int8"):
        raise TvmsqzError(f"precision must be fp32 or int8, not {chosen!r}")
    if chosen not in allowed:
        raise TvmsqzError(f"target {spec.name} compiles {' or '.join(allowed)}, not {chosen}")
    if chosen == "fp32" and loaded.quantized:
        raise TvmsqzError(f"{loaded.name} is an int8 (QDQ) model: compile it with --precision int8")
    own_pipeline = getattr(backend, "pipeline", None) is not None
    if chosen == "fp32" or own_pipeline:
        if calibrate is not None and not own_pipeline:
            raise TvmsqzError("--calibrate applies to --precision int8 only")
        return loaded, spec
    if loaded.quantized:
        if calibrate is not None:
            raise TvmsqzError(f"{loaded.name} is quantized already (QDQ); --calibrate does not apply")
    else:
        from .quant.calibrate import load_calibration
        from .quant.qdq import quantize_model

        inputs, source = load_calibration(calibrate, loaded.preprocess, int(loaded.input.shape[2]))
        if log is not None:
            log.print(f"[dim]quantizing {loaded.name} to int8 ({method or 'mse'} calibration on {source})[/dim]")
        loaded = quantize_model(loaded, inputs, method=method or "mse", fp32_layers=tuple(fp32_layers))
        loaded.quant_report["calibration"] = source
    return loaded, spec.for_precision("int8")


def _as_model(model: Model | Any, **load_options: Any) -> Model:
    from .frontend import Model

    return model if isinstance(model, Model) else load_model(model, **load_options)


class _Scratch:
    """A temp folder for artifacts compiled without an output path; removed at interpreter exit."""

    folder: Path | None = None

    @classmethod
    def path(cls, name: str) -> Path:
        if cls.folder is None:
            cls.folder = Path(tempfile.mkdtemp(prefix="tvmsqz-artifacts-"))
            atexit.register(shutil.rmtree, cls.folder, True)
        folder = Path(tempfile.mkdtemp(dir=cls.folder))
        return folder / name


def compile(
    model: Model | Any,
    target: Target = "x86",
    *,
    output: str | Path | None = None,
    database: str | Path | None = None,
    tuning: bool = True,
    fuse: bool | None = None,
    max_memory: str | int | None = None,
    precision: str | None = None,
    calibrate: Any = None,
    calibration_method: str | None = None,
    fp32_layers: tuple[str, ...] | list[str] = (),
    preprocess: str | None = None,
    log=None,
    **options: Any,
) -> Artifact:
    """Compile `model` for `target` and return the loaded `Artifact`.

    `output` (a `.so` path) keeps the artifact and its manifest there; without it they live in
    a temp folder until the interpreter exits (`artifact.export(path)` keeps them). `database`
    overrides the default tuning database, `tuning=False` compiles untuned kernels, `fuse`
    overrides the target's choice of Fire-module fusion, `max_memory` (e.g. "512M") refuses
    models whose planned intermediate memory is larger. A target whose artifacts do not run on
    this host (ARM, CUDA without a GPU) is compiled and written, but not loaded: the manifest is
    then returned inside an `UnloadedArtifact`.

    `precision` "int8" quantizes the model (`calibrate`: a folder of jpg/png photos, a .npy/.npz
    of input tensors, or None for the built-in photos; `calibration_method`: mse, minmax,
    percentile or entropy; `fp32_layers`: conv names, or "first"/"last", kept fp32); a QDQ model
    (ONNX Runtime, NNCF) compiles at int8 as it is. The artifact's input and output stay fp32.

    `preprocess` ("torchvision" or "caffe") is recorded in the manifest for `tvmsqz run --image`
    (default: the built-in model's own convention, torchvision for a user's ONNX file).
    """
    from .build import check_writable

    spec = resolve_target(target)
    loaded = _as_model(model)
    if preprocess is not None:
        from .images import CONVENTIONS

        if preprocess not in CONVENTIONS:
            raise TvmsqzError(f"unknown --preprocess {preprocess!r}: expected one of {', '.join(CONVENTIONS)}")
        loaded.convention = preprocess
    backend, pipe = _pipeline(spec)
    loaded, spec = _at_precision(loaded, spec, backend, precision, calibrate, calibration_method, fp32_layers, log)
    path = Path(output) if output is not None else _Scratch.path(_file_name(loaded.name) + ".so")
    inputs = ([Path(loaded.source)] if loaded.source else []) + target_files(target)
    check_writable(path, inputs=inputs, manifest=True)
    pipe.compile(
        loaded,
        spec,
        backend,
        path,
        database=Path(database) if database else None,
        tuning=tuning,
        fuse=fuse,
        max_memory=max_memory,
        log=log,
        **options,
    )
    if not backend.runs_on_host(spec):
        return UnloadedArtifact(path)
    return load(path)


def load(path: str | Path, *, warn=None) -> Artifact:
    """Load an artifact written by `compile` (verified against its manifest first)."""
    from .runtime import load as load_artifact

    return load_artifact(path, warn=warn)


def _file_name(model_name: str) -> str:
    """A file stem for a scratch artifact, from the model's name (a built-in name or a path)."""
    stem = Path(str(model_name)).stem or "model"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:64] or "model"


class UnloadedArtifact(ArtifactBase):
    """An artifact for another machine (cross-compiled ARM, CUDA without a GPU here): its files
    and manifest, exportable and packageable, but not runnable in this process."""

    def __init__(self, path: Path):
        from .manifest import read_manifest

        self.path = Path(path)
        self.manifest = read_manifest(self.path) or {}

    def _refuse(self, *_: Any, **__: Any):
        target = (self.manifest.get("target") or {}).get("name", "its target")
        raise TvmsqzError(
            f"{self.path.name} was compiled for {target}, which does not run on this host; "
            "package it (`tvmsqz package`) and run it there"
        )

    run = timer = time = profile = _refuse


def tune(
    model: Model | Any,
    target: Target = "x86",
    *,
    trials: int | None = None,
    output: str | Path | None = None,
    resume: bool = False,
    time_budget: float | str | None = None,
    cold: bool = False,
    fuse: bool | None = None,
    space: str | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    precision: str | None = None,
    calibrate: Any = None,
    calibration_method: str | None = None,
    fp32_layers: tuple[str, ...] | list[str] = (),
    measure: str | None = None,
    model_time: bool | None = None,
    log=None,
    **options: Any,
) -> dict:
    """Auto-tune every kernel of `model` for `target`; returns the run's summary (records,
    kernels tuned, seconds, `database`: the folder written, `in_graph`: the compiled model's
    time here beside the tuner's estimate).

    `trials` and `time_budget` (seconds, or a duration such as "90s", "30m", "1.5h") bound the run,
    whichever comes first (default 64 trials when neither is given); `output` defaults to the user
    data folder, never the shipped schedules; `resume` continues a folder; `cold` skips the warm
    start from shipped records. `precision` and the calibration options as in `compile` (int8
    kernels are tuned into their own database: the int8 target differs from the fp32 one).
    `measure`: "warm" or "flush" timing of candidates (default: the target's); `model_time`
    (default on, `TVMSQZ_MODEL_TIME=0`/false/no/off turns the default off): time the compiled model after
    tuning, on targets that run here.
    """
    from .tuning.budget import DEFAULT_TRIALS, parse_duration

    if isinstance(time_budget, str):
        time_budget = parse_duration(time_budget)
    if space not in (None, "blocked", "generic"):
        raise TvmsqzError(f"space must be 'blocked' or 'generic', not {space!r}")
    spec = resolve_target(target)
    loaded = _as_model(model)
    backend, pipe = _pipeline(spec)
    loaded, spec = _at_precision(loaded, spec, backend, precision, calibrate, calibration_method, fp32_layers, log)
    if trials is None and time_budget is None:
        trials = DEFAULT_TRIALS
    extra = {
        key: value
        for key, value in (
            ("time_budget", time_budget),
            ("cold", cold),
            ("space", space),
            ("fuse", fuse),
            ("rpc_tracker", rpc_tracker),
            ("rpc_key", rpc_key),
            ("measure", measure),
        )
        if value is not None and not (key == "cold" and value is False)  # `fuse=False` is a choice
    }
    if model_time is None:
        model_time = os.environ.get("TVMSQZ_MODEL_TIME", "1").strip().lower() not in ("0", "false", "no", "off")
    if not model_time:
        extra["model_time"] = False
    return pipe.tune(
        loaded,
        spec,
        backend,
        trials=trials,
        output=Path(output) if output else None,
        resume=resume,
        log=log,
        **extra,
        **options,
    )


def explore(
    target: Target = "x86",
    *,
    output: str | Path,
    time_budget: float | str | None = None,
    points: int | None = None,
    per_point: float | str | None = None,
    trials: int | None = None,
    say=None,
) -> dict:
    """Measure SqueezeNet and SqueezeNext design points on `target` (see `tvmsqz.explore`):
    parameters, MACs, weight bytes and the target's latency per point, into `output`
    (`explore.json`, `explore.png`; a rerun resumes). `time_budget` bounds the whole run (points
    are measured most informative first), `points` caps how many, `per_point` caps one point's
    tuning (default: an equal share of the budget left), `trials` caps its tuning trials.
    `say(line)` receives progress lines."""
    from . import explore as exploration
    from .tuning.budget import parse_duration

    if isinstance(time_budget, str):
        time_budget = parse_duration(time_budget)
    if isinstance(per_point, str):
        per_point = parse_duration(per_point)
    if points is not None and points < 1:
        raise TvmsqzError(f"points must be at least 1, not {points}")
    spec = resolve_target(target)
    backend, pipe = _pipeline(spec)
    if not hasattr(pipe, "measure"):
        raise TvmsqzError(f"target {spec.name} cannot measure design points")
    try:
        Path(output).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TvmsqzError(f"cannot create {output}: {exc.strerror or exc}") from None
    check_writable(Path(output) / exploration.RESULTS_FILE)
    return exploration.run(
        spec,
        backend,
        pipe,
        load_model,
        Path(output),
        time_budget=time_budget,
        max_points=points,
        per_point=per_point,
        trials=trials,
        say=say or (lambda line: None),
    )


@dataclass
class BenchReport:
    """What `tvmsqz bench` measured: `.data` is the JSON report (keys documented in README)."""

    data: dict[str, Any]
    spec: TargetSpec | None = field(default=None, repr=False)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.data, indent=indent)

    def print(self, console=None) -> None:
        """The human-readable tables, as the target's pipeline prints them."""
        from rich.console import Console

        _, pipe = _pipeline(self.spec) if self.spec is not None else (None, None)
        if pipe is None:
            from .flow import TVM_PIPELINE

            pipe = TVM_PIPELINE
        pipe.print_report(self.data, console or Console())


def bench(
    model: Model | Any,
    target: Target = "x86",
    *,
    repeat: int = 50,
    database: str | Path | None = None,
    tuning: bool = True,
    fuse: bool | None = None,
    with_torch: bool = True,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    precision: str | None = None,
    calibrate: Any = None,
    calibration_method: str | None = None,
    fp32_layers: tuple[str, ...] | list[str] = (),
    log=None,
    **options: Any,
) -> BenchReport:
    """Compile and measure `model` on `target` against the peers (ONNX Runtime, OpenVINO, ncnn,
    PyTorch), each runtime in its own process: latency at the host's cores and at one thread,
    memory, accuracy parity, per-kernel profile.

    `model` may also be a compiled `.so` path (with its manifest): it is then measured as it is,
    on the RPC device given by `rpc_tracker`/`rpc_key` or on this host.
    """
    spec = resolve_target(target)
    backend, pipe = _pipeline(spec)
    allowed = tuple(getattr(backend, "PRECISIONS", ("fp32",)))
    if precision is not None and precision not in allowed:
        raise TvmsqzError(f"target {spec.name} compiles {' or '.join(allowed)}, not {precision}")
    prebuilt = None
    if isinstance(model, (str, Path)) and str(model).endswith(".so"):
        prebuilt = Path(model)
        loaded = _prebuilt_model(prebuilt, spec)
    else:
        loaded = _as_model(model)
    extra = {
        key: value
        for key, value in (
            ("prebuilt", prebuilt),
            ("rpc_tracker", rpc_tracker),
            ("rpc_key", rpc_key),
            ("fuse", fuse),
            ("database", Path(database) if database is not None else None),
            ("precision", precision),
            ("calibrate", calibrate),
            ("calibration_method", calibration_method),
            ("fp32_layers", tuple(fp32_layers) or None),
        )
        if value is not None
    }
    data = pipe.bench(
        loaded, spec, backend, repeat=repeat, tuning=tuning, with_torch=with_torch, log=log, **extra, **options
    )
    return BenchReport(data, spec)


def _prebuilt_model(so_path: Path, spec: TargetSpec) -> Model:
    """The source model of a compiled artifact, from its manifest (bench compares it with peers)."""
    from .manifest import prebuilt_manifest

    manifest = prebuilt_manifest(so_path, spec.name)
    shape = manifest["input"]["shape"]
    return load_model(manifest["model"], batch=shape[0], input_shape=",".join(map(str, shape)))


def list_models() -> list[dict[str, Any]]:
    """The built-in models as JSON-able rows (name, description, input shape, preprocessing, ...)."""
    from .models import list_models as registry

    return [
        {
            "name": m.name,
            "description": m.description,
            "input_shape": list(m.input_shape),
            "preprocess": m.preprocess,
            "source": m.source,
            "trained": m.trained,
        }
        for m in registry()
    ]


def list_targets() -> list[dict[str, Any]]:
    """The targets of `targets/` (name, family, description, what an alias resolves to) plus
    `user_schedules`: the folder `tune` writes to without an output."""
    from .database import user_tuning_dir
    from .targets import get_target
    from .targets import list_targets as rows

    out = []
    for row in rows():
        try:
            row = {**row, "user_schedules": str(user_tuning_dir(get_target(row["name"])))}
        except TvmsqzError:  # a target that cannot resolve here (no GPU tools, ...) still lists
            pass
        out.append(row)
    return out


def package(
    artifact: str | Path,
    output: str | Path,
    *,
    tar: bool = False,
    strip: bool = True,
    runtime_from: str | Path | None = None,
    log=None,
    compress: bool = False,
    compress_bits: int | None = None,
    compress_density: float | None = None,
) -> dict[str, Any]:
    """A runtime-only bundle of a compiled artifact (model, TVM runtime libraries, C++ and Python
    runners, labels, a manifest with sha256): what a device needs without TVM installed.

    With `compress`, an artifact whose weights are inside is compiled again from the source model
    its manifest names, for the same target and database, with its weights in a weight file
    (`compile --compress`), and that is bundled; an artifact compiled with `--compress` is bundled
    as it is."""
    from .bundle import build_bundle
    from .fsutil import temp_dir

    artifact = Path(artifact)
    if not compress and (compress_bits is not None or compress_density is not None):
        raise TvmsqzError("--compress-bits and --compress-density need --compress")
    with temp_dir("tvmsqz-package-") as tmp:
        if compress:
            artifact = _compressed_for_package(artifact, tmp, compress_bits, compress_density, log)
        return build_bundle(
            artifact,
            Path(output),
            tar=tar,
            strip=strip,
            runtime_from=Path(runtime_from) if runtime_from else None,
            log=log,
        )


def _compressed_for_package(artifact: Path, tmp: Path, bits, density, log) -> Path:
    """`package --compress`: the artifact itself when it has a weight file (and no new bits or
    density are asked), else the same model compiled again with `--compress` into `tmp`."""
    from .manifest import read_manifest

    if not artifact.is_file():
        raise TvmsqzError(f"no such file: {artifact}")
    manifest = read_manifest(artifact)
    if manifest is None:
        raise TvmsqzError(f"{artifact} has no manifest ({artifact.name}.json): a bundle needs its input and target")
    if "weights" in manifest and bits is None and density is None:
        return artifact
    if manifest.get("precision") == "int8":
        raise TvmsqzError(
            f"{artifact.name} is int8: its calibration cannot be repeated here; "
            "compile it with --precision int8 --compress and package that"
        )
    spec = resolve_target(manifest["target"]["name"])
    model = _prebuilt_model(artifact, spec)
    database = manifest.get("database")
    if log is not None:
        log(f"compiling {model.name} for {spec.name} again with --compress (the weights leave the .so)")
    out = tmp / artifact.name
    compile(
        model,
        spec,
        output=out,
        database=database if database and Path(database).is_dir() else None,
        tuning=database is not None,
        fuse=manifest.get("fused"),
        compress=True,
        compress_bits=bits,
        compress_density=density,
    )
    return out


def serve_device(
    *, tracker: str, key: str, host: str = "127.0.0.1", port: int = 9090, custom_addr: str | None = None
) -> None:
    """Run TVM's RPC server on this board, registered with `tracker` under `key` (blocks).

    It listens on `host`, this machine only by default: TVM RPC has no authentication, so a
    server on another address (which prints a warning) runs code for anyone who reaches it."""
    from .device import serve

    serve(tracker=tracker, key=key, host=host, port=port, custom_addr=custom_addr)


def emulate_devices(action: str, *, count: int = 2, key: str = "arm-emu", tracker_port: int = 9190) -> dict:
    """Start, stop or report emulated aarch64 devices (qemu-user) behind a local RPC tracker."""
    from . import device

    if action == "start":
        return device.emulate_start(count=count, key=key, tracker_port=tracker_port)
    if action == "stop":
        return {"stopped": device.emulate_stop()}
    if action == "status":
        return device.emulate_status()
    raise TvmsqzError(f"unknown action {action!r}: use start, stop or status")


def default_database_note(target: Target) -> str | None:
    """Why the default database applied, when its folder alone does not say (the user's own
    tuning output over the shipped one, a per-CPU database passed over); None otherwise."""
    from .database import default_database_note as note

    return note(resolve_target(target))


def top_classes(y, top: int = 5, index: int = 0) -> list[tuple[int, int, str, float]]:
    """(rank, class, name, score) of the `top` classes of sample `index` of output `y`, with
    ImageNet names for 1000-class outputs."""
    from .runtime import top_k

    names = None
    if y.reshape(y.shape[0], -1).shape[1] == 1000:
        from .images import class_names

        names = class_names()
    ranked = enumerate(top_k(y, top, index), 1)
    return [(rank, cls, names[cls] if names else "", score) for rank, (cls, score) in ranked]


def image_inputs(paths, manifest: dict, convention: str | None = None) -> tuple[list, str]:
    """Photos (jpg, png, anything Pillow reads) as the artifact's input tensors, one (1, ...)
    array per photo, preprocessed as its manifest records (`preprocess`: the convention and
    size; a manifest without it, from an older tvmsqz or a user's ONNX file: torchvision at the
    input's size). `convention` overrides the recorded one. Returns (arrays, convention used)."""
    from .images import image_input

    spec = manifest.get("input") or {}
    shape = spec.get("shape")
    if not shape:
        raise TvmsqzError("the artifact has no manifest input shape; --image needs one")
    layout = spec.get("layout", "NCHW")
    recorded = manifest.get("preprocess") or {}
    convention = convention or recorded.get("convention") or "torchvision"
    size = int(recorded.get("size") or (shape[1] if layout == "NHWC" else shape[2]))
    dtype = spec.get("dtype", "float32")
    return [image_input(p, convention, size, layout=layout, dtype=dtype) for p in paths], convention


def check_writable(path: str | Path, inputs: list[str | Path] = (), *, manifest: bool = False) -> None:
    """Fail before slow work when `path` (and with `manifest` its `PATH.json`) cannot be written
    or would replace one of `inputs`."""
    from .build import check_writable as check

    check(Path(path), inputs=[Path(i) for i in inputs], manifest=manifest)


def artifact_files(path: str | Path) -> list[Path]:
    """The artifact and every file its manifest lists (sidecars): what no output may replace."""
    from .manifest import read_manifest

    path = Path(path)
    manifest = read_manifest(path) if path.is_file() else None
    listed = [path.with_name(e["file"]) for e in (manifest or {}).get("files", []) if isinstance(e, dict)]
    return [path, *listed]


def target_files(target: Target) -> list[Path]:
    """The target file a `--target` names when it is a path (`./t.json`): an input like the model."""
    if isinstance(target, str | Path) and (str(target).endswith(".json") or "/" in str(target)):
        return [Path(target)]
    return []


def __getattr__(name: str):
    """`api.Model` without importing the frontend (and onnx) until someone asks for it."""
    if name == "Model":
        from .frontend import Model

        return Model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
