"""The kernels the Fire passes build through TVM's API (no printed TVMScript is edited or parsed).

`passes.fuse.make_fire_kernel` (TVMScript's IR builder) and `passes.concat_free.into_view`
(TIR constructors) must build exactly the functions that the TVMScript below parses to: the
shipped MetaSchedule databases key their records on workload structural hashes, so a changed
structure would silently stop them applying. The references here are literal TVMScript (for the
fused kernels, the text the earlier text-generating implementation produced); the last tests
check that the shipped x86 database still covers the concat-free kernels and that a concat-free
Fire module computes what ONNX Runtime does.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from test_fuse import fire_model, import_model, run_ort, run_tvm
from tvm.script import tirx as T
from tvm_ffi import structural_hash

from tvmsqz.passes.concat_free import into_view
from tvmsqz.passes.fuse import ConvSpec, FireKernelSpec, fuse_fire, make_fire_kernel


def assert_same_kernel(built, reference) -> None:
    tvm.ir.assert_structural_equal(built, reference)
    assert structural_hash(built) == structural_hash(reference)


# ----------------------------------------------------------------------------------------------
# The fused NCHW Fire kernel
# ----------------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, k: int) -> ConvSpec:
    return ConvSpec(
        cin=cin, cout=cout, kh=k, kw=k, stride=(1, 1), padding=(k // 2,) * 4, dilation=(1, 1), bias_rank=1, relu=True
    )


# fire_model(): squeeze 4 channels, expand 8 (1x1) + 8 (3x3), 6x6, batch 1
EXPAND_SPEC = FireKernelSpec("float32", 1, 4, 6, 6, None, (_conv(4, 8, 1), _conv(4, 8, 3)), False)


@T.prim_func(private=True, s_tir=True)
def fire_expand_4_8k1_8k3_6x6(
    X: T.Buffer((T.int64(1), T.int64(4), T.int64(6), T.int64(6)), "float32"),
    W_0: T.Buffer((T.int64(8), T.int64(4), T.int64(1), T.int64(1)), "float32"),
    B_0: T.Buffer((T.int64(8),), "float32"),
    W_1: T.Buffer((T.int64(8), T.int64(4), T.int64(3), T.int64(3)), "float32"),
    B_1: T.Buffer((T.int64(8),), "float32"),
    Out: T.Buffer((T.int64(1), T.int64(16), T.int64(6), T.int64(6)), "float32"),
):
    T.func_attr({"tirx.noalias": True})
    with T.sblock("root"):
        Out_0 = T.match_buffer(
            Out[0:1, 0:8, 0:6, 0:6], (T.int64(1), T.int64(8), T.int64(6), T.int64(6)), "float32", elem_offset=T.int64(0)
        )
        Out_1 = T.match_buffer(
            Out[0:1, 8:16, 0:6, 0:6],
            (T.int64(1), T.int64(8), T.int64(6), T.int64(6)),
            "float32",
            elem_offset=T.int64(288),
        )
        expand0_conv2d_nchw = T.sblock_alloc_buffer((T.int64(1), T.int64(8), T.int64(6), T.int64(6)), "float32")
        for nn, ff, yy, xx, rc, ry, rx in T.grid(
            T.int64(1), T.int64(8), T.int64(6), T.int64(6), T.int64(4), T.int64(1), T.int64(1)
        ):
            with T.sblock("expand0_conv2d_nchw"):
                v_nn, v_ff, v_yy, v_xx, v_rc, v_ry, v_rx = T.axis.remap("SSSSRRR", [nn, ff, yy, xx, rc, ry, rx])
                with T.init():
                    expand0_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = T.float32(0)
                expand0_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = (
                    expand0_conv2d_nchw[v_nn, v_ff, v_yy, v_xx]
                    + X[v_nn, v_rc, v_yy + v_ry, v_xx + v_rx] * W_0[v_ff, v_rc, v_ry, v_rx]
                )
        for ax0, ax1, ax2, ax3 in T.grid(T.int64(1), T.int64(8), T.int64(6), T.int64(6)):
            with T.sblock("expand0_epilogue"):
                v_ax0, v_ax1, v_ax2, v_ax3 = T.axis.remap("SSSS", [ax0, ax1, ax2, ax3])
                Out_0[v_ax0, v_ax1, v_ax2, v_ax3] = T.max(
                    expand0_conv2d_nchw[v_ax0, v_ax1, v_ax2, v_ax3] + B_0[v_ax1], T.float32(0)
                )
        expand1_pad_temp = T.sblock_alloc_buffer((T.int64(1), T.int64(4), T.int64(8), T.int64(8)), "float32")
        for i0, i1, i2, i3 in T.grid(T.int64(1), T.int64(4), T.int64(8), T.int64(8)):
            with T.sblock("expand1_pad_temp"):
                v_i0, v_i1, v_i2, v_i3 = T.axis.remap("SSSS", [i0, i1, i2, i3])
                expand1_pad_temp[v_i0, v_i1, v_i2, v_i3] = T.if_then_else(
                    T.int64(1) <= v_i2 and v_i2 < T.int64(7) and T.int64(1) <= v_i3 and v_i3 < T.int64(7),
                    X[v_i0, v_i1, v_i2 - T.int64(1), v_i3 - T.int64(1)],
                    T.float32(0),
                )
        expand1_conv2d_nchw = T.sblock_alloc_buffer((T.int64(1), T.int64(8), T.int64(6), T.int64(6)), "float32")
        for nn, ff, yy, xx, rc, ry, rx in T.grid(
            T.int64(1), T.int64(8), T.int64(6), T.int64(6), T.int64(4), T.int64(3), T.int64(3)
        ):
            with T.sblock("expand1_conv2d_nchw"):
                v_nn, v_ff, v_yy, v_xx, v_rc, v_ry, v_rx = T.axis.remap("SSSSRRR", [nn, ff, yy, xx, rc, ry, rx])
                with T.init():
                    expand1_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = T.float32(0)
                expand1_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = (
                    expand1_conv2d_nchw[v_nn, v_ff, v_yy, v_xx]
                    + expand1_pad_temp[v_nn, v_rc, v_yy + v_ry, v_xx + v_rx] * W_1[v_ff, v_rc, v_ry, v_rx]
                )
        for ax0, ax1, ax2, ax3 in T.grid(T.int64(1), T.int64(8), T.int64(6), T.int64(6)):
            with T.sblock("expand1_epilogue"):
                v_ax0, v_ax1, v_ax2, v_ax3 = T.axis.remap("SSSS", [ax0, ax1, ax2, ax3])
                Out_1[v_ax0, v_ax1, v_ax2, v_ax3] = T.max(
                    expand1_conv2d_nchw[v_ax0, v_ax1, v_ax2, v_ax3] + B_1[v_ax1], T.float32(0)
                )


# fire_model(cin=16, bypass="identity") at batch 2 with fold_squeeze: the whole Fire module and
# its bypass in one kernel; batch > 1 gives the views strides.
MODULE_SPEC = FireKernelSpec("float32", 2, 16, 6, 6, _conv(16, 4, 1), (_conv(4, 8, 1), _conv(4, 8, 3)), True)


@T.prim_func(private=True, s_tir=True)
def fire_module_16_4_8k1_8k3_6x6_res_n2(
    X: T.Buffer((T.int64(2), T.int64(16), T.int64(6), T.int64(6)), "float32"),
    W_squeeze: T.Buffer((T.int64(4), T.int64(16), T.int64(1), T.int64(1)), "float32"),
    B_squeeze: T.Buffer((T.int64(4),), "float32"),
    W_0: T.Buffer((T.int64(8), T.int64(4), T.int64(1), T.int64(1)), "float32"),
    B_0: T.Buffer((T.int64(8),), "float32"),
    W_1: T.Buffer((T.int64(8), T.int64(4), T.int64(3), T.int64(3)), "float32"),
    B_1: T.Buffer((T.int64(8),), "float32"),
    Residual: T.Buffer((T.int64(2), T.int64(16), T.int64(6), T.int64(6)), "float32"),
    Out: T.Buffer((T.int64(2), T.int64(16), T.int64(6), T.int64(6)), "float32"),
):
    T.func_attr({"tirx.noalias": True})
    with T.sblock("root"):
        Out_0 = T.match_buffer(
            Out[0:2, 0:8, 0:6, 0:6],
            (T.int64(2), T.int64(8), T.int64(6), T.int64(6)),
            "float32",
            elem_offset=T.int64(0),
            strides=(T.int64(576), T.int64(36), T.int64(6), T.int64(1)),
        )
        Out_1 = T.match_buffer(
            Out[0:2, 8:16, 0:6, 0:6],
            (T.int64(2), T.int64(8), T.int64(6), T.int64(6)),
            "float32",
            elem_offset=T.int64(288),
            strides=(T.int64(576), T.int64(36), T.int64(6), T.int64(1)),
        )
        squeeze_out = T.sblock_alloc_buffer((T.int64(2), T.int64(4), T.int64(6), T.int64(6)), "float32")
        squeeze_conv2d_nchw = T.sblock_alloc_buffer((T.int64(2), T.int64(4), T.int64(6), T.int64(6)), "float32")
        for nn, ff, yy, xx, rc, ry, rx in T.grid(
            T.int64(2), T.int64(4), T.int64(6), T.int64(6), T.int64(16), T.int64(1), T.int64(1)
        ):
            with T.sblock("squeeze_conv2d_nchw"):
                v_nn, v_ff, v_yy, v_xx, v_rc, v_ry, v_rx = T.axis.remap("SSSSRRR", [nn, ff, yy, xx, rc, ry, rx])
                with T.init():
                    squeeze_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = T.float32(0)
                squeeze_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = (
                    squeeze_conv2d_nchw[v_nn, v_ff, v_yy, v_xx]
                    + X[v_nn, v_rc, v_yy + v_ry, v_xx + v_rx] * W_squeeze[v_ff, v_rc, v_ry, v_rx]
                )
        for ax0, ax1, ax2, ax3 in T.grid(T.int64(2), T.int64(4), T.int64(6), T.int64(6)):
            with T.sblock("squeeze_epilogue"):
                v_ax0, v_ax1, v_ax2, v_ax3 = T.axis.remap("SSSS", [ax0, ax1, ax2, ax3])
                squeeze_out[v_ax0, v_ax1, v_ax2, v_ax3] = T.max(
                    squeeze_conv2d_nchw[v_ax0, v_ax1, v_ax2, v_ax3] + B_squeeze[v_ax1], T.float32(0)
                )
        expand0_conv2d_nchw = T.sblock_alloc_buffer((T.int64(2), T.int64(8), T.int64(6), T.int64(6)), "float32")
        for nn, ff, yy, xx, rc, ry, rx in T.grid(
            T.int64(2), T.int64(8), T.int64(6), T.int64(6), T.int64(4), T.int64(1), T.int64(1)
        ):
            with T.sblock("expand0_conv2d_nchw"):
                v_nn, v_ff, v_yy, v_xx, v_rc, v_ry, v_rx = T.axis.remap("SSSSRRR", [nn, ff, yy, xx, rc, ry, rx])
                with T.init():
                    expand0_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = T.float32(0)
                expand0_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = (
                    expand0_conv2d_nchw[v_nn, v_ff, v_yy, v_xx]
                    + squeeze_out[v_nn, v_rc, v_yy + v_ry, v_xx + v_rx] * W_0[v_ff, v_rc, v_ry, v_rx]
                )
        for ax0, ax1, ax2, ax3 in T.grid(T.int64(2), T.int64(8), T.int64(6), T.int64(6)):
            with T.sblock("expand0_epilogue"):
                v_ax0, v_ax1, v_ax2, v_ax3 = T.axis.remap("SSSS", [ax0, ax1, ax2, ax3])
                Out_0[v_ax0, v_ax1, v_ax2, v_ax3] = (
                    T.max(expand0_conv2d_nchw[v_ax0, v_ax1, v_ax2, v_ax3] + B_0[v_ax1], T.float32(0))
                    + Residual[v_ax0, v_ax1, v_ax2, v_ax3]
                )
        expand1_pad_temp = T.sblock_alloc_buffer((T.int64(2), T.int64(4), T.int64(8), T.int64(8)), "float32")
        for i0, i1, i2, i3 in T.grid(T.int64(2), T.int64(4), T.int64(8), T.int64(8)):
            with T.sblock("expand1_pad_temp"):
                v_i0, v_i1, v_i2, v_i3 = T.axis.remap("SSSS", [i0, i1, i2, i3])
                expand1_pad_temp[v_i0, v_i1, v_i2, v_i3] = T.if_then_else(
                    T.int64(1) <= v_i2 and v_i2 < T.int64(7) and T.int64(1) <= v_i3 and v_i3 < T.int64(7),
                    squeeze_out[v_i0, v_i1, v_i2 - T.int64(1), v_i3 - T.int64(1)],
                    T.float32(0),
                )
        expand1_conv2d_nchw = T.sblock_alloc_buffer((T.int64(2), T.int64(8), T.int64(6), T.int64(6)), "float32")
        for nn, ff, yy, xx, rc, ry, rx in T.grid(
            T.int64(2), T.int64(8), T.int64(6), T.int64(6), T.int64(4), T.int64(3), T.int64(3)
        ):
            with T.sblock("expand1_conv2d_nchw"):
                v_nn, v_ff, v_yy, v_xx, v_rc, v_ry, v_rx = T.axis.remap("SSSSRRR", [nn, ff, yy, xx, rc, ry, rx])
                with T.init():
                    expand1_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = T.float32(0)
                expand1_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = (
                    expand1_conv2d_nchw[v_nn, v_ff, v_yy, v_xx]
                    + expand1_pad_temp[v_nn, v_rc, v_yy + v_ry, v_xx + v_rx] * W_1[v_ff, v_rc, v_ry, v_rx]
                )
        for ax0, ax1, ax2, ax3 in T.grid(T.int64(2), T.int64(8), T.int64(6), T.int64(6)):
            with T.sblock("expand1_epilogue"):
                v_ax0, v_ax1, v_ax2, v_ax3 = T.axis.remap("SSSS", [ax0, ax1, ax2, ax3])
                Out_1[v_ax0, v_ax1, v_ax2, v_ax3] = (
                    T.max(expand1_conv2d_nchw[v_ax0, v_ax1, v_ax2, v_ax3] + B_1[v_ax1], T.float32(0))
                    + Residual[v_ax0, v_ax1 + T.int64(8), v_ax2, v_ax3]
                )


@pytest.mark.parametrize(
    "spec, name, reference",
    [
        (EXPAND_SPEC, "fire_expand_4_8k1_8k3_6x6", fire_expand_4_8k1_8k3_6x6),
        (MODULE_SPEC, "fire_module_16_4_8k1_8k3_6x6_res_n2", fire_module_16_4_8k1_8k3_6x6_res_n2),
    ],
    ids=["expand", "module-res-n2"],
)
def test_fire_kernel_equals_tvmscript_reference(spec, name, reference):
    assert spec.name() == name
    assert_same_kernel(make_fire_kernel(spec), reference)


def test_fire_kernel_is_what_the_pass_uses():
    fused = fuse_fire(import_model(fire_model()))
    func = fused[EXPAND_SPEC.name()].without_attr("op_pattern").without_attr("layout_free_buffers")
    assert_same_kernel(func, fire_expand_4_8k1_8k3_6x6)


# ----------------------------------------------------------------------------------------------
# The concat-free view (blocked layout)
# ----------------------------------------------------------------------------------------------


def _blocked_conv(n: int):
    """A legalized blocked 1x1 conv + ReLU, (n, 2, 3, 3, 4) -> (n, 2, 3, 3, 4)."""

    @T.prim_func(private=True, s_tir=True)
    def conv(
        x: T.Buffer((T.int64(n), T.int64(2), T.int64(3), T.int64(3), T.int64(4)), "float32"),
        w: T.Buffer((T.int64(2), T.int64(2), T.int64(1), T.int64(1), T.int64(4), T.int64(4)), "float32"),
        compute: T.Buffer((T.int64(n), T.int64(2), T.int64(3), T.int64(3), T.int64(4)), "float32"),
    ):
        T.func_attr({"layout_free_buffers": [1], "tirx.noalias": True})
        acc = T.sblock_alloc_buffer((T.int64(n), T.int64(2), T.int64(3), T.int64(3), T.int64(4)))
        for b, oc, y, xx, o, ic, kh, kw in T.grid(
            T.int64(n), T.int64(2), T.int64(3), T.int64(3), T.int64(4), T.int64(8), T.int64(1), T.int64(1)
        ):
            with T.sblock("conv2d_nchwc"):
                v_b, v_oc, v_y, v_x, v_o, v_ic, v_kh, v_kw = T.axis.remap("SSSSSRRR", [b, oc, y, xx, o, ic, kh, kw])
                with T.init():
                    acc[v_b, v_oc, v_y, v_x, v_o] = T.float32(0.0)
                acc[v_b, v_oc, v_y, v_x, v_o] = (
                    acc[v_b, v_oc, v_y, v_x, v_o]
                    + x[v_b, v_ic // T.int64(4), v_y + v_kh, v_x + v_kw, v_ic % T.int64(4)]
                    * w[v_oc, v_ic // T.int64(4), v_kh, v_kw, v_ic % T.int64(4), v_o]
                )
        for i0, i1, i2, i3, i4 in T.grid(T.int64(n), T.int64(2), T.int64(3), T.int64(3), T.int64(4)):
            with T.sblock("compute"):
                v_i0, v_i1, v_i2, v_i3, v_i4 = T.axis.remap("SSSSS", [i0, i1, i2, i3, i4])
                compute[v_i0, v_i1, v_i2, v_i3, v_i4] = T.max(acc[v_i0, v_i1, v_i2, v_i3, v_i4], T.float32(0.0))

    return conv


def _blocked_conv_into(n: int, total: int, offset: int):
    """`_blocked_conv(n)` writing blocks [offset, offset + 2) of an (n, total, 3, 3, 4) buffer."""
    strides = (total * 36, 36, 12, 4, 1) if n > 1 else None

    @T.prim_func(private=True, s_tir=True)
    def conv(
        x: T.Buffer((T.int64(n), T.int64(2), T.int64(3), T.int64(3), T.int64(4)), "float32"),
        w: T.Buffer((T.int64(2), T.int64(2), T.int64(1), T.int64(1), T.int64(4), T.int64(4)), "float32"),
        Out: T.Buffer((n, total, 3, 3, 4), "float32"),
    ):
        T.func_attr({"layout_free_buffers": [1], "tirx.noalias": True})
        with T.sblock("root"):
            acc = T.sblock_alloc_buffer((T.int64(n), T.int64(2), T.int64(3), T.int64(3), T.int64(4)))
            compute = T.match_buffer(
                Out[0:n, offset : offset + 2, 0:3, 0:3, 0:4],
                (n, 2, 3, 3, 4),
                "float32",
                elem_offset=offset * 36,
                strides=strides,
            )
            for b, oc, y, xx, o, ic, kh, kw in T.grid(
                T.int64(n), T.int64(2), T.int64(3), T.int64(3), T.int64(4), T.int64(8), T.int64(1), T.int64(1)
            ):
                with T.sblock("conv2d_nchwc"):
                    v_b, v_oc, v_y, v_x, v_o, v_ic, v_kh, v_kw = T.axis.remap("SSSSSRRR", [b, oc, y, xx, o, ic, kh, kw])
                    with T.init():
                        acc[v_b, v_oc, v_y, v_x, v_o] = T.float32(0.0)
                    acc[v_b, v_oc, v_y, v_x, v_o] = (
                        acc[v_b, v_oc, v_y, v_x, v_o]
                        + x[v_b, v_ic // T.int64(4), v_y + v_kh, v_x + v_kw, v_ic % T.int64(4)]
                        * w[v_oc, v_ic // T.int64(4), v_kh, v_kw, v_ic % T.int64(4), v_o]
                    )
            for i0, i1, i2, i3, i4 in T.grid(T.int64(n), T.int64(2), T.int64(3), T.int64(3), T.int64(4)):
                with T.sblock("compute"):
                    v_i0, v_i1, v_i2, v_i3, v_i4 = T.axis.remap("SSSSS", [i0, i1, i2, i3, i4])
                    compute[v_i0, v_i1, v_i2, v_i3, v_i4] = T.max(acc[v_i0, v_i1, v_i2, v_i3, v_i4], T.float32(0.0))

    return conv


@pytest.mark.parametrize("n, total, offset", [(1, 5, 0), (1, 5, 3), (2, 4, 2), (3, 7, 1)])
def test_into_view_equals_tvmscript_reference(n, total, offset):
    built = into_view(_blocked_conv(n), "conv_into", total, offset)
    assert_same_kernel(built, _blocked_conv_into(n, total, offset))
    (view,) = built.body.block.match_buffers
    assert view.buffer.name == "compute" and built.params[-1].name == "Out"


def test_into_view_refuses_what_it_cannot_rewrite():
    conv = _blocked_conv(1)
    with pytest.raises(ValueError, match="outside"):
        into_view(conv, "conv_into", 3, 2)  # blocks [2, 4) of 3
    with pytest.raises(ValueError, match="static"):
        into_view(make_fire_kernel(EXPAND_SPEC), "nchw", 4, 0)  # a 4-D output


def test_concat_free_kernels_keep_their_shipped_schedules():
    """Every concat-free kernel of the default x86 graph has a workload in the shipped database."""
    from conftest import REPO
    from tvm.s_tir import meta_schedule as ms

    from tvmsqz.build import prepare
    from tvmsqz.frontend import load_model
    from tvmsqz.targets import get_target

    spec = get_target("x86-avx512")
    folder = REPO / "schedules" / "x86-avx512"
    database = ms.database.JSONDatabase(
        str(folder / "database_workload.json"), str(folder / "database_tuning_record.json"), allow_missing=False
    )
    mod = prepare(load_model("squeezenet1_1").mod, spec, fuse=True)
    with spec.target:
        tasks = ms.relax_integration.extract_tasks(mod, spec.target)
    into = [t for t in tasks if t.task_name.startswith("fire_expand_into_")]
    assert len(into) == 4, [t.task_name for t in tasks]  # distinct shapes of squeezenet1_1's 16 branches
    assert all(database.has_workload(t.dispatched[0]) for t in into), [t.task_name for t in into]


@pytest.mark.parametrize("batch", [1, 2])
def test_concat_free_fire_matches_onnxruntime(batch):
    """A Fire module through the blocked, concat-free x86 graph (untuned) against ONNX Runtime."""
    from tvmsqz.build import prepare
    from tvmsqz.targets import get_target

    spec = get_target("x86")  # this host: x86-avx512 or x86-avx2
    model = fire_model(cin=32, sq=16, e1=32, e3=48, hw=7, seed=3)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    mod = prepare(import_model(model), spec, fuse=True)
    names = [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert sum(n.startswith("fire_expand_into_") for n in names) == 2, names
    assert not [n for n in names if "concatenate" in n], names
    x = np.random.RandomState(4).randn(batch, 32, 7, 7).astype(np.float32)
    (ours,), (ref,) = run_tvm(mod, x), run_ort(model, x)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4 * float(ref.max() - ref.min())
