"""The ImageNet-trained SqueezeNet v1.0 in Deep Compression form: decoder, ONNX, predictions.

The data lives outside the repository (`paths.DEEP_COMPRESSION_DIR`). When it is missing,
these tests fail under CI=true and are skipped otherwise (tests/conftest.py `require`).
"""

from __future__ import annotations

import collections
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import require

from tvmsqz import paths
from tvmsqz.errors import TvmsqzError
from tvmsqz.images import class_names, preprocess, sample_images
from tvmsqz.models import deep_compression as dc
from tvmsqz.models import get_model_info, load_onnx

NET_SIZE = 675_763  # bytes, as documented in the data folder's README

# SqueezeNet v1.0 (paper, table 1): (squeeze, expand1x1, expand3x3) of fire2..fire9.
FIRES = [
    (16, 64, 64),
    (16, 64, 64),
    (32, 128, 128),
    (32, 128, 128),
    (48, 192, 192),
    (48, 192, 192),
    (64, 256, 256),
    (64, 256, 256),
]


def expected_convs() -> list[tuple[str, tuple[int, int, int, int], int, int]]:
    """(name, OIHW, stride, pad) of the 26 conv layers, written out independently of the code."""
    out = [("conv1", (96, 3, 7, 7), 2, 0)]
    cin = 96
    for n, (s, e1, e3) in enumerate(FIRES, start=2):
        out += [
            (f"fire{n}/conv1x1_1", (s, cin, 1, 1), 1, 0),
            (f"fire{n}/conv1x1_2", (e1, s, 1, 1), 1, 0),
            (f"fire{n}/conv3x3_2", (e3, s, 3, 3), 1, 1),
        ]
        cin = e1 + e3
    out.append(("conv_final", (1000, 512, 1, 1), 1, 1))
    return out


@pytest.fixture(scope="module")
def dc_dir() -> Path:
    d = Path(paths.DEEP_COMPRESSION_DIR)
    require((d / dc.NET_FILE).is_file() and (d / dc.PROTOTXT_FILE).is_file(), f"Deep Compression data missing from {d}")
    return d


@pytest.fixture(scope="module")
def net_file(dc_dir) -> Path:
    return dc_dir / dc.NET_FILE


@pytest.fixture(scope="module")
def weights(net_file):
    return dc.decode(net_file)


@pytest.fixture(scope="module")
def session(dc_dir):
    model, _ = load_onnx("squeezenet1_0_dc")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def layer_offsets(blob: bytes) -> list[tuple[int, int, int, int]]:
    """(start, n, codes offset, gaps offset) per layer, from the README's format alone."""
    convs = expected_convs()
    counts = struct.unpack_from(f"<{len(convs)}I", blob, 0)
    off = 4 * len(convs)
    out = []
    for (_, shape, _, _), n in zip(convs, counts):
        start = off
        off += 4 * 256 + 4 * shape[0]
        codes = off
        off += n
        gaps = off
        off += math.ceil(n / 2)
        out.append((start, n, codes, gaps))
    out.append((off, 0, off, off))
    return out


# ----------------------------------------------------------------------------- prototxt


def test_prototxt_is_squeezenet_v1_0(dc_dir):
    convs = dc.conv_layers(dc_dir / dc.PROTOTXT_FILE)
    got = [(c.name, c.weight_shape, c.stride, c.pad) for c in convs]
    assert got == expected_convs()


# ----------------------------------------------------------------------------- decoder


def test_file_is_consumed_exactly(net_file, weights):
    blob = net_file.read_bytes()
    assert len(blob) == NET_SIZE
    offsets = layer_offsets(blob)
    assert offsets[-1][0] == len(blob)  # the README's layout accounts for every byte
    assert list(weights) == [name for name, *_ in expected_convs()]
    for (name, shape, _, _), (w, b) in zip(expected_convs(), weights.values()):
        assert w.shape == shape and w.dtype == np.float32, name
        assert b.shape == (shape[0],) and b.dtype == np.float32, name
        assert np.isfinite(w).all() and np.isfinite(b).all(), name


