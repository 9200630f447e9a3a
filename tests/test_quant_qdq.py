"""The int8 quantizer (`tvmsqz.quant`): activation ranges, calibration inputs, the QDQ graph it
writes (run by ONNX Runtime as an independent reference), and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import VNNI_FLAGS, assert_one_line_error, require_cpu, run_cli
from PIL import Image

import tvmsqz
from tvmsqz.errors import TvmsqzError
from tvmsqz.images import EVALUATION_PHOTOS, photo, photo_views, preprocess, sample_images
from tvmsqz.quant.calibrate import load_calibration
from tvmsqz.quant.qdq import quantize_model, quantize_onnx
from tvmsqz.quant.scales import METHODS, activation_params


def _mse(samples, scale, zero):
    q = (np.clip(np.round(samples / scale) + zero, 0, 255) - zero) * scale
    return float(np.mean((q - samples) ** 2))


def test_activation_methods_on_heavy_tailed_data():
    rng = np.random.default_rng(0)
    relu = np.maximum(rng.standard_t(2, size=200_000), 0).astype(np.float32)  # heavy tail, ReLU'd
    signed = rng.normal(size=200_000).astype(np.float32)
    minmax = activation_params(relu, "minmax", nonnegative=True)
    assert minmax[1] == 0 and abs(minmax[0] * 255 - relu.max()) < 1e-4 * relu.max()  # covers the max exactly
    for method in METHODS:
        scale, zero = activation_params(relu, method, nonnegative=True)
        assert zero == 0 and 0 < scale <= minmax[0] * (1 + 1e-6), method  # never wider than the data
        s, z = activation_params(signed, method, nonnegative=False)
        assert 0 < z < 255 and s > 0, method  # an asymmetric range around 0
    assert _mse(relu, *activation_params(relu, "mse", nonnegative=True)) < _mse(relu, *minmax)
    assert activation_params(relu, "percentile", nonnegative=True)[0] < minmax[0]
    with pytest.raises(TvmsqzError, match="unknown calibration method 'median'"):
        activation_params(relu, "median", nonnegative=True)


@pytest.fixture(scope="module")
def model():
    return tvmsqz.load_model("squeezenet1_1", import_now=False)


def _ort(model_proto):
    return ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_qdq_graph_runs_in_onnxruntime_and_agrees_with_fp32(model):
    """Int8 weights behind DequantizeLinear on every conv, one Q/DQ on each conv input; ONNX
    Runtime runs the result and agrees with fp32 on views of photos never calibrated on."""
    calibration = load_calibration(None, model.preprocess, 224)[0]
    qdq, report = quantize_onnx(model.onnx, calibration, method="mse")
    ops = [n.op_type for n in qdq.graph.node]
    convs = [n for n in qdq.graph.node if n.op_type == "Conv"]
    assert report["quantized_convs"] == len(convs) == 26 and report["bias_correction"] == 26
    assert ops.count("QuantizeLinear") == len({c.input[0] for c in convs})
    inits = {i.name: i for i in qdq.graph.initializer}
    assert all(inits[c.input[1].removesuffix("_dq") + "_q"].data_type == 3 for c in convs)  # INT8
    fp32, q = _ort(model.onnx), _ort(qdq)
    name = fp32.get_inputs()[0].name
    views = [v for _, v in photo_views(EVALUATION_PHOTOS, 3, model.preprocess, 224)]
    a = np.concatenate([fp32.run(None, {name: v})[0] for v in views])
    b = np.concatenate([q.run(None, {name: v})[0] for v in views])
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.9
    assert np.abs(a - b).mean() < 0.1 * np.abs(a).mean()


def test_bias_correction_reduces_the_error(model):
    calibration = load_calibration(None, model.preprocess, 224)[0]
    fp32 = _ort(model.onnx)
    name = fp32.get_inputs()[0].name
    xs = [preprocess(img, model.preprocess, 224) for _, img in sample_images()]  # un-mirrored
    ref = np.concatenate([fp32.run(None, {name: x})[0] for x in xs])
    errors = {}
    for corrected in (False, True):
        q = _ort(quantize_onnx(model.onnx, calibration, method="minmax", bias_correction=corrected)[0])
        errors[corrected] = np.abs(np.concatenate([q.run(None, {name: x})[0] for x in xs]) - ref).mean()
    assert errors[True] <= errors[False]


def test_fp32_layers_stay_fp32(model):
    calibration = load_calibration(None, model.preprocess, 224)[0][:2]
    qdq, report = quantize_onnx(model.onnx, calibration, fp32_layers=("first", "last"), bias_correction=False)
    convs = [n for n in qdq.graph.node if n.op_type == "Conv"]
    assert not convs[0].input[0].endswith("_dq") and not convs[-1].input[0].endswith("_dq")
    assert all(c.input[0].endswith("_dq") for c in convs[1:-1])
    assert [k["name"] for k in report["fp32_layers"]] == [convs[0].name, convs[-1].name]
    with pytest.raises(TvmsqzError, match="no conv named nope"):
        quantize_onnx(model.onnx, calibration, fp32_layers=("nope",))


def test_load_calibration_folder_npy_npz(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(photo("chelsea.png")).save(folder / "a.png")
    Image.fromarray(photo("coffee.png")).save(folder / "b.JPG")
    (folder / "notes.txt").write_text("not an image")
    inputs, source = load_calibration(folder, "torchvision", 224)
    assert len(inputs) == 2 and all(x.shape == (1, 3, 224, 224) and x.dtype == np.float32 for x in inputs)
    assert "2 images" in source
    np.testing.assert_array_equal(inputs[0], preprocess(photo("chelsea.png"), "torchvision", 224))
    arr = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    assert len(load_calibration(tmp_path / "x.npy", "torchvision", 32)[0]) == 3
    np.savez(tmp_path / "x.npz", a=arr, b=arr[0])
    assert len(load_calibration(tmp_path / "x.npz", "torchvision", 32)[0]) == 4


def _bad_calibration(tmp_path, case: str):
    """A calibration path that is wrong in the way `case` names."""
    if case == "missing":
        return tmp_path / "missing"
    if case in ("empty", "corrupt"):
        folder = tmp_path / case
        folder.mkdir()
        if case == "corrupt":
            (folder / "x.png").write_bytes(b"not a png")
        return folder
    arrays = {
        "shape": np.zeros((2, 3, 8, 8), np.float32),
        "nan": np.full((1, 3, 32, 32), np.nan, np.float32),
        "strings": np.array(["a"]),
    }
    if case in arrays:
        np.save(tmp_path / f"{case}.npy", arrays[case])
        return tmp_path / f"{case}.npy"
    if case == "csv":
        (tmp_path / "x.csv").write_text("1,2")
        return tmp_path / "x.csv"
    (tmp_path / "t.npy").write_bytes(b"garbage")
    return tmp_path / "t.npy"


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file or folder"),
        ("empty", "holds no .jpg/.jpeg/.png image"),
        ("corrupt", "cannot read image x.png"),
        ("shape", r"expected arrays of shape \(N, 3, 32, 32\)"),
        ("nan", "NaN or infinite"),
        ("strings", "must be numeric"),
        ("csv", "expected a folder of images, a .npy or a .npz"),
        ("garbage", "cannot read it as .npy"),
    ],
)
def test_bad_calibration_is_one_line(tmp_path, case, message):
    with pytest.raises(TvmsqzError, match=message) as info:
        load_calibration(_bad_calibration(tmp_path, case), "torchvision", 32)
    assert "\n" not in str(info.value)


def test_cli_bad_calibrate_is_one_error_line(tmp_path):
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "m.so")
    for path, why in ((tmp_path / "empty", "holds no .jpg"), (tmp_path / "nope", "no such file")):
        args = ("compile", "squeezenet1_1", "--precision", "int8", "--calibrate", str(path), "-o", out)
        assert_one_line_error(run_cli(*args, check=False), why)
        assert not (tmp_path / "m.so").exists()
    proc = run_cli("compile", "squeezenet1_1", "--precision", "int4", "-o", out, check=False)
    assert_one_line_error(proc, "precision must be fp32 or int8")
    proc = run_cli("compile", "squeezenet1_1", "--calibrate", str(tmp_path), "-o", out, check=False)
    assert_one_line_error(proc, "--calibrate applies to --precision int8 only")
    proc = run_cli("compile", "squeezenet1_1", "--target", "cuda-sm90", "--precision", "int8", "-o", out, check=False)
    assert_one_line_error(proc, "compiles fp32, not int8")


@pytest.mark.slow
def test_cli_int8_end_to_end(tmp_path):
    """compile --precision int8 --calibrate FOLDER, then run: the manifest records precision and
    calibration; the artifact (fp32 in, fp32 out) matches ONNX Runtime running the same QDQ model."""
    require_cpu(VNNI_FLAGS, "the int8 x86-avx512 kernels")
    folder = tmp_path / "cal"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        Image.fromarray(photo(name)).save(folder / name.replace(".jpg", ".png"))
    so = tmp_path / "int8.so"
    run_cli(
        "compile",
        "squeezenet1_1",
        "--target",
        "x86-avx512",
        "--precision",
        "int8",
        "--calibrate",
        str(folder),
        "--calibration-method",
        "percentile",
        "--no-tuning",
        "-o",
        str(so),
    )
    manifest = json.loads(so.with_name(so.name + ".json").read_text())
    assert manifest["precision"] == "int8" and manifest["quantization"]["method"] == "percentile"
    assert manifest["quantization"]["calibration"] == f"3 images from {folder}"
    assert "+avx512vnni" in manifest["target"]["tvm"]["mattr"]
    x = preprocess(photo("astronaut.png"), "torchvision", 224)
    np.save(tmp_path / "x.npy", x)
    run_cli("run", str(so), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"))
    ours = np.load(tmp_path / "y.npy")
    model = tvmsqz.load_model("squeezenet1_1", import_now=False)
    reference = quantize_model(model, folder, method="percentile")
    theirs = _ort(reference.onnx).run(None, {model.onnx.graph.input[0].name: x})[0]
    assert ours.argmax() == theirs.argmax()
    assert np.abs(ours - theirs).max() <= 0.05 * np.abs(theirs).max()
