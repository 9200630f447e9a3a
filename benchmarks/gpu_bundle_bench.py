"""GPU benchmark through runtime-only bundles: TVM (tvmsqz CUDA bundle) vs PyTorch eager vs torch.compile.

Runs on a GPU machine that has PyTorch but no TVM (the apache-tvm wheel, 100 MB, is more than
the lent GPU machine may be sent): the TVM side is a `tvmsqz package` bundle of a CUDA artifact
compiled elsewhere (nvcc needs no GPU), driven by the bundle's own numpy + ctypes runner
(`bin/tvmsqz-run.py`, imported as a module). `benchmarks/gpu_payload.py` builds everything this
script reads, on a machine with TVM and nvcc:

    python benchmarks/gpu_payload.py --out PAYLOAD          # here: artifacts, bundles, references
    python3 PAYLOAD/gpu_bundle_bench.py --payload PAYLOAD --out OUT    # on the GPU machine
    python benchmarks/gpu_bundle_bench.py --report OUT/results.json    # here: markdown + plot

Needs on the GPU machine: python3, numpy, torch (with CUDA), nvidia-smi; onnxruntime's CUDA
provider is measured only when present. Each runtime runs in a fresh process per model and
batch (memory and CUDA state do not mix), in this order of priority: TVM, eager,
torch.compile (reduce-overhead), torch.compile (default); a deadline (--deadline seconds)
stops starting new measurements so that what was measured always comes back.

Measured per model and batch: latency (one call + device synchronize, wall clock: min, median,
p90 over --repeat calls), throughput (--stream calls queued, one synchronize, best of 5),
GPU memory (device memory used while the process runs minus what was used before it started,
CUDA context included, from torch.cuda.mem_get_info / the driver), parity (max abs diff,
range-relative diff, top-1/top-5) against PyTorch eager in strict FP32 (TF32 off, cuDNN
deterministic algorithms not forced), and against a CPU float32 reference computed where the
payload was built (which also checks that the device built the same seeded weights). For
TVM: kernels per inference and summed GPU busy time (CUPTI through torch.profiler, after the
memory figure was read), and with and without the CUDA graph where the payload has a
no-graph bundle.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


#: The bundle's Python runner (stdlib + numpy, like this script on the GPU machine): its seeded
#: input (`seeded_input`, bit-identical to the C++ runner's) and its latency statistics. Beside
#: this script in a payload (`gpu_payload.py` copies it), in the package in a checkout.
RUNNER = import_file(
    "tvmsqz_pyrunner",
    next(p for p in (HERE / "pyrunner.py", HERE.parent / "tvmsqz" / "bundle" / "pyrunner.py") if p.is_file()),
)
seeded_input = RUNNER.seeded_input


# ----------------------------------------------------------------------------------------------
# helpers shared by parent and workers
# ----------------------------------------------------------------------------------------------


def latency_stats(samples_s: list[float]) -> dict:
    """min/median/p90/mean/runs in ms, as the bundle runners (and `tvmsqz bench`) report them."""
    return RUNNER.stats([s * 1e3 for s in samples_s])


def time_calls(run, sync, warmup: int, repeat: int, stream: int, batch: int) -> dict:
    """Latency (one call + sync each, wall clock) and throughput (`stream` calls queued, one sync)."""
    for _ in range(warmup):
        run()
    sync()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        sync()
        samples.append(time.perf_counter() - start)
    best = float("inf")
    for _ in range(5):
        sync()
        start = time.perf_counter()
        for _ in range(stream):
            run()
        sync()
        best = min(best, time.perf_counter() - start)
    return {"latency_ms": latency_stats(samples), "throughput_ips": batch * stream / best, "stream": stream}


def smi(query: str) -> list[list[str]]:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [[c.strip() for c in ln.split(",")] for ln in out.stdout.strip().splitlines()] if out.returncode == 0 else []


def used_mib() -> float | None:
    rows = smi("memory.used")
    try:
        return float(rows[0][0]) if rows else None
    except ValueError:
        return None


def parity_batches(batch: int, photos: np.ndarray | None, seeds: int = 4) -> tuple[list[str], list[np.ndarray]]:
    """The parity inputs of one batch size: seeded random batches, plus the photos (batch 1)."""
    if batch == 1:
        names = [f"seeded-{s}" for s in range(1, seeds + 1)]
        xs = [seeded_input(s, [1, 3, 224, 224]) for s in range(1, seeds + 1)]
        if photos is not None:
            for i, p in enumerate(photos):
                names.append(f"photo-{i}")
                xs.append(np.ascontiguousarray(p[None]))
        return names, xs
    return [f"seeded-batch-{batch}"], [seeded_input(1000 + batch, [batch, 3, 224, 224])]


def parity(out: np.ndarray, ref: np.ndarray, name: str) -> dict:
    out = out.reshape(-1, out.shape[-1])
    ref = ref.reshape(-1, ref.shape[-1])
    abs_diff = np.abs(out - ref).max(axis=1)
    ranges = np.maximum(ref.max(axis=1) - ref.min(axis=1), np.finfo(np.float32).tiny)
    top5 = [set(np.argsort(-o)[:5]) == set(np.argsort(-r)[:5]) for o, r in zip(out, ref)]
    return {
        "reference": name,
        "max_abs_diff": float(abs_diff.max()),
        "max_rel_diff": float((abs_diff / ranges).max()),
        "top1_agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
        "top5_agreement": float(np.mean(top5)),
        "samples": int(out.shape[0]),
    }


def kernel_profile(run, sync, iters: int = 10) -> dict:
    """Kernels per inference and their summed GPU time (CUPTI via torch.profiler; TVM's kernels,
    graph replays included, are seen as they are in any process)."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile

        for _ in range(3):
            run()
        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                run()
            sync()
            torch.cuda.synchronize()
        kernels = [
            e
            for e in prof.events()
            if str(getattr(e, "device_type", "")).endswith("CUDA")
            and not any(w in e.name.lower() for w in ("memcpy", "memset"))
        ]
        busy_us = sum(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0) for e in kernels)
        names: dict[str, float] = {}
        for e in kernels:
            names[e.name] = names.get(e.name, 0.0) + (getattr(e, "device_time", None) or 0.0) / iters
        top = sorted(names.items(), key=lambda kv: -kv[1])[:8]
        return {
            "kernels_per_inference": len(kernels) / iters,
            "gpu_busy_ms": busy_us / iters / 1e3,
            "top_kernels_us": [[n[:80], round(t, 2)] for n, t in top],
        }
    except Exception as exc:  # noqa: BLE001 - the profile is optional
        return {"error": f"{type(exc).__name__}: {exc}"}


