"""Batch throughput (images/s) of TVM and every peer from `tvmsqz bench --batch N --json` reports:
a markdown table, a JSON summary and a bar plot (issue 23's batch-8 table).

    python -m tvmsqz bench squeezenet1_1 --batch 8 --json benchmarks/results/batch8-zen5/squeezenet1_1.json
    python benchmarks/throughput.py benchmarks/results/batch8-zen5/*.json --tag batch8-zen5

Each report's runtimes were timed in one `bench` run, each in its own fresh process, at the host's
thread count and at 1 thread; the ratio is TVM's images/s over the fastest fp32 peer's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = ("onnxruntime", "openvino", "ncnn", "torch")


def rows_of(report: dict, label: str) -> dict:
    """images/s per runtime at both thread counts, and TVM over the fastest peer."""
    batch = int(report["batch"])
    out: dict = {"label": label, "model": report["model"], "batch": batch, "tuned": len(report["tuning"]["tuned"])}
    out["kernels"] = report["tuning"]["kernels"]
    for key, threads in (("latency_ms", "nT"), ("latency_ms_1thread", "1T")):
        ips = {name: batch / (m["median"] / 1e3) for name, m in (report.get(key) or {}).items() if name != "tvm_int8"}
        peers = {k: v for k, v in ips.items() if k in PEERS}
        best = max(peers, key=peers.get) if peers else None
        out[threads] = {
            "images_per_s": {k: round(v, 1) for k, v in ips.items()},
            "fastest_peer": best,
            "tvm_over_fastest_peer": round(ips["tvm"] / peers[best], 3) if best and "tvm" in ips else None,
        }
    return out


def table(rows: list[dict], threads: int) -> str:
    names = ["tvm", *PEERS]
    head = "| run | model | batch | tuned kernels | threads | " + " | ".join(f"{n} img/s" for n in names)
    head += " | TVM / fastest peer |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        for key, shown in (("nT", str(threads)), ("1T", "1")):
            ips = r[key]["images_per_s"]
            cells = " | ".join(f"{ips[n]:.0f}" if n in ips else "-" for n in names)
            ratio = r[key]["tvm_over_fastest_peer"]
            lines.append(
                f"| {r['label']} | {r['model']} | {r['batch']} | {r['tuned']}/{r['kernels']} | {shown} | {cells} "
                f"| {ratio:.2f} ({r[key]['fastest_peer']}) |"
            )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = ["tvm", *PEERS]
    groups = [(r, key) for r in rows for key in ("nT", "1T")]
    x = np.arange(len(groups))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(groups)), 4))
    for i, name in enumerate(names):
        vals = [r[key]["images_per_s"].get(name, 0) for r, key in groups]
        ax.bar(x + (i - len(names) / 2 + 0.5) * width, vals, width, label=name)
    ax.set_xticks(x, [f"{r['label']}\n{key}" for r, key in groups], fontsize=7)
    ax.set_ylabel("images/s (higher is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--tag", required=True)
    args = parser.parse_args()
    reports = [json.loads(p.read_text()) for p in args.reports]
    rows = [rows_of(rep, p.stem) for rep, p in zip(reports, args.reports)]
    outdir = HERE / "results" / args.tag
    outdir.mkdir(parents=True, exist_ok=True)
    threads = reports[0]["machine"].get("cores", 2)
    md = table(rows, threads)
    (outdir / "throughput.md").write_text(md + "\n")
    (outdir / "throughput.json").write_text(json.dumps(rows, indent=1) + "\n")
    m = reports[0]["machine"]
    plot(rows, HERE / "plots" / f"{args.tag}.png", f"batch throughput: {m.get('cpu')}, {threads} threads and 1")
    print(md)


if __name__ == "__main__":
    main()
