"""Latency, memory, accuracy parity and per-kernel profile, side by side with the peers.

Everything is measured in one bench run on the same inputs, so the ratios (TVM / ONNX Runtime,
TVM / the fastest fp32 peer) mean something on a noisy machine even when absolute times drift.
Each runtime is timed in its own fresh process, one after the other (`tvmsqz.peers`), at the
host's core count and again at one thread: timed side by side in one process, the runtimes'
spinning thread pools fought over the cores (ONNX Runtime's median came out bimodal).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import peers
from .artifact import latency_stats  # noqa: F401 - re-exported for the benchmarks
from .errors import TvmsqzError
from .spec import TargetSpec, host_cores
from .version import __version__


def parity(outputs: np.ndarray, reference: np.ndarray, reference_name: str) -> dict[str, Any]:
    """Max abs / range-relative diff and top-1 / top-5 agreement over a stack of samples."""
    out = outputs.reshape(outputs.shape[0], -1)
    ref = reference.reshape(reference.shape[0], -1)
    abs_diff = np.abs(out - ref).max(axis=1)
    ranges = np.maximum(ref.max(axis=1) - ref.min(axis=1), np.finfo(np.float32).tiny)
    top1 = out.argmax(axis=1) == ref.argmax(axis=1)
    k = min(5, ref.shape[1])
    top5 = [set(np.argsort(-o)[:k]) == set(np.argsort(-r)[:k]) for o, r in zip(out, ref)]
    return {
        "reference": reference_name,
        "max_abs_diff": float(abs_diff.max()),
        "max_rel_diff": float((abs_diff / ranges).max()),
        "top1_agreement": float(top1.mean()),
        "top5_agreement": float(np.mean(top5)),
        "inputs": int(out.shape[0]),
    }


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
    cmd = [
        sys.executable,
        "-m",
        "tvmsqz.memprobe",
        kind,
        str(path),
        ",".join(map(str, shape)),
        str(runs),
        str(host_cores()),
    ]
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


def _versions() -> dict[str, str]:
    import onnxruntime
    import tvm

    versions = {
        "tvmsqz": __version__,
        "tvm": tvm.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
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


def run_bench(
    model,
    spec: TargetSpec,
    *,
    repeat: int = 50,
    database: Path | None = None,
    fuse: bool | None = None,
    with_torch: bool = True,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    prebuilt: Path | None = None,
    log=None,
    backend=None,
    precision: str | None = None,
    calibrate=None,
    calibration_method: str | None = None,
    fp32_layers: tuple[str, ...] = (),
    compress: bool = False,
    compress_bits: int | None = None,
    compress_density: float | None = None,
) -> dict[str, Any]:
    """The whole bench as one JSON-able dict (keys documented in README).

    `model` is a `frontend.Model`; with `prebuilt` (an artifact compiled earlier, to measure on an
    RPC device as it is) it is the artifact's source model, loaded by the caller from its manifest.
    """
    from .backends import get_backend

    backend = backend or get_backend(spec)
    if not backend.runs_on_host(spec) and not rpc_tracker:
        raise TvmsqzError(
            f"artifacts for {spec.name} do not run on this host; pass --rpc-tracker HOST:PORT "
            "--rpc-key KEY to bench on a device"
        )
    if rpc_tracker:  # fail in seconds, not after the compile, when the tracker does not answer
        from .device import check_tracker

        check_tracker(rpc_tracker)
    from .fsutil import temp_dir

    with temp_dir("tvmsqz-bench-") as tmp:
        return _bench(
            model,
            spec,
            tmp,
            repeat=repeat,
            database=database,
            fuse=fuse,
            with_torch=with_torch,
            rpc_tracker=rpc_tracker,
            rpc_key=rpc_key,
            prebuilt=prebuilt,
            log=log,
            backend=backend,
            int8=_int8_options(precision, calibrate, calibration_method, fp32_layers, prebuilt),
            compress=_compress_options(compress, compress_bits, compress_density, prebuilt),
        )


def _compress_options(compress: bool, bits, density, prebuilt) -> dict | None:
    """`bench --compress`'s options, or None (a prebuilt artifact is measured as it is)."""
    if not compress:
        if bits is not None or density is not None:
            raise TvmsqzError("--compress-bits and --compress-density need --compress")
        return None
    if prebuilt is not None:
        raise TvmsqzError("--compress applies when bench compiles the model, not to a prebuilt artifact")
    return {"bits": 8 if bits is None else int(bits), "density": 1.0 if density is None else float(density)}


