"""ONNX Runtime (CPU execution provider): the reference every parity is measured against."""

from __future__ import annotations

import numpy as np

from .base import Session, Sources, not_installed


def available() -> str | None:
    return not_installed("onnxruntime", "it is a dependency of tvmsqz: pip install onnxruntime")


def prepare(sources: Sources) -> str:
    return str(sources.onnx)


def environment(threads: int) -> dict[str, str]:
    return {}  # its thread pool is sized by the session options


def open(model: str, threads: int) -> Session:
    """One sequential session with `threads` intra-op threads (inter-op parallelism off: one
    image's graph is a chain, extra pools would only spin)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    def timer(x: np.ndarray):
        feed = {name: np.ascontiguousarray(x)}
        return lambda: sess.run(None, feed)

    return Session(run, timer, {"version": ort.__version__, "precision": "f32"})
