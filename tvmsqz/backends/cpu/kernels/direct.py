"""Blocked direct convolution NCHW[x]c (TE compute): what `legalize` lowers a blocked conv2d to.

Why a compute of our own: TVM's default legalization leaves NCHW[x]c convs alone; this is a plain
direct convolution whose reduction block is named `CONV_BLOCK`, so the schedule space in
`direct_space` can find it in every fused kernel.
"""

from __future__ import annotations

from .constants import CONV_BLOCK, padded_width


def conv2d_nchwc(data, kernel, strides, padding, dilation):
    """TE direct convolution: data (N, C/ib, H, W, ib), kernel (K/ob, C/ib, R, S, ib, ob).

    Where the output width has no usable divisor (`padded_width`), the conv runs over a padded
    width (zeros read past the right edge) and a crop, which the epilogue absorbs, returns the
    real width."""
    from tvm import te
    from tvm import tirx as tir

    n, c_chunks, h, w, ib = (int(d) for d in data.shape)
    k_chunks, _, r, s, _, ob = (int(d) for d in kernel.shape)
    stride_h, stride_w = (int(v) for v in strides)
    dil_h, dil_w = (int(v) for v in dilation)
    pad_t, pad_l, pad_b, pad_r = (int(v) for v in padding)
    out_h = (h + pad_t + pad_b - (r - 1) * dil_h - 1) // stride_h + 1
    out_w = (w + pad_l + pad_r - (s - 1) * dil_w - 1) // stride_w + 1
    wide = padded_width(out_w)
    pad_r += (wide - out_w) * stride_w
    if pad_t or pad_l or pad_b or pad_r:
        zero = tir.const(0.0, data.dtype)
        padded = te.compute(
            (n, c_chunks, h + pad_t + pad_b, w + pad_l + pad_r, ib),
            lambda b, c, y, x, i: tir.if_then_else(
                tir.all(y >= pad_t, y < h + pad_t, x >= pad_l, x < w + pad_l), data[b, c, y - pad_t, x - pad_l, i], zero
            ),
            name="data_pad",
        )
    else:
        padded = data
    ic = te.reduce_axis((0, c_chunks * ib), "ic")
    kh = te.reduce_axis((0, r), "kh")
    kw = te.reduce_axis((0, s), "kw")
    conv = te.compute(
        (n, k_chunks, out_h, wide, ob),
        lambda b, oc, y, x, o: te.sum(
            padded[b, ic // ib, y * stride_h + kh * dil_h, x * stride_w + kw * dil_w, ic % ib]
            * kernel[oc, ic // ib, kh, kw, ic % ib, o],
            axis=[ic, kh, kw],
        ),
        name=CONV_BLOCK,
    )
    if wide == out_w:
        return conv
    return te.compute((n, k_chunks, out_h, out_w, ob), lambda *i: conv(*i), name="conv2d_nchwc_crop")
