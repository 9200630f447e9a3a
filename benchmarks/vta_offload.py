"""Per-image VTA time (simulated) and the host time left, for the VTA target's offload work.

    python benchmarks/vta_offload.py --tag before     # with the code before a change
    python benchmarks/vta_offload.py --tag after      # and after it
    python benchmarks/vta_offload.py --table before after   # markdown for RESULTS.md

Compiles the Deep Compression SqueezeNet v1.0 for `--target vta` (default tilings from the
shipped database), runs each of the six bundled photos `--repeat` times and records per image:
the simulated VTA cycles and milliseconds at the configured clock (an *estimate* of the cycle
model; no FPGA board has run this), the median wall time of the host (TVM, this x86 CPU)
segments, top-1 agreement and top-5 overlap with the fp32 model (ONNX Runtime). It uses only
`tvmsqz.vta`'s public API (`compile_vta`, `load_vta`, `bench_vta`), so the same script measures
the code before and after a change. Output: `benchmarks/results/vta_<tag>.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
OUT_DIR = HERE / "results"


def measure(model: str, repeat: int) -> dict:
    """Compile once, then bench each photo `repeat` times (host time = median)."""
    from tvmsqz.images import sample_images
    from tvmsqz.vta import bench_vta, compile_vta, load_vta

    with tempfile.TemporaryDirectory(prefix="tvmsqz-vta-bench-") as tmp:
        so = Path(tmp) / "model.so"
        man = compile_vta(model, so)
        vm = load_vta(so)
        rows = []
        for name, img in sample_images():
            hosts, sims, rep = [], [], None
            for _ in range(repeat):
                rep = bench_vta(vm, [(name, img)])
                hosts.append(vm.last_stats["host_seconds"])
                sims.append(vm.last_stats["sim_seconds"])
            st = vm.last_stats
            row = rep["per_image"][0]
            rows.append(
                {
                    "image": name,
                    "label": row["vta_label"],
                    "fp32_label": row["fp32_label"],
                    "top1_agrees": row["top1_agrees"],
                    "top5_overlap": row["top5_overlap"],
                    "kl_vs_fp32": row.get("kl_vs_fp32"),
                    "simulated_cycles": st["cycles"],
                    "simulated_ms": round(st["simulated_ms"], 3),
                    "host_ms": round(1e3 * statistics.median(hosts), 1),
                    "simulator_wall_s": round(statistics.median(sims), 2),
                    "dram_bytes": st["dram_bytes"],
                }
            )
        layers = rep["per_layer"]
    return {
        "model": model,
        "clock_mhz": rep["clock_mhz"],
        "repeat": repeat,
        "mac_offload_share": man["mac_offload_share"],
        "macs_offloaded": man["macs_offloaded"],
        "macs_total": man["macs_total"],
        "vta_layers": man["vta_layers"],
        "host_segments": man["host_segments"],
        "top1_agreement": sum(r["top1_agrees"] for r in rows) / len(rows),
        "top5_overlap": sum(r["top5_overlap"] for r in rows) / len(rows),
        "per_image": rows,
        "per_layer": layers,
        "note": "simulated cycles are the cycle model's estimate; host ms is TVM on this x86 VM (2 cores, shared)",
    }


def table(tags: list[str]) -> str:
    """Markdown: one row per image, columns per tag (simulated ms, host ms, top-1, top-5)."""
    runs = [json.loads((OUT_DIR / f"vta_{t}.json").read_text()) for t in tags]
    cols = ("VTA ms (sim.)", "host ms", "top-1 (label)", "top-5")
    head = "| image | " + " | ".join(f"{t}: {c}" for t in tags for c in cols) + " |"
    lines = [head, "|" + "---|" * (1 + len(cols) * len(tags))]
    for i, r0 in enumerate(runs[0]["per_image"]):
        cells = [f"{r0['image']} ({r0['fp32_label']})"]
        for run in runs:
            r = run["per_image"][i]
            cells += [
                f"{r['simulated_ms']:.2f}",
                f"{r['host_ms']:.0f}",
                "yes" if r["top1_agrees"] else f"no ({r['label']})",
                f"{r['top5_overlap']:.1f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**all six**"]
    for run in runs:
        n = len(run["per_image"])
        cells += [
            f"{run['macs_offloaded'] / 1e6:.1f} M of {run['macs_total'] / 1e6:.1f} M MACs on VTA "
            f"({100 * run['mac_offload_share']:.1f}%)",
            "",
            f"{run['top1_agreement'] * n:.0f}/{n}",
            f"{run['top5_overlap']:.2f}",
        ]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", help="measure and write benchmarks/results/vta_TAG.json")
    ap.add_argument("--model", default="squeezenet1_0_dc")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--table", nargs="+", metavar="TAG", help="print the markdown table of these tags")
    a = ap.parse_args(argv)
    if a.tag:
        from tvmsqz.fsutil import atomic_write

        res = measure(a.model, a.repeat)
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        atomic_write(OUT_DIR / f"vta_{a.tag}.json", json.dumps(res, indent=1))
        print(json.dumps({k: v for k, v in res.items() if k != "per_layer"}, indent=1))
    if a.table:
        print(table(a.table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
