"""Lower a channel-blocked (NCHW[x]c) Relax model to the CPU kernels: the x86 layout pipeline.

Why: a CPU convolution in plain NCHW reads one input channel plane at a time and cannot keep a
vector register of output channels busy; in NCHW[x]c, with x the target's fp32 vector width (16
lanes on AVX-512, 8 on AVX2), the innermost axis of every activation and of every weight tile
(OIHW[x]i[y]o) is one vector: each multiply-add broadcasts one input value against x output
channels. This is ONNX Runtime's NCHWc transformer and TVM's NeoCPU design.

`blocked_layout_passes(block)` = the classifier padding (`passes.pad_classes`), Relax's
`ConvertLayout` with the blocked layout of every conv (`passes.layout`), then `LegalizeOps` with
this backend's kernels for the blocked convs: Winograd F(m, 3) (`winograd`) for 3x3 stride-1
convs on large maps, the blocked direct conv (`direct`) for the rest.
"""

from __future__ import annotations

import re

_BLOCKED = re.compile(r"^NCHW(\d+)c$")


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
    return (
        tile > 0
        and size >= min_size
        and len(kernel) == 6
        and kernel[2:4] == [3, 3]
        and kernel[4] > 1
        and all(int(v) == 1 for v in attrs.strides)
        and all(int(v) == 1 for v in attrs.dilation)
        and all(int(v) <= 1 for v in attrs.padding)
    )


def _int8_conv(bb, call, dot: str | None):
    """A blocked uint8 x int8 conv -> the tensorized int8 kernel (`int8.conv2d_nchwc_int8`) when
    the target names a dot-product flavour for its output block, else None. The weight packing
    is its own call on the constant weights (FoldConstant evaluates it at compile time); a
    first conv with fewer than 4 input lanes gets its data regrouped by a small kernel."""
    from .int8 import DOT_FLAVOURS, SIGNED_BLOCKS, conv2d_nchwc_int8, pack_data, pack_weight, weight_compensation

    attrs = call.attrs
    data_shape = [int(d) for d in call.args[0].ty.shape]
    kernel_shape = [int(d) for d in call.args[1].ty.shape]
    block = DOT_FLAVOURS.get(dot or "", {}).get(kernel_shape[5])
    if block is None or len(data_shape) != 5:
        return None
    data = call.args[0]
    if data_shape[4] % 4:
        data = bb.emit_te(pack_data, data, primfunc_name_hint="int8_data_pack")
    packed = bb.emit_te(pack_weight, call.args[1], primfunc_name_hint="int8_weight_pack")
    compensation = None
    if block in SIGNED_BLOCKS:  # a constant too (FoldConstant)
        compensation = bb.emit_te(weight_compensation, packed, primfunc_name_hint="int8_weight_sum")
    return bb.call_te(
        conv2d_nchwc_int8,
        data,
        packed,
        attrs.strides,
        attrs.padding,
        attrs.dilation,
        block,
        compensation,
        primfunc_name_hint=block,
    )


def _legalizer(winograd: int, min_size: int = 0, int8_dot: str | None = None):
    """conv2d legalization: blocked 3x3 stride-1 convs -> Winograd F(`winograd`, 3) when the
    target asks for it (the weight transform is its own call on the constant weights, which
    FoldConstant evaluates at compile time), blocked uint8 x int8 convs -> the `int8_dot`
    tensorized kernel, other blocked convs -> `conv2d_nchwc`, every other conv2d -> TVM's own
    legalization."""

    def legalize(bb, call):
        from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

        from .direct import conv2d_nchwc
        from .winograd import conv2d_nchwc_winograd, weight_transform

        attrs = call.attrs
        if not (_BLOCKED.match(attrs.data_layout) and _BLOCKED.match(attrs.out_layout)) or attrs.groups != 1:
            return _nn_conv2d(bb, call)
        if str(call.args[0].ty.dtype) == "uint8" and str(call.args[1].ty.dtype) == "int8":
            lowered = _int8_conv(bb, call, int8_dot)
            return _nn_conv2d(bb, call) if lowered is None else lowered
        if winograd_applies(call, winograd, min_size):
            packed = bb.emit_te(weight_transform, call.args[1], winograd, primfunc_name_hint="winograd_weight")
            return bb.call_te(
                conv2d_nchwc_winograd,
                call.args[0],
                packed,
                attrs.padding,
                winograd,
                primfunc_name_hint="conv2d_nchwc_winograd",
            )
        return bb.call_te(
            conv2d_nchwc,
            call.args[0],
            call.args[1],
            attrs.strides,
            attrs.padding,
            attrs.dilation,
            primfunc_name_hint="conv2d_nchwc",
        )

    return legalize


def blocked_layout_passes(
    block: int, winograd: int = 0, classifier_pad: int = 0, winograd_min_size: int = 0, int8_dot: str | None = None
) -> list:
    """Passes that convert a model to NCHW[block]c and legalize its blocked convolutions
    (3x3 stride-1 ones on maps of at least `winograd_min_size` as Winograd F(`winograd`, 3)
    when `winograd` is 2 or 4); with
    `classifier_pad`, a classifier whose outputs the block does not divide is first padded to a
    multiple of it (`tvmsqz.passes.pad_classes`: 1000 -> 1024, so it is blocked like every other conv);
    a bypass added to a Fire concat is pushed into the expand convs' epilogues (`passes.bypass`);
    `int8_dot` (target data `int8.dot`) names the dot-product kernels of uint8 x int8 convs."""
    from tvm import relax

    from ....passes.bypass import push_bypass_through_concat
    from ....passes.layout import blocked_layout_of
    from ....passes.pad_classes import PadClassifier

    return [
        *([PadClassifier(classifier_pad, block)] if classifier_pad else []),
        relax.transform.ConvertLayout({}, layout_cb=blocked_layout_of(block)),
        relax.transform.CanonicalizeBindings(),
        # in blocks, so each slice of a bypass is whole channel blocks (concat_free views them)
        push_bypass_through_concat(),
        relax.transform.LegalizeOps(
            customize_legalize_map={"relax.nn.conv2d": _legalizer(winograd, winograd_min_size, int8_dot)}
        ),
    ]
