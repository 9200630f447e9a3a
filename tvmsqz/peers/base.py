"""What every peer runtime module shares (`Session`, `Sources`, `PeerUnavailable`, timing), in a
module of its own: the runtime modules import it, and the package that picks them imports them,
so neither imports the other.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import latency_stats

#: Untimed runs before the timed ones (first-call allocation, caches, thread start-up).
WARMUP = 5
PEERS_EXTRA = "pip install 'tvmsqz[peers]'"


class PeerUnavailable(Exception):
    """This runtime cannot run this model here; the message says why (it goes in `peers_skipped`)."""


@dataclass
class Session:
    """A model loaded in one runtime: `run(x)` returns the first output as numpy (for parity),
    `timer(x)` returns a zero-argument callable running one inference on a preloaded `x`."""

    run: Callable[[np.ndarray], np.ndarray]
    timer: Callable[[np.ndarray], Callable[[], None]]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sources:
    """What the bench has for the runtimes to prepare from (all in the bench's temp folder)."""

    onnx: Path
    workdir: Path
    artifact: Path | None = None  # None: the TVM artifact runs on an RPC device, not here
    torch_model: str | None = None  # a built-in model name when the model came from torch
    input_shape: tuple[int, ...] = ()
    calibration: Path | None = None  # int8 peers: the calibration inputs (K, N, C, H, W) as .npy


def not_installed(package: str, hint: str = PEERS_EXTRA) -> str | None:
    """None when `package` can be imported here, else the reason, without importing it."""
    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError) as exc:  # a finder refused it, or a broken half-install
        return f"{package} is not importable ({exc}); {hint}"
    return None if found else f"{package} is not installed ({hint})"


def time_runs(run: Callable[[], None], repeat: int, warmup: int = WARMUP) -> dict[str, float]:
    """`warmup` untimed runs, then `repeat` runs timed one by one."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return latency_stats(samples)