def test_decoder_matches_reference_loop(net_file, weights):
    """Decode two layers with a plain loop over the README's rules and compare."""
    blob = net_file.read_bytes()
    offsets = layer_offsets(blob)
    convs = expected_convs()
    for idx in (1, 3):  # fire2/conv1x1_1 (dense-ish), fire2/conv3x3_2 (~33%)
        name, shape, _, _ = convs[idx]
        start, n, codes_at, gaps_at = offsets[idx]
        codebook = struct.unpack_from("<256f", blob, start)
        bias = struct.unpack_from(f"<{shape[0]}f", blob, start + 1024)
        flat = [0.0] * int(np.prod(shape))
        pos = -1
        for k in range(n):
            byte = blob[gaps_at + k // 2]
            gap = (byte & 0xF) if k % 2 == 0 else (byte >> 4)
            pos += gap + 1
            flat[pos] = codebook[blob[codes_at + k]]
        w, b = weights[name]
        np.testing.assert_array_equal(w.ravel(), np.asarray(flat, np.float32))
        np.testing.assert_array_equal(b, np.asarray(bias, np.float32))


def test_sparsity_and_codebook(weights):
    total = sum(w.size for w, _ in weights.values())
    nonzero = sum(int(np.count_nonzero(w)) for w, _ in weights.values())
    assert total == 1_244_448  # SqueezeNet v1.0 conv weights (without biases)
    assert 0.30 < nonzero / total < 0.37  # "about 33% non-zero"
    for name, (w, _) in weights.items():
        assert len(np.unique(w)) <= 257, name  # 8-bit codebook (+ the zeros never stored)
        assert np.count_nonzero(w) > 0, name
    # 3x3 expand layers are the most heavily pruned ones
    assert np.count_nonzero(weights["fire2/conv3x3_2"][0]) / weights["fire2/conv3x3_2"][0].size < 0.5


@pytest.mark.parametrize("cut", [1, 2, 500, NET_SIZE - 50, NET_SIZE - 5])
def test_truncated_file_is_rejected(tmp_path, net_file, cut):
    bad = tmp_path / dc.NET_FILE
    bad.write_bytes(net_file.read_bytes()[: NET_SIZE - cut])
    with pytest.raises(TvmsqzError, match="truncated") as e:
        dc.decode(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(TvmsqzError, match="truncated"):
        load_onnx(bad)


@pytest.mark.parametrize("extra", [b"\0", b"\0" * 4, b"garbage" * 100])
def test_extended_file_is_rejected(tmp_path, net_file, extra):
    bad = tmp_path / dc.NET_FILE
    bad.write_bytes(net_file.read_bytes() + extra)
    with pytest.raises(TvmsqzError, match=f"{len(extra)} unexpected trailing bytes"):
        dc.decode(bad)


def test_positions_out_of_range_are_rejected(tmp_path, net_file):
    blob = bytearray(net_file.read_bytes())
    _, n, _, gaps_at = layer_offsets(bytes(blob))[25]  # conv_final
    blob[gaps_at : gaps_at + math.ceil(n / 2)] = b"\xff" * math.ceil(n / 2)  # every gap 15
    bad = tmp_path / dc.NET_FILE
    bad.write_bytes(bytes(blob))
    with pytest.raises(TvmsqzError, match="conv_final addresses position"):
        dc.decode(bad)


def test_copy_beside_prototxt_decodes_identically(tmp_path, dc_dir, weights):
    shutil.copy(dc_dir / dc.NET_FILE, tmp_path / "copy.net")
    shutil.copy(dc_dir / dc.PROTOTXT_FILE, tmp_path / "deploy.prototxt")
    assert dc.find_prototxt(tmp_path / "copy.net") == tmp_path / "deploy.prototxt"
    again = dc.decode(tmp_path / "copy.net")
    for name, (w, b) in weights.items():
        np.testing.assert_array_equal(again[name][0], w)
        np.testing.assert_array_equal(again[name][1], b)


def test_decode_errors(tmp_path, dc_dir):
    with pytest.raises(TvmsqzError, match="no such file"):
        dc.decode(tmp_path / "missing.net")
    wrong = tmp_path / "wrong.prototxt"
    wrong.write_text('input: "data"\ninput_dim: 1\nlayer { name: "x" type: "Convolution" ')
    with pytest.raises(TvmsqzError, match="not a valid prototxt"):
        dc.decode(dc_dir / dc.NET_FILE, prototxt=wrong)


# ----------------------------------------------------------------------------- ONNX


def test_onnx_structure(dc_dir):
    model, info = load_onnx("squeezenet1_0_dc")
    assert info == get_model_info("squeezenet1_0_dc")
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "data" and out.name == "prob"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 227, 227]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 1000]
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] == 26 and ops["Relu"] == 26 and ops["Concat"] == 8
    assert ops["MaxPool"] == 3 and ops["GlobalAveragePool"] == 1 and ops["Softmax"] == 1
    attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in model.graph.node}
    for node in model.graph.node:
        if node.op_type == "MaxPool":
            assert attrs[node.name]["ceil_mode"] == 1
    assert attrs["conv_final"]["pads"] == [1, 1, 1, 1]
    assert attrs["conv1"]["strides"] == [2, 2]
    shapes = onnx.shape_inference.infer_shapes(model)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in shapes.graph.value_info}
    assert dims["pool1"] == [1, 96, 55, 55]  # 111 -> 55 needs ceil rounding
    assert dims["conv_final"] == [1, 1000, 15, 15]  # pad 1 on a 1x1 conv


