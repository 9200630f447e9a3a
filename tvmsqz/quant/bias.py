"""Empirical bias correction (Nagel et al. 2019), the numeric core.

Rounding and clipping errors do not average out to zero per output channel, and they add up
through the layers. With the exponents fixed, a quantised convolution's integer bias absorbs the
mean difference, per output channel, between its pre-activation on the quantised input with the
quantised weights and the fp32 pre-activation on the fp32 input. The mean over output pixels of
a convolution is linear in the mean input window (`mean_patch`), so the error costs one small
contraction per image instead of a convolution. Only bias values change.

The backend runs its quantised network layer by layer over the calibration inputs (so each
layer sees its quantised predecessors' real outputs) and calls these per layer.
"""

from __future__ import annotations

import numpy as np


def mean_patch(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """(C, k, k) float64: the mean, over a convolution's output pixels, of each input window
    (zero padded), so that mean(conv(x, w)) = sum(w * mean_patch(x)) per output channel."""
    x = np.asarray(x, np.float64)[0]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    out = np.empty((x.shape[0], k, k))
    for ky in range(k):
        for kx in range(k):
            out[:, ky, kx] = xp[
                :, ky : ky + stride * (ho - 1) + 1 : stride, kx : kx + stride * (wo - 1) + 1 : stride
            ].mean(axis=(1, 2))
    return out


def conv_mean_error(
    w_quant: np.ndarray, w_fp32: np.ndarray, x_quant: np.ndarray, x_fp32: np.ndarray, stride: int, pad: int
) -> np.ndarray:
    """(O,) float64: mean over output pixels of conv(x_quant, w_quant) - conv(x_fp32, w_fp32),
    bias excluded, for one (1, C, H, W) input; `w_quant`/`x_quant` are the dequantised values."""
    k = w_quant.shape[2]
    return np.einsum("oikl,ikl->o", w_quant, mean_patch(x_quant, k, stride, pad)) - np.einsum(
        "oikl,ikl->o", w_fp32, mean_patch(x_fp32, k, stride, pad)
    )


def corrected_bias(bias: np.ndarray, delta: np.ndarray, exponent) -> np.ndarray:
    """int64: `bias` (integer, scale 2**-exponent, per channel or one) minus the mean error
    `delta` (float, (O,)) in the bias's units, rounded."""
    return np.asarray(bias).astype(np.int64) - np.round(delta * 2.0 ** np.asarray(exponent)).astype(np.int64)
