"""Every real-world ONNX variant in the corpus compiles with the default x86 pipeline and matches
ONNX Runtime on the same file (issue 23); graphs the layout passes cannot handle fall back to
NCHW with one warning; `tvmsqz run --image` reads photos as the manifest says.

The corpus (`tests/onnx_corpus.py`) is generated here, never stored. Compiling is memoized by the
structural hash of the imported Relax module, which is exactly the compiler's input: a variant
that imports to a module already compiled (most opsets of one network do) runs on that artifact;
each variant is still exported, imported and compared with ONNX Runtime on its own file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx_corpus
from conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.slow

_ARTIFACTS: dict[int, object] = {}


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _compiled(model):
    """The artifact for this imported module, compiled once per distinct module."""
    from tvm_ffi import structural_hash

    import tvmsqz

    key = structural_hash(model.mod, map_free_vars=True)
    if key not in _ARTIFACTS:
        _ARTIFACTS[key] = tvmsqz.compile(model, "x86")
    return _ARTIFACTS[key]


def _check_parity(name: str, proto: onnx.ModelProto, batch: int = 1) -> None:
    import tvmsqz

    model = tvmsqz.load_model(proto, name=name, batch=batch)
    x = np.random.default_rng(0).standard_normal(model.input.shape).astype(model.input.dtype)
    ref = _ort(proto, x).astype(np.float64)
    y = np.asarray(_compiled(model).run(x)).astype(np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    fp16 = model.input.dtype == "float16"
    tolerance = 1e-2 if fp16 else 1e-4  # fp16: ~3 significant digits through 26 layers
    span = float(np.ptp(ref))
    assert float(np.max(np.abs(y - ref))) <= tolerance * span, (name, float(np.max(np.abs(y - ref))), span)
    flat_y, flat_ref = y.reshape(len(y), -1), ref.reshape(len(ref), -1)
    assert (flat_y.argmax(1) == flat_ref.argmax(1)).all(), name


@pytest.mark.parametrize("name", [n for n, _ in onnx_corpus.VARIANTS])
def test_variant_matches_onnxruntime(name: str) -> None:
    _check_parity(name, onnx_corpus.build(name))


def test_corpus_covers_what_users_bring() -> None:
    """The corpus itself: every opset from 9 to the newest onnx defines, both exporters, each form."""
    names = [n for n, _ in onnx_corpus.VARIANTS]
    newest = onnx_corpus.newest_opset()
    for model in onnx_corpus.MODELS:
        assert {f"{model}-torchscript-opset{o}" for o in range(9, 24)} <= set(names)
        assert {f"{model}-dynamo-opset{o}" for o in range(18, newest + 1)} <= set(names)
    caffe2 = onnx_corpus.build("squeezenet1_0-opset9-caffe2-era")
    ops = {n.op_type for n in caffe2.graph.node}
    assert {"ConstantOfShape", "Dropout", "Softmax"} <= ops and not caffe2.graph.initializer
    assert onnx_corpus.opset_of(caffe2) == 9
    dropout = next(n for n in caffe2.graph.node if n.op_type == "Dropout")
    assert len(dropout.output) == 2  # with its mask
    fp16 = onnx_corpus.build("squeezenet1_1-opset17-fp16")
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_nhwc_input_compiles_and_matches() -> None:
    proto = onnx_corpus.build("squeezenet1_1-nhwc-input")
    import tvmsqz

    model = tvmsqz.load_model(proto, name="nhwc")
    assert model.input.layout == "NHWC" and model.input.shape == (1, 224, 224, 3)
    _check_parity("nhwc", proto)


def test_dynamic_batch_compiles_for_batch_n() -> None:
    proto = onnx_corpus.build("squeezenet1_1-dynamic-batch")
    assert not proto.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    _check_parity("dynamic-batch", proto, batch=3)


def test_tuple_nodes_between_convs_keep_the_blocked_layout() -> None:
    """Split/Concat, TopK and a one-item sequence between two convs: converted, not declined."""
    for name in ("squeezenet1_1-split-concat", "squeezenet1_1-opset9-split-concat", "squeezenet1_1-topk"):
        _check_parity(name, onnx_corpus.build(name))


def test_caffe2_era_model_keeps_blocked_layout(tmp_path: Path) -> None:
    """The opset-9 Caffe2-era graph that used to stop in ConvertLayout ("Expected nested to
    match tuple"): Dropout is stripped, the blocked, fused pipeline runs, no warning."""
    path = tmp_path / "caffe2.onnx"
    onnx.save(onnx_corpus.build("squeezenet1_0-opset9-caffe2-era"), path)
    out = tmp_path / "caffe2.so"
    proc = run_cli("compile", str(path), "-o", str(out))
    assert "warning" not in proc.stderr.lower() and "Traceback" not in proc.stderr, proc.stderr
    manifest = json.loads(Path(str(out) + ".json").read_text())
    assert manifest["layout_fallback"] is None and manifest["fused"] is True


def test_layout_fallback_is_one_warning_and_correct(tmp_path: Path) -> None:
    """A graph the blocked pipeline cannot take (fp16: the blocked legalization meets an fp16
    bias) compiles in plain NCHW with one warning line naming the pass, and still matches."""
    proto = onnx_corpus.build("squeezenet1_1-opset17-fp16")
    path = tmp_path / "fp16.onnx"
    onnx.save(proto, path)
    out = tmp_path / "fp16.so"
    proc = run_cli("compile", str(path), "-o", str(out))
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln.lower()]
    assert len(warnings) == 1, proc.stderr
    assert "cannot handle this graph" in warnings[0] and "NCHW" in warnings[0], warnings[0]
    assert "Traceback" not in proc.stderr and "BlockBuilder" not in proc.stderr, proc.stderr
    manifest = json.loads(Path(str(out) + ".json").read_text())
    assert manifest["layout_fallback"] and manifest["layout_fallback"] in warnings[0]
    assert manifest["fused"] is False
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    run_cli("run", str(out), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"))
    y, ref = np.load(tmp_path / "y.npy").astype(np.float64), _ort(proto, x).astype(np.float64)
    assert np.max(np.abs(y - ref)) <= 1e-2 * np.ptp(ref)


def test_internal_compiler_error_names_the_pass() -> None:
    """A TVM failure inside a pass becomes one InternalCompilerError naming that pass."""
    from tvm import relax

    import tvmsqz
    from tvmsqz.passes.guard import InternalCompilerError, Tracker

    mod = tvmsqz.load_model(onnx_corpus.build("squeezenet1_1-opset17-dropout"), name="d").mod
    tracker = Tracker()
    convert = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})
    with pytest.raises(InternalCompilerError) as info:
        with tracker.guard("the layout passes"):
            convert(mod)  # R.nn.dropout's tuple defeats ConvertLayout (TVM 0.27)
    message = str(info.value)
    assert message.startswith("internal compiler error in ConvertLayout"), message
    assert "\n" not in message and "TVMSQZ_VERBOSE=1" in message


