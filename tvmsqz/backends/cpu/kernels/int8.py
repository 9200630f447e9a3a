"""int8 direct convolution in NCHW[x]c, tensorized with the CPU's u8 x s8 dot product.

Why: VNNI's `vpdpbusd` does four uint8 x int8 multiply-adds per 32-bit lane where an fp32 FMA
does one. The layout is TVM's NeoCPU int8 one: activations uint8 NCHW[x]c (x = 16, the fp32
layout's block, so the int8 graph keeps the fp32 graph's layouts), weights packed
OIHW[x/4]i[y]o[4]i (y = 16 or 8 output lanes), so one dot instruction reads four consecutive
input channels of one pixel (one 32-bit broadcast) against y x 4 weights and adds into y int32
accumulators. The schedule is the fp32 direct schedule (`direct_space`) with the innermost
(output lane x 4 input channels) tile replaced by the dot-product intrinsic.

Intrinsics are the project's own (`tvmsqz.dot_intrin`): TVM 0.27's `dot_16x4_vnni` calls
`llvm.x86.avx512.vpdpbusd.512` with <16 x i32> operands, which the LLVM it ships (22) rejects
("Call parameter type does not match function signature": the operands are <64 x i8> now).
The names say which instruction the conv block uses (`DOT_BLOCKS`), chosen by the target data
(`int8.dot`) when the conv is legalized, so the schedule, and so MetaSchedule's replayed
traces, depend on the workload alone.
"""

from __future__ import annotations

from .constants import padded_width

#: Reduction block name -> (tensor intrinsic, output lanes) for each dot-product flavour. The
#: ARM ones are TVM's (`tvm.s_tir.tensor_intrin.arm_cpu`): `sdot` (Armv8.2 dot product:
#: Cortex-A55/A76) and a NEON `smull`/`sadalp` sequence (Cortex-A53/A72), both int8 x int8.
DOT_BLOCKS = {
    "conv2d_nchwc_vnni": ("tvmsqz_vnni_16x4", 16),
    "conv2d_nchwc_vnni8": ("tvmsqz_vnni_8x4", 8),
    "conv2d_nchwc_avx512bw": ("tvmsqz_avx512bw_16x4", 16),
    "conv2d_nchwc_avx2": ("tvmsqz_avx2_8x4", 8),
    "conv2d_nchwc_sdot": ("dot_4x4_i8i8s32_sdot", 4),
    "conv2d_nchwc_neon": ("dot_4x4_i8i8s32_neon", 4),
}

#: Blocks whose instruction multiplies int8 x int8: the uint8 activation codes are shifted
#: to int8 (x - 128) as they are read, and 128 x each output channel's weight sum is added back
#: (`weight_compensation`, a constant), so the accumulator is the uint8 x int8 one.
SIGNED_BLOCKS = frozenset({"conv2d_nchwc_sdot", "conv2d_nchwc_neon"})

#: Target data `int8.dot` -> the block name for 16-lane and for 8-lane output blocks.
DOT_FLAVOURS = {
    "vnni": {16: "conv2d_nchwc_vnni", 8: "conv2d_nchwc_vnni8"},
    "avx512bw": {16: "conv2d_nchwc_avx512bw", 8: "conv2d_nchwc_avx2"},
    "avx2": {8: "conv2d_nchwc_avx2"},
    "sdot": {4: "conv2d_nchwc_sdot"},
    "neon": {4: "conv2d_nchwc_neon"},
}


