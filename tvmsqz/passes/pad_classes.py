"""Pad the classifier's output channels to a multiple of the register tile, slice at the end.

Why: SqueezeNet's last conv has 1000 outputs, which no 16-lane block divides; in NCHW8c its
125 channel blocks (5^3) leave the direct-conv schedule one output block per register tile, so
each broadcast input value feeds a single 8-lane FMA and the kernel is bound by broadcasts
(about 90 GFLOP/s per core against 115 for the other convs). With the outputs padded to 1024
(zero weights, zero bias) the conv is NCHW16c with 64 blocks: register tiles of 2-4 blocks,
2.4% more multiplies. The padded channels stay zero through ReLU and the global average
pool, and one slice of the (1, 1024) scores gives back the model's (1, 1000).

`PadClassifier(multiple)` rewrites exactly the chain an image classifier ends with:

    conv2d(x, W) [+ bias] -> relu -> mean(H, W) -> reshape/flatten to (N, C)

and, in an int8 model (`passes.qdq`), the same chain with its elementwise requantisation
steps between the integer conv and the mean and after it:

    conv2d(x, W: int8) -> elementwise* -> mean(H, W) -> elementwise* -> reshape to (N, C)

(elementwise: casts, rounding, min/max and arithmetic with scalar or per-channel constants,
which are padded with zeros like the weights); any other graph stays as it is.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

#: Relax constants' class (`tvm.ir.expr.GenericConst` in TVM 0.27).
_CONST = type(relax.const(0.0))
_CHAIN = ("relax.reshape", "relax.mean", "relax.nn.relu", "relax.add", "relax.nn.conv2d")


def _op(value) -> str:
    return getattr(getattr(value, "op", None), "name", "") if isinstance(value, relax.Call) else ""


def _const(expr, bindings: dict):
    """The constant behind `expr` (through a reshape of a constant), else None."""
    if isinstance(expr, relax.Var) and expr in bindings:
        expr = bindings[expr]
    if isinstance(expr, _CONST):
        return expr
    if _op(expr) == "relax.reshape" and isinstance(expr.args[0], _CONST):
        return expr.args[0]
    return None


def _weight(expr, bindings: dict, params: set):
    """The constant behind `expr` (as `_const`), or `expr` itself when it is a weight parameter
    of `main` (a `--compress` build: `passes.params`) or a reshape of one; else None."""
    found = _const(expr, bindings)
    if found is not None:
        return found
    inner = bindings.get(expr, expr) if isinstance(expr, relax.Var) else expr
    if inner in params or (_op(inner) == "relax.reshape" and inner.args[0] in params):
        return expr
    return None


def _padded(expr, axis: int, extra: int):
    """`expr` (a constant or a weight parameter) zero padded by `extra` along `axis`: numpy for a
    constant, a Relax pad for a parameter (lifted to load time with the other weight packing)."""
    if isinstance(expr, _CONST):
        value = expr.value.numpy()
        grow = [(0, 0)] * value.ndim
        grow[axis] = (0, extra)
        return relax.const(np.pad(value, grow), str(value.dtype))
    ndim = len(expr.ty.shape)
    width = [0] * (2 * ndim)
    width[2 * axis + 1] = extra
    return relax.op.nn.pad(expr, width)


def _classifier_chain(func: relax.Function) -> dict | None:
    """{name: binding var} of the conv -> bias -> relu -> mean -> reshape chain ending `func`, or None."""
    bindings = {b.var: b.value for blk in func.body.blocks for b in blk.bindings}
    num_input = func.attrs.get("num_input") if func.attrs else None
    params = set(func.params[int(num_input) :]) if num_input is not None else set()
    out = func.body.body
    if not isinstance(out, relax.Var) or out not in bindings:
        return None
    chain: dict = {"params": params}
    var = out
    for name in _CHAIN:
        value = bindings.get(var)
        if _op(value) != name:
            if name == "relax.add":  # a conv without bias
                chain["relax.add"] = None
                continue
            return None
        chain[name] = var
        if name == "relax.add":
            bias = [a for a in value.args if _weight(a, bindings, params) is not None]
            if len(bias) != 1:
                return None
            chain["bias"] = _weight(bias[0], bindings, params)
            var = next(a for a in value.args if a is not bias[0])
        else:
            var = value.args[0]
    conv = bindings[chain["relax.nn.conv2d"]]
    weight = conv.args[1]
    if not (isinstance(weight, _CONST) or weight in params):
        return None
    if conv.attrs.groups != 1 or conv.attrs.kernel_layout != "OIHW":
        return None
    mean = bindings[chain["relax.mean"]]
    if sorted(int(a) for a in mean.attrs.axis) != [2, 3] or not mean.attrs.keepdims:
        return None
    return chain


#: Ops an int8 classifier chain may hold between its conv, its mean and its final reshape.
_ELEMENTWISE = frozenset(
    f"relax.{name}"
    for name in ("add", "subtract", "multiply", "divide", "maximum", "minimum", "round", "astype", "nn.relu")
)


def _int8_chain(func: relax.Function) -> tuple[list, set] | None:
    """([output var, ..., reshape var, ..., mean var, ..., conv var], the vars after the reshape)
    of an int8 classifier, or None."""
    bindings = {b.var: b.value for blk in func.body.blocks for b in blk.bindings}
    var = func.body.body
    chain: list = []
    after: set = set()
    reshape = mean = False
    while isinstance(var, relax.Var) and var in bindings:
        value = bindings[var]
        op = _op(value)
        chain.append(var)
        if not reshape:
            after.add(var)
        if op == "relax.nn.conv2d":
            ok = (
                mean
                and isinstance(value.args[1], (_CONST, relax.Var))  # a Var: weights bound at load
                and str(value.args[1].ty.dtype) == "int8"
                and value.attrs.groups == 1
                and value.attrs.kernel_layout == "OIHW"
            )
            return (chain, after) if ok else None
        if op == "relax.reshape" and not reshape:
            reshape = True
            after.discard(var)
            var = value.args[0]
            continue
        if op == "relax.mean":
            if not reshape or mean or sorted(int(a) for a in value.attrs.axis) != [2, 3] or not value.attrs.keepdims:
                return None
            mean = True
            var = value.args[0]
            continue
        if op not in _ELEMENTWISE:
            return None
        moving = [a for a in value.args if isinstance(a, relax.Var)]
        if len(moving) != 1 or any(not isinstance(a, (_CONST, relax.Var)) for a in value.args):
            return None
        var = moving[0]
    return None


def _pad_channels(const, classes: int, padded: int):
    """A constant of the chain with its class axis (of length `classes`) zero padded; scalars as they are."""
    value = const.value.numpy()
    axes = [i for i, d in enumerate(value.shape) if d == classes]
    if value.size == 1 or not axes:
        return const
    grow = [(0, 0)] * value.ndim
    grow[axes[0]] = (0, padded - classes)
    return relax.const(np.pad(value, grow), str(value.dtype))


def _pad_int8(mod: tvm.IRModule, func: relax.Function, found: tuple, multiple: int, block: int | None):
    """`pad_classifier` for an int8 chain (`_int8_chain`): every op up to the reshape re-emitted
    on padded operands, the slice right after the reshape."""
    chain, after = found
    bindings = {b.var: b.value for blk in func.body.blocks for b in blk.bindings}
    conv = bindings[chain[-1]]
    classes = int(conv.args[1].ty.shape[0])
    padded = -(-classes // multiple) * multiple
    if padded == classes or (block and classes % block == 0):
        return mod
    new_weight = _padded(conv.args[1], 0, padded - classes)
    members = set(chain) - after
    final = next(v for v in chain if _op(bindings[v]) == "relax.reshape")

    @relax.expr_functor.mutator
    class _Pad(relax.PyExprMutator):
        def visit_var_binding_(self, binding) -> None:
            if binding.var not in members:
                super().visit_var_binding_(binding)
                return
            value = binding.value
            if binding.var.same_as(chain[-1]):
                weight = new_weight
                if not isinstance(weight, _CONST):  # a weight expression: pad the (remapped) variable
                    weight = self.builder_.emit(_padded(self.visit_expr(value.args[1]), 0, padded - classes))
                new = relax.op.nn.conv2d(self.visit_expr(value.args[0]), weight, **_conv_kwargs(value.attrs))
            elif binding.var.same_as(final):
                batch = int(binding.var.ty.shape[0])
                flat = self.builder_.emit(relax.op.reshape(self.visit_expr(value.args[0]), (batch, padded)))
                new = relax.op.strided_slice(flat, axes=[1], begin=[0], end=[classes])
            else:
                args = [
                    _pad_channels(a, classes, padded) if isinstance(a, _CONST) else self.visit_expr(a)
                    for a in value.args
                ]
                new = relax.Call(value.op, args, value.attrs)
            emit = self.builder_.emit if isinstance(binding.var, relax.DataflowVar) else self.builder_.emit_output
            self.set_var_remap(binding.var, emit(new))

    out = tvm.IRModule(dict(mod.functions.items()))
    out["main"] = _Pad().visit_expr(func)
    return out


def pad_classifier(mod: tvm.IRModule, multiple: int, block: int | None = None) -> tvm.IRModule:
    """`mod` with its classifier conv's outputs padded to a multiple of `multiple` (see above);
    with `block`, only when the channel block does not divide them already (a 16- or 32-class
    head is blocked as it is)."""
    func = mod["main"]
    chain = _classifier_chain(func)
    if chain is None:
        int8 = _int8_chain(func)
        return mod if int8 is None else _pad_int8(mod, func, int8, multiple, block)
    bindings = {b.var: b.value for blk in func.body.blocks for b in blk.bindings}
    conv = bindings[chain["relax.nn.conv2d"]]
    classes = int(conv.args[1].ty.shape[0])
    padded = -(-classes // multiple) * multiple
    if padded == classes or (block and classes % block == 0):
        return mod
    new_weight = _padded(conv.args[1], 0, padded - classes)
    bias = chain.get("bias")
    if bias is not None and isinstance(bias, _CONST):
        value = bias.value.numpy().reshape(-1)
        bias = relax.const(np.pad(value, (0, padded - classes)).reshape(1, padded, 1, 1))
    targets = {chain[k]: k for k in _CHAIN if chain.get(k) is not None}

    @relax.expr_functor.mutator
    class _Pad(relax.PyExprMutator):
        def visit_var_binding_(self, binding) -> None:
            kind = targets.get(binding.var)
            if kind is None:
                super().visit_var_binding_(binding)
                return
            value = binding.value
            if kind == "relax.nn.conv2d":
                weight = new_weight
                if not isinstance(weight, _CONST):  # a weight expression: pad the (remapped) variable
                    weight = self.builder_.emit(_padded(self.visit_expr(value.args[1]), 0, padded - classes))
                new = relax.op.nn.conv2d(self.visit_expr(value.args[0]), weight, **_conv_kwargs(value.attrs))
            elif kind == "relax.add":
                conv_var = chain["relax.nn.conv2d"]
                new_bias = bias
                if not isinstance(bias, _CONST):  # a weight parameter: reshaped to (1, C, 1, 1), padded
                    shaped = self.builder_.emit(relax.op.reshape(self.visit_expr(bias), (1, classes, 1, 1)))
                    new_bias = self.builder_.emit(_padded(shaped, 1, padded - classes))
                new = relax.op.add(self.get_var_remap(conv_var), new_bias)
            elif kind == "relax.nn.relu":
                new = relax.op.nn.relu(self.visit_expr(value.args[0]))
            elif kind == "relax.mean":
                new = relax.op.mean(self.visit_expr(value.args[0]), axis=[2, 3], keepdims=True)
            else:  # the final reshape to (N, classes): reshape to (N, padded), then slice
                batch = int(binding.var.ty.shape[0])
                flat = self.builder_.emit(relax.op.reshape(self.visit_expr(value.args[0]), (batch, padded)))
                new = relax.op.strided_slice(flat, axes=[1], begin=[0], end=[classes])
            emit = self.builder_.emit if isinstance(binding.var, relax.DataflowVar) else self.builder_.emit_output
            self.set_var_remap(binding.var, emit(new))

    new_func = _Pad().visit_expr(func)
    out = tvm.IRModule(dict(mod.functions.items()))
    out["main"] = new_func
    return out


def _conv_kwargs(attrs) -> dict:
    return {
        "strides": attrs.strides,
        "padding": attrs.padding,
        "dilation": attrs.dilation,
        "groups": attrs.groups,
        "data_layout": attrs.data_layout,
        "kernel_layout": attrs.kernel_layout,
        "out_layout": attrs.out_layout,
        "out_dtype": None if str(attrs.out_dtype) in ("", "void") else attrs.out_dtype,
    }


@tvm.transform.module_pass(opt_level=0, name="PadClassifier")
class PadClassifier:
    """Module-pass form of `pad_classifier` (runs before the layout conversion)."""

    def __init__(self, multiple: int, block: int | None = None) -> None:
        self.multiple = multiple
        self.block = block

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(pad_classifier(mod, self.multiple, self.block))
