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

and leaves any other graph as it is.
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


def _classifier_chain(func: relax.Function) -> dict | None:
    """{name: binding var} of the conv -> bias -> relu -> mean -> reshape chain ending `func`, or None."""
    bindings = {b.var: b.value for blk in func.body.blocks for b in blk.bindings}
    out = func.body.body
    if not isinstance(out, relax.Var) or out not in bindings:
        return None
    chain: dict = {}
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
            bias = [a for a in value.args if _const(a, bindings) is not None]
            if len(bias) != 1:
                return None
            chain["bias"] = _const(bias[0], bindings)
            var = next(a for a in value.args if a is not bias[0])
        else:
            var = value.args[0]
    conv = bindings[chain["relax.nn.conv2d"]]
    if not isinstance(conv.args[1], _CONST) or conv.attrs.groups != 1 or conv.attrs.kernel_layout != "OIHW":
        return None
    mean = bindings[chain["relax.mean"]]
    if sorted(int(a) for a in mean.attrs.axis) != [2, 3] or not mean.attrs.keepdims:
        return None
    return chain


def pad_classifier(mod: tvm.IRModule, multiple: int, block: int | None = None) -> tvm.IRModule:
    """`mod` with its classifier conv's outputs padded to a multiple of `multiple` (see above);
    with `block`, only when the channel block does not divide them already (a 16- or 32-class
    head is blocked as it is)."""
    func = mod["main"]
    chain = _classifier_chain(func)
    if chain is None:
        return mod
    bindings = {b.var: b.value for blk in func.body.blocks for b in blk.bindings}
    conv = bindings[chain["relax.nn.conv2d"]]
    weight = conv.args[1].value.numpy()
    classes = weight.shape[0]
    padded = -(-classes // multiple) * multiple
    if padded == classes or (block and classes % block == 0):
        return mod
    grow = [(0, padded - classes)] + [(0, 0)] * (weight.ndim - 1)
    new_weight = relax.const(np.pad(weight, grow))
    new_bias = None
    if chain.get("bias") is not None:
        bias = chain["bias"].value.numpy().reshape(-1)
        new_bias = relax.const(np.pad(bias, (0, padded - classes)).reshape(1, padded, 1, 1))
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
                new = relax.op.nn.conv2d(self.visit_expr(value.args[0]), new_weight, **_conv_kwargs(value.attrs))
            elif kind == "relax.add":
                conv_var = chain["relax.nn.conv2d"]
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
