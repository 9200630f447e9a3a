"""The host (CPU) part of a VTA model, built with TVM Relax.

Each host segment (first conv + pool, the pools between Fire groups, the classifier + softmax)
becomes one Relax function `seg<i>` in one IRModule, compiled with `tvm.compile` for the host's
CPU target (the project's `x86` target: x86-64-v4 with AVX-512, else x86-64-v3). Inputs that
come from VTA arrive packed (C/16, H, W, 16) int8 and are unpacked and dequantised inside the
function; outputs bound for VTA are quantised (floor(x * 2**a + 0.5), clipped to int8) and
packed inside it, so the only thing crossing the host/accelerator boundary is int8 data in
VTA's layout.
"""

from __future__ import annotations

import numpy as np

from tvmsqz.errors import TvmsqzError

from .quant import QuantNet


def host_target():
    """The TVM target for the host CPU: the `vta` target's "host" (default `x86`, which
    resolves to x86-64-v4 with AVX-512, else x86-64-v3)."""
    from tvmsqz.targets import get_target

    return get_target(get_target("vta").data.get("host", "x86")).target


def _shape(qn: QuantNet, t: str, rep: str) -> tuple:
    s = qn.graph.shapes[t]
    if rep == "q":
        return (-(-s[1] // 16), s[2], s[3], 16)
    return tuple(s)


def build_module(qn: QuantNet):
    """Relax IRModule with one function per host segment."""
    from tvm import relax
    from tvm.relax import op as R

    def const(a):
        return relax.const(np.ascontiguousarray(a))

    bb = relax.BlockBuilder()
    for seg in qn.host_segments():
        params = []
        for t, rep in seg.inputs:
            dtype = "int8" if rep == "q" else "float32"
            params.append(relax.Var(f"in_{len(params)}", relax.TensorType(shape=_shape(qn, t, rep), dtype=dtype)))
        with bb.function(f"seg{seg.index}", params):
            with bb.dataflow():
                env = {}
                for (t, rep), v in zip(seg.inputs, params):
                    if rep == "q":
                        cb, h, w, b = _shape(qn, t, rep)
                        c = qn.graph.shapes[t][1]
                        v = bb.emit(R.permute_dims(v, [0, 3, 1, 2]))
                        v = bb.emit(R.reshape(v, (1, cb * b, h, w)))
                        if c != cb * b:
                            v = bb.emit(R.strided_slice(v, axes=[1], begin=[0], end=[c]))
                        v = bb.emit(R.astype(v, "float32"))
                        v = bb.emit(R.multiply(v, const(np.float32(2.0 ** -qn.qexp[t]))))
                    env[t] = v
                for op in seg.ops:
                    env[op.output] = bb.emit(_relax_op(op, [env[i] for i in op.inputs], const))
                outs = []
                for t, rep in seg.outputs:
                    v = env[t]
                    if rep == "q":
                        _, c, h, w = qn.graph.shapes[t]
                        cb = -(-c // 16)
                        v = bb.emit(R.multiply(v, const(np.float32(2.0 ** qn.qexp[t]))))
                        v = bb.emit(R.floor(R.add(v, const(np.float32(0.5)))))
                        v = bb.emit(R.clip(v, -128, 127))
                        v = bb.emit(R.astype(v, "int8"))
                        if cb * 16 != c:
                            v = bb.emit(R.nn.pad(v, [0, 0, 0, cb * 16 - c, 0, 0, 0, 0]))
                        v = bb.emit(R.reshape(v, (cb, 16, h, w)))
                        v = bb.emit(R.permute_dims(v, [0, 2, 3, 1]))
                    outs.append(v)
                res = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
            bb.emit_func_output(res)
    return bb.get()


def _relax_op(op, args, const):
    from tvm.relax import op as R

    x = args[0]
    k = op.kind
    if k == "conv":
        w = op.attrs["weight"]
        p = op.attrs["pad"]
        y = R.nn.conv2d(x, const(w), strides=op.attrs["stride"], padding=[p, p, p, p])
        y = R.add(y, const(op.attrs["bias"].reshape(1, -1, 1, 1)))
        return R.nn.relu(y) if op.attrs["relu"] else y
    if k == "relu":
        return R.nn.relu(x)
    if k in ("maxpool", "avgpool"):
        p = op.attrs["pads"]
        fn = R.nn.max_pool2d if k == "maxpool" else R.nn.avg_pool2d
        return fn(x, pool_size=op.attrs["kernel"], strides=op.attrs["stride"], padding=[p[0], p[1], p[2], p[3]],
                  ceil_mode=bool(op.attrs["ceil"]))
    if k == "gap":
        return R.mean(x, axis=[2, 3], keepdims=True)
    if k == "concat":
        from tvm import relax

        return R.concat(relax.Tuple(args), axis=1)
    if k == "add":
        return R.add(args[0], args[1])
    if k == "flatten":
        return R.reshape(x, (1, -1))
    if k == "softmax":
        return R.nn.softmax(x, axis=op.attrs["axis"])
    raise TvmsqzError(f"host op {k} has no Relax lowering")


def compile_host(qn: QuantNet, target=None):
    """Compile the host segments; returns the Relax executable."""
    import tvm

    from tvmsqz.quiet import quiet_stderr

    mod = build_module(qn)
    with quiet_stderr():
        return tvm.compile(mod, target=target or host_target())
