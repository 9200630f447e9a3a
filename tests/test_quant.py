"""The backend-independent quantiser (`tvmsqz.quant`): power-of-two scales, zero points, the
rounding every backend reproduces, and the bias-correction arithmetic."""

from __future__ import annotations

import numpy as np

from tvmsqz.quant import (
    calibration_inputs,
    choose_exponent,
    conv_mean_error,
    corrected_bias,
    dequantize_np,
    mean_patch,
    quantize_np,
    weight_exponents,
    zero_point,
)


def test_quantize_rounds_half_up_and_clips():
    x = np.array([[-2.0, -0.26, 0.24, 0.25, 100.0]], np.float32).reshape(1, 5, 1, 1)
    q = quantize_np(x, 2)  # step 1/4
    assert q.dtype == np.int8 and q.ravel().tolist() == [-8, -1, 1, 1, 127]
    assert np.allclose(dequantize_np(q, 2).ravel(), [-2.0, -0.25, 0.25, 0.25, 31.75])
    z = np.array([3, -3, 0, 0, 0])
    assert np.array_equal(dequantize_np(quantize_np(x, 2, z), 2, z)[:, :4], dequantize_np(q, 2)[:, :4])


def test_exponent_search_and_zero_points():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 10_000)
    # no clipping needs 2**6 codes per unit; 2**7 clips only (127/128, 1]: less error in all
    assert choose_exponent(x, float(np.abs(x).max())) == 7
    assert choose_exponent(np.abs(x), 1.0, 0, 255) == 8  # codes 0..255 (a zero point of -128): one bit more
    assert choose_exponent(np.zeros(4), 0.0) == 0
    assert zero_point(np.array([0.5, -1.0]), 3).tolist() == [-4, 8]
    e = weight_exponents(np.array([1.0, 0.5, 0.0]), np.zeros(3), 0)
    assert e.tolist() == [6, 7, 6]  # per channel; an all-zero filter takes the layer's
    assert weight_exponents(np.array([1.0, 0.5]), np.zeros(2), 0, per_channel=False).tolist() == [6, 6]


def test_conv_mean_error_is_the_mean_output_difference():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 9, 9))
    w = rng.standard_normal((4, 3, 3, 3))
    xq, wq = np.round(x * 8) / 8, np.round(w * 8) / 8

    def conv_mean(x, w, s=2, p=1):
        xp = np.pad(x[0], ((0, 0), (p, p), (p, p)))
        ho = (xp.shape[1] - 3) // s + 1
        out = np.zeros((w.shape[0], ho, ho))
        for i in range(ho):
            for j in range(ho):
                out[:, i, j] = np.einsum("oikl,ikl->o", w, xp[:, i * s : i * s + 3, j * s : j * s + 3])
        return out.mean(axis=(1, 2))

    assert mean_patch(x, 3, 2, 1).shape == (3, 3, 3)
    assert np.allclose(conv_mean_error(wq, w, xq, x, 2, 1), conv_mean(xq, wq) - conv_mean(x, w))
    assert corrected_bias(np.array([100, -100]), np.array([0.25, -0.5]), 4).tolist() == [96, -92]


def test_calibration_inputs_take_photos_and_arrays():
    photo = np.zeros((32, 32, 3), np.uint8)
    arr = np.ones((1, 3, 16, 16), np.float32)
    out = calibration_inputs([("a", photo), arr], "torchvision", 16)
    assert [o.shape for o in out] == [(1, 3, 16, 16)] * 2 and out[1].sum() == arr.sum()
