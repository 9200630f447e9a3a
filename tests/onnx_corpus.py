"""The corpus of real-world ONNX variants a user may bring, generated at test time (issue 23).

Nothing here is stored: every variant is exported by `torch.onnx` from a built-in seeded model
or derived from such an export with `onnx.helper` (the graph forms older exporters and other
tools write), `onnxconverter_common` (fp16) and onnxslim / onnxsim (simplified graphs).

    python tests/onnx_corpus.py OUT_DIR        # writes every variant as OUT_DIR/NAME.onnx

A variant is `(name, build)` where `build()` returns an `onnx.ModelProto`; `VARIANTS` lists the
corpus, `tests/test_corpus.py` compiles each and compares it with ONNX Runtime on the same file.
"""

from __future__ import annotations

import functools
import io
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

MODELS = ("squeezenet1_1", "squeezenet1_0", "squeezenet1_0_bypass", "squeezenet1_0_complex_bypass")
#: The opsets the TorchScript exporter writes (it stops at 23 in torch 2.13) ...
TORCHSCRIPT_OPSETS = range(9, 24)
#: ... and those the dynamo exporter writes natively (18 and up), to the newest onnx defines.
DYNAMO_FIRST_OPSET = 18


def newest_opset() -> int:
    return onnx.defs.onnx_opset_version()


@functools.lru_cache(maxsize=8)
def _torch_model(name: str):
    from tvmsqz.models import torch_model

    return torch_model(name, seed=0).eval()


def _export(name: str, opset: int, *, dynamo: bool = False, batch: int = 1, dynamic_batch: bool = False, **kw):
    import torch

    model = _torch_model(name)
    x = torch.zeros(batch, 3, 224, 224)
    axes = {"data": {0: "N"}, "output": {0: "N"}} if dynamic_batch else None
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = ({0: torch.export.Dim("N", min=1, max=64)},) if dynamic_batch else None
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                opset_version=opset,
                input_names=["data"],
                output_names=["output"],
                dynamic_shapes=shapes,
                verbose=False,
            )
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["data"],
            output_names=["output"],
            dynamic_axes=axes,
            **kw,
        )
    return onnx.load_from_string(buf.getvalue())


def _quiet():
    """Silence the exporters' prints (the dynamo exporter reports its steps on stdout)."""
    import contextlib

    return contextlib.redirect_stdout(io.StringIO())


def opset_of(model: onnx.ModelProto) -> int:
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# ------------------------------------------------------------------ graph forms (onnx.helper)


def weights_as_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer becomes a `Constant` node (as some exporters and optimizers write)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in out.graph.initializer]
    del out.graph.initializer[:]
    _prepend(out, nodes)
    _drop_initializer_inputs(out)
    return out


def weights_computed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Caffe2-era forms: uniform tensors (the zero biases) from `ConstantOfShape`, the others
    reshaped at run time from a flat `Constant` (a computed constant the importer must fold)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for t in out.graph.initializer:
        arr = numpy_helper.to_array(t)
        shape = numpy_helper.from_array(np.asarray(arr.shape, np.int64), f"{t.name}__shape")
        if arr.size and np.all(arr == arr.flat[0]):
            fill = numpy_helper.from_array(np.asarray([arr.flat[0]], arr.dtype), "value")
            nodes.append(helper.make_node("Constant", [], [shape.name], value=shape))
            nodes.append(helper.make_node("ConstantOfShape", [shape.name], [t.name], value=fill))
        else:
            flat = numpy_helper.from_array(arr.reshape(-1), f"{t.name}__flat")
            nodes.append(helper.make_node("Constant", [], [flat.name], value=flat))
            nodes.append(helper.make_node("Constant", [], [shape.name], value=shape))
            nodes.append(helper.make_node("Reshape", [flat.name, shape.name], [t.name]))
    del out.graph.initializer[:]
    _prepend(out, nodes)
    _drop_initializer_inputs(out)
    return out


def weights_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Initializers also listed as graph inputs (the TorchScript exporter's
    `keep_initializers_as_inputs=True`, the default of old exporters)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    listed = {i.name for i in out.graph.input}
    for t in out.graph.initializer:
        if t.name not in listed:
            out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


