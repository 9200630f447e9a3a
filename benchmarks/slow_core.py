"""A slow core: TVM's and ONNX Runtime's 2-thread latency with and without a busy process pinned to one core.

    python benchmarks/slow_core.py squeezenet1_1 --tag zen5

The busy process (a Python spin loop, `os.sched_setaffinity` to the host's last core) stands in for
what a cloud VM's second vCPU does when the host slows it: the runtime's threads still start on
both cores, one of them now gets about half a core. A runtime whose parallel loops give each thread
one equal chunk waits for the slow one at every kernel; one whose threads claim chunks as they free
up loses only that core's missing half.

Each runtime runs in its own fresh process (`tvmsqz.peers.run_worker`, as `tvmsqz bench` times
them), at the host's thread count; rounds alternate idle and busy so host drift hits both. TVM
variants (`--tvm-env NAME:VAR=VALUE,...`) run the same artifact under other runtime settings (the
artifact's parallel launcher is chosen at load: `TVMSQZ_PARALLEL=static` is TVM's own thread pool).
Writes a JSON file, a markdown table and a plot under benchmarks/results/slow-core-TAG/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def busy_process(core: int) -> subprocess.Popen:
    """A process spinning on `core` alone (until killed)."""
    code = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def parse_variants(items: list[str]) -> dict[str, dict[str, str]]:
    """`NAME:VAR=VALUE,VAR=VALUE` -> {NAME: {VAR: VALUE}}; `tvm` (no extra settings) always first."""
    variants: dict[str, dict[str, str]] = {"tvm": {}}
    for item in items:
        name, _, settings = item.partition(":")
        variants[name] = dict(pair.split("=", 1) for pair in settings.split(",") if pair)
    return variants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="squeezenet1_1")
    parser.add_argument(
        "--so", type=Path, help="a compiled artifact (default: MODEL compiled with the default database)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--tvm-env", action="append", default=[], help="NAME:VAR=VALUE,... a TVM variant")
    parser.add_argument("--tag", default="local")
    args = parser.parse_args()

    import numpy as np

    import tvmsqz
    from tvmsqz import peers
    from tvmsqz.benchmark import _machine, _versions
    from tvmsqz.frontend import random_input
    from tvmsqz.spec import host_cores

    threads = host_cores()
    core = (os.sched_getaffinity(0) and max(os.sched_getaffinity(0))) or 1
    out_dir = HERE / "results" / f"slow-core-{args.tag}"
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = parse_variants(args.tvm_env)
    with tempfile.TemporaryDirectory(prefix="slow-core-") as tmp:
        work = Path(tmp)
        model = tvmsqz.load_model(args.model)
        so = args.so
        if so is None:
            so = work / "model.so"
            tvmsqz.compile(model, "x86", output=so)
        onnx_path = work / "model.onnx"
        onnx_path.write_bytes(model.onnx.SerializeToString())
        inputs = work / "inputs.npy"
        np.save(inputs, random_input(model.input)[None])
        sources = peers.Sources(onnx=onnx_path, workdir=work, artifact=so)
        prepared = {"onnxruntime": peers.module("onnxruntime").prepare(sources), "tvm": str(so)}
        samples: dict[str, dict[str, list[float]]] = {}
        runtimes = [*variants, "onnxruntime"]
        for r in range(args.rounds):
            for condition in ("idle", "busy"):
                busy = busy_process(core) if condition == "busy" else None
                try:
                    time.sleep(0.5)
                    for name in runtimes:
                        runtime = "onnxruntime" if name == "onnxruntime" else "tvm"
                        saved = {k: os.environ.get(k) for k in variants.get(name, {})}
                        os.environ.update(variants.get(name, {}))
                        try:
                            got = peers.run_worker(
                                runtime, prepared[runtime], inputs, threads, args.repeat, work / f"{name}.json"
                            )
                        finally:
                            for k, v in saved.items():
                                if v is None:
                                    os.environ.pop(k, None)
                                else:
                                    os.environ[k] = v
                        median = got["latency"]["median"]
                        samples.setdefault(name, {}).setdefault(condition, []).append(median)
                        print(f"round {r + 1}/{args.rounds} {condition:4s} {name:18s} {median:.3f} ms", flush=True)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
    rows = []
    for name in runtimes:
        idle = statistics.median(samples[name]["idle"])
        busy = statistics.median(samples[name]["busy"])
        rows.append(
            {
                "runtime": name,
                "settings": variants.get(name, {}),
                "idle_ms": round(idle, 4),
                "busy_ms": round(busy, 4),
                "slowdown": round(busy / idle, 3),
                "rounds": samples[name],
            }
        )
    ort = next(r for r in rows if r["runtime"] == "onnxruntime")
    for row in rows:
        row["slowdown_vs_onnxruntime"] = round(row["slowdown"] / ort["slowdown"], 3)
    data = {
        "model": args.model,
        "threads": threads,
        "busy_core": core,
        "repeat": args.repeat,
        "rounds": args.rounds,
        "rows": rows,
        "machine": _machine(),
        "versions": _versions(),
    }
    (out_dir / f"{args.model}.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        f"| runtime | settings | {threads}T idle ms | {threads}T with a busy core ms | slowdown | vs ORT's slowdown |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "default"
        lines.append(
            f"| {row['runtime']} | {settings} | {row['idle_ms']:.3f} | {row['busy_ms']:.3f} | {row['slowdown']:.2f}x "
            f"| {row['slowdown_vs_onnxruntime']:.2f} |"
        )
    table = "\n".join(lines)
    (out_dir / f"{args.model}.md").write_text(table + "\n")
    print(table)
    plot(rows, out_dir / f"{args.model}.png", f"{args.model}: {threads} threads, busy process pinned to core {core}")
    return 0


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["idle_ms"] for r in rows], 0.4, label="idle")
    ax.bar(x + 0.2, [r["busy_ms"] for r in rows], 0.4, label="one core busy")
    for i, r in enumerate(rows):
        ax.text(i + 0.2, r["busy_ms"], f"{r['slowdown']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [r["runtime"] for r in rows], fontsize=8)
    ax.set_ylabel("median latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
