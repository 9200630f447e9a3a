"""A small dataflow graph of a SqueezeNet-class ONNX model, a numpy fp32 interpreter for it
(used for calibration), and the VTA/host partition.

Supported ONNX ops: Conv (groups 1, symmetric pads), Relu, MaxPool, AveragePool (unpadded),
GlobalAveragePool, Concat, Add, Flatten, Reshape (to 2-D), Softmax, Dropout/Identity.
A Relu that is a Conv's only consumer is folded into the Conv.

`prepare(graph, first_conv="im2col", block)` rewrites a convolution that reads the model input
with a channel count that is not a multiple of the GEMM block (BLOCK = 16 in the default
configuration; SqueezeNet's conv1: 3 channels, 7x7 stride 2) into an `im2col` layout op on the
host + a 1x1 convolution over the k*k*C window values (147 -> 160 lanes: 10 GEMM blocks per
output pixel instead of 49 with channels padded 3 -> 16). VTA's loads move whole blocks, so this
gather cannot happen on VTA; on the host it is a copy.

Partition rule: every convolution runs on VTA, its channel counts padded to multiples of BLOCK
(the padding lanes carry zero weights; a classifier's 1000 outputs become 1008 at BLOCK 16 and
the host drops the last 8), unless its padding exceeds the LOAD pad fields (15) or no tiling
fits the buffers. A Concat whose inputs are all VTA convolutions of one tensor with whole
channel blocks (a Fire module's expand1x1 + expand3x3) becomes one fused VTA layer. A MaxPool
whose input comes from VTA runs on VTA's ALU (`pool.py`) when it is exact there (no window
overhang, or a non-negative input). What stays on the host, and why, is `host_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from tvmsqz.errors import TvmsqzError

from .pool import pool_out


@dataclass
class Op:
    kind: str  # conv relu maxpool avgpool gap concat add flatten softmax identity
    inputs: list
    output: str
    attrs: dict = field(default_factory=dict)
    name: str = ""


@dataclass
class Graph:
    ops: list
    input_name: str
    input_shape: tuple
    output_name: str
    shapes: dict = field(default_factory=dict)  # tensor -> shape (filled by infer_shapes)

    def producers(self) -> dict:
        return {op.output: op for op in self.ops}

    def consumers(self) -> dict:
        c: dict = {}
        for op in self.ops:
            for i in op.inputs:
                c.setdefault(i, []).append(op)
        return c


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def from_onnx(model: onnx.ModelProto) -> Graph:
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(_attrs(n)["value"])
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise TvmsqzError("the VTA flow needs a model with one input and one output")
    inp = inputs[0]
    dims = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
    if len(dims) != 4 or 0 in dims:
        raise TvmsqzError(f"the VTA flow needs a static NCHW input, got {dims}")
    if dims[0] != 1:
        raise TvmsqzError("the VTA flow supports batch 1")
    ops: list[Op] = []
    alias: dict[str, str] = {}

    def src(name):
        while name in alias:
            name = alias[name]
        return name

    for n in g.node:
        a = _attrs(n)
        t = n.op_type
        ins = [src(i) for i in n.input if i]
        out = n.output[0]
        if t == "Constant":
            continue
        if t in ("Dropout", "Identity"):
            alias[out] = ins[0]
            continue
        if t == "Conv":
            w = inits.get(ins[1])
            if w is None:
                raise TvmsqzError(f"Conv {n.name}: weights must be initializers")
            b = inits[ins[2]] if len(ins) > 2 else np.zeros(w.shape[0], np.float32)
            if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise TvmsqzError(f"Conv {n.name}: grouped/dilated convolution is not supported by the VTA flow")
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or len(set(pads)) != 1:
                raise TvmsqzError(f"Conv {n.name}: only symmetric explicit padding is supported")
            strides = list(a.get("strides", [1, 1]))
            if strides[0] != strides[1] or w.shape[2] != w.shape[3]:
                raise TvmsqzError(f"Conv {n.name}: only square kernels and equal strides are supported")
            ops.append(
                Op(
                    "conv",
                    [ins[0]],
                    out,
                    {
                        "weight": w.astype(np.float32),
                        "bias": b.astype(np.float32),
                        "stride": int(strides[0]),
                        "pad": int(pads[0]),
                        "relu": False,
                    },
                    n.name,
                )
            )
        elif t == "Relu":
            ops.append(Op("relu", ins, out, name=n.name))
        elif t in ("MaxPool", "AveragePool"):
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if any(pads) and t == "AveragePool":
                raise TvmsqzError(f"{t} {n.name}: padding is not supported")
            ks = list(a["kernel_shape"])
            st = list(a.get("strides", [1, 1]))
            ops.append(
                Op(
                    "maxpool" if t == "MaxPool" else "avgpool",
                    ins,
                    out,
                    {
                        "kernel": int(ks[0]),
                        "stride": int(st[0]),
                        "pads": [int(p) for p in pads],
                        "ceil": int(a.get("ceil_mode", 0)),
                    },
                    n.name,
                )
            )
        elif t == "GlobalAveragePool":
            ops.append(Op("gap", ins, out, name=n.name))
        elif t == "Concat":
            if a.get("axis") != 1:
                raise TvmsqzError(f"Concat {n.name}: only channel concatenation is supported")
            ops.append(Op("concat", ins, out, name=n.name))
        elif t == "Add":
            ops.append(Op("add", ins[:2], out, name=n.name))
        elif t in ("Flatten", "Reshape"):
            ops.append(Op("flatten", ins[:1], out, name=n.name))
        elif t == "Softmax":
            ops.append(Op("softmax", ins, out, {"axis": int(a.get("axis", -1))}, n.name))
        else:
            raise TvmsqzError(f"the VTA flow does not support ONNX op {t} ({n.name})")
    graph = Graph(ops, inp.name, dims, src(g.output[0].name))
    _fold_relu(graph)
    infer_shapes(graph)
    return graph


def _fold_relu(graph: Graph) -> None:
    cons = graph.consumers()
    prod = graph.producers()
    keep = []
    rename = {}
    for op in graph.ops:
        if op.kind == "relu":
            p = prod.get(op.inputs[0])
            if p is not None and p.kind == "conv" and len(cons.get(p.output, [])) == 1 and not p.attrs["relu"]:
                p.attrs["relu"] = True
                rename[p.output] = op.output
                p.output = op.output
                continue
        keep.append(op)
    graph.ops = keep


def infer_shapes(graph: Graph) -> None:
    sh = {graph.input_name: graph.input_shape}
    for op in graph.ops:
        x = sh[op.inputs[0]]
        if op.kind == "conv":
            o, _, k, _ = op.attrs["weight"].shape
            s, p = op.attrs["stride"], op.attrs["pad"]
            sh[op.output] = (1, o, (x[2] + 2 * p - k) // s + 1, (x[3] + 2 * p - k) // s + 1)
        elif op.kind in ("maxpool", "avgpool"):
            k, s, p = op.attrs["kernel"], op.attrs["stride"], op.attrs["pads"]
            sh[op.output] = (
                1,
                x[1],
                pool_out(x[2], k, s, p[0], p[2], op.attrs["ceil"]),
                pool_out(x[3], k, s, p[1], p[3], op.attrs["ceil"]),
            )
        elif op.kind == "gap":
            sh[op.output] = (1, x[1], 1, 1)
        elif op.kind == "im2col":
            k, s, p = op.attrs["kernel"], op.attrs["stride"], op.attrs["pad"]
            sh[op.output] = (1, x[1] * k * k, (x[2] + 2 * p - k) // s + 1, (x[3] + 2 * p - k) // s + 1)
        elif op.kind == "concat":
            sh[op.output] = (1, sum(sh[i][1] for i in op.inputs), x[2], x[3])
        elif op.kind == "flatten":
            sh[op.output] = (1, int(np.prod(x[1:])))
        else:
            sh[op.output] = x
    graph.shapes = sh


# ---------------------------------------------------------------------------- numpy fp32


def im2col_nchw(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """(1, C, H, W) -> (1, k*k*C, Ho, Wo): channel (ky*k + kx)*C + c holds x[c] at tap (ky, kx) of
    each output pixel's window (tap-major, so a tap's C values are adjacent lanes)."""
    xp = np.pad(x[0], ((0, 0), (pad, pad), (pad, pad)))
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    taps = [
        xp[:, ky : ky + stride * (ho - 1) + 1 : stride, kx : kx + stride * (wo - 1) + 1 : stride]
        for ky in range(k)
        for kx in range(k)
    ]
    return np.concatenate(taps)[None]


def conv2d_nchw(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int) -> np.ndarray:
    """float32 convolution by im2col + matmul (batch 1)."""
    x = x[0]
    o, c, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    cols = np.empty((c, k, k, ho, wo), dtype=np.float32)
    for ky in range(k):
        for kx in range(k):
            cols[:, ky, kx] = xp[:, ky : ky + stride * (ho - 1) + 1 : stride, kx : kx + stride * (wo - 1) + 1 : stride]
    y = w.reshape(o, -1).astype(np.float32) @ cols.reshape(c * k * k, -1)
    if b is not None:
        y += b[:, None]
    return y.reshape(1, o, ho, wo)


def pool2d(x: np.ndarray, kind: str, k: int, s: int, pads, ceil: int) -> np.ndarray:
    _, c, h, w = x.shape
    ho = pool_out(h, k, s, pads[0], pads[2], ceil)
    wo = pool_out(w, k, s, pads[1], pads[3], ceil)
    fill = -np.inf if kind == "maxpool" else 0.0
    ph = max(0, (ho - 1) * s + k - h - pads[0])
    pw = max(0, (wo - 1) * s + k - w - pads[1])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], ph), (pads[1], pw)), constant_values=fill)
    out = None
    for ky in range(k):
        for kx in range(k):
            v = xp[:, :, ky : ky + s * (ho - 1) + 1 : s, kx : kx + s * (wo - 1) + 1 : s]
            if out is None:
                out = v.copy()
            elif kind == "maxpool":
                np.maximum(out, v, out=out)
            else:
                out += v
    if kind == "avgpool":
        out /= k * k
    return out.astype(x.dtype)


def eval_op(op: Op, args: list) -> np.ndarray:
    x = args[0]
    k = op.kind
    if k == "conv":
        y = conv2d_nchw(x, op.attrs["weight"], op.attrs["bias"], op.attrs["stride"], op.attrs["pad"])
        return np.maximum(y, 0) if op.attrs["relu"] else y
    if k == "relu":
        return np.maximum(x, 0)
    if k in ("maxpool", "avgpool"):
        return pool2d(x, k, op.attrs["kernel"], op.attrs["stride"], op.attrs["pads"], op.attrs["ceil"])
    if k == "gap":
        return x.mean(axis=(2, 3), keepdims=True, dtype=np.float32)
    if k == "im2col":
        return im2col_nchw(x, op.attrs["kernel"], op.attrs["stride"], op.attrs["pad"])
    if k == "concat":
        return np.concatenate(args, axis=1)
    if k == "add":
        return args[0] + args[1]
    if k == "flatten":
        return x.reshape(x.shape[0], -1)
    if k == "softmax":
        e = np.exp(x - x.max(axis=op.attrs["axis"], keepdims=True))
        return e / e.sum(axis=op.attrs["axis"], keepdims=True)
    raise TvmsqzError(f"unknown op {k}")


def run_fp32(graph: Graph, x: np.ndarray, keep: set | None = None) -> tuple[np.ndarray, dict]:
    """Run the graph in numpy float32; returns (output, {tensor: value} for tensors in `keep`)."""
    env = {graph.input_name: np.asarray(x, dtype=np.float32)}
    kept = {}
    cons = graph.consumers()
    remaining = {t: len(v) for t, v in cons.items()}
    for op in graph.ops:
        env[op.output] = eval_op(op, [env[i] for i in op.inputs])
        if keep and op.output in keep:
            kept[op.output] = env[op.output]
        for i in op.inputs:
            remaining[i] -= 1
            if remaining[i] == 0 and i != graph.output_name:
                env.pop(i, None)
    return env[graph.output_name], kept


# ---------------------------------------------------------------------------- VTA rewrite

FIRST_CONV_MODES = ("im2col", "pad")


def prepare(graph: Graph, first_conv: str = "im2col", block: int = 16) -> Graph:
    """The graph the VTA flow compiles. With `first_conv="im2col"`, each conv that reads the
    model input, has k > 1 and a channel count that is not a multiple of the GEMM block (`block`,
    the configuration's BLOCK_IN, 16 by default), and needs fewer GEMM blocks per pixel as a 1x1
    conv over its windows (ceil(k*k*C/16) < k*k*ceil(C/16) for 16), becomes `im2col` (host) +
    1x1 conv (VTA) with weights permuted to the tap-major order. `"pad"` keeps it as it is: it
    runs on VTA with its channels zero-padded to a whole block."""
    if first_conv not in FIRST_CONV_MODES:
        raise TvmsqzError(f"first_conv must be one of {', '.join(FIRST_CONV_MODES)}, not {first_conv!r}")
    ops = []
    for op in graph.ops:
        if first_conv == "im2col" and op.kind == "conv" and op.inputs[0] == graph.input_name:
            o, c, k, _ = op.attrs["weight"].shape
            if k > 1 and c % block and -(-c * k * k // block) < k * k * -(-c // block):
                cols = f"{op.output}/im2col"
                ops.append(
                    Op(
                        "im2col",
                        list(op.inputs),
                        cols,
                        {"kernel": k, "stride": op.attrs["stride"], "pad": op.attrs["pad"]},
                        f"{op.name}/im2col",
                    )
                )
                w = op.attrs["weight"].transpose(0, 2, 3, 1).reshape(o, k * k * c, 1, 1)
                ops.append(
                    Op(
                        "conv",
                        [cols],
                        op.output,
                        {**op.attrs, "weight": np.ascontiguousarray(w), "stride": 1, "pad": 0, "im2col_of": [c, k]},
                        op.name,
                    )
                )
                continue
        ops.append(op)
    g = Graph(ops, graph.input_name, graph.input_shape, graph.output_name)
    infer_shapes(g)
    return g


# ---------------------------------------------------------------------------- partition


@dataclass
class VTAUnit:
    """One VTA layer: one conv, several convs of one input fused through their Concat, or a
    max-pool (`pool`, then `convs` is empty)."""

    name: str
    convs: list  # Op
    input: str
    output: str
    pool: Op | None = None
    nonneg: bool = False  # pool units: the input is known to be >= 0 (zero padding is exact)

    @property
    def kind(self) -> str:
        return "maxpool" if self.pool is not None else "conv"


def conv_fits(op: Op, graph: Graph, cfg=None) -> bool:
    """Whether some tiling of this conv fits VTA's buffers and instruction fields (checked on a
    shape-only layer: the default tiling search fails exactly when nothing fits)."""
    from .config import load_config
    from .lower import Branch, ConvLayer, TilingError, default_tiling

    cfg = cfg or load_config()
    _, c, h, w = graph.shapes[op.inputs[0]]
    wz = np.zeros(op.attrs["weight"].shape, np.int8)
    layer = ConvLayer(
        op.name,
        c,
        h,
        w,
        [Branch(wz, op.attrs["pad"])],
        np.zeros(wz.shape[0], np.int32),
        8,
        op.attrs["relu"],
        op.attrs["stride"],
    )
    try:
        default_tiling(layer, cfg)
        return True
    except TilingError:
        return False


def vta_eligible(op: Op, graph: Graph, cfg=None) -> bool:
    """A conv runs on VTA unless its padding exceeds the 4-bit LOAD pad fields or nothing fits."""
    if op.kind != "conv" or op.attrs["pad"] > 15:
        return False
    return conv_fits(op, graph, cfg)


def pool_layer(op: Op, graph: Graph, nonneg: bool):
    """The `PoolLayer` of a MaxPool op (its VTA form; whether it is exact there is its own check)."""
    from .pool import PoolLayer

    _, c, h, w = graph.shapes[op.inputs[0]]
    return PoolLayer(
        op.name or op.output,
        c,
        h,
        w,
        op.attrs["kernel"],
        op.attrs["stride"],
        tuple(op.attrs["pads"]),
        op.attrs["ceil"],
        nonneg,
    )


def pool_on_vta(op: Op, graph: Graph, nonneg: bool, cfg=None) -> bool:
    """A MaxPool runs on VTA when a tiling of it is exact and fits (see `pool.py`)."""
    from .config import load_config
    from .lower import TilingError

    try:
        pool_layer(op, graph, nonneg).default_tiling(cfg or load_config())
        return True
    except TilingError:
        return False


def _relu_output(unit: VTAUnit, nonneg: set) -> bool:
    """Whether the unit's output is known to be >= 0 (a ReLU, or a pool of such a tensor): what
    lets a later pool with overhang use VTA's zero padding."""
    if unit.pool is not None:
        return unit.input in nonneg
    return all(op.attrs["relu"] for op in unit.convs)


