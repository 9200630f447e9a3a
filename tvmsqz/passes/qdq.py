"""Fold QuantizeLinear/DequantizeLinear (QDQ) into integer convolutions: the int8 graph.

An int8 model reaches the compiler as QDQ: fp32 operators between `quantize`/`dequantize`
pairs, as TVM's Relax ONNX frontend imports a model made by ONNX Runtime's `quantize_static`,
by NNCF, or by tvmsqz's own quantizer (`tvmsqz.quant.qdq`). Run as it is, that graph computes in
fp32 and adds conversions. `FoldQDQ` rewrites it, without changing what it computes, into

    conv2d(q_x: uint8, q_w: int8, out_dtype=int32)       # the int8 kernel (VNNI on x86)
      -> (acc - z_x * sum(q_w)) * (s_x * s_w[c])          # dequantised accumulator, fp32
      -> + bias -> ReLU -> quantize(s_y, z_y) -> uint8     # epilogue, fused into the conv kernel

by these exact identities (s, z: a tensor's scale and zero point):

* conv2d(dequantize(q_x), dequantize(q_w)) is an integer convolution of the codes, dequantised
  per output channel (weights symmetric, zero point 0 on axis 0; a non-zero activation zero point
  is subtracted through the weight sums; padding then pads with the zero point explicitly);
* quantize commutes with concat and max-pool (quantize is monotone; max-pool's -inf padding
  quantizes to the lowest code), so a quantize after a Fire module's concat moves into both
  expand branches, which then write one uint8 buffer with one scale (the concat-free Fire module
  in int8), and a max-pool runs on codes;
* quantize(dequantize(q, s, z), s, z) == q.

What is left of `quantize`/`dequantize` becomes plain elementwise Relax ops (multiply, round,
clip, cast), which `ConvertLayout` carries into NCHW[x]c and `FuseOps` fuses into the conv that
produces them: requantisation lives in each conv's epilogue. Quantize multiplies by 1/s where
ONNX divides by s: the two can differ only in the last bit of a value exactly half-way between
two codes.

Target independent: the integer conv2d is an ordinary Relax conv2d (the CPU backend lowers the
blocked uint8 x int8 ones to its tensorized kernels, TVM's own legalization the rest).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

__all__ = ["FoldQDQ", "fold_qdq", "has_qdq"]

_Q = "relax.quantize"
_DQ = "relax.dequantize"
_CONV = "relax.nn.conv2d"
_CONCAT = "relax.concat"
_MAXPOOL = "relax.nn.max_pool2d"


def _op(call) -> str:
    return getattr(getattr(call, "op", None), "name", "")


def _const(expr) -> np.ndarray | None:
    """The numpy value of a Relax constant, else None."""
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def _scalar(expr) -> float | None:
    """The value of a constant with one element (a per-tensor scale or zero point), else None."""
    value = _const(expr)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _ndim(expr) -> int:
    return len(expr.ty.shape)


def has_qdq(mod) -> bool:
    """Whether any Relax function of `mod` calls quantize or dequantize."""
    found = []

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and _op(expr) in (_Q, _DQ):
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


@relax.expr_functor.mutator
class _Folder(relax.PyExprMutator):
    """The rewrite of one module (see the module docstring); `folded` counts int8 convs."""

    def __init__(self, mod) -> None:
        super().__init__(mod)
        self.folded = 0

    # -- helpers ---------------------------------------------------------------------------

    def _bound(self, expr):
        """The call a variable is bound to (looked through), or the expression itself."""
        seen = 0
        while isinstance(expr, relax.Var) and seen < 8:
            value = self.lookup_binding(expr)
            if value is None:
                break
            expr = value
            seen += 1
        return expr

    def _emit(self, expr):
        return self.builder_.emit(expr)

    @staticmethod
    def _channel_const(value, like, axis: int = 1):
        """`value` (a scalar or one per channel) as an fp32 constant shaped to broadcast on the
        channel axis of `like`: (1, C, 1, 1) for NCHW. Why not a scalar: scalar constants are
        inlined into the fused kernel's TIR, so every calibration would make new MetaSchedule
        workloads (a shipped database would apply to no one else's model); a tensor is a kernel
        argument, the same workload for any scale."""
        ndim = _ndim(like)
        value = np.asarray(value, np.float32).reshape(-1)
        if ndim < 2:
            return relax.const(np.float32(value[0]), "float32")
        channels = int(like.ty.shape[axis % ndim])
        shape = [1] * ndim
        shape[axis % ndim] = channels
        return relax.const(np.ascontiguousarray(np.broadcast_to(value, (channels,))).reshape(shape), "float32")

    def _quantize_elementwise(self, x, scale: float, zero: float, dtype: str):
        """clip(round(x * (1/s)) + z) cast to `dtype`, as elementwise ops (fused by FuseOps)."""
        info = np.iinfo(dtype)
        f = relax.op.multiply(x, self._channel_const(1.0 / np.float32(scale), x))
        f = relax.op.round(self._emit(f))
        if zero:
            f = relax.op.add(self._emit(f), self._channel_const(zero, x))
        # maximum/minimum with constants, not clip: clip's scalar bounds keep it out of FuseOps'
        # elementwise chains and out of ConvertLayout's layout inference (a transform each)
        f = relax.op.minimum(self._emit(f), relax.const(np.float32(info.max), "float32"))
        f = relax.op.maximum(self._emit(f), relax.const(np.float32(info.min), "float32"))
        return relax.op.astype(self._emit(f), dtype)

    def _dequantize_elementwise(self, q, scale, zero, axis: int):
        """(float(q) - z) * s as elementwise ops; parameters per channel of `axis` (or the
        channel axis for per-tensor ones, see `_channel_const`)."""
        f = relax.op.astype(q, "float32")
        z, s = _const(zero), _const(scale)
        if z is None:
            f = relax.op.subtract(self._emit(f), relax.op.astype(zero, "float32"))
        elif np.any(z):
            f = relax.op.subtract(self._emit(f), self._channel_const(z, q, axis if z.size > 1 else 1))
        return relax.op.multiply(self._emit(f), self._channel_const(s, q, axis if s.size > 1 else 1))

    # -- rules -----------------------------------------------------------------------------

    def _quantized(self, x, scale: float, zero: float, dtype: str):
        """An expression equal to quantize(x, scale, zero) -> dtype, pushed back through concat
        and max-pool and cancelled against a matching dequantize."""
        bound = self._bound(x)
        op = _op(bound)
        if op == _DQ:
            q, s, z = bound.args
            if _dtype(q) == dtype and _scalar(s) == scale and (_scalar(z) or 0.0) == zero:
                return q
        if op == _CONCAT:
            fields = bound.args[0]
            fields = fields.fields if isinstance(fields, relax.Tuple) else None
            if fields is not None:
                parts = [self._emit(self._quantized(f, scale, zero, dtype)) for f in fields]
                return relax.op.concat(parts, axis=int(bound.attrs.axis))
        if op == _MAXPOOL:
            a = bound.attrs
            inner = self._emit(self._quantized(bound.args[0], scale, zero, dtype))
            return relax.op.nn.max_pool2d(
                inner,
                pool_size=[int(v) for v in a.pool_size],
                strides=[int(v) for v in a.strides],
                padding=[int(v) for v in a.padding],
                dilation=[int(v) for v in a.dilation],
                ceil_mode=bool(a.ceil_mode),
                count_include_pad=bool(a.count_include_pad),
                layout=str(a.layout),
                out_layout=str(a.out_layout),
            )
        return relax.op.quantize(
            x, relax.const(np.float32(scale), "float32"), relax.const(zero, dtype), axis=1, out_dtype=dtype
        )

    def _int8_conv(self, call):
        """conv2d(dequantize(q_x), dequantize(q_w)) as an integer conv2d + dequantisation, or None."""
        data, weight = (self._bound(a) for a in call.args[:2])
        a = call.attrs
        if _op(data) != _DQ or _op(weight) != _DQ or int(a.groups) != 1 or str(a.data_layout) != "NCHW":
            return None
        if str(a.kernel_layout) != "OIHW":
            return None
        qx, sx, zx = data.args
        qw, sw, zw = weight.args
        sx, zx = _scalar(sx), _scalar(zx) if _const(zx) is not None else None
        w_codes, w_scale, w_zero = _const(qw), _const(sw), _const(zw)
        # The weights are a constant, or (a `--compress` build) an int8 expression of `main`'s weight
        # parameters (quantized at load: `compress.model`), which is only known by its type here.
        if w_codes is None and (not isinstance(qw, relax.Var) or _dtype(qw) != "int8"):
            return None
        if sx is None or zx is None or w_scale is None or w_zero is None:
            return None
        if np.any(w_zero) or _dtype(qw) != "int8" or _dtype(qx) not in ("uint8", "int8"):
            return None
        out_channels = int(qw.ty.shape[0])
        if w_scale.size not in (1, out_channels) or (w_scale.size > 1 and int(weight.attrs.axis) != 0):
            return None
        if _dtype(qx) == "int8":  # VNNI multiplies unsigned codes: shift them by 128
            shifted = relax.op.add(self._emit(relax.op.astype(qx, "int32")), relax.const(128, "int32"))
            qx = self._emit(relax.op.astype(self._emit(shifted), "uint8"))
            zx += 128
        padding = [int(v) for v in a.padding]
        if zx and any(padding):  # the pad must hold the zero point's code, not 0
            top, left, bottom, right = padding
            width = [0, 0, 0, 0, top, bottom, left, right]
            qx = self._emit(relax.op.nn.pad(qx, width, pad_value=float(zx)))
            padding = [0, 0, 0, 0]
        w = relax.const(w_codes, "int8") if w_codes is not None else qw
        acc = self._emit(
            relax.op.nn.conv2d(
                qx,
                w,
                strides=[int(v) for v in a.strides],
                padding=padding,
                dilation=[int(v) for v in a.dilation],
                out_dtype="int32",
            )
        )
        if zx and w_codes is not None:
            sums = w_codes.astype(np.int64).reshape(out_channels, -1).sum(axis=1) * int(zx)
            acc = self._emit(relax.op.subtract(acc, relax.const(sums.astype(np.int32).reshape(1, -1, 1, 1), "int32")))
        elif zx:  # the same sums as Relax operations on the weights (lifted to load time)
            wide = self._emit(relax.op.astype(qw, "int32"))
            sums = self._emit(relax.op.sum(wide, axis=[1, 2, 3], keepdims=True))
            sums = self._emit(relax.op.reshape(sums, (1, out_channels, 1, 1)))
            sums = self._emit(relax.op.multiply(sums, relax.const(np.int32(zx), "int32")))
            acc = self._emit(relax.op.subtract(acc, sums))
        scale = (np.float32(sx) * np.broadcast_to(w_scale.astype(np.float32).reshape(-1), (out_channels,))).astype(
            np.float32
        )
        self.folded += 1
        f = self._emit(relax.op.astype(acc, "float32"))
        return relax.op.multiply(f, relax.const(scale.reshape(1, -1, 1, 1), "float32"))

    # -- visitor ---------------------------------------------------------------------------

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        op = _op(call)
        if op == _CONV:
            folded = self._int8_conv(call)
            return call if folded is None else folded
        if op == _Q:
            x, s, z = call.args
            scale, zero = _scalar(s), _scalar(z) if _const(z) is not None else None
            dtype = str(call.attrs.out_dtype)
            if scale is None or zero is None or dtype not in ("uint8", "int8"):
                return call
            return self._quantized(x, scale, zero, dtype)
        return call


@relax.expr_functor.mutator
class _Decomposer(_Folder._cls):  # noqa: SLF001 - how TVM derives a decorated mutator
    """What is left of quantize/dequantize with constant parameters, as elementwise ops."""

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        op = _op(call)
        if op == _Q:
            x, s, z = call.args
            scale, zero = _scalar(s), _scalar(z) if _const(z) is not None else None
            dtype = str(call.attrs.out_dtype)
            if scale is None or zero is None or dtype not in ("uint8", "int8"):
                return call
            return self._quantize_elementwise(x, scale, zero, dtype)
        if op == _DQ and _const(call.args[1]) is not None:
            q, s, z = call.args
            return self._dequantize_elementwise(q, s, z, int(call.attrs.axis))
        return call


@relax.expr_functor.mutator
class _Requantizer(_Folder._cls):  # noqa: SLF001 - how TVM derives a decorated mutator
    """One multiply-add per output for a conv's requantisation (run after constant folding).

    maximum(minimum(round((float(acc) * S + B) [ReLU] * K), hi), 0) becomes
    maximum(minimum(round(float(acc) * (S*K) + B*K), hi), 0): S, B, K per-channel constants
    (dequantisation scale, bias, 1/output scale). The ReLU is implied by the lower clip at code 0
    (zero point 0, K > 0); folding the constants can move a value exactly half-way between two
    codes by one code, the price of 2 of the epilogue's 4 float operations. The reference in
    tests/test_int8.py computes this form."""

    def _const_of(self, expr):
        return _const(self._bound(expr)) if isinstance(expr, relax.Var) else _const(expr)

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if _op(call) != "relax.maximum" or not np.all(self._const_of(call.args[1]) == 0):
            return call
        low = self._bound(call.args[0])
        if _op(low) != "relax.minimum":
            return call
        rounded = self._bound(low.args[0])
        if _op(rounded) != "relax.round":
            return call
        scaled = self._bound(rounded.args[0])
        k = self._const_of(scaled.args[1]) if _op(scaled) == "relax.multiply" else None
        if k is None or np.any(k <= 0):
            return call
        value = self._bound(scaled.args[0])
        if _op(value) == "relax.nn.relu":
            value = self._bound(value.args[0])
        bias = self._const_of(value.args[1]) if _op(value) == "relax.add" else None
        dequant = self._bound(value.args[0]) if bias is not None else None
        s = self._const_of(dequant.args[1]) if _op(dequant) == "relax.multiply" else None
        cast = self._bound(dequant.args[0]) if s is not None else None
        if s is None or _op(cast) != "relax.astype" or _dtype(cast.args[0]) != "int32":
            return call
        if any(v.ndim not in (0, _ndim(cast)) for v in (s, bias, k)):
            return call
        folded = self._emit(relax.op.multiply(self._emit(cast), relax.const((s * k).astype(np.float32), "float32")))
        folded = self._emit(relax.op.add(folded, relax.const((bias * k).astype(np.float32), "float32")))
        clipped = self._emit(relax.op.minimum(self._emit(relax.op.round(folded)), low.args[1]))
        return relax.op.maximum(clipped, call.args[1])


def _run(mutator, mod):
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return relax.transform.DeadCodeElimination()(mutator.builder_.get())


def fold_qdq(mod):
    """`mod` with QDQ folded into integer convs (see the module docstring) and dead code removed;
    returns (module, number of int8 convs)."""
    if not has_qdq(mod):
        return mod, 0
    folder = _Folder(mod)
    out = _run(folder, mod)
    out = _run(_Decomposer(out), out)
    # constant weights and biases (dequantised int32 biases, the zero-point sums) become constants
    out = relax.transform.FoldConstant()(out)
    out = _run(_Requantizer(out), out)
    return relax.transform.CanonicalizeBindings()(out), folder.folded


@tvm.transform.module_pass(opt_level=0, name="tvmsqz.FoldQDQ")
class FoldQDQ:
    """Module pass form of `fold_qdq` (for pass sequences)."""

    def transform_module(self, mod, ctx):
        return fold_qdq(mod)[0]