# ----------------------------------------------------------------------------------------------
# workers
# ----------------------------------------------------------------------------------------------


def worker_tvm(args) -> dict:
    """The bundle's own Python runner, on the GPU; no torch until the memory figure is read."""
    bundle = Path(args.bundle)
    runner = import_file("tvmsqz_bundle_runner", bundle / "bin" / "tvmsqz-run.py")
    manifest = runner.read_bundle(str(bundle))  # sizes + sha256 of every file, as the CLI checks
    device = manifest.get("device", "cpu")
    t0 = time.perf_counter()
    rt = runner.Runtime(str(bundle / "lib"), manifest["runtime"].get("device_libs", []))
    model = runner.Model(rt, str(bundle / manifest["model"]["file"]), device)
    load_s = time.perf_counter() - t0
    inputs = np.load(args.inputs)
    outputs = []
    first_call_ms = None
    for i, x in enumerate(inputs):
        xa = runner.aligned_copy(x)
        arg = model.tensor(xa)
        start = time.perf_counter()
        out = model(arg)  # the first call also captures the CUDA graph
        model.sync()
        if i == 0:
            first_call_ms = (time.perf_counter() - start) * 1e3
        outputs.append(model.to_numpy(out))
        out.release()
        arg.release()
    arg = model.tensor(runner.aligned_copy(inputs[0]))

    def run():
        model(arg).release()

    result = {
        "runtime": "tvm",
        "device": device,
        "load_seconds": load_s,
        "first_call_ms": first_call_ms,
        **time_calls(run, model.sync, args.warmup, args.repeat, args.stream, inputs.shape[1]),
    }
    result["memory"] = {"device_used_delta_mib": delta(args.baseline_mib)}
    result["profile"] = kernel_profile(run, model.sync)
    np.save(args.out_npy, np.concatenate(outputs))
    return result


