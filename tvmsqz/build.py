"""Relax IR -> passes -> tuned schedules -> executable -> artifact on disk.

`prepare` is shared by tuning and compiling: the workloads MetaSchedule tunes must be exactly
the ones the compiler later looks up, so both go through the same function with the same target.
"""

from __future__ import annotations

import gc
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import get_backend
from .database import load_database
from .errors import TvmsqzError
from .frontend import InputSpec
from .manifest import write_manifest
from .spec import TargetSpec


@dataclass
class BuildReport:
    """What the compiler did: which kernels exist and which ran with a tuned schedule."""

    kernels: list[str] = field(default_factory=list)
    tuned: list[str] = field(default_factory=list)
    untuned: list[str] = field(default_factory=list)
    database: str | None = None
    fused: bool = True
    seconds: float = 0.0
    activation_bytes: int = 0
    constant_bytes: int = 0
    warnings: list[str] = field(default_factory=list)  # one line each, printed by the CLI
    layout_fallback: str | None = None  # the pass that declined the blocked layout, if one did
    #: The tuner's estimate of the model latency: the database's run time of each applied record x
    #: the kernel's calls, summed (ms; None without a database or when no kernel has a record).
    #: Times are those of the machine the records were measured on, kernels measured alone.
    estimated_ms: float | None = None
    estimate_kernels: int = 0  # kernels (of `kernels`) the estimate covers


def resolve_fuse(spec: TargetSpec, fuse: bool | None) -> bool:
    """Whether to fuse the Fire modules: the user's choice, else the target's measured default."""
    return bool(spec.data.get("fuse", {}).get("enabled", True)) if fuse is None else fuse


def prepare(mod, spec: TargetSpec, *, fuse: bool | None = None, backend=None, report: BuildReport | None = None):
    """High-level Relax -> legalized Relax with one PrimFunc per kernel (the tuning input).

    The target's backend names its activation layout (`layout_passes`: NCHW[x]c on x86, nothing
    for NCHW targets). With `fuse` (the Fire modules without a concat copy), a blocked layout
    gets `concat_free.WriteIntoConcat` after fusion (each expand conv writes its own channel
    blocks of one buffer); an NCHW target gets `fuse.fuse_fire` (one kernel per Fire module).

    A graph the layout or fusion passes cannot handle (TVM fails inside one of them) is not the
    user's problem: it is prepared again in plain NCHW without Fire fusion (correct, slower),
    and `report.warnings` (else a Python warning) names the pass that declined it. Only when the
    plain pipeline fails as well is it an `InternalCompilerError` naming the failing pass.
    """
    from .passes.guard import Tracker, first_line
    from .quiet import quiet_stderr

    backend = backend or get_backend(spec)
    tracker = Tracker()
    layout = backend.layout_passes(spec)
    fire = resolve_fuse(spec, fuse)
    if not layout and not fire:
        with tracker.guard("the graph passes"):
            return _prepare(mod, spec, backend, layout=[], fire=False)
    message = where = None
    # TVM's C++ warns on stderr when a failed pass's half-built blocks are freed: that stays
    # inside, the user gets the one warning line below.
    with quiet_stderr():
        try:
            with tracker.context():
                return _prepare(mod, spec, backend, layout=layout, fire=fire)
        except Exception as exc:
            if isinstance(exc, (KeyboardInterrupt, MemoryError, RecursionError)):
                raise
            where = tracker.where("the layout and fusion passes")
            message = (
                f"{where} cannot handle this graph ({first_line(exc)[:160]}); it is compiled in plain NCHW "
                "without Fire fusion instead (same results, slower kernels)"
            )
        gc.collect()
    if report is not None:
        report.warnings.append(message)
        report.layout_fallback = where
    else:
        import warnings

        warnings.warn(message, RuntimeWarning, stacklevel=2)
    with tracker.guard("the NCHW graph passes"):
        return _prepare(mod, spec, backend, layout=[], fire=False)