def _int8_options(precision, calibrate, method, fp32_layers, prebuilt) -> dict | None:
    """The int8 bench's options, or None for fp32 (a prebuilt artifact is measured as it is)."""
    if precision in (None, "fp32") or prebuilt is not None:
        if calibrate is not None and prebuilt is None:
            raise TvmsqzError("--calibrate applies to --precision int8 only")
        return None
    if precision != "int8":
        raise TvmsqzError(f"precision must be fp32 or int8, not {precision!r}")
    return {"calibrate": calibrate, "method": method or "mse", "fp32_layers": tuple(fp32_layers or ())}


#: Views per photo in `bench --precision int8`: calibration (`images.CALIBRATION_PHOTOS`, when
#: no --calibrate is given) and evaluation (`images.EVALUATION_PHOTOS`, for the agreement).
CALIBRATION_VIEWS = 8
EVALUATION_VIEWS = 8


def agreement(outputs: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement and top-5 overlap of `outputs` with the fp32 `reference` (rows: inputs)."""
    a, b = outputs.reshape(len(reference), -1), reference.reshape(len(reference), -1)
    top5 = [len(set(np.argsort(-x)[:5]) & set(np.argsort(-y)[:5])) / 5 for x, y in zip(a, b)]
    return {
        "inputs": len(b),
        "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
        "top5_overlap": float(np.mean(top5)),
    }


def _bench(
    loaded,
    spec: TargetSpec,
    workdir: Path,
    *,
    repeat: int,
    database: Path | None,
    fuse: bool | None,
    with_torch: bool,
    rpc_tracker: str | None,
    rpc_key: str | None,
    prebuilt: Path | None,
    log,
    backend,
    int8: dict | None = None,
    compress: dict | None = None,
) -> dict[str, Any]:
    from .build import compile_module, export_artifact
    from .runtime import load

    def say(msg: str) -> None:
        if log is not None:
            log.print(f"[dim]{msg}[/dim]")

    onnx_path = workdir / "model.onnx"
    fp32_model, calibration_path, calibration_source = loaded, None, None
    if int8 is not None:
        loaded, calibration_path, calibration_source = _int8_model(loaded, workdir, int8, say)
    if prebuilt is not None:  # a shipped artifact: measure it as is, against its source model
        so_path, manifest, report = Path(prebuilt), *_prebuilt(Path(prebuilt), spec)
    else:
        from .build import resolve_fuse

        fuse = resolve_fuse(spec, fuse)
        say(
            f"compiling {loaded.name} for {spec.name} ({'fused' if fuse else 'unfused'}, "
            f"{'database ' + str(database) if database else 'no tuning database'})"
        )
        executable, report = compile_module(loaded.mod, spec, database=database, fuse=fuse, backend=backend)
        so_path = workdir / "model.so"
        manifest = export_artifact(
            executable, spec, so_path, model=loaded.name, input_spec=loaded.input, report=report, backend=backend
        )
        if compress is not None:  # the compressed artifact is the one measured; the plain one beside it
            plain_path, so_path = so_path, workdir / "compressed" / "model.so"
            so_path.parent.mkdir()
            say(f"compiling it with --compress (bits {compress['bits']}, density {compress['density']})")
            manifest, report, packed = _compressed_artifact(loaded, spec, so_path, database, fuse, backend, compress)
    shape = loaded.input.shape
    onnx_path.write_bytes(fp32_model.onnx.SerializeToString())  # what the peers run (int8 ones quantize it)

    convention = loaded.preprocess
    names, inputs = parity_inputs(shape, convention)
    if int8 is not None:  # agreement with fp32 on views of photos never calibrated on
        from .images import EVALUATION_PHOTOS, photo_views

        views = photo_views(EVALUATION_PHOTOS, EVALUATION_VIEWS, convention, shape[2])
        names = [n for n, _ in views]
        inputs = [np.repeat(v, shape[0], axis=0) for _, v in views]
    x = inputs[0]
    inputs_path = workdir / "inputs.npy"  # what every worker runs: the first one is the timed input
    np.save(inputs_path, np.stack(inputs))

    remote = None
    if rpc_tracker:
        from .device import remote_bench

        remote = remote_bench(so_path, spec, rpc_tracker, rpc_key, inputs, repeat=repeat)
        artifact = None
    else:
        artifact = load(so_path)  # verified now; it runs in this process only for the profile, after the timing

    skipped = {} if with_torch else {"torch": "not requested (--no-torch)"}
    runtimes = [
        n
        for n in peers.RUNNERS
        if n not in skipped and not (remote and n == "tvm") and (int8 is not None or n not in peers.INT8_RUNNERS)
    ]
    sources = peers.Sources(
        onnx=onnx_path,
        workdir=workdir,
        artifact=None if remote else so_path,
        torch_model=loaded.torch_name,
        input_shape=tuple(shape),
        calibration=calibration_path,
    )
    thread_counts = [host_cores()] + ([1] if host_cores() > 1 else [])
    got = peers.measure(
        sources,
        inputs_path,
        repeat,
        thread_counts,
        runtimes=runtimes,
        skipped=skipped,
        say=say,
        reduced_once=int8 is None,
    )
    measured, measured_1t = (_fp32_latency(got.latency.get(t, {})) for t in (thread_counts[0], thread_counts[-1]))
    if remote:
        measured = {"tvm": remote["latency"], **measured}

    ort_outputs = got.outputs["onnxruntime"]
    tvm_stack = np.concatenate(remote["outputs"]) if remote else got.outputs["tvm"]
    parity_report = parity(tvm_stack, ort_outputs, "onnxruntime")
    if "torch" in got.outputs:
        parity_report["torch"] = parity(tvm_stack, got.outputs["torch"], "torch")
    for name in ("openvino", "ncnn", *peers.REDUCED_PRECISION):  # each peer against the same reference
        if name in got.outputs:
            parity_report[name] = {"runtime": name, **parity(got.outputs[name], ort_outputs, "onnxruntime")}
    parity_report["samples"] = names

    say("measuring peak memory in fresh processes")
    # TVM as a device runs it: libtvm_runtime.so only; the full wheel (compiler mapped) for reference
    tvm_mem = memory_probe("tvm", so_path, shape) if artifact is not None else {}
    tvm_full_mem = memory_probe("tvm-full", so_path, shape) if artifact is not None else {}
    ort_mem = memory_probe("onnxruntime", onnx_path, shape)
    from .bundle.bench import bench_bundle, memory_keys

    # the runtime-only bundle (no TVM installed): C++ and Python runners, each in a fresh process
    bundle = (
        bench_bundle(so_path, workdir, x, tvm_stack[: shape[0]], repeat=repeat, threads=host_cores(), say=say)
        if artifact is not None
        else None
    )
    memory = {
        "tvm_peak_rss_bytes": tvm_mem.get("peak_rss_bytes"),
        "onnxruntime_peak_rss_bytes": ort_mem["peak_rss_bytes"],
        # peak minus the RSS right after importing the runtime: what the model itself costs
        "tvm_model_rss_bytes": (tvm_mem["peak_rss_bytes"] - tvm_mem["after_import_rss_bytes"]) if tvm_mem else None,
        "onnxruntime_model_rss_bytes": ort_mem["peak_rss_bytes"] - ort_mem["after_import_rss_bytes"],
        "weight_bytes": weight_bytes(loaded.onnx),
        "activation_bytes": report.activation_bytes,
        "artifact_bytes": so_path.stat().st_size,
        "tvm_runtime_only": tvm_mem.get("runtime_only"),
        "tvm_libraries": tvm_mem.get("tvm_libraries"),
        **memory_keys(tvm_full_mem, ort_mem, bundle),
    }
    profile = artifact.profile(x) if artifact is not None else []
    emulated = bool(measured["tvm"].get("emulated"))
    # an emulated device's time compared with native x86 peers would be a meaningless ratio
    comparable = not emulated
    fastest, fastest_1t = _fastest_peer(measured), _fastest_peer(measured_1t)
    result: dict[str, Any] = {
        "model": loaded.name,
        "target": spec.name,
        "target_config": spec.tvm_config,
        "batch": shape[0],
        "input": loaded.input.to_json(),
        "threads": host_cores(),
        "fused": report.fused,
        "emulated": emulated,
        "methodology": peers.METHODOLOGY,
        "latency_ms": measured,
        "latency_ms_1thread": measured_1t,
        "ratio_vs_onnxruntime": _ratio(measured, "onnxruntime", comparable),
        "ratio_vs_onnxruntime_1thread": _ratio(measured_1t, "onnxruntime", comparable),
        "ratio_vs_torch": _ratio(measured, "torch", comparable),
        "fastest_peer": fastest,
        "ratio_vs_fastest_peer": _ratio(measured, fastest, comparable),
        "fastest_peer_1thread": fastest_1t,
        "ratio_vs_fastest_peer_1thread": _ratio(measured_1t, fastest_1t, comparable),
        "reduced_precision": _reduced_precision(got, measured, thread_counts[0], comparable),
        "peers_skipped": got.skipped,
        "peer_info": got.info,
        "throughput_ips": {
            name: shape[0] / (m["median"] / 1e3) if comparable or name != "tvm" else None
            for name, m in measured.items()
        },
        "memory": memory,
        "bundle": bundle,
        "parity": parity_report,
        "profile": profile,
        "tuning": {
            "database": report.database,
            "kernels": len(report.kernels),
            "tuned": report.tuned,
            "untuned": report.untuned,
            **in_graph(report.estimated_ms, measured.get("tvm"), measured_1t.get("tvm"), comparable),
        },
        "compile_seconds": report.seconds,
        "artifact_sha256": manifest["artifact"]["sha256"],
        "machine": _machine(),
        "versions": {**_versions(), **_peer_versions(got.info)},
    }
    if int8 is not None:
        _int8_report(result, got, thread_counts, comparable, calibration_source, loaded.quant_report, names)
    if compress is not None:
        result["compress"] = _compress_report(
            packed, so_path, plain_path, sources, inputs_path, repeat, thread_counts, got, bundle, tvm_mem, say
        )
    return result


def in_graph(estimated_ms: float | None, latency: dict | None, latency_1t: dict | None, comparable: bool) -> dict:
    """The tuner's estimate (sum of the database's kernel times x calls) beside the model's measured
    median: their ratio is what the graph loses between kernels (cold caches, launches, copies).

    The estimate's times are those of the machine the records were tuned on; the ratio means
    most for a database tuned on this host (`tvmsqz tune` prints the same comparison)."""
    median = latency.get("median") if latency and comparable else None
    median_1t = latency_1t.get("median") if latency_1t and comparable else None
    return {
        "estimated_ms": estimated_ms,
        "in_graph_ms": median,
        "in_graph_ms_1thread": median_1t,
        "in_graph_vs_estimate": round(median / estimated_ms, 3) if median and estimated_ms else None,
    }


def _compressed_artifact(loaded, spec, path: Path, database, fuse, backend, options: dict):
    """Compile `loaded` with its weights in a weight file (`flow`'s `--compress` path)."""
    from .build import compile_module, export_artifact
    from .compress.model import compress, measure_agreement, weights_path
    from .fsutil import atomic_write

    packed = compress(loaded, options["bits"], options["density"])
    if not packed.lossless:
        packed.agreement = measure_agreement(loaded.onnx, packed.onnx, loaded.preprocess, int(loaded.input.shape[-1]))
    executable, report = compile_module(packed.mod, spec, database=database, fuse=fuse, backend=backend)
    weights = weights_path(path)
    atomic_write(weights, packed.blob)
    manifest = export_artifact(
        executable,
        spec,
        path,
        model=loaded.name,
        input_spec=loaded.input,
        report=report,
        backend=backend,
        extra={"weights": packed.manifest_fields(weights.name)},
        extra_files=[weights],
    )
    return manifest, report, packed


#: A fresh process loading a compressed artifact on one thread: decode alone, then the whole load.
_LOAD_PROBE = (
    "import json, sys, time\n"
    "from pathlib import Path\n"
    "from tvmsqz import vm, weightfile\n"
    "vm.prefer_runtime_lib()\n"
    "from tvmsqz.runtime import load\n"
    "p = Path(sys.argv[1]); t = time.perf_counter(); weightfile.read(p.with_suffix('.weights'))\n"
    "d = time.perf_counter() - t; a = load(p)\n"
    "print(json.dumps({'decode_ms': d * 1e3, 'load_ms': a.load_seconds * 1e3}))\n"
)


def _compress_report(packed, so_path, plain_path, sources, inputs_path, repeat, thread_counts, got, bundle, mem, say):
    """`bench --compress`: what the weight file costs and saves against the plain artifact of the
    same model (measured in this run, each in its own process), and its agreement."""
    import dataclasses

    say("timing the plain (uncompressed) artifact and the weight file's decoding")
    plain = peers.measure(
        dataclasses.replace(sources, artifact=plain_path), inputs_path, repeat, thread_counts, runtimes=["tvm"], say=say
    )
    loads = []
    for _ in range(5):
        proc = subprocess.run(
            [sys.executable, "-c", _LOAD_PROBE, str(so_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "TVM_NUM_THREADS": "1"},
        )
        if proc.returncode != 0:
            raise TvmsqzError(f"loading the compressed artifact failed: {proc.stderr.strip().splitlines()[-1:]}")
        loads.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out: dict[str, Any] = {
        "weight_file_bytes": len(packed.blob),
        "entropy_bound_bytes": round(packed.stats.entropy_bytes),
        "code_bytes": so_path.stat().st_size,
        "plain_artifact_bytes": plain_path.stat().st_size,
        "runtime_bytes": (bundle or {}).get("sizes", {}).get("runtime_bytes"),
        "bits": packed.bits,
        "density": packed.density,
        "lossless": packed.lossless,
        "decode_ms_1thread": float(np.median([r["decode_ms"] for r in loads])),
        "load_ms_1thread": float(np.median([r["load_ms"] for r in loads])),
        "peak_rss_bytes": mem.get("peak_rss_bytes"),
        "agreement_with_uncompressed": packed.agreement or {"top1_agreement": 1.0, "top5_overlap": 1.0, "exact": True},
    }
    for threads, key in ((thread_counts[0], ""), (thread_counts[-1], "_1thread")):
        mine = got.latency.get(threads, {}).get("tvm")
        theirs = plain.latency.get(threads, {}).get("tvm")
        out["plain_latency_ms" + key] = theirs
        out["ratio_vs_plain" + key] = mine["median"] / theirs["median"] if mine and theirs else None
    if "tvm" in got.outputs and "tvm" in plain.outputs:
        a, b = got.outputs["tvm"], plain.outputs["tvm"]
        out["outputs_bit_identical_to_plain"] = bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))
    return out


