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


def conv2d_nchwc(data, kernel, strides, padding, dilation):
    """TE direct convolution: data (N, C/ib, H, W, ib), kernel (K/ob, C/ib, R, S, ib, ob)."""
    from tvm import te, tirx as tir

    n, c_chunks, h, w, ib = (int(d) for d in data.shape)
    k_chunks, _, r, s, _, ob = (int(d) for d in kernel.shape)
    stride_h, stride_w = (int(v) for v in strides)
    dil_h, dil_w = (int(v) for v in dilation)
    pad_t, pad_l, pad_b, pad_r = (int(v) for v in padding)
    out_h = (h + pad_t + pad_b - (r - 1) * dil_h - 1) // stride_h + 1
    out_w = (w + pad_l + pad_r - (s - 1) * dil_w - 1) // stride_w + 1
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
    return te.compute(
        (n, k_chunks, out_h, out_w, ob),
        lambda b, oc, y, x, o: te.sum(
            padded[b, ic // ib, y * stride_h + kh * dil_h, x * stride_w + kw * dil_w, ic % ib]
            * kernel[oc, ic // ib, kh, kw, ic % ib, o], axis=[ic, kh, kw]),
        name=CONV_BLOCK)


def _legalize_conv2d(bb, call):
    """Blocked conv2d -> `conv2d_nchwc`; every other conv2d -> TVM's own legalization."""
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    attrs = call.attrs
    if not (_BLOCKED.match(attrs.data_layout) and _BLOCKED.match(attrs.out_layout)) or attrs.groups != 1:
        return _nn_conv2d(bb, call)
    return bb.call_te(conv2d_nchwc, call.args[0], call.args[1], attrs.strides, attrs.padding, attrs.dilation,
                      primfunc_name_hint="conv2d_nchwc")


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


def blocked_layout_passes(block: int) -> list:
    """Passes that convert a model to NCHW[block]c and legalize its blocked convolutions."""
    from tvm import relax

    def layout_of(call) -> dict:
        if getattr(call.op, "name", "") != "relax.nn.conv2d":
            return {"relax.nn.conv2d": [f"NCHW{block}c", f"OIHW{block}i{block}o"]}
        data, weight = call.args[0].ty, call.args[1].ty
        return {"relax.nn.conv2d": conv_layouts(int(data.shape[1]), int(weight.shape[0]), block)}

    return [
        relax.transform.ConvertLayout({}, layout_cb=layout_of),
        relax.transform.CanonicalizeBindings(),
        relax.transform.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": _legalize_conv2d}),
    ]
