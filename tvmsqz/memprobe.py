"""Peak memory of a fresh process that loads a model and runs inferences.

Run as `python -m tvmsqz.memprobe {tvm|onnxruntime} PATH N,C,H,W RUNS THREADS`; prints one JSON
line. A separate process is the only honest way to compare runtimes' resident memory: in the
bench process every library is loaded at once.
"""

from __future__ import annotations

import json
import resource
import sys

import numpy as np


def _peak_rss_bytes() -> int:
    """VmHWM of this process: getrusage's ru_maxrss survives fork+exec and would report the
    (much larger) parent's peak instead of ours."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str]) -> None:
    kind, path, shape_text, runs, threads = argv
    shape = tuple(int(d) for d in shape_text.split(","))
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    baseline = _peak_rss_bytes()
    if kind == "tvm":
        from tvmsqz.runtime import Artifact

        run = Artifact.load(path).timer(x)
    elif kind == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run() -> None:
            sess.run(None, {name: x})
    else:
        raise SystemExit(f"unknown runtime {kind}")
    for _ in range(int(runs)):
        run()
    print(json.dumps({"runtime": kind, "peak_rss_bytes": _peak_rss_bytes(), "baseline_rss_bytes": baseline}))


if __name__ == "__main__":
    main(sys.argv[1:])
