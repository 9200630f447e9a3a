"""Fused vs unfused Fire modules, measured in one run with equal tuning budgets.

    python benchmarks/fuse_compare.py squeezenet1_1 --trials 200 [--resume]

Tunes the model twice with the same trial budget (fused and `--no-fuse`, each into its own
database under benchmarks/results/fuse/<model>/), benches both, and groups the per-kernel profile
by Fire module: unfused = expand1x1 conv + expand3x3 conv + concatenate (and the bypass add),
fused = the one fire_* kernel. Writes JSON and a markdown table next to the databases.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cli(*args: str) -> None:
    print("+ tvmsqz", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "tvmsqz", *args], check=True)


def fire_signature(row: dict) -> tuple | None:
    """(channels in, channels out, H, W) of a Fire-module kernel from its argument shapes."""
    shapes = [s for s in row.get("shapes", []) if len(s) == 4]
    if not shapes:
        return None
    out = shapes[-1]
    return out[1], out[2], out[3]


def per_fire(report: dict, fused: bool) -> dict[str, float]:
    """Microseconds per Fire-module output shape (C, H, W) summed over its expand-stage kernels."""
    groups: dict[str, float] = defaultdict(float)
    concat_shapes = {
        tuple(r["shapes"][-1]) for r in report["profile"] if "concatenate" in r["name"] and r.get("shapes")
    }
    for row in report["profile"]:
        name = row["name"]
        if fused and name.startswith("fire_"):
            c, h, w = fire_signature(row)
            groups[f"{c}x{h}x{w}"] += row["time_us"]
        elif not fused:
            shapes = row.get("shapes") or []
            if "concatenate" in name and shapes:
                _, c, h, w = shapes[-1]
                groups[f"{c}x{h}x{w}"] += row["time_us"]
            elif "conv2d" in name and shapes and len(shapes[0]) == 4:
                # an expand conv: its output is one half of some concatenate output with the same H, W
                _, c, h, w = shapes[-1]
                for _, cc, ch, cw in concat_shapes:
                    if (ch, cw) == (h, w) and cc == 2 * c and shapes[0][1] < c:
                        groups[f"{cc}x{ch}x{cw}"] += row["time_us"]
                        break
    return dict(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--repeat", type=int, default=100)
    args = parser.parse_args()
    outdir = HERE / "results" / "fuse" / args.model
    outdir.mkdir(parents=True, exist_ok=True)
    reports = {}
    for variant, flags in (("fused", []), ("unfused", ["--no-fuse"])):
        db = outdir / f"db-{variant}"
        if args.trials > 0:
            cli(
                "tune",
                args.model,
                "--trials",
                str(args.trials),
                "-o",
                str(db),
                *flags,
                *(["--resume"] if args.resume or db.exists() else []),
            )
        out = outdir / f"bench-{variant}.json"
        cli(
            "bench",
            args.model,
            "--database",
            str(db),
            "--repeat",
            str(args.repeat),
            "--json",
            str(out),
            "--no-torch",
            *flags,
        )
        reports[variant] = json.loads(out.read_text())
    fused, unfused = per_fire(reports["fused"], True), per_fire(reports["unfused"], False)
    lines = ["| Fire output (C x H x W) | unfused expand+concat us | fused us | speed-up |", "|---|---|---|---|"]
    for key in sorted(set(fused) | set(unfused), key=lambda k: [int(v) for v in k.split("x")]):
        u, f = unfused.get(key), fused.get(key)
        lines.append(f"| {key} | {u:.0f} | {f:.0f} | {u / f:.2f}x |" if u and f else f"| {key} | {u} | {f} | - |")
    e2e = {v: r["latency_ms"]["tvm"]["median"] for v, r in reports.items()}
    ort = {v: r["latency_ms"]["onnxruntime"]["median"] for v, r in reports.items()}
    lines.append("")
    lines.append(
        f"End to end (median ms): fused {e2e['fused']:.2f} (ORT in the same run {ort['fused']:.2f}), "
        f"unfused {e2e['unfused']:.2f} (ORT {ort['unfused']:.2f}); {args.trials} trials each."
    )
    table = "\n".join(lines)
    (outdir / "table.md").write_text(table + "\n")
    (outdir / "summary.json").write_text(
        json.dumps(
            {
                "per_fire_us": {"fused": fused, "unfused": unfused},
                "end_to_end_ms": e2e,
                "onnxruntime_ms": ort,
                "trials": args.trials,
            },
            indent=2,
        )
        + "\n"
    )
    print(table)


if __name__ == "__main__":
    main()
