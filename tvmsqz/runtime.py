"""Load a compiled artifact and run it: needs only the TVM runtime and numpy.

This module is what a device runs, so it must not import the compiler side of tvmsqz
(onnx, torch, the Relax frontend). The manifest beside the `.so` says what input to feed.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import TvmsqzError
from .quiet import quiet_stderr


def manifest_path(artifact: Path) -> Path:
    """The manifest `tvmsqz compile` writes beside an artifact: `model.so` -> `model.so.json`."""
    return artifact.with_name(artifact.name + ".json")


def read_manifest(artifact: Path) -> dict | None:
    path = manifest_path(artifact)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise TvmsqzError(f"manifest {path} is corrupt") from None


class Artifact:
    """A loaded `.so` with a Relax VM on the CPU."""

    def __init__(self, path: Path, vm, manifest: dict | None, device=None):
        self.path = path
        self.vm = vm
        self.manifest = manifest or {}
        self.device = device

    @classmethod
    def load(cls, path: str | Path, device=None) -> "Artifact":
        import tvm
        from tvm.runtime.vm import VirtualMachine

        path = Path(path)
        if not path.is_file():
            raise TvmsqzError(f"no such file: {path}")
        try:
            with quiet_stderr():
                lib = tvm.runtime.load_module(str(path))
        except Exception as exc:
            raise TvmsqzError(f"cannot load {path} as a TVM artifact: {str(exc).strip().splitlines()[-1]}") from None
        manifest = read_manifest(path)
        if device is None:
            family = ((manifest or {}).get("target") or {}).get("family")
            device = tvm.cuda(0) if family == "cuda" else tvm.cpu(0)
        vm = VirtualMachine(lib, device)
        return cls(path, vm, manifest, device)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        spec = self.manifest.get("input")
        return tuple(spec["shape"]) if spec else None

    @property
    def input_dtype(self) -> str:
        return (self.manifest.get("input") or {}).get("dtype", "float32")

    def check_input(self, x: np.ndarray) -> np.ndarray:
        want = self.input_shape
        if want is not None and tuple(x.shape) != want:
            raise TvmsqzError(f"input has shape {list(x.shape)}, the artifact expects {list(want)}")
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def run(self, x: np.ndarray) -> np.ndarray:
        import tvm

        out = self.vm["main"](tvm.runtime.tensor(self.check_input(x), device=self.device))
        if isinstance(out, (list, tuple)) or hasattr(out, "__getitem__") and not hasattr(out, "numpy"):
            out = out[0]
        return out.numpy()

    def timer(self, x: np.ndarray):
        """A zero-argument callable running one inference on a preloaded input (for benches)."""
        import tvm

        arg = tvm.runtime.tensor(self.check_input(x), device=self.device)
        main = self.vm["main"]

        def run_once() -> None:
            main(arg)

        return run_once

    def profile(self, x: np.ndarray, repeat: int = 5) -> list[dict]:
        """Per-kernel wall time, from the Relax VM's call instrumentation."""
        import tvm
        from tvm.runtime.vm import VMInstrumentReturnKind

        totals: dict[str, float] = defaultdict(float)
        calls: dict[str, int] = defaultdict(int)
        started: dict[str, float] = {}
        shapes: dict[str, list] = {}

        def instrument(func, name, before_run, ret_value, *args):
            if name.startswith("vm.builtin") or name.startswith("relax.") or name == "main":
                return VMInstrumentReturnKind.NO_OP
            if before_run:
                if name not in shapes:  # destination-passing style: the last argument is the output
                    shapes[name] = [list(getattr(a, "shape", ())) for a in args]
                started[name] = time.perf_counter()
            else:
                totals[name] += time.perf_counter() - started.pop(name)
                calls[name] += 1
            return VMInstrumentReturnKind.NO_OP

        arg = tvm.runtime.tensor(self.check_input(x), device=self.device)
        self.vm["main"](arg)  # warm-up outside the profile
        self.vm.set_instrument(instrument)
        try:
            for _ in range(repeat):
                self.vm["main"](arg)
        finally:
            self.vm.set_instrument(None)
        rows = [{"name": n, "time_us": totals[n] / repeat * 1e6, "calls": calls[n] // repeat,
                 "shapes": shapes.get(n, [])} for n in totals]
        return sorted(rows, key=lambda r: -r["time_us"])


def top_k(scores: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    flat = np.asarray(scores).reshape(scores.shape[0], -1)[0]
    order = np.argsort(-flat)[:k]
    return [(int(i), float(flat[i])) for i in order]
