"""Batch norm folded into the convolution it follows, at import.

SqueezeNext puts a batch norm after every conv (111 of them). Exported in training-preserving
mode (or by tools that keep `BatchNormalization`), the ONNX importer makes each one
`R.nn.batch_norm`, which `DecomposeOpsForInference` turns into four element-wise ops
(subtract, divide, multiply, add) in every conv's epilogue: slower kernels, and kernels whose
workloads match no tuned record. At inference a batch norm is a per-channel affine map, so
when the conv's weight and the statistics are constants it folds into the weight and a bias:

    s = gamma / sqrt(var + eps);  W' = W * s (per output channel);  b' = (b - mean) * s + beta

The folded graph is exactly what the TorchScript exporter writes for an eval-mode model
(conv + bias), so the two forms of one network compile to the same kernels. The arithmetic
runs in float64 and is rounded once to the weight's dtype.
"""

from __future__ import annotations

import numpy as np

from .rewrite import count_uses, mutator_pass


def fold_batchnorm():
    """A module pass: `batch_norm(conv2d(x, W) [+ b], gamma, beta, mean, var)[0]` with constant
    operands -> `conv2d(x, W') + b'`. A batch norm whose conv has another use, non-constant
    operands or a non-OIHW kernel is left alone (decomposed later, still correct)."""
    import tvm
    from tvm import relax

    batch_norm = tvm.ir.Op.get("relax.nn.batch_norm")
    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    add = tvm.ir.Op.get("relax.add")

    def constant(expr) -> np.ndarray | None:
        return expr.value.numpy() if isinstance(expr, tvm.ir.Constant) else None

    @relax.expr_functor.mutator
    class _Fold(relax.PyExprMutator):
        def __init__(self, mod, uses: dict) -> None:
            super().__init__(mod)
            self.uses = uses

        def _producer(self, expr):
            """The call bound to `expr` when `expr` is a var used once (else None)."""
            if not isinstance(expr, relax.Var) or self.uses.get(expr, 0) != 1:
                return None
            value = self.lookup_binding(expr)
            return value if isinstance(value, relax.Call) else None

        def visit_tuple_getitem_(self, node):
            node = super().visit_tuple_getitem_(node)
            if not isinstance(node, relax.TupleGetItem) or node.index != 0:
                return node
            bn = node.tuple_value
            if isinstance(bn, relax.Var):
                bn = self.lookup_binding(bn)
            if not (isinstance(bn, relax.Call) and bn.op.same_as(batch_norm)) or int(bn.attrs.axis) != 1:
                return node
            stats = [constant(a) for a in bn.args[1:5]]
            if any(s is None for s in stats):
                return node
            producer, bias = self._producer(bn.args[0]), None
            if producer is not None and producer.op.same_as(add):
                bias = constant(producer.args[1])
                producer = self._producer(producer.args[0]) if bias is not None else None
            if producer is None or not producer.op.same_as(conv2d) or producer.attrs.kernel_layout != "OIHW":
                return node
            if producer.attrs.data_layout != "NCHW" or producer.attrs.out_layout not in ("", "NCHW"):
                return node
            weight = constant(producer.args[1])
            if weight is None:
                return node
            gamma, beta, mean, var = (s.astype(np.float64).reshape(-1) for s in stats)
            cout = weight.shape[0]
            if bias is not None and bias.size not in (1, cout):
                return node
            scale = gamma / np.sqrt(var + float(bn.attrs.epsilon))
            folded_w = weight.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
            b = np.zeros(cout) if bias is None else np.broadcast_to(bias.astype(np.float64).reshape(-1), (cout,))
            folded_b = (b - mean) * scale + beta
            dtype = weight.dtype
            conv = relax.Call(conv2d, [producer.args[0], relax.const(folded_w.astype(dtype))], producer.attrs)
            return relax.op.add(conv, relax.const(folded_b.astype(dtype).reshape(1, cout, 1, 1)))

    return mutator_pass("FoldBatchNorm", lambda mod, func: _Fold(mod, count_uses(func)))
