"""A VTA target file of one's own is honoured end to end (issue 19): the hardware configuration,
the host target and the tiling database come from the `TargetSpec` the backend is given.

`squeezenet1_1` (built-in, untrained weights: only the arithmetic matters here) compiled for a
32x32 GEMM core (LOG_BLOCK 5, BLOCK_IN = BLOCK_OUT = 32) through the CLI: the programs are for
that geometry, `tvmsqz run` runs them, and the scores are bit-identical to the default 16x16
core's: the quantised network does not depend on the block size, only its packing and the
instruction streams do. Also: the VTA artifact through the API (the Artifact protocol)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, run_cli

from tvmsqz.images import preprocess, sample_images

MODEL = "squeezenet1_1"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return preprocess(dict(sample_images())["chelsea"], "torchvision", 224)


@pytest.fixture(scope="module")
def default_artifact(tmp_path_factory):
    """The model compiled for the shipped `vta` target (16x16 core), through the API."""
    import tvmsqz

    out = tmp_path_factory.mktemp("vta16") / "m16.so"
    return tvmsqz.compile(tvmsqz.load_model(MODEL), "vta", output=out)


def test_block_32_target_file_end_to_end(tmp_path, photo, default_artifact):
    target = json.loads((REPO / "targets" / "vta.json").read_text())
    target.update(name="vta-b32", description="VTA with a 32x32 GEMM core")
    target["vta"]["LOG_BLOCK"] = 5
    target_file = tmp_path / "my-vta.json"
    target_file.write_text(json.dumps(target))
    so = tmp_path / "m.so"
    proc = run_cli("compile", MODEL, "--target", str(target_file), "-o", str(so))
    assert "32x32 GEMM core" in proc.stdout

    manifest = json.loads((tmp_path / "m.so.json").read_text())
    assert manifest["target"]["name"] == "vta-b32" and manifest["target"]["family"] == "vta"
    assert [f["file"] for f in manifest["files"]] == ["m.vta.npz"]
    with np.load(tmp_path / "m.vta.npz") as z:
        side = json.loads(bytes(z["manifest"]).decode())
    assert side["config"]["LOG_BLOCK"] == 5
    assert side["layers"] and all(L["in_shape"][-1] == L["out_shape"][-1] == 32 for L in side["layers"])
    assert all(L["tiling_source"] == "default" for L in side["layers"])  # shipped records are for 16x16

    np.save(tmp_path / "x.npy", photo)
    run_cli("run", str(so), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"))
    y32 = np.load(tmp_path / "y.npy")
    y16 = default_artifact.run(photo)
    assert y32.shape == (1, 1000) and np.array_equal(y32, y16)

    import tvmsqz

    a32 = tvmsqz.load(so)
    a32.run(photo)
    vta = a32.last_stats["layers"]
    assert vta and all(r["peak_macs_per_cycle"] == 1024 for r in vta)
    assert a32.last_stats["cycles"] != default_artifact.last_stats["cycles"]


def test_vta_artifact_protocol(tmp_path, photo, default_artifact):
    from tvmsqz.artifact import Artifact

    a = default_artifact
    assert isinstance(a, Artifact)
    assert a.manifest["target"]["name"] == "vta" and a.vta_manifest["config"]["LOG_BLOCK"] == 4
    assert a.input_shape == (1, 3, 224, 224)
    stats = a.time(photo, repeat=1, warmup=0)
    assert stats["runs"] == 1 and stats["min"] > 0
    rows = a.profile(photo, repeat=1)
    names = {r["name"] for r in rows}
    assert {"seg0", "seg1"} <= names and all(r["calls"] == 1 and r["time_us"] > 0 for r in rows)
    assert rows == sorted(rows, key=lambda r: -r["time_us"])
    vta_rows = [r for r in rows if r["where"] == "vta"]
    assert sum(r["cycles"] for r in vta_rows) == a.last_stats["cycles"]

    import tvmsqz

    (tmp_path / "out").mkdir()
    copy = a.export(tmp_path / "out" / a.path.name)  # the sidecar's name derives from the .so's: same name
    assert copy.is_file() and (tmp_path / "out" / "m16.vta.npz").is_file()
    assert np.array_equal(tvmsqz.load(copy).run(photo), a.run(photo))
    renamed = a.export(tmp_path / "out" / "sq.so")  # another name: the sidecar follows, the manifest too
    assert (tmp_path / "out" / "sq.vta.npz").is_file()
    assert json.loads((tmp_path / "out" / "sq.so.json").read_text())["files"][0]["file"] == "sq.vta.npz"
    assert np.array_equal(tvmsqz.load(renamed).run(photo), a.run(photo))


def test_prebuilt_vta_artifact_is_verified_and_its_sidecar_never_an_output(tmp_path, default_artifact):
    """`bench` of a compiled VTA `.so` checks it against its manifest first (as the TVM flow does),
    and `run -o` refuses to replace the sidecar the manifest lists."""
    folder = tmp_path / "a"
    folder.mkdir()
    copy = default_artifact.export(folder / "m.so")
    side = folder / "m.vta.npz"
    before = side.read_bytes()
    proc = run_cli("run", str(copy), "-o", str(side), check=False)
    assert_one_line_error(proc, "also an input")
    assert side.read_bytes() == before
    side.write_bytes(before[: len(before) // 2])
    proc = run_cli("bench", str(copy), "--target", "vta", check=False)
    assert_one_line_error(proc, "m.vta.npz")


def test_tvm_flow_options_are_refused(tmp_path):
    proc = run_cli(
        "compile", MODEL, "--target", "vta", "--database", str(tmp_path), "-o", str(tmp_path / "m.so"), check=False
    )
    assert_one_line_error(proc, "vta", "--database")


def test_tune_through_the_api(tmp_path):
    import tvmsqz

    out = tmp_path / "tilings"
    summary = tvmsqz.tune(tvmsqz.load_model(MODEL), "vta", trials=1, output=out)
    assert summary["database"] == str(out / "tilings.json") and (out / "tilings.json").is_file()
    assert summary["model_cycles_tuned"] <= summary["model_cycles_default"]
