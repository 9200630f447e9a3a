"""End-to-end x86 table: tvmsqz against every fp32 peer, each runtime in its own process.

    python benchmarks/x86_speed.py --models squeezenet1_1 squeezenet1_0 --out benchmarks/results/x86-blocked

Runs `tvmsqz bench MODEL --target x86 --json` per model (the bench times TVM, ONNX Runtime,
OpenVINO f32, ncnn and PyTorch one after the other, each in a fresh process, at the host's core
count and at 1 thread) and prints the markdown table RESULTS.md carries, plus a bar plot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PEERS = ("onnxruntime", "openvino", "ncnn", "torch")


def bench(model: str, out: Path, repeat: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tvmsqz",
        "bench",
        model,
        "--target",
        "x86",
        "--repeat",
        str(repeat),
        "--json",
        str(out),
    ]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def _ms(lat: dict, name: str) -> str:
    return f"{lat[name]['median']:.2f}" if name in lat else "-"


def table(rows: list[dict]) -> str:
    head = (
        "| model | threads | TVM ms | ORT ms | OpenVINO f32 ms | ncnn ms | PyTorch ms | TVM / fastest fp32 peer "
        "| TVM / ORT | max diff/range vs ORT | top-1 |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        for key, threads, ratio, fastest in (
            ("latency_ms", r["threads"], "ratio_vs_fastest_peer", "fastest_peer"),
            ("latency_ms_1thread", 1, "ratio_vs_fastest_peer_1thread", "fastest_peer_1thread"),
        ):
            lat = r.get(key) or {}
            if "tvm" not in lat:
                continue
            ort_ratio = lat["tvm"]["median"] / lat["onnxruntime"]["median"]
            par = r["parity"]
            lines.append(
                f"| {r['model']} | {threads} | {lat['tvm']['median']:.2f} | {_ms(lat, 'onnxruntime')} "
                f"| {_ms(lat, 'openvino')} | {_ms(lat, 'ncnn')} | {_ms(lat, 'torch')} "
                f"| {r.get(ratio, float('nan')):.2f} ({r.get(fastest)}) | {ort_ratio:.2f} "
                f"| {par['max_rel_diff']:.1e} | {par['top1_agreement']:.0%} |"
            )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["tvm", *PEERS]
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.5), squeeze=False)
    for ax, r in zip(axes[0], rows):
        for offset, (key, label) in enumerate(
            (("latency_ms", f"{r['threads']} threads"), ("latency_ms_1thread", "1 thread"))
        ):
            lat = r.get(key) or {}
            vals = [lat[n]["median"] if n in lat else 0 for n in names]
            ax.bar([i + offset * 0.4 for i in range(len(names))], vals, width=0.4, label=label)
        ax.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=20)
        ax.set_ylabel("median ms (batch 1)")
        ax.set_title(r["model"])
        ax.legend()
    fig.suptitle(f"{rows[0]['machine'].get('cpu', '')}: each runtime in its own process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["squeezenet1_1", "squeezenet1_0"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/x86-blocked"))
    parser.add_argument("--repeat", type=int, default=100)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [bench(m, args.out / f"{m}.json", args.repeat) for m in args.models]
    print(table(rows))
    plot(rows, args.out / "x86-speed.png")


if __name__ == "__main__":
    main(sys.argv[1:])
