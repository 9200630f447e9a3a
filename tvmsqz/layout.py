"""Channel-blocked layout (NCHW[x]c) through the whole graph, and its direct-convolution compute.

Why: a CPU convolution in plain NCHW reads one input channel plane at a time and cannot keep a
vector register of output channels busy; in NCHW[x]c, with x the target's fp32 vector width (16
lanes on AVX-512, 8 on AVX2), the innermost axis of every activation and of every weight tile
(OIHW[x]i[y]o) is one vector: each multiply-add broadcasts one input value against x output
channels. This is ONNX Runtime's NCHWc transformer and TVM's NeoCPU design.

`blocked_layout_passes(block)` returns the passes that put a model in that layout:

* Relax's `ConvertLayout` rewrites every `conv2d` whose channels divide by the block to
  NCHW[x]c / OIHW[x]i[x]o and propagates the layout through ReLU, max-pool and concat (a concat
  of channel blocks); layout transforms remain only where a conv cannot be blocked (the first
  conv, 3 input channels; the classifier, 1000 outputs), at the model input and output, and on
  the constant weights, which `FoldConstant` packs at compile time.
* `LegalizeOps` with `conv2d_nchwc` for the blocked convs (TVM's default legalization leaves
  them alone): a plain direct convolution whose reduction block is named `conv2d_nchwc`, so the
  schedule space in `tvmsqz.conv_space` can find it in every fused kernel.
"""

from __future__ import annotations

import re

#: Name of the reduction block of a blocked convolution (the schedule rule looks for it).
CONV_BLOCK = "conv2d_nchwc"
_BLOCKED = re.compile(r"^NCHW(\d+)c$")