def with_dropout(model: onnx.ModelProto, *, mask: bool) -> onnx.ModelProto:
    """A `Dropout` (inference: identity) before the classifier conv, with or without its mask
    output, as Caffe2-era and training-mode exports carry."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    last = convs[-1]
    src = last.input[0]
    dropped = f"{src}__dropout"
    outputs = [dropped, f"{src}__mask"] if mask else [dropped]
    attrs = {"ratio": 0.5} if opset_of(out) < 12 else {}
    if opset_of(out) < 7:
        attrs["is_test"] = 1
    node = helper.make_node("Dropout", [src], outputs, name="dropout", **attrs)
    last.input[0] = dropped
    index = list(out.graph.node).index(last)
    out.graph.node.insert(index, node)
    return out


def with_head(model: onnx.ModelProto, head: str | None) -> onnx.ModelProto:
    """`Softmax` or `LogSoftmax` after the logits (the Caffe2-era files end in Softmax)."""
    if head is None:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    logits = out.graph.output[0].name
    renamed = f"{logits}__logits"
    for node in out.graph.node:
        node.output[:] = [renamed if o == logits else o for o in node.output]
    axis = {"axis": 1}
    out.graph.node.append(helper.make_node(head, [renamed], [logits], name=head.lower(), **axis))
    return out


def with_reshape_tail(model: onnx.ModelProto) -> onnx.ModelProto:
    """The final `Flatten` written as `Reshape(x, [0, -1])` (what other exporters emit)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, node in enumerate(out.graph.node):
        if node.op_type == "Flatten":
            shape = numpy_helper.from_array(np.asarray([0, -1], np.int64), "tail__shape")
            out.graph.initializer.append(shape)
            out.graph.node[i].CopyFrom(helper.make_node("Reshape", [node.input[0], shape.name], list(node.output)))
            return out
    raise AssertionError("no Flatten in the export")


def with_nhwc_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """An NHWC image input and a leading `Transpose` (TF/Keras-style exports)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inp = out.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    n, c, h, w = dims
    nchw = f"{inp.name}__nchw"
    for node in out.graph.node:
        node.input[:] = [nchw if i == inp.name else i for i in node.input]
    _prepend(out, [helper.make_node("Transpose", [inp.name], [nchw], perm=[0, 3, 1, 2])])
    out.graph.input[0].CopyFrom(helper.make_tensor_value_info(inp.name, onnx.TensorProto.FLOAT, [n, h, w, c]))
    return out


def with_split_concat(model: onnx.ModelProto) -> onnx.ModelProto:
    """A tuple-producing node between two convs: the first Fire module's squeeze output goes
    through `Split` into two halves that are concatenated again (a graph Relax's
    `ConvertLayout` cannot convert: its tuple output meets a layout it expects nested)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    relu = next(n for n in out.graph.node if n.op_type == "Relu" and n.input[0] == convs[1].output[0])
    src = relu.output[0]
    parts = [f"{src}__a", f"{src}__b"]
    joined = f"{src}__joined"
    for node in out.graph.node:
        node.input[:] = [joined if i == src else i for i in node.input]
    index = list(out.graph.node).index(relu) + 1
    split_attrs = {"axis": 1}
    if opset_of(out) >= 18:
        split_attrs["num_outputs"] = 2
    elif opset_of(out) < 13:
        pass  # equal halves by default
    out.graph.node.insert(index, helper.make_node("Split", [src], parts, name="split", **split_attrs))
    out.graph.node.insert(index + 1, helper.make_node("Concat", parts, [joined], name="rejoin", axis=1))
    return out


def with_sequence(model: onnx.ModelProto) -> onnx.ModelProto:
    """A tuple between two convs: the first squeeze's output goes into a one-element
    `SequenceConstruct` and comes back by `SequenceAt` (Relax: a tuple and its item)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    relu = next(n for n in out.graph.node if n.op_type == "Relu" and n.input[0] == convs[1].output[0])
    src = relu.output[0]
    seq, back = f"{src}__seq", f"{src}__back"
    for node in out.graph.node:
        node.input[:] = [back if i == src else i for i in node.input]
    index = list(out.graph.node).index(relu) + 1
    zero = numpy_helper.from_array(np.asarray(0, np.int64), f"{src}__zero")
    out.graph.initializer.append(zero)
    out.graph.node.insert(index, helper.make_node("SequenceConstruct", [src, src], [seq], name="sequence"))
    out.graph.node.insert(index + 1, helper.make_node("SequenceAt", [seq, zero.name], [back], name="sequence_at"))
    return out


def with_topk(model: onnx.ModelProto) -> onnx.ModelProto:
    """A tuple-producing node between two convs: the first squeeze's channels sorted by `TopK`
    (k = all of them; outputs values and indices, Relax: a tuple), the values feed the expands."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    relu = next(n for n in out.graph.node if n.op_type == "Relu" and n.input[0] == convs[1].output[0])
    src = relu.output[0]
    values, indices = f"{src}__sorted", f"{src}__order"
    for node in out.graph.node:
        node.input[:] = [values if i == src else i for i in node.input]
    index = list(out.graph.node).index(relu) + 1
    channels = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == convs[1].input[1])).shape[0]
    if opset_of(out) >= 10:
        k = numpy_helper.from_array(np.asarray([channels], np.int64), f"{src}__k")
        out.graph.initializer.append(k)
        node = helper.make_node("TopK", [src, k.name], [values, indices], name="topk", axis=1)
    else:
        node = helper.make_node("TopK", [src], [values, indices], name="topk", axis=1, k=channels)
    out.graph.node.insert(index, node)
    return out


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxconverter-common's float16 conversion (weights, activations and the input in fp16)."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float16.convert_float_to_float16(model, keep_io_types=False)