def partition(graph: Graph, *, cfg=None, pools: bool = True) -> list:
    """Stages in execution order: `VTAUnit`s and lists of host `Op`s. `pools=False` keeps every
    max-pool on the host (for comparison)."""
    cons = graph.consumers()
    prod = graph.producers()
    block = cfg.block if cfg is not None else 16
    eligible = {op.output: vta_eligible(op, graph, cfg) for op in graph.ops if op.kind == "conv"}
    fused_into: dict[str, str] = {}  # conv output -> concat output
    units: dict[str, VTAUnit] = {}
    for op in graph.ops:
        if op.kind != "concat":
            continue
        srcs = [prod.get(i) for i in op.inputs]
        if (
            all(
                s is not None
                and eligible.get(s.output)
                and len(cons.get(s.output, [])) == 1
                and s.attrs["weight"].shape[0] % block == 0
                for s in srcs
            )
            and len({s.inputs[0] for s in srcs}) == 1
            and len({graph.shapes[s.output][2:] for s in srcs}) == 1
            and len({s.attrs["stride"] for s in srcs}) == 1
        ):
            name = op.name or op.output
            units[op.output] = VTAUnit(name, srcs, srcs[0].inputs[0], op.output)
            for s in srcs:
                fused_into[s.output] = op.output
    stages: list = []
    host: list = []
    on_vta: set = set()  # tensors VTA produces (int8, blocked layout)
    nonneg: set = set()  # of those, the ones known to be >= 0
    for op in graph.ops:
        if op.output in fused_into:
            continue
        unit = units.get(op.output)
        if unit is None and op.kind == "conv" and eligible[op.output]:
            unit = VTAUnit(op.name or op.output, [op], op.inputs[0], op.output)
        if (
            unit is None
            and pools
            and op.kind == "maxpool"
            and op.inputs[0] in on_vta
            and pool_on_vta(op, graph, op.inputs[0] in nonneg, cfg)
        ):
            unit = VTAUnit(op.name or op.output, [], op.inputs[0], op.output, pool=op, nonneg=op.inputs[0] in nonneg)
        if unit is not None:
            if host or (unit.input == graph.input_name and not stages):
                stages.append(host)  # may be empty: a segment that only quantises the model input
                host = []
            stages.append(unit)
            on_vta.add(unit.output)
            if _relu_output(unit, nonneg):
                nonneg.add(unit.output)
        else:
            host.append(op)
    if host:
        stages.append(host)
    return stages


