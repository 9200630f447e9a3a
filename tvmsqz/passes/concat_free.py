"""Concat-free Fire modules in the channel-blocked layout: each expand conv writes its own blocks.

In NCHW[x]c a Fire module's `concat(expand1x1, expand3x3)` is a concat of whole channel blocks:
block `c` of the result is block `c` of the 1x1 branch for `c < k1`, block `c - k1` of the 3x3
branch after. So the concat need be neither a kernel nor a copy. `WriteIntoConcat` (a Relax
module pass, run after legalization and fusion) rewrites

    a = call_tir(conv_a, args_a)        # (N, k1, H, W, x)
    b = call_tir(conv_b, args_b)        # (N, k3, H, W, x)
    c = call_tir(concatenate, (a, b))   # (N, k1 + k3, H, W, x)

into

    t = call_tir(fire_expand_into_a, args_a)                          # writes blocks [0, k1) of a
    c = call_tir_inplace(fire_expand_into_b, (*args_b, t), [len(b)])  # writes blocks [k1, k1+k3)

where each `fire_expand_into_*` kernel is the branch's own fused conv (+bias +ReLU) whose output
is a view (root-block `match_buffer`) onto its channel blocks of the shared buffer. Each branch
stays its own kernel and its own tuning task (one joint task for two convs is why the fused
Fire kernel lost at equal budget); `LowerFireViews` (their names carry the Fire prefix) turns the
views into offsets after scheduling.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.s_tir import MatchBufferRegion, SBlock, SBlockRealize

from .fuse import FIRE_KERNEL_PREFIXES

INTO_PREFIX = FIRE_KERNEL_PREFIXES[0] + "into_"
_CONV_KERNEL = "fused_conv2d_nchwc"


def _i32(value: int) -> tvm.tirx.IntImm:
    return tirx.IntImm("int32", int(value))


def into_view(func: tvm.tirx.PrimFunc, name: str, total_blocks: int, offset: int) -> tvm.tirx.PrimFunc:
    """`func` writing its output into blocks [offset, offset + k) of a wider buffer (`_view`)."""
    return _view(func, name, len(func.params) - 1, total_blocks, offset, "Out")


def _view(
    func: tvm.tirx.PrimFunc, name: str, index: int, total_blocks: int, offset: int, full_name: str
) -> tvm.tirx.PrimFunc:
    """`func` with its (N, k, H, W, x) parameter `index` (the output, or an input it reads)
    replaced by blocks [offset, offset + k) of an (N, total_blocks, H, W, x) buffer, through a
    root-block view.

    Built with TIR's API: the parameter becomes `full_name` (`Out`: the whole concat buffer), and the
    root block gains `match_buffer(Out[:, offset:offset + k], elem_offset=offset * H * W * x)`
    bound to a buffer named like the old output, which replaces it in the body. The result is
    structurally equal (same `structural_hash`, the key of MetaSchedule workloads) to what the
    TVMScript text of that function parses to, so the shipped tuning databases keep applying:
    hence int32 constants for the new shapes, region and offsets (what the parser makes of
    plain integers), elem_offset 0 on `Out` and strides on the view only when N > 1.
    `name` is only used in error messages (the function is private: no global symbol).
    """
    realize = func.body
    root = getattr(realize, "block", None)
    out = func.params[index] if func.params else None
    ty = getattr(out, "ty", None)
    if not isinstance(realize, SBlockRealize) or root.iter_vars or not isinstance(ty, tirx.BufferType):
        raise ValueError(f"cannot rewrite {name}: expected an s_tir function with a root block and a buffer output")
    if len(ty.shape) != 5 or not all(isinstance(d, tirx.IntImm) for d in ty.shape) or ty.strides:
        raise ValueError(f"cannot rewrite {name}: parameter {index} is not a compact, static (N, k, H, W, x) buffer")
    n, k, h, w, x = (int(d) for d in ty.shape)
    if not 0 <= offset <= total_blocks - k:
        raise ValueError(f"cannot rewrite {name}: blocks [{offset}, {offset + k}) outside 0..{total_blocks}")
    common = {
        "data_alignment": ty.data_alignment,
        "offset_factor": ty.offset_factor,
        "scope": ty.storage_scope,
        "layout": None,
    }
    full = tirx.decl_buffer(
        [_i32(d) for d in (n, total_blocks, h, w, x)], ty.dtype, full_name, elem_offset=_i32(0), **common
    )
    strides = [_i32(s) for s in (total_blocks * h * w * x, h * w * x, w * x, x, 1)] if n > 1 else None
    view = tirx.decl_buffer(
        [_i32(d) for d in (n, k, h, w, x)],
        ty.dtype,
        out.name,
        strides=strides,
        elem_offset=_i32(offset * h * w * x),
        **common,
    )
    region = [
        tvm.ir.Range.from_min_extent(_i32(lo), _i32(extent))
        for lo, extent in ((0, n), (offset, k), (0, h), (0, w), (0, x))
    ]
    # Every use of the old output buffer (stores, loads, block read/write regions) -> the view.
    body = tvm_ffi.structural_map(root.body, (tvm.ir.Var, lambda var: view if var.same_as(out) else var))
    block = SBlock(
        root.iter_vars,
        root.reads,
        root.writes,
        root.name_hint,
        body,
        root.init,
        root.alloc_buffers,
        [*root.match_buffers, MatchBufferRegion(view, tirx.BufferRegion(full, region))],
        root.annotations,
    )
    return tirx.PrimFunc(
        [*func.params[:index], full, *func.params[index + 1 :]],
        SBlockRealize(realize.iter_values, realize.predicate, block),
        func.ret_type,
        func.attrs,
    )


def _callee(value) -> str | None:
    if isinstance(value, relax.Call) and value.op.same_as(tvm.ir.Op.get("relax.call_tir")):
        return value.args[0].name_hint
    return None


def slice_blocks(func: tvm.tirx.PrimFunc) -> tuple[int, int] | None:
    """(first block, input blocks) when `func` is a legalized `strided_slice` of whole channel
    blocks of an (N, K, H, W, x) input (unit step, every other axis whole); else None.

    Read from the TIR: the slice's one block reads `input[v0, v1 + offset, v2, v3, v4]`.
    """
    if len(func.params) != 2:
        return None
    src, dst = (getattr(p, "ty", None) for p in func.params)
    if not all(isinstance(b, tirx.BufferType) and len(b.shape) == 5 for b in (src, dst)):
        return None
    try:
        src_shape, dst_shape = [int(d) for d in src.shape], [int(d) for d in dst.shape]
    except TypeError:
        return None
    if src_shape[:1] + src_shape[2:] != dst_shape[:1] + dst_shape[2:]:
        return None
    node = func.body.block.body
    while not isinstance(node, SBlockRealize):
        node = getattr(node, "body", None)
        if node is None:
            return None
    block = node.block
    if len(block.reads) != 1 or len(block.iter_vars) != 5:
        return None
    read = block.reads[0]  # the one read of a two-parameter function: its input
    offsets = []
    for axis, rng in enumerate(read.region):
        var = block.iter_vars[axis].var
        if rng.min.same_as(var):
            offsets.append(0)
        elif type(rng.min).__name__ == "Add" and rng.min.a.same_as(var):
            if not isinstance(rng.min.b, tirx.IntImm):
                return None
            offsets.append(int(rng.min.b.value))
        else:
            return None
        if int(rng.extent) != 1:
            return None
    if offsets[0] or any(offsets[2:]) or not 0 <= offsets[1] <= src_shape[1] - dst_shape[1]:
        return None
    return offsets[1], src_shape[1]


def write_into_concat(mod: tvm.IRModule) -> tvm.IRModule:
    """Apply the rewrite to every concat of two blocked-conv kernels (see the module docstring)."""
    bb = relax.BlockBuilder(mod)
    made: dict[tuple, tvm.ir.GlobalVar] = {}

    def kernel(callee: str, total: int, offset: int, inputs: tuple = ()) -> tvm.ir.GlobalVar:
        """The view kernel; `inputs`: (parameter, first block, input blocks) read through views."""
        key = (callee, total, offset, inputs)
        if key not in made:
            name = f"{INTO_PREFIX}{callee.removeprefix('fused_')}_{offset}of{total}"
            func = into_view(mod[callee], name, total, offset)
            for index, first, blocks in inputs:
                func = _view(func, name, index, blocks, first, "Bypass")
            made[key] = bb.add_func(func, name)
        return made[key]

    def sliced(bindings, where, uses, args) -> tuple[list, tuple]:
        """A conv kernel's arguments with each single-use block slice replaced by its source."""
        args, inputs = list(args), []
        for index, arg in enumerate(args):
            if arg not in where or uses.get(arg, 0) != 1:
                continue
            value = bindings[where[arg]].value
            callee = _callee(value)
            if not (callee or "").startswith("strided_slice"):
                continue
            found = slice_blocks(mod[callee])
            if found is None:
                continue
            args[index] = value.args[1].fields[0]
            inputs.append((index, *found))
        return args, tuple(inputs)

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            bb.update_func(gv, _rewrite_function(func, kernel, sliced))
    return bb.get()


