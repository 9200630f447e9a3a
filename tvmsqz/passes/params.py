"""Weights as parameters bound at load time, for artifacts whose weights live in a weight file.

Why: a `--compress` artifact keeps its weights out of the compiled code (they are decoded from
`tvmsqz.weightfile` at load), but its kernels still want them pre-packed: channel-blocked,
Winograd-transformed, in the layouts MetaSchedule's tuned schedules rewrote them to. With
constant weights `FoldConstant` does that packing at compile time; with parameters the same
Relax operations are lifted by TVM's `LiftTransformParams` into functions the runtime calls once
at load, and `main` takes their results. Two lifts happen: the first right after the graph passes
(so the tuned kernels see the same layout-free weight buffers, and so the same workloads, as with
constants: `AttachAttrLayoutFreeBuffers` marks only parameters and constants), the second after
the database (MetaSchedule's layout rewrites). `compose_loader` chains them into one function,
`LOADER`, taking the weights in file order.
"""

from __future__ import annotations

import tvm
from tvm import relax

#: The function a runtime calls once with the decoded weights, in `weight file` order; it returns
#: the tuple `main` takes after its input.
LOADER = "tvmsqz_load_params"
#: Returns [count, ndim, dims..., ndim, dims...] of the weights `LOADER` takes: how a runtime
#: tells a weight file made for another artifact from the right one without the manifest.
WEIGHT_SHAPES = "tvmsqz_weight_shapes"
#: The first lift's function, renamed so that the second lift can make `main_transform_params`.
STAGE0 = "tvmsqz_params_stage0"
_LIFTED = "main_transform_params"


def lifted_count(mod: tvm.IRModule) -> int:
    """How many of `main`'s parameters are weights (after its `num_input` inputs): 0 for a model
    whose weights are constants."""
    func = mod["main"]
    num_input = func.attrs.get("num_input") if func.attrs else None
    return 0 if num_input is None else len(func.params) - int(num_input)


def _rename(mod: tvm.IRModule, old: str, new: str) -> tvm.IRModule:
    gv = mod.get_global_var(old)
    func = mod[gv].with_attr("global_symbol", new)
    out = tvm.IRModule({k: v for k, v in mod.functions.items() if not k.same_as(gv)}, attrs=mod.attrs)
    out[new] = func
    return out


@tvm.transform.module_pass(opt_level=0, name="LiftWeights")
def lift_weights(mod: tvm.IRModule, ctx) -> tvm.IRModule:
    """The first lift (see the module docstring): every computation on weights alone moves into
    `STAGE0`; `main` takes its results. A model with constant weights is returned as it is."""
    if lifted_count(mod) == 0:
        return mod
    mod = relax.transform.LiftTransformParams()(mod)
    return _rename(mod, _LIFTED, STAGE0)


def _callees(func) -> set[str]:
    names: set[str] = set()

    def visit(expr) -> None:
        if isinstance(expr, relax.GlobalVar):
            names.add(expr.name_hint)

    relax.analysis.post_order_visit(func, visit)
    return names


def park(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict]:
    """`mod` without `STAGE0` and the kernels only it calls, and those functions: the passes after
    the database (a second `LiftTransformParams`, which would lift `STAGE0` itself, and dead code
    elimination, which would drop it) must not see them. `unpark` puts them back."""
    names = {gv.name_hint for gv in mod.functions.keys()}
    if STAGE0 not in names:
        return mod, {}
    used_by_main = _callees(mod["main"])
    moved = {STAGE0} | {n for n in _callees(mod[STAGE0]) if n in names and n not in used_by_main}
    kept = {gv: f for gv, f in mod.functions.items() if gv.name_hint not in moved}
    parked = {gv: f for gv, f in mod.functions.items() if gv.name_hint in moved}
    return tvm.IRModule(kept, attrs=mod.attrs), parked


def unpark(mod: tvm.IRModule, parked: dict) -> tvm.IRModule:
    """`mod` with the functions `park` took out, under their own GlobalVars (the parked functions
    call each other through them), whose names must still be free."""
    if not parked:
        return mod
    names = {gv.name_hint for gv in mod.functions.keys()}
    clash = sorted({gv.name_hint for gv in parked} & names)
    if clash:
        raise ValueError(f"cannot restore the weight packing: {', '.join(clash)} was reused")
    return tvm.IRModule({**dict(mod.functions.items()), **parked}, attrs=mod.attrs)


def compose_loader(mod: tvm.IRModule) -> tvm.IRModule:
    """Add `LOADER` (weights in order -> what `main` takes: `STAGE0`, then the second lift's
    function when there is one) and `WEIGHT_SHAPES`; a module without `STAGE0` is returned as it is."""
    names = {gv.name_hint for gv in mod.functions.keys()}
    if STAGE0 not in names:
        return mod
    fields = list(mod[STAGE0].params[0].ty.fields)
    shapes = [tuple(int(d) for d in f.shape) for f in fields]
    stage0 = mod.get_global_var(STAGE0)
    stage1 = mod.get_global_var(_LIFTED) if _LIFTED in names else None
    if stage1 is not None:
        mod = _rename(mod, _LIFTED, "tvmsqz_params_stage1")
        stage0 = mod.get_global_var(STAGE0)
        stage1 = mod.get_global_var("tvmsqz_params_stage1")
    from tvm.relax.expr import _update_type

    for gv in (stage0, stage1):  # GlobalVars of a rebuilt module may not carry their function's type yet
        if gv is not None:
            _update_type(gv, mod[gv].ty)
    bb = relax.BlockBuilder(mod)
    params = [
        relax.Var(f"w{i}", relax.TensorType(list(shape), str(field.dtype)))
        for i, (shape, field) in enumerate(zip(shapes, fields))
    ]
    with bb.function(LOADER, params):
        out = bb.emit(relax.Call(stage0, [relax.Tuple(params)]))
        if stage1 is not None:
            out = bb.emit(relax.Call(stage1, [out]))
        bb.emit_func_output(out)
    flat = [len(shapes)]
    for s in shapes:
        flat += [len(s), *[int(d) for d in s]]
    with bb.function(WEIGHT_SHAPES, []):
        bb.emit_func_output(relax.ShapeExpr(flat))
    return bb.finalize()
