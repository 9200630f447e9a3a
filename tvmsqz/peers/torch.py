"""Eager PyTorch on the CPU: the model's own source, for built-in torch models only."""

from __future__ import annotations

import numpy as np

from .base import PeerUnavailable, Session, Sources, not_installed


def available() -> str | None:
    return not_installed("torch", "it is a dependency of tvmsqz")


def prepare(sources: Sources) -> str:
    if sources.torch_model is None:
        raise PeerUnavailable("the model has no PyTorch source (only built-in torch models do)")
    return sources.torch_model


def environment(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads)}


def open(model: str, threads: int) -> Session:
    """The built-in model `model` in eval mode, under `inference_mode`, with `threads` threads."""
    import torch

    from ..models import torch_model

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    net = torch_model(model)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    def timer(x: np.ndarray):
        tx = torch.from_numpy(np.ascontiguousarray(x))

        def run_once() -> None:
            with torch.inference_mode():
                net(tx)

        return run_once

    return Session(run, timer, {"version": torch.__version__, "precision": "f32"})