def _prepare(mod, spec: TargetSpec, backend, *, layout: list, fire: bool):
    import tvm
    from tvm import relax

    after_fusion = []
    if fire and layout:
        from .passes.concat_free import WriteIntoConcat

        after_fusion.append(WriteIntoConcat())
    elif fire:
        from .passes.fuse import fuse_fire

        # Per-target fusion choices (e.g. folding the squeeze conv in) come from the target data,
        # chosen by measurement; tuning and compiling read the same ones, so workloads match.
        options = {k: v for k, v in spec.data.get("fuse", {}).items() if k != "enabled"}
        mod = fuse_fire(mod, **options)
    from .passes.batchnorm import fold_batchnorm
    from .passes.inference import strip_dropout
    from .passes.params import lift_weights
    from .passes.qdq import FoldQDQ

    with spec.target:
        seq = tvm.transform.Sequential(
            [
                FoldQDQ(),  # an int8 (QDQ) model: integer convs, requantisation as epilogues
                fold_batchnorm(),  # SqueezeNext exported with its BNs: into the conv weights and biases
                relax.transform.DecomposeOpsForInference(),
                strip_dropout(),  # Caffe2-era graphs: ConvertLayout cannot take R.nn.dropout's tuple
                relax.transform.CanonicalizeBindings(),
                *layout,
                relax.get_pipeline("zero"),
                *after_fusion,
                lift_weights,  # a --compress build: weight packing moves to a load-time function
                *backend.pre_tuning_passes(spec),
            ]
        )
        return seq(mod)


def kernel_names(mod) -> list[str]:
    """The kernels `main` runs (a `--compress` build's load-time weight packing is not one)."""
    from tvm import relax
    from tvm import tirx as tir

    called: set[str] = set()

    def visit(expr) -> None:
        if isinstance(expr, relax.GlobalVar):
            called.add(expr.name_hint)

    relax.analysis.post_order_visit(mod["main"], visit)
    return sorted(
        gv.name_hint for gv, func in mod.functions.items() if isinstance(func, tir.PrimFunc) and gv.name_hint in called
    )


def _is_scheduled(func) -> bool:
    return bool(func.attrs and "tirx.is_scheduled" in func.attrs and func.attrs["tirx.is_scheduled"])


def kernel_calls(mod, ops: tuple[str, ...] = ("relax.call_tir", "relax.call_tir_inplace")) -> dict[str, int]:
    """How often the model calls each kernel through `ops` (by default `call_tir` and
    `call_tir_inplace`), over every Relax function of `mod`."""
    import tvm
    from tvm import relax

    ops = tuple(tvm.ir.Op.get(op) for op in ops)
    calls: dict[str, int] = {}

    @relax.expr_functor.visitor
    class _Calls(relax.PyExprVisitor):
        def visit_call_(self, call) -> None:
            if any(call.op.same_as(op) for op in ops) and isinstance(call.args[0], tvm.ir.GlobalVar):
                calls[call.args[0].name_hint] = calls.get(call.args[0].name_hint, 0) + 1
            super().visit_call_(call)

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            _Calls().visit_expr(func)
    return calls


def tuner_estimate(mod, spec: TargetSpec, database) -> tuple[float | None, int]:
    """(ms, kernels): what the tuner predicts for `mod`, each kernel's best record x its calls.

    The same lookup `MetaScheduleApplyDatabase` makes (the kernel as a one-function module, its
    name as the workload name), so the estimate covers exactly the kernels that get a schedule.
    Set beside the measured model latency, it says how much the graph loses between kernels
    (`tvmsqz bench`, the summary of `tvmsqz tune`).
    """
    import tvm
    from tvm import tirx as tir

    from .database import median_run_s

    total, covered = 0.0, 0
    functions = {gv.name_hint: func for gv, func in mod.functions.items()}
    for name, n in kernel_calls(mod).items():
        func = functions.get(name)
        if not isinstance(func, tir.PrimFunc):
            continue
        one = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        try:
            record = database.query_tuning_record(one, spec.target, name)
        except Exception:  # noqa: BLE001 - a kernel the database cannot match is simply not covered
            record = None
        run_s = median_run_s([float(v) for v in record.run_secs]) if record is not None else None
        if run_s is not None:  # the median, as the tuner ranks them; None for a failed measurement
            total += run_s * n
            covered += 1
    return (round(total * 1e3, 6) if covered else None), covered


