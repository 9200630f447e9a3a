"""The frame shared by the Relax rewrites here: a mutator over every Relax function, then the
bindings canonicalized and dead code removed (what a rewrite leaves behind: the replaced
producer, an unused tuple item)."""

from __future__ import annotations

from collections.abc import Callable


def count_uses(func) -> dict:
    """How often each Relax var is used in `func`'s body (binding definitions not counted): a
    rewrite that folds a producer into its consumer needs the producer to have no other use."""
    from tvm import relax

    uses: dict = {}

    def visit(expr) -> None:
        if isinstance(expr, relax.Var):
            uses[expr] = uses.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return uses


def mutator_pass(name: str, make_mutator: Callable):
    """A module pass named `name`: `make_mutator(mod, func).visit_expr(func)` for every Relax
    function of the module, then CanonicalizeBindings and DeadCodeElimination."""
    import tvm
    from tvm import relax

    def transform(mod, ctx):
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = make_mutator(mod, func).visit_expr(func)
        return mod

    return tvm.transform.Sequential(
        [
            tvm.transform.module_pass(transform, opt_level=0, name=name),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
        ],
        name=name,
    )
