"""The design spaces `tvmsqz explore` walks: the SqueezeNet paper's and SqueezeNext's.

SqueezeNet (Iandola et al., 2016, section 5) describes its Fire modules by five metaparameters:
module i (0..7) expands to `e_i = base_e + incr_e * floor(i / freq)` channels, `pct3x3` of them
3x3; its squeeze layer has `SR * e_i` channels. SqueezeNet 1.0 is SR 0.125, pct3x3 0.5,
base_e 128, incr_e 128, freq 2, and every point here keeps its macro-architecture (7x7/2 conv
to 96, max-pools after fire4 and fire8, a 1x1 classifier conv, 224x224 input). The paper
explored SR 0.125-1.0 and pct3x3 1-99% against accuracy; `explore` puts latency beside them.

SqueezeNext points vary the width multiplier and the blocks per stage of the authors' 23-layer
networks (`squeezenext.SqueezeNextConfig`).

A point is data (`Point`): its `key` names it in results files (so a run resumes by key), and
`build()` gives the seeded torch module. `counts()` gives parameters, MACs and weight bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["Point", "default_points", "counts"]

INPUT_SIZE = 224
SQUEEZENEXT_INPUT_SIZE = 227


@dataclass(frozen=True)
class Point:
    """One network of a design space (or a built-in model, `kind` "builtin")."""

    kind: str  # "builtin", "squeezenet" or "squeezenext"
    name: str = ""  # a built-in model's name, or the label of a named point
    sr: float = 0.125
    pct3x3: float = 0.5
    base_e: int = 128
    incr_e: int = 128
    freq: int = 2
    width: float = 1.0
    depths: tuple[int, int, int, int] = (6, 6, 8, 1)

    @property
    def key(self) -> str:
        if self.kind == "builtin":
            return self.name
        if self.kind == "squeezenet":
            return f"squeezenet-sr{self.sr:g}-pct{self.pct3x3:g}-base{self.base_e}-incr{self.incr_e}-freq{self.freq}"
        return f"squeezenext-w{self.width:g}-d{'-'.join(map(str, self.depths))}"

    @property
    def label(self) -> str:
        """What the plot writes beside a named point ('' for an anonymous one)."""
        return self.name

    @property
    def input_size(self) -> int:
        if self.kind == "builtin":
            from . import get_model_info

            return int(get_model_info(self.name).input_shape[-1])
        return SQUEEZENEXT_INPUT_SIZE if self.kind == "squeezenext" else INPUT_SIZE

    def fires(self) -> list[tuple[int, int, int]]:
        """(squeeze, expand1x1, expand3x3) channels of fire2..fire9 (SqueezeNet points)."""
        out = []
        for i in range(8):
            e = self.base_e + self.incr_e * (i // self.freq)
            e3 = min(e - 1, max(1, round(e * self.pct3x3)))
            out.append((max(1, round(self.sr * e)), e - e3, e3))
        return out

    def build(self, seed: int = 0):
        """The seeded torch module (eval mode)."""
        if self.kind == "builtin":
            from . import torch_model

            return torch_model(self.name, seed=seed)
        if self.kind == "squeezenet":
            from .squeezenet import build_from_fires

            return build_from_fires(self.fires(), seed=seed)
        from .squeezenext import SqueezeNextConfig, build

        config = SqueezeNextConfig("", self.width, self.depths, 7, False)
        return build(config, seed=seed)


def _squeezenet(sr: float, pct3x3: float, base_e: int = 128, incr_e: int = 128, freq: int = 2) -> Point:
    return Point("squeezenet", sr=sr, pct3x3=pct3x3, base_e=base_e, incr_e=incr_e, freq=freq)


def default_points() -> list[Point]:
    """The exploration order: the named models first (SqueezeNet 1.0 is the space's own point),
    then the paper's two sweeps (SR at pct3x3 50%, pct3x3 at SR 0.125), SqueezeNext widths and
    depths, then the rest of a coarse grid. A budget cut keeps the most informative points."""
    named = [
        dataclasses.replace(_squeezenet(0.125, 0.5), name="SqueezeNet 1.0"),
        Point("builtin", "squeezenet1_1"),
        Point("builtin", "squeezenext_1_0_23"),
        Point("builtin", "squeezenext_1_0_23v5"),
        Point("builtin", "squeezenext_2_0_23"),
    ]
    sweeps = [_squeezenet(sr, 0.5) for sr in (0.25, 0.5, 0.75, 1.0)]
    sweeps += [_squeezenet(0.125, pct) for pct in (0.01, 0.25, 0.75, 0.99)]
    nexts = [
        Point("squeezenext", width=w, depths=d)
        for w, d in ((0.5, (6, 6, 8, 1)), (1.5, (6, 6, 8, 1)), (0.5, (2, 4, 14, 1)), (1.0, (2, 2, 4, 1)))
    ]
    grid = [
        _squeezenet(sr, pct, base, incr)
        for base, incr in ((64, 64), (128, 64), (64, 128))
        for sr in (0.125, 0.5)
        for pct in (0.25, 0.75)
    ]
    seen, out = set(), []
    for point in named + sweeps + nexts + grid:
        if point.key not in seen:
            seen.add(point.key)
            out.append(point)
    return out


def counts(module, input_size: int) -> dict:
    """Parameters, multiply-accumulates of one image, and the weight bytes at fp32 and int8
    (int8: one byte per conv/linear weight, biases and batch norms kept at 32 bits)."""
    import torch
    from torch import nn

    macs = 0

    def hook(layer, inputs, output) -> None:
        nonlocal macs
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            macs += output.numel() * (layer.in_channels // layer.groups) * kh * kw
        elif isinstance(layer, nn.Linear):
            macs += output.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in module.parameters())
    weights = sum(
        m.weight.numel() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight is not None
    )
    return {
        "params": int(params),
        "macs": int(macs),
        "bytes_fp32": int(params * 4),
        "bytes_int8": int(weights + (params - weights) * 4),
    }