def delta(baseline: float | None) -> float | None:
    used = used_mib()
    return None if used is None or baseline is None else used - baseline


def worker_torch(args, mode: str | None) -> dict:
    import torch

    sq = import_file("squeezenet", Path(args.payload) / "squeezenet.py")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    version = args.model.replace("squeezenet", "")
    net = sq.build(version=version, seed=0).eval()
    digest = hashlib.sha256()
    for k, v in net.state_dict().items():
        digest.update(k.encode())
        digest.update(v.detach().cpu().numpy().astype("<f4").tobytes())
    dev = torch.device(args.torch_device)
    net = net.to(dev)
    inputs = np.load(args.inputs)
    result: dict = {
        "runtime": "eager" if mode is None else f"compile:{mode}",
        "weights_sha256": digest.hexdigest(),
        "cudnn": torch.backends.cudnn.version(),
    }
    on_gpu = args.torch_device == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    with torch.inference_mode():
        if mode is not None:
            start = time.perf_counter()
            net = torch.compile(net, mode=mode)
            net(torch.from_numpy(inputs[0]).to(dev))
            sync()
            result["compile_seconds"] = time.perf_counter() - start
        outputs = [net(torch.from_numpy(x).to(dev)).float().cpu().numpy().copy() for x in inputs]
        x_dev = torch.from_numpy(inputs[0]).to(dev).contiguous()
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        result.update(time_calls(lambda: net(x_dev), sync, args.warmup, args.repeat, args.stream, inputs.shape[1]))
        result["memory"] = {"device_used_delta_mib": delta(args.baseline_mib)}
        if on_gpu:
            result["memory"].update(
                torch_max_allocated_mib=torch.cuda.max_memory_allocated() / 2**20,
                torch_reserved_mib=torch.cuda.memory_reserved() / 2**20,
            )
        if mode in (None, "reduce-overhead") and on_gpu:
            result["profile"] = kernel_profile(lambda: net(x_dev), sync)
    np.save(args.out_npy, np.concatenate(outputs))
    return result


def worker_ort(args) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(
        str(Path(args.payload) / f"{args.model}-b{args.batch}.onnx"), providers=["CUDAExecutionProvider"]
    )
    if "CUDAExecutionProvider" not in sess.get_providers():
        raise SystemExit("onnxruntime fell back to the CPU")
    name = sess.get_inputs()[0].name
    inputs = np.load(args.inputs)
    outputs = [sess.run(None, {name: x})[0] for x in inputs]
    x0 = inputs[0]
    result = {
        "runtime": "ort-cuda",
        **time_calls(
            lambda: sess.run(None, {name: x0}), lambda: None, args.warmup, args.repeat, args.stream, inputs.shape[1]
        ),
    }
    result["memory"] = {"device_used_delta_mib": delta(args.baseline_mib)}
    np.save(args.out_npy, np.concatenate(outputs))
    return result


def worker_floor(args) -> dict:
    """What launching N trivial kernels costs: one by one, and as one CUDA-graph replay."""
    import torch

    n, reps = args.kernels, 200
    a = torch.zeros(1, device="cuda")
    sync = torch.cuda.synchronize
    for _ in range(50):
        a.add_(1)
    sync()

    def timed(fn):
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            sync()
            samples.append(time.perf_counter() - start)
        return latency_stats(samples)

    def eager():
        for _ in range(n):
            a.add_(1)

    one_by_one = timed(eager)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eager()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        eager()
    for _ in range(20):
        graph.replay()
    return {
        "kernels": n,
        "eager_launches_ms": one_by_one,
        "graph_replay_ms": timed(graph.replay),
        "sync_only_ms": timed(lambda: None),
    }