def slimmed(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    with _quiet():
        return onnxslim.slim(model)


def simplified(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    with _quiet():
        out, ok = onnxsim.simplify(model)
    assert ok, "onnxsim could not validate its own output"
    return out


def _prepend(model: onnx.ModelProto, nodes: list) -> None:
    existing = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + existing)


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Initializers moved into nodes are no graph inputs any more (old exports listed them)."""
    moved = {o for n in model.graph.node for o in n.output}
    keep = [i for i in model.graph.input if i.name not in moved]
    del model.graph.input[:]
    model.graph.input.extend(keep)


# ------------------------------------------------------------------ the corpus


Variant = tuple[str, Callable[[], onnx.ModelProto]]


def _base(name: str = "squeezenet1_1", opset: int = 17) -> onnx.ModelProto:
    return _cached_export(name, opset, False)


@functools.cache
def _cached_export(name: str, opset: int, dynamo: bool) -> onnx.ModelProto:
    return _export(name, opset, dynamo=dynamo)


def _variants() -> list[Variant]:
    out: list[Variant] = []
    for name in MODELS:
        for opset in TORCHSCRIPT_OPSETS:
            out.append((f"{name}-torchscript-opset{opset}", functools.partial(_cached_export, name, opset, False)))
        for opset in range(DYNAMO_FIRST_OPSET, newest_opset() + 1):
            out.append((f"{name}-dynamo-opset{opset}", functools.partial(_cached_export, name, opset, True)))
    forms = {
        "weights-constant-nodes": weights_as_constants,
        "weights-computed": weights_computed,
        "weights-graph-inputs": weights_as_inputs,
        "dropout": functools.partial(with_dropout, mask=False),
        "dropout-mask": functools.partial(with_dropout, mask=True),
        "softmax": functools.partial(with_head, head="Softmax"),
        "logsoftmax": functools.partial(with_head, head="LogSoftmax"),
        "reshape-tail": with_reshape_tail,
        "onnxslim": slimmed,
        "onnxsim": simplified,
        "fp16": to_fp16,
    }
    for form, fn in forms.items():
        for opset in (9, 17):
            out.append((f"squeezenet1_1-opset{opset}-{form}", lambda fn=fn, opset=opset: fn(_base(opset=opset))))
    # The Caffe2-era model-zoo file, as a whole: opset 9, computed weights, Dropout with its
    # mask, Softmax at the end.
    out.append(
        (
            "squeezenet1_0-opset9-caffe2-era",
            lambda: with_head(
                with_dropout(weights_computed(_base("squeezenet1_0", 9)), mask=True),
                "Softmax",
            ),
        )
    )
    out.append(
        (
            "squeezenet1_1-opset17-weights-inputs-keep",
            lambda: _export("squeezenet1_1", 17, keep_initializers_as_inputs=True),
        )
    )
    return out


VARIANTS: list[Variant] = _variants()

#: Graphs whose input the importer must reshape or whose layout pass must decline: tested
#: separately (their checks differ), built by the same helpers.
SPECIAL: dict[str, Callable[[], onnx.ModelProto]] = {
    "squeezenet1_1-nhwc-input": lambda: with_nhwc_input(_base()),
    "squeezenet1_1-split-concat": lambda: with_split_concat(_base()),
    "squeezenet1_1-opset9-split-concat": lambda: with_split_concat(_base(opset=9)),
    "squeezenet1_1-sequence": lambda: with_sequence(_base()),
    "squeezenet1_1-topk": lambda: with_topk(_base()),
    "squeezenet1_1-dynamic-batch": lambda: _export("squeezenet1_1", 17, dynamic_batch=True),
}


def build(name: str) -> onnx.ModelProto:
    """The variant called `name` (of `VARIANTS` or `SPECIAL`)."""
    table = dict(VARIANTS) | SPECIAL
    return table[name]()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/onnx_corpus.py OUT_DIR", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in [*VARIANTS, *SPECIAL.items()]:
        model = make()
        onnx.save(model, folder / f"{name}.onnx")
        print(f"{name}: opset {opset_of(model)}, {len(model.graph.node)} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
