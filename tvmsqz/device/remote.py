"""Running artifacts on a device over TVM RPC: outputs, timings, `bench --rpc-tracker`.

Each call takes one session from the tracker, uploads the `.so`, runs it through the Relax VM
and fetches outputs and timings. Results carry what the device says about itself
(`device_info`); figures from the emulator carry `emulated: True` and `EMULATED_NOTE`, since
qemu-user timings say nothing about ARM performance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvmsqz.errors import TvmsqzError

from .emulator import EMULATED_NOTE
from .rpc import fmt_address, rpc_session
from .rpc_server import DEVICE_INFO_FUNC

if TYPE_CHECKING:
    from tvmsqz.spec import TargetSpec


def device_info(remote) -> dict:
    """What the device says about itself; `emulated` is True only for tvmsqz's emulator.

    A server without `tvmsqz.device_info` (plain `python -m tvm.exec.rpc_server`) says nothing:
    {"emulated": False}.
    """
    info: dict = {}
    with contextlib.suppress(Exception):
        info = json.loads(remote.get_function(DEVICE_INFO_FUNC)())
    info["emulated"] = bool(info.get("emulated"))
    if info["emulated"]:
        info["note"] = EMULATED_NOTE
    return info


@dataclasses.dataclass
class RemoteResult:
    """Outputs and timings of an artifact run on a device."""

    outputs: list  # np.ndarray per output
    times_ms: list[float]
    emulated: bool
    device: dict
    key: str
    tracker: str

    @property
    def output(self):
        return self.outputs[0]

    def timing(self) -> dict:
        """Timings as a dict with stable keys; `emulated: true` marks qemu-user figures."""
        t = self.times_ms
        out = {
            "emulated": self.emulated,
            "device": self.device,
            "rpc_key": self.key,
            "rpc_tracker": self.tracker,
            "runs": len(t),
            "mean_ms": statistics.fmean(t) if t else None,
            "median_ms": statistics.median(t) if t else None,
            "min_ms": min(t) if t else None,
            "max_ms": max(t) if t else None,
            "times_ms": t,
        }
        if self.emulated:
            out["note"] = EMULATED_NOTE
        return out


def _to_numpy_list(value) -> list:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    out = []
    for item in value:
        out.extend(_to_numpy_list(item))
    return out


def _remote_runs(
    so_path: str | Path,
    tracker: str,
    key: str,
    input_sets: list[list],
    *,
    func: str,
    number: int,
    repeat: int,
    min_repeat_ms: int,
    timeout: float,
    session_timeout: float,
    max_emulated_repeat: int | None = None,
):
    """One session: upload, run `func` on every input set, time the first set when `number` > 0.

    Returns (outputs per set, times in ms, device info).
    """
    import numpy as np

    so_path = Path(so_path)
    if not so_path.is_file():
        raise TvmsqzError(f"no artifact at {so_path}")
    remote = rpc_session(tracker, key, timeout=timeout, session_timeout=session_timeout)
    import tvm
    from tvm import relax

    info = device_info(remote)
    if info["emulated"] and max_emulated_repeat is not None:
        repeat = min(repeat, max_emulated_repeat)
    name = f"tvmsqz-{os.getpid()}-{so_path.name}"
    try:
        remote.upload(str(so_path), name)
        dev = remote.cpu()
        vm = relax.VirtualMachine(remote.load_module(name), dev)
        outs, first_args = [], None
        for arrays in input_sets:
            args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
            first_args = first_args or args
            outs.append(_to_numpy_list(vm[func](*args)))
        times: list[float] = []
        if number > 0 and repeat > 0 and first_args:
            ftimer = vm.time_evaluator(func, dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
            times = [float(t) * 1e3 for t in ftimer(*first_args).results]
        with contextlib.suppress(Exception):
            remote.remove(name)
    except Exception as err:  # noqa: BLE001 - TVM raises RuntimeError/TVMError subclasses
        msg = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        raise TvmsqzError(
            f"running {so_path.name} on device {key!r} at {fmt_address(tracker)} failed: "
            f"{msg[-1] if msg else type(err).__name__}"
        ) from None
    return outs, times, info


def remote_inference(
    so_path: str | Path,
    tracker: str,
    key: str,
    inputs,
    *,
    func: str = "main",
    number: int = 0,
    repeat: int = 1,
    min_repeat_ms: int = 0,
    timeout: float = 120.0,
    session_timeout: float = 600.0,
) -> RemoteResult:
    """Upload `so_path` to a device under `key`, run `func` on `inputs` (an array or a sequence
    of arrays), fetch its outputs and, when `number` > 0, time it with `repeat` x `number` runs.
    """
    import numpy as np

    arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    outs, times, info = _remote_runs(
        so_path,
        tracker,
        key,
        [arrays],
        func=func,
        number=number,
        repeat=repeat,
        min_repeat_ms=min_repeat_ms,
        timeout=timeout,
        session_timeout=session_timeout,
    )
    return RemoteResult(outs[0], times, info["emulated"], info, key, fmt_address(tracker))


def remote_bench(
    so_path: str | Path,
    spec: TargetSpec | dict,
    tracker: str,
    key: str | None,
    inputs,
    *,
    repeat: int = 50,
    func: str = "main",
    max_emulated_repeat: int = 5,
    timeout: float = 120.0,
    session_timeout: float = 1800.0,
) -> dict:
    """`tvmsqz bench --rpc-tracker`: outputs for every input and latency, on one device.

    `spec` is the target (a `TargetSpec` or its target-file dict); `key` defaults to its
    `rpc.default_key`. `inputs` is a list of input arrays (one batch each). Returns
    {"outputs": [first output per input], "latency": {"min", "median", "p90", "mean", "runs",
    "emulated", "device", ("note")}, "emulated": bool, "device": {...}}. Latency is `repeat`
    single timed runs (after one warm-up) of the first input; an emulated device runs at most
    `max_emulated_repeat` of them, since its timings mean nothing for ARM anyway.
    """
    import numpy as np

    from ..toolchain import elf_machine

    data = spec if isinstance(spec, dict) else spec.data
    name = data.get("name", "?")
    key = key or (data.get("rpc") or {}).get("default_key")
    if not key:
        raise TvmsqzError(f"pass --rpc-key KEY: target {name} has no default RPC key")
    triple = str((data.get("tvm") or {}).get("mtriple", ""))
    want = "aarch64" if triple.startswith("aarch64") else "arm" if triple.startswith("arm") else None
    if want and elf_machine(so_path) != want:
        raise TvmsqzError(
            f"{Path(so_path).name} is a {elf_machine(so_path)} library, not {want} (compile it with --target {name})"
        )
    sets = [[x] if isinstance(x, np.ndarray) else list(x) for x in inputs]
    outs, times, info = _remote_runs(
        so_path,
        tracker,
        key,
        sets,
        func=func,
        number=1,
        repeat=repeat,
        min_repeat_ms=0,
        timeout=timeout,
        session_timeout=session_timeout,
        max_emulated_repeat=max_emulated_repeat,
    )
    ms_ = np.asarray(times, dtype=float)
    latency: dict[str, Any] = {"emulated": info["emulated"], "device": info}
    if ms_.size:
        latency.update(
            min=float(ms_.min()),
            median=float(np.median(ms_)),
            p90=float(np.percentile(ms_, 90)),
            mean=float(ms_.mean()),
            runs=int(ms_.size),
        )
    if info["emulated"]:
        latency["note"] = EMULATED_NOTE
    return {
        "outputs": [o[0] for o in outs],
        "latency": latency,
        "emulated": info["emulated"],
        "device": info,
        "rpc_key": key,
        "rpc_tracker": fmt_address(tracker),
    }


def run_remote(so_path: str | Path, tracker: str, key: str, x, *, func: str = "main", timeout: float = 120.0):
    """Run artifact `so_path` on a device under `key` with input(s) `x`; its first output."""
    return remote_inference(so_path, tracker, key, x, func=func, timeout=timeout).output


def time_remote(
    so_path: str | Path,
    tracker: str,
    key: str,
    x,
    *,
    number: int = 5,
    repeat: int = 3,
    min_repeat_ms: int = 0,
    func: str = "main",
    timeout: float = 120.0,
) -> dict:
    """Time artifact `so_path` on a device: `RemoteResult.timing()` (with `emulated`)."""
    return remote_inference(
        so_path, tracker, key, x, func=func, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms, timeout=timeout
    ).timing()