def worker_main(args) -> None:
    kind = args.worker
    if kind == "tvm":
        result = worker_tvm(args)
    elif kind == "eager":
        result = worker_torch(args, None)
    elif kind.startswith("compile:"):
        result = worker_torch(args, kind.split(":", 1)[1])
    elif kind == "ort-cuda":
        result = worker_ort(args)
    elif kind == "floor":
        result = worker_floor(args)
    else:
        raise SystemExit(f"unknown worker {kind}")
    Path(args.out_json).write_text(json.dumps(result, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------


def run_worker(kind: str, argv: list[str], out_json: Path, timeout: float, log) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--out-json", str(out_json), *argv]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10.0, timeout))
    except subprocess.TimeoutExpired:
        log(f"    {kind}: timed out after {timeout:.0f} s")
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out_json.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-4:]
        log(f"    {kind}: FAILED ({wall:.0f} s): " + " | ".join(tail))
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
    result = json.loads(out_json.read_text())
    lat = result.get("latency_ms", {})
    log(
        f"    {kind}: median {lat.get('median', float('nan')):.3f} ms, "
        f"{result.get('throughput_ips', float('nan')):.0f} img/s ({wall:.0f} s)"
    )
    return result


def environment(payload: dict) -> dict:
    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
        **{f"payload_{k}": v for k, v in payload.get("built_with", {}).items()},
    }
    rows = smi("name,driver_version,memory.total,compute_cap,clocks.max.sm,power.limit")
    if rows:
        keys = ["gpu", "driver", "gpu_memory_mib", "compute_capability", "sm_clock_max_mhz", "power_limit_w"]
        env.update(dict(zip(keys, rows[0])))
        env["gpus_visible"] = len(rows)
    try:
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        for part in head.split("|"):
            if "CUDA Version" in part:
                env["driver_cuda"] = part.split("CUDA Version:")[1].strip().split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    try:
        import torch

        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    except Exception as exc:  # noqa: BLE001
        env["torch"] = f"unavailable: {exc}"
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers"] = ort.get_available_providers()
    except Exception:  # noqa: BLE001
        env["onnxruntime"] = None
    return env


