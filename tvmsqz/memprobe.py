"""Peak memory of a fresh process that loads a model and runs inferences.

Run as `python -m tvmsqz.memprobe {tvm|tvm-full|onnxruntime} PATH N,C,H,W RUNS THREADS [WARMUP]`;
prints one JSON line (with the RUNS' latency stats). A separate process is the only honest way
to compare runtimes' resident memory: in the bench process every library is loaded at once.

`tvm` loads the artifact as a device does, through `libtvm_runtime.so` only
(`TVM_USE_RUNTIME_LIB=1`, set here before the first `import tvm`); `tvm-full` through the whole
wheel (`libtvm_compiler.so`, LLVM inside), for reference. Both report which TVM libraries the
process mapped, so a figure is never attributed to the wrong one. The bundle's runners
(`tvmsqz.bundle`) report the same VmHWM figure themselves.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np


def _status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (reported in KiB) in bytes; None where unreadable."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss_bytes() -> int:
    """VmHWM of this process: getrusage's ru_maxrss survives fork+exec and would report the
    (much larger) parent's peak instead of ours."""
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss_bytes() -> int:
    return _status_bytes("VmRSS") or 0


class _BlockCompilerSide:
    """Import hook that makes the compiler-side packages unimportable in the probe process."""

    BLOCKED = ("torch", "onnx", "onnxruntime", "onnxscript", "xgboost", "scipy", "sklearn", "skimage", "matplotlib")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ImportError(f"{name} is not on a deployment device")
        return None


def main(argv: list[str]) -> None:
    """Optional 6th argument WARMUP: untimed runs first (the bundle bench's TVM reference)."""
    kind, path, shape_text, runs, threads, *rest = argv
    warmup = int(rest[0]) if rest else 0
    shape = tuple(int(d) for d in shape_text.split(","))
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    baseline = _peak_rss_bytes()
    extra: dict = {}
    if kind in ("tvm", "tvm-full"):
        # A device has the TVM runtime, not the compiler side: `import tvm` would otherwise pull
        # in torch (TVM's frontends import it when present) and count it against TVM.
        sys.meta_path.insert(0, _BlockCompilerSide())
        from tvmsqz import runtime

        if kind == "tvm":
            runtime.prefer_runtime_lib()
        else:
            os.environ.pop("TVM_USE_RUNTIME_LIB", None)
        tvm = runtime.tvm_import()  # the library itself, measured separately below

        imported = _current_rss_bytes()
        run = runtime.load(path).timer(x)
        extra = {
            "runtime_only": bool(getattr(tvm.base, "_RUNTIME_ONLY", False)),
            "tvm_libraries": runtime.tvm_libraries_mapped(),
        }
    elif kind == "onnxruntime":
        import onnxruntime as ort

        imported = _current_rss_bytes()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run() -> None:
            sess.run(None, {name: x})
    else:
        raise SystemExit(f"unknown runtime {kind}")
    for _ in range(warmup):
        run()
    ms = []
    for _ in range(int(runs)):
        start = time.perf_counter()
        run()
        ms.append((time.perf_counter() - start) * 1e3)
    latency = {"min": min(ms), "median": float(np.median(ms)), "mean": float(np.mean(ms)), "runs": len(ms)}
    print(
        json.dumps(
            {
                "runtime": kind,
                "peak_rss_bytes": _peak_rss_bytes(),
                "baseline_rss_bytes": baseline,
                "after_import_rss_bytes": imported,
                "latency_ms": latency,
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
