"""The compressed weight file (`--compress`): codec, Deep Compression model end to end, runners.

Codec tests check the decoder (`tvmsqz.weightfile`) against the encoder's own tensors bit for bit,
on hostile inputs too; the end-to-end tests compile the ImageNet-trained Deep Compression
SqueezeNet with and without `--compress` and compare the outputs bit for bit, through the API,
the CLI, and both bundle runners.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import VNNI_FLAGS, assert_one_line_error, require, require_cpu, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from tvmsqz import paths, weightfile
from tvmsqz.compress.huffman import code_lengths
from tvmsqz.compress.sharing import kmeans_1d, prune, share
from tvmsqz.compress.writer import encode
from tvmsqz.images import preprocess, sample_images
from tvmsqz.models import deep_compression as dc
from tvmsqz.weightfile import MAX_CODE_BITS, WeightFileError


def roundtrip(tensors: list) -> dict:
    blob, _ = encode(tensors)
    return weightfile.decode(blob)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(
        np.ascontiguousarray(a, np.float32).view(np.uint32), np.ascontiguousarray(b, np.float32).view(np.uint32)
    )


# --------------------------------------------------------------------------- codec


def test_code_lengths_are_a_prefix_code_within_the_limit():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])  # the most skewed histogram: unlimited Huffman would need 39 bits
    for counts in (np.array(fib), np.ones(256, np.int64), np.array([0, 5, 0, 0]), np.array([3, 0, 9])):
        lengths = code_lengths(counts)
        used = lengths[counts > 0].astype(np.int64)
        assert (lengths[counts == 0] == 0).all()
        assert used.max() <= MAX_CODE_BITS
        assert (2.0**-used).sum() <= 1.0
    assert code_lengths(np.array([0, 7, 0])).tolist() == [0, 1, 0]  # one symbol still costs a bit


def test_hostile_tensors_roundtrip_bit_for_bit():
    rng = np.random.default_rng(0)
    sparse = np.zeros((8, 300, 3, 3), np.float32)
    sparse.flat[[0, 5000, 21599]] = [1.5, -2.0, 3.25]  # gaps far over every escape
    cases = {
        "empty": np.zeros((4, 4, 3, 3), np.float32),
        "single_symbol": np.full((16, 8, 1, 1), 0.125, np.float32),
        "one_weight": np.array([[[[7.0]]]], np.float32),
        "negative_zero": np.array([[[[-0.0, 0.0, 1.0]]]], np.float32),
        "sparse": sparse,
        "dense": rng.standard_normal((32, 16, 3, 3)).astype(np.float32),
        "last_only": np.eye(1, 500, 499, dtype=np.float32).reshape(1, 500, 1, 1),
    }
    tensors = [(name, share(value, 8)) for name, value in cases.items()] + [("bias", np.arange(5, dtype=np.float32))]
    out = roundtrip(tensors)
    assert list(out) == [*cases, "bias"]
    for (name, shared), decoded in zip(tensors[:-1], list(out.values())[:-1]):
        assert same_bits(decoded, shared.dense()), name
    for name in ("empty", "single_symbol", "one_weight", "negative_zero", "sparse", "last_only"):
        assert same_bits(out[name], cases[name]), name  # few distinct values: lossless at 8 bits
    assert np.array_equal(out["bias"], np.arange(5, dtype=np.float32))
    codes = np.random.default_rng(2).integers(-128, 128, (8, 4, 3, 3)).astype(np.int8)
    codes[codes > 100] = 0
    decoded = roundtrip([("q", share(codes, 6))])["q"]  # int8 tensors are shared losslessly whatever the bits
    assert decoded.dtype == np.int8 and np.array_equal(decoded, codes)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 40), st.sampled_from([1, 3])),
    density=st.floats(0.0, 1.0),
    bits=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_tensors_roundtrip(shape, density, bits, seed):
    rng = np.random.default_rng(seed)
    value = rng.standard_normal((shape[0], shape[1], shape[2], shape[2])).astype(np.float32)
    value[rng.random(value.shape) > density] = 0.0
    shared = share(value, bits)
    assert shared.codebook.size <= 1 << bits
    assert same_bits(roundtrip([("w", shared)])["w"], shared.dense())


def test_pruning_and_kmeans():
    w = np.array([0.1, -3.0, 0.5, -0.05, 2.0, 0.0], np.float32)
    assert np.array_equal(prune(w, 0.5), np.array([0, -3.0, 0.5, 0, 2.0, 0], np.float32))
    values = np.array([0.0, 0.1, 1.0, 1.1, 5.0])
    centroids = kmeans_1d(values, np.array([1, 1, 1, 1, 10]), 3)
    assert np.allclose(centroids, [0.05, 1.05, 5.0])


def test_corrupt_truncated_and_foreign_files_are_refused():
    blob, _ = encode([("w", share(np.random.default_rng(1).standard_normal((64, 16, 3, 3)).astype(np.float32), 6))])
    assert weightfile.decode(blob)  # the good file decodes
    with pytest.raises(WeightFileError, match="CRC"):
        weightfile.decode(blob[:-100] + blob[-4:])  # truncated
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x40
    with pytest.raises(WeightFileError, match="CRC"):
        weightfile.decode(bytes(flipped))
    with pytest.raises(WeightFileError, match="not a tvmsqz weight file"):
        weightfile.decode(b"\x7fELF" + blob[4:])
    # Corrupt streams behind a valid CRC (a hostile file, not a bad copy): refused, never a hang.
    for where in (len(blob) - 40, len(blob) - 400, len(blob) - 4000):
        body = bytearray(blob[:-4])
        body[where] ^= 0xFF
        forged = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
        try:
            out = weightfile.decode(forged)
        except WeightFileError as exc:
            assert "corrupt" in str(exc) or "beyond" in str(exc)
        else:
            assert out["w"].shape == (64, 16, 3, 3)  # a flip that still decodes: a valid tensor


# --------------------------------------------------------------------------- the Deep Compression model


@pytest.fixture(scope="module")
def dc_weights() -> dict:
    require(dc.default_net_path().is_file(), f"Deep Compression data missing from {paths.DEEP_COMPRESSION_DIR}")
    return dc.decode()


def test_deep_compression_weights_are_lossless_at_8_bits(dc_weights):
    tensors = [(name, share(w, 8)) for name, (w, _) in dc_weights.items()]
    assert all(s.lossless and s.codebook.size <= 256 for _, s in tensors)
    blob, stats = encode(tensors)
    out = weightfile.decode(blob)
    for name, (w, _) in dc_weights.items():
        assert same_bits(out[name], w), name
    # Huffman over the file's own codebooks and positions: within 8% of the order-0 entropy bound.
    assert stats.entropy_bytes <= len(blob) <= 1.08 * stats.entropy_bytes
    assert len(blob) < dc.default_net_path().stat().st_size


def test_deep_compression_at_6_bits_is_under_half_a_megabyte(dc_weights):
    tensors = [(name, share(w, 6)) for name, (w, _) in dc_weights.items()]
    tensors += [(name + "/bias", b) for name, (_, b) in dc_weights.items()]
    blob, _ = encode(tensors)
    assert len(blob) <= 500_000
    assert all(s.codebook.size <= 64 for _, s in tensors[: len(dc_weights)])


@pytest.fixture(scope="module")
def dc_builds(tmp_path_factory, dc_weights) -> dict:
    """The Deep Compression SqueezeNet compiled for this host's x86 target: plain, --compress
    (lossless) and --compress --compress-bits 6."""
    out = tmp_path_factory.mktemp("compress")
    builds = {"plain": out / "dc.so", "z8": out / "dcz.so", "z6": out / "dc6.so"}
    run_cli("compile", "squeezenet1_0_dc", "--target", "x86", "-o", str(builds["plain"]))
    run_cli("compile", "squeezenet1_0_dc", "--target", "x86", "-o", str(builds["z8"]), "--compress")
    proc = run_cli(
        "compile", "squeezenet1_0_dc", "--target", "x86", "-o", str(builds["z6"]), "--compress", "--compress-bits", "6"
    )
    assert "dc6.weights" in proc.stdout
    return builds


def photos() -> list[np.ndarray]:
    return [preprocess(img, "caffe", 227) for _, img in sample_images()]


def test_compressed_artifact_matches_the_plain_one_bit_for_bit(dc_builds):
    import tvmsqz

    plain, packed = tvmsqz.load(dc_builds["plain"]), tvmsqz.load(dc_builds["z8"])
    manifest = packed.manifest
    weights = Path(dc_builds["z8"]).with_suffix(".weights")
    assert manifest["weights"]["file"] == weights.name
    assert manifest["weights"]["bytes"] == weights.stat().st_size
    assert manifest["weights"]["lossless"] is True
    assert manifest["artifact"]["bytes"] < 1_500_000  # code only: the weights are in the file
    for x in photos():
        assert same_bits(packed.run(x), plain.run(x))


def test_six_bit_build_is_small_and_reports_its_agreement(dc_builds):
    """The size bars hold; the agreement is measured and reported, and it is what the compiled
    artifact reaches (the issue's 99% is not: see RESULTS.md, clustering without retraining)."""
    import tvmsqz
    from tvmsqz.benchmark import agreement

    plain, six = tvmsqz.load(dc_builds["plain"]), tvmsqz.load(dc_builds["z6"])
    m = six.manifest
    assert m["weights"]["bytes"] <= 500_000 and m["weights"]["lossless"] is False
    assert m["weights"]["bytes"] + m["artifact"]["bytes"] <= 1_500_000
    reported = m["weights"]["agreement"]
    assert reported["inputs"] >= 50 and 0.0 < reported["top1_agreement"] < 1.0
    inputs = photos()
    measured = agreement(np.concatenate([six.run(x) for x in inputs]), np.concatenate([plain.run(x) for x in inputs]))
    assert measured["inputs"] == 6 and measured["top5_overlap"] >= 0.5


def test_int8_build_runs_from_the_same_weight_file(dc_builds, tmp_path):
    """`--precision int8 --compress` quantizes at load from the fp32 build's weight file (the very
    same bytes), and matches the plain int8 artifact bit for bit."""
    import tvmsqz

    require_cpu(VNNI_FLAGS, "the x86-avx512 int8 kernels run VNNI")
    plain, packed = tmp_path / "dci.so", tmp_path / "dciz.so"
    run_cli("compile", "squeezenet1_0_dc", "--target", "x86", "--precision", "int8", "-o", str(plain))
    run_cli("compile", "squeezenet1_0_dc", "--target", "x86", "--precision", "int8", "--compress", "-o", str(packed))
    assert packed.with_suffix(".weights").read_bytes() == Path(dc_builds["z8"]).with_suffix(".weights").read_bytes()
    a, b = tvmsqz.load(plain), tvmsqz.load(packed)
    assert b.manifest["precision"] == "int8" and b.manifest["weights"]["lossless"] is True
    for x in photos():
        assert same_bits(b.run(x), a.run(x))


def test_cli_run_refuses_bad_weight_files(dc_builds, tmp_path):
    for name in ("dcz.so", "dcz.so.json", "dcz.weights", "dc6.weights"):
        shutil.copy(Path(dc_builds["z8"]).with_name(name), tmp_path / name)
    so, weights = tmp_path / "dcz.so", tmp_path / "dcz.weights"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated
    assert_one_line_error(run_cli("run", str(so), check=False), "dcz.weights")
    shutil.copy(tmp_path / "dc6.weights", weights)  # swapped for another build's file
    assert_one_line_error(run_cli("run", str(so), check=False), "replaced")
    # Swapped and the manifest edited to match: the tensors' shapes still tell.
    manifest = json.loads((tmp_path / "dcz.so.json").read_text())
    other = np.zeros((3, 3, 1, 1), np.float32)
    blob, _ = encode([(n, other) for n in manifest["weights"]["tensors"]])
    weights.write_bytes(blob)
    import hashlib

    for entry in manifest["files"]:
        if entry["file"] == weights.name:
            entry.update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (tmp_path / "dcz.so.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_cli("run", str(so), check=False), "shapes")
    weights.unlink()
    assert_one_line_error(run_cli("run", str(so), check=False), "missing")


def test_bundle_runners_decode_the_weight_file(dc_builds, tmp_path):
    x = photos()[4]
    np.save(tmp_path / "x.npy", x)
    run_cli("run", str(dc_builds["z8"]), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "ref.npy"))
    bundle = tmp_path / "bundle"
    run_cli("package", str(dc_builds["z8"]), "-o", str(bundle))
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["model"]["weights"]["file"] == "model/dcz.weights"
    ref = np.load(tmp_path / "ref.npy")
    for runner in ([str(bundle / "bin/tvmsqz-run")], ["python3", str(bundle / "bin/tvmsqz-run.py")]):
        out = tmp_path / "y.npy"
        proc = subprocess.run(
            [*runner, "--input", str(tmp_path / "x.npy"), "-o", str(out), "--json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert same_bits(np.load(out), ref), runner
        assert json.loads(proc.stdout.splitlines()[-1])["weights_load_ms"] > 0
    # A corrupt weight file in the bundle: both runners refuse it in one line.
    path = bundle / "model/dcz.weights"
    path.write_bytes(path.read_bytes()[:-10] + b"\0" * 10)
    for runner in ([str(bundle / "bin/tvmsqz-run")], ["python3", str(bundle / "bin/tvmsqz-run.py")]):
        proc = subprocess.run(runner, capture_output=True, text=True, timeout=300)
        assert_one_line_error(proc, "sha256")


def test_package_compress_rebuilds_a_plain_artifact(dc_builds, tmp_path):
    """`package --compress` of an artifact with its weights inside: compiled again from the model its
    manifest names (same target), bundled with the weight file; the runner's output is the plain
    artifact's, bit for bit."""
    x = photos()[2]
    np.save(tmp_path / "x.npy", x)
    run_cli("run", str(dc_builds["plain"]), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "ref.npy"))
    bundle = tmp_path / "bundle"
    run_cli("package", str(dc_builds["plain"]), "-o", str(bundle), "--compress")
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["model"]["weights"]["file"] == "model/dc.weights"
    assert meta["sizes"]["model_bytes"] < Path(dc_builds["plain"]).stat().st_size
    out = tmp_path / "y.npy"
    proc = subprocess.run(
        [str(bundle / "bin/tvmsqz-run"), "--input", str(tmp_path / "x.npy"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert same_bits(np.load(out), np.load(tmp_path / "ref.npy"))


def test_compress_options_are_checked(tmp_path):
    out = str(tmp_path / "m.so")
    assert_one_line_error(
        run_cli("compile", "squeezenet1_1", "-o", out, "--compress", "--compress-bits", "12", check=False), "1..8"
    )
    assert_one_line_error(
        run_cli("compile", "squeezenet1_1", "-o", out, "--compress-density", "0", check=False), "(0, 1]"
    )
    assert_one_line_error(
        run_cli("compile", "squeezenet1_1", "--target", "vta", "-o", out, "--compress", check=False), "--compress"
    )
    assert not Path(out).exists()
