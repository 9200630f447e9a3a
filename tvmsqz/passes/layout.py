"""Layout conversion of a Relax model (target-independent): NCHW[x]c or NHWC convolutions.

Relax's `ConvertLayout` rewrites every `conv2d` whose channels divide by the block to
NCHW[x]c / OIHW[x]i[x]o and propagates the layout through ReLU, max-pool and concat (a concat
of channel blocks); layout transforms remain only where a conv cannot be blocked (the first
conv, 3 input channels), at the model input and output, and on the constant weights, which
`FoldConstant` packs at compile time. Lowering the blocked convs to kernels is the CPU
backend's job (`backends/cpu/kernels/legalize.py`).
"""

from __future__ import annotations


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


def blocked_layout_of(block: int):
    """`ConvertLayout`'s per-call layout callback for a model blocked by `block` lanes."""

    def layout_of(call) -> dict:
        if getattr(call.op, "name", "") != "relax.nn.conv2d":
            return {"relax.nn.conv2d": [f"NCHW{block}c", f"OIHW{block}i{block}o"]}
        data, weight = call.args[0].ty, call.args[1].ty
        return {"relax.nn.conv2d": conv_layouts(int(data.shape[1]), int(weight.shape[0]), block)}

    return layout_of


def nhwc_layout_passes() -> list:
    """Passes that run every conv2d in NHWC / HWIO (channels innermost, unblocked): the third
    layout of the per-conv layout study (`benchmarks/layout_study.py`); TVM's own legalization
    and MetaSchedule's generic space schedule it."""
    from tvm import relax

    return [
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}),
        relax.transform.CanonicalizeBindings(),
    ]
