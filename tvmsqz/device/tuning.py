"""MetaSchedule over TVM RPC: a builder that cross-links on this host, a runner on the devices.

The devices need no compiler: candidates are built here and linked with the target's cross
compiler (or exported by a backend's own `f_export`, e.g. CUDA's nvcc-compiled device code).
The runner's sessions and measurements are bounded, so a device that dies or hangs yields
failed measurements instead of a hung tuning run, and `make_device_watch` stops tuning when
none is left.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable

from tvmsqz.errors import TvmsqzError

from .rpc import check_tracker, parse_host_port, require_devices, rpc_session


def preload_tensor_intrin() -> float:
    """Import `tvm.s_tir.tensor_intrin` (ARM schedule rules need it) cheaply; seconds taken.

    `tvmsqz.builder.import_tensor_intrin`: ~25 s stock, a few seconds with its fast
    `inspect.getmodule` (restored afterwards).
    """
    from tvmsqz.builder import import_tensor_intrin

    return import_tensor_intrin()


def _export_cross_worker(rt_mod, cc: str, out_dir: str | None = None) -> str:
    """MetaSchedule `f_export`: cross-link the candidate into a .so on the host, in a folder of
    its own (MetaSchedule's `remove_build_dir` removes the artifact's whole folder)."""
    from ..toolchain import cross_compiler

    path = os.path.join(tempfile.mkdtemp(prefix="c-", dir=out_dir), "tvm_tmp_mod.so")
    rt_mod.export_library(path, fcompile=cross_compiler(cc))
    return path


def _ms_create_session(rpc_config, request_timeout: float = 120.0):
    """RPCRunner `f_create_session`: fail fast when no device is left, never wait forever."""
    host_port = f"{rpc_config.tracker_host}:{rpc_config.tracker_port}"
    try:
        return rpc_session(
            host_port, rpc_config.tracker_key, timeout=request_timeout, session_timeout=rpc_config.session_timeout_sec
        )
    except TvmsqzError as err:
        raise RuntimeError(str(err)) from None


def make_cross_builder(
    cc: str | None,
    *,
    max_workers: int | None = None,
    timeout_sec: float = 300.0,
    max_uses: int | None = 200,
    f_export: Callable | None = None,
):
    """A MetaSchedule builder that builds candidates on this host and links them with `cc`.

    It is `tvmsqz.builder.PersistentBuilder` (one worker pool for the whole run, tensor
    intrinsics imported once per worker) whose export cross-links each candidate into its own
    folder under the builder's `out_dir`, so `remove_artifact`/`shutdown` clean up as usual.
    `f_export` (picklable: workers receive it) replaces that export. ARM builds are slow (66-95 s
    per batch of 4 measured here), hence the 300 s default timeout; a build over it becomes a
    failed candidate and its worker is replaced.
    """
    from tvmsqz.builder import PersistentBuilder

    from ..toolchain import cross_compiler

    cross = bool(cc) and f_export is None
    if cross:
        cross_compiler(cc)  # TvmsqzError now rather than failed candidates later
    n = max_workers or max(1, min(os.cpu_count() or 1, 4))
    builder = PersistentBuilder(max_workers=n, timeout_sec=timeout_sec, max_uses=max_uses, f_export=f_export)
    if cross:
        builder.f_export = functools.partial(_export_cross_worker, cc=cc, out_dir=builder.out_dir)
    return builder


def make_rpc_runner(
    tracker: str,
    key: str,
    n_parallel: int | None = None,
    *,
    session_timeout: float = 60.0,
    request_timeout: float = 120.0,
    number: int = 3,
    repeat: int = 1,
    min_repeat_ms: int = 50,
):
    """An `RPCRunner` that measures on every device under `key` in parallel.

    `n_parallel` defaults to the number of devices registered now. Each measurement runs in a
    worker bounded by session + request timeouts, so a device that dies or hangs gives a failed
    measurement; with no device left, sessions fail at once instead of waiting.
    """
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, RPCConfig, RPCRunner
    from tvm.support.popen_pool import PopenPoolExecutor

    from tvmsqz.builder import runner_init

    host, port = parse_host_port(tracker)
    n = n_parallel or require_devices(tracker, key)
    runner = RPCRunner(
        rpc_config=RPCConfig(
            tracker_host=host, tracker_port=port, tracker_key=key, session_timeout_sec=int(session_timeout)
        ),
        evaluator_config=EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms),
        f_create_session=functools.partial(_ms_create_session, request_timeout=request_timeout),
        max_workers=n,
    )
    # The stock pool has no timeout: a hung device would hang tuning. Bound every measurement;
    # workers ignore SIGINT (a terminal's Ctrl-C reaches the whole group; the tuning loop decides).
    runner.pool.shutdown()
    runner.pool = PopenPoolExecutor(
        max_workers=n, timeout=session_timeout + request_timeout + 30, initializer=functools.partial(runner_init, None)
    )
    return runner


def make_rpc_runner_builder(
    tracker: str,
    key: str,
    cc: str | None,
    n_parallel: int | None = None,
    *,
    build_timeout: float = 300.0,
    session_timeout: float = 60.0,
    request_timeout: float = 120.0,
    build_workers: int | None = None,
    number: int = 3,
    repeat: int = 1,
    min_repeat_ms: int = 50,
    f_export: Callable | None = None,
):
    """(builder, runner) for MetaSchedule tuning on devices behind an RPC tracker.

    Checks the tracker and the devices first (TvmsqzError when down or none under `key`). The
    builder cross-links with `cc` on this host, or exports with `f_export` when given (a
    picklable callable `rt_mod -> path`, e.g. `backends.cuda.candidate_export(spec)`); the
    runner measures on `n_parallel` devices at once (default: all registered under `key`).
    """
    check_tracker(tracker)
    n = n_parallel or require_devices(tracker, key)
    builder = make_cross_builder(cc, max_workers=build_workers, timeout_sec=build_timeout, f_export=f_export)
    runner = make_rpc_runner(
        tracker,
        key,
        n,
        session_timeout=session_timeout,
        request_timeout=request_timeout,
        number=number,
        repeat=repeat,
        min_repeat_ms=min_repeat_ms,
    )
    return builder, runner


def make_device_watch(tracker: str, key: str, *, check_every: int = 1):
    """A MetaSchedule measure callback that stops tuning with TvmsqzError when the tracker is
    down or no device is left under `key` after a batch with failed measurements.

    Put it after the default callbacks so the batch's records are in the database first.
    TVM's FFI hands the error back to the tuning call as a RuntimeError with the same message;
    the callback keeps the original in `.error` so the caller can re-raise it:

        watch = make_device_watch(tracker, key)
        try:
            ms.tune_tir(..., measure_callbacks=ms.MeasureCallback.create("default") + [watch])
        except Exception:
            if watch.error is not None:
                raise watch.error from None
            raise
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class DeviceWatch(PyMeasureCallback):
        def __init__(self) -> None:
            super().__init__()
            self.batches = 0
            self.error: TvmsqzError | None = None

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            self.batches += 1
            failed = any(r.error_msg for r in runner_results)
            if not failed or self.batches % check_every:
                return
            try:
                require_devices(tracker, key)
            except TvmsqzError as err:
                self.error = TvmsqzError(f"tuning stopped: {err}")
                raise self.error from None

    return DeviceWatch()