def _uses(func: relax.Function) -> dict:
    counts: dict = {}

    @relax.expr_functor.visitor
    class _Count(relax.PyExprVisitor):
        def visit_var_(self, var) -> None:
            counts[var] = counts.get(var, 0) + 1

        def visit_dataflow_var_(self, var) -> None:
            counts[var] = counts.get(var, 0) + 1

    _Count().visit_expr(func)
    return counts


def _rewrite_function(func: relax.Function, kernel, sliced) -> relax.Function:
    uses = _uses(func)
    blocks = []
    for block in func.body.blocks:
        bindings = list(block.bindings)
        where = {b.var: i for i, b in enumerate(bindings)}
        replace: dict[int, relax.Binding | None] = {}
        for i, binding in enumerate(bindings):
            callee = _callee(binding.value)
            if callee is None or not callee.startswith("concatenate"):
                continue
            parts = list(binding.value.args[1].fields)
            if len(parts) != 2 or any(p not in where or uses.get(p, 0) != 1 for p in parts):
                continue
            producers = [bindings[where[p]] for p in parts]
            if any(not (_callee(p.value) or "").startswith(_CONV_KERNEL) for p in producers):
                continue
            out_ty = binding.var.ty
            total = int(out_ty.shape[1])
            offsets = [0, int(parts[0].ty.shape[1])]
            first, second = sorted(range(2), key=lambda j: where[parts[j]])
            tmp = relax.DataflowVar(f"{binding.var.name}_partial", out_ty)
            a, b = producers[first].value, producers[second].value
            args_a, views_a = sliced(bindings, where, uses, a.args[1].fields)
            args_b, views_b = sliced(bindings, where, uses, b.args[1].fields)
            into_a = kernel(_callee(a), total, offsets[first], views_a)
            into_b = kernel(_callee(b), total, offsets[second], views_b)
            replace[where[parts[first]]] = relax.VarBinding(tmp, relax.call_tir(into_a, relax.Tuple(args_a), out_ty))
            replace[where[parts[second]]] = relax.VarBinding(
                binding.var, relax.call_tir_inplace(into_b, relax.Tuple(args_b + [tmp]), [len(args_b)], out_ty)
            )
            replace[i] = None
        if not replace:
            blocks.append(block)
            continue
        new = [replace.get(i, b) for i, b in enumerate(bindings)]
        new = [b for b in new if b is not None]
        maker = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(maker(new))
    return relax.Function(
        func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure, func.attrs, func.span
    )


@tvm.transform.module_pass(opt_level=0, name="WriteIntoConcat")
class WriteIntoConcat:
    """Module-pass form of `write_into_concat` (after FuseTIR, before tuning/database)."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(write_into_concat(mod))
