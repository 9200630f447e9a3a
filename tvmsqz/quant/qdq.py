"""The project's post-training int8 quantizer: an fp32 ONNX model -> a QDQ ONNX model.

Why QDQ (QuantizeLinear/DequantizeLinear pairs) and not a graph of our own: it is what ONNX
Runtime's `quantize_static` and NNCF emit too, so one compiler path (`passes.qdq.FoldQDQ`)
turns every int8 model into the same integer kernels, and ONNX Runtime can run our quantized
model as an independent reference.

What it writes:
  * every Conv's weights as int8 initializers, symmetric per output channel (scale
    max|w_c| / 127, zero point 0, axis 0) behind a DequantizeLinear; the bias stays fp32;
  * one Q/DQ pair (uint8, per tensor) on each Conv's data input: zero point 0 for tensors that
    are never negative (ReLU outputs, so codes 0..255 span [0, max]), asymmetric otherwise (the
    image input). Nothing else: the compiler pushes a Q back through Concat and MaxPool, so a Fire
    module's two expand branches share the concat's scale and write one uint8 buffer;
  * activation ranges from calibration images by `scales.activation_params` (mse, minmax,
    percentile, entropy), measured with ONNX Runtime on the fp32 model;
  * empirical bias correction (Nagel et al. 2019): after the scales are fixed, each quantized
    conv's per-channel mean output error against fp32 on the calibration inputs is subtracted
    from its bias, all layers from one pass of both models (each layer's error is measured with
    its quantized predecessors, so the correction covers the error they pass on).

Layers named in `fp32_layers` (ONNX node names, or "first"/"last") keep fp32 weights and input.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvmsqz.errors import TvmsqzError

from .calibrate import load_calibration
from .scales import METHODS, activation_params

#: Values of each calibrated tensor kept per input (a deterministic stride sample).
SAMPLES_PER_INPUT = 50_000


def _session(model: onnx.ModelProto, outputs: list[str]):
    """An ONNX Runtime session of `model` returning `outputs` (intermediate tensors included)."""
    import onnxruntime as ort

    model = copy.deepcopy(model)
    have = {o.name for o in model.graph.output}
    for name in outputs:
        if name not in have:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the tensors as named
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _convs(model: onnx.ModelProto, fp32_layers) -> tuple[list, list]:
    """(Conv nodes to quantize, [(name, why)] of those kept fp32), in graph order."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if not convs:
        raise TvmsqzError("the model has no Conv to quantize")
    keep = set(fp32_layers)
    names = {n.name for n in convs}
    unknown = keep - names - {"first", "last"}
    if unknown:
        raise TvmsqzError(f"--fp32-layers: no conv named {', '.join(sorted(unknown))} (convs: {convs[0].name}, ...)")
    chosen, kept = [], []
    inits = {i.name for i in model.graph.initializer}
    for i, node in enumerate(convs):
        why = None
        if node.name in keep or ("first" in keep and i == 0) or ("last" in keep and i == len(convs) - 1):
            why = "asked (--fp32-layers)"
        elif node.input[1] not in inits:
            why = "weights are not a constant"
        elif any(a.name == "group" and a.i != 1 for a in node.attribute):
            why = "grouped conv"
        if why:
            kept.append((node.name, why))
        else:
            chosen.append(node)
    return chosen, kept


