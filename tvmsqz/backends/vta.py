"""VTA family: int8 SqueezeNet on the Versatile Tensor Accelerator, run on tvmsqz's simulator.

The VTA flow is not TVM's build flow: `tvmsqz.vta` quantises the model (with `tvmsqz.quant`),
lowers every convolution and max-pool to VTA instruction streams (a `.vta.npz` sidecar) and
compiles the rest (for SqueezeNet: the first conv's im2col layout step, global average pooling,
softmax) for the host CPU with TVM. `bench` reports per layer where it ran, simulated cycles,
DRAM bytes and MACs per cycle against the GEMM core's peak.

This backend is its one door: `pipeline` (compile, bench, tune, print_report; the API calls it
as it calls the shared TVM pipeline for the other families) and `load_artifact` (what
`runtime.load` calls). Everything comes from the `TargetSpec` it is given: the hardware
configuration from `spec.data` ("vta", "cycle_model"), the host segments' CPU target from
`spec.data["host"]`, the shipped tiling database from `spec.schedules_dir`, so a target file
of its own (`--target my-vta.json`, other LOG_BLOCK, buffer sizes or clock) is honoured.
Like every backend it imports none of `api`, `flow`, `build`, `bench` and `tune`, nor `targets`.
"""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import TvmsqzError
from ..spec import TargetSpec, host_cpu_flags

#: Whether this family's artifacts load through the TVM runtime library alone: the VTA loader
#: builds Relax VMs for its host segments through `tvm.relax`.
RUNTIME_ONLY = False

#: Precisions `--precision` accepts here, the default first: int8 only: VTA is an int8
#: accelerator with a quantizer of its own (`tvmsqz.vta.quant`).
PRECISIONS = ("int8",)


def resolve_target_data(raw: dict) -> dict:
    """Check the hardware configuration when the target resolves, so that a bad target file is
    one line naming the problem before any work (the data itself is used as it is)."""
    from ..vta.config import config_from_target

    config_from_target(raw)
    return raw


def _host(spec: TargetSpec) -> dict:
    """The host segments' CPU target, as `targets.get_target` resolved the target file's "host"
    (`host_target`: {name, tvm, requires_cpu_flags, cc})."""
    host = spec.data.get("host_target")
    if not isinstance(host, dict):
        raise TvmsqzError(f'target {spec.name!r} names no resolved host CPU target (a "host": "x86" entry)')
    return host


def runs_on_host(spec: TargetSpec) -> bool:
    """The simulator runs anywhere; the host segments are native code for the target's host CPU,
    which must be this machine's kind (x86-64) with the CPU flags that target requires."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        host = _host(spec)
    except TvmsqzError:
        return False
    return not host["cc"] and set(host["requires_cpu_flags"]) <= host_cpu_flags()


def tiling_db(spec: TargetSpec) -> Path | None:
    """The shipped tiling database of a VTA target (`schedules/vta/tilings.json` for `vta`)."""
    from ..vta.tune import shipped_tiling_db

    return shipped_tiling_db(spec.schedules_dir, spec.data)


def _refuse(spec: TargetSpec, given: dict[str, Any]) -> None:
    """Options of the TVM flow that mean nothing here are refused, not silently ignored.

    `given`: option name -> (value, default); one error line names every one that was set."""
    names = {"fuse": "--fuse/--no-fuse"}
    flags = [
        names.get(key, f"--{key.replace('_', '-')}")
        for key, (value, default) in given.items()
        if value is not None and value != default
    ]
    if flags:
        raise TvmsqzError(f"target {spec.name} does not take {', '.join(flags)} (it runs batch 1 on the simulator)")


def _onnx_of(model, spec: TargetSpec):
    """The model's ONNX graph at the input shape the API resolved (batch 1)."""
    shape = tuple(model.input.shape)
    if shape[0] != 1:
        raise TvmsqzError(f"target {spec.name} does not take --batch {shape[0]} (it runs batch 1 on the simulator)")
    proto = model.onnx
    inputs = [i for i in proto.graph.input if i.name == model.input.name]
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    if inputs and tuple(d.dim_value for d in dims) != shape:
        import onnx

        proto = onnx.ModelProto()
        proto.CopyFrom(model.onnx)
        graph_input = next(i for i in proto.graph.input if i.name == model.input.name)
        for d, n in zip(graph_input.type.tensor_type.shape.dim, shape):
            d.ClearField("dim_param")
            d.dim_value = int(n)
    return proto


