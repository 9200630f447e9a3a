"""Per-conv layout study: NCHW, NHWC, NCHW16c direct and NCHW16c Winograd at equal tuning budgets.

    python benchmarks/layout_study.py [--trials 32] [--out benchmarks/results/layout-study]

Each SqueezeNet 1.1 convolution shape below becomes a one-conv model (conv + bias + ReLU, the
fused kernel the real graph has). For every layout the target data can name, a target file
(x86-avx512 with that `layout`) is tuned cold with the same trial budget by `tvmsqz tune`,
compiled with its database by `tvmsqz compile`, and its conv kernel is timed at one thread in a
fresh process (the Relax VM's instrumentation; the input/output layout transforms a one-conv
model needs are excluded: the real graph has none between layers). ONNX Runtime's time for the
same node comes from its profiler, also at one thread in its own process. The table it prints
is the one benchmarks/RESULTS.md carries; it is how `targets/x86-avx512.json` chose its layout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: (label, in channels, out channels, input size, kernel, stride, pad): SqueezeNet 1.1 layers.
CONVS = [
    ("conv1 3->64 3x3 s2", 3, 64, 224, 3, 2, 0),
    ("fire2 expand1x1 16->64", 16, 64, 55, 1, 1, 0),
    ("fire2 expand3x3 16->64", 16, 64, 55, 3, 1, 1),
    ("fire8 expand3x3 64->256 (13x13)", 64, 256, 13, 3, 1, 1),
    ("classifier 512->1000 1x1 (13x13)", 512, 1000, 13, 1, 1, 0),
]

LAYOUTS = {
    "NCHW": {"conv2d": "NCHW"},
    "NHWC": {"conv2d": "NHWC"},
    "NCHW16c direct": {"conv2d": "NCHWc", "block": 16, "winograd": 0},
    "NCHW16c Winograd F(4,3)": {"conv2d": "NCHWc", "block": 16, "winograd": 4},
    "NCHW16c direct, outputs padded to 1024": {"conv2d": "NCHWc", "block": 16, "winograd": 0, "classifier_pad": 32},
}


def applies(name: str, k: int, stride: int, cout: int) -> bool:
    """Winograd is for 3x3 stride-1 convs; output padding for a channel count no block divides."""
    if "Winograd" in name:
        return k == 3 and stride == 1
    if "padded" in name:
        return cout % 16 != 0
    return True


def conv_model(cin: int, cout: int, size: int, k: int, stride: int, pad: int):
    """data (1, 3, size, size) -> [1x1 stem 3->cin + ReLU] -> the conv + bias + ReLU -> GAP -> flatten.

    tvmsqz compiles image classifiers (3-channel input, class scores out): the stem and the
    pooling make one of the studied conv; they are timed apart from it and cost little."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(cin * 1000 + cout)
    inits = {
        "w": (rng.standard_normal((cout, cin, k, k)) * (2.0 / (cin * k * k)) ** 0.5).astype("float32"),
        "b": (rng.standard_normal(cout) * 0.1).astype("float32"),
    }
    nodes = []
    first = "data"
    if cin != 3:
        inits["ws"] = rng.standard_normal((cin, 3, 1, 1)).astype("float32")
        inits["bs"] = (rng.standard_normal(cin) * 0.1).astype("float32")
        nodes += [
            helper.make_node("Conv", ["data", "ws", "bs"], ["s"], kernel_shape=[1, 1]),
            helper.make_node("Relu", ["s"], ["stem"]),
        ]
        first = "stem"
    nodes += [
        helper.make_node(
            "Conv", [first, "w", "b"], ["c"], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4
        ),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, cout])],
        [numpy_helper.from_array(v, n) for n, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def target_file(folder: Path, name: str, layout: dict) -> Path:
    data = json.loads((REPO / "targets" / "x86-avx512.json").read_text())
    data["name"] = "x86-avx512-" + name.lower().replace(" ", "-").replace("(", "").replace(")", "").replace(",", "")
    data["layout"] = layout
    path = folder / f"{data['name']}.json"
    path.write_text(json.dumps(data))
    return path


def tvmsqz(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "tvmsqz", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


_TIME_KERNEL = """
import json, sys, numpy as np
from tvmsqz.runtime import load
art = load(sys.argv[1])
x = np.random.default_rng(0).standard_normal(tuple(json.loads(sys.argv[2]))).astype("float32")
rows = art.profile(x, repeat=50)
convs = sorted((r for r in rows if "conv2d" in r["name"]), key=lambda r: -r["time_us"])
print(json.dumps({"kernel": convs[0]["name"], "us": convs[0]["time_us"]}))  # the studied conv, not the stem
"""

_ORT_NODE = """
import json, sys, numpy as np, onnxruntime as ort
from pathlib import Path
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
opts.enable_profiling = True; opts.profile_file_prefix = sys.argv[3]
sess = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal(tuple(json.loads(sys.argv[2]))).astype("float32")
for _ in range(60):
    sess.run(None, {"data": x})
events = json.loads(Path(sess.end_profiling()).read_text())
per_node = {}
for e in events:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e.get("args", {}).get("op_name") in (
            "Conv", "FusedConv", "NchwcConv"):
        per_node.setdefault(e["name"], []).append(e["dur"])
print(json.dumps({"us": max(float(np.median(v[10:])) for v in per_node.values())}))  # the studied conv
"""


def run_json(code: str, *args: str) -> dict:
    env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "layout-study")
    parser.add_argument("--only", help="substring of the conv labels to run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "layout_study.json"
    results = json.loads(result_path.read_text()) if result_path.is_file() else {}  # resumable
    work = Path(tempfile.mkdtemp(prefix="tvmsqz-layout-"))
    for label, cin, cout, size, k, stride, pad in CONVS:
        if args.only and args.only not in label:
            continue
        model = work / f"{cin}_{cout}_{size}_{k}.onnx"
        model.write_bytes(conv_model(cin, cout, size, k, stride, pad).SerializeToString())
        shape = json.dumps([1, 3, size, size])
        row = results.setdefault(label, {})
        out = (size + 2 * pad - k) // stride + 1
        row["mflop"] = 2 * cin * cout * k * k * out * out / 1e6
        if "ort_us" not in row:
            row["ort_us"] = run_json(_ORT_NODE, str(model), shape, str(work / "ort"))["us"]
        for name, layout in LAYOUTS.items():
            if name in row.get("tvm", {}) or not applies(name, k, stride, cout):
                continue
            target = target_file(work, name, layout)
            db, so = work / f"db-{model.stem}-{target.stem}", work / f"{model.stem}-{target.stem}.so"
            print(f"{label}: {name}: tune {args.trials} trials", flush=True)
            tvmsqz("tune", str(model), "--target", str(target), "--trials", str(args.trials), "--cold", "-o", str(db))
            tvmsqz("compile", str(model), "--target", str(target), "--database", str(db), "-o", str(so))
            timed = run_json(_TIME_KERNEL, str(so), shape)
            per_task = json.loads((db / "tuning_summary.json").read_text())["per_task"]
            spent = [t["trials"] for t in per_task if timed["kernel"].removesuffix("_prepacked") == t["name"]]
            row.setdefault("tvm", {})[name] = {**timed, "trials": spent[0] if spent else None, "budget": args.trials}
            result_path.write_text(json.dumps(results, indent=1) + "\n")
        result_path.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


def table(results: dict) -> str:
    names = list(LAYOUTS)
    head = "| conv | MFLOP | " + " | ".join(f"{n} us (GFLOP/s)" for n in names) + " | ORT us (GFLOP/s) | best |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, row in results.items():
        cells = []
        for n in names:
            t = row.get("tvm", {}).get(n)
            cells.append(f"{t['us']:.0f} ({row['mflop'] / t['us'] * 1e3:.0f})" if t else "-")
        timed = {n: row["tvm"][n]["us"] for n in names if n in row.get("tvm", {})}
        best = min(timed, key=timed.get) if timed else "-"
        lines.append(
            f"| {label} | {row['mflop']:.1f} | "
            + " | ".join(cells)
            + f" | {row['ort_us']:.0f} ({row['mflop'] / row['ort_us'] * 1e3:.0f}) | {best} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
