"""Which tensors of a model go into its weight file, how they are stored, and what that cost.

Every float32 initializer a `Conv` reads is moved out of the compiled code: weights (4-D) by
weight sharing (`sharing.share`: lossless when a tensor holds at most 2**bits distinct values,
as the Deep Compression model does; else pruned to `density` and k-means clustered), biases raw.
Every other initializer becomes a `Constant` node first, so it stays in the code as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import TvmsqzError
from .sharing import Shared, share
from .writer import FileStats, encode

#: `--compress-bits` range (Deep Compression used 8 bits for convs, SqueezeNet's table 6 and 8).
BITS_RANGE = (1, 8)


@dataclass
class Compressed:
    """A model prepared for a `--compress` build: its Relax module with the weights as `main`'s
    parameters (in weight-file order), the weight file's bytes and what they hold."""

    mod: object
    names: list[str]
    shapes: list[tuple[int, ...]]
    blob: bytes
    stats: FileStats
    lossless: bool
    bits: int
    density: float
    onnx: onnx.ModelProto = field(repr=False, default=None)  # the graph with the decoded weights

    def manifest_fields(self, file_name: str) -> dict:
        import hashlib

        return {
            "file": file_name,
            "bytes": len(self.blob),
            "sha256": hashlib.sha256(self.blob).hexdigest(),
            "tensors": self.names,
            "bits": self.bits,
            "density": self.density,
            "lossless": self.lossless,
            "entropy_bound_bytes": round(self.stats.entropy_bytes),
            **({"agreement": self.agreement} if self.agreement else {}),
        }

    #: Top-1 agreement / top-5 overlap with the uncompressed model (lossy builds; `measure_agreement`).
    agreement: dict | None = None


def check_options(bits: int, density: float) -> None:
    if not BITS_RANGE[0] <= int(bits) <= BITS_RANGE[1]:
        raise TvmsqzError(f"--compress-bits must be {BITS_RANGE[0]}..{BITS_RANGE[1]}, got {bits}")
    if not 0.0 < float(density) <= 1.0:
        raise TvmsqzError(f"--compress-density must be in (0, 1], got {density}")


def conv_initializers(model: onnx.ModelProto) -> list[str]:
    """The convolution weights a weight file holds: float32 initializers a Conv reads as its
    weight, and int8 initializers a DequantizeLinear feeding a Conv's weight reads (a QDQ model
    quantized outside tvmsqz), in initializer order. Biases stay in the code (a few KB): then the
    fp32 and the int8 build of a model take the same file."""
    producers = {out: node for node in model.graph.node for out in node.output}
    wanted: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        weight = node.input[1]
        dq = producers.get(weight)
        if dq is not None and dq.op_type == "DequantizeLinear":
            weight = dq.input[0]
            q = producers.get(weight)
            if q is not None and q.op_type == "QuantizeLinear":  # quantized at load (`_quantize_at_load`)
                weight = q.input[0]
        wanted.add(weight)
    kinds = (onnx.TensorProto.FLOAT, onnx.TensorProto.INT8)
    return [t.name for t in model.graph.initializer if t.name in wanted and t.data_type in kinds and len(t.dims) == 4]


