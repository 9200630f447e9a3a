"""The ImageNet-trained SqueezeNet v1.0 in Deep Compression form: decoder and ONNX builder.

Data lives in `paths.DEEP_COMPRESSION_DIR` (never copied into the project):
`compressed_SqueezeNet.net` (weights) and `SqueezeNet_deploy.prototxt` (network).

`.net` format (little-endian, sequential, no padding), L = number of Convolution layers of
the prototxt, in prototxt order:

1. `uint32[L]`: n, the number of stored weight entries of each layer;
2. per layer: `float32[256]` codebook, `float32[out_channels]` biases, `uint8[n]` codebook
   indices, `uint8[ceil(n/2)]` 4-bit position gaps (low nibble first). An entry's flat OIHW
   position is the running sum of (gap + 1), minus one; positions never stored are 0.

The file must be consumed exactly: truncated or oversized files raise `TvmsqzError`.

The ONNX model follows Caffe conventions: input `data` (N, 3, 227, 227), BGR, 0..255 minus
the per-channel mean (104, 117, 123) (preprocessing is outside the model, see
`tvmsqz.images.preprocess(img, "caffe", 227)`); max-pooling with ceil rounding; conv_final
with pad 1; global average pooling; softmax; output `prob` (N, 1000). The shared prototxt
ends at the global average pool (no Softmax layer), so the builder appends the Softmax that
the design contract promises (probabilities); it does not change the ranking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvmsqz import paths
from tvmsqz.errors import TvmsqzError

__all__ = [
    "NET_FILE",
    "PROTOTXT_FILE",
    "ConvLayer",
    "CaffeLayer",
    "parse_prototxt",
    "conv_layers",
    "find_prototxt",
    "decode",
    "build_onnx",
    "default_net_path",
]

NET_FILE = "compressed_SqueezeNet.net"
PROTOTXT_FILE = "SqueezeNet_deploy.prototxt"
CODEBOOK_SIZE = 256
OPSET = 17


def default_net_path() -> Path:
    """The shared `.net` file (read `paths.DEEP_COMPRESSION_DIR` at call time)."""
    return Path(paths.DEEP_COMPRESSION_DIR) / NET_FILE


# --------------------------------------------------------------------------- prototxt


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|([{}:])|("(?:[^"\\]|\\.)*")|([^\s{}:"#]+))')


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse prototxt near {text[pos : pos + 30]!r}")
        pos = m.end()
        if m.group(1) is not None:
            continue
        out.append(m.group(2) or m.group(3) or m.group(4))
    return out


#: The deepest nesting of `{ }` a prototxt may have (a deploy prototxt uses 3: layer, param, shape).
MAX_DEPTH = 16


def _value(tok: str):
    if tok.startswith('"'):
        return tok[1:-1]
    try:
        return int(tok)
    except ValueError:
        try:
            return float(tok)
        except ValueError:
            return tok  # enum identifier such as MAX


def _parse_block(tokens: list[str], i: int, closing: bool) -> tuple[list[tuple[str, object]], int]:
    """Tokens -> nested (key, value) lists, iteratively (no recursion: braces nested thousands
    deep are refused at MAX_DEPTH, never a RecursionError)."""
    root: list[tuple[str, object]] = []
    stack = [root]
    while i < len(tokens):
        tok = tokens[i]
        if tok == "}":
            if len(stack) == 1:
                if closing:
                    return root, i + 1
                raise ValueError("unbalanced '}' in prototxt")
            stack.pop()
            i += 1
            continue
        if tok in ("{", ":"):
            raise ValueError(f"unexpected {tok!r} in prototxt")
        key = tok
        i += 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        if i >= len(tokens):
            raise ValueError(f"prototxt ends after {key!r}")
        if tokens[i] == "{":
            if len(stack) >= MAX_DEPTH:
                raise ValueError(f"blocks nested deeper than {MAX_DEPTH}")
            sub: list[tuple[str, object]] = []
            stack[-1].append((key, sub))
            stack.append(sub)
            i += 1
        elif tokens[i] in ("}", ":"):
            raise ValueError(f"{key!r} has no value")
        else:
            stack[-1].append((key, _value(tokens[i])))
            i += 1
    if len(stack) > 1 or closing:
        raise ValueError("unbalanced '{' in prototxt")
    return root, i


def _get(items, key, default=None):
    for k, v in items:
        if k == key:
            return v
    return default


def _get_all(items, key):
    return [v for k, v in items if k == key]


@dataclass(frozen=True)
class CaffeLayer:
    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ConvLayer:
    name: str
    out_channels: int
    in_channels: int
    kernel: int
    stride: int
    pad: int

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, self.kernel, self.kernel)


@dataclass(frozen=True)
class Network:
    input_name: str
    input_shape: tuple[int, ...]
    layers: tuple[CaffeLayer, ...]
    convs: tuple[ConvLayer, ...]


def _one(v, what):
    # kernel_size/stride/pad may be repeated fields in Caffe; accept a single or equal values.
    if isinstance(v, list):
        if not v:
            return None
        if any(x != v[0] for x in v):
            raise ValueError(f"non-square {what} is not supported")
        return v[0]
    return v


#: Bounds on what a prototxt may declare (far beyond any SqueezeNet-class network, far below a
#: typo that would plan terabytes): the input (as frontend.INPUT_BOUNDS), and per layer.
INPUT_DIMS = (("batch", 1, 4096), ("channels", 1, 4), ("height", 8, 4096), ("width", 8, 4096))
MAX_KERNEL = 64
MAX_STRIDE = 64
MAX_CHANNELS = 65536
MAX_LAYER_WEIGHTS = 1 << 28


def _number(value, what: str, low: int, high: int) -> int:
    """An integer field within [low, high]; anything else (a word, a float, out of range) refuses."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not an integer")
    if not low <= value <= high:
        raise ValueError(f"{what} {value} is outside {low}..{high}")
    return value


