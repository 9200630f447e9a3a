"""Built-in models, ONNX export and the Deep Compression loader.

Registry (see docs/design.md):

| name | what | input | preprocess | source | trained |
| --- | --- | --- | --- | --- | --- |
| squeezenet1_0 | torchvision SqueezeNet 1.0 | 1x3x224x224 | torchvision | torch | no |
| squeezenet1_1 | torchvision SqueezeNet 1.1 | 1x3x224x224 | torchvision | torch | no |
| squeezenet1_0_bypass | 1.0 + simple (identity) bypass | 1x3x224x224 | torchvision | torch | no |
| squeezenet1_0_complex_bypass | 1.0 + simple and 1x1-conv bypass | 1x3x224x224 | torchvision | torch | no |
| squeezenet1_0_dc | ImageNet-trained 1.0, Deep Compression | 1x3x227x227 | caffe | caffe | yes |
| squeezenext_{1_0,2_0}_23[v5] | SqueezeNext (authors' prototxts) | 1x3x227x227 | caffe | torch | no |

Torch models are randomly initialised from a seed (no pretrained weights are downloaded;
SqueezeNext's batch-norm statistics are calibrated on seeded random images);
their ONNX export has input `data` and output `output` (logits). The Caffe model's ONNX graph
has input `data` and output `prob` (softmax probabilities).
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx

from tvmsqz.errors import TvmsqzError

__all__ = ["ModelInfo", "list_models", "get_model_info", "torch_model", "load_onnx", "export_onnx"]

ONNX_OPSET = 17


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    input_shape: tuple
    preprocess: str
    source: str
    trained: bool


# name -> (ModelInfo, torch family: a SqueezeNet version or "squeezenext", its bypass or SqueezeNext
# variant); family None for non-torch models
_REGISTRY: dict[str, tuple[ModelInfo, str | None, str | None]] = {
    "squeezenet1_0": (
        ModelInfo(
            "squeezenet1_0",
            "SqueezeNet 1.0 (torchvision structure, seeded random weights)",
            (1, 3, 224, 224),
            "torchvision",
            "torch",
            False,
        ),
        "1_0",
        None,
    ),
    "squeezenet1_1": (
        ModelInfo(
            "squeezenet1_1",
            "SqueezeNet 1.1 (torchvision structure, seeded random weights)",
            (1, 3, 224, 224),
            "torchvision",
            "torch",
            False,
        ),
        "1_1",
        None,
    ),
    "squeezenet1_0_bypass": (
        ModelInfo(
            "squeezenet1_0_bypass",
            "SqueezeNet 1.0 with simple bypass around fire3/5/7/9 (seeded random weights)",
            (1, 3, 224, 224),
            "torchvision",
            "torch",
            False,
        ),
        "1_0",
        "simple",
    ),
    "squeezenet1_0_complex_bypass": (
        ModelInfo(
            "squeezenet1_0_complex_bypass",
            "SqueezeNet 1.0 with simple bypass plus 1x1-conv bypass around fire2/4/6/8 (seeded random weights)",
            (1, 3, 224, 224),
            "torchvision",
            "torch",
            False,
        ),
        "1_0",
        "complex",
    ),
    "squeezenet1_0_dc": (
        ModelInfo(
            "squeezenet1_0_dc",
            "SqueezeNet 1.0, ImageNet-trained, Deep Compression (33% non-zero, 8-bit codebook)",
            (1, 3, 227, 227),
            "caffe",
            "caffe",
            True,
        ),
        None,
        None,
    ),
}

_SQUEEZENEXT_BLURB = {
    "1_0_23": "SqueezeNext 1.0-SqNxt-23 (width 1.0, 6/6/8/1 blocks; seeded random weights)",
    "1_0_23v5": "SqueezeNext 1.0-SqNxt-23v5 (width 1.0, 2/4/14/1 blocks, 5x5 stem; seeded random weights)",
    "2_0_23": "SqueezeNext 2.0-SqNxt-23 (width 2.0, 6/6/8/1 blocks; seeded random weights)",
    "2_0_23v5": "SqueezeNext 2.0-SqNxt-23v5 (width 2.0, 2/4/14/1 blocks, 5x5 stem; seeded random weights)",
}
for _variant, _blurb in _SQUEEZENEXT_BLURB.items():
    _name = f"squeezenext_{_variant}"
    _REGISTRY[_name] = (ModelInfo(_name, _blurb, (1, 3, 227, 227), "caffe", "torch", False), "squeezenext", _variant)


def list_models() -> list[ModelInfo]:
    """Every built-in model, in registry order."""
    return [info for info, _, _ in _REGISTRY.values()]


def _unknown(name: str) -> TvmsqzError:
    return TvmsqzError(f"unknown model {name!r}: built-in models are {', '.join(_REGISTRY)}")


def get_model_info(name: str) -> ModelInfo:
    """The registry entry of a built-in model; `TvmsqzError` on an unknown name."""
    try:
        return _REGISTRY[name][0]
    except (KeyError, TypeError):
        raise _unknown(str(name)) from None


def torch_model(name: str, seed: int = 0):
    """A built-in torch model in eval mode, initialised deterministically from `seed`."""
    info = get_model_info(name)
    _, version, bypass = _REGISTRY[name]
    if info.source != "torch":
        raise TvmsqzError(f"{name} is a {info.source} model with no torch module; use load_onnx({name!r})")
    if version == "squeezenext":
        from tvmsqz.models import squeezenext

        return squeezenext.build(bypass, seed=int(seed))
    from tvmsqz.models.squeezenet import build

    return build(version=version, bypass=bypass, seed=int(seed))


def export_onnx(model, input_shape: tuple) -> onnx.ModelProto:
    """Export a torch module (TorchScript exporter, opset 17, static shape) to ONNX.

    Input `data`, output `output`. The exporter's deprecation notice is silenced.
    """
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            torch.onnx.export(
                model.eval(),
                (torch.zeros(*input_shape, dtype=torch.float32),),
                buf,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["data"],
                output_names=["output"],
            )
    model = onnx.load_from_string(buf.getvalue())
    _materialize_shared_initializers(model)
    onnx.checker.check_model(model)
    return model


def _materialize_shared_initializers(model: onnx.ModelProto) -> None:
    """Replace `Identity(initializer)` nodes by a copy of the initializer.

    The TorchScript exporter de-duplicates equal constants (e.g. the all-zero biases of a
    freshly initialised net) and re-creates them with Identity nodes; downstream passes
    are simpler when every Conv reads its own constant weight and bias.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            inits[copy.name] = copy
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


