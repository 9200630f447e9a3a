"""Per-convolution table: tvmsqz's kernel time vs ONNX Runtime's node time, GFLOP/s, share of peak.

    python benchmarks/per_conv.py squeezenet1_1 [--threads 1] [--database DIR] [--json out.json]

Both runtimes run the same model in this process one after the other (never interleaved) with
the same thread count. tvmsqz: the Relax VM's call instrumentation, one entry per call in graph
order (kernels shared by identically shaped layers are timed per call). ONNX Runtime: its own
profiler (`enable_profiling`), one entry per node run. The convolutions of both are matched in
graph order. The fp32 peak is measured, not quoted: single-thread OpenBLAS sgemm (numpy) on
2048x2048 matrices, the best of several runs, times the thread count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy loads OpenBLAS: the peak is per core
import numpy as np


def measured_peak_gflops() -> float:
    """Single-thread sgemm GFLOP/s (OpenBLAS through numpy): the practical fp32 peak of one core."""
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((2048, 2048), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def tvm_conv_calls(model: str, threads: int, database: str | None, repeat: int = 30) -> tuple[list[dict], dict]:
    """(per-call list of {kernel, us, flops} for conv kernels in graph order, build info)."""
    import tvm
    from tvm.runtime.vm import VMInstrumentReturnKind

    import tvmsqz
    from tvmsqz.build import prepare
    from tvmsqz.frontend import load_model
    from tvmsqz.runtime import load
    from tvmsqz.targets import get_target
    from tvmsqz.tuning.tasks import kernel_flops

    spec = get_target("x86")
    out = Path(tempfile.mkdtemp(prefix="tvmsqz-perconv-")) / "m.so"
    tvmsqz.compile(tvmsqz.load_model(model), spec, output=out, database=Path(database) if database else None)
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    loaded = load_model(model)
    # FLOPs per conv call in graph order, counted on the direct-convolution graph: a Winograd
    # kernel does fewer multiplies, and its GFLOP/s are the effective (direct-equivalent) ones.
    direct = dataclasses.replace(spec, data={**spec.data, "layout": {**spec.data.get("layout", {}), "winograd": 0}})
    prepared = prepare(loaded.mod, direct)
    flops_of = {
        gv.name_hint: kernel_flops(tvm.IRModule({"main": f}))
        for gv, f in prepared.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc)
    }
    direct_flops = [
        flops_of[callee]
        for callee in re.findall(r"R\.call_tir(?:_inplace)?\((?:cls\.)?(\w+)", prepared["main"].script())
        if "conv2d" in callee
    ]
    artifact = load(out)
    x = np.random.default_rng(0).standard_normal(loaded.input.shape).astype("float32")
    arg = tvm.runtime.tensor(x)
    for _ in range(10):
        artifact.vm["main"](arg)
    per_run: list[list[tuple[str, float]]] = []
    current: list[tuple[str, float]] = []
    started: dict[str, float] = {}

    def instrument(func, name, before_run, ret_value, *args):
        if name.startswith(("vm.builtin", "relax.")) or name == "main":
            return VMInstrumentReturnKind.NO_OP
        if before_run:
            started[name] = time.perf_counter()
        else:
            current.append((name, (time.perf_counter() - started.pop(name)) * 1e6))
        return VMInstrumentReturnKind.NO_OP

    artifact.vm.set_instrument(instrument)
    for _ in range(repeat):
        current = []
        artifact.vm["main"](arg)
        per_run.append(current)
    artifact.vm.set_instrument(None)
    calls = []
    for i, (name, _) in enumerate(per_run[0]):
        if "conv2d" not in name:
            continue
        us = float(np.median([run[i][1] for run in per_run]))
        calls.append({"kernel": name, "us": us})
    if len(calls) == len(direct_flops):
        for call, flops in zip(calls, direct_flops):
            call["flops"] = flops
    return calls, manifest


def ort_conv_nodes(model: str, threads: int, repeat: int = 30) -> list[dict]:
    """Per-node median time of every Conv (ORT fuses Conv+ReLU into one node) in graph order."""
    import onnxruntime as ort

    from tvmsqz.frontend import load_model

    loaded = load_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="tvmsqz-ortprof-")) / "ort")
    sess = ort.InferenceSession(loaded.onnx.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(loaded.input.shape).astype("float32")
    name = sess.get_inputs()[0].name
    for _ in range(10 + repeat):
        sess.run(None, {name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, list[float]] = defaultdict(list)
    order: list[str] = []
    for ev in events:
        if ev.get("cat") != "Node" or not ev["name"].endswith("_kernel_time"):
            continue
        node = ev["name"].removesuffix("_kernel_time")
        if ev.get("args", {}).get("op_name") not in ("Conv", "FusedConv", "NchwcConv"):
            continue
        if node not in times:
            order.append(node)
        times[node].append(float(ev["dur"]))
    graph_order = {node.name: i for i, node in enumerate(loaded.onnx.graph.node)}
    # ORT runs nodes in its own order and names a fused Conv+ReLU after its output
    # ("<relu node>_output_0_nchwc"): sort back into graph order through that name.
    order.sort(key=lambda n: graph_order.get(n.removesuffix("_nchwc").removesuffix("_output_0"), len(graph_order)))
    return [{"node": n, "op": "Conv", "us": float(np.median(times[n][10:] or times[n]))} for n in order]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--database")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    peak = measured_peak_gflops() * args.threads
    tvm_calls, manifest = tvm_conv_calls(args.model, args.threads, args.database)
    ort_nodes = ort_conv_nodes(args.model, args.threads)
    rows = []
    for i, call in enumerate(tvm_calls):
        ort_us = ort_nodes[i]["us"] if i < len(ort_nodes) and len(ort_nodes) == len(tvm_calls) else None
        gflops = call["flops"] / call["us"] / 1e3 if call["us"] and call["flops"] else None
        call.setdefault("flops", 0.0)
        layout = "NCHW16c" if "nchwc" in call["kernel"] else "NCHW"
        rows.append(
            {
                **call,
                "layout": layout + (" Winograd F(4,3)" if "winograd" in call["kernel"] else ""),
                "gflops": gflops,
                "ort_us": ort_us,
                "ort_gflops": call["flops"] / ort_us / 1e3 if ort_us else None,
                "share_of_peak": gflops / peak if gflops else None,
                "tuned": call["kernel"].removesuffix("_prepacked") in manifest["kernels"]["tuned"]
                or call["kernel"] in manifest["kernels"]["tuned"],
            }
        )
    total_tvm = sum(r["us"] for r in rows)
    total_ort = sum(r["ort_us"] or 0 for r in rows)
    print(
        f"model {args.model}, {args.threads} thread(s), measured fp32 peak {peak:.0f} GFLOP/s "
        f"(sgemm x {args.threads}); database {manifest['database']}"
    )
    print(
        f"{'#':>2} {'kernel':52} {'layout':24} {'MFLOP':>7} {'tvm us':>8} {'GFLOP/s':>8} {'peak':>5} "
        f"{'ORT us':>8} {'ORT GF/s':>8}"
    )
    for i, r in enumerate(rows):
        print(
            f"{i:2d} {r['kernel'][:52]:52} {r['layout']:24} {r['flops'] / 1e6:7.1f} {r['us']:8.1f} "
            f"{(r['gflops'] or 0):8.1f} {(r['share_of_peak'] or 0):5.0%} {(r['ort_us'] or 0):8.1f} "
            f"{(r['ort_gflops'] or 0):8.1f}"
        )
    print(f"convolutions total: tvmsqz {total_tvm:.0f} us, ONNX Runtime {total_ort:.0f} us")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "threads": args.threads,
                    "peak_gflops": peak,
                    "rows": rows,
                    "tvm_total_us": total_tvm,
                    "ort_total_us": total_ort,
                    "database": manifest["database"],
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