_HOST_REASONS = {
    "im2col": "layout step: gathers each conv window into channels so the conv runs as a 1x1 GEMM "
    "(VTA's loads move whole channel blocks and cannot gather bytes)",
    "gap": "global average: a division by H*W (not a power of two) and the classifier's final scale; few ops",
    "softmax": "needs exp and a division; the ALU has min/max/add/shift/mul only",
    "flatten": "a reshape of the host's own tensor: no data movement",
    "avgpool": "average: a division by the window size, which the ALU cannot do exactly",
    "add": "residual addition of two int8 tensors with different scales: not lowered to the ALU",
    "concat": "inputs are not all VTA convolutions of one tensor with whole channel blocks",
    "relu": "a ReLU not folded into a conv",
}


def host_reason(op: Op, *, pools: bool = True) -> str:
    """Why `op` runs on the host (for the placement report)."""
    if op.kind == "maxpool":
        if not pools:
            return "max-pools kept on the host (pools=False)"
        return "input is computed on the host, or the windows overhang a possibly negative input (VTA pads with 0)"
    if op.kind == "conv":
        if op.attrs["pad"] > 15:
            return "padding above 15 does not fit the LOAD pad fields"
        return "no tiling fits VTA's buffers"
    return _HOST_REASONS.get(op.kind, "no VTA lowering for this op")