def _int8_model(loaded, workdir: Path, options: dict, say):
    """(the TVM int8 model, the calibration .npy every int8 runtime quantizes from, its source)."""
    from .quant.calibrate import load_calibration
    from .quant.qdq import quantize_model

    size = int(loaded.input.shape[2])
    if options["calibrate"] is None:
        from .images import CALIBRATION_PHOTOS, photo_views

        views = photo_views(CALIBRATION_PHOTOS, CALIBRATION_VIEWS, loaded.preprocess, size, seed=1)
        inputs = [v for _, v in views]
        source = f"{len(inputs)} views of {', '.join(CALIBRATION_PHOTOS)}"
    else:
        inputs, source = load_calibration(options["calibrate"], loaded.preprocess, size)
    batch = int(loaded.input.shape[0])
    inputs = [np.repeat(np.asarray(x, np.float32), batch, axis=0) for x in inputs]
    say(f"quantizing {loaded.name} to int8 ({options['method']}, calibration: {source})")
    quantized = quantize_model(loaded, inputs, method=options["method"], fp32_layers=options["fp32_layers"])
    quantized.quant_report["calibration"] = source
    path = workdir / "calibration.npy"
    np.save(path, np.stack(inputs))
    return quantized, path, source


def _int8_report(result: dict, got, thread_counts: list[int], comparable: bool, source, quant_report, names) -> None:
    """The int8 bench's keys: runtimes named with their precision under `latency_ms`
    (`tvm_int8`, `onnxruntime_int8`, `openvino_int8`, `openvino_bf16`, fp32 peers as before),
    the fastest int8 peer and TVM's ratio to it at both thread counts, and every runtime's
    agreement with fp32 (ONNX Runtime) on the evaluation views."""
    reduced = {}
    for name in peers.REDUCED_PRECISION:
        precision = str(got.info.get(name, {}).get("precision", "default")).lower()
        reduced[name] = f"openvino_{precision}" if precision in ("bf16", "f16", "f32") else name
    for key, threads in (("latency_ms", thread_counts[0]), ("latency_ms_1thread", thread_counts[-1])):
        latency = result[key]
        for name, label in reduced.items():
            if name in got.latency.get(threads, {}):
                latency[label] = got.latency[threads][name]
        peer = min((n for n in peers.INT8_PEERS if n in latency), key=lambda n: latency[n]["median"], default=None)
        suffix = "" if key == "latency_ms" else "_1thread"
        result["fastest_int8_peer" + suffix] = peer
        result["ratio_vs_fastest_int8_peer" + suffix] = _ratio(latency, peer, comparable)
        if "tvm" in latency:
            latency["tvm_int8"] = latency.pop("tvm")
    if "tvm" in result["throughput_ips"]:
        result["throughput_ips"]["tvm_int8"] = result["throughput_ips"].pop("tvm")
    reference = got.outputs["onnxruntime"]
    result["agreement"] = {
        ("tvm_int8" if name == "tvm" else reduced.get(name, name)): agreement(out, reference)
        for name, out in got.outputs.items()
        if name != "onnxruntime"
    }
    result["peers_skipped"]["ncnn_int8"] = (
        "ncnn's int8 tools (ncnn2table, ncnn2int8) are C++ programs not shipped in the PyPI ncnn/pnnx wheels"
    )
    result["precision"] = "int8"
    result["calibration"] = source
    result["evaluation_inputs"] = names
    result["quantization"] = {k: v for k, v in (quant_report or {}).items() if k != "layers"}


