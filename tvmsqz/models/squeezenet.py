"""SqueezeNet 1.0 / 1.1 and the SqueezeNet paper's bypass variants, as torch modules.

The structure and parameter names follow torchvision's `SqueezeNet` / `Fire` exactly, so a
torchvision state_dict (e.g. the ImageNet weights, if a user has them) loads with
`strict=True` into `squeezenet1_0` / `squeezenet1_1`:

    features.0.{weight,bias}                  first conv
    features.N.squeeze.{weight,bias}          Fire module at index N of `features`
    features.N.expand1x1.{weight,bias}
    features.N.expand3x3.{weight,bias}
    classifier.1.{weight,bias}                final 1x1 conv (Dropout, Conv, ReLU, AvgPool)

Bypass variants (SqueezeNet paper, section 6) are built on version 1.0. A Fire module with a
bypass returns `fire(x) + bypass(x)`, added after the expand ReLUs and the concat:

* simple bypass: identity around fire3, fire5, fire7, fire9 (in == out channels), i.e.
  `features.4`, `features.7`, `features.9`, `features.12`. Identity has no parameters, so the
  state_dict keys equal those of `squeezenet1_0`.
* complex bypass: the simple bypasses plus a 1x1 conv (with bias) on the bypass path around
  fire2, fire4, fire6, fire8 (`features.3`, `features.5`, `features.8`, `features.10`); its
  parameters are `features.N.bypass.{weight,bias}`.

Fire numbering follows the paper (fire2..fire9); `features` indices follow torchvision.
Initialisation follows torchvision (kaiming uniform for every conv, zero biases, normal with
std 0.01 for the final conv), made deterministic by a seed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import init

__all__ = [
    "Fire",
    "SqueezeNet",
    "FIRE_INDICES_1_0",
    "SIMPLE_BYPASS_FIRES",
    "COMPLEX_BYPASS_FIRES",
    "build",
    "build_from_fires",
]

# Paper fire number -> index in `features` (version 1.0).
FIRE_INDICES_1_0 = {2: 3, 3: 4, 4: 5, 5: 7, 6: 8, 7: 9, 8: 10, 9: 12}
SIMPLE_BYPASS_FIRES = (3, 5, 7, 9)
COMPLEX_BYPASS_FIRES = (2, 4, 6, 8)


def init_weights(model: nn.Module, final_conv: nn.Conv2d) -> None:
    """torchvision's SqueezeNet init: kaiming uniform convs, zero biases, N(0, 0.01) classifier."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if m is final_conv:
                init.normal_(m.weight, mean=0.0, std=0.01)
            else:
                init.kaiming_uniform_(m.weight)
            if m.bias is not None:
                init.constant_(m.bias, 0)


class Fire(nn.Module):
    """torchvision's Fire module, with an optional bypass (`None`, `"identity"`, `"conv"`)."""

    def __init__(
        self,
        inplanes: int,
        squeeze_planes: int,
        expand1x1_planes: int,
        expand3x3_planes: int,
        bypass: str | None = None,
    ) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)
        out = expand1x1_planes + expand3x3_planes
        self.bypass_kind = bypass
        if bypass is None:
            self.bypass = None
        elif bypass == "identity":
            if inplanes != out:
                raise ValueError(f"identity bypass needs in == out channels, got {inplanes} -> {out}")
            self.bypass = nn.Identity()
        elif bypass == "conv":
            self.bypass = nn.Conv2d(inplanes, out, kernel_size=1)
        else:
            raise ValueError(f"unknown bypass kind {bypass!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze_activation(self.squeeze(x))
        y = torch.cat(
            [self.expand1x1_activation(self.expand1x1(s)), self.expand3x3_activation(self.expand3x3(s))],
            1,
        )
        if self.bypass is not None:
            y = y + self.bypass(x)
        return y


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet; `bypass` in {None, "simple", "complex"} (version 1.0 only)."""

    def __init__(
        self,
        version: str = "1_0",
        num_classes: int = 1000,
        dropout: float = 0.5,
        bypass: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        if bypass not in (None, "simple", "complex"):
            raise ValueError(f"unknown bypass {bypass!r}")
        if bypass is not None and version != "1_0":
            raise ValueError("bypass variants are defined for SqueezeNet 1.0 only")

        def kind(fire: int) -> str | None:
            if bypass is None:
                return None
            if fire in SIMPLE_BYPASS_FIRES:
                return "identity"
            if bypass == "complex" and fire in COMPLEX_BYPASS_FIRES:
                return "conv"
            return None

        if version == "1_0":
            self.features = nn.Sequential(
                nn.Conv2d(3, 96, kernel_size=7, stride=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
                Fire(96, 16, 64, 64, kind(2)),
                Fire(128, 16, 64, 64, kind(3)),
                Fire(128, 32, 128, 128, kind(4)),
                nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
                Fire(256, 32, 128, 128, kind(5)),
                Fire(256, 48, 192, 192, kind(6)),
                Fire(384, 48, 192, 192, kind(7)),
                Fire(384, 64, 256, 256, kind(8)),
                nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
                Fire(512, 64, 256, 256, kind(9)),
            )
        elif version == "1_1":
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, kernel_size=3, stride=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
                Fire(64, 16, 64, 64),
                Fire(128, 16, 64, 64),
                nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
                Fire(128, 32, 128, 128),
                Fire(256, 32, 128, 128),
                nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
                Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256),
                Fire(512, 64, 256, 256),
            )
        else:
            raise ValueError(f"unsupported SqueezeNet version {version!r}: 1_0 or 1_1 expected")

        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            final_conv,
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        init_weights(self, final_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.classifier(x)
        return torch.flatten(x, 1)


def build(version: str = "1_0", bypass: str | None = None, seed: int = 0) -> SqueezeNet:
    """A SqueezeNet in eval mode whose initial weights depend only on `seed`.

    Uses a private `torch.Generator` state (the global RNG is saved and restored), so the
    result does not depend on, and does not disturb, other random draws in the process.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SqueezeNet(version=version, bypass=bypass)
    return model.eval()


class DesignSqueezeNet(nn.Module):
    """SqueezeNet 1.0's macro-architecture with any Fire modules (the paper's design space):
    conv 7x7/2 -> 96, max-pool, fire2-4, max-pool, fire5-8, max-pool, fire9, 1x1 classifier."""

    def __init__(self, fires: list[tuple[int, int, int]], num_classes: int = 1000) -> None:
        super().__init__()
        if len(fires) != 8:
            raise ValueError(f"SqueezeNet has 8 Fire modules, got {len(fires)}")
        layers: list[nn.Module] = [
            nn.Conv2d(3, 96, kernel_size=7, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        ]
        cin = 96
        for i, (s, e1, e3) in enumerate(fires):
            layers.append(Fire(cin, s, e1, e3))
            cin = e1 + e3
            if i in (2, 6):  # after fire4 and fire8
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        final_conv = nn.Conv2d(cin, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.5), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
        init_weights(self, final_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def build_from_fires(fires: list[tuple[int, int, int]], seed: int = 0) -> DesignSqueezeNet:
    """A design-space SqueezeNet (eval mode) whose weights depend only on `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DesignSqueezeNet(fires)
    return model.eval()