def apply_database(mod, spec: TargetSpec, database_dir: Path | None, report: BuildReport):
    """Replace every kernel that has a tuned record by its tuned schedule."""
    import tvm
    from tvm import relax
    from tvm import tirx as tir

    if database_dir is not None:
        database_dir = Path(database_dir)
        database = load_database(database_dir, spec)
        report.estimated_ms, report.estimate_kernels = tuner_estimate(mod, spec, database)
        with spec.target, database, tvm.transform.PassContext(opt_level=3):
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        report.database = str(database_dir)
    for gv, func in mod.functions.items():
        if isinstance(func, tir.PrimFunc) and gv.name_hint in report.kernels:
            (report.tuned if _is_scheduled(func) else report.untuned).append(gv.name_hint)
    report.tuned.sort()
    report.untuned.sort()
    return mod


#: Planned intermediate memory above which a build is refused unless `--max-memory` raises it.
DEFAULT_MAX_MEMORY = 2 << 30


def parse_size(text: str) -> int:
    """`512M`, `4G`, `1.5g`, `1000000` -> bytes (for `--max-memory`)."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    raw = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = raw[-1] if raw and raw[-1] in units else ""
    try:
        value = float(raw[: len(raw) - len(unit)])
    except ValueError:
        raise TvmsqzError(f"bad size {text!r}: expected e.g. 512M or 4G") from None
    if not math.isfinite(value) or value <= 0:
        raise TvmsqzError(f"bad size {text!r}: must be a positive number, e.g. 512M or 4G")
    size = value * units[unit]
    if not 1 <= size <= MAX_SIZE:
        raise TvmsqzError(f"bad size {text!r}: must be between 1 byte and {MAX_SIZE >> 40}T")
    return int(size)


#: The largest `--max-memory` taken (far above any machine's memory: a typo, not a limit).
MAX_SIZE = 1 << 50


def compile_module(
    mod,
    spec: TargetSpec,
    *,
    database: Path | None = None,
    fuse: bool | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    backend=None,
):
    """Compile an imported model for a target; returns (`relax.Executable`, `BuildReport`)."""
    import tvm

    from .passes.guard import Tracker
    from .passes.params import compose_loader, park, unpark

    start = time.perf_counter()
    backend = backend or get_backend(spec)
    fuse = resolve_fuse(spec, fuse)
    report = BuildReport(fused=fuse)
    mod = prepare(mod, spec, fuse=fuse, backend=backend, report=report)
    report.fused = fuse and report.layout_fallback is None
    report.kernels = kernel_names(mod)
    tracker = Tracker()
    with tracker.guard("applying the tuning database"):
        mod = apply_database(mod, spec, database, report)
    with tracker.guard("the post-database passes"), spec.target:
        mod, parked = park(mod)  # a --compress build's first-stage weight packing sits these out
        mod = unpark(tvm.transform.Sequential(backend.post_database_passes(spec))(mod), parked)
        mod = backend.default_schedule(mod, spec)
    with tracker.guard("the weight loader"):
        mod = compose_loader(mod)  # a --compress build: one load-time function for the weights
    report.activation_bytes = planned_activation_bytes(mod)
    report.constant_bytes = constant_bytes(mod)
    if report.activation_bytes > max_memory:
        raise TvmsqzError(
            f"the model needs {report.activation_bytes / 2**20:.0f} MiB of intermediate memory, over "
            f"the {max_memory / 2**20:.0f} MiB limit; pass --max-memory to raise it"
        )
    mod = with_input_shape(mod)
    with tracker.guard(f"code generation for {spec.name}", opt_level=3, config=backend.pass_config(spec)):
        executable = tvm.compile(mod, target=spec.target)
    report.seconds = time.perf_counter() - start
    return executable, report


def check_writable(path: Path, inputs: list[Path] = (), *, manifest: bool = False) -> None:
    """Fail before the (slow) compile when the output cannot be written or would replace an input.

    `inputs` are every file the command reads (model, target file, input array ...); with
    `manifest`, the manifest written beside the output (`PATH.json`) must not replace one either.
    Aliases are found by file identity (a hard link, `./t.json` and `t.json`, a symlink).
    """
    import os

    parent = path.parent if str(path.parent) else Path(".")
    outputs = [path] + ([Path(str(path) + ".json")] if manifest else [])
    for source in inputs:
        for out in outputs:
            if out.exists() and source.exists() and os.path.samefile(out, source):
                raise TvmsqzError(f"output {out} is also an input ({source}); choose another -o")
        if source.exists() and path.resolve() == Path(str(source) + ".json").resolve():
            raise TvmsqzError(f"output {path} would replace the manifest of {source}; choose another -o")
    if path.is_dir():
        raise TvmsqzError(f"output path {path} is a directory; give a file name like model.so")
    if not parent.is_dir():
        raise TvmsqzError(f"cannot write {path}: directory {parent} does not exist")
    try:  # os.access says yes to root everywhere; creating a file is the real test
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".tvmsqz-probe-"):
            pass
    except OSError as exc:
        raise TvmsqzError(f"cannot write {path}: directory {parent} is not writable ({exc.strerror})") from None


def export_artifact(
    executable,
    spec: TargetSpec,
    path: Path,
    *,
    model: str,
    input_spec: InputSpec,
    report: BuildReport,
    extra: dict | None = None,
    backend=None,
    extra_files: list[Path] = (),
) -> dict:
    """Write the `.so` and its manifest (what a device needs to check what it got)."""
    from .fsutil import check_free_space

    path = Path(path)
    check_writable(path)
    # LLVM ends the process (exit 1, nothing said) when the object file it writes hits a full disk:
    # refuse first, with room for the object, the linked `.so` and its temp copy (weights + code).
    check_free_space(path, 3 * (report.constant_bytes + CODE_BYTES))
    (backend or get_backend(spec)).export(executable, spec, path)
    return write_manifest(
        path,
        {
            "model": model,
            "target": spec.to_json(),
            "input": input_spec.to_json(),
            "fused": report.fused,
            "layout_fallback": report.layout_fallback,
            "database": report.database,
            "kernels": {"total": len(report.kernels), "tuned": report.tuned, "untuned": report.untuned},
            "tuner_estimate_ms": report.estimated_ms,
            "activation_bytes": report.activation_bytes,
            **(extra or {}),
        },
        extra_files=extra_files,
    )


def with_input_shape(mod):
    """Add `vm.INPUT_SHAPE_FUNC`, a Relax function returning `main`'s input shape, so that a `.so`
    without its manifest still tells the runtime what it takes (checked before the VM runs)."""
    from tvm import relax

    from .vm import INPUT_SHAPE_FUNC

    param = mod["main"].params[0]
    shape = [int(d) for d in param.ty.shape]
    bb = relax.BlockBuilder(mod)
    with bb.function(INPUT_SHAPE_FUNC, []):
        bb.emit_func_output(relax.ShapeExpr(shape))
    return bb.finalize()


#: Room for a model's compiled code in the artifact, beside its weights (SqueezeNet: under 2 MiB).
CODE_BYTES = 8 << 20


def constant_bytes(mod) -> int:
    """Bytes of the constants (weights) a compiled module embeds: most of its `.so`."""
    from tvm import relax

    const_type = type(relax.const(0.0))  # TVM 0.27 names no public class for it
    total = 0

    def count(expr) -> None:
        nonlocal total
        if isinstance(expr, const_type):
            data = expr.value
            total += int(np.prod([int(d) for d in data.shape], dtype=np.int64)) * np.dtype(str(data.dtype)).itemsize

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, count)
    return total


def planned_activation_bytes(mod) -> int:
    """Bytes of intermediate storage after Relax's static memory planning (weights excluded)."""
    import tvm
    from tvm import relax

    lowered = tvm.transform.Sequential(
        [
            relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(),
            relax.transform.CallTIRRewrite(),
            relax.transform.StaticPlanBlockMemory(),
        ]
    )(mod)
    alloc = tvm.ir.Op.get("relax.memory.alloc_storage")
    total = 0

    @relax.expr_functor.visitor
    class _Sizes(relax.PyExprVisitor):
        def visit_call_(self, call) -> None:
            nonlocal total
            if call.op.same_as(alloc) and isinstance(call.args[0], relax.ShapeExpr):
                total += int(call.args[0].values[0])
            super().visit_call_(call)

    for _, func in lowered.functions.items():
        if isinstance(func, relax.Function):
            _Sizes().visit_expr(func)
    return total
