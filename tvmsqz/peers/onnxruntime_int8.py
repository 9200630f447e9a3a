"""ONNX Runtime at int8: the model quantized by its own `quantize_static` (QDQ, per-channel int8
weights, uint8 activations, min-max calibration on the same inputs the TVM int8 model used), run
by the CPU execution provider, which fuses the QDQ patterns into its int8 kernels."""

from __future__ import annotations

from .base import PeerUnavailable, Session, Sources
from .onnxruntime import available, environment
from .onnxruntime import open as open_fp32

__all__ = ["available", "environment", "open", "prepare"]


def prepare(sources: Sources) -> str:
    """Quantize the ONNX file with `quantize_static` into the bench folder; its path."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if sources.calibration is None:
        raise PeerUnavailable("no calibration inputs (int8 peers run in `bench --precision int8`)")
    inputs = np.load(sources.calibration)
    name = onnx.load(str(sources.onnx), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(inputs)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {name: item}

    out = sources.workdir / "model-ort-int8.onnx"
    try:
        quantize_static(
            str(sources.onnx),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; each means "cannot quantize"
        raise PeerUnavailable(f"quantize_static failed: {str(exc).strip().splitlines()[-1][:200]}") from None
    return str(out)


def open(model: str, threads: int) -> Session:
    session = open_fp32(model, threads)
    session.info["precision"] = "int8 (QDQ, quantize_static)"
    return session
