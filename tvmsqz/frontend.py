"""ONNX -> Relax `IRModule` with static shapes.

Accepts any SqueezeNet-style classifier: opset 9 and newer, with or without shape information,
weights as initializers or as Constant nodes. The one image input is discovered (initializers
that are also listed as graph inputs, as old exporters did, are not inputs), or named and shaped
by the user with `--input-shape data:1,3,224,224`.
"""

from __future__ import annotations

import contextlib
import gc
import io
from dataclasses import dataclass

import numpy as np
import onnx

from .errors import TvmsqzError
from .quiet import quiet_stderr


@dataclass(frozen=True)
class InputSpec:
    """The one image input of a model: what a runner must feed."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = "NCHW"  # "NHWC": the graph starts with a Transpose to NCHW (TF/Keras-style exports)

    def to_json(self) -> dict:
        out = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.layout != "NCHW":
            out["layout"] = self.layout
        return out

    @property
    def nchw(self) -> tuple[int, ...]:
        """The shape as (N, C, H, W), whatever the input's layout."""
        return nhwc_to_nchw(self.shape) if self.layout == "NHWC" else tuple(self.shape)


def nhwc_to_nchw(shape) -> tuple[int, ...]:
    n, h, w, c = shape
    return (n, c, h, w)


def nhwc_to_nchw_inverse(shape) -> tuple[int, ...]:
    n, c, h, w = shape
    return (n, h, w, c)


def _transposed_to_nchw(model: onnx.ModelProto, name: str) -> bool:
    """Whether every use of input `name` is a `Transpose` with perm (0, 3, 1, 2): an NHWC input."""
    uses = [node for node in model.graph.node if name in node.input]
    if not uses:
        return False
    for node in uses:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if node.op_type != "Transpose" or perm != [0, 3, 1, 2]:
            return False
    return True


_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


def parse_input_shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    """Parse `data:1,3,224,224` (or `1,3,224,224`) into a name and a shape."""
    name, _, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise TvmsqzError(f"bad --input-shape {text!r}: expected NAME:N,C,H,W, e.g. data:1,3,224,224") from None
    if len(shape) != 4 or min(shape) <= 0:
        raise TvmsqzError(f"bad --input-shape {text!r}: expected 4 positive dimensions N,C,H,W")
    return (name or None), shape


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers."""
    initializers = {init.name for init in model.graph.initializer}
    return [inp for inp in model.graph.input if inp.name not in initializers]


def _declared_shape(value: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)


def discover_input(model: onnx.ModelProto, input_shape: str | tuple | None = None, default_batch: int = 1) -> InputSpec:
    """Find the image input and give it a fully static 4-D shape."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise TvmsqzError(f"expected an image classifier with exactly one input, found {len(inputs)} ({names})")
    value = inputs[0]
    elem = value.type.tensor_type.elem_type
    if elem not in _ONNX_DTYPES:
        raise TvmsqzError(
            f"input {value.name!r} has ONNX element type {elem}; only float32/float16 images are supported"
        )
    declared = _declared_shape(value)
    if declared is not None and len(declared) != 4:
        raise TvmsqzError(
            f"input {value.name!r} has {len(declared)} dimensions; expected a 4-D NCHW (or NHWC) image input"
        )
    layout = "NHWC" if _transposed_to_nchw(model, value.name) else "NCHW"

    if input_shape is not None:
        name, shape = parse_input_shape(input_shape) if isinstance(input_shape, str) else (None, tuple(input_shape))
        if name is not None and name != value.name:
            raise TvmsqzError(f"--input-shape names {name!r} but the model's input is {value.name!r}")
        if declared is not None:
            for axis, (want, have) in enumerate(zip(shape, declared)):
                if have is not None and axis > 0 and want != have:
                    raise TvmsqzError(
                        f"--input-shape {list(shape)} does not match the model's input {value.name!r} "
                        f"of shape {[d if d else '?' for d in declared]} (axis {axis})"
                    )
    else:
        if declared is None or any(d is None for d in declared[1:]):
            raise TvmsqzError(f"input {value.name!r} has no static shape; pass --input-shape {value.name}:1,3,224,224")
        shape = (declared[0] or default_batch, *declared[1:])
    shape = tuple(int(d) for d in shape)
    check_input_bounds(value.name, nhwc_to_nchw(shape) if layout == "NHWC" else shape, layout)
    return InputSpec(value.name, shape, _ONNX_DTYPES[elem], layout)


