"""Fire-module fusion: one TensorIR kernel per Fire module, no concatenate copy.

A Fire module computes ``concat([act(conv_1(s) + b_1), act(conv_2(s) + b_2), ...], axis=1)``
where ``s`` is the squeeze output. Imported as-is, TVM runs one kernel per branch, each into a
temporary, and a ``concatenate`` kernel that copies them into the result. `FuseFireModules`
replaces every such concat (found anywhere in any Relax function) with one ``call_tir`` to a
generated TensorIR function that computes every branch and writes each straight into its
channel slice of the single output buffer.

Optional foldings, each a pass option:

* ``fold_bypass`` (default on): when the only user of the concat is ``add(concat, r)`` (the
  simple and complex bypass of SqueezeNet), the add becomes part of the branch epilogues
  (``out[:, slice] = act(conv + b) + r[:, slice]``) and its copy disappears.
* ``fold_squeeze`` (default off): when the shared input ``s`` is itself
  ``act(conv(x) + b)`` used by nothing else, that convolution moves into the same kernel; ``s``
  lives in a kernel-local buffer (the whole Fire module is one kernel).

The generated functions are ordinary s_tir PrimFuncs that mirror the block structure of a
legalized ``conv2d + add + relu`` (pad block, reduction block with ``T.init``, elementwise
epilogue), so MetaSchedule extracts and tunes each one as a task of its own, and the DLight
fallback / default schedules handle them like any other. The pass is target independent: it
only rewrites Relax and adds TIR.

See docs/fuse.md for what is matched, the kernel layout and measurements.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T  # noqa: N812 - TVMScript's own spelling

__all__ = [
    "FuseFireModules",
    "fuse_fire",
    "LowerFireViews",
    "lower_fire_views",
    "fire_kernel_names",
    "FIRE_KERNEL_PREFIXES",
]

#: Every PrimFunc this pass creates has a name starting with one of these.
FIRE_KERNEL_PREFIXES = ("fire_expand_", "fire_module_")

_CONV = "relax.nn.conv2d"
_ADD = "relax.add"
_RELU = "relax.nn.relu"
_RESHAPE = "relax.reshape"
_CONCAT = "relax.concat"


# ----------------------------------------------------------------------------------------------
# Static description of a kernel
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvSpec:
    """One convolution stage: NCHW data, OIHW weight, groups 1, optional bias and ReLU."""

    cin: int
    cout: int
    kh: int
    kw: int
    stride: tuple  # (sh, sw)
    padding: tuple  # (top, left, bottom, right)
    dilation: tuple  # (dh, dw)
    bias_rank: int  # 0: no bias, 1: (C,), 3: (C, 1, 1), 4: (1, C, 1, 1)
    relu: bool

    def out_hw(self, h: int, w: int) -> tuple:
        pt, pl, pb, pr = self.padding
        (sh, sw), (dh, dw) = self.stride, self.dilation
        return (
            (h + pt + pb - dh * (self.kh - 1) - 1) // sh + 1,
            (w + pl + pr - dw * (self.kw - 1) - 1) // sw + 1,
        )


@dataclass(frozen=True)
class FireKernelSpec:
    """A whole fused kernel: optional squeeze stage, >= 2 branches concatenated on channels."""

    dtype: str
    n: int
    cin: int
    h: int
    w: int
    squeeze: ConvSpec | None
    branches: tuple  # tuple[ConvSpec, ...] in concat order
    residual: bool

    @property
    def mid_hw(self) -> tuple:
        return self.squeeze.out_hw(self.h, self.w) if self.squeeze else (self.h, self.w)

    @property
    def out_shape(self) -> tuple:
        oh, ow = self.branches[0].out_hw(*self.mid_hw)
        return (self.n, sum(b.cout for b in self.branches), oh, ow)

    def name(self) -> str:
        """Descriptive global name, e.g. ``fire_expand_16_64k1_64k3_55x55`` (see docs/fuse.md).

        Two different kernels can still share a name (e.g. with and without bias); the
        BlockBuilder then appends a number to the second one.
        """
        parts = []
        for b in self.branches:
            part = f"{b.cout}k" + (f"{b.kh}" if b.kh == b.kw else f"{b.kh}x{b.kw}")
            if b.stride != (1, 1):
                part += "s" + "x".join(str(v) for v in sorted(set(b.stride)))
            if b.dilation != (1, 1):
                part += "d" + "x".join(str(v) for v in sorted(set(b.dilation)))
            parts.append(part)
        _, _, oh, ow = self.out_shape
        if self.squeeze is not None:
            head = f"fire_module_{self.cin}_{self.squeeze.cout}"
        else:
            head = f"fire_expand_{self.cin}"
        name = f"{head}_{'_'.join(parts)}_{oh}x{ow}"
        if not self.branches[0].relu:
            name += "_linear"
        if self.residual:
            name += "_res"
        if self.n != 1:
            name += f"_n{self.n}"
        if self.dtype != "float32":
            name += f"_{self.dtype}"
        return name


# ----------------------------------------------------------------------------------------------
# TensorIR generation (TVMScript's IR builder, concrete shapes, once per distinct kernel)
# ----------------------------------------------------------------------------------------------
#
# The kernel is built with `tvm.script.ir_builder` (the builder the TVMScript parser drives), in
# the same calls and order as a TVMScript source of it would make, so its structure, and
# `structural_hash`, the key of MetaSchedule workloads, is what that source parses to. Index
# constants are int64 like legalized Relax kernels; each stage has a pad block (only when padded),
# a reduction block with init, and an elementwise epilogue.


_ROOT_BLOCK = "root"  # s_tir's name for a function's outermost block


def _bias_shape(rank: int, c: int) -> tuple:
    return {1: (c,), 3: (c, 1, 1), 4: (1, c, 1, 1)}[rank]


class _KernelBuilder:
    """Emits the statements of one fused kernel inside an open `T.prim_func` frame."""

    def __init__(self, dtype: str):
        self.dtype = dtype
        self.zero = getattr(T, dtype)(0)  # what `T.float32(0)` is in TVMScript

    @staticmethod
    def name(name: str, value):
        """Name a variable or buffer as `name = ...` in TVMScript would."""
        return IRBuilder.name(name, value)

    @staticmethod
    def i64(value: int):
        return T.int64(int(value))

    def shape(self, dims) -> tuple:
        return tuple(self.i64(d) for d in dims)

    def param(self, name: str, dims):
        return T.arg(name, T.Buffer(self.shape(dims), self.dtype))

    def alloc(self, name: str, dims):
        return self.name(name, T.sblock_alloc_buffer(self.shape(dims), self.dtype))

    @contextlib.contextmanager
    def loop_block(self, block: str, names: str, extents, kinds: str):
        """`for <names> in T.grid(extents): with T.sblock(block): v_<names> = T.axis.remap(...)`;
        yields the block variables."""
        with T.grid(*self.shape(extents)) as loops:
            loops = [self.name(n, v) for n, v in zip(names.split(), loops)]
            with T.sblock(block):
                axes = T.axis.remap(kinds, loops)
                yield tuple(self.name(f"v_{n}", v) for n, v in zip(names.split(), axes))

    def conv_stage(
        self, prefix: str, spec: ConvSpec, n: int, src, src_hw: tuple, weight, bias, dst, dst_offset: int, residual
    ) -> None:
        """Pad / conv / epilogue blocks of one stage (inside the root block)."""
        i64 = self.i64
        h, w = src_hw
        oh, ow = spec.out_hw(h, w)
        pt, pl, pb, pr = spec.padding
        (sh, sw), (dh, dw) = spec.stride, spec.dilation

        # Pad block (skipped when there is no padding: the conv reads its source directly).
        if any(spec.padding):
            hp, wp = h + pt + pb, w + pl + pr
            pad = self.alloc(f"{prefix}_pad_temp", (n, spec.cin, hp, wp))
            with self.loop_block(f"{prefix}_pad_temp", "i0 i1 i2 i3", (n, spec.cin, hp, wp), "SSSS") as v:
                v_i0, v_i1, v_i2, v_i3 = v
                conds = []
                if pt:
                    conds.append(tirx.LE(i64(pt), v_i2))
                if pb:
                    conds.append(tirx.LT(v_i2, i64(pt + h)))
                if pl:
                    conds.append(tirx.LE(i64(pl), v_i3))
                if pr:
                    conds.append(tirx.LT(v_i3, i64(pl + w)))
                cond = functools.reduce(tirx.And, conds)  # `a and b and c`, folded left
                row = v_i2 - i64(pt) if pt else v_i2
                col = v_i3 - i64(pl) if pl else v_i3
                T.buffer_store(pad, T.if_then_else(cond, src[v_i0, v_i1, row, col], self.zero), v)
            src = pad

        acc = self.alloc(f"{prefix}_conv2d_nchw", (n, spec.cout, oh, ow))
        with self.loop_block(
            f"{prefix}_conv2d_nchw",
            "nn ff yy xx rc ry rx",
            (n, spec.cout, oh, ow, spec.cin, spec.kh, spec.kw),
            "SSSSRRR",
        ) as v:
            v_nn, v_ff, v_yy, v_xx, v_rc, v_ry, v_rx = v
            out = (v_nn, v_ff, v_yy, v_xx)
            with T.init():
                T.buffer_store(acc, self.zero, out)
            yy = v_yy if sh == 1 else v_yy * i64(sh)
            xx = v_xx if sw == 1 else v_xx * i64(sw)
            ry = v_ry if dh == 1 else v_ry * i64(dh)
            rx = v_rx if dw == 1 else v_rx * i64(dw)
            T.buffer_store(acc, acc[out] + src[v_nn, v_rc, yy + ry, xx + rx] * weight[v_ff, v_rc, v_ry, v_rx], out)

        # Epilogue: bias, ReLU, residual; writes its channel slice of `dst` directly.
        with self.loop_block(f"{prefix}_epilogue", "ax0 ax1 ax2 ax3", (n, spec.cout, oh, ow), "SSSS") as v:
            v_ax0, v_ax1, v_ax2, v_ax3 = v
            val = acc[v]
            if bias is not None:
                zero = i64(0)
                val = val + bias[{1: (v_ax1,), 3: (v_ax1, zero, zero), 4: (zero, v_ax1, zero, zero)}[spec.bias_rank]]
            if spec.relu:
                val = T.max(val, self.zero)
            if residual is not None:
                channel = v_ax1 + i64(dst_offset) if dst_offset else v_ax1
                val = val + residual[v_ax0, channel, v_ax2, v_ax3]
            T.buffer_store(dst, val, v)


@functools.lru_cache(maxsize=256)
def make_fire_kernel(spec: FireKernelSpec) -> tvm.tirx.PrimFunc:
    """The fused kernel for `spec` (parameters in call order, output last; cached: PrimFuncs
    are immutable)."""
    kb = _KernelBuilder(spec.dtype)
    n, c_out, oh, ow = spec.out_shape
    sq = spec.squeeze
    with IRBuilder() as ib, T.prim_func(private=True, s_tir=True):
        T.func_name(spec.name())
        x = kb.param("X", (spec.n, spec.cin, spec.h, spec.w))
        if sq is not None:
            w_sq = kb.param("W_squeeze", (sq.cout, sq.cin, sq.kh, sq.kw))
            b_sq = kb.param("B_squeeze", _bias_shape(sq.bias_rank, sq.cout)) if sq.bias_rank else None
        weights, biases = [], []
        for k, b in enumerate(spec.branches):
            weights.append(kb.param(f"W_{k}", (b.cout, b.cin, b.kh, b.kw)))
            biases.append(kb.param(f"B_{k}", _bias_shape(b.bias_rank, b.cout)) if b.bias_rank else None)
        residual = kb.param("Residual", spec.out_shape) if spec.residual else None
        out = kb.param("Out", spec.out_shape)
        T.func_attr({"tirx.noalias": True})
        with T.sblock(_ROOT_BLOCK):  # holds the views (match_buffer) and temporaries
            # One view per branch onto its channel slice of Out: each epilogue is then the only
            # writer of its buffer (TensorIR's "complete block" rule), so the schedule can move
            # it into the tiles of its convolution; lowering turns the views into offsets.
            views, offset = [], 0
            for k, b in enumerate(spec.branches):
                strides = kb.shape((c_out * oh * ow, oh * ow, ow, 1)) if n > 1 else None
                view = T.match_buffer(
                    out[0:n, offset : offset + b.cout, 0:oh, 0:ow],
                    kb.shape((n, b.cout, oh, ow)),
                    spec.dtype,
                    elem_offset=kb.i64(offset * oh * ow),
                    strides=strides,
                )
                views.append(kb.name(f"Out_{k}", view))
                offset += b.cout
            src, src_hw = x, (spec.h, spec.w)
            if sq is not None:
                mid = kb.alloc("squeeze_out", (n, sq.cout, *spec.mid_hw))
                kb.conv_stage("squeeze", sq, n, x, src_hw, w_sq, b_sq, mid, 0, None)
                src, src_hw = mid, spec.mid_hw
            offset = 0
            for k, b in enumerate(spec.branches):
                kb.conv_stage(f"expand{k}", b, n, src, src_hw, weights[k], biases[k], views[k], offset, residual)
                offset += b.cout
    return ib.get()


# ----------------------------------------------------------------------------------------------
# Pattern matching on Relax
# ----------------------------------------------------------------------------------------------


def _op_name(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def _static_shape(expr) -> tuple | None:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    shape = getattr(ty.shape, "values", None)
    if shape is None:
        return None
    dims = []
    for d in shape:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        dims.append(int(d.value))
    return tuple(dims)


def _dtype(expr) -> str | None:
    ty = getattr(expr, "ty", None)
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


def _is_constant(expr) -> bool:
    return isinstance(expr, tvm.ir.Constant)


@dataclass
class _Stage:
    """A matched ``act(conv(inp, w) [+ bias])`` chain in the Relax graph."""

    spec: ConvSpec
    inp: relax.Expr
    weight: relax.Expr
    bias: relax.Expr | None


class _Analysis:
    def __init__(self, func: relax.Function):
        self.var2val = {}
        self.uses = Counter()
        self.func = func

        self.users = defaultdict(list)  # var -> vars of the bindings that use it
        user = [None]

        def visit(node):
            if isinstance(node, relax.Var):
                self.uses[node] += 1
                if user[0] is not None:
                    self.users[node].append(user[0])

        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self.var2val[binding.var] = binding.value
                user[0] = binding.var
                relax.analysis.post_order_visit(binding.value, visit)
        user[0] = None
        relax.analysis.post_order_visit(func.body.body, visit)

    def single_use(self, var) -> bool:
        return isinstance(var, relax.Var) and self.uses[var] == 1


def _normalize_bias(an: _Analysis, bias, cout: int, dtype: str):
    """Return (bias expr to pass, rank) or None if `bias` is not a per-channel bias."""
    if _dtype(bias) != dtype:
        return None
    shape = _static_shape(bias)
    # Per-channel under NumPy broadcasting against NCHW. A (C,) operand would broadcast along
    # W, not C, so it is not a bias (only the kernel's own normalized form is 1-D).
    if shape not in ((cout, 1, 1), (1, cout, 1, 1)):
        return None
    src = bias
    if isinstance(bias, relax.Var):
        val = an.var2val.get(bias)
        if val is not None and _is_constant(val):
            src = val
        elif _op_name(val) == _RESHAPE and _is_constant(val.args[0]) and an.single_use(bias):
            src = val.args[0]  # reshape(const): the reshape binding dies with the chain
    if _is_constant(src):
        arr = src.value.numpy()
        if arr.size != cout:
            return None
        return relax.const(np.ascontiguousarray(arr.reshape(cout)), dtype), 1
    return bias, len(shape)


def _match_stage(an: _Analysis, root, dtype: str | None = None) -> _Stage | None:
    """Match ``[relu](add(conv2d(x, w), bias) | conv2d(x, w))`` bound to `root`."""
    expr = an.var2val.get(root) if isinstance(root, relax.Var) else None
    if expr is None:
        return None
    relu = False
    if _op_name(expr) == _RELU:
        relu = True
        arg = expr.args[0]
        if not an.single_use(arg):
            return None
        expr = an.var2val.get(arg)
    bias_expr = None
    if _op_name(expr) == _ADD:
        a, b = expr.args
        conv_var = None
        for cand, other in ((a, b), (b, a)):
            if isinstance(cand, relax.Var) and _op_name(an.var2val.get(cand)) == _CONV:
                conv_var, bias_expr = cand, other
                break
        if conv_var is None or not an.single_use(conv_var):
            return None
        expr = an.var2val.get(conv_var)
    if _op_name(expr) != _CONV:
        return None
    attrs = expr.attrs
    if (
        str(attrs.data_layout) != "NCHW"
        or str(attrs.kernel_layout) != "OIHW"
        or str(attrs.out_layout) != "NCHW"
        or int(attrs.groups) != 1
    ):
        return None
    data, weight = expr.args
    dshape, wshape, oshape = _static_shape(data), _static_shape(weight), _static_shape(expr)
    dt = _dtype(data)
    if dshape is None or wshape is None or oshape is None or len(dshape) != 4 or len(wshape) != 4:
        return None
    if dt is None or _dtype(weight) != dt or _dtype(expr) != dt or (dtype and dt != dtype):
        return None
    if attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", "void", dt):
        return None
    cout, cin, kh, kw = wshape
    if dshape[1] != cin:
        return None
    pad = tuple(int(p) for p in attrs.padding)
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    bias, rank = None, 0
    if bias_expr is not None:
        nb = _normalize_bias(an, bias_expr, cout, dt)
        if nb is None:
            return None
        bias, rank = nb
    spec = ConvSpec(
        cin=cin,
        cout=cout,
        kh=kh,
        kw=kw,
        stride=tuple(int(s) for s in attrs.strides),
        padding=pad,
        dilation=tuple(int(d) for d in attrs.dilation),
        bias_rank=rank,
        relu=relu,
    )
    if (oshape[0], oshape[1], *spec.out_hw(dshape[2], dshape[3])) != oshape:
        return None
    return _Stage(spec=spec, inp=data, weight=weight, bias=bias)


@dataclass
class _Match:
    root: relax.Var  # binding replaced by the call_tir
    spec: FireKernelSpec
    args: list


def _match_fire(an: _Analysis, concat_var, fold_squeeze: bool, fold_bypass: bool) -> _Match | None:
    concat = an.var2val.get(concat_var)
    if _op_name(concat) != _CONCAT:
        return None
    oshape = _static_shape(concat)
    if oshape is None or len(oshape) != 4:
        return None
    axis = int(concat.attrs.axis)
    if axis not in (1, -3):
        return None
    fields = concat.args[0]
    if isinstance(fields, relax.Var):
        fields = an.var2val.get(fields)
    if not isinstance(fields, relax.Tuple) or len(fields.fields) < 2:
        return None
    dtype = _dtype(concat)
    stages = []
    for f in fields.fields:
        if not an.single_use(f):
            return None
        st = _match_stage(an, f, dtype)
        if st is None:
            return None
        stages.append(st)
    s = stages[0].inp
    if not all(st.inp.same_as(s) for st in stages):
        return None  # branches must share the squeeze output
    if len({st.spec.relu for st in stages}) != 1:
        return None  # one branch with ReLU and one without is not a Fire module
    n, cin, h, w = _static_shape(s)

    squeeze = None
    x = s
    if fold_squeeze and isinstance(s, relax.Var) and an.uses[s] == len(stages):
        sq = _match_stage(an, s, dtype)
        if sq is not None:
            squeeze, x = sq, sq.inp
            n, cin, h, w = _static_shape(x)

    root, residual = concat_var, None
    if fold_bypass and an.single_use(concat_var) and len(an.users[concat_var]) == 1:
        # The single user of the concat, if it is add(concat, r) with r of the same shape.
        var = an.users[concat_var][0]
        val = an.var2val.get(var)
        if _op_name(val) == _ADD:
            a, b = val.args
            other = b if a.same_as(concat_var) else a
            if not other.same_as(concat_var) and _static_shape(other) == oshape and _dtype(other) == dtype:
                root, residual = var, other

    spec = FireKernelSpec(
        dtype=dtype,
        n=n,
        cin=cin,
        h=h,
        w=w,
        squeeze=squeeze.spec if squeeze else None,
        branches=tuple(st.spec for st in stages),
        residual=residual is not None,
    )
    if spec.out_shape != oshape:
        return None
    args = [x]
    for st in ([squeeze] if squeeze else []) + stages:
        args.append(st.weight)
        if st.bias is not None:
            args.append(st.bias)
    if residual is not None:
        args.append(residual)
    return _Match(root=root, spec=spec, args=args)


# ----------------------------------------------------------------------------------------------
# The pass
# ----------------------------------------------------------------------------------------------


@relax.expr_functor.mutator
class _FireRewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, fold_squeeze: bool, fold_bypass: bool, layout_free: bool):
        super().__init__(mod)
        self.mod_ = mod
        self.fold_squeeze = fold_squeeze
        self.fold_bypass = fold_bypass
        self.layout_free = layout_free
        self.plan = {}
        self.kernels = {}  # FireKernelSpec -> GlobalVar

    def _gvar(self, spec: FireKernelSpec, args: list):
        # Mark constant weights/biases as layout-free exactly as AttachAttrLayoutFreeBuffers
        # would, so that pass leaves the function (and its name) unchanged.
        free = tuple(i for i, a in enumerate(args) if _is_constant(a)) if self.layout_free else ()
        key = (spec, free)
        gv = self.kernels.get(key)
        if gv is None:
            func = make_fire_kernel(spec).with_attr("op_pattern", 8)  # kOpaque: FuseOps keeps it
            if free:
                func = func.with_attr("layout_free_buffers", list(free))
            gv = self.builder_.add_func(func, spec.name())
            self.kernels[key] = gv
        return gv

    def transform(self) -> tvm.IRModule:
        changed = False
        for gv, func in self.mod_.functions.items():
            if not isinstance(func, relax.Function):
                continue
            an = _Analysis(func)
            self.plan = {}
            for var, val in an.var2val.items():
                if _op_name(val) == _CONCAT:
                    m = _match_fire(an, var, self.fold_squeeze, self.fold_bypass)
                    if m is not None:
                        self.plan[m.root] = m
            if not self.plan:
                continue
            new_func = self.visit_expr(func)
            new_func = relax.analysis.remove_all_unused(new_func)
            self.builder_.update_func(gv, new_func)
            changed = True
        return self.builder_.get() if changed else self.mod_

    def visit_var_binding_(self, binding):
        m = self.plan.get(binding.var)
        if m is None:
            return super().visit_var_binding_(binding)
        args = [self.visit_expr(a) for a in m.args]
        call = relax.call_tir(self._gvar(m.spec, args), args, out_ty=relax.TensorType(m.spec.out_shape, m.spec.dtype))
        call = self.builder_.normalize(call)
        self.builder_.emit_normalized(relax.VarBinding(binding.var, call))


def fuse_fire(
    mod: tvm.IRModule,
    fold_squeeze: bool = False,
    fold_bypass: bool = True,
    layout_free: bool = True,
) -> tvm.IRModule:
    """Rewrite every Fire-module concat in `mod` into one call of a fused TensorIR kernel.

    Parameters
    ----------
    mod : IRModule
        A Relax module before LegalizeOps (high-level ``R.nn.conv2d`` / ``R.concat`` ops),
        e.g. straight from the ONNX importer, with or without FoldConstant applied.
    fold_squeeze : bool
        Also move the squeeze convolution (+bias, ReLU) into the kernel when its output feeds
        only the expand branches (one kernel per Fire module).
    fold_bypass : bool
        Fold ``add(concat, residual)`` into the branch epilogues when the add is the concat's
        only user (bypass variants).
    layout_free : bool
        Give each kernel the ``layout_free_buffers`` attribute for its constant arguments
        (what ``relax.transform.AttachAttrLayoutFreeBuffers`` computes), so that pass keeps the
        kernel's name instead of renaming it ``<name>1``.

    Returns
    -------
    IRModule
        The rewritten module; unchanged (the same object) when nothing matched.
    """
    return _FireRewriter(mod, fold_squeeze, fold_bypass, layout_free).transform()


@tvm.transform.module_pass(opt_level=0, name="FuseFireModules")
class FuseFireModules:
    """Module-pass form of `fuse_fire` (target independent; run before LegalizeOps)."""

    def __init__(self, fold_squeeze: bool = False, fold_bypass: bool = True, layout_free: bool = True):
        self.fold_squeeze = fold_squeeze
        self.fold_bypass = fold_bypass
        self.layout_free = layout_free

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        return fuse_fire(mod, self.fold_squeeze, self.fold_bypass, self.layout_free)


def _has_root_views(func) -> bool:
    body = getattr(func, "body", None)
    block = getattr(body, "block", None)
    return block is not None and len(block.match_buffers) > 0


def lower_fire_views(mod: tvm.IRModule, only_scheduled: bool = True) -> tvm.IRModule:
    """Resolve the per-branch output views (root ``match_buffer``) of scheduled fire kernels.

    Run it after ``MetaScheduleApplyDatabase`` and before
    ``relax.transform.SplitLayoutRewritePreproc``: that pass (TVM 0.27) rebuilds the root block
    of every function it splits and drops its ``match_buffer``s, which leaves the branch views
    undefined ("Buffer Out_0 is used before its definition" at build time). After scheduling the
    views are no longer needed; ``LowerMatchBuffer`` turns them into offsets into ``Out``. With
    `only_scheduled` (default) unscheduled kernels keep their views, so the pass is safe to run
    before tuning too (tuning needs the views).
    """
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or not _has_root_views(func):
            continue
        if not any(gv.name_hint.startswith(p) for p in FIRE_KERNEL_PREFIXES):
            continue
        if only_scheduled and not (func.attrs and func.attrs.get("tirx.is_scheduled", False)):
            continue
        if not func.attrs or "layout_free_buffers" not in func.attrs:
            continue  # no layout rewrite to split: TVM lowers the views with everything else
        lowered = tvm.s_tir.transform.LowerMatchBuffer()(tvm.IRModule({gv: func}))
        updates[gv] = lowered[gv]
    if not updates:
        return mod
    mod = mod.clone()
    for gv, func in updates.items():
        mod[gv] = func
    return mod


@tvm.transform.module_pass(opt_level=0, name="LowerFireViews")
class LowerFireViews:
    """Module-pass form of `lower_fire_views` (place before SplitLayoutRewritePreproc)."""

    def __init__(self, only_scheduled: bool = True):
        self.only_scheduled = only_scheduled

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        return lower_fire_views(mod, self.only_scheduled)


def fire_kernel_names(mod: tvm.IRModule) -> list:
    """Names of the PrimFuncs in `mod` created by this pass, sorted."""
    return sorted(
        gv.name_hint for gv in mod.functions.keys() if any(gv.name_hint.startswith(p) for p in FIRE_KERNEL_PREFIXES)
    )
