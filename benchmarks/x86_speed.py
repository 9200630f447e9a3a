"""End-to-end x86 table: tvmsqz against every fp32 peer, each runtime in its own process.

    python benchmarks/x86_speed.py --models squeezenet1_1 squeezenet1_0 --out benchmarks/results/x86-blocked
    python benchmarks/x86_speed.py --precision int8 --out benchmarks/results/int8

With `--precision int8` the bench also times ONNX Runtime int8 (QDQ), OpenVINO int8 (NNCF) and
OpenVINO bf16, and the table gives every runtime's agreement with the fp32 model on evaluation
views that share no photo with the calibration views.

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
#: int8 mode: every runtime/precision the bench times, in table order.
INT8_ROWS = (
    ("tvm_int8", "tvmsqz int8 (VNNI, shipped schedules)"),
    ("openvino_int8", "OpenVINO int8 (NNCF)"),
    ("onnxruntime_int8", "ONNX Runtime int8 (QDQ, quantize_static)"),
    ("openvino_bf16", "OpenVINO bf16 (its default here)"),
    ("onnxruntime", "ONNX Runtime fp32"),
    ("openvino", "OpenVINO f32 hint"),
    ("ncnn", "ncnn fp32"),
    ("torch", "PyTorch fp32 eager"),
)


def bench(model: str, out: Path, repeat: int, precision: str = "fp32") -> dict:
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
        *(["--precision", precision] if precision != "fp32" else []),
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


def int8_table(rows: list[dict]) -> str:
    """One table per model: every runtime at both thread counts, its ratio to tvmsqz int8 and
    its top-1 agreement / top-5 overlap with the fp32 model."""
    out = []
    for r in rows:
        lat2, lat1, agree = r["latency_ms"], r["latency_ms_1thread"], r.get("agreement", {})
        n = next(iter(agree.values()), {}).get("inputs", 0)
        out += [
            f"**{r['model']}** (ratios: tvmsqz int8 / fastest int8 peer = "
            f"{r['ratio_vs_fastest_int8_peer']:.2f} at {r['threads']} threads, "
            f"{r['ratio_vs_fastest_int8_peer_1thread']:.2f} at 1 thread; agreement over {n} views)",
            "",
            f"| runtime | median ms, {r['threads']} threads | median ms, 1 thread | tvmsqz int8 / it "
            f"({r['threads']}T, 1T) | top-1 agreement | top-5 overlap |",
            "|---|---|---|---|---|---|",
        ]
        for key, label in INT8_ROWS:
            if key not in lat2:
                continue
            a = agree.get(key, {})
            ratios = (
                f"{lat2['tvm_int8']['median'] / lat2[key]['median']:.2f}, "
                f"{lat1['tvm_int8']['median'] / lat1[key]['median']:.2f}"
            )
            agreement = f"{a['top1_agreement']:.1%} | {a['top5_overlap']:.1%}" if a else "the fp32 reference | -"
            out.append(f"| {label} | {_ms(lat2, key)} | {_ms(lat1, key)} | {ratios} | {agreement} |")
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict], path: Path, names: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = names or ["tvm", *PEERS]
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
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [bench(m, args.out / f"{m}.json", args.repeat, args.precision) for m in args.models]
    if args.precision == "int8":
        print(int8_table(rows))
        plot(rows, args.out / "x86-int8-speed.png", [k for k, _ in INT8_ROWS if k != "torch"])
    else:
        print(table(rows))
        plot(rows, args.out / "x86-speed.png")


if __name__ == "__main__":
    main(sys.argv[1:])
