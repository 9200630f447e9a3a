"""The host (CPU) part of a VTA model, built with TVM Relax.

Each host segment (for SqueezeNet: the first conv's im2col layout step with the input's
quantisation, and global average pooling + softmax after the classifier; `pools=False` or
`first_conv="pad"` split the model differently) becomes one Relax function `seg<i>` in one
IRModule, compiled with `tvm.compile` for the host's CPU target (the VTA target's "host",
resolved by `resolve_host`; `x86` by default: x86-64-v4 with AVX-512, else x86-64-v3). Inputs
that come from VTA arrive packed (C/BLOCK, H, W, BLOCK) int8 (BLOCK = `QuantNet.block`, the
configuration's GEMM block) and are unpacked and dequantised inside the function
((q - z) * 2**-a); outputs bound for VTA are quantised (floor(x * 2**a + 0.5) + z, clipped to int8; z = the
tensor's zero points, 0 for most) and packed inside it, so the only thing crossing the
host/accelerator boundary is int8 data in VTA's layout.
"""

from __future__ import annotations

import numpy as np

from tvmsqz.errors import TvmsqzError

from .quant import QuantNet


def resolve_host(name: str = "x86") -> dict:
    """The host CPU target the host segments are compiled for, from the target file `name` (a
    shipped target name such as "x86" or "x86-avx2", or a target file path): {"name", "tvm" (the
    TVM target dict, "num-cores": "host" resolved), "requires_cpu_flags", "cc"}.

    An alias (`x86`: "this host's x86-64 CPU") resolves as `tvmsqz.targets` resolves it: to the
    native CPU target (no cross compiler) whose `requires_cpu_flags` this host has, the one that
    requires the most (x86-avx512 before x86-avx2). Read from the target files directly, so that
    the VTA modules need neither `tvmsqz.targets` nor a backend."""
    import json
    from pathlib import Path

    from tvmsqz.paths import TARGETS_DIR
    from tvmsqz.spec import host_cores, host_cpu_flags

    def read(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TvmsqzError(f"cannot read the VTA host target {path}: {exc}") from None

    path = Path(name) if name.endswith(".json") or "/" in name else TARGETS_DIR / f"{name}.json"
    if not path.is_file():
        raise TvmsqzError(f"the VTA target's host {name!r} is no target name or target file")
    raw = read(path)
    if raw.get("family") != "cpu":
        raise TvmsqzError(f"the VTA target's host {name!r} is not a CPU target (family {raw.get('family')!r})")
    if "alias_of" in raw:
        flags = host_cpu_flags()
        native = [
            c
            for c in map(read, sorted(TARGETS_DIR.glob("*.json")))
            if c.get("family") == "cpu"
            and c.get("tvm")
            and "requires_cpu_flags" in c
            and not (c.get("export") or {}).get("cc")
            and set(c["requires_cpu_flags"]) <= flags
        ]
        if not native:
            raise TvmsqzError(f"this host's CPU fits no target that {name!r} stands for; name the VTA host explicitly")
        raw = max(native, key=lambda c: len(c["requires_cpu_flags"]))
    tvm_config = dict(raw.get("tvm") or {})
    if not tvm_config:
        raise TvmsqzError(f"the VTA target's host {name!r} has no TVM target")
    if tvm_config.get("num-cores") == "host":
        tvm_config["num-cores"] = host_cores()
    return {
        "name": raw["name"],
        "tvm": tvm_config,
        "requires_cpu_flags": list(raw.get("requires_cpu_flags") or []),
        "cc": (raw.get("export") or {}).get("cc"),
    }


def host_target(host: str | dict | None = None):
    """The TVM target of the host segments: `host` is a `resolve_host` result, a host target name
    (a VTA target's "host"), or None for `x86` (x86-64-v4 with AVX-512, else x86-64-v3)."""
    import tvm

    resolved = host if isinstance(host, dict) else resolve_host(host or "x86")
    return tvm.target.Target(resolved["tvm"])


def _shape(qn: QuantNet, t: str, rep: str) -> tuple:
    s = qn.graph.shapes[t]
    if rep == "q":
        return (-(-s[1] // qn.block), s[2], s[3], qn.block)
    return tuple(s)


def build_module(qn: QuantNet):
    """Relax IRModule with one function per host segment."""
    from tvm import relax
    from tvm.relax import op as R

    def const(a):
        return relax.const(np.ascontiguousarray(a))

    def zero_const(t):
        """The tensor's per-channel zero points as float32 (1, C, 1, 1), applied in
        `quant.quantize_np`'s order of operations so that numpy and TVM agree bit for bit."""
        return const(np.asarray(qn.zero[t], np.float32).reshape(1, -1, 1, 1))

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
                        if t in qn.zero:
                            v = bb.emit(R.subtract(v, zero_const(t)))
                        v = bb.emit(R.multiply(v, const(np.float32(2.0 ** -qn.qexp[t]))))
                    env[t] = v
                gathers = _quantised_gathers(qn, seg)
                for op in seg.ops:
                    if op.output not in gathers:
                        env[op.output] = bb.emit(_relax_op(op, [env[i] for i in op.inputs], const, qn.graph.shapes))
                outs = []
                for t, rep in seg.outputs:
                    if t in gathers:
                        outs.append(_im2col_blocks(bb, qn, gathers[t], env[gathers[t].inputs[0]], const))
                        continue
                    v = env[t]
                    if rep == "q":
                        _, c, h, w = qn.graph.shapes[t]
                        blk = qn.block
                        cb = -(-c // blk)
                        v = bb.emit(R.multiply(v, const(np.float32(2.0 ** qn.qexp[t]))))
                        v = bb.emit(R.floor(R.add(v, const(np.float32(0.5)))))
                        if t in qn.zero:
                            v = bb.emit(R.add(v, zero_const(t)))
                        v = bb.emit(R.clip(v, -128, 127))
                        v = bb.emit(R.astype(v, "int8"))
                        if cb * blk != c:
                            v = bb.emit(R.nn.pad(v, [0, 0, 0, cb * blk - c, 0, 0, 0, 0]))
                        v = bb.emit(R.reshape(v, (cb, blk, h, w)))
                        v = bb.emit(R.permute_dims(v, [0, 2, 3, 1]))
                    outs.append(v)
                res = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
            bb.emit_func_output(res)
    return bb.get()


def _relax_op(op, args, const, shapes: dict):
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
        return fn(
            x,
            pool_size=op.attrs["kernel"],
            strides=op.attrs["stride"],
            padding=[p[0], p[1], p[2], p[3]],
            ceil_mode=bool(op.attrs["ceil"]),
        )
    if k == "gap":
        return R.mean(x, axis=[2, 3], keepdims=True)
    if k == "im2col":
        return _im2col(x, shapes[op.inputs[0]], op.attrs["kernel"], op.attrs["stride"], op.attrs["pad"])
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


def _im2col(x, shape: tuple, k: int, s: int, p: int):
    """k*k strided slices concatenated tap-major along channels (`graph.im2col_nchw`): pure
    data movement, which TVM fuses into a few copy loops."""
    from tvm import relax
    from tvm.relax import op as R

    h, w = shape[2] + 2 * p, shape[3] + 2 * p
    if p:
        x = R.nn.pad(x, [0, 0, 0, 0, p, p, p, p])
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    taps = [
        R.strided_slice(
            x, axes=[2, 3], begin=[ky, kx], end=[ky + s * (ho - 1) + 1, kx + s * (wo - 1) + 1], strides=[s, s]
        )
        for ky in range(k)
        for kx in range(k)
    ]
    return R.concat(relax.Tuple(taps), axis=1)


def _quantised_gathers(qn: QuantNet, seg) -> dict:
    """im2col ops of `seg` whose output leaves for VTA and is read by nothing else in the
    segment: built int8-first by `_im2col_blocks` (tensor -> op)."""
    readers = {i for op in seg.ops for i in op.inputs}
    return {
        op.output: op
        for op in seg.ops
        if op.kind == "im2col" and (op.output, "q") in seg.outputs and op.output not in readers
    }


def _im2col_blocks(bb, qn: QuantNet, op, x, const):
    """The im2col of `x`, quantised and packed for VTA, computed in the cheap order: quantise
    the C input channels (zero points are per source channel, tiled over the taps), then one
    gather kernel writes each output lane (block b, pixel, lane l: window channel BLOCK*b + l =
    tap * C + c) straight from its int8 source pixel, zeros in the padding lanes. Quantising
    is elementwise and the gather copies, so the result is bit-identical to quantising the float
    im2col (`quant.host_numpy`'s order) at a twelfth of the float work and without the k*k-way
    concatenation (untuned here: 5 ms instead of 14 ms for conv1's 1.97 MB)."""
    from tvm import te, tirx
    from tvm.relax import op as R

    k, s, p = op.attrs["kernel"], op.attrs["stride"], op.attrs["pad"]
    _, c, h, w = qn.graph.shapes[op.inputs[0]]
    t = op.output
    kc = qn.graph.shapes[t][1]
    ho, wo = qn.graph.shapes[t][2:]
    blk = qn.block
    cb = -(-kc // blk)
    if p:  # pad in float: a padded 0 quantises to the zero point, as in the float im2col
        x = bb.emit(R.nn.pad(x, [0, 0, 0, 0, p, p, p, p]))
    v = bb.emit(R.multiply(x, const(np.float32(2.0 ** qn.qexp[t]))))
    v = bb.emit(R.floor(R.add(v, const(np.float32(0.5)))))
    if t in qn.zero:
        v = bb.emit(R.add(v, const(np.asarray(qn.zero[t][:c], np.float32).reshape(1, c, 1, 1))))
    v = bb.emit(R.astype(R.clip(v, -128, 127), "int8"))

    def gather(q):
        def lane(b, y, xx, ln):
            ch = b * blk + ln
            tap = ch // c
            return tirx.if_then_else(ch < kc, q[0, ch % c, y * s + tap // k, xx * s + tap % k], tirx.const(0, "int8"))

        return te.compute((cb, ho, wo, blk), lane, name="im2col_blocks")

    return bb.emit_te(gather, v)


def compile_host(qn: QuantNet, target=None):
    """Compile the host segments; returns the Relax executable."""
    import tvm

    from tvmsqz.quiet import quiet_stderr

    mod = build_module(qn)
    with quiet_stderr():
        return tvm.compile(mod, target=target or host_target())
