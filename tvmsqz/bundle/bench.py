"""The bundle part of `tvmsqz bench`: what a device without TVM installed would see.

`bench_bundle` packages the bench's artifact, then times the C++ and the Python runner on the
bench's first input at the bench's thread count, each in a fresh process (one runtime per
process, as the peers are), in alternating rounds with a fresh runtime-only TVM process
(`tvmsqz.memprobe tvm`): the runners drive the same kernels through the same libtvm_runtime,
so their latency should equal TVM's, and on a shared host only processes timed side by side in
time can show it. Each runner reports its own VmHWM (the figure `tvmsqz.memprobe` reports for
TVM and ONNX Runtime); its output is compared with the TVM build's. `memory_keys` turns the
probes into the report's `memory` keys, `print_bundle` into a table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TvmsqzError
from .build import Log, build_bundle
from .run import RUNNERS, run_bundle, runner_report

WARMUP = 5
#: Rounds of [TVM reference, C++ runner, Python runner], each a fresh process: on a shared host
#: the load drifts within seconds, so processes timed minutes apart are not comparable.
ROUNDS = 3


def _tvm_reference(so_path: Path, shape: tuple[int, ...], runs: int, threads: int) -> dict:
    """Latency of the artifact in a fresh runtime-only TVM process (`tvmsqz.memprobe tvm`)."""
    cmd = [
        sys.executable,
        "-m",
        "tvmsqz.memprobe",
        "tvm",
        str(so_path),
        ",".join(map(str, shape)),
        str(runs),
        str(threads),
        str(WARMUP),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "TVM_NUM_THREADS": str(threads)}
    )
    if proc.returncode != 0:
        raise TvmsqzError(f"the TVM reference process failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["latency_ms"]


def _combine(rounds: list[dict]) -> dict[str, float]:
    """Per-round stats -> one: min of the minima, median of the medians (robust to a bad round)."""
    return {
        "min": min(r["min"] for r in rounds),
        "median": float(np.median([r["median"] for r in rounds])),
        "mean": float(np.mean([r["mean"] for r in rounds])),
        "runs": sum(r["runs"] for r in rounds),
        "rounds": len(rounds),
    }


def _compare(y: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    ref = reference.reshape(y.shape)
    diff = float(np.abs(y - ref).max())
    return {
        "max_abs_diff_vs_tvm": diff,
        "max_rel_diff_vs_tvm": diff / (float(ref.max() - ref.min()) or 1.0),
        "top1_equal_to_tvm": bool(int(y.reshape(-1).argmax()) == int(ref.reshape(-1).argmax())),
    }


def bench_bundle(
    so_path: Path,
    workdir: Path,
    x: np.ndarray,
    reference: np.ndarray | None,
    *,
    repeat: int,
    threads: int,
    say: Log | None = None,
) -> dict[str, Any]:
    """Bundle `so_path` under `workdir` and measure both runners on `x` beside a runtime-only TVM
    process, in alternating rounds; {"error": ...} when the bundle cannot be built here (no
    compiler, no runtime), so the rest of the bench still reports."""
    try:
        bundle = build_bundle(so_path, workdir / "bundle", tar=True, log=say)
    except TvmsqzError as exc:
        return {"error": str(exc)}
    x_path = workdir / "bundle-input.npy"
    np.save(x_path, x)
    per_round = max(3, -(-repeat // ROUNDS))
    if say is not None:
        say(
            f"timing TVM (runtime-only process) and the bundle's runners: {ROUNDS} rounds of {per_round} runs "
            f"after {WARMUP} warm-up runs, each a fresh process"
        )
    rounds: dict[str, list[dict]] = {name: [] for name in ("tvm", *RUNNERS)}
    out: dict[str, dict] = {name: {} for name in RUNNERS}
    for _ in range(ROUNDS):
        rounds["tvm"].append(_tvm_reference(so_path, x.shape, per_round, threads))
        for runner in RUNNERS:
            if "error" in out[runner]:
                continue
            y_path = workdir / f"bundle-{runner}-output.npy"
            proc = run_bundle(
                workdir / "bundle",
                ["--input", x_path, "-o", y_path, "--repeat", str(per_round), "--warmup", str(WARMUP), "--json"],
                runner=runner,
                env={"TVM_NUM_THREADS": str(threads)},
            )
            try:
                got = runner_report(proc)
            except TvmsqzError as exc:
                out[runner] = {"error": str(exc)}
                continue
            rounds[runner].append(got["latency_ms"])
            entry = out[runner]
            entry["peak_rss_bytes"] = max(entry.get("peak_rss_bytes") or 0, got["peak_rss_bytes"] or 0) or None
            entry["top1"] = got["top"][0][0] if got["top"] else None
            if reference is not None:
                entry.update(_compare(np.load(y_path), reference))
    for runner in RUNNERS:
        if rounds[runner] and "error" not in out[runner]:
            out[runner]["latency_ms"] = _combine(rounds[runner])
    sizes = bundle["sizes"]
    return {
        "arch": bundle["arch"],
        "runtime": {k: v for k, v in bundle["runtime"].items() if k != "source"},
        "runtime_bytes": sizes["runtime_bytes"],
        "runtime_unstripped_bytes": sizes["runtime_unstripped_bytes"],
        "model_bytes": sizes["model_bytes"],
        "runner_bytes": sizes["runner_bytes"],
        "total_bytes": sizes["total_bytes"],
        "tar_gz_bytes": Path(bundle["tar"]).stat().st_size,
        "threads": threads,
        "tvm_latency_ms": _combine(rounds["tvm"]),
        "runners": out,
    }


def _ratio(a: int | float | None, b: int | float | None) -> float | None:
    return a / b if a is not None and b else None


def memory_keys(tvm_full: dict, ort: dict, bundle: dict | None) -> dict[str, Any]:
    """The report's new `memory` keys: the full wheel's figures beside the runtime-only TVM one
    (`tvm_peak_rss_bytes`), the runners' peaks and their ratios to ONNX Runtime's, and the
    runners' median latency over TVM's, timed in the same rounds (the same kernels: ~1.0)."""
    runners = (bundle or {}).get("runners", {})
    peak = {name: runners.get(name, {}).get("peak_rss_bytes") for name in RUNNERS}
    ort_peak = ort.get("peak_rss_bytes")
    keys: dict[str, Any] = {
        "tvm_full_peak_rss_bytes": tvm_full.get("peak_rss_bytes"),
        "tvm_full_model_rss_bytes": (
            tvm_full["peak_rss_bytes"] - tvm_full["after_import_rss_bytes"] if tvm_full else None
        ),
        "tvm_full_libraries": tvm_full.get("tvm_libraries"),
        "bundle_cpp_peak_rss_bytes": peak["cpp"],
        "bundle_python_peak_rss_bytes": peak["python"],
        "bundle_cpp_vs_onnxruntime_peak_rss": _ratio(peak["cpp"], ort_peak),
        "bundle_python_vs_onnxruntime_peak_rss": _ratio(peak["python"], ort_peak),
        "bundle_runtime_bytes": (bundle or {}).get("runtime_bytes"),
        "bundle_model_bytes": (bundle or {}).get("model_bytes"),
    }
    tvm = (bundle or {}).get("tvm_latency_ms", {})
    for name in RUNNERS:
        mine = runners.get(name, {}).get("latency_ms", {})
        keys[f"bundle_{name}_latency_vs_tvm"] = _ratio(mine.get("median"), tvm.get("median"))
        # the minima: what the same kernels cost when the shared host left the cores alone
        keys[f"bundle_{name}_latency_min_vs_tvm"] = _ratio(mine.get("min"), tvm.get("min"))
    return keys


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def print_bundle(report: dict[str, Any], console: Any) -> None:
    """The bundle table of `tvmsqz bench`'s human-readable report (nothing when not measured)."""
    from rich.table import Table

    bundle, mem = report.get("bundle"), report.get("memory", {})
    if not bundle:
        return
    if "error" in bundle:
        console.print(f"bundle: not measured ({bundle['error']})", highlight=False)
        return
    table = Table(
        title=f"runtime-only deployment ({bundle['arch']} bundle: runtime "
        f"{bundle['runtime_bytes'] / 1e6:.1f} MB + model {bundle['model_bytes'] / 1e6:.1f} MB)"
    )
    for col in ("process", "peak RSS", "vs ORT", "median ms (same rounds)", "vs TVM"):
        table.add_column(col, justify="right" if col != "process" else "left")
    ort = mem.get("onnxruntime_peak_rss_bytes")
    tvm_median = bundle.get("tvm_latency_ms", {}).get("median")
    rows = [
        ("TVM wheel, full (libtvm_compiler)", mem.get("tvm_full_peak_rss_bytes"), None),
        ("TVM wheel, TVM_USE_RUNTIME_LIB=1", mem.get("tvm_peak_rss_bytes"), tvm_median),
    ]
    for name in RUNNERS:
        entry = bundle["runners"].get(name, {})
        rows.append(
            (
                f"bundle {name} runner" + (f" ({entry['error']})" if "error" in entry else ""),
                entry.get("peak_rss_bytes"),
                entry.get("latency_ms", {}).get("median"),
            )
        )
    rows.append(("ONNX Runtime", ort, None))
    for label, rss, median in rows:
        table.add_row(
            label,
            _mib(rss),
            "-" if not (rss and ort) else f"{rss / ort:.2f}x",
            "-" if median is None else f"{median:.2f}",
            "-" if not (median and tvm_median) else f"{median / tvm_median:.2f}x",
        )
    console.print(table)