def test_net_path_and_batch(dc_dir, net_file, session):
    model, info = load_onnx(net_file, batch=2)
    assert info.name == "squeezenet1_0_dc" and info.input_shape == (2, 3, 227, 227)
    imgs = dict(sample_images())
    x = np.concatenate([preprocess(imgs[k], "caffe", 227) for k in ("chelsea", "coffee")])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batched = sess.run(None, {"data": x})[0]
    assert batched.shape == (2, 1000)
    for i in range(2):
        single = session.run(None, {"data": x[i : i + 1]})[0][0]
        np.testing.assert_allclose(batched[i], single, rtol=1e-5, atol=1e-6)


def top5(session, img) -> tuple[list[str], np.ndarray]:
    prob = session.run(None, {"data": preprocess(img, "caffe", 227)})[0][0]
    names = class_names()
    return [names[i] for i in np.argsort(-prob)[:5]], prob


# Photo -> (classes of which top-1 must be one, classes of which top-5 must contain one).
# Chosen by looking at the photos; the model's actual answers are in the lead's report.
EXPECTED = {
    "chelsea": ({"tabby", "tiger cat", "Egyptian cat"}, {"tabby", "tiger cat", "Egyptian cat"}),
    "coffee": ({"espresso", "cup", "coffee mug"}, {"espresso"}),
    "motorcycle": ({"moped", "motor scooter"}, {"moped", "motor scooter"}),
    "rocket": (None, {"missile", "projectile", "space shuttle"}),
    "grace_hopper": (None, {"military uniform", "suit", "bow tie", "Windsor tie"}),
}


@pytest.mark.parametrize("photo", sorted(EXPECTED))
def test_predicts_real_photos(photo, session):
    imgs = dict(sample_images())
    require(photo in imgs, f"{photo} is not bundled with this scikit-image/matplotlib")
    names, prob = top5(session, imgs[photo])
    assert prob.shape == (1000,) and abs(float(prob.sum()) - 1.0) < 1e-4 and prob.min() >= 0
    top1_ok, top5_ok = EXPECTED[photo]
    if top1_ok is not None:
        assert names[0] in top1_ok, names
    assert set(names) & top5_ok, names


def test_chelsea_is_confidently_a_cat(session):
    names, prob = top5(session, dict(sample_images())["chelsea"])
    cats = [class_names().index(c) for c in ("tabby", "tiger cat", "Egyptian cat")]
    assert float(prob[cats].sum()) > 0.5
    # the wrong colour order must hurt: a caffe model fed RGB is less sure of the cat
    img = dict(sample_images())["chelsea"]
    rgb = preprocess(img, "caffe", 227)[:, ::-1].copy()
    wrong = session.run(None, {"data": rgb})[0][0]
    assert float(wrong[cats].sum()) < float(prob[cats].sum())