# (name, batch, seed) -> serialized ONNX; a fresh ModelProto is parsed per call so callers
# may mutate what they get.
_ONNX_CACHE: dict[tuple[str, int, int], bytes] = {}


def _builtin_onnx(name: str, batch: int, seed: int) -> onnx.ModelProto:
    info = get_model_info(name)
    key = (name, batch, seed)
    if key not in _ONNX_CACHE:
        if info.source == "torch":
            model = export_onnx(torch_model(name, seed=seed), (batch,) + tuple(info.input_shape[1:]))
        else:
            from tvmsqz.models.deep_compression import build_onnx

            model = build_onnx(batch=batch)
        _ONNX_CACHE[key] = model.SerializeToString()
    return onnx.load_from_string(_ONNX_CACHE[key])


def _with_batch(info: ModelInfo, batch: int) -> ModelInfo:
    if batch == info.input_shape[0]:
        return info
    return dataclasses.replace(info, input_shape=(batch,) + tuple(info.input_shape[1:]))


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0].strip()


def _load_onnx_file(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise TvmsqzError(f"no such file: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - DecodeError, ValidationError, external-data errors, ...
        raise TvmsqzError(f"{path.name} is not a valid ONNX model: {_first_line(e)}") from None
    if not model.graph.node:
        raise TvmsqzError(f"{path.name} is not a valid ONNX model: its graph has no nodes")
    return model


def load_onnx(source: str | Path, batch: int = 1, *, seed: int = 0) -> tuple[onnx.ModelProto, ModelInfo | None]:
    """An ONNX model and its registry entry, from a built-in name, an `.onnx` path or a
    Deep Compression `.net` path.

    * built-in name: torch models are exported with a static batch `batch` and weights from
      `seed`; `squeezenet1_0_dc` is decoded from `paths.DEEP_COMPRESSION_DIR`. The returned
      `ModelInfo` carries `input_shape` with `batch` as its first dimension.
    * `.onnx` file: loaded and checked with `onnx.checker`; returned unchanged (`batch`
      is not applied) with info `None`.
    * `.net` file: decoded with the prototxt beside it (or the shared one); info is that of
      `squeezenet1_0_dc` with `batch` applied.

    Raises `TvmsqzError` for an unknown name, a missing file, or an invalid file.
    """
    try:
        batch = int(batch)
    except (TypeError, ValueError):
        raise TvmsqzError(f"batch must be a positive integer, got {batch!r}") from None
    if batch < 1:
        raise TvmsqzError(f"batch must be a positive integer, got {batch}")

    if isinstance(source, str) and source in _REGISTRY:
        return _builtin_onnx(source, batch, int(seed)), _with_batch(_REGISTRY[source][0], batch)

    path = Path(source)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _load_onnx_file(path), None
    if suffix == ".net":
        if not path.is_file():
            raise TvmsqzError(f"no such file: {path}")
        from tvmsqz.models.deep_compression import build_onnx

        return build_onnx(path, batch=batch), _with_batch(get_model_info("squeezenet1_0_dc"), batch)
    if path.exists():
        raise TvmsqzError(
            f"{path.name}: unsupported model file, expected an .onnx file or a Deep Compression .net file"
        )
    if isinstance(source, str) and not suffix and "/" not in source and "\\" not in source:
        raise _unknown(source)
    raise TvmsqzError(
        f"no such file: {path} (models are a built-in name ({', '.join(_REGISTRY)}), an .onnx file or a .net file)"
    )
