"""Which module runs which runtime of the report (`RUNNERS`), and loading one (`module`).

Its own module so that the worker process (`peers.worker`) and the package that runs the workers
(`peers`) both use it without importing each other.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import TvmsqzError

#: Timed one after the other, in this order; `openvino_default` only at the default thread count.
RUNNERS: dict[str, tuple[str, dict[str, Any]]] = {
    "tvm": ("tvm", {}),
    "onnxruntime": ("onnxruntime", {}),
    "openvino": ("openvino", {"precision": "f32"}),
    "ncnn": ("ncnn", {}),
    "torch": ("torch", {}),
    "openvino_default": ("openvino", {"precision": None}),
    "onnxruntime_int8": ("onnxruntime_int8", {}),
    "openvino_int8": ("openvino_int8", {}),
}
#: Runners of `bench --precision int8` only (their models are quantized from calibration inputs).
INT8_RUNNERS = ("onnxruntime_int8", "openvino_int8")
#: The module of each runner, by its name in RUNNERS (literal names: the import graph shows them).
MODULES = {
    "tvm": "tvmsqz.peers.tvm",
    "onnxruntime": "tvmsqz.peers.onnxruntime",
    "openvino": "tvmsqz.peers.openvino",
    "ncnn": "tvmsqz.peers.ncnn",
    "torch": "tvmsqz.peers.torch",
    "onnxruntime_int8": "tvmsqz.peers.onnxruntime_int8",
    "openvino_int8": "tvmsqz.peers.openvino_int8",
}


def module(runtime: str):
    """The peer module behind a report name (`openvino_default` -> `tvmsqz.peers.openvino`)."""
    if runtime not in RUNNERS:
        raise TvmsqzError(f"unknown runtime {runtime!r} (known: {', '.join(RUNNERS)})")
    return importlib.import_module(MODULES[RUNNERS[runtime][0]])
