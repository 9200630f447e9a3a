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


#: Activation range methods for uint8 (`activation_params`).
METHODS = ("mse", "minmax", "percentile", "entropy")


def _uint8_params(low: float, high: float) -> tuple[float, int]:
    """(scale, zero point) of uint8 codes covering [low, high] (which must hold 0)."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low <= 0:
        return 1.0, 0
    scale = (high - low) / 255.0
    zero = int(np.clip(round(-low / scale), 0, 255))
    return scale, zero


def _mse_clip(samples: np.ndarray, low: float, high: float) -> float:
    """The clipping fraction of [low, high] (from 1 down to 0.3) with the least uint8 MSE."""
    best = (float("inf"), 1.0)
    for frac in np.linspace(1.0, 0.3, 36):
        scale, zero = _uint8_params(low * frac, high * frac)
        q = (np.clip(np.round(samples / scale) + zero, 0, 255) - zero) * scale
        err = float(np.mean((q - samples) ** 2))
        if err < best[0]:
            best = (err, float(frac))
    return best[1]


def _entropy_clip(samples: np.ndarray, high: float, bins: int = 2048, levels: int = 256) -> float:
    """TensorRT's KL-divergence threshold on |x|'s 2048-bin histogram, as a fraction of `high`."""
    hist, _ = np.histogram(np.abs(samples), bins=bins, range=(0.0, high))
    hist = hist.astype(np.float64)
    hist[0] = 0.0  # exact zeros (a ReLU's mass) are representable at any threshold: they only skew KL
    best = (float("inf"), bins)
    for i in range(levels, bins + 1, 16):
        ref = hist[:i].copy()
        ref[i - 1] += hist[i:].sum()  # the clipped tail lands in the last bin
        chunks = np.array_split(hist[:i], levels)
        expanded = np.concatenate([np.where(c > 0, c.sum() / max(int((c > 0).sum()), 1), 0.0) for c in chunks])
        p, q = ref / max(ref.sum(), 1e-12), expanded / max(expanded.sum(), 1e-12)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-6))))
        if kl < best[0]:
            best = (kl, i)
    return best[1] / bins


def activation_params(samples: np.ndarray, method: str = "mse", *, nonnegative: bool) -> tuple[float, int]:
    """(scale, zero point) of uint8 codes for a tensor, from calibration `samples` of it.

    minmax: the observed range; percentile: the 99.99th percentile of |x| (of x when it is
    non-negative) as the range's end; mse: the clipped range with the least quantisation MSE on
    the samples; entropy: TensorRT's KL-divergence threshold. Non-negative tensors (ReLU outputs)
    get zero point 0: codes 0..255 span [0, max]; others an asymmetric range with their zero
    point."""
    from tvmsqz.errors import TvmsqzError

    if method not in METHODS:
        raise TvmsqzError(f"unknown calibration method {method!r}: expected one of {', '.join(METHODS)}")
    samples = np.asarray(samples, np.float32).reshape(-1)
    low = 0.0 if nonnegative else float(samples.min())
    high = float(samples.max())
    if method == "percentile":
        top = float(np.percentile(np.abs(samples) if not nonnegative else samples, 99.99))
        low, high = (0.0, top) if nonnegative else (max(low, -top), min(high, top))
    elif method == "mse":
        frac = _mse_clip(samples, low, high)
        low, high = low * frac, high * frac
    elif method == "entropy":
        top = max(abs(low), abs(high))
        if top > 0:
            frac = _entropy_clip(samples, top)
            low, high = max(low, -top * frac), min(high, top * frac)
    return _uint8_params(low, high)
