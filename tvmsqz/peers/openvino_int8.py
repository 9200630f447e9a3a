"""OpenVINO at int8: the model quantized by NNCF (`nncf.quantize`, its default post-training
recipe, on the same calibration inputs the TVM int8 model used), compiled for the CPU at
OpenVINO's default inference precision (the layers NNCF left unquantized then run at the
precision OpenVINO picks on this host, as a user of `nncf` gets)."""

from __future__ import annotations

from .base import PeerUnavailable, Session, Sources, not_installed
from .openvino import environment
from .openvino import open as open_ov

__all__ = ["available", "environment", "open", "prepare"]


def available() -> str | None:
    return not_installed("openvino") or not_installed("nncf")


def prepare(sources: Sources) -> str:
    """Quantize with NNCF into an OpenVINO IR in the bench folder; the .xml path."""
    import logging

    import numpy as np

    if sources.calibration is None:
        raise PeerUnavailable("no calibration inputs (int8 peers run in `bench --precision int8`)")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    import nncf
    import openvino as ov

    inputs = np.load(sources.calibration)
    out = sources.workdir / "model-ov-int8.xml"
    try:
        model = ov.Core().read_model(str(sources.onnx))
        quantized = nncf.quantize(model, nncf.Dataset(list(inputs)), subset_size=len(inputs))
        ov.save_model(quantized, str(out))
    except Exception as exc:  # noqa: BLE001 - NNCF raises many types; each means "cannot quantize"
        raise PeerUnavailable(f"nncf.quantize failed: {str(exc).strip().splitlines()[-1][:200]}") from None
    return str(out)


def open(model: str, threads: int) -> Session:
    session = open_ov(model, threads, precision=None)
    session.info["precision"] = f"int8 (NNCF), other layers {session.info.get('precision')}"
    return session
