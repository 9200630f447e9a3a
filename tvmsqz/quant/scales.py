"""Power-of-two int8 scales: value = (q - z) * 2**-a, `a` the exponent, `z` an integer zero point.

Activations: per tensor, the exponent that minimises the mean squared quantisation error over
calibration samples, searched between "no clipping" and 4 bits finer (so outliers may clip).
Weights: one exponent per output channel (or one for all), lowered where the integer bias would
not fit int32. The host-side rounding is q = clip(floor(x * 2**a + 0.5) + z, -128, 127), done
in float32 in this order by numpy here and by every backend's generated code.
"""

from __future__ import annotations

import math

import numpy as np


def _per_channel(z, ndim: int):
    """Zero points (C,) shaped to broadcast over an NCHW tensor; 0 when there are none."""
    return np.float32(0) if z is None else np.asarray(z, np.float32).reshape((1, -1) + (1,) * (ndim - 2))


def quantize_np(x: np.ndarray, a: int, z=None) -> np.ndarray:
    """clip(floor(x * 2**a + 0.5) + z, -128, 127) as int8 (`z`: integer zero point per channel);
    generated host code must do the same float32 operations in the same order."""
    x = x.astype(np.float32)
    return np.clip(np.floor(x * np.float32(2.0**a) + np.float32(0.5)) + _per_channel(z, x.ndim), -128, 127).astype(
        np.int8
    )


def dequantize_np(q: np.ndarray, a: int, z=None) -> np.ndarray:
    """(q - z) * 2**-a in float32: the inverse of `quantize_np` on the codes."""
    return (q.astype(np.float32) - _per_channel(z, q.ndim)) * np.float32(2.0**-a)


def _best_exponent(amax: float, error, hi: int = 127) -> int:
    """The exponent in [no clipping, 4 bits finer] with the least `error(a)`; the coarsest wins ties."""
    if amax <= 0:
        return 0
    a0 = math.floor(math.log2(hi / amax))
    return min(range(a0, a0 + 5), key=lambda a: (error(a), a))


def choose_exponent(samples: np.ndarray, amax: float, lo: int = -128, hi: int = 127) -> int:
    """MSE-optimal exponent for codes in [lo, hi] ([0, 255]: a ReLU output stored with zero
    point -128)."""

    def error(a):
        q = np.clip(np.floor(samples * 2.0**a + 0.5), lo, hi) * 2.0**-a
        return float(np.mean((q - samples) ** 2))

    return _best_exponent(amax, error, hi)


def zero_point(mid: np.ndarray, a: int) -> np.ndarray:
    """Integer per-channel zero points that centre each channel's range [lo, hi] (mid = its
    middle) in int8 at exponent `a` (floor(m + 0.5): a half-integer middle, as for integer
    pixel values, maps [lo, hi] onto exactly [-128, 127])."""
    return np.clip(-np.floor(mid * 2.0**a + 0.5), -128, 127).astype(np.int64)


def choose_exponent_zp(samples: np.ndarray, chans: np.ndarray, mid: np.ndarray) -> int:
    """`choose_exponent` for a tensor with zero points: the error of each exponent is measured
    with its own integer zero points (rounding the zero point is part of the error)."""

    def error(a):
        z = zero_point(mid, a)[chans]
        q = (np.clip(np.floor(samples * 2.0**a + 0.5) + z, -128, 127) - z) * 2.0**-a
        return float(np.mean((q - samples) ** 2))

    return _best_exponent(float(np.abs(samples - mid[chans]).max()), error)


def weight_exponents(amax: np.ndarray, bias: np.ndarray, a_in: int, per_channel: bool = True) -> np.ndarray:
    """Power-of-two weight exponents, one per output channel (`amax`: each filter's largest
    |weight|), or one for all of them.

    Per channel, each filter uses the int8 range by itself: on the Deep Compression model that
    is 4-15 dB more weight SQNR than one exponent per layer (the classifier: 30 -> 40 dB). An
    all-zero filter gets the layer's exponent; an exponent is lowered where the bias (scale
    2**-(a_in + e)) would not fit int32."""
    top = float(amax.max())
    layer_e = math.floor(math.log2(127.0 / top)) if top > 0 else 0
    if not per_channel:
        return np.full(len(amax), layer_e, dtype=np.int64)
    safe = np.where(amax > 0, amax, top if top > 0 else 1.0)
    e = np.floor(np.log2(127.0 / safe)).astype(np.int64)
    limit = np.abs(bias) * 2.0 ** (a_in + e)
    while (limit >= 2**30).any():
        e = np.where(limit >= 2**30, e - 1, e)
        limit = np.abs(bias) * 2.0 ** (a_in + e)
    return e
