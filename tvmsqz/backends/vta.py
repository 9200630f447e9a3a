"""VTA family: int8 SqueezeNet on the Versatile Tensor Accelerator, run on tvmsqz's simulator.

The VTA flow is not TVM's build flow: `tvmsqz.vta` quantises the model, lowers every
convolution and max-pool to VTA instruction streams (a `.vta.npz` sidecar) and compiles the rest
(for SqueezeNet: the first conv's im2col layout step, global average pooling, softmax) for the
host CPU with TVM. `bench` reports per layer where it ran, simulated cycles, DRAM bytes and MACs
per cycle against the GEMM core's peak. This backend is its one door: the CLI and `runtime` call the same command hooks as
for the other families (`compile_model`, `bench_model`, `tune_model`, `load_artifact`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..errors import TvmsqzError
from ..spec import TargetSpec

TILINGS_FILE = "tilings.json"


#: Whether this family's artifacts load through the TVM runtime library alone: the VTA loader builds Relax VMs for its host segments through `tvm.relax`.
RUNTIME_ONLY = False


def resolve_target_data(raw: dict) -> dict:
    return raw


def runs_on_host(spec: TargetSpec) -> bool:
    """The simulator and the host segments run on this machine (the host part is x86 code)."""
    from ..targets import get_target

    host = get_target(spec.data.get("host", "x86"))
    from . import get_backend

    return get_backend(host).runs_on_host(host)


def tiling_db(spec: TargetSpec) -> Path | None:
    """The shipped tiling database of a VTA target (`schedules/vta/tilings.json`)."""
    folder = spec.schedules_dir
    return folder / spec.data.get("tiling_db", TILINGS_FILE) if folder is not None else None


def _refuse(options: dict[str, Any]) -> None:
    """Options of the TVM flow that mean nothing here are refused, not silently ignored."""
    given = [flag for flag, key, default in (("--input-shape", "input_shape", None), ("--batch", "batch", 1),
                                              ("--fuse/--no-fuse", "fuse", None), ("--database", "database", None),
                                              ("--rpc-tracker", "rpc_tracker", None),
                                              ("--max-memory", "max_memory", None))
             if options.get(key, default) != default]
    if given:
        raise TvmsqzError(f"target vta does not take {', '.join(given)} (it runs batch 1 on the simulator)")


def _write_manifest(spec: TargetSpec, output: Path, summary: dict) -> dict:
    from ..manifest import write_manifest
    from ..vta import sidecar_path

    return write_manifest(output, {
        "model": summary["model"],
        "target": spec.to_json(),
        "input": summary["input"],
        "sidecar": {"file": sidecar_path(output).name},
        "vta": {k: summary[k] for k in ("macs_offloaded", "macs_total", "mac_offload_share", "note")},
    }, extra_files=[sidecar_path(output)])


def compile_model(model: str, spec: TargetSpec, output: Path, *, log=None, **options: Any) -> str:
    from ..vta import compile_vta, sidecar_path

    _refuse(options)
    summary = compile_vta(model, output)
    summary["model"] = summary["model"] or Path(model).name
    _write_manifest(spec, output, summary)
    sidecar = sidecar_path(output)
    return (f"wrote {output} (host code, {output.stat().st_size} bytes), {sidecar.name} "
            f"(VTA instruction streams, {sidecar.stat().st_size} bytes) and {output.name}.json; "
            "runs on the VTA simulator")


def bench_model(model: str, spec: TargetSpec, *, log=None, **options: Any) -> dict:
    from ..vta import bench_vta, compile_vta

    _refuse({k: v for k, v in options.items() if k not in ("repeat", "with_torch", "no_tuning")})
    with tempfile.TemporaryDirectory(prefix="tvmsqz-vta-") as tmp:
        so = Path(tmp) / "model.so"
        compile_vta(model, so)
        report = bench_vta(so)
    report.setdefault("model", model)
    report["target"] = spec.name
    return report


def tune_model(model: str, spec: TargetSpec, *, trials: int, output: Path | None = None, log=None,
               **options: Any) -> tuple[dict, str]:
    import json

    from ..backends.tvmflow import default_tuning_dir
    from ..vta import tune_vta

    _refuse({k: v for k, v in options.items() if k not in ("resume", "rpc_key", "space")})
    out = output or default_tuning_dir(spec)
    if out.suffix != ".json":
        out.mkdir(parents=True, exist_ok=True)
        out = out / spec.data.get("tiling_db", TILINGS_FILE)
    summary = tune_vta(model, trials, out)
    return summary, json.dumps(summary, indent=1)


def load_artifact(path: Path, manifest: dict | None) -> Any:
    from ..vta import load_vta

    return load_vta(path)