#: A register tile needs a divisor of the output width; widths whose best divisor (up to the
#: accumulator budget) is below this get computed over a wider, padded row and cropped.
MIN_WIDTH_TILE = 3
WIDTH_PAD_MULTIPLE = 8


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of `n` not above `limit` (a register tile without a tail loop)."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def padded_width(out_w: int) -> int:
    """Output width the conv computes: `out_w`, or the next multiple of 8 when `out_w` has no
    divisor from 3 to 24 (SqueezeNet 1.0's 109-wide conv1, a prime: a 1-column register tile
    ran it at 170 GFLOP/s against 228 for the other convs)."""
    from .conv_space import MAX_ACCUMULATORS  # the direct conv's register budget (conv_space imports this module)

    if largest_divisor(out_w, MAX_ACCUMULATORS) >= MIN_WIDTH_TILE:
        return out_w
    return -(-out_w // WIDTH_PAD_MULTIPLE) * WIDTH_PAD_MULTIPLE


def conv2d_nchwc(data, kernel, strides, padding, dilation):
    """TE direct convolution: data (N, C/ib, H, W, ib), kernel (K/ob, C/ib, R, S, ib, ob).

    Where the output width has no usable divisor (`padded_width`), the conv runs over a padded
    width (zeros read past the right edge) and a crop, which the epilogue absorbs, returns the
    real width."""
    from tvm import te, tirx as tir

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
                tir.all(y >= pad_t, y < h + pad_t, x >= pad_l, x < w + pad_l),
                data[b, c, y - pad_t, x - pad_l, i], zero),
            name="data_pad")
    else:
        padded = data
    ic = te.reduce_axis((0, c_chunks * ib), "ic")
    kh = te.reduce_axis((0, r), "kh")
    kw = te.reduce_axis((0, s), "kw")
    conv = te.compute(
        (n, k_chunks, out_h, wide, ob),
        lambda b, oc, y, x, o: te.sum(
            padded[b, ic // ib, y * stride_h + kh * dil_h, x * stride_w + kw * dil_w, ic % ib]
            * kernel[oc, ic // ib, kh, kw, ic % ib, o], axis=[ic, kh, kw]),
        name=CONV_BLOCK)
    if wide == out_w:
        return conv
    return te.compute((n, k_chunks, out_h, out_w, ob), lambda *i: conv(*i), name="conv2d_nchwc_crop")


def winograd_applies(call, tile: int, min_size: int = 0) -> bool:
    """Whether a blocked conv2d call takes the Winograd F(tile, 3) path: a 3x3 kernel, stride 1,
    no dilation, padding of at most one pixel, blocked input channels (not the first conv), and
    an input of at least `min_size` x `min_size`.

    Why a size floor: Winograd's weights are (tile+2)^2 / 9 = 4x the direct ones for F(4,3),
    and the multiplies it saves per extra weight byte grow with the image area alone (both scale
    with in x out channels). On 13x13 maps it saves least (partial tiles) for the largest weights
    (the last Fire modules): there the direct kernel keeps a device's memory low."""
    attrs = call.attrs
    kernel = [int(d) for d in call.args[1].ty.shape]
    shape = call.args[0].ty.shape
    size = min(int(shape[2]), int(shape[3]))
    return (tile > 0 and size >= min_size and len(kernel) == 6 and kernel[2:4] == [3, 3] and kernel[4] > 1
            and all(int(v) == 1 for v in attrs.strides) and all(int(v) == 1 for v in attrs.dilation)
            and all(int(v) <= 1 for v in attrs.padding))


def _legalizer(winograd: int, min_size: int = 0):
    """conv2d legalization: blocked 3x3 stride-1 convs -> Winograd F(`winograd`, 3) when the
    target asks for it (the weight transform is its own call on the constant weights, which
    FoldConstant evaluates at compile time), other blocked convs -> `conv2d_nchwc`, every other
    conv2d -> TVM's own legalization."""
    def legalize(bb, call):
        from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

        from .winograd import conv2d_nchwc_winograd, weight_transform

        attrs = call.attrs
        if not (_BLOCKED.match(attrs.data_layout) and _BLOCKED.match(attrs.out_layout)) or attrs.groups != 1:
            return _nn_conv2d(bb, call)
        if winograd_applies(call, winograd, min_size):
            packed = bb.emit_te(weight_transform, call.args[1], winograd, primfunc_name_hint="winograd_weight")
            return bb.call_te(conv2d_nchwc_winograd, call.args[0], packed, attrs.padding, winograd,
                              primfunc_name_hint="conv2d_nchwc_winograd")
        return bb.call_te(conv2d_nchwc, call.args[0], call.args[1], attrs.strides, attrs.padding, attrs.dilation,
                          primfunc_name_hint="conv2d_nchwc")

    return legalize


def conv_layouts(in_channels: int, out_channels: int, block: int) -> list[str]:
    """[data, kernel, output] layouts of one conv in a model blocked by `block` lanes.

    Channels that divide by the block are blocked on both sides. The first conv's 3 input
    channels stay unblocked (NCHW1c: a free reshape of the NCHW input), its output blocked, so
    the layout changes once, inside the conv. A channel count that does not divide by the block
    (the 1000-class classifier, a model with 8 or 24 channels) takes the largest block of at
    least 4 lanes that divides it (8 for 1000) instead of padding 1000 to 1008.
    """
    def largest(channels: int) -> int:
        return next((b for b in (block, block // 2, block // 4) if b >= 4 and channels % b == 0), 1)

    ib, ob = largest(in_channels), largest(out_channels)
    if ob == 1 or (ib == 1 and in_channels > 4):  # odd channel counts mid-graph: leave this conv NCHW
        return ["NCHW", "OIHW", "NCHW"]
    return [f"NCHW{ib}c", f"OIHW{ib}i{ob}o", f"NCHW{ob}c"]


def blocked_layout_passes(block: int, winograd: int = 0, classifier_pad: int = 0, winograd_min_size: int = 0) -> list:
    """Passes that convert a model to NCHW[block]c and legalize its blocked convolutions
    (3x3 stride-1 ones on maps of at least `winograd_min_size` as Winograd F(`winograd`, 3)
    when `winograd` is 2 or 4); with
    `classifier_pad`, a classifier whose outputs the block does not divide is first padded to a
    multiple of it (`tvmsqz.pad_classes`: 1000 -> 1024, so it is blocked like every other conv)."""
    from tvm import relax

    from .pad_classes import PadClassifier

    def layout_of(call) -> dict:
        if getattr(call.op, "name", "") != "relax.nn.conv2d":
            return {"relax.nn.conv2d": [f"NCHW{block}c", f"OIHW{block}i{block}o"]}
        data, weight = call.args[0].ty, call.args[1].ty
        return {"relax.nn.conv2d": conv_layouts(int(data.shape[1]), int(weight.shape[0]), block)}

    return [
        *([PadClassifier(classifier_pad, block)] if classifier_pad else []),
        relax.transform.ConvertLayout({}, layout_cb=layout_of),
        relax.transform.CanonicalizeBindings(),
        relax.transform.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": _legalizer(winograd, winograd_min_size)}),
    ]


def nhwc_layout_passes() -> list:
    """Passes that run every conv2d in NHWC / HWIO (channels innermost, unblocked): the third
    layout of the per-conv layout study (`benchmarks/layout_study.py`); TVM's own legalization
    and MetaSchedule's generic space schedule it."""
    from tvm import relax

    return [relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}),
            relax.transform.CanonicalizeBindings()]