def _param(block, key: str) -> list:
    """A `*_param { }` sub-block (empty when absent); a scalar in its place refuses."""
    value = _get(block, key, [])
    if not isinstance(value, list):
        raise ValueError(f"{key} is not a {{ }} block")
    return value


def _field(items, key: str, what: str, low: int, high: int, default: int | None) -> int | None:
    value = _one(_get_all(items, key), what)
    if value is None:
        return default
    return _number(value, what, low, high)


def parse_prototxt(path: str | Path) -> Network:
    """Parse a Caffe deploy prototxt into layers plus the convolution shapes it implies.

    Total: whatever the file holds, the result is a `Network` whose every field is checked (types,
    bounds, blobs that exist, one top per layer) or one `TvmsqzError` naming the file and the layer.
    """
    path = Path(path)
    try:
        items, _ = _parse_block(_tokens(path.read_text()), 0, False)
    except OSError as e:
        raise TvmsqzError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:  # includes UnicodeDecodeError
        raise TvmsqzError(f"{path.name} is not a valid prototxt: {e}") from None
    try:
        return _network(items, path)
    except ValueError as e:
        raise TvmsqzError(f"{path.name}: {e}") from None


def _network(items, path: Path) -> Network:
    input_name = _get(items, "input")
    if input_name is not None and not isinstance(input_name, str):
        raise ValueError(f"input {input_name!r} is not a blob name")
    dims = _get_all(items, "input_dim")
    if input_name is None or len(dims) != 4:
        shape_block = _get(items, "input_shape")
        if input_name is None or not isinstance(shape_block, list):
            raise ValueError("no 4-d network input declared")
        dims = _get_all(shape_block, "dim")
    if len(dims) != 4:
        raise ValueError(f"network input must be 4-d, got {len(dims)} dimensions")
    dims = tuple(_number(d, f"input {what}", low, high) for d, (what, low, high) in zip(dims, INPUT_DIMS))

    layers: list[CaffeLayer] = []
    channels: dict[str, int] = {input_name: dims[1]}
    convs: list[ConvLayer] = []
    blocks = _get_all(items, "layer") + _get_all(items, "layers")
    for index, block in enumerate(blocks):
        if not isinstance(block, list):
            raise ValueError(f"layer {index} is not a {{ }} block")
        name = _get(block, "name", f"#{index}")
        ltype = _get(block, "type")
        bottoms = tuple(_get_all(block, "bottom"))
        tops = tuple(_get_all(block, "top"))
        if not isinstance(name, str) or not isinstance(ltype, str):
            raise ValueError(f"layer {name!r} has no name or type")
        if len(tops) != 1 or not bottoms or not all(isinstance(b, str) for b in bottoms + tops):
            raise ValueError(f"layer {name!r} must have bottoms and exactly one top (blob names)")
        for b in bottoms:
            if b not in channels:
                raise ValueError(f"layer {name!r} reads unknown blob {b!r}")
        params: dict = {}
        try:
            if ltype == "Convolution":
                cp = _param(block, "convolution_param")
                num_output = _number(_get(cp, "num_output"), "num_output", 1, MAX_CHANNELS)
                kernel = _field(cp, "kernel_size", "kernel_size", 1, MAX_KERNEL, None)
                if kernel is None:
                    raise ValueError("no kernel_size")
                stride = _field(cp, "stride", "stride", 1, MAX_STRIDE, 1)
                pad = _field(cp, "pad", "pad", 0, MAX_KERNEL, 0)
                if _get(cp, "group", 1) != 1:
                    raise ValueError("grouped convolution is not supported")
                conv = ConvLayer(name, num_output, channels[bottoms[0]], kernel, stride, pad)
                if num_output * conv.in_channels * kernel * kernel > MAX_LAYER_WEIGHTS:
                    raise ValueError(f"{list(conv.weight_shape)} weights are over {MAX_LAYER_WEIGHTS}")
                convs.append(conv)
                params = {"conv": conv, "bias_term": str(_get(cp, "bias_term", "true")) != "false"}
                channels[tops[0]] = num_output
            elif ltype == "Concat":
                axis = _get(_param(block, "concat_param"), "axis", 1)
                if axis != 1:
                    raise ValueError(f"Concat along axis {axis!r} is not supported")
                channels[tops[0]] = sum(channels[b] for b in bottoms)
                if channels[tops[0]] > MAX_CHANNELS:
                    raise ValueError(f"{channels[tops[0]]} channels are over {MAX_CHANNELS}")
            elif ltype in ("ReLU", "Dropout", "Softmax"):
                channels[tops[0]] = channels[bottoms[0]]
            elif ltype == "Pooling":
                pp = _param(block, "pooling_param")
                params = {
                    "pool": str(_get(pp, "pool", "MAX")),
                    "kernel": _field(pp, "kernel_size", "kernel_size", 1, MAX_KERNEL, None),
                    "stride": _field(pp, "stride", "stride", 1, MAX_STRIDE, 1),
                    "pad": _field(pp, "pad", "pad", 0, MAX_KERNEL, 0),
                    "global": str(_get(pp, "global_pooling", "false")) == "true",
                }
                if params["kernel"] is None and not params["global"]:
                    raise ValueError("pooling needs kernel_size or global_pooling: true")
                channels[tops[0]] = channels[bottoms[0]]
            else:
                raise ValueError(f"layer type {ltype!r} is not supported")
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from None
        layers.append(CaffeLayer(name, ltype, bottoms, tops, params))
    if not convs:
        raise ValueError("no Convolution layers")
    return Network(input_name, dims, tuple(layers), tuple(convs))


