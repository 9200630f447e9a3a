"""The runtimes `tvmsqz bench` compares, each timed in its own fresh process, one after the other.

Why fresh processes: timed side by side in one process, the runtimes' worker threads (TVM's,
ONNX Runtime's, OpenMP's for torch and ncnn, TBB's for OpenVINO) stay alive and spin between
calls, so on a 2-core host they fight over the cores and a runtime's median depends on which
runtime ran just before (ONNX Runtime's came out bimodal). A worker process loads exactly one
runtime, so nothing else is running while it is timed.

Each runtime module (`tvm`, `onnxruntime`, `openvino`, `ncnn`, `torch`) has the same small
interface:

* `available() -> str | None`: why it cannot run on this host (None: it can). Cheap: it looks
  for the package without importing it, so the bench process does not load every runtime.
* `prepare(sources) -> str`: in the bench process, the MODEL argument its worker takes (the
  ONNX path; the `.so`; the ncnn `.param` converted from the ONNX by pnnx; a built-in model
  name for torch), or `PeerUnavailable` saying why this model cannot run on it.
* `environment(threads) -> dict`: variables the worker needs before the runtime is imported.
* `open(model, threads, **options) -> Session`: in the worker, the loaded model.

`RUNNERS` maps the names in the report to (module, options): `openvino_default` is OpenVINO at
its own default precision (bf16 on hosts with bf16 support), a reduced-precision reference
and not an fp32 peer. `measure` runs the workers and collects what they wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import latency_stats
from ..errors import TvmsqzError
from .base import PEERS_EXTRA, WARMUP, PeerUnavailable, Session, Sources, not_installed, time_runs
from .registry import INT8_RUNNERS, RUNNERS, module

__all__ = [
    "INT8_RUNNERS",
    "PEERS_EXTRA",
    "RUNNERS",
    "WARMUP",
    "Measurements",
    "PeerUnavailable",
    "Session",
    "Sources",
    "latency_stats",
    "measure",
    "module",
    "not_installed",
    "time_runs",
]

#: The fp32 peers `ratio_vs_fastest_peer` picks from (torch is eager PyTorch, not a deployment runtime).
FP32_PEERS = ("onnxruntime", "openvino", "ncnn")
#: Runtimes whose failure fails the bench: ONNX Runtime is every parity's reference.
REQUIRED = ("tvm", "onnxruntime")
REDUCED_PRECISION = ("openvino_default",)
#: The int8 peers `ratio_vs_fastest_int8_peer` picks from.
INT8_PEERS = INT8_RUNNERS
METHODOLOGY = "each runtime in its own fresh process, one after the other"


@dataclass
class Measurements:
    """What the workers wrote: `latency[threads][runtime]` stats, `outputs[runtime]` (the parity
    inputs' outputs stacked, from the default-thread run), `info[runtime]`, `skipped[runtime]`."""

    latency: dict[int, dict[str, dict]] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else "no output"


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM it when the bench process dies, however it dies
    (SIGKILL too, or a Python caller's `os._exit`), so that no worker times on into a temp
    folder that is gone, on the cores the next command wants."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_worker(
    runtime: str, model: str, inputs: Path, threads: int, repeat: int, out: Path, timeout: float = 900
) -> dict[str, Any]:
    """Run `python -m tvmsqz.peers.worker` for one runtime; its JSON, with `outputs` loaded."""
    env = dict(os.environ, **module(runtime).environment(threads))
    cmd = [
        sys.executable,
        "-m",
        "tvmsqz.peers.worker",
        runtime,
        model,
        str(inputs),
        str(threads),
        str(repeat),
        str(out),
    ]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"its worker ran past {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise PeerUnavailable(f"its worker failed (exit {proc.returncode}): {_last_line(proc.stderr)}")
    result = json.loads(out.read_text())
    result["outputs"] = np.load(out.with_suffix(".npy"))
    return result


def measure(
    sources: Sources,
    inputs: Path,
    repeat: int,
    thread_counts: list[int],
    *,
    runtimes: list[str],
    skipped: dict[str, str] | None = None,
    say: Callable[[str], None] | None = None,
    reduced_once: bool = True,
) -> Measurements:
    """Prepare every available runtime, then time them one after the other, each in a fresh
    process, once per thread count (reduced-precision references only at the first, unless
    `reduced_once` is False: `bench --precision int8` ranks them at every thread count).

    A peer that is not installed, cannot take the model or whose worker fails is skipped with
    the reason; `tvm` and `onnxruntime` failing is an error (ONNX Runtime is the reference).
    """
    result = Measurements(skipped=dict(skipped or {}))
    prepared: dict[str, str] = {}
    for name in runtimes:
        mod = module(name)
        try:
            reason = mod.available()
            if reason is not None:
                raise PeerUnavailable(reason)
            prepared[name] = mod.prepare(sources)
        except PeerUnavailable as exc:
            _skip(result, name, str(exc))
    for i, threads in enumerate(thread_counts):
        for name, model in prepared.items():
            if name in result.skipped or (i > 0 and reduced_once and name in REDUCED_PRECISION):
                continue
            if say is not None:
                say(
                    f"timing {name} with {threads} thread(s) in a fresh process ({repeat} runs after {WARMUP} "
                    "warm-up runs)"
                )
            try:
                got = run_worker(name, model, inputs, threads, repeat, sources.workdir / f"{name}-{threads}t.json")
            except PeerUnavailable as exc:
                _skip(result, name, str(exc))
                continue
            result.latency.setdefault(threads, {})[name] = got["latency"]
            result.info.setdefault(name, got.get("info", {}))
            result.outputs.setdefault(name, got["outputs"])
    return result


def _skip(result: Measurements, name: str, reason: str) -> None:
    """Record why `name` was skipped, dropping anything it measured: a runtime is in the report
    at every thread count or not at all. A required runtime's failure stops the bench."""
    if name in REQUIRED:
        raise TvmsqzError(f"{name}: {reason}")
    result.skipped[name] = reason
    for per_thread in result.latency.values():
        per_thread.pop(name, None)
    result.outputs.pop(name, None)
    result.info.pop(name, None)