def _fp32_latency(per_runtime: dict[str, dict]) -> dict[str, dict]:
    """The fp32 runtimes' stats in report order (reduced-precision references are reported apart)."""
    return {
        name: per_runtime[name] for name in peers.RUNNERS if name in per_runtime and name not in peers.REDUCED_PRECISION
    }


def _ratio(latency: dict[str, dict], peer: str | None, comparable: bool) -> float | None:
    """TVM median / `peer` median; None when either was not measured or TVM ran emulated."""
    if not comparable or peer is None or "tvm" not in latency or peer not in latency:
        return None
    return latency["tvm"]["median"] / latency[peer]["median"]


def _fastest_peer(latency: dict[str, dict]) -> str | None:
    """The fp32 deployment peer (ONNX Runtime, OpenVINO f32, ncnn) with the lowest median."""
    measured = [name for name in peers.FP32_PEERS if name in latency]
    return min(measured, key=lambda name: latency[name]["median"]) if measured else None


def _reduced_precision(
    got: peers.Measurements, measured: dict[str, dict], threads: int, comparable: bool
) -> dict[str, dict]:
    """OpenVINO at its default precision, with the precision it reports it used: a reference
    for what reduced precision buys, never ranked with the fp32 peers."""
    out = {}
    for name in peers.REDUCED_PRECISION:
        stats = got.latency.get(threads, {}).get(name)
        if stats is not None:
            ratio = _ratio({"tvm": measured["tvm"], name: stats}, name, comparable) if "tvm" in measured else None
            out[name] = {"precision": got.info.get(name, {}).get("precision"), "latency_ms": stats, "ratio": ratio}
    return out


