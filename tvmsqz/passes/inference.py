"""Inference-time clean-up before the layout passes: `Dropout` is the identity.

The ONNX importer turns `Dropout` (in every Caffe2-era SqueezeNet and in training-mode exports)
into `R.nn.dropout`, a tuple (output, mask). `DecomposeOpsForInference` keeps it, and Relax's
`ConvertLayout` cannot convert a tuple-producing op that infers one layout for both items
("Expected nested to match tuple"): the blocked pipeline stopped there. At inference the output
is the input and the mask is all ones, so the call becomes that tuple and the bindings fold.
"""

from __future__ import annotations

from .rewrite import mutator_pass


def strip_dropout():
    """A module pass: every `R.nn.dropout(x)` -> `(x, ones_like(x))` (folded by the bindings
    canonicalization that follows: the unused mask is dead code)."""
    import tvm
    from tvm import relax

    dropout = tvm.ir.Op.get("relax.nn.dropout")

    @relax.expr_functor.mutator
    class _Strip(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if isinstance(call, relax.Call) and call.op.same_as(dropout):
                x = call.args[0]
                return relax.Tuple([x, relax.op.ones_like(x)])
            return call

    return mutator_pass("StripDropout", lambda mod, func: _Strip(mod))
