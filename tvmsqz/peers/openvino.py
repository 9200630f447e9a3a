"""OpenVINO on the CPU, from the same ONNX file.

Latency mode: one stream, `INFERENCE_NUM_THREADS` threads. The fp32 peer pins
`INFERENCE_PRECISION_HINT: f32`; without the hint OpenVINO picks its own precision, bf16 on
hosts with bf16 support (AVX512-BF16, AMX), which is faster but not an fp32 result, so the
bench shows that run apart (`reduced_precision`), with the precision OpenVINO reports it used.
"""

from __future__ import annotations

import numpy as np

from .base import Session, Sources, not_installed


def available() -> str | None:
    return not_installed("openvino")


def prepare(sources: Sources) -> str:
    return str(sources.onnx)


def environment(threads: int) -> dict[str, str]:
    return {}  # threads are a compile_model property


def open(model: str, threads: int, precision: str | None = "f32") -> Session:
    """Compile `model` for the CPU; `precision` None leaves OpenVINO's default."""
    import openvino as ov

    core = ov.Core()
    config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(core.read_model(model), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(x)})
        return request.get_output_tensor(0).data.copy()

    def timer(x: np.ndarray):
        request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x)))  # a copy: no lifetime to mind

        def run_once() -> None:
            request.infer(share_outputs=True)  # no copy out, as TVM's timer leaves its output on the device

        return run_once

    used = compiled.get_property("INFERENCE_PRECISION_HINT")
    return Session(
        run,
        timer,
        {"version": ov.get_version(), "precision": used.get_type_name(), "requested_precision": precision or "default"},
    )