#: What an image classifier's input may be: batch, channels, height/width (inclusive bounds).
INPUT_BOUNDS = {"batch": (1, 4096), "channels": (1, 4), "size": (8, 4096)}


def check_input_bounds(name: str, shape: tuple[int, ...], layout: str = "NCHW") -> None:
    """Refuse shapes no image classifier has (a typo like 1,3,100000,100000 plans terabytes);
    `shape` is (N, C, H, W), `layout` only words the message."""
    n, c, h, w = shape
    for what, values in (("batch", (n,)), ("channels", (c,)), ("size", (h, w))):
        low, high = INPUT_BOUNDS[what]
        for v in values:
            if not low <= v <= high:
                shown = list(nhwc_to_nchw_inverse(shape)) if layout == "NHWC" else list(shape)
                raise TvmsqzError(
                    f"input {name!r} shape {shown} ({layout}): {what} {v} is outside {low}..{high} "
                    "for an image classifier"
                )


def import_onnx(model: onnx.ModelProto, input_shape: str | tuple | None = None, *, weights_as_params: bool = False):
    """Import an ONNX classifier as a Relax IRModule whose weights are constants.

    Weights stay constants (not parameters) so the artifact is self-contained and the compiler
    can prepack them into the layouts tuned kernels want. With `weights_as_params` (a `--compress`
    build, `tvmsqz.compress.model`), the graph's initializers become `main`'s parameters after
    its input instead (attribute `num_input`), bound at load time (`passes.params`).
    """
    from tvm.relax.frontend.onnx import from_onnx

    spec = discover_input(model, input_shape)
    check_constant_sizes(model)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    failure = None
    # The importer prints its own "Error converting operator" (stdout) and TVM's C++ warns when
    # the half-built module is freed (stderr): both stay inside this block, so a failure is one line.
    with quiet_stderr(), contextlib.redirect_stdout(io.StringIO()):
        try:
            mod = from_onnx(
                model, shape_dict={spec.name: spec.shape}, opset=opset or None, keep_params_in_input=weights_as_params
            )
            if weights_as_params:
                from tvm import relax

                mod, _ = relax.frontend.detach_params(mod)  # the values go to the weight file, not the code
        except Exception as exc:  # noqa: BLE001 - the importer raises many types; all mean "cannot import"
            failure = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if failure is not None:
            gc.collect()  # free the importer's BlockBuilder here, not at exit
    if failure is not None:
        raise TvmsqzError(f"cannot import the ONNX model into TVM: {failure}")
    _check_classifier_output(mod)
    return mod, spec


