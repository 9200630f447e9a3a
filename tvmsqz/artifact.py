"""The `Artifact` protocol: what every compiled model offers, whatever its family.

`tvmsqz.compile` and `tvmsqz.load` return one; the CPU and CUDA backends implement it with a
Relax VM (`tvmsqz.vm.VMArtifact`), the VTA backend with its simulator (`tvmsqz.vta`). Callers
(the CLI, `bench`, users' code) use only these members, so no caller asks which family it holds.
This module is runtime side: it imports numpy and the manifest helpers only.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import TvmsqzError
from .manifest import manifest_path


@runtime_checkable
class Artifact(Protocol):
    """A compiled model, loaded and verified against its manifest."""

    path: Path
    manifest: dict

    @property
    def input_shape(self) -> tuple[int, ...] | None: ...

    @property
    def input_dtype(self) -> str: ...

    def run(self, x: np.ndarray) -> np.ndarray:
        """One inference: the model's output for input `x` (shape and dtype checked first)."""

    def timer(self, x: np.ndarray) -> Callable[[], None]:
        """A zero-argument callable that runs one inference on a preloaded `x` (for timing)."""

    def time(self, x: np.ndarray | None = None, *, repeat: int = 50, warmup: int = 5) -> dict[str, Any]:
        """Latency statistics in ms (`min`, `median`, `p90`, `mean`, `runs`) of `repeat` runs."""

    def profile(self, x: np.ndarray, repeat: int = 5) -> list[dict]:
        """Per-kernel (or per-layer) time: a list of `{name, time_us, calls}`, slowest first."""

    def export(self, path: str | Path) -> Path:
        """Copy the artifact, its manifest and its listed files to `path` (a `.so` name)."""


def latency_stats(samples_s: list[float]) -> dict[str, Any]:
    """min / median / p90 / mean in ms over per-run wall times in seconds."""
    ms = np.asarray(samples_s, dtype=float) * 1e3
    return {
        "min": float(ms.min()),
        "median": float(np.median(ms)),
        "p90": float(np.percentile(ms, 90)),
        "mean": float(ms.mean()),
        "runs": int(ms.size),
    }


class ArtifactBase:
    """What the protocol's members share across families: timing and export.

    Subclasses set `path` and `manifest` and implement `run`, `timer` and `profile`.
    """

    path: Path
    manifest: dict

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        spec = self.manifest.get("input")
        return tuple(spec["shape"]) if spec else None

    @property
    def input_dtype(self) -> str:
        return (self.manifest.get("input") or {}).get("dtype", "float32")

    def example_input(self, seed: int = 0) -> np.ndarray:
        """A seeded random input of the artifact's shape and dtype."""
        if self.input_shape is None:
            raise TvmsqzError(f"{self.path} has no input description; pass an input")
        return np.random.default_rng(seed).standard_normal(self.input_shape).astype(self.input_dtype)

    def timer(self, x: np.ndarray) -> Callable[[], None]:  # pragma: no cover - every family overrides
        raise NotImplementedError

    def time(self, x: np.ndarray | None = None, *, repeat: int = 50, warmup: int = 5) -> dict[str, Any]:
        run_once = self.timer(self.example_input() if x is None else x)
        for _ in range(warmup):
            run_once()
        samples = []
        for _ in range(max(1, int(repeat))):
            start = time.perf_counter()
            run_once()
            samples.append(time.perf_counter() - start)
        return latency_stats(samples)

    def files(self) -> list[Path]:
        """The artifact and every file its manifest lists (sidecars), as they sit on disk."""
        listed = [self.path.with_name(e["file"]) for e in self.manifest.get("files", []) if isinstance(e, dict)]
        return [self.path, *listed]

    def export(self, path: str | Path) -> Path:
        """Copy the artifact, its listed files and its manifest under `path`'s name: files named
        after the artifact (`model.so` -> `model.vta.npz`) follow the new name, and the manifest's
        file names follow them (its sizes and hashes stay true: the bytes are the same)."""
        import json

        from .fsutil import atomic_path, atomic_write

        path = Path(path)
        if path.suffix != ".so":
            raise TvmsqzError(f"export path {path} must name a .so file (its manifest goes beside it)")
        if path.resolve() == self.path.resolve():
            return path
        old_stem, new_stem = self.path.stem, path.stem
        renames = {}
        for src in self.files():
            name = path.name if src == self.path else src.name
            if src != self.path and src.name.startswith(old_stem + "."):
                name = new_stem + src.name[len(old_stem) :]
            renames[src.name] = name
            with atomic_path(path.with_name(name)) as tmp:
                shutil.copyfile(src, tmp)
        manifest = manifest_path(self.path)
        if manifest.is_file():
            atomic_write(
                manifest_path(path), json.dumps(_renamed(json.loads(manifest.read_text()), renames), indent=2) + "\n"
            )
        return path


def _renamed(value: Any, renames: dict[str, str]) -> Any:
    """`value` (a manifest) with every string that is an old file name replaced by its new one."""
    if isinstance(value, dict):
        return {key: _renamed(item, renames) for key, item in value.items()}
    if isinstance(value, list):
        return [_renamed(item, renames) for item in value]
    if isinstance(value, str):
        return renames.get(value, value)
    return value
