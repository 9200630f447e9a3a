"""Built-in torch models: torchvision-compatible structure, seeded init, ONNX export parity."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tvmsqz.errors import TvmsqzError
from tvmsqz.images import preprocess, sample_images
from tvmsqz.models import ModelInfo, get_model_info, list_models, load_onnx, torch_model

TORCH_MODELS = ["squeezenet1_0", "squeezenet1_1", "squeezenet1_0_bypass", "squeezenet1_0_complex_bypass"]

# torchvision's `features` indices of the Fire modules.
FIRES = {"1_0": [3, 4, 5, 7, 8, 9, 10, 12], "1_1": [3, 4, 6, 7, 9, 10, 11, 12]}


def torchvision_keys(version: str) -> set[str]:
    keys = {"features.0.weight", "features.0.bias", "classifier.1.weight", "classifier.1.bias"}
    for i in FIRES[version]:
        for conv in ("squeeze", "expand1x1", "expand3x3"):
            keys |= {f"features.{i}.{conv}.weight", f"features.{i}.{conv}.bias"}
    return keys


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """Two real photos, torchvision-preprocessed, as a (2, 3, 224, 224) batch and singles."""
    imgs = dict(sample_images())
    return {name: preprocess(imgs[name], "torchvision", 224) for name in ("chelsea", "coffee")}


def run_torch(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"data": x})[0]


# ----------------------------------------------------------------------------- registry


def test_registry_matches_design():
    names = [m.name for m in list_models()]
    assert names == [
        "squeezenet1_0",
        "squeezenet1_1",
        "squeezenet1_0_bypass",
        "squeezenet1_0_complex_bypass",
        "squeezenet1_0_dc",
        "squeezenext_1_0_23",
        "squeezenext_1_0_23v5",
        "squeezenext_2_0_23",
        "squeezenext_2_0_23v5",
    ]
    for info in list_models():
        assert isinstance(info, ModelInfo)
        assert get_model_info(info.name) is info
        assert info.description
        if info.name == "squeezenet1_0_dc":
            assert (info.input_shape, info.preprocess, info.source, info.trained) == (
                (1, 3, 227, 227),
                "caffe",
                "caffe",
                True,
            )
        elif info.name.startswith("squeezenext"):  # the authors' prototxts: 227 crop, Caffe's BGR mean
            assert (info.input_shape, info.preprocess, info.source, info.trained) == (
                (1, 3, 227, 227),
                "caffe",
                "torch",
                False,
            )
        else:
            assert (info.input_shape, info.preprocess, info.source, info.trained) == (
                (1, 3, 224, 224),
                "torchvision",
                "torch",
                False,
            )
    with pytest.raises(Exception):
        list_models()[0].name = "x"  # frozen


def test_unknown_model_name():
    with pytest.raises(TvmsqzError, match="unknown model 'squeezenet9'"):
        get_model_info("squeezenet9")
    with pytest.raises(TvmsqzError, match="unknown model"):
        torch_model("resnet50")
    with pytest.raises(TvmsqzError, match="unknown model 'squeezenet9'") as e:
        load_onnx("squeezenet9")
    assert "\n" not in str(e.value)


def test_dc_model_has_no_torch_module():
    with pytest.raises(TvmsqzError, match="load_onnx"):
        torch_model("squeezenet1_0_dc")


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name,version", [("squeezenet1_0", "1_0"), ("squeezenet1_1", "1_1")])
def test_torchvision_state_dict_keys_and_sizes(name, version):
    model = torch_model(name)
    sd = model.state_dict()
    assert set(sd) == torchvision_keys(version)
    # Parameter counts of torchvision's squeezenet1_0 / squeezenet1_1.
    assert sum(v.numel() for v in sd.values()) == {"1_0": 1_248_424, "1_1": 1_235_496}[version]
    first = {"1_0": (96, 3, 7, 7), "1_1": (64, 3, 3, 3)}[version]
    assert tuple(sd["features.0.weight"].shape) == first
    assert tuple(sd["classifier.1.weight"].shape) == (1000, 512, 1, 1)
    last = FIRES[version][-1]
    assert tuple(sd[f"features.{last}.expand3x3.weight"].shape) == (256, 64, 3, 3)
    assert not model.training


def test_bypass_parameter_names():
    base = torchvision_keys("1_0")
    assert set(torch_model("squeezenet1_0_bypass").state_dict()) == base
    complex_keys = set(torch_model("squeezenet1_0_complex_bypass").state_dict())
    extra = complex_keys - base
    assert base <= complex_keys
    assert extra == {f"features.{i}.bypass.{p}" for i in (3, 5, 8, 10) for p in ("weight", "bias")}
    sd = torch_model("squeezenet1_0_complex_bypass").state_dict()
    # fire2: 96 -> 128, fire4: 128 -> 256, fire6: 256 -> 384, fire8: 384 -> 512 channels
    shapes = {i: tuple(sd[f"features.{i}.bypass.weight"].shape) for i in (3, 5, 8, 10)}
    assert shapes == {3: (128, 96, 1, 1), 5: (256, 128, 1, 1), 8: (384, 256, 1, 1), 10: (512, 384, 1, 1)}


def test_bypass_changes_the_function(photos):
    """The plain and simple-bypass nets share weights for one seed; only the adds differ."""
    plain, simple = torch_model("squeezenet1_0"), torch_model("squeezenet1_0_bypass")
    for (k, a), (_, b) in zip(plain.state_dict().items(), simple.state_dict().items()):
        assert torch.equal(a, b), k
    x = photos["chelsea"]
    assert not np.allclose(run_torch(plain, x), run_torch(simple, x))


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_strict_state_dict_round_trip(name, photos):
    x = photos["chelsea"]
    a, b = torch_model(name, seed=0), torch_model(name, seed=1)
    ya, yb = run_torch(a, x), run_torch(b, x)
    assert not np.allclose(ya, yb)
    result = b.load_state_dict(a.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    np.testing.assert_array_equal(run_torch(b, x), ya)


def test_strict_load_rejects_other_architecture():
    with pytest.raises(RuntimeError):
        torch_model("squeezenet1_1").load_state_dict(torch_model("squeezenet1_0").state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="bypass"):
        torch_model("squeezenet1_0").load_state_dict(
            torch_model("squeezenet1_0_complex_bypass").state_dict(), strict=True
        )


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_seeded_init_is_deterministic(name):
    a, b, c = torch_model(name, seed=0), torch_model(name, seed=0), torch_model(name, seed=7)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if k.endswith("weight"))
    # torchvision's init: zero biases, N(0, 0.01) final conv
    assert all(float(v.abs().max()) == 0.0 for k, v in sa.items() if k.endswith("bias"))
    std = float(sa["classifier.1.weight"].std())
    assert 0.009 < std < 0.011


def test_seeded_init_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    torch_model("squeezenet1_1", seed=5)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_logits_have_real_spread(name, photos):
    x = np.concatenate([photos["chelsea"], photos["coffee"]])
    y = run_torch(torch_model(name), x)
    assert y.shape == (2, 1000)
    assert np.isfinite(y).all()
    for row in y:
        assert row.max() > 0
        assert row.std() > 1e-3 * max(1.0, abs(row).max())
        assert len(np.unique(row)) > 200  # not collapsed onto a few values by the final ReLU
        top2 = np.sort(row)[-2:]
        assert top2[1] > top2[0]  # a unique top-1
    assert not np.allclose(y[0], y[1])  # the input matters


# ----------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def exported() -> dict[str, onnx.ModelProto]:
    return {name: load_onnx(name)[0] for name in TORCH_MODELS}


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_onnx_export_parity(name, exported, photos):
    model = exported[name]
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "data" and out.name == "output"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 224, 224]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 1000]
    ref_model = torch_model(name, seed=0)
    for key, x in photos.items():
        got, ref = run_ort(model, x), run_torch(ref_model, x)
        span = float(ref.max() - ref.min())
        assert span > 0
        assert float(np.abs(got - ref).max()) <= 1e-4 * span, key
        assert int(got.argmax()) == int(ref.argmax()), key


def test_onnx_graph_counts(exported):
    counts = {n: collections.Counter(node.op_type for node in m.graph.node) for n, m in exported.items()}
    for name in ("squeezenet1_0", "squeezenet1_1"):
        assert counts[name]["Add"] == 0 and counts[name]["Conv"] == 26
    assert counts["squeezenet1_0_bypass"]["Add"] == 4
    assert counts["squeezenet1_0_bypass"]["Conv"] == 26
    assert counts["squeezenet1_0_complex_bypass"]["Add"] == 8
    assert counts["squeezenet1_0_complex_bypass"]["Conv"] == 26 + 4
    for name, c in counts.items():
        assert c["Identity"] == 0, name  # shared constants are materialised per conv
        assert c["MaxPool"] == 3 and c["Concat"] == 8, name


def test_onnx_batch_and_seed(photos):
    model, info = load_onnx("squeezenet1_1", batch=2)
    assert info.input_shape == (2, 3, 224, 224) and info.name == "squeezenet1_1"
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 224, 224]
    x = np.concatenate([photos["chelsea"], photos["coffee"]])
    np.testing.assert_allclose(run_ort(model, x), run_torch(torch_model("squeezenet1_1"), x), rtol=1e-4, atol=1e-5)
    other, _ = load_onnx("squeezenet1_1", batch=2, seed=3)
    assert not np.allclose(run_ort(other, x), run_ort(model, x))
    with pytest.raises(TvmsqzError, match="batch"):
        load_onnx("squeezenet1_1", batch=0)


def test_load_onnx_returns_independent_copies():
    a, info = load_onnx("squeezenet1_1")
    assert info == get_model_info("squeezenet1_1")
    a.graph.node.pop()
    b, _ = load_onnx("squeezenet1_1")
    assert len(b.graph.node) == len(a.graph.node) + 1


def test_load_onnx_from_file(tmp_path, exported, photos):
    path = tmp_path / "sq.onnx"
    onnx.save(exported["squeezenet1_1"], str(path))
    model, info = load_onnx(path)
    assert info is None
    x = photos["coffee"]
    np.testing.assert_array_equal(run_ort(model, x), run_ort(exported["squeezenet1_1"], x))
    model2, _ = load_onnx(str(path))
    assert model2.SerializeToString() == model.SerializeToString()


def test_load_onnx_errors(tmp_path, exported):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(TvmsqzError, match="no such file") as e:
        load_onnx(missing)
    assert str(missing) in str(e.value)

    text = tmp_path / "notes.onnx"
    text.write_text("this is not an ONNX model\n" * 20)
    with pytest.raises(TvmsqzError, match=r"notes\.onnx is not a valid ONNX model: ") as e:
        load_onnx(text)
    assert "\n" not in str(e.value)

    half = tmp_path / "half.onnx"
    blob = exported["squeezenet1_1"].SerializeToString()
    half.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(TvmsqzError, match=r"half\.onnx is not a valid ONNX model"):
        load_onnx(half)

    # parses as protobuf but fails the checker (a node reading an undefined tensor)
    broken = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["nowhere"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(broken.SerializeToString())
    with pytest.raises(TvmsqzError, match=r"broken\.onnx is not a valid ONNX model"):
        load_onnx(bad)

    with pytest.raises(TvmsqzError, match="no such file"):
        load_onnx(tmp_path / "missing.net")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 16)
    with pytest.raises(TvmsqzError, match="unsupported model file"):
        load_onnx(other)