def _peer_versions(info: dict[str, dict]) -> dict[str, str]:
    """Versions of the optional peers that ran (the required ones are in `_versions`)."""
    versions = {name: str(info[name]["version"]) for name in ("openvino", "ncnn") if name in info}
    if "ncnn" in info and info["ncnn"].get("pnnx"):
        versions["pnnx"] = str(info["ncnn"]["pnnx"])
    return versions


def _prebuilt(so_path: Path, spec: TargetSpec):
    """Manifest and a build report for an artifact compiled earlier (`tvmsqz compile`)."""
    from .build import BuildReport
    from .manifest import prebuilt_manifest

    manifest = prebuilt_manifest(so_path, spec.name)
    kernels = manifest.get("kernels", {})
    report = BuildReport(
        kernels=[None] * kernels.get("total", 0),
        tuned=kernels.get("tuned", []),
        untuned=kernels.get("untuned", []),
        database=manifest.get("database"),
        fused=manifest.get("fused", True),
        activation_bytes=manifest.get("activation_bytes"),
        estimated_ms=manifest.get("tuner_estimate_ms"),
    )
    return manifest, report


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def print_report(report: dict[str, Any], console) -> None:
    """The human-readable side of the report: three tables and the top kernels."""
    from rich.table import Table

    title = f"{report['model']} on {report['target']} (batch {report['batch']}, {report['threads']} threads)"
    if report.get("emulated"):
        title += " [EMULATED device: timings are not ARM performance]"
    _print_latency(report, console, title)
    mem = report["memory"]
    memt = Table(title="memory")
    for col in (
        "TVM runtime-only peak RSS (model)",
        "ORT peak RSS (model)",
        "weights",
        "activations (planned)",
        "artifact",
    ):
        memt.add_column(col, justify="right")
    memt.add_row(
        f"{_mib(mem['tvm_peak_rss_bytes'])} ({_mib(mem.get('tvm_model_rss_bytes'))})",
        f"{_mib(mem['onnxruntime_peak_rss_bytes'])} ({_mib(mem.get('onnxruntime_model_rss_bytes'))})",
        _mib(mem["weight_bytes"]),
        _mib(mem["activation_bytes"]),
        _mib(mem["artifact_bytes"]),
    )
    console.print(memt)
    if report.get("compress"):
        _print_compress(report["compress"], console)
    from .bundle.bench import print_bundle

    print_bundle(report, console)
    par = Table(title=f"parity over {report['parity']['inputs']} samples")
    for col in ("runtime", "reference"):
        par.add_column(col, no_wrap=True)
    for col in ("max abs diff", "max diff / range", "top-1 agree", "top-5 agree"):
        par.add_column(col, justify="right")
    rows = [report["parity"]] + [
        report["parity"][k] for k in ("torch", "openvino", "ncnn", *peers.REDUCED_PRECISION) if k in report["parity"]
    ]
    for p in rows:
        par.add_row(
            p.get("runtime", "tvm"),
            p["reference"],
            f"{p['max_abs_diff']:.2e}",
            f"{p['max_rel_diff']:.2e}",
            f"{p['top1_agreement']:.0%}",
            f"{p['top5_agreement']:.0%}",
        )
    console.print(par)
    if report.get("agreement"):
        agr = Table(title=f"agreement with fp32 (ONNX Runtime) on {len(report['evaluation_inputs'])} evaluation views")
        for col in ("runtime", "top-1 agreement", "top-5 overlap"):
            agr.add_column(col, justify="left" if col == "runtime" else "right", no_wrap=True)
        for name, a in report["agreement"].items():
            agr.add_row(name, f"{a['top1_agreement']:.1%}", f"{a['top5_overlap']:.1%}")
        console.print(agr)
        for suffix, label in (("", f"{report['threads']} threads"), ("_1thread", "1 thread")):
            peer, ratio = report.get("fastest_int8_peer" + suffix), report.get("ratio_vs_fastest_int8_peer" + suffix)
            if peer and ratio is not None:
                console.print(f"TVM int8 / {peer} (fastest int8 peer) at {label}: {ratio:.2f}")
    if report["profile"]:
        prof = Table(
            title="slowest kernels in the graph (Relax VM instrumentation: the Python call between kernels "
            "adds tens of us to each parallel one; compare kernels, not sums)"
        )
        for col in ("kernel", "calls", "us"):
            prof.add_column(col, justify="right" if col != "kernel" else "left")
        for row in report["profile"][:10]:
            prof.add_row(row["name"], str(row["calls"]), f"{row['time_us']:.0f}")
        console.print(prof)
    tuning = report["tuning"]
    if tuning.get("in_graph_vs_estimate") is not None:
        console.print(
            f"in the graph: {tuning['in_graph_ms']:.3f} ms (TVM median, {report['threads']} threads) vs the tuner's "
            f"estimate {tuning['estimated_ms']:.3f} ms (sum of the database's kernel times x calls, measured where it "
            f"was tuned): {tuning['in_graph_vs_estimate']:.2f}x"
        )
    console.print(
        f"tuning: {len(tuning['tuned'])}/{tuning['kernels']} kernels tuned"
        + (f" from {tuning['database']}" if tuning["database"] else " (no database)")
        + (
            f"; TVM/ORT median ratio {report['ratio_vs_onnxruntime']:.2f}"
            if report["ratio_vs_onnxruntime"] is not None
            else "; no ratio: emulated device"
        )
        + (
            f", TVM/{report['fastest_peer']} (fastest fp32 peer) {report['ratio_vs_fastest_peer']:.2f}"
            if report.get("ratio_vs_fastest_peer") is not None
            else ""
        )
    )


