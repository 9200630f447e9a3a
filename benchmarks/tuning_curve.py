"""Plot MetaSchedule's estimated model latency against trials spent, from `tvmsqz tune` logs.

    python benchmarks/tuning_curve.py benchmarks/results/tuning/*.log -o benchmarks/plots/tuning_curve.png

Each progress line of `tvmsqz tune` reads `[  N/TOTAL] kernel ... model est X ms ... WALL s`; logs of
one model resumed over several runs are joined in the order given (wall time keeps counting).
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"^\[\s*(\d+)/\s*\d+\].*model est\s+([\d.]+) ms.*?([\d.]+) s\s*$")


def parse(path: Path) -> list[tuple[int, float, float]]:
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        match = LINE.match(line.strip())
        if match:
            rows.append((int(match[1]), float(match[2]), float(match[3])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    curves: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for log in args.logs:
        model = log.stem.split(".")[0].rsplit("-", 1)[0] if log.stem[-2:] in ("-1", "-2", "-3") else log.stem
        offset = curves[model][-1][2] if curves[model] else 0.0
        curves[model] += [(t, ms, wall + offset) for t, ms, wall in parse(log)]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for model, rows in sorted(curves.items()):
        if rows:
            ax.plot([r[0] for r in rows], [r[1] for r in rows], marker=".", label=f"{model} ({rows[-1][2]:.0f} s)")
            print(f"{model}: {rows[-1][0]} trials, estimated {rows[-1][1]:.2f} ms after {rows[-1][2]:.0f} s")
    ax.set_xlabel("trials spent (this model's kernels)")
    ax.set_ylabel("estimated model latency (ms, log)")
    ax.set_yscale("log")
    ax.set_title("MetaSchedule + XGBoost on x86-avx512, 2 threads (tuning wall time in legend)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)


if __name__ == "__main__":
    main()
