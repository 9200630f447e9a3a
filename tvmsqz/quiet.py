"""Keep TVM's C++ log spam out of normal output.

TVM's C++ side writes "Scope Saving/Loaded" lines for every constant straight to fd 2 when a
library is exported or loaded; Python-level redirection cannot catch that, so fd 2 itself is
pointed at /dev/null around those calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_stderr(enabled: bool = True) -> Iterator[None]:
    """Silence fd 2 (C and C++ writes included) for the duration of the block."""
    if not enabled or os.environ.get("TVMSQZ_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_python_logs() -> None:
    """Turn down the Python loggers and warnings that TVM, torch and ONNX emit by default."""
    if os.environ.get("TVMSQZ_VERBOSE"):
        return
    for name in ("tvm", "tvm.s_tir.meta_schedule", "tvm.meta_schedule", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=FutureWarning)
