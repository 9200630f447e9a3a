"""GPU benchmark: tvmsqz (TVM, CUDA target) vs PyTorch eager (cuDNN) vs torch.compile, one GPU, one run.

Meant for a machine with an NVIDIA GPU; it is not part of the test suite (CI has no GPU).
STATUS: written and smoke-tested on a CPU only (`--device cpu`); it has NOT yet been run on a GPU: it
needs TVM on the GPU machine. The H200 numbers in benchmarks/RESULTS.md come from its twin for a GPU
machine without TVM, `gpu_bundle_bench.py` (runtime-only bundles built by `gpu_payload.py`).

    # everything on the GPU machine (needs nvcc there too):
    python benchmarks/gpu_bench.py --tag h100 --target cuda
    # or build on any machine with nvcc, bench on the GPU machine (TVM runtime + driver only):
    python benchmarks/gpu_bench.py --tag h100 --target cuda-sm90 --build-only
    python benchmarks/gpu_bench.py --tag h100 --target cuda-sm90        # reuses the artifacts

For every model and batch size (default: all built-in models, batch 1 and 64) it measures, each
runtime in its own fresh process so that memory and CUDA state do not mix:

* latency: wall time of one inference followed by a device synchronize (median, p90, min);
* throughput: `--stream` inferences queued back to back, one synchronize, images/s (best of 5);
* GPU memory: device memory used while the process runs (CUDA context included), from
  nvidia-smi, minus what was used before it started; PyTorch's allocator peak besides;
* parity: max abs diff, range-relative diff and top-1/top-5 agreement of TVM (and torch.compile)
  against PyTorch eager in strict FP32 (TF32 off; `--tf32` turns it on for PyTorch), on seeded
  random inputs and real photos; the Caffe model has no PyTorch twin and is compared with
  ONNX Runtime on the CPU;
* the launch-bound floor: how many kernels one TVM inference launches and how much GPU time they
  take (CUPTI through torch.profiler), next to what launching that many empty kernels costs, one
  by one and replayed from one CUDA graph.

Writes benchmarks/results/gpu-<tag>/results.json and results.md (a table for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bundle_bench import time_calls, worker_floor  # one timing rule and one launch floor for both GPU benches

HERE = Path(__file__).resolve().parent
MODELS = ["squeezenet1_0", "squeezenet1_1", "squeezenet1_0_bypass", "squeezenet1_0_complex_bypass", "squeezenet1_0_dc"]
RUNTIMES = ("tvm", "eager", "compile")


# ----------------------------------------------------------------------------------------------
# small utilities (used by the parent and the workers)
# ----------------------------------------------------------------------------------------------


def gpu_query(fields: str) -> list[list[str]]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    out = subprocess.run(
        [smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30
    )
    return (
        [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines()]
        if out.returncode == 0
        else []
    )


def gpu_used_mib(index: int = 0) -> float | None:
    rows = gpu_query("memory.used")
    return float(rows[index][0]) if len(rows) > index else None


def process_gpu_mib() -> float | None:
    """This process's GPU memory per nvidia-smi (None where the PID is not visible, e.g. containers)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    out = subprocess.run(
        [smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()):
            try:
                return float(parts[1])
            except ValueError:
                return None
    return None


def memory_report(baseline_mib: float | None) -> dict:
    used = gpu_used_mib()
    return {
        "device_used_delta_mib": None if used is None or baseline_mib is None else used - baseline_mib,
        "process_mib": process_gpu_mib(),
    }


def first_output(out):
    if isinstance(out, (list, tuple)) or (hasattr(out, "__getitem__") and not hasattr(out, "numpy")):
        return out[0]
    return out


# ----------------------------------------------------------------------------------------------
# workers: one fresh process per runtime
# ----------------------------------------------------------------------------------------------


def kernel_profile(run, sync, iters: int = 5) -> dict:
    """Kernels launched per inference and their summed GPU time, from CUPTI via torch.profiler.

    CUPTI sees every kernel of the process, TVM's included (graph replays too).
    """
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile

        if not torch.cuda.is_available():
            return {"error": "PyTorch has no CUDA"}
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                run()
            sync()
            torch.cuda.synchronize()
        kernels = [
            e
            for e in prof.events()
            if str(getattr(e, "device_type", "")).endswith("CUDA")
            and not any(w in e.name for w in ("Memcpy", "Memset", "memcpy", "memset"))
        ]
        busy_us = sum(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0) for e in kernels)
        return {"kernels_per_inference": len(kernels) / iters, "gpu_busy_ms": busy_us / iters / 1e3}
    except Exception as exc:  # noqa: BLE001 - the profile is optional
        return {"error": f"{type(exc).__name__}: {exc}"}


