"""`tvmsqz explore`: measured latency on the target beside the design space's size and work.

The SqueezeNet paper explored its design space (squeeze ratio, share of 3x3 filters, base_e,
incr_e) against model size and accuracy; SqueezeNext chose its design by simulating the target
layer by layer. A tuning compiler can put the *measured* latency on each target beside them: for
each design point (`models.design`), parameters, MACs, weight bytes (fp32, int8, Deep
Compression's 8-bit 33%-dense coding) and the target pipeline's `measure` (CPU: a short tune,
warm-started from the shipped records, then timed runs on this host; VTA: simulated cycles).

Resumable like `tune`: every finished point is in `explore.json` before the next starts, a rerun
with the same folder skips the points it holds, and `--time-budget` stops between points. The
points are measured in `default_points()` order, most informative first. Accuracy is not
measured (nothing is trained here), and the plot says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import TvmsqzError
from .fsutil import atomic_write
from .models.design import Point, counts, default_points
from .spec import TargetSpec

RESULTS_FILE = "explore.json"
PLOT_FILE = "explore.png"
#: A point gets at least this much of the time budget (s): its compile alone takes ~15 s.
MIN_POINT_SECONDS = 30.0
ACCURACY_NOTE = "accuracy not measured: no training here (random seeded weights)"
#: Deep Compression's SqueezeNet setting (8-bit shared weights, 33% of them kept).
COMPRESS_BITS, COMPRESS_DENSITY = 8, 0.33


def compressed_bytes(module) -> int:
    """Bytes of the conv and classifier weights in the `--compress` weight file format, at Deep
    Compression's SqueezeNet setting; biases and batch norms at 32 bits on top."""
    from torch import nn

    from .compress.sharing import share
    from .compress.writer import encode

    tensors = []
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            weight = layer.weight.detach().numpy()
            tensors.append((name, share(weight, COMPRESS_BITS, COMPRESS_DENSITY)))
    weights = {id(layer.weight) for layer in module.modules() if isinstance(layer, (nn.Conv2d, nn.Linear))}
    rest = sum(p.numel() for p in module.parameters() if id(p) not in weights)
    blob, _ = encode(tensors)
    return len(blob) + 4 * int(rest)


def pareto(rows: list[dict]) -> list[str]:
    """Keys of the measured points no other point beats on both parameters and latency."""
    live = [r for r in rows if r.get("latency_ms") is not None]
    front = []
    for r in live:
        dominated = any(
            o["params"] <= r["params"]
            and o["latency_ms"] <= r["latency_ms"]
            and (o["params"] < r["params"] or o["latency_ms"] < r["latency_ms"])
            for o in live
        )
        if not dominated:
            front.append(r["key"])
    return front


def _load(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {row["key"]: row for row in data["points"]}
    except (ValueError, KeyError, TypeError):
        raise TvmsqzError(f"{path} is not an explore results file (move it away to start over)") from None


def run(
    spec: TargetSpec,
    backend: ModuleType,
    pipeline: Any,
    load_model: Callable[..., Any],
    output: Path,
    *,
    time_budget: float | None = None,
    max_points: int | None = None,
    per_point: float | None = None,
    trials: int | None = None,
    points: list[Point] | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> dict:
    """Measure design points into `output` (see the module docstring); returns the results.

    `load_model(module, example_input=, name=)` turns a torch module into the pipeline's model
    (the API's `load_model`). `per_point` (s) caps each point's tuning; by default a point gets
    an equal share of what is left of `time_budget` (at least `MIN_POINT_SECONDS`), or 60 s.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    results = output / RESULTS_FILE
    done = _load(results)
    todo = list(points or default_points())[: max_points or None]
    start = time.perf_counter()
    deadline = start + time_budget if time_budget is not None else None
    stopped = "done"
    measured = 0
    for n, point in enumerate(todo):
        if point.key in done:
            continue
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and left <= 0 and measured:
            stopped = "time budget"
            break
        remaining = sum(1 for p in todo[n:] if p.key not in done)
        budget = per_point or (max(MIN_POINT_SECONDS, left / remaining) if left is not None else 60.0)
        say(f"[{n + 1}/{len(todo)}] {point.key}: tuning up to {budget:.0f} s")
        t0 = time.perf_counter()
        module = point.build()
        size = point.input_size
        row: dict[str, Any] = {"key": point.key, "kind": point.kind, "label": point.label, "input_size": size}
        row.update(counts(module, size))
        row["bytes_compressed"] = compressed_bytes(module)
        if point.kind == "squeezenet":
            row.update(sr=point.sr, pct3x3=point.pct3x3, base_e=point.base_e, incr_e=point.incr_e, freq=point.freq)
        elif point.kind == "squeezenext":
            row.update(width=point.width, depths=list(point.depths))
        work_dir = output / "points" / point.key
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
            model = load_model(module, example_input=(1, 3, size, size), name=point.key)
            row.update(pipeline.measure(model, spec, backend, work_dir, trials=trials, time_budget=budget))
        except TvmsqzError as exc:
            row.update(latency_ms=None, error=str(exc).splitlines()[0])
        row["seconds"] = round(time.perf_counter() - t0, 1)
        done[point.key] = row
        measured += 1
        _write(results, spec, done, todo)
        latency = f"{row['latency_ms']:.3f} ms" if row.get("latency_ms") is not None else f"error: {row['error']}"
        say(f"    {row['params'] / 1e6:.2f} M params, {row['macs'] / 1e9:.2f} GMAC: {latency} ({row['seconds']} s)")
    data = _write(results, spec, done, todo)
    data["stopped"] = stopped
    data["measured_this_run"] = measured
    data["plot"] = str(plot(data, output / PLOT_FILE))
    data["json"] = str(results)
    return data


def _write(path: Path, spec: TargetSpec, done: dict, todo: list[Point]) -> dict:
    order = {p.key: i for i, p in enumerate(todo)}
    rows = sorted(done.values(), key=lambda r: order.get(r["key"], len(order)))
    data = {
        "target": spec.name,
        "note": ACCURACY_NOTE,
        "points": rows,
        "pareto": pareto(rows),
    }
    atomic_write(path, json.dumps(data, indent=1) + "\n")
    return data


def plot(data: dict, path: Path) -> Path:
    """Latency against parameters, the Pareto front joined, the named models labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["points"] if r.get("latency_ms") is not None]
    front = set(data["pareto"])
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for kind, marker in (("squeezenet", "o"), ("squeezenext", "s"), ("builtin", "D")):
        pts = [r for r in rows if r["kind"] == kind]
        if pts:
            ax.scatter([r["params"] / 1e6 for r in pts], [r["latency_ms"] for r in pts], marker=marker, label=kind)
    edge = sorted((r for r in rows if r["key"] in front), key=lambda r: r["params"])
    if edge:
        ax.plot([r["params"] / 1e6 for r in edge], [r["latency_ms"] for r in edge], "k--", lw=1, label="Pareto front")
    for r in rows:
        if r.get("label"):
            ax.annotate(
                r["label"], (r["params"] / 1e6, r["latency_ms"]), fontsize=8, xytext=(4, 4), textcoords="offset points"
            )
    unit = rows[0].get("latency_unit", "ms") if rows else "ms"
    ax.set_yscale("log")  # the space spans 1-1000 ms: a cliff (unblockable channel counts) must not flatten the rest
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel(f"latency ({unit})")
    ax.set_title(f"tvmsqz explore on {data['target']}: {len(rows)} design points")
    ax.text(0.01, 0.01, ACCURACY_NOTE, transform=ax.transAxes, fontsize=8, style="italic")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