def _print_latency(report: dict[str, Any], console, title: str) -> None:
    """The fp32 runtimes at the host's threads and at one, then the reduced-precision reference
    on a line of its own, then the peers that did not run and why."""
    from rich.table import Table

    lat = Table(title=title, caption=f"{report.get('methodology', '')}; 1T: one thread")
    one = report.get("latency_ms_1thread") or {}
    lat.add_column("runtime", no_wrap=True)
    for col in ("min ms", "median ms", "p90 ms", "img/s", "vs ORT", "1T median ms", "1T vs ORT"):
        lat.add_column(col, justify="right")

    def vs_ort(latency: dict, name: str) -> str:
        if name not in latency or "onnxruntime" not in latency or (name == "tvm" and report.get("emulated")):
            return "-"
        return f"{latency[name]['median'] / latency['onnxruntime']['median']:.2f}x"

    for name, m in report["latency_ms"].items():
        ips = report["throughput_ips"].get(name)
        lat.add_row(
            name,
            f"{m['min']:.2f}",
            f"{m['median']:.2f}",
            f"{m['p90']:.2f}",
            "-" if ips is None else f"{ips:.1f}",
            vs_ort(report["latency_ms"], name),
            f"{one[name]['median']:.2f}" if name in one else "-",
            vs_ort(one, name),
        )
    console.print(lat)
    for name, ref in (report.get("reduced_precision") or {}).items():
        ratio = "" if ref["ratio"] is None else f", TVM / it {ref['ratio']:.2f}x"
        console.print(
            f"reduced precision (not an fp32 peer): {name} at {ref['precision']}: median "
            f"{ref['latency_ms']['median']:.2f} ms{ratio}"
        )
    for name, why in (report.get("peers_skipped") or {}).items():
        console.print(f"[dim]skipped {name}: {why}[/dim]")


def _print_compress(c: dict[str, Any], console) -> None:
    """`bench --compress`: the weight file against the plain artifact."""
    from rich.table import Table

    t = Table(
        title=f"--compress ({c['bits']} bits, density {c['density']}, {'lossless' if c['lossless'] else 'lossy'})"
    )
    for col in ("weight file", "entropy bound", "code", "plain artifact", "decode / load (1 thread)", "vs plain"):
        t.add_column(col, justify="right")
    ratio = c.get("ratio_vs_plain")
    ratio_1t = c.get("ratio_vs_plain_1thread")
    ag = c["agreement_with_uncompressed"]
    t.add_row(
        f"{c['weight_file_bytes']:,} B",
        f"{c['entropy_bound_bytes']:,} B",
        f"{c['code_bytes']:,} B",
        f"{c['plain_artifact_bytes']:,} B",
        f"{c['decode_ms_1thread']:.1f} / {c['load_ms_1thread']:.1f} ms",
        (f"{ratio:.3f}x" if ratio else "-")
        + (f", {ratio_1t:.3f}x 1T" if ratio_1t else "")
        + f"; top-1 {ag['top1_agreement']:.1%}",
    )
    console.print(t)