def find_prototxt(net_path: str | Path) -> Path:
    """The prototxt for a `.net` file: `SqueezeNet_deploy.prototxt` or the only `*.prototxt`
    beside it, else the shared one in `paths.DEEP_COMPRESSION_DIR`."""
    net_path = Path(net_path)
    here = net_path.parent
    if (here / PROTOTXT_FILE).is_file():
        return here / PROTOTXT_FILE
    beside = sorted(here.glob("*.prototxt"))
    if len(beside) == 1:
        return beside[0]
    shared = Path(paths.DEEP_COMPRESSION_DIR) / PROTOTXT_FILE
    if shared.is_file():
        return shared
    raise TvmsqzError(f"no prototxt found for {net_path.name} (looked beside it and in {shared.parent})")


def conv_layers(prototxt: str | Path | None = None) -> tuple[ConvLayer, ...]:
    """Convolution layers (name, shapes) of the prototxt, in file order."""
    return parse_prototxt(prototxt or Path(paths.DEEP_COMPRESSION_DIR) / PROTOTXT_FILE).convs


# --------------------------------------------------------------------------- .net decoder


def _decode_with(net_path: Path, convs: tuple[ConvLayer, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        blob = net_path.read_bytes()
    except FileNotFoundError:
        raise TvmsqzError(f"no such file: {net_path}") from None
    except OSError as e:
        raise TvmsqzError(f"cannot read {net_path}: {e.strerror or e}") from None

    name = net_path.name
    n_layers = len(convs)
    header = 4 * n_layers
    if len(blob) < header:
        raise TvmsqzError(f"{name} is truncated: {len(blob)} bytes, shorter than its {n_layers}-layer header")
    counts = np.frombuffer(blob, dtype="<u4", count=n_layers).astype(np.int64)
    for conv, n in zip(convs, counts):
        if n > int(np.prod(conv.weight_shape)):
            raise TvmsqzError(
                f"{name} is not a Deep Compression file for this network: layer {conv.name} "
                f"claims {n} entries but has only {int(np.prod(conv.weight_shape))} weights"
            )
    expected = header + sum(
        4 * CODEBOOK_SIZE + 4 * c.out_channels + int(n) + (int(n) + 1) // 2 for c, n in zip(convs, counts)
    )
    if len(blob) < expected:
        raise TvmsqzError(f"{name} is truncated: {len(blob)} bytes, expected {expected}")
    if len(blob) > expected:
        raise TvmsqzError(
            f"{name} has {len(blob) - expected} unexpected trailing bytes ({len(blob)} bytes, expected {expected})"
        )

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    off = header
    for conv, n in zip(convs, counts):
        n = int(n)
        codebook = np.frombuffer(blob, dtype="<f4", count=CODEBOOK_SIZE, offset=off)
        off += 4 * CODEBOOK_SIZE
        bias = np.frombuffer(blob, dtype="<f4", count=conv.out_channels, offset=off).astype(np.float32)
        off += 4 * conv.out_channels
        codes = np.frombuffer(blob, dtype=np.uint8, count=n, offset=off)
        off += n
        packed = np.frombuffer(blob, dtype=np.uint8, count=(n + 1) // 2, offset=off)
        off += (n + 1) // 2
        gaps = np.empty(2 * packed.size, dtype=np.int64)
        gaps[0::2] = packed & 0x0F
        gaps[1::2] = packed >> 4
        positions = np.cumsum(gaps[:n] + 1) - 1
        size = int(np.prod(conv.weight_shape))
        if n and positions[-1] >= size:
            raise TvmsqzError(
                f"{name}: layer {conv.name} addresses position {int(positions[-1])} beyond its {size} weights"
            )
        flat = np.zeros(size, dtype=np.float32)
        flat[positions] = codebook[codes]
        out[conv.name] = (flat.reshape(conv.weight_shape), bias)
    assert off == len(blob)
    return out


def decode(
    path: str | Path | None = None, prototxt: str | Path | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode a Deep Compression `.net` file.

    Returns `{conv layer name: (weights float32 OIHW, bias float32 (O,))}` in prototxt order
    (e.g. "conv1", "fire2/conv1x1_1", ..., "conv_final"). `path` defaults to the shared file;
    `prototxt` defaults to `find_prototxt(path)`. Raises `TvmsqzError` on a missing,
    truncated or oversized file.
    """
    net_path = Path(path) if path is not None else default_net_path()
    if not net_path.is_file():
        raise TvmsqzError(f"no such file: {net_path}")
    proto = Path(prototxt) if prototxt is not None else find_prototxt(net_path)
    return _decode_with(net_path, parse_prototxt(proto).convs)


# --------------------------------------------------------------------------- ONNX


def build_onnx(path: str | Path | None = None, prototxt: str | Path | None = None, batch: int = 1) -> onnx.ModelProto:
    """An ONNX (opset 17) model of the decoded network: input `data`, output `prob`."""
    if int(batch) < 1:
        raise TvmsqzError(f"batch must be >= 1, got {batch}")
    net_path = Path(path) if path is not None else default_net_path()
    if not net_path.is_file():
        raise TvmsqzError(f"no such file: {net_path}")
    proto = Path(prototxt) if prototxt is not None else find_prototxt(net_path)
    net = parse_prototxt(proto)
    weights = _decode_with(net_path, net.convs)

    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    current: dict[str, str] = {net.input_name: "data"}  # Caffe blob -> ONNX tensor (SSA)
    last = "data"
    has_softmax = False
    for layer in net.layers:
        ins = [current[b] for b in layer.bottoms]
        out = layer.name
        if layer.type == "Convolution":
            conv: ConvLayer = layer.params["conv"]
            w, b = weights[conv.name]
            inits.append(numpy_helper.from_array(w, f"{conv.name}/weight"))
            inputs = [ins[0], f"{conv.name}/weight"]
            if layer.params["bias_term"]:
                inits.append(numpy_helper.from_array(b, f"{conv.name}/bias"))
                inputs.append(f"{conv.name}/bias")
            nodes.append(
                helper.make_node(
                    "Conv",
                    inputs,
                    [out],
                    name=layer.name,
                    kernel_shape=[conv.kernel] * 2,
                    strides=[conv.stride] * 2,
                    pads=[conv.pad] * 4,
                )
            )
        elif layer.type == "ReLU":
            nodes.append(helper.make_node("Relu", ins, [out], name=layer.name))
        elif layer.type == "Concat":
            nodes.append(helper.make_node("Concat", ins, [out], name=layer.name, axis=1))
        elif layer.type == "Dropout":
            out = ins[0]  # identity at inference
        elif layer.type == "Softmax":
            flat = f"{layer.name}/flatten"
            nodes.append(helper.make_node("Flatten", ins, [flat], name=flat, axis=1))
            nodes.append(helper.make_node("Softmax", [flat], [out], name=layer.name, axis=1))
            has_softmax = True
        elif layer.type == "Pooling":
            p = layer.params
            if p["global"]:
                op = {"MAX": "GlobalMaxPool", "AVE": "GlobalAveragePool"}.get(p["pool"])
                if op is None:
                    raise TvmsqzError(f"{proto.name}: pooling {p['pool']} is not supported")
                nodes.append(helper.make_node(op, ins, [out], name=layer.name))
            else:
                if p["pool"] != "MAX" or p["pad"] != 0:
                    # Caffe's padded/average pooling rounds differently from ONNX; not needed here.
                    raise TvmsqzError(f"{proto.name}: only unpadded MAX or global pooling is supported")
                k = int(p["kernel"])
                nodes.append(
                    helper.make_node(
                        "MaxPool",
                        ins,
                        [out],
                        name=layer.name,
                        kernel_shape=[k, k],
                        strides=[p["stride"]] * 2,
                        pads=[0, 0, 0, 0],
                        ceil_mode=1,
                    )
                )
        current[layer.tops[0]] = out
        last = out

    if has_softmax:
        if last != "prob":
            nodes.append(helper.make_node("Identity", [last], ["prob"], name="prob"))
    else:
        flat = "prob/flatten"
        nodes.append(helper.make_node("Flatten", [last], [flat], name=flat, axis=1))
        nodes.append(helper.make_node("Softmax", [flat], ["prob"], name="prob", axis=1))

    n_classes = net.convs[-1].out_channels
    shape = (int(batch),) + tuple(net.input_shape[1:])
    graph = helper.make_graph(
        nodes,
        "squeezenet1_0_dc",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [int(batch), n_classes])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="tvmsqz",
        doc_string=f"SqueezeNet v1.0 (Deep Compression) decoded from {net_path.name}",
    )
    model.ir_version = 8
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError and others: a network it cannot express
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TvmsqzError(f"{proto.name}: the network does not make a valid ONNX graph: {first}") from None
    return model