def worker_tvm(args) -> dict:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    dev = tvm.cuda(0) if args.device == "cuda" else tvm.cpu(0)
    if not dev.exist:
        raise SystemExit(f"no {args.device} device visible to TVM")
    lib = tvm.runtime.load_module(args.artifact)
    vm = VirtualMachine(lib, dev)
    main = vm["main"]
    inputs = np.load(args.inputs)
    outputs = []
    for x in inputs:  # the first call also captures the CUDA graph
        outputs.append(first_output(main(tvm.runtime.tensor(x, device=dev))).numpy())
    x_dev = tvm.runtime.tensor(inputs[0], device=dev)
    timing = time_calls(lambda: main(x_dev), dev.sync, args.warmup, args.repeat, args.stream, inputs.shape[1])
    result = {"runtime": "tvm", **timing, "memory": memory_report(args.baseline_mib)}
    if args.device == "cuda":
        result["profile"] = kernel_profile(lambda: main(x_dev), dev.sync)
        result["device_name"] = dev.device_name
        result["compute_version"] = dev.compute_version
    np.save(args.out_npy, np.concatenate(outputs))
    return result


def worker_torch(args, compiled: bool) -> dict:
    import torch

    from tvmsqz.models import torch_model

    dev = torch.device(args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("PyTorch has no CUDA")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    net = torch_model(args.model).eval().to(dev)
    inputs = np.load(args.inputs)
    result: dict = {"runtime": "compile" if compiled else "eager"}
    with torch.inference_mode():
        if compiled:
            start = time.perf_counter()
            net = torch.compile(net, mode=args.compile_mode)
            net(torch.from_numpy(inputs[0]).to(dev))
            sync()
            result["compile_seconds"] = time.perf_counter() - start
            result["compile_mode"] = args.compile_mode
        outputs = [net(torch.from_numpy(x).to(dev)).float().cpu().numpy().copy() for x in inputs]
        x_dev = torch.from_numpy(inputs[0]).to(dev)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result.update(time_calls(lambda: net(x_dev), sync, args.warmup, args.repeat, args.stream, inputs.shape[1]))
    result["memory"] = memory_report(args.baseline_mib)
    if args.device == "cuda":
        result["memory"]["torch_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["memory"]["torch_reserved_mib"] = torch.cuda.memory_reserved() / 2**20
        if not compiled:
            with torch.inference_mode():
                result["profile"] = kernel_profile(lambda: net(x_dev), sync)
    np.save(args.out_npy, np.concatenate(outputs))
    return result


def worker_main(args) -> None:
    if args.worker == "tvm":
        result = worker_tvm(args)
    elif args.worker in ("eager", "compile"):
        result = worker_torch(args, compiled=args.worker == "compile")
    elif args.worker == "floor":
        result = worker_floor(args)
    else:
        raise SystemExit(f"unknown worker {args.worker}")
    Path(args.out_json).write_text(json.dumps(result, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# parent: build artifacts, run workers, compare, write the table
# ----------------------------------------------------------------------------------------------


def run_worker(kind: str, common: list[str], out_json: Path, timeout: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--out-json", str(out_json), *common]
    print("  +", kind, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0 or not out_json.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(out_json.read_text())


def build_artifact(model: str, batch: int, spec, path: Path, database, fuse: bool) -> dict:
    from tvmsqz.build import compile_module, export_artifact
    from tvmsqz.frontend import load_model

    loaded = load_model(model, batch=batch)
    executable, report = compile_module(loaded.mod, spec, database=database, fuse=fuse)
    return export_artifact(executable, spec, path, model=loaded.name, input_spec=loaded.input, report=report)


def parity_inputs(model: str, batch: int) -> tuple[list[str], np.ndarray]:
    from tvmsqz.benchmark import parity_inputs as inputs_for
    from tvmsqz.models import get_model_info

    info = get_model_info(model)
    names, batches = inputs_for((batch, *info.input_shape[1:]), info.preprocess)
    return names, np.stack(batches)


def reference_outputs(model: str, batch: int, inputs: np.ndarray) -> np.ndarray:
    """ONNX Runtime on the CPU (the reference for models without a PyTorch twin)."""
    import onnxruntime as ort

    from tvmsqz.models import load_onnx

    onnx_model, _ = load_onnx(model, batch=batch)
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x})[0] for x in inputs])


def environment(args, spec) -> dict:
    import tvm

    import tvmsqz

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "tvm": tvm.__version__,
        "tvmsqz": tvmsqz.__version__,
        "target": spec.name,
        "arch": (spec.tvm_config or {}).get("arch"),
        "tf32": args.tf32,
        "device": args.device,
    }
    rows = gpu_query("name,driver_version,memory.total,compute_cap")
    if rows:
        env.update(
            gpu=rows[0][0],
            driver=rows[0][1],
            gpu_memory_mib=rows[0][2],
            compute_capability=rows[0][3],
            gpus_visible=len(rows),
        )
    try:
        import torch

        env.update(
            torch=torch.__version__,
            torch_cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        )
    except ImportError:
        env["torch"] = None
    nvcc = shutil.which("nvcc")
    if nvcc:
        from tvmsqz.backends.cuda import nvcc_version

        env["nvcc"] = nvcc_version(nvcc)
    return env


def parity(out: np.ndarray, ref: np.ndarray, name: str) -> dict:
    from tvmsqz.benchmark import parity as compare

    return compare(out, ref, name)


def fmt(value, spec: str = ".2f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def markdown(env: dict, rows: list[dict], floor: dict | None) -> str:
    lines = [
        f"### GPU: {env.get('gpu', 'not measured')} ({env['target']}, {env['arch']})",
        "",
        f"Driver {env.get('driver', '?')}, compute capability {env.get('compute_capability', '?')}; "
        f"TVM {env['tvm']}, tvmsqz {env['tvmsqz']}, PyTorch {env.get('torch')} (CUDA {env.get('torch_cuda')}, "
        f"cuDNN {env.get('cudnn')}), nvcc {env.get('nvcc', '-')}; PyTorch TF32 {'on' if env['tf32'] else 'off'}; "
        f"{env['date']}.",
        "",
        "| model | batch | TVM ms | eager ms | compile ms | TVM img/s | eager img/s | compile img/s "
        "| TVM/eager | TVM/compile | GPU MiB TVM / eager / compile | max abs diff | top-1 | tuned |",
        "|" + "---|" * 14,
    ]
    for r in rows:
        res = r["results"]

        def med(k):
            return res.get(k, {}).get("latency_ms", {}).get("median")

        def ips(k):
            return res.get(k, {}).get("throughput_ips")

        def mem(k):
            return res.get(k, {}).get("memory", {}).get("device_used_delta_mib")

        tvm_ms, eager_ms, comp_ms = med("tvm"), med("eager"), med("compile")
        par = r.get("parity", {}).get("tvm", {})
        lines.append(
            f"| {r['model']} | {r['batch']} | {fmt(tvm_ms, '.3f')} | {fmt(eager_ms, '.3f')} | {fmt(comp_ms, '.3f')} "
            f"| {fmt(ips('tvm'), '.0f')} | {fmt(ips('eager'), '.0f')} | {fmt(ips('compile'), '.0f')} "
            f"| {fmt(tvm_ms / eager_ms if tvm_ms and eager_ms else None)} "
            f"| {fmt(tvm_ms / comp_ms if tvm_ms and comp_ms else None)} "
            f"| {fmt(mem('tvm'), '.0f')} / {fmt(mem('eager'), '.0f')} / {fmt(mem('compile'), '.0f')} "
            f"| {fmt(par.get('max_abs_diff'), '.1e')} ({par.get('reference', '-')}) "
            f"| {fmt(par.get('top1_agreement'), '.0%')} | {r['tuned']} |"
        )
    if floor:
        lines += ["", "Launch-bound floor (batch 1): " + floor_text(rows, floor)]
    errors = [
        f"{r['model']} b{r['batch']} {k}: {v['error']}" for r in rows for k, v in r["results"].items() if "error" in v
    ]
    if errors:
        lines += ["", "Not measured:"] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def floor_text(rows: list[dict], floor: dict) -> str:
    if "error" in floor:
        return f"not measured ({floor['error']})"
    n = floor["kernels"]
    parts = [
        f"{n} trivial kernels cost {floor['eager_launches_ms']['median']:.3f} ms launched one by one "
        f"and {floor['graph_replay_ms']['median']:.3f} ms as one CUDA-graph replay "
        f"(a bare synchronize: {floor['sync_only_ms']['median']:.3f} ms)."
    ]
    for r in rows:
        prof = r["results"].get("tvm", {}).get("profile", {})
        if r["batch"] == 1 and "kernels_per_inference" in prof:
            parts.append(
                f"{r['model']}: TVM launches {prof['kernels_per_inference']:.0f} kernels, "
                f"{prof['gpu_busy_ms']:.3f} ms of GPU time, "
                f"{r['results']['tvm']['latency_ms']['median']:.3f} ms end to end."
            )
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="gpu")
    parser.add_argument("--target", default="cuda", help="tvmsqz target (cuda = this GPU's architecture)")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--stream", type=int, default=50, help="inferences queued per throughput sample")
    parser.add_argument("--outdir", type=Path, default=None, help="default: benchmarks/results/gpu-<tag>")
    parser.add_argument("--artifacts", type=Path, default=None, help="artifact folder (default: <outdir>/artifacts)")
    parser.add_argument("--build-only", action="store_true", help="compile the artifacts and stop (needs nvcc)")
    parser.add_argument("--database", type=Path, default=None, help="tuning database (default: schedules/<target>)")
    parser.add_argument("--no-tuning", action="store_true")
    parser.add_argument("--no-fuse", action="store_true")
    parser.add_argument(
        "--compile-mode",
        default="reduce-overhead",
        help="torch.compile mode; reduce-overhead uses CUDA graphs, as the TVM build does",
    )
    parser.add_argument("--no-torch-compile", action="store_true")
    parser.add_argument("--tf32", action="store_true", help="let PyTorch use TF32 (TVM kernels are FP32)")
    parser.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="cpu: smoke test of this script with an x86 target (numbers meaningless)",
    )
    parser.add_argument("--timeout", type=int, default=1800)
    # worker-only options
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out-json", help=argparse.SUPPRESS)
    parser.add_argument("--out-npy", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-mib", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kernels", type=int, default=30, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return

    from tvmsqz.database import check_database, default_database
    from tvmsqz.models import get_model_info
    from tvmsqz.targets import get_target

    spec = get_target(args.target)
    outdir = args.outdir or HERE / "results" / f"gpu-{args.tag}"
    artifacts = args.artifacts or outdir / "artifacts"
    raw = outdir / "raw"
    for folder in (outdir, artifacts, raw):
        folder.mkdir(parents=True, exist_ok=True)
    database = None
    if not args.no_tuning:
        database = args.database or default_database(spec)
        if database is not None:
            check_database(database, spec)
    tuned = "tuned" if database else "untuned"

    jobs = [(m, b) for b in args.batch for m in args.models]
    for model, batch in jobs:
        so = artifacts / f"{model}-b{batch}-{spec.name}-{tuned}{'-unfused' if args.no_fuse else ''}.so"
        if not so.is_file():
            print(f"building {so.name}", flush=True)
            build_artifact(model, batch, spec, so, database, not args.no_fuse)
    if args.build_only:
        print(f"artifacts in {artifacts}")
        return

    env = environment(args, spec)
    rows = []
    for model, batch in jobs:
        print(f"{model} batch {batch}", flush=True)
        so = artifacts / f"{model}-b{batch}-{spec.name}-{tuned}{'-unfused' if args.no_fuse else ''}.so"
        names, inputs = parity_inputs(model, batch)
        stem = raw / f"{model}-b{batch}"
        np.save(f"{stem}-inputs.npy", inputs)
        has_torch = get_model_info(model).source == "torch"
        results, outputs = {}, {}
        for kind in RUNTIMES:
            if kind != "tvm" and not has_torch:
                results[kind] = {"error": "no PyTorch model (Caffe model)"}
                continue
            if kind == "compile" and args.no_torch_compile:
                continue
            baseline = gpu_used_mib() if args.device == "cuda" else None
            common = [
                "--device",
                args.device,
                "--inputs",
                f"{stem}-inputs.npy",
                "--out-npy",
                f"{stem}-{kind}.npy",
                "--model",
                model,
                "--artifact",
                str(so),
                "--repeat",
                str(args.repeat),
                "--warmup",
                str(args.warmup),
                "--stream",
                str(args.stream),
                "--compile-mode",
                args.compile_mode,
                *(["--tf32"] if args.tf32 else []),
                *(["--baseline-mib", str(baseline)] if baseline is not None else []),
            ]
            results[kind] = run_worker(kind, common, Path(f"{stem}-{kind}.json"), args.timeout)
            if "error" not in results[kind]:
                outputs[kind] = np.load(f"{stem}-{kind}.npy")
        if "eager" in outputs:
            reference, ref_name = outputs["eager"], "torch eager"
        else:
            reference, ref_name = reference_outputs(model, batch, inputs), "onnxruntime cpu"
        par = {
            k: parity(v, reference, ref_name) for k, v in outputs.items() if k != "eager" or ref_name != "torch eager"
        }
        for p in par.values():
            p["samples"] = names
        rows.append(
            {"model": model, "batch": batch, "artifact": so.name, "tuned": tuned, "results": results, "parity": par}
        )

    floor = None
    if args.device == "cuda":
        kernels = [
            r["results"].get("tvm", {}).get("profile", {}).get("kernels_per_inference") for r in rows if r["batch"] == 1
        ]
        n = int(round(max([k for k in kernels if k] or [30])))
        floor = run_worker("floor", ["--device", "cuda", "--kernels", str(n)], raw / "floor.json", 600)
    report = {"environment": env, "rows": rows, "launch_floor": floor}
    (outdir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (outdir / "results.md").write_text(markdown(env, rows, floor))
    print(markdown(env, rows, floor))
    print(f"wrote {outdir / 'results.json'} and {outdir / 'results.md'}")


if __name__ == "__main__":
    main()
