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

import functools
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

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
# TensorIR generation (TVMScript text with concrete shapes, parsed once per distinct kernel)
# ----------------------------------------------------------------------------------------------


def _i(v: int) -> str:
    return f"T.int64({int(v)})"


def _shape(dims) -> str:
    return "(" + ", ".join(_i(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _bias_index(rank: int, c: str) -> str:
    zero = _i(0)
    return {1: f"[{c}]", 3: f"[{c}, {zero}, {zero}]", 4: f"[{zero}, {c}, {zero}, {zero}]"}[rank]


def _bias_shape(rank: int, c: int) -> tuple:
    return {1: (c,), 3: (c, 1, 1), 4: (1, c, 1, 1)}[rank]


def _offset(expr: str, k: int) -> str:
    return expr if k == 0 else f"{expr} + {_i(k)}"


def _emit_conv_stage(
    lines: list,
    prefix: str,
    spec: ConvSpec,
    dtype: str,
    n: int,
    src: str,
    src_hw: tuple,
    w_buf: str,
    b_buf: str | None,
    dst: str,
    dst_offset: int,
    res: str | None,
) -> None:
    """Append pad / conv / epilogue blocks of one stage (inside the root block)."""
    ind = " " * 8
    h, w = src_hw
    oh, ow = spec.out_hw(h, w)
    pt, pl, pb, pr = spec.padding
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    zero = f"T.{dtype}(0)"

    # Pad block (skipped when there is no padding: the conv reads its source directly).
    if any(spec.padding):
        hp, wp = h + pt + pb, w + pl + pr
        pad = f"{prefix}_pad_temp"
        lines.append(f"{ind}{pad} = T.sblock_alloc_buffer({_shape((n, spec.cin, hp, wp))}, \"{dtype}\")")
        conds = []
        if pt:
            conds.append(f"{_i(pt)} <= v_i2")
        if pb:
            conds.append(f"v_i2 < {_i(pt + h)}")
        if pl:
            conds.append(f"{_i(pl)} <= v_i3")
        if pr:
            conds.append(f"v_i3 < {_i(pl + w)}")
        row = f"v_i2 - {_i(pt)}" if pt else "v_i2"
        col = f"v_i3 - {_i(pl)}" if pl else "v_i3"
        read = f"{src}[v_i0, v_i1, {row}, {col}]"
        lines += [
            f"{ind}for i0, i1, i2, i3 in T.grid({_i(n)}, {_i(spec.cin)}, {_i(hp)}, {_i(wp)}):",
            f"{ind}    with T.sblock(\"{pad}\"):",
            f"{ind}        v_i0, v_i1, v_i2, v_i3 = T.axis.remap(\"SSSS\", [i0, i1, i2, i3])",
            f"{ind}        {pad}[v_i0, v_i1, v_i2, v_i3] = T.if_then_else({' and '.join(conds)}, {read}, {zero})",
        ]
        src = pad

    acc = f"{prefix}_conv2d_nchw"
    lines.append(f"{ind}{acc} = T.sblock_alloc_buffer({_shape((n, spec.cout, oh, ow))}, \"{dtype}\")")
    yy = "v_yy" if sh == 1 else f"v_yy * {_i(sh)}"
    xx = "v_xx" if sw == 1 else f"v_xx * {_i(sw)}"
    ry = "v_ry" if dh == 1 else f"v_ry * {_i(dh)}"
    rx = "v_rx" if dw == 1 else f"v_rx * {_i(dw)}"
    lines += [
        f"{ind}for nn, ff, yy, xx, rc, ry, rx in T.grid({_i(n)}, {_i(spec.cout)}, {_i(oh)}, {_i(ow)}, "
        f"{_i(spec.cin)}, {_i(spec.kh)}, {_i(spec.kw)}):",
        f"{ind}    with T.sblock(\"{acc}\"):",
        f"{ind}        v_nn, v_ff, v_yy, v_xx, v_rc, v_ry, v_rx = T.axis.remap(\"SSSSRRR\", [nn, ff, yy, xx, rc, ry, rx])",
        f"{ind}        with T.init():",
        f"{ind}            {acc}[v_nn, v_ff, v_yy, v_xx] = {zero}",
        f"{ind}        {acc}[v_nn, v_ff, v_yy, v_xx] = {acc}[v_nn, v_ff, v_yy, v_xx] + "
        f"{src}[v_nn, v_rc, {yy} + {ry}, {xx} + {rx}] * {w_buf}[v_ff, v_rc, v_ry, v_rx]",
    ]

    # Epilogue: bias, ReLU, residual; writes its channel slice of `dst` directly.
    val = f"{acc}[v_ax0, v_ax1, v_ax2, v_ax3]"
    if b_buf is not None:
        val = f"{val} + {b_buf}{_bias_index(spec.bias_rank, 'v_ax1')}"
    if spec.relu:
        val = f"T.max({val}, {zero})"
    if res is not None:
        val = f"{val} + {res}[v_ax0, {_offset('v_ax1', dst_offset)}, v_ax2, v_ax3]"
    lines += [
        f"{ind}for ax0, ax1, ax2, ax3 in T.grid({_i(n)}, {_i(spec.cout)}, {_i(oh)}, {_i(ow)}):",
        f"{ind}    with T.sblock(\"{prefix}_epilogue\"):",
        f"{ind}        v_ax0, v_ax1, v_ax2, v_ax3 = T.axis.remap(\"SSSS\", [ax0, ax1, ax2, ax3])",
        f"{ind}        {dst}[v_ax0, v_ax1, v_ax2, v_ax3] = {val}",
    ]


def fire_kernel_source(spec: FireKernelSpec) -> str:
    """TVMScript text of the fused kernel for `spec` (parameters in call order, output last)."""
    dt = spec.dtype
    params = [f"X: T.Buffer({_shape((spec.n, spec.cin, spec.h, spec.w))}, \"{dt}\")"]
    sq = spec.squeeze
    if sq is not None:
        params.append(f"W_squeeze: T.Buffer({_shape((sq.cout, sq.cin, sq.kh, sq.kw))}, \"{dt}\")")
        if sq.bias_rank:
            params.append(f"B_squeeze: T.Buffer({_shape(_bias_shape(sq.bias_rank, sq.cout))}, \"{dt}\")")
    for k, b in enumerate(spec.branches):
        params.append(f"W_{k}: T.Buffer({_shape((b.cout, b.cin, b.kh, b.kw))}, \"{dt}\")")
        if b.bias_rank:
            params.append(f"B_{k}: T.Buffer({_shape(_bias_shape(b.bias_rank, b.cout))}, \"{dt}\")")
    if spec.residual:
        params.append(f"Residual: T.Buffer({_shape(spec.out_shape)}, \"{dt}\")")
    params.append(f"Out: T.Buffer({_shape(spec.out_shape)}, \"{dt}\")")

    n, c_out, oh, ow = spec.out_shape
    lines = [
        "@T.prim_func(private=True, s_tir=True)",
        f"def {spec.name()}({', '.join(params)}):",
        '    T.func_attr({"tirx.noalias": True})',
        '    with T.sblock("root"):',
    ]
    # One view per branch onto its channel slice of Out: each epilogue is then the only writer
    # of its buffer (TensorIR's "complete block" rule), so the schedule can move it into the
    # tiles of its convolution, and lowering turns the views into offsets into Out.
    offset = 0
    for k, b in enumerate(spec.branches):
        strides = f", strides={_shape((c_out * oh * ow, oh * ow, ow, 1))}" if n > 1 else ""
        lines.append(
            f"        Out_{k} = T.match_buffer(Out[0:{n}, {offset}:{offset + b.cout}, 0:{oh}, 0:{ow}], "
            f"{_shape((n, b.cout, oh, ow))}, \"{dt}\", elem_offset={_i(offset * oh * ow)}{strides})"
        )
        offset += b.cout
    src, src_hw = "X", (spec.h, spec.w)
    if sq is not None:
        mid_h, mid_w = spec.mid_hw
        lines.append(
            f"        squeeze_out = T.sblock_alloc_buffer({_shape((n, sq.cout, mid_h, mid_w))}, \"{dt}\")"
        )
        _emit_conv_stage(
            lines, "squeeze", sq, dt, n, "X", src_hw, "W_squeeze",
            "B_squeeze" if sq.bias_rank else None, "squeeze_out", 0, None,
        )
        src, src_hw = "squeeze_out", (mid_h, mid_w)
    offset = 0
    for k, b in enumerate(spec.branches):
        _emit_conv_stage(
            lines, f"expand{k}", b, dt, n, src, src_hw, f"W_{k}",
            f"B_{k}" if b.bias_rank else None, f"Out_{k}", offset,
            "Residual" if spec.residual else None,
        )
        offset += b.cout
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=256)
def make_fire_kernel(spec: FireKernelSpec) -> tvm.tirx.PrimFunc:
    """Parse the generated TVMScript into a PrimFunc (cached: PrimFuncs are immutable)."""
    return tvm.script.from_source(fire_kernel_source(spec))


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
        cin=cin, cout=cout, kh=kh, kw=kw,
        stride=tuple(int(s) for s in attrs.strides),
        padding=pad,
        dilation=tuple(int(d) for d in attrs.dilation),
        bias_rank=rank, relu=relu,
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
            if (
                not other.same_as(concat_var)
                and _static_shape(other) == oshape
                and _dtype(other) == dtype
            ):
                root, residual = var, other

    spec = FireKernelSpec(
        dtype=dtype, n=n, cin=cin, h=h, w=w,
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
        call = relax.call_tir(
            self._gvar(m.spec, args), args, out_ty=relax.TensorType(m.spec.out_shape, m.spec.dtype)
        )
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

    def __init__(
        self, fold_squeeze: bool = False, fold_bypass: bool = True, layout_free: bool = True
    ):
        self.fold_squeeze = fold_squeeze
        self.fold_bypass = fold_bypass
        self.layout_free = layout_free

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:  # noqa: ARG002
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

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:  # noqa: ARG002
        return lower_fire_views(mod, self.only_scheduled)


def fire_kernel_names(mod: tvm.IRModule) -> list:
    """Names of the PrimFuncs in `mod` created by this pass, sorted."""
    return sorted(
        gv.name_hint
        for gv in mod.functions.keys()
        if any(gv.name_hint.startswith(p) for p in FIRE_KERNEL_PREFIXES)
    )
