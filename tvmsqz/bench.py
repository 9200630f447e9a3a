"""Latency, memory, accuracy parity and per-kernel profile, side by side with the peers.

Everything is measured in one run on the same inputs with the same thread count, so the ratios
(TVM / ONNX Runtime, TVM / PyTorch) mean something on a noisy machine even when absolute times
drift. Runtimes are timed in alternating blocks with a short pause between them: interleaving
single runs made TVM's and ORT's spinning worker threads fight over the cores.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .errors import TvmsqzError
from .spec import TargetSpec, host_cores

WARMUP = 5
BLOCKS = 5
PAUSE_S = 0.05


def latency_stats(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"min": float(ms.min()), "median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)),
            "mean": float(ms.mean()), "runs": int(ms.size)}


def time_runtimes(runners: dict[str, Callable[[], None]], repeat: int, progress=None) -> dict[str, dict]:
    """Warm up each runtime, then time them in alternating blocks."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        for _ in range(WARMUP):
            run()
    per_block = max(1, -(-repeat // BLOCKS))
    while any(len(s) < repeat for s in samples.values()):
        for name, run in runners.items():
            time.sleep(PAUSE_S)
            for _ in range(min(per_block, repeat - len(samples[name]))):
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
            if progress:
                progress(name, len(samples[name]), repeat)
    return {name: latency_stats(s) for name, s in samples.items()}


def parity(outputs: np.ndarray, reference: np.ndarray, reference_name: str) -> dict[str, Any]:
    """Max abs / range-relative diff and top-1 / top-5 agreement over a stack of samples."""
    out = outputs.reshape(outputs.shape[0], -1)
    ref = reference.reshape(reference.shape[0], -1)
    abs_diff = np.abs(out - ref).max(axis=1)
    ranges = np.maximum(ref.max(axis=1) - ref.min(axis=1), np.finfo(np.float32).tiny)
    top1 = out.argmax(axis=1) == ref.argmax(axis=1)
    k = min(5, ref.shape[1])
    top5 = [set(np.argsort(-o)[:k]) == set(np.argsort(-r)[:k]) for o, r in zip(out, ref)]
    return {"reference": reference_name, "max_abs_diff": float(abs_diff.max()),
            "max_rel_diff": float((abs_diff / ranges).max()), "top1_agreement": float(top1.mean()),
            "top5_agreement": float(np.mean(top5)), "inputs": int(out.shape[0])}


def parity_inputs(shape: tuple[int, ...], convention: str, seeds: int = 3) -> tuple[list[str], list[np.ndarray]]:
    """Seeded random tensors plus real photos shipped in wheels, shaped like the model input."""
    from .images import preprocess, sample_images

    names, batches = [], []
    rng = np.random.default_rng(0)
    for i in range(seeds):
        names.append(f"random-{i}")
        batches.append(rng.standard_normal(shape).astype("float32"))
    if shape[1] == 3 and shape[2] == shape[3]:
        photos = sample_images()
        for start in range(0, len(photos), shape[0]):
            chunk = [photos[(start + j) % len(photos)] for j in range(shape[0])]
            names.append("+".join(n for n, _ in chunk))
            batches.append(np.concatenate([preprocess(img, convention, shape[2]) for _, img in chunk]))
    return names, batches


def memory_probe(kind: str, path: Path, shape: tuple[int, ...], runs: int = 5) -> dict[str, int]:
    """Peak RSS of a fresh process that loads `path` and runs `runs` inferences, and its RSS
    right after importing the runtime library (so the model's own share can be told apart)."""
    env = dict(os.environ, TVM_NUM_THREADS=str(host_cores()))
    cmd = [sys.executable, "-m", "tvmsqz.memprobe", kind, str(path), ",".join(map(str, shape)), str(runs),
           str(host_cores())]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise TvmsqzError(f"memory probe for {kind} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def weight_bytes(model) -> int:
    """Bytes of weights in the ONNX model (initializers and Constant nodes)."""
    from onnx import numpy_helper

    total = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.HasField("t"):
                    total += numpy_helper.to_array(attr.t).nbytes
    return int(total)


def _ort_session(model_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = host_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _versions() -> dict[str, str]:
    import onnxruntime
    import tvm

    versions = {"tvmsqz": __version__, "tvm": tvm.__version__, "onnxruntime": onnxruntime.__version__,
                "numpy": np.__version__, "python": platform.python_version()}
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return versions


def _machine() -> dict[str, Any]:
    from .targets import host_cpu_flags

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = host_cpu_flags()
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "baseline"
    return {"cpu": cpu, "isa": isa, "cores": host_cores(), "os": platform.platform()}


def run_bench(source: str, spec: TargetSpec, *, batch: int = 1, input_shape: str | None = None,
              repeat: int = 50, database: Path | None = None, fuse: bool | None = None, with_torch: bool = True,
              rpc_tracker: str | None = None, rpc_key: str | None = None, log=None) -> dict[str, Any]:
    """The whole bench as one JSON-able dict (keys documented in README)."""
    from .backends import get_backend

    if not get_backend(spec).runs_on_host(spec) and not rpc_tracker:
        raise TvmsqzError(f"artifacts for {spec.name} do not run on this host; pass --rpc-tracker HOST:PORT "
                          "--rpc-key KEY to bench on a device")
    if rpc_tracker:  # fail in seconds, not after the compile, when the tracker does not answer
        from .device import check_tracker

        check_tracker(rpc_tracker)
    from .fsutil import temp_dir

    with temp_dir("tvmsqz-bench-") as tmp:
        return _bench(source, spec, tmp, batch=batch, input_shape=input_shape, repeat=repeat,
                      database=database, fuse=fuse, with_torch=with_torch, rpc_tracker=rpc_tracker,
                      rpc_key=rpc_key, log=log)


def _bench(source: str, spec: TargetSpec, workdir: Path, *, batch: int, input_shape: str | None, repeat: int,
           database: Path | None, fuse: bool | None, with_torch: bool, rpc_tracker: str | None,
           rpc_key: str | None, log) -> dict[str, Any]:
    from .build import compile_module, export_artifact
    from .frontend import load_model
    from .runtime import load

    def say(msg: str) -> None:
        if log is not None:
            log.print(f"[dim]{msg}[/dim]")

    onnx_path = workdir / "model.onnx"
    if source.endswith(".so"):  # a shipped artifact: measure it as is, against its source model
        so_path, manifest, report = Path(source), *_prebuilt(Path(source), spec)
        loaded = load_model(manifest["model"], batch=manifest["input"]["shape"][0],
                            input_shape=",".join(map(str, manifest["input"]["shape"])))
    else:
        loaded = load_model(source, batch=batch, input_shape=input_shape)
        from .build import resolve_fuse

        fuse = resolve_fuse(spec, fuse)
        say(f"compiling {loaded.name} for {spec.name} ({'fused' if fuse else 'unfused'}, "
            f"{'database ' + str(database) if database else 'no tuning database'})")
        executable, report = compile_module(loaded.mod, spec, database=database, fuse=fuse)
        so_path = workdir / "model.so"
        manifest = export_artifact(executable, spec, so_path, model=loaded.name, input_spec=loaded.input,
                                   report=report)
    shape = loaded.input.shape
    onnx_path.write_bytes(loaded.onnx.SerializeToString())

    convention = getattr(loaded.info, "preprocess", "torchvision")
    names, inputs = parity_inputs(shape, convention)
    x = inputs[0]
    ort_sess = _ort_session(loaded.onnx.SerializeToString())
    ort_in = ort_sess.get_inputs()[0].name

    if rpc_tracker:
        from .device import remote_bench

        remote = remote_bench(so_path, spec, rpc_tracker, rpc_key, inputs, repeat=repeat)
        tvm_outputs = remote["outputs"]
        latency = {"tvm": remote["latency"]}
        artifact = None
    else:
        artifact = load(so_path)
        tvm_outputs = [artifact.run(b) for b in inputs]

    runners: dict[str, Callable[[], None]] = {}
    if artifact is not None:
        runners["tvm"] = artifact.timer(x)
    runners["onnxruntime"] = lambda: ort_sess.run(None, {ort_in: x})
    torch_outputs = None
    if with_torch and getattr(loaded.info, "source", None) == "torch":
        import torch

        from .models import torch_model

        torch.set_num_threads(host_cores())
        net = torch_model(loaded.info.name)
        tx = torch.from_numpy(x)

        def torch_run() -> None:
            with torch.inference_mode():
                net(tx)

        runners["torch"] = torch_run
        with torch.inference_mode():
            torch_outputs = [net(torch.from_numpy(b)).numpy() for b in inputs]

    say(f"timing {', '.join(runners)}: {repeat} runs each after {WARMUP} warm-up runs")
    measured = time_runtimes(runners, repeat)
    if rpc_tracker:
        measured.update(latency)

    ort_outputs = np.concatenate([ort_sess.run(None, {ort_in: b})[0] for b in inputs])
    tvm_stack = np.concatenate(tvm_outputs)
    parity_report = parity(tvm_stack, ort_outputs, "onnxruntime")
    if torch_outputs is not None:
        parity_report["torch"] = parity(tvm_stack, np.concatenate(torch_outputs), "torch")
    parity_report["samples"] = names

    say("measuring peak memory in fresh processes")
    tvm_mem = memory_probe("tvm", so_path, shape) if artifact is not None else {}
    ort_mem = memory_probe("onnxruntime", onnx_path, shape)
    memory = {
        "tvm_peak_rss_bytes": tvm_mem.get("peak_rss_bytes"),
        "onnxruntime_peak_rss_bytes": ort_mem["peak_rss_bytes"],
        # peak minus the RSS right after importing the runtime: what the model itself costs
        "tvm_model_rss_bytes": (tvm_mem["peak_rss_bytes"] - tvm_mem["after_import_rss_bytes"]) if tvm_mem else None,
        "onnxruntime_model_rss_bytes": ort_mem["peak_rss_bytes"] - ort_mem["after_import_rss_bytes"],
        "weight_bytes": weight_bytes(loaded.onnx),
        "activation_bytes": report.activation_bytes,
        "artifact_bytes": so_path.stat().st_size,
    }
    profile = artifact.profile(x) if artifact is not None else []
    tvm_median = measured["tvm"]["median"]
    emulated = bool(measured["tvm"].get("emulated"))
    # an emulated device's time compared with native x86 peers would be a meaningless ratio
    comparable = not emulated
    result: dict[str, Any] = {
        "model": loaded.name,
        "target": spec.name,
        "target_config": spec.tvm_config,
        "batch": shape[0],
        "input": loaded.input.to_json(),
        "threads": host_cores(),
        "fused": report.fused,
        "emulated": emulated,
        "latency_ms": measured,
        "ratio_vs_onnxruntime": tvm_median / measured["onnxruntime"]["median"] if comparable else None,
        "ratio_vs_torch": tvm_median / measured["torch"]["median"] if "torch" in measured and comparable else None,
        "throughput_ips": {name: shape[0] / (m["median"] / 1e3) if comparable or name != "tvm" else None
                           for name, m in measured.items()},
        "memory": memory,
        "parity": parity_report,
        "profile": profile,
        "tuning": {"database": report.database, "kernels": len(report.kernels), "tuned": report.tuned,
                   "untuned": report.untuned},
        "compile_seconds": report.seconds,
        "artifact_sha256": manifest["artifact"]["sha256"],
        "machine": _machine(),
        "versions": _versions(),
    }
    return result


def _prebuilt(so_path: Path, spec: TargetSpec):
    """Manifest and a build report for an artifact compiled earlier (`tvmsqz compile`)."""
    from .build import BuildReport
    from .runtime import read_manifest

    if not so_path.is_file():
        raise TvmsqzError(f"no such file: {so_path}")
    manifest = read_manifest(so_path)
    if manifest is None:
        raise TvmsqzError(f"{so_path} has no manifest ({so_path.name}.json) beside it; bench needs to know its model")
    built_for = (manifest.get("target") or {}).get("name")
    if built_for != spec.name:
        raise TvmsqzError(f"{so_path.name} was compiled for {built_for}, not {spec.name}")
    kernels = manifest.get("kernels", {})
    report = BuildReport(kernels=[None] * kernels.get("total", 0), tuned=kernels.get("tuned", []),
                         untuned=kernels.get("untuned", []), database=manifest.get("database"),
                         fused=manifest.get("fused", True), activation_bytes=manifest.get("activation_bytes"))
    return manifest, report


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def print_report(report: dict[str, Any], console) -> None:
    """The human-readable side of the report: three tables and the top kernels."""
    from rich.table import Table

    if "simulated_cycles" in report:  # VTA reports its own shape
        console.print_json(json.dumps({k: v for k, v in report.items() if k != "layers"}))
        return
    title = f"{report['model']} on {report['target']} (batch {report['batch']}, {report['threads']} threads)"
    if report.get("emulated"):
        title += " [EMULATED device: timings are not ARM performance]"
    lat = Table(title=title)
    for col in ("runtime", "min ms", "median ms", "p90 ms", "images/s", "vs ORT"):
        lat.add_column(col, justify="right" if col != "runtime" else "left")
    ort_median = report["latency_ms"]["onnxruntime"]["median"]
    for name, m in report["latency_ms"].items():
        ips = report["throughput_ips"].get(name)
        ratio = "-" if name == "tvm" and report.get("emulated") else f"{m['median'] / ort_median:.2f}x"
        lat.add_row(name, f"{m['min']:.2f}", f"{m['median']:.2f}", f"{m['p90']:.2f}",
                    "-" if ips is None else f"{ips:.1f}", ratio)
    console.print(lat)
    mem = report["memory"]
    memt = Table(title="memory")
    for col in ("TVM peak RSS (model)", "ORT peak RSS (model)", "weights", "activations (planned)", "artifact"):
        memt.add_column(col, justify="right")
    memt.add_row(f"{_mib(mem['tvm_peak_rss_bytes'])} ({_mib(mem.get('tvm_model_rss_bytes'))})",
                 f"{_mib(mem['onnxruntime_peak_rss_bytes'])} ({_mib(mem.get('onnxruntime_model_rss_bytes'))})",
                 _mib(mem["weight_bytes"]), _mib(mem["activation_bytes"]), _mib(mem["artifact_bytes"]))
    console.print(memt)
    par = Table(title=f"parity over {report['parity']['inputs']} samples")
    for col in ("reference", "max abs diff", "max diff / range", "top-1 agree", "top-5 agree"):
        par.add_column(col, justify="right")
    for p in [report["parity"]] + ([report["parity"]["torch"]] if "torch" in report["parity"] else []):
        par.add_row(p["reference"], f"{p['max_abs_diff']:.2e}", f"{p['max_rel_diff']:.2e}",
                    f"{p['top1_agreement']:.0%}", f"{p['top5_agreement']:.0%}")
    console.print(par)
    if report["profile"]:
        prof = Table(title="slowest kernels (Relax VM instrumentation)")
        for col in ("kernel", "calls", "us"):
            prof.add_column(col, justify="right" if col != "kernel" else "left")
        for row in report["profile"][:10]:
            prof.add_row(row["name"], str(row["calls"]), f"{row['time_us']:.0f}")
        console.print(prof)
    tuning = report["tuning"]
    console.print(f"tuning: {len(tuning['tuned'])}/{tuning['kernels']} kernels tuned"
                  + (f" from {tuning['database']}" if tuning["database"] else " (no database)")
                  + (f"; TVM/ORT median ratio {report['ratio_vs_onnxruntime']:.2f}"
                     if report["ratio_vs_onnxruntime"] is not None else "; no ratio: emulated device"))
