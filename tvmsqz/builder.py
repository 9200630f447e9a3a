"""A MetaSchedule builder that keeps one worker pool alive for a whole tuning run.

Why not the stock `LocalBuilder`: it starts a fresh `PopenPoolExecutor` for every batch, and the
first build in each fresh worker imports `tvm.s_tir.tensor_intrin`. That import parses ~250
TVMScript functions, and every parse calls `inspect.stack()`; for each `<frozen importlib...>`
frame on the stack `inspect.getmodule` finds no cached module and walks every loaded module
(`sys.modules`, ~2000 entries). Measured here: 36-37 s per import (21-29 s on a quieter box),
more than the stock 30 s build timeout, so every candidate of every batch can fail.

What this builder does instead:

* one `PopenPoolExecutor` for the builder's lifetime (workers are recycled after
  `max_uses` builds, which bounds the slow memory growth the stock builder avoids by
  restarting per batch);
* a worker initializer that installs the `inspect.getmodule` fix below, ignores SIGINT (Ctrl-C
  in a terminal reaches the whole process group; the tuning loop decides when to stop, and a
  worker killed mid-build would turn the batch into bogus failures) and imports
  `tvm.s_tir.tensor_intrin` once (~3 s instead of ~37 s);
* build artifacts go to one private temporary folder that `shutdown()` removes.

The `inspect.getmodule` fix: a file name that starts with "<" (`<frozen importlib._bootstrap>`,
`<string>`) never belongs to a module file, so the lookup returns None at once; that is what the
full walk returns for such frames anyway, only ~10x slower. The worker keeps the patch for its
whole life: the worker is ours and runs nothing else. In the user's own process the stdlib is
not patched; `fast_inspect()` only wraps the one-time import there (see `tvmsqz.tuning`) and
restores `inspect.getmodule` afterwards.

Only the standard library is imported at module level: builder workers unpickle
`_build_one` by reference, which imports this module in every worker.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator

_ORIGINAL_GETMODULE = inspect.getmodule


def _fast_getmodule(obj, _filename=None):
    """`inspect.getmodule` that answers None at once for "<...>" (frozen, exec'd) file names."""
    if _filename is None and (inspect.isframe(obj) or inspect.iscode(obj) or inspect.istraceback(obj)):
        code = obj.tb_frame.f_code if inspect.istraceback(obj) else (obj.f_code if inspect.isframe(obj) else obj)
        _name = code.co_filename
    else:
        _name = _filename
    if isinstance(_name, str) and _name.startswith("<"):
        return None
    return _ORIGINAL_GETMODULE(obj, _filename)


def install_fast_getmodule() -> None:
    """Patch `inspect.getmodule` for the rest of this process (builder workers only)."""
    inspect.getmodule = _fast_getmodule


@contextlib.contextmanager
def fast_inspect() -> Iterator[None]:
    """Use the fast `inspect.getmodule` inside the block only, then restore the original."""
    if inspect.getmodule is _fast_getmodule:
        yield
        return
    saved = inspect.getmodule
    inspect.getmodule = _fast_getmodule
    try:
        yield
    finally:
        inspect.getmodule = saved


def import_tensor_intrin() -> float:
    """Import `tvm.s_tir.tensor_intrin` (MetaSchedule needs it) cheaply; returns seconds taken."""
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return 0.0
    start = time.perf_counter()
    with fast_inspect():
        import tvm.s_tir.tensor_intrin  # noqa: F401
    return time.perf_counter() - start


def _set_threads(num_threads: int | None) -> None:
    if num_threads:
        os.environ["TVM_NUM_THREADS"] = str(num_threads)
        os.environ["OMP_NUM_THREADS"] = str(num_threads)


def worker_init(num_threads: int | None = None) -> None:
    """Builder worker initializer: fast getmodule, no SIGINT, tensor intrinsics imported once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_threads(num_threads)
    install_fast_getmodule()
    import tvm.s_tir.tensor_intrin  # noqa: F401
    from tvm.s_tir.meta_schedule.builder import local_builder  # noqa: F401


def runner_init(num_threads: int | None = None) -> None:
    """Runner worker initializer: measure with the target's thread count; leave Ctrl-C to us."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_threads(num_threads)


def _noop(seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return os.getpid()


def _build_job(job: tuple) -> str:
    return _build_one(*job)


def _build_one(mod, target, params, out_dir: str, f_export: Callable | None) -> str:
    """Build one candidate in a worker: MetaSchedule's default build, exported into `out_dir`."""
    from tvm.s_tir.meta_schedule.builder.local_builder import (
        _deserialize_params,
        default_build,
    )

    rt_mod = default_build(mod, target, _deserialize_params(params))
    if f_export is not None:
        return f_export(rt_mod)
    from tvm.support.tar import tar

    folder = tempfile.mkdtemp(prefix="c-", dir=out_dir)
    path = os.path.join(folder, "tvm_tmp_mod." + tar.output_format)
    rt_mod.export_library(path, fcompile=tar)
    return path


@functools.cache
def _builder_class():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PersistentBuilder(PyBuilder):
        """MetaSchedule builder with one long-lived worker pool (see the module docstring)."""

        def __init__(
            self,
            *,
            max_workers: int | None = None,
            timeout_sec: float = 60.0,
            num_threads: int | None = None,
            max_uses: int | None = 256,
            f_export: Callable | None = None,
            quiet: bool = True,
        ) -> None:
            super().__init__()
            self.max_workers = max_workers or max(1, os.cpu_count() or 1)
            self.timeout_sec = timeout_sec
            self.f_export = f_export
            self.out_dir = tempfile.mkdtemp(prefix="tvmsqz-build-")
            # Removed at interpreter exit even when nobody calls shutdown(), and by the CLI's
            # SIGTERM handler (fsutil's live temps) when the process is terminated.
            from .fsutil import forget_temp, keep_temp

            keep_temp(self.out_dir)
            self._cleanup = weakref.finalize(self, _remove_out_dir, self.out_dir, forget_temp)
            self.builds = 0
            self.failures = 0
            self.seconds = 0.0
            sink = subprocess.DEVNULL if quiet and not os.environ.get("TVMSQZ_VERBOSE") else None
            self.pool = PopenPoolExecutor(
                max_workers=self.max_workers,
                timeout=timeout_sec,
                initializer=functools.partial(worker_init, num_threads),
                maximum_process_uses=max_uses,
                stdout=sink,
                stderr=sink,
            )
            self._closed = False

        def warm_up(self) -> None:
            """Start every worker now (their initializer runs in the background)."""
            for _ in range(self.max_workers):
                self.pool.submit(_noop, 0.5)

        def build(self, build_inputs):
            return self.build_batch(build_inputs)

        def build_batch(self, build_inputs) -> list:
            """Build a batch in the pool; called directly from Python by `tvmsqz.tuning` (so a
            Ctrl-C is not turned into an error by the FFI boundary) and through FFI by
            MetaSchedule's own task schedulers."""
            start = time.perf_counter()
            results = []
            jobs = [
                (bi.mod, bi.target, _serialize_params(bi.params), self.out_dir, self.f_export) for bi in build_inputs
            ]
            for res in self.pool.map_with_error_catching(_build_job, jobs):
                if res.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(res.value, None))
                    continue
                self.failures += 1
                if res.status == StatusKind.TIMEOUT:
                    results.append(
                        BuilderResult(None, f"PersistentBuilder: timeout, killed after {self.timeout_sec} s")
                    )
                else:
                    results.append(BuilderResult(None, f"PersistentBuilder: build failed\n{res.value}"))
            self.builds += len(jobs)
            self.seconds += time.perf_counter() - start
            return results

        def remove_artifact(self, path: str | None) -> None:
            """Delete one built candidate (after it was measured)."""
            if path:
                folder = os.path.dirname(path)
                if os.path.dirname(folder) == self.out_dir:
                    shutil.rmtree(folder, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)

        def shutdown(self) -> None:
            """Stop the workers and remove every artifact this builder wrote."""
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(Exception):
                self.pool.shutdown(wait=False)
            self._cleanup()

    return PersistentBuilder


def _remove_out_dir(out_dir: str, forget) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    forget(out_dir)


def PersistentBuilder(**kwargs):  # noqa: N802 - a class to its users
    """Create the persistent-pool builder: `PersistentBuilder(max_workers=2, timeout_sec=60,
    num_threads=2, max_uses=256, f_export=None)`; call `.shutdown()` when tuning ends."""
    return _builder_class()(**kwargs)


#: How a tuning candidate is timed. "warm": 3 runs back to back (>= 100 ms), caches hot as a
#: micro-benchmark has them. "flush": every argument but the first (weights, bias, output; the
#: first is the input the previous kernel just wrote) flushed from the caches before each of 10
#: single runs (MetaSchedule's `cache_flush_cpu_non_first_arg`), the weights as cold as in a big model.
MEASURE_MODES = ("warm", "flush")


def make_local_runner(num_threads: int | None, *, timeout_sec: float = 30.0, measure: str = "warm"):
    """MetaSchedule's `LocalRunner` measuring with `num_threads` threads (the target's cores)."""
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, LocalRunner

    if measure == "flush":
        config = EvaluatorConfig(number=1, repeat=10, min_repeat_ms=0, enable_cpu_cache_flush=True)
    else:
        config = EvaluatorConfig(number=3, repeat=1, min_repeat_ms=100, enable_cpu_cache_flush=False)
    return LocalRunner(
        timeout_sec=timeout_sec, evaluator_config=config, initializer=functools.partial(runner_init, num_threads)
    )


def local_builder_runner(*, workers: int, measure_threads: int, f_export=None, measure: str = "warm"):
    """(builder, runner) measuring on this host: one persistent builder pool, MetaSchedule's runner
    timing each candidate as `measure` says (`MEASURE_MODES`)."""
    builder = PersistentBuilder(max_workers=workers, timeout_sec=60.0, f_export=f_export)
    builder.warm_up()
    return builder, make_local_runner(measure_threads, measure=measure)
