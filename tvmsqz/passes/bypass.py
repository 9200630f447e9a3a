"""Bypass adds pushed through the Fire concat, so each expand conv adds its own slice.

The SqueezeNet paper's bypass variants end a Fire module with `concat(e1, e3) + x`. Fused as is,
that is one `concatenate_add` kernel per bypassed module: a full read of both branches and the
bypass and a full write, after the convs wrote the branches. Pushed through the concat,

    concat([e1, e3], axis=1) + x  ->  concat([e1 + x[:, :k1], e3 + x[:, k1:]], axis=1)

each add lands in its expand conv's epilogue (FuseOps fuses the element-wise add and the slice
of `x` into the conv that produces its other operand), and the concat is then a plain concat of
two conv kernels, which `concat_free.WriteIntoConcat` removes in the blocked layout: the expand
convs write straight into the shared buffer and add the bypass in the same pass.
"""

from __future__ import annotations

from .rewrite import count_uses, mutator_pass


def _static_channels(expr) -> int | None:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    if shape is None or len(shape) < 2:
        return None
    try:
        return int(shape[1])
    except TypeError:  # a symbolic channel count
        return None


def _static_shape(expr) -> tuple | None:
    ty = getattr(expr, "ty", None)
    shape = getattr(ty, "shape", None)
    try:
        return (str(ty.dtype), *(int(d) for d in shape)) if shape is not None else None
    except TypeError:
        return None


def push_bypass_through_concat():
    """A module pass: `add(concat(parts, axis=1), x)` with a single-use concat and `x` of the
    concat's shape -> `concat([add(part, x[:, o:o+k]) ...], axis=1)`. Anything else is left alone."""
    import tvm
    from tvm import relax

    concat = tvm.ir.Op.get("relax.concat")
    add = tvm.ir.Op.get("relax.add")

    @relax.expr_functor.mutator
    class _Push(relax.PyExprMutator):
        def __init__(self, mod, uses: dict) -> None:
            super().__init__(mod)
            self.uses = uses

        def _concat_of(self, expr):
            if not isinstance(expr, relax.Var) or self.uses.get(expr, 0) != 1:
                return None
            value = self.lookup_binding(expr)
            if not (isinstance(value, relax.Call) and value.op.same_as(concat)) or int(value.attrs.axis) != 1:
                return None
            parts = value.args[0]
            return list(parts.fields) if isinstance(parts, relax.Tuple) else None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call, relax.Call) and call.op.same_as(add)):
                return call
            for side in (0, 1):
                parts, other = self._concat_of(call.args[side]), call.args[1 - side]
                if parts is None:
                    continue
                widths = [_static_channels(p) for p in parts]
                total = _static_channels(call.args[side])
                if None in widths or total is None or _static_channels(other) != total:
                    continue
                if _static_shape(call.args[side]) != _static_shape(other) or _static_shape(other) is None:
                    continue  # a broadcast add, or one with a symbolic shape: leave it
                summed, offset = [], 0
                for part, width in zip(parts, widths, strict=True):
                    piece = relax.op.strided_slice(other, axes=[1], begin=[offset], end=[offset + width])
                    summed.append(relax.op.add(part, piece) if side == 0 else relax.op.add(piece, part))
                    offset += width
                return relax.op.concat(summed, axis=1)
            return call

    return mutator_pass("PushBypassThroughConcat", lambda mod, func: _Push(mod, count_uses(func)))