def cli_smoke(bundle: Path, log) -> dict:
    """The bundle's Python runner as a user runs it (`python3 bin/tvmsqz-run.py --json`)."""
    proc = subprocess.run(
        [sys.executable, str(bundle / "bin" / "tvmsqz-run.py"), "--repeat", "50", "--warmup", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        log(f"  cli {bundle.name}: FAILED: {proc.stderr.strip()}")
        return {"error": proc.stderr.strip(), "rc": proc.returncode}
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"  cli {bundle.name}: {proc.stdout.strip().splitlines()[-2]}")
    return report


def main_parent(args) -> int:
    t_start = time.perf_counter()
    payload_dir = Path(args.payload).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    logfile = open(out / "bench.log", "a")

    def log(msg: str) -> None:
        line = f"[{time.perf_counter() - t_start:6.1f}s] {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    def left() -> float:
        return args.deadline - (time.perf_counter() - t_start)

    payload = json.loads((payload_dir / "payload.json").read_text())
    bundles = payload_dir / "bundles"
    env = environment(payload)
    log(f"environment: {json.dumps(env)}")
    refs = np.load(payload_dir / "references.npz")
    photos = refs["photos"] if "photos" in refs.files else None
    report = {"environment": env, "payload": payload, "rows": [], "cli": {}, "launch_floor": None}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")

    # 1. the bundle CLI on the GPU, every bundle (fails fast if the bundle cannot run at all)
    for job in payload["jobs"]:
        for variant, bundle_name in job["bundles"].items():
            report["cli"][bundle_name] = cli_smoke(bundles / bundle_name, log)
    save()
    if all("error" in r for r in report["cli"].values()):
        log("no bundle runs on this GPU: stopping")
        return 1

    ort_cuda = "CUDAExecutionProvider" in (env.get("onnxruntime_providers") or [])
    plan = ["tvm", "eager", "compile:reduce-overhead"]
    if not args.no_default_compile:
        plan.append("compile:default")
    if ort_cuda:
        plan.append("ort-cuda")
    rows = {}
    for job in payload["jobs"]:
        model, batch = job["model"], job["batch"]
        names, xs = parity_batches(batch, photos)
        stem = work / f"{model}-b{batch}"
        np.save(f"{stem}-inputs.npy", np.stack(xs))
        rows[(model, batch)] = {
            "model": model,
            "batch": batch,
            "samples": names,
            "bundles": job["bundles"],
            "tuned": job.get("tuned", "untuned"),
            "results": {},
            "parity": {},
        }
        report["rows"].append(rows[(model, batch)])
        if not ort_cuda:
            rows[(model, batch)]["results"]["ort-cuda"] = {
                "error": "onnxruntime has no CUDAExecutionProvider here "
                f"(providers: {env.get('onnxruntime_providers')})"
            }

    def measure(kind: str, model: str, batch: int, bundle: str | None = None, label: str | None = None) -> None:
        row = rows[(model, batch)]
        label = label or kind
        if left() < (60 if kind.startswith("compile") else 15):
            row["results"][label] = {"error": "skipped: the run's deadline was near"}
            log(f"    {label}: skipped (deadline)")
            return
        stem = work / f"{model}-b{batch}"
        baseline = used_mib()
        argv = [
            "--payload",
            str(payload_dir),
            "--model",
            model,
            "--batch",
            str(batch),
            "--inputs",
            f"{stem}-inputs.npy",
            "--out-npy",
            f"{stem}-{label}.npy",
            "--repeat",
            str(args.repeat if batch == 1 else max(50, args.repeat // 4)),
            "--warmup",
            str(args.warmup),
            "--stream",
            str(args.stream),
        ]
        if bundle:
            argv += ["--bundle", str(bundles / bundle)]
        if baseline is not None:
            argv += ["--baseline-mib", str(baseline)]
        argv += ["--torch-device", args.torch_device]
        result = run_worker(kind, argv, work / f"{model}-b{batch}-{label}.json", min(left(), args.worker_timeout), log)
        row["results"][label] = result
        if "error" not in result:
            row.setdefault("_outputs", {})[label] = np.load(f"{stem}-{label}.npy")
        save_rows()

    def save_rows() -> None:
        for row in report["rows"]:
            outs = row.get("_outputs", {})
            ref_cpu = (
                refs.get(f"{row['model']}-b{row['batch']}") if f"{row['model']}-b{row['batch']}" in refs.files else None
            )
            row["parity"] = {}
            for label, y in outs.items():
                entry = {}
                if "eager" in outs and label != "eager":
                    entry["vs_eager"] = parity(y, outs["eager"], "torch eager fp32 (cuda)")
                if ref_cpu is not None:
                    entry["vs_cpu_reference"] = parity(y, ref_cpu, "torch fp32 (cpu, payload machine)")
                row["parity"][label] = entry
        clean = {**report, "rows": [{k: v for k, v in r.items() if k != "_outputs"} for r in report["rows"]]}
        (out / "results.json").write_text(json.dumps(clean, indent=2) + "\n")

    if args.only:  # LABEL@MODEL-bN, in this order
        by_key = {f"{j['model']}-b{j['batch']}": j for j in payload["jobs"]}
        for entry in args.only:
            label, _, key = entry.partition("@")
            job = by_key[key]
            log(f"  {key} {label}")
            if label.startswith("tvm"):
                variant = "graph" if label == "tvm" else label[len("tvm-") :]
                measure("tvm", job["model"], job["batch"], job["bundles"][variant], label)
            else:
                measure(label, job["model"], job["batch"])
    else:
        order = [(kind, job) for kind in ("tvm", "eager") for job in payload["jobs"]]
        order += [(kind, job) for kind in plan[2:] for job in payload["jobs"]]
        for kind, job in order:
            model, batch = job["model"], job["batch"]
            log(f"  {model} b{batch} {kind}")
            if kind == "tvm":
                for variant, bundle_name in job["bundles"].items():
                    measure("tvm", model, batch, bundle_name, "tvm" if variant == "graph" else f"tvm-{variant}")
            else:
                measure(kind, model, batch)

    kernels = [
        r["results"].get("tvm", {}).get("profile", {}).get("kernels_per_inference")
        for r in report["rows"]
        if r["batch"] == 1
    ]
    n = int(round(max([k for k in kernels if k] or [20])))
    if left() > 10:
        report["launch_floor"] = run_worker("floor", ["--kernels", str(n)], work / "floor.json", min(left(), 60), log)
    report["total_seconds"] = time.perf_counter() - t_start
    save_rows()
    log(f"done in {report['total_seconds']:.0f} s")
    print(markdown(json.loads((out / "results.json").read_text())))
    return 0


# ----------------------------------------------------------------------------------------------
# report (run where the results come back)
# ----------------------------------------------------------------------------------------------


def fmt(v, spec=".3f", missing="-"):
    return missing if v is None else format(v, spec)


def markdown(report: dict) -> str:
    env = report["environment"]
    cols = [
        ("tvm", "TVM"),
        ("eager", "eager"),
        ("compile:reduce-overhead", "compile (r-o)"),
        ("compile:default", "compile (default)"),
    ]
    lines = [
        "| model | batch | runtime | median ms | min ms | p90 ms | img/s | GPU MiB | vs eager: max abs diff, top-1 "
        "| vs CPU ref: max abs diff, top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        for key, name in cols + [
            ("tvm-nograph", "TVM, no CUDA graph"),
            ("tvm-unfused", "TVM, Fire pairs unfused"),
            ("ort-cuda", "ORT CUDA"),
        ]:
            r = row["results"].get(key)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {row['model']} | {row['batch']} | {name} | not measured: {r['error'][:90]} |||||||")
                continue
            lat = r["latency_ms"]
            par = row.get("parity", {}).get(key, {})
            ve, vc = par.get("vs_eager"), par.get("vs_cpu_reference")

            def agree(p):
                return f"{p['max_abs_diff']:.1e}, {p['top1_agreement']:.0%}" if p else "-"

            lines.append(
                f"| {row['model']} | {row['batch']} | {name} | {lat['median']:.3f} | {lat['min']:.3f} "
                f"| {lat['p90']:.3f} "
                f"| {r['throughput_ips']:.0f} | {fmt(r['memory'].get('device_used_delta_mib'), '.0f')} "
                f"| {'(reference)' if key == 'eager' else agree(ve)} | {agree(vc)} |"
            )
    lines += [
        "",
        "| model | batch | TVM/eager (median) | TVM/compile r-o | TVM/compile default | TVM img/s / eager img/s "
        "| TVM kernels/inference | TVM GPU busy ms | eager kernels | compile r-o kernels |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        res = row["results"]

        def med(k):
            return res.get(k, {}).get("latency_ms", {}).get("median")

        def ratio(a, b):
            return fmt(a / b, ".2f") if a and b else "-"

        tp = res.get("tvm", {}).get("throughput_ips")
        ep = res.get("eager", {}).get("throughput_ips")
        prof = res.get("tvm", {}).get("profile", {})
        lines.append(
            f"| {row['model']} | {row['batch']} | {ratio(med('tvm'), med('eager'))} "
            f"| {ratio(med('tvm'), med('compile:reduce-overhead'))} | {ratio(med('tvm'), med('compile:default'))} "
            f"| {ratio(tp, ep)} | {fmt(prof.get('kernels_per_inference'), '.0f')} "
            f"| {fmt(prof.get('gpu_busy_ms'))} "
            f"| {fmt(res.get('eager', {}).get('profile', {}).get('kernels_per_inference'), '.0f')} "
            f"| {fmt(res.get('compile:reduce-overhead', {}).get('profile', {}).get('kernels_per_inference'), '.0f')} |"
        )
    want = report.get("payload", {}).get("weights_sha256", {})
    seen = {row["model"]: row["results"].get("eager", {}).get("weights_sha256") for row in report["rows"]}
    checks = [
        f"{m}: {'same' if seen.get(m) == d else 'DIFFERENT' if seen.get(m) else 'not checked'}" for m, d in want.items()
    ]
    lines += ["", "Seeded weights on the GPU machine vs the payload's (sha256): " + ", ".join(checks) + "."]
    floor = report.get("launch_floor") or {}
    if floor and "error" not in floor:
        lines += [
            "",
            f"Launch floor: {floor['kernels']} trivial kernels cost {floor['eager_launches_ms']['median']:.3f} ms "
            f"launched one by one, {floor['graph_replay_ms']['median']:.3f} ms as one CUDA-graph replay "
            f"(a bare synchronize: {floor['sync_only_ms']['median']:.3f} ms).",
        ]
    lines += [
        "",
        f"GPU {env.get('gpu')} (compute capability {env.get('compute_capability')}, "
        f"{env.get('gpu_memory_mib')} MiB), driver {env.get('driver')} (CUDA {env.get('driver_cuda')}); "
        f"PyTorch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}), "
        f"TF32 off; TVM {env.get('payload_tvm')} runtime (bundle), nvcc {env.get('payload_nvcc')}; "
        f"Python {env.get('python')}; {env.get('date')}.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        ("tvm", "TVM fused Fire (bundle, CUDA graph)"),
        ("tvm-unfused", "TVM unfused Fire (cuda-sm90 default)"),
        ("eager", "PyTorch eager"),
        ("compile:reduce-overhead", "torch.compile r-o"),
        ("compile:default", "torch.compile default"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, batch, what in ((axes[0], 1, "latency"), (axes[1], 64, "throughput")):
        rows = [r for r in report["rows"] if r["batch"] == batch]
        width = 0.8 / len(keys)
        for i, (key, name) in enumerate(keys):
            vals = []
            for r in rows:
                res = r["results"].get(key, {})
                if "error" in res or not res:
                    vals.append(0)
                else:
                    vals.append(res["latency_ms"]["median"] if what == "latency" else res["throughput_ips"])
            ax.bar(np.arange(len(rows)) + i * width, vals, width, label=name)
        ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2)
        ax.set_xticklabels([r["model"] for r in rows])
        ax.set_ylabel("median latency, ms (lower is better)" if what == "latency" else "images/s (higher is better)")
        ax.set_title(f"batch {batch}: {what}")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['environment'].get('gpu')}: untuned TVM (dlight + tvmsqz GPU rules) vs PyTorch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--payload", default=str(HERE))
    p.add_argument("--out", default="gpu-bench-out")
    p.add_argument("--work", default="/tmp/gpu-bench-work")
    p.add_argument("--repeat", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--stream", type=int, default=50)
    p.add_argument("--deadline", type=float, default=400.0, help="seconds after which nothing new is started")
    p.add_argument("--worker-timeout", type=float, default=150.0)
    p.add_argument("--no-default-compile", action="store_true")
    p.add_argument(
        "--only",
        nargs="+",
        help="measure just these, in order: LABEL@MODEL-bN with LABEL tvm, "
        "tvm-VARIANT, eager, compile:MODE (e.g. tvm-unfused@squeezenet1_0-b64)",
    )
    p.add_argument(
        "--torch-device",
        default="cuda",
        help="cpu: a dry run of this script without a GPU (with a CPU bundle; numbers meaningless)",
    )
    p.add_argument("--report", help="results.json: print its markdown table (and --plot PNG)")
    p.add_argument("--plot")
    p.add_argument("--complement", help="a second results.json whose measurements fill what --report lacks")
    # worker-only
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out-json", help=argparse.SUPPRESS)
    p.add_argument("--out-npy", help=argparse.SUPPRESS)
    p.add_argument("--bundle", help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--baseline-mib", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--kernels", type=int, default=20, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker_main(args)
        return 0
    if args.report:
        report = json.loads(Path(args.report).read_text())
        if args.complement:
            extra = {(r["model"], r["batch"]): r for r in json.loads(Path(args.complement).read_text())["rows"]}
            for row in report["rows"]:
                more = extra.get((row["model"], row["batch"]), {})
                for key, value in more.get("results", {}).items():
                    if "error" in row["results"].get(key, {"error": ""}) and "error" not in value:
                        row["results"][key] = value
                        row["parity"][key] = more["parity"].get(key, {})
        print(markdown(report))
        if args.plot:
            plot(report, Path(args.plot))
        return 0
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