def pack_weight(kernel):
    """(K/y, C/x, R, S, x, y) int8 -> (K/y, ceil(x/4)*C/x ..., R, S, x'/4, y, 4): the dot layout.

    Input channel blocks of fewer than 4 lanes (the first conv's NCHW1c) are regrouped into one
    block of the channels rounded up to 4, zero filled (`pack_data` does the same to the data)."""
    from tvm import te
    from tvm import tirx as tir

    k_chunks, c_chunks, r, s, ib, ob = (int(d) for d in kernel.shape)
    if ib % 4 == 0:
        return te.compute(
            (k_chunks, c_chunks, r, s, ib // 4, ob, 4),
            lambda o, c, y, x, m, j, i: kernel[o, c, y, x, m * 4 + i, j],
            name="int8_weight_pack",
        )
    channels = c_chunks * ib
    lanes = -(-channels // 4) * 4
    return te.compute(
        (k_chunks, 1, r, s, lanes // 4, ob, 4),
        lambda o, c, y, x, m, j, i: tir.if_then_else(
            m * 4 + i < channels,
            kernel[o, (m * 4 + i) // ib, y, x, (m * 4 + i) % ib, j],
            tir.const(0, kernel.dtype),
        ),
        name="int8_weight_pack",
    )


def pack_data(data):
    """(N, C/x, H, W, x) uint8 with x < 4 (the first conv) -> (N, 1, H, W, C rounded up to 4)."""
    from tvm import te
    from tvm import tirx as tir

    n, c_chunks, h, w, ib = (int(d) for d in data.shape)
    channels = c_chunks * ib
    lanes = -(-channels // 4) * 4
    return te.compute(
        (n, 1, h, w, lanes),
        lambda b, c, y, x, i: tir.if_then_else(i < channels, data[b, i // ib, y, x, i % ib], tir.const(0, data.dtype)),
        name="int8_data_pack",
    )


def weight_compensation(kernel):
    """(K/y, 1, 1, 1, y) int32: 128 x the sum of each output channel's packed weights, what a
    signed-data kernel (`SIGNED_BLOCKS`) adds back for the 128 it took from every input code."""
    from tvm import te

    k_chunks, c_chunks, r, s, groups, ob, _ = (int(d) for d in kernel.shape)
    c = te.reduce_axis((0, c_chunks), "c")
    y = te.reduce_axis((0, r), "y")
    x = te.reduce_axis((0, s), "x")
    m = te.reduce_axis((0, groups), "m")
    i = te.reduce_axis((0, 4), "i")
    return te.compute(
        (k_chunks, 1, 1, 1, ob),
        lambda o, _a, _b, _c, j: te.sum(kernel[o, c, y, x, m, j, i].astype("int32") * 128, axis=[c, y, x, m, i]),
        name="int8_weight_sum",
    )


def conv2d_nchwc_int8(data, kernel, strides, padding, dilation, block: str, compensation=None):
    """TE int8 convolution: data (N, C/x, H, W, x) uint8, kernel packed by `pack_weight`
    (K/y, C/x, R, S, x/4, y, 4) int8 -> (N, K/y, OH, OW, y) int32; the reduction block is
    named `block` (a key of `DOT_BLOCKS`); zero padding (the quantizer's zero point is 0 where
    a padded conv reads, `passes.qdq` pads explicitly otherwise). An output width without a
    usable divisor (`padded_width`: SqueezeNet 1.0's 109-wide first conv, whose 1-column
    register tile left it a third of the int8 model's time) is computed wider and cropped, as
    in the fp32 `direct.conv2d_nchwc`. A signed-data block (`SIGNED_BLOCKS`) reads the codes
    shifted to int8 (the shift is part of the padding stage, so padding holds 0 - 128) and adds
    `compensation` (`weight_compensation` of the same kernel)."""
    from tvm import te
    from tvm import tirx as tir

    n, c_chunks, h, w, ib = (int(d) for d in data.shape)
    k_chunks, _, r, s, groups, ob, _ = (int(d) for d in kernel.shape)
    stride_h, stride_w = (int(v) for v in strides)
    dil_h, dil_w = (int(v) for v in dilation)
    pad_t, pad_l, pad_b, pad_r = (int(v) for v in padding)
    out_h = (h + pad_t + pad_b - (r - 1) * dil_h - 1) // stride_h + 1
    out_w = (w + pad_l + pad_r - (s - 1) * dil_w - 1) // stride_w + 1
    wide = padded_width(out_w)
    pad_r += (wide - out_w) * stride_w
    signed = block in SIGNED_BLOCKS
    if pad_t or pad_l or pad_b or pad_r or signed:

        def code(b, c, y, x, i):
            value = data[b, c, y - pad_t, x - pad_l, i]
            return (value.astype("int32") - 128).astype("int8") if signed else value

        zero = tir.const(-128 if signed else 0, "int8" if signed else data.dtype)
        padded = te.compute(
            (n, c_chunks, h + pad_t + pad_b, w + pad_l + pad_r, ib),
            lambda b, c, y, x, i: tir.if_then_else(
                tir.all(y >= pad_t, y < h + pad_t, x >= pad_l, x < w + pad_l), code(b, c, y, x, i), zero
            ),
            name="data_pad",
        )
    else:
        padded = data
    icc = te.reduce_axis((0, c_chunks), "icc")
    kh = te.reduce_axis((0, r), "kh")
    kw = te.reduce_axis((0, s), "kw")
    icm = te.reduce_axis((0, groups), "icm")
    ici = te.reduce_axis((0, 4), "ici")
    conv = te.compute(
        (n, k_chunks, out_h, wide, ob),
        lambda b, oc, y, x, o: te.sum(
            padded[b, icc, y * stride_h + kh * dil_h, x * stride_w + kw * dil_w, icm * 4 + ici].astype("int32")
            * kernel[oc, icc, kh, kw, icm, o, ici].astype("int32"),
            axis=[icc, kh, kw, icm, ici],
        ),
        name=block,
    )
    if signed:
        return te.compute(
            (n, k_chunks, out_h, out_w, ob),
            lambda b, oc, y, x, o: conv[b, oc, y, x, o] + compensation[oc, 0, 0, 0, o],
            name="conv2d_nchwc_compensate",
        )
    if wide == out_w:
        return conv
    return te.compute((n, k_chunks, out_h, out_w, ob), lambda *i: conv(*i), name="conv2d_nchwc_crop")


def int8_block(sch):
    """(block, intrinsic name) of a kernel's int8 conv, or (None, None)."""
    from .sched import block_named

    for name, (intrin, _) in DOT_BLOCKS.items():
        block = block_named(sch, name)
        if block is not None:
            return block, intrin
    return None, None


def default_tiles(out_w: int, k_chunks: int) -> tuple[int, int]:
    """Untuned register tile: the most accumulators (output columns x channel blocks, both
    divisors, so no tail loops) up to 28 of the 32 vector registers, wider rows first."""
    best = max(
        (ow * oc, ow, oc)
        for ow in range(1, min(out_w, 28) + 1)
        if out_w % ow == 0
        for oc in range(1, min(k_chunks, 4) + 1)
        if k_chunks % oc == 0 and ow * oc <= 28
    )
    return best[1], best[2]


def schedule_int8(sch, block, intrin: str, *, sample: bool = False, ow_tile=None, oc_tile=None):
    """The blocked direct-conv schedule (see `direct_space`) around the dot-product intrinsic:
    parallel over (n, output-channel tiles, rows); padding computed per row; an `ow_tile` x
    `oc_tile` register tile of accumulators; reduction over input blocks, kernel rows and
    columns, groups of 4 input channels; innermost (output lane x 4 channels) tensorized."""
    from ....dot_intrin import register_intrinsics
    from .constants import MAX_ACCUMULATORS
    from .sched import epilogue_at, sample_unroll

    register_intrinsics()
    n, oc, oh, ow, ob, icc, kh, kw, icm, ici = sch.get_loops(block)
    out_w, k_chunks = int(sch.get(ow).extent), int(sch.get(oc).extent)
    if sample:
        ow_factors = sch.sample_perfect_tile(ow, n=2, max_innermost_factor=MAX_ACCUMULATORS)
        oc_factors = sch.sample_perfect_tile(oc, n=2, max_innermost_factor=4)
    else:
        if ow_tile is None or oc_tile is None:
            ow_tile, oc_tile = default_tiles(out_w, k_chunks)
        ow_factors, oc_factors = [None, ow_tile], [None, oc_tile]
    owo, owi = sch.split(ow, ow_factors)
    oco, oci = sch.split(oc, oc_factors)
    sch.reorder(n, oco, oh, owo, icc, kh, kw, icm, oci, owi, ob, ici)
    outer = sch.fuse(n, oco, oh)
    sch.parallel(outer)
    for producer in sch.get_producers(block):  # padding: the rows one output row reads
        if sch.get(producer).name_hint == "data_pad":
            sch.compute_at(producer, outer)
            sch.vectorize(sch.get_loops(producer)[-1])
    epilogue_at(sch, block, owo)
    sch.decompose_reduction(block, icc)
    sch.tensorize(ob, intrin)
    sch.unroll(owi)
    sch.unroll(oci)
    if sample:
        sample_unroll(sch)
    return sch


def is_int8_kernel(func) -> bool:
    """Whether a PrimFunc holds one of the dot-product conv blocks (`DOT_BLOCKS`)."""
    from tvm.s_tir import Schedule

    return int8_block(Schedule(func))[0] is not None


def keep_weight_layout(mod):
    """Int8 kernels without the `layout_free_buffers` attribute: their weights stay as
    `pack_weight` laid them out (already the dot layout).

    Why: MetaSchedule's layout rewrite of a tensorized weight, together with the Fire views'
    early lowering that the rewrite's split needs (`passes.fuse.LowerFireViews`), yields code
    LLVM's vectorizer refuses ("eval_vec_"); without a rewrite the int8 kernels keep their
    Fire views to the end of the pipeline, where TVM lowers them as usual."""
    from tvm import tirx as tir

    out = mod
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tir.PrimFunc) and func.attrs and "layout_free_buffers" in func.attrs:
            if is_int8_kernel(func):
                if out is mod:
                    out = mod.clone()
                out[gv] = func.without_attr("layout_free_buffers")
    return out