def _sample(x: np.ndarray, count: int) -> np.ndarray:
    flat = np.asarray(x, np.float32).reshape(-1)
    step = max(1, flat.size // count)
    return flat[::step]


def quantize_onnx(
    model: onnx.ModelProto,
    calibration: list,
    *,
    method: str = "mse",
    fp32_layers=(),
    bias_correction: bool = True,
    per_channel: bool = True,
) -> tuple[onnx.ModelProto, dict]:
    """(QDQ model, report) from an fp32 ONNX `model` and (1, 3, H, W) calibration inputs."""
    if method not in METHODS:
        raise TvmsqzError(f"unknown calibration method {method!r}: expected one of {', '.join(METHODS)}")
    if not calibration:
        raise TvmsqzError("no calibration input")
    original = model
    model = copy.deepcopy(model)
    graph = model.graph
    convs, kept = _convs(model, fp32_layers)
    data_inputs = list(dict.fromkeys(n.input[0] for n in convs))
    input_name = graph.input[0].name

    # 1. activation ranges from the fp32 model
    sess = _session(model, data_inputs)
    names = [o.name for o in sess.get_outputs()]
    samples: dict[str, list] = {t: [] for t in data_inputs}
    minimum = dict.fromkeys(data_inputs, 0.0)
    for x in calibration:
        values = dict(zip(names, sess.run(None, {input_name: np.asarray(x, np.float32)})))
        for t in data_inputs:
            v = values[t]  # a stride sample, plus the true extremes (min-max must see them)
            samples[t].append(np.concatenate([_sample(v, SAMPLES_PER_INPUT), [v.min(), v.max()]]).astype(np.float32))
            minimum[t] = min(minimum[t], float(values[t].min()))
    params = {
        t: activation_params(np.concatenate(samples[t]), method, nonnegative=minimum[t] >= 0) for t in data_inputs
    }

    # 2. weights: int8 per output channel, behind DequantizeLinear
    inits = {i.name: i for i in graph.initializer}
    new_nodes_for: dict[str, list] = {}  # tensor -> Q/DQ nodes placed right after its producer
    weight_nodes = []
    report_layers = []
    weight_sources: dict[str, str] = {}
    for node in convs:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        amax = np.abs(w).reshape(w.shape[0], -1).max(axis=1) if per_channel else np.full(w.shape[0], np.abs(w).max())
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        codes = np.clip(np.round(w / scale.reshape(-1, *([1] * (w.ndim - 1)))), -127, 127).astype(np.int8)
        base = f"{node.name or node.output[0]}_w"
        graph.initializer.extend(
            [
                numpy_helper.from_array(codes, base + "_q"),
                numpy_helper.from_array(scale, base + "_scale"),
                numpy_helper.from_array(np.zeros(len(scale), np.int8), base + "_zero"),
            ]
        )
        weight_nodes.append(
            helper.make_node("DequantizeLinear", [base + "_q", base + "_scale", base + "_zero"], [base + "_dq"], axis=0)
        )
        weight_sources[base + "_q"] = node.input[1]  # the int8 codes' fp32 weights (`compress` reads them)
        node.input[1] = base + "_dq"
        s, z = params[node.input[0]]
        report_layers.append(
            {
                "name": node.name,
                "input_scale": s,
                "input_zero_point": z,
                "weight_scale_min": float(scale.min()),
                "weight_scale_max": float(scale.max()),
            }
        )

    # 3. one Q/DQ pair per conv data input
    for t in data_inputs:
        s, z = params[t]
        q_names = (f"{t}_qscale", f"{t}_qzero")
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(s, np.float32), q_names[0]),
                numpy_helper.from_array(np.array(z, np.uint8), q_names[1]),
            ]
        )
        new_nodes_for[t] = [
            helper.make_node("QuantizeLinear", [t, *q_names], [f"{t}_q"]),
            helper.make_node("DequantizeLinear", [f"{t}_q", *q_names], [f"{t}_dq"]),
        ]
    for node in convs:
        node.input[0] = f"{node.input[0]}_dq"
    ordered = list(weight_nodes)
    for t in (i.name for i in graph.input):
        ordered.extend(new_nodes_for.get(t, []))
    for node in list(graph.node):
        ordered.append(node)
        for out in node.output:
            ordered.extend(new_nodes_for.get(out, []))
    del graph.node[:]
    graph.node.extend(ordered)
    used = {name for n in graph.node for name in n.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:  # the fp32 weights the int8 codes replaced
        graph.initializer.remove(init)
    inits = {i.name: i for i in graph.initializer}

    # 4. bias correction, layer by layer in graph order: each conv's per-channel mean output
    #    error is measured with its predecessors already corrected (correcting all from one pass
    #    counts a predecessor's error twice: measured here, 3x the error of no correction)
    corrected = 0
    if bias_correction:
        outputs = [n.output[0] for n in convs]
        f_sess = _session(original, outputs)  # conv output names are unchanged
        feeds = [{input_name: np.asarray(x, np.float32)} for x in calibration]
        order = [o.name for o in f_sess.get_outputs()]
        reference = {o: 0.0 for o in outputs}
        for feed in feeds:
            for o, v in zip(order, f_sess.run(None, feed)):
                if o in reference:
                    reference[o] = reference[o] + v.mean(axis=(0, 2, 3))
        for node in convs:
            q_sess = _session(model, [node.output[0]])
            index = [o.name for o in q_sess.get_outputs()].index(node.output[0])
            total = sum(q_sess.run(None, feed)[index].mean(axis=(0, 2, 3)) for feed in feeds)
            delta = ((total - reference[node.output[0]]) / len(feeds)).astype(np.float32)
            _add_to_bias(model, node, -delta)
            corrected += 1
    onnx.checker.check_model(model)
    report = {
        "precision": "int8",
        "method": method,
        "weights": "int8, symmetric, per output channel" if per_channel else "int8, symmetric, per tensor",
        "activations": "uint8, per tensor",
        "bias_correction": corrected,
        "quantized_convs": len(convs),
        "fp32_layers": [{"name": n, "why": why} for n, why in kept],
        "layers": report_layers,
        "weight_sources": weight_sources,
    }
    return model, report


def _add_to_bias(model: onnx.ModelProto, node, delta: np.ndarray) -> None:
    """Add `delta` (per output channel) to a conv's bias initializer (made if it has none)."""
    inits = {i.name: i for i in model.graph.initializer}
    if len(node.input) > 2 and node.input[2] in inits:
        bias = inits[node.input[2]]
        bias.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(bias) + delta).astype(np.float32), bias.name))
        return
    name = f"{node.name or node.output[0]}_bias_correction"
    model.graph.initializer.append(numpy_helper.from_array(delta.astype(np.float32), name))
    if len(node.input) > 2:
        node.input[2] = name
    else:
        node.input.append(name)


def quantize_model(model, calibrate: Any = None, *, method: str = "mse", fp32_layers=(), bias_correction=True):
    """A `frontend.Model` quantized to QDQ int8 (`quantize_onnx`), calibrated on `calibrate`
    (`calibrate.load_calibration`: None, a folder of photos, a .npy/.npz); the report is kept
    as `quant_report` (the manifest records it)."""
    from tvmsqz.frontend import Model

    size = int(model.input.shape[2])
    if isinstance(calibrate, (list, tuple)):
        inputs, source = [np.asarray(x, np.float32) for x in calibrate], f"{len(calibrate)} inputs given"
    else:
        inputs, source = load_calibration(calibrate, model.preprocess, size)
    batch = int(model.input.shape[0])
    if batch != 1:
        inputs = [np.repeat(x, batch, axis=0) for x in inputs]
    qdq, report = quantize_onnx(
        model.onnx, inputs, method=method, fp32_layers=fp32_layers, bias_correction=bias_correction
    )
    report["calibration"] = source
    out = Model(model.name, qdq, model.info, model.input, model._input_shape, model.source)  # noqa: SLF001
    # What a `--compress` int8 build needs to quantize at load from the fp32 weight file: the fp32
    # graph, and which of its weights each int8 initializer was quantized from.
    out.weight_sources = report.pop("weight_sources")
    out.fp32_onnx = model.onnx
    out.quant_report = report
    return out