#: The most elements one constant of the graph may hold (a weight, a ConstantOfShape, an Expand):
#: 2**28 (1 GiB of float32) is far above any classifier's largest weight, far below a typo's 36 G.
MAX_CONSTANT_ELEMENTS = 1 << 28


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The small integer tensors a shape argument can come from (initializers, Constant nodes)."""
    from onnx import numpy_helper

    small: dict[str, np.ndarray] = {}
    tensors = [(t.name, t) for t in model.graph.initializer]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    tensors.append((node.output[0], attr.t))
    for name, tensor in tensors:
        if len(tensor.dims) <= 1 and (not tensor.dims or tensor.dims[0] <= 16):
            try:
                small[name] = numpy_helper.to_array(tensor)
            except Exception:  # noqa: BLE001 - an unreadable tensor is the importer's to report
                continue
    return small


def check_constant_sizes(model: onnx.ModelProto) -> None:
    """Refuse, before TVM imports it, a graph with a constant too large to build: an initializer or
    Constant node, or a ConstantOfShape / Expand whose shape is a constant (the importer folds
    them into arrays at once: a 36 G-element one is a 134 GiB allocation, bad_alloc)."""

    def refuse(what: str, shape) -> TvmsqzError:
        return TvmsqzError(
            f"the model's {what} has shape {list(shape)}: over {MAX_CONSTANT_ELEMENTS} elements, "
            "too large for an image classifier"
        )

    def count(shape) -> int:
        total = 1
        for d in shape:
            total *= max(int(d), 0)
        return total

    for tensor in model.graph.initializer:
        if count(tensor.dims) > MAX_CONSTANT_ELEMENTS:
            raise refuse(f"initializer {tensor.name!r}", tensor.dims)
    values = _constant_values(model)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and count(attr.t.dims) > MAX_CONSTANT_ELEMENTS:
                    raise refuse(f"Constant {node.name or node.output[0]!r}", attr.t.dims)
        elif node.op_type in ("ConstantOfShape", "Expand"):
            shape_input = node.input[0] if node.op_type == "ConstantOfShape" else node.input[-1]
            shape = values.get(shape_input)
            if shape is not None and shape.dtype.kind in "iu" and count(shape.reshape(-1)) > MAX_CONSTANT_ELEMENTS:
                raise refuse(f"{node.op_type} {node.name or node.output[0]!r}", shape.reshape(-1).tolist())


def _check_classifier_output(mod) -> None:
    from tvm import relax

    ret = mod["main"].ret_ty
    shape = None
    if isinstance(ret, relax.TensorType) and ret.shape is not None:
        try:
            shape = [int(d) for d in ret.shape]
        except (TypeError, ValueError):
            shape = None
    ok = shape is not None and (
        (len(shape) == 2 and shape[1] >= 2) or (len(shape) == 4 and shape[1] >= 2 and shape[2:] == [1, 1])
    )
    if not ok:
        raise TvmsqzError(
            "the model does not look like an image classifier: expected one (N, classes) or "
            f"(N, classes, 1, 1) output, got {shape if shape is not None else ret}"
        )


def random_input(spec: InputSpec, seed: int = 0) -> np.ndarray:
    """A seeded input in a realistic value range."""
    return np.random.default_rng(seed).standard_normal(spec.shape).astype(spec.dtype)


#: ONNX operators of a quantized (QDQ) graph.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


class Model:
    """A model resolved from what the user gave (a built-in name, a file, an ONNX proto, a torch
    module), loaded once and handed through compile, tune and bench.

    `onnx` is the ONNX graph every peer runs; `mod`, the Relax import, is made on first use (the
    VTA pipeline reads the ONNX graph and never needs it).
    """

    def __init__(
        self,
        name: str,
        onnx_model: onnx.ModelProto,
        info: object | None,
        input_spec: InputSpec,
        input_shape: str | tuple | None = None,
        source: str | None = None,
    ):
        self.name = name
        self.onnx = onnx_model
        self.info = info  # tvmsqz.models.ModelInfo for built-ins
        self.input = input_spec
        self.source = source
        self._input_shape = input_shape
        self._mod = None
        self.convention: str | None = None  # the user's --preprocess, over the built-in's own

    @property
    def mod(self):
        """The Relax `IRModule` (weights as constants), imported on first use."""
        if self._mod is None:
            self._mod, _ = import_onnx(self.onnx, self._input_shape)
        return self._mod

    #: What `tvmsqz.quant.qdq.quantize_model` recorded when it made this model (None otherwise).
    quant_report: dict | None = None

    @property
    def quantized(self) -> bool:
        """Whether the graph is int8 QDQ (QuantizeLinear/DequantizeLinear nodes): made by
        tvmsqz's quantizer, ONNX Runtime's `quantize_static` or NNCF; the compiler folds the
        pairs into integer convs (`passes.qdq`)."""
        return any(node.op_type in QDQ_OPS for node in self.onnx.graph.node)

    @property
    def preprocess(self) -> str:
        """The input convention of the model's photos ("torchvision" or "caffe")."""
        return self.convention or getattr(self.info, "preprocess", None) or "torchvision"

    @property
    def torch_name(self) -> str | None:
        """The built-in torch model this came from (for the PyTorch peer), or None."""
        return self.info.name if getattr(self.info, "source", None) == "torch" else None

    def __repr__(self) -> str:
        return f"Model({self.name!r}, input={list(self.input.shape)})"


def model_from_onnx(
    onnx_model: onnx.ModelProto,
    *,
    name: str,
    info: object | None = None,
    batch: int = 1,
    input_shape: str | tuple | None = None,
    source: str | None = None,
    import_now: bool = True,
) -> Model:
    """A `Model` from an ONNX graph: the input discovered (or given) and checked; with `import_now`,
    the Relax import done at once, so an unimportable model fails here, before any other work."""
    if input_shape is None and batch != 1 and info is None:
        input_shape = (batch, *discover_input(onnx_model).shape[1:])
    spec = discover_input(onnx_model, input_shape)
    model = Model(name, onnx_model, info, spec, input_shape, source)
    if import_now:
        _ = model.mod
    return model


def load_model(source: str, *, batch: int = 1, input_shape: str | None = None, import_now: bool = True) -> Model:
    """Resolve a built-in name, an .onnx path or a Deep Compression .net path, and import it."""
    from .models import load_onnx

    model, info = load_onnx(source, batch=batch)
    name = info.name if info is not None else str(source)
    return model_from_onnx(
        model, name=name, info=info, batch=batch, input_shape=input_shape, source=str(source), import_now=import_now
    )