def _split(model: onnx.ModelProto, keep: set[str]) -> onnx.ModelProto:
    """A copy whose initializers outside `keep` are Constant nodes (so they stay compiled in)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    moved = [t for t in graph.initializer if t.name not in keep]
    staying = [t for t in graph.initializer if t.name in keep]
    consts = [helper.make_node("Constant", [], [t.name], value=t, name=f"{t.name}/const") for t in moved]
    del graph.initializer[:]
    graph.initializer.extend(staying)
    nodes = consts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    inputs = [i for i in graph.input if i.name not in {t.name for t in moved}]
    del graph.input[:]
    graph.input.extend(inputs)
    return out


def _quantize_at_load(qdq: onnx.ModelProto, fp32: onnx.ModelProto, sources: dict[str, str]) -> onnx.ModelProto:
    """tvmsqz's QDQ graph with each int8 weight initializer replaced by a QuantizeLinear of the
    fp32 weight it was made from (same scale, zero point and axis as its DequantizeLinear): the
    int8 build then reads the fp32 build's weight file and quantizes once, at load (the Relax
    quantize is lifted with the rest of the weight packing). The quantizer's codes are exactly
    round(w / scale) clipped to +-127, which is what QuantizeLinear computes (saturating to -128
    only for a weight below -127.5 scales: none, the scale is max|w| / 127)."""
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    graph = out.graph
    fp32_inits = {t.name: t for t in fp32.graph.initializer}
    dq_of = {n.input[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    replaced = {name for name in sources if name in dq_of and sources[name] in fp32_inits}
    quantizers = []
    for name in sorted(replaced):
        dq = dq_of[name]
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        quantizers.append(
            helper.make_node("QuantizeLinear", [sources[name], *dq.input[1:]], [name], axis=axis, name=f"{name}/load")
        )
    kept = [t for t in graph.initializer if t.name not in replaced]
    del graph.initializer[:]
    lifted = {sources[n] for n in replaced}  # in the fp32 graph's order: the fp32 build's file order
    graph.initializer.extend(kept + [t for t in fp32.graph.initializer if t.name in lifted])
    nodes = quantizers + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def compress(model, bits: int = 8, density: float = 1.0) -> Compressed:
    """`model` (a `frontend.Model`) prepared for a `--compress` build (see the module docstring)."""
    from ..frontend import import_onnx

    check_options(bits, density)
    graph = model.onnx
    sources = getattr(model, "weight_sources", None)
    fp32 = getattr(model, "fp32_onnx", None)
    if model.quantized and sources and fp32 is not None:
        graph = _quantize_at_load(graph, fp32, sources)
    names = conv_initializers(graph)
    if not names:
        raise TvmsqzError(f"{model.name} has no convolution weights to compress")
    split = _split(graph, set(names))
    mod, _ = import_onnx(split, tuple(model.input.shape), weights_as_params=True)
    order = [p.name for p in mod["main"].params[1:]]
    if sorted(order) != sorted(names):
        raise TvmsqzError("the TVM import did not keep the convolution weights as parameters; cannot compress")
    values = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer if t.name in set(names)}
    tensors: list[tuple[str, np.ndarray | Shared]] = []
    lossless = True
    decoded: dict[str, np.ndarray] = {}
    for name in order:
        shared = share(values[name], bits, density)
        lossless &= shared.lossless
        tensors.append((name, shared))
        decoded[name] = shared.dense()
    blob, stats = encode(tensors)
    rebuilt = onnx.ModelProto()
    rebuilt.CopyFrom(graph)
    for t in rebuilt.graph.initializer:
        if t.name in decoded:
            t.CopyFrom(numpy_helper.from_array(decoded[t.name], t.name))
    return Compressed(
        mod=mod,
        names=order,
        shapes=[tuple(int(d) for d in decoded[n].shape) for n in order],
        blob=blob,
        stats=stats,
        lossless=lossless,
        bits=int(bits),
        density=float(density),
        onnx=rebuilt,
    )


def weights_path(artifact: Path) -> Path:
    """Where an artifact's weight file lies: `model.so` -> `model.weights`."""
    return Path(artifact).with_suffix(".weights")


#: Views per built-in object photo for the agreement a lossy build reports (7 photos: 56 inputs).
AGREEMENT_VIEWS = 8


def measure_agreement(original: onnx.ModelProto, compressed: onnx.ModelProto, preprocess: str, size: int) -> dict:
    """Top-1 agreement and top-5 overlap of the compressed weights with the original model on
    crops/flips of the built-in photos, both run by ONNX Runtime (what the bytes cost, shown
    next to the size; `benchmarks/compress.py` measures it on more photos)."""
    import onnxruntime as ort

    from ..images import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, photo_views

    names = [*EVALUATION_PHOTOS, *CALIBRATION_PHOTOS]
    views = [x for _, x in photo_views(names, AGREEMENT_VIEWS, preprocess, size, seed=7)]
    outs = []
    for graph in (original, compressed):
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outs.append(np.concatenate([session.run(None, {name: x})[0].reshape(1, -1) for x in views]))
    ours, ref = outs[1], outs[0]
    top5 = [len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5 for a, b in zip(ours, ref)]
    return {
        "inputs": len(views),
        "top1_agreement": float(np.mean(ours.argmax(1) == ref.argmax(1))),
        "top5_overlap": float(np.mean(top5)),
    }
