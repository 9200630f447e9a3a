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
    """Float32 initializers read by a Conv (weight or bias), in initializer order."""
    read = {name for node in model.graph.node if node.op_type == "Conv" for name in node.input[1:]}
    return [t.name for t in model.graph.initializer if t.name in read and t.data_type == onnx.TensorProto.FLOAT]


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


def compress(model, bits: int = 8, density: float = 1.0) -> Compressed:
    """`model` (a `frontend.Model`) prepared for a `--compress` build (see the module docstring)."""
    from ..frontend import import_onnx

    check_options(bits, density)
    names = conv_initializers(model.onnx)
    if not names:
        raise TvmsqzError(f"{model.name} has no convolution weights to compress")
    split = _split(model.onnx, set(names))
    mod, _ = import_onnx(split, tuple(model.input.shape), weights_as_params=True)
    order = [p.name for p in mod["main"].params[1:]]
    if sorted(order) != sorted(names):
        raise TvmsqzError("the TVM import did not keep the convolution weights as parameters; cannot compress")
    values = {t.name: numpy_helper.to_array(t) for t in model.onnx.graph.initializer if t.name in set(names)}
    tensors: list[tuple[str, np.ndarray | Shared]] = []
    lossless = True
    decoded: dict[str, np.ndarray] = {}
    for name in order:
        value = np.asarray(values[name], dtype=np.float32)
        if value.ndim == 4:
            shared = share(value, bits, density)
            lossless &= shared.lossless
            tensors.append((name, shared))
            decoded[name] = shared.dense()
        else:
            tensors.append((name, value))
            decoded[name] = value
    blob, stats = encode(tensors)
    rebuilt = onnx.ModelProto()
    rebuilt.CopyFrom(model.onnx)
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
