"""A small dataflow graph of a SqueezeNet-class ONNX model, a numpy fp32 interpreter for it
(used for calibration), and the VTA/host partition.

Supported ONNX ops: Conv (groups 1, symmetric pads), Relu, MaxPool, AveragePool (unpadded),
GlobalAveragePool, Concat, Add, Flatten, Reshape (to 2-D), Softmax, Dropout/Identity.
A Relu that is a Conv's only consumer is folded into the Conv.

Partition rule: a convolution runs on VTA when its input and output channel counts are
multiples of 16 (so not the 3-channel first conv, nor the 1000-class classifier); a Concat whose
inputs are all VTA convolutions of one tensor (a Fire module's expand1x1 + expand3x3) becomes one
fused VTA layer. Everything else (first conv, pooling, bypass additions, classifier, softmax)
runs on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from tvmsqz.errors import TvmsqzError


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
            ops.append(Op("conv", [ins[0]], out, {"weight": w.astype(np.float32), "bias": b.astype(np.float32),
                                                   "stride": int(strides[0]), "pad": int(pads[0]), "relu": False},
                          n.name))
        elif t == "Relu":
            ops.append(Op("relu", ins, out, name=n.name))
        elif t in ("MaxPool", "AveragePool"):
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if any(pads) and t == "AveragePool":
                raise TvmsqzError(f"{t} {n.name}: padding is not supported")
            ks = list(a["kernel_shape"])
            st = list(a.get("strides", [1, 1]))
            ops.append(Op("maxpool" if t == "MaxPool" else "avgpool", ins, out,
                          {"kernel": int(ks[0]), "stride": int(st[0]), "pads": [int(p) for p in pads],
                           "ceil": int(a.get("ceil_mode", 0))}, n.name))
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


def _pool_out(n, k, s, p0, p1, ceil):
    if ceil:
        o = -(-(n + p0 + p1 - k) // s) + 1
        if (o - 1) * s >= n + p0:  # last window must start inside the input (ONNX/Caffe rule)
            o -= 1
        return o
    return (n + p0 + p1 - k) // s + 1


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
            sh[op.output] = (1, x[1], _pool_out(x[2], k, s, p[0], p[2], op.attrs["ceil"]),
                             _pool_out(x[3], k, s, p[1], p[3], op.attrs["ceil"]))
        elif op.kind == "gap":
            sh[op.output] = (1, x[1], 1, 1)
        elif op.kind == "concat":
            sh[op.output] = (1, sum(sh[i][1] for i in op.inputs), x[2], x[3])
        elif op.kind == "flatten":
            sh[op.output] = (1, int(np.prod(x[1:])))
        else:
            sh[op.output] = x
    graph.shapes = sh


# ---------------------------------------------------------------------------- numpy fp32

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
            cols[:, ky, kx] = xp[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
    y = w.reshape(o, -1).astype(np.float32) @ cols.reshape(c * k * k, -1)
    if b is not None:
        y += b[:, None]
    return y.reshape(1, o, ho, wo)


def pool2d(x: np.ndarray, kind: str, k: int, s: int, pads, ceil: int) -> np.ndarray:
    _, c, h, w = x.shape
    ho = _pool_out(h, k, s, pads[0], pads[2], ceil)
    wo = _pool_out(w, k, s, pads[1], pads[3], ceil)
    fill = -np.inf if kind == "maxpool" else 0.0
    ph = max(0, (ho - 1) * s + k - h - pads[0])
    pw = max(0, (wo - 1) * s + k - w - pads[1])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], ph), (pads[1], pw)), constant_values=fill)
    out = None
    for ky in range(k):
        for kx in range(k):
            v = xp[:, :, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s]
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


# ---------------------------------------------------------------------------- partition

@dataclass
class VTAUnit:
    """One VTA layer: one conv, or several convs of one input fused through their Concat."""

    name: str
    convs: list  # Op
    input: str
    output: str


def vta_eligible(op: Op, graph: Graph) -> bool:
    if op.kind != "conv":
        return False
    o, c, k, _ = op.attrs["weight"].shape
    return c % 16 == 0 and o % 16 == 0 and op.attrs["pad"] <= 15


def partition(graph: Graph) -> list:
    """Stages in execution order: `VTAUnit`s and lists of host `Op`s."""
    cons = graph.consumers()
    prod = graph.producers()
    fused_into: dict[str, str] = {}  # conv output -> concat output
    units: dict[str, VTAUnit] = {}
    for op in graph.ops:
        if op.kind != "concat":
            continue
        srcs = [prod.get(i) for i in op.inputs]
        if all(s is not None and vta_eligible(s, graph) and len(cons.get(s.output, [])) == 1 for s in srcs) \
                and len({s.inputs[0] for s in srcs}) == 1 \
                and len({graph.shapes[s.output][2:] for s in srcs}) == 1 and len({s.attrs["stride"] for s in srcs}) == 1:
            name = op.name or op.output
            units[op.output] = VTAUnit(name, srcs, srcs[0].inputs[0], op.output)
            for s in srcs:
                fused_into[s.output] = op.output
    stages: list = []
    host: list = []
    for op in graph.ops:
        if op.output in fused_into:
            continue
        unit = units.get(op.output)
        if unit is None and vta_eligible(op, graph):
            unit = VTAUnit(op.name or op.output, [op], op.inputs[0], op.output)
        if unit is not None:
            if host:
                stages.append(host)
                host = []
            stages.append(unit)
        else:
            host.append(op)
    if host:
        stages.append(host)
    return stages
