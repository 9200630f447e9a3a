"""The paper's size table made runnable: `--compress` artifacts of the Deep Compression SqueezeNet
(lossless and 6-bit) and of SqueezeNet 1.1 (6 bits, 50% density), against the plain artifacts.

    python benchmarks/compress.py [--views 30] [--out benchmarks/results/compress]

For each build: weight-file bytes (and the order-0 entropy bound), code bytes (the `.so`),
decode-at-load time on one core (the weight file alone, and decode + the load-time packing;
`taskset -c 0`, TVM_NUM_THREADS=1, median of 7 fresh processes), latency after load against the
plain artifact (each artifact in its own process, alternated, 1 and 2 threads), and agreement
with the plain artifact (top-1 agreement and top-5 overlap) on `--views` crops/flips of each of
the 7 built-in object photos (210 inputs by default). Writes `compress.json`, prints the markdown
tables RESULTS.md shows and plots `compress-sizes.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: SqueezeNet paper, table 2 (Iandola et al. 2016): model sizes a reader compares against.
PAPER = [
    ("AlexNet (paper)", 240_000_000),
    ("SqueezeNet, 32-bit (paper)", 4_800_000),
    ("SqueezeNet + Deep Compression, 6-bit (paper)", 470_000),
]

LOAD_PROBE = r"""
import json, statistics, sys, time
from pathlib import Path
import tvmsqz
from tvmsqz import weightfile
path = Path(sys.argv[1])
t = time.perf_counter(); weightfile.read(path.with_suffix(".weights")); decode = time.perf_counter() - t
art = tvmsqz.load(path)
print(json.dumps({"decode_s": decode, "load_s": art.load_seconds}))
"""

LATENCY_PROBE = r"""
import json, sys, time
import numpy as np
import tvmsqz
art = tvmsqz.load(sys.argv[1])
x = np.random.default_rng(0).standard_normal(art.input_shape).astype("float32")
f = art.timer(x)
for _ in range(20): f()
ts = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
print(json.dumps({"median_ms": float(np.median(ts) * 1e3)}))
"""


def cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "tvmsqz", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"tvmsqz {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def probe(code: str, *args: str, threads: int, pin: bool = False) -> dict:
    env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-c", code, *args]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def outputs(path: Path, inputs: list[np.ndarray]) -> np.ndarray:
    import tvmsqz

    art = tvmsqz.load(path)
    return np.concatenate([art.run(x) for x in inputs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/compress")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from tvmsqz.benchmark import _machine, agreement
    from tvmsqz.images import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, photo_views
    from tvmsqz.models import deep_compression as dc

    names = list(EVALUATION_PHOTOS) + list(CALIBRATION_PHOTOS)
    builds = {
        "squeezenet1_0_dc": [
            ("plain", []),
            ("lossless", ["--compress"]),
            ("6-bit", ["--compress", "--compress-bits", "6"]),
            ("int8 plain", ["--precision", "int8"]),
            ("int8 from the lossless weight file", ["--precision", "int8", "--compress"]),
        ],
        "squeezenet1_1": [
            ("plain", []),
            ("6-bit, 50% density", ["--compress", "--compress-bits", "6", "--compress-density", "0.5"]),
        ],
    }
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    family = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in lscpu if ":" in ln)}
    machine = {**_machine(), "family": family.get("CPU family"), "model": family.get("Model")}
    report: dict = {"machine": machine, "views": args.views * len(names), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model, variants in builds.items():
            convention, size = ("caffe", 227) if model.endswith("_dc") else ("torchvision", 224)
            inputs = [x for _, x in photo_views(names, args.views, convention, size, seed=1)]
            rows = {}
            for label, flags in variants:
                so = Path(tmp) / f"{model}-{len(rows)}.so"
                print(f"compiling {model} ({label})", file=sys.stderr)
                cli("compile", model, "--target", "x86", "-o", str(so), *flags)
                manifest = json.loads(Path(str(so) + ".json").read_text())
                row = {"code_bytes": manifest["artifact"]["bytes"], "flags": flags, "so": str(so)}
                if "weights" in manifest:
                    w = manifest["weights"]
                    row.update(weight_bytes=w["bytes"], entropy_bound_bytes=w["entropy_bound_bytes"])
                    loads = [probe(LOAD_PROBE, str(so), threads=1, pin=True) for _ in range(7)]
                    row["decode_ms_1core"] = float(np.median([r["decode_s"] for r in loads]) * 1e3)
                    row["load_ms_1core"] = float(np.median([r["load_s"] for r in loads]) * 1e3)
                rows[label] = row
            results = {label: outputs(Path(row["so"]), inputs) for label, row in rows.items()}
            for label, row in rows.items():
                if label == "plain":
                    continue
                # int8 from the weight file against the plain int8 artifact; everything else against fp32
                ref = "int8 plain" if label.startswith("int8 from") else "plain"
                row["reference"] = ref
                out, reference = results[label], results[ref]
                row["agreement"] = agreement(out, reference)
                row["bit_identical"] = bool(np.array_equal(out.view(np.uint32), reference.view(np.uint32)))
                if "weight_bytes" not in row:
                    continue  # a plain int8 artifact: its agreement with fp32 only
                for threads in (1, 2):
                    plain_ms, packed_ms = [], []
                    for _ in range(3):  # alternated, each a fresh process
                        plain_ms.append(
                            probe(LATENCY_PROBE, rows[ref]["so"], str(args.repeat), threads=threads)["median_ms"]
                        )
                        packed_ms.append(
                            probe(LATENCY_PROBE, row["so"], str(args.repeat), threads=threads)["median_ms"]
                        )
                    row[f"latency_ms_{threads}t"] = {
                        "plain": float(np.median(plain_ms)),
                        "compressed": float(np.median(packed_ms)),
                    }
                    row[f"latency_ratio_{threads}t"] = float(np.median(packed_ms) / np.median(plain_ms))
            if model.endswith("_dc"):
                rows["source .net file"] = {"weight_bytes": dc.default_net_path().stat().st_size}
            report["models"][model] = rows
    (args.out / "compress.json").write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    plot(report, args.out / "compress-sizes.png")


def print_tables(report: dict) -> None:
    print(f"machine: {report['machine']}; agreement over {report['views']} views")
    print(
        "| model | build | weight file bytes | entropy bound | code (.so) bytes | decode / load ms (1 core) "
        "| latency ratio 1T, 2T | against | top-1 agreement | top-5 overlap |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, rows in report["models"].items():
        for label, row in rows.items():
            ag = row.get("agreement") or {}
            ratio = (
                f"{row['latency_ratio_1t']:.3f}, {row['latency_ratio_2t']:.3f}" if "latency_ratio_1t" in row else "-"
            )
            load = f"{row['decode_ms_1core']:.1f} / {row['load_ms_1core']:.1f}" if "decode_ms_1core" in row else "-"
            identical = " (bit-identical)" if row.get("bit_identical") else ""
            print(
                f"| {model} | {label} | {row.get('weight_bytes', '-')} | {row.get('entropy_bound_bytes', '-')} "
                f"| {row.get('code_bytes', '-')} | {load} | {ratio} | {row.get('reference', '-')} "
                f"| {ag.get('top1_agreement', 1.0) * 100:.1f}%{identical} | {ag.get('top5_overlap', 1.0) * 100:.1f}% |"
            )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, sizes = [], []
    for name, size in PAPER:
        labels.append(name)
        sizes.append(size)
    for model, rows in report["models"].items():
        for label, row in rows.items():
            if "weight_bytes" in row and label != "source .net file":
                labels.append(f"tvmsqz {model} {label}: weight file")
                sizes.append(row["weight_bytes"])
                labels.append(f"tvmsqz {model} {label}: weights + code")
                sizes.append(row["weight_bytes"] + row["code_bytes"])
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1))
    ax.barh(range(len(labels)), sizes, color=["#999"] * len(PAPER) + ["#3a7"] * (len(labels) - len(PAPER)))
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("bytes (log scale)")
    ax.axvline(500_000, color="r", lw=0.8, ls="--")
    ax.set_title("Model size: the SqueezeNet paper vs tvmsqz --compress (runnable)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