def _compile(model, spec: TargetSpec, output: Path, *, tuning: bool) -> dict:
    """`compile_vta` with everything taken from the spec; returns its summary."""
    from ..vta import compile_vta
    from ..vta.host import host_target

    db = tiling_db(spec) if tuning else None  # no shipped schedules folder: default tilings
    return compile_vta(
        _onnx_of(model, spec),
        output,
        config=spec.data,
        host_target=host_target(_host(spec)),
        tiling_db=db if db is not None else False,
        name=model.name,
        info=model.info,
        embed_fp32=model.source is None,
    )


class VTAPipeline:
    """compile / bench / tune for the VTA family (the API's pipeline protocol; see
    `tvmsqz.backends`): quantise, lower to VTA programs, simulate."""

    name = "vta"

    def compile(
        self,
        model,
        spec: TargetSpec,
        backend: ModuleType,
        output: Path,
        *,
        database: Path | None = None,
        tuning: bool = True,
        fuse: bool | None = None,
        max_memory: str | int | None = None,
        log=None,
        **options: Any,
    ) -> dict:
        """Write `output` (host code), its `.vta.npz` sidecar and the manifest; returns the manifest.

        `tuning=False` uses default tilings instead of the target's tiling database."""
        from ..manifest import write_manifest
        from ..vta import sidecar_path

        _refuse(
            spec,
            {
                "database": (database, None),
                "fuse": (fuse, None),
                "max_memory": (max_memory, None),
                **{key: (value, None) for key, value in options.items()},
            },
        )
        output = Path(output)
        summary = _compile(model, spec, output, tuning=tuning)
        sidecar = sidecar_path(output)
        manifest = write_manifest(
            output,
            {
                "model": model.name,
                "target": spec.to_json(),
                "input": model.input.to_json(),
                "sidecar": {"file": sidecar.name},
                "vta": {k: summary[k] for k in ("macs_offloaded", "macs_total", "mac_offload_share", "note")},
                "compile_seconds": summary["seconds"]["total"],
                "note": (
                    f"{summary['vta_layers']} layers on the VTA simulator ({1 << summary['config']['LOG_BLOCK']}x"
                    f"{1 << summary['config']['LOG_BLOCK']} GEMM core), {summary['host_segments']} host segments"
                ),
            },
            extra_files=[sidecar],
        )
        if log is not None:
            sources = [t["source"] for t in summary["tilings"].values()]
            db = tiling_db(spec) if tuning else None
            log.print(
                f"[dim]tilings: {sources.count('database')}/{len(sources)} VTA layers from "
                f"{db if db is not None else 'no database'}, the others default[/dim]",
                highlight=False,
            )
        return manifest

    def bench(
        self,
        model,
        spec: TargetSpec,
        backend: ModuleType,
        *,
        repeat: int = 50,
        tuning: bool = True,
        with_torch: bool = True,
        log=None,
        prebuilt: Path | None = None,
        **options: Any,
    ) -> dict:
        """Compile (or take `prebuilt`), run the bundled photos on the simulator and compare with
        fp32 (see `vta.bench_vta`); `repeat` and `with_torch` do not apply (one simulated run per
        photo; the reference is the fp32 model in ONNX Runtime)."""
        from ..vta import bench_vta

        _refuse(spec, {key: (value, None) for key, value in options.items()})
        fp32 = _onnx_of(model, spec).SerializeToString()
        if prebuilt is not None:
            report = bench_vta(load_artifact_checked(Path(prebuilt), spec), fp32_model=fp32)
        else:
            with tempfile.TemporaryDirectory(prefix="tvmsqz-vta-") as tmp:
                so = Path(tmp) / "model.so"
                _compile(model, spec, so, tuning=tuning)
                report = bench_vta(so, fp32_model=fp32)
        report["model"] = model.name
        report["target"] = spec.name
        return report

    def measure(
        self,
        model,
        spec: TargetSpec,
        backend: ModuleType,
        work_dir: Path,
        *,
        trials: int | None = None,
        time_budget: float | None = None,
        repeat: int = 1,
    ) -> dict:
        """One design point for `tvmsqz explore`: compiled with the target's tilings and run on
        one photo in the simulator; its latency is the simulated cycles at the configured clock
        (deterministic: `trials`, `time_budget` and `repeat` do not apply)."""
        from ..images import sample_images
        from ..vta import bench_vta

        so = Path(work_dir) / "model.so"
        _compile(model, spec, so, tuning=True)
        report = bench_vta(so, images=sample_images()[:1], fp32_model=_onnx_of(model, spec).SerializeToString())
        return {
            "latency_ms": float(report["simulated_ms_at_clock"]),
            "latency_unit": f"simulated ms at {report['clock_mhz']} MHz",
            "simulated_cycles": int(report["simulated_cycles"]),
            "mac_offload_share": report["mac_offload_share"],
        }

    def tune(
        self,
        model,
        spec: TargetSpec,
        backend: ModuleType,
        *,
        trials: int | None = None,
        output: Path | None = None,
        resume: bool = False,
        log=None,
        cold: bool = False,
        model_time: bool = True,
        **options: Any,
    ) -> dict:
        """Search tilings of every VTA layer (simulated cycles) into a tiling database; the summary
        has "database": the file written (`model_time` means nothing here: the search's cycles
        are the simulated model's own). Without `output`, the user's tuning folder
        (`database.user_tuning_dir`), never the shipped schedules. Records already in the file
        seed the search and are kept (so `resume` is what it always does; `cold` too: nothing is
        taken from the shipped database)."""
        from ..database import user_tuning_dir
        from ..vta import tune_vta
        from ..vta.tune import tiling_db_name

        _refuse(spec, {key: (value, None) for key, value in options.items()})
        if trials is None:
            raise TvmsqzError(f"target {spec.name} tunes by trials: give --trials")
        out = Path(output) if output is not None else user_tuning_dir(spec)
        if out.suffix != ".json":
            out.mkdir(parents=True, exist_ok=True)
            out = out / tiling_db_name(spec.data)

        def progress(done: int, total: int, row: dict) -> None:
            if log is not None:
                log.print(
                    f"[dim]{done}/{total} {row['layer']}: {row['default_cycles']} -> {row['best_cycles']} cycles[/dim]",
                    highlight=False,
                )

        summary = tune_vta(_onnx_of(model, spec), trials, out, config=spec.data, progress=progress)
        summary["database"] = str(out)
        summary["target"] = spec.name
        return summary

    def print_report(self, report: dict, console) -> None:
        """The bench report as JSON (without the per-layer rows' bulk)."""
        console.print_json(json.dumps({k: v for k, v in report.items() if k != "layers"}))


#: The API's pipeline for this family (`api._pipeline`).
pipeline = VTAPipeline()


def load_artifact(path: Path, manifest: dict | None) -> Any:
    """The VTA artifact (`vta.VTAModel`, the `Artifact` protocol) of a verified `.so` + sidecar."""
    from ..vta import load_vta

    return load_vta(path, manifest)


def load_artifact_checked(path: Path, spec: TargetSpec):
    """A prebuilt VTA artifact, verified against its manifest (size, sha256 of the `.so` and the
    sidecar) and built for `spec`, as the TVM pipeline checks its prebuilt artifacts."""
    from ..manifest import prebuilt_manifest, verify_files

    manifest = prebuilt_manifest(path, spec.name)
    verify_files(path, manifest)
    return load_artifact(path, manifest)