def _photo_files(folder: Path) -> dict[str, Path]:
    """Real photo files shipped in wheels: a PNG from scikit-image, a JPEG from matplotlib,
    and the PNG re-encoded as JPEG by Pillow."""
    import skimage
    from matplotlib import cbook
    from PIL import Image

    data = Path(skimage.__file__).parent / "data"
    files = {"chelsea.png": data / "chelsea.png", "coffee.png": data / "coffee.png"}
    files["grace_hopper.jpg"] = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    Image.open(data / "chelsea.png").convert("RGB").save(folder / "chelsea.jpg", quality=95)
    files["chelsea.jpg"] = folder / "chelsea.jpg"
    return files


@pytest.mark.parametrize("model", ["squeezenet1_0_dc", "squeezenet1_1"])
def test_run_image_matches_the_npy_path(model: str, compiled, tmp_path: Path) -> None:
    """`run --image` (jpg and png) applies the manifest's preprocessing (caffe for the Deep
    Compression model, torchvision for the torch ones): its top-5 is that of `run --input`
    on the same photo preprocessed by `tvmsqz.images`."""
    from conftest import require

    from tvmsqz.images import preprocess, read_image

    if model == "squeezenet1_0_dc":
        from tvmsqz.models.deep_compression import default_net_path

        require(default_net_path().is_file(), "the Deep Compression model under ../shared/models")
    so = compiled(model)
    manifest = json.loads(Path(str(so) + ".json").read_text())
    convention = manifest["preprocess"]["convention"]
    assert convention == ("caffe" if model == "squeezenet1_0_dc" else "torchvision")
    size = manifest["preprocess"]["size"]
    photos = _photo_files(tmp_path)
    args = [a for p in photos.values() for a in ("--image", str(p))]
    proc = run_cli("run", str(so), *args, "--json", "--top", "5")
    results = json.loads(proc.stdout)["results"]
    assert [r["input"] for r in results] == [str(p) for p in photos.values()]
    for (name, path), result in zip(photos.items(), results):
        x = preprocess(read_image(path), convention, size)
        np.save(tmp_path / f"{name}.npy", x)
        by_npy = run_cli("run", str(so), "--input", str(tmp_path / f"{name}.npy"), "--json", "--top", "5")
        expected = json.loads(by_npy.stdout)["results"][0]["top"]
        assert [t["class"] for t in result["top"]] == [t["class"] for t in expected], name
        assert np.allclose([t["score"] for t in result["top"]], [t["score"] for t in expected], rtol=1e-5)
    if model == "squeezenet1_0_dc":  # a trained model: the photos are what they are
        names = {Path(r["input"]).name: r["top"][0]["name"] for r in results}
        assert names["coffee.png"] == "espresso"
        assert "cat" in names["chelsea.png"] or names["chelsea.png"] == "tabby"
    other = "torchvision" if convention == "caffe" else "caffe"
    swapped = run_cli("run", str(so), "--image", str(photos["coffee.png"]), "--preprocess", other, "--json")
    assert json.loads(swapped.stdout)["preprocess"] == other


def test_run_image_refusals(x86_so: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    assert_one_line_error(run_cli("run", str(x86_so), "--image", str(bad), check=False), "cannot read", "image")
    missing = tmp_path / "missing.png"
    assert_one_line_error(run_cli("run", str(x86_so), "--image", str(missing), check=False), "no such image")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 224, 224), np.float32))
    proc = run_cli("run", str(x86_so), "--image", str(bad), "--input", str(x), check=False)
    assert_one_line_error(proc, "not both")
    proc = run_cli("run", str(x86_so), "--input", str(x), "--preprocess", "caffe", check=False)
    assert_one_line_error(proc, "--image only")
