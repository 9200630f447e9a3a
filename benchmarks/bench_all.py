"""Run `tvmsqz bench` on several models and record JSON, a markdown table and a plot.

    python benchmarks/bench_all.py --tag untuned --no-tuning
    python benchmarks/bench_all.py --tag tuned --models squeezenet1_1 squeezenet1_0 --batch 1 8

Each model is benched in its own process (fresh runtimes, same thread count for every peer), and
the ratios in the table come from one run each: TVM, ONNX Runtime and PyTorch timed side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODELS = [
    "squeezenet1_0",
    "squeezenet1_1",
    "squeezenet1_0_bypass",
    "squeezenet1_0_complex_bypass",
    "squeezenet1_0_dc",
]


def bench(model: str, batch: int, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "tvmsqz", "bench", model, "--batch", str(batch), "--json", str(out), *extra]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def table(rows: list[dict]) -> str:
    head = (
        "| model | batch | fused | tuned kernels | TVM median ms | ORT median ms | PyTorch median ms | TVM/ORT "
        "| TVM/PyTorch | TVM peak RSS MiB | ORT peak RSS MiB | activations MiB | artifact MiB | max diff/range "
        "| top-1 agree |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lat, mem, par = r["latency_ms"], r["memory"], r["parity"]
        torch_ms = f"{lat['torch']['median']:.2f}" if "torch" in lat else "-"
        ratio_t = f"{r['ratio_vs_torch']:.2f}" if r.get("ratio_vs_torch") else "-"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['fused']} | {len(r['tuning']['tuned'])}/{r['tuning']['kernels']} "
            f"| {lat['tvm']['median']:.2f} | {lat['onnxruntime']['median']:.2f} | {torch_ms} "
            f"| {r['ratio_vs_onnxruntime']:.2f} | {ratio_t} | {mem['tvm_peak_rss_bytes'] / 2**20:.0f} "
            f"| {mem['onnxruntime_peak_rss_bytes'] / 2**20:.0f} | {mem['activation_bytes'] / 2**20:.1f} "
            f"| {mem['artifact_bytes'] / 2**20:.1f} | {par['max_rel_diff']:.1e} | {par['top1_agreement']:.0%} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runtimes = ["tvm", "onnxruntime", "torch"]
    labels = [f"{r['model']}\nb{r['batch']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    for i, rt in enumerate(runtimes):
        vals = [r["latency_ms"].get(rt, {}).get("median", 0) for r in rows]
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=rt)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("median latency (ms, log)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    args, extra = parser.parse_known_args()
    outdir = HERE / "results" / args.tag
    outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for batch in args.batch:
        for model in args.models:
            rows.append(bench(model, batch, outdir / f"{model}-b{batch}.json", extra))
    md = table(rows)
    (outdir / "table.md").write_text(md + "\n")
    m = rows[0]["machine"]
    plot(rows, HERE / "plots" / f"{args.tag}.png", f"{args.tag}: {m['cpu']}, {m['cores']} threads")
    print(md)


if __name__ == "__main__":
    main()
