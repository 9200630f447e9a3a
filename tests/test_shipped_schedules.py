"""The shipped x86 databases apply by default, cover every tunable kernel of the default graph, and keep parity."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import REPO, require_cpu, run_cli

from tvmsqz.database import check_database
from tvmsqz.models import load_onnx
from tvmsqz.runtime import load
from tvmsqz.targets import get_target

PORTABLE = REPO / "schedules" / "x86-avx512"
#: CPU folders shipped (tuned on that CPU model, for the same portable target).
CPU_FOLDERS = sorted(p for p in PORTABLE.iterdir() if p.is_dir())


def test_shipped_databases_are_valid_for_their_target():
    spec = get_target("x86-avx512")
    assert check_database(PORTABLE, spec) > 100
    assert CPU_FOLDERS, "no per-CPU database shipped"
    for folder in CPU_FOLDERS:
        assert check_database(folder, spec) > 100


@pytest.mark.parametrize("model", ["squeezenet1_1", "squeezenet1_0"])
def test_compile_applies_shipped_schedules_to_every_conv(model, tmp_path):
    so = tmp_path / f"{model}.so"
    proc = run_cli("compile", model, "--target", "x86-avx512", "-o", str(so), env={"TVMSQZ_DATA": str(tmp_path)})
    manifest = json.loads(so.with_name(so.name + ".json").read_text())
    assert manifest["database"] in [str(PORTABLE)] + [str(f) for f in CPU_FOLDERS]
    assert manifest["fused"] is True  # x86's default: concat-free Fire modules
    # every kernel with a reduction ran with a shipped schedule; only copies may stay untuned (the
    # layout transforms, the final reshape and the slice of the padded classifier's scores)
    copies = ("reshape", "te_layout_transform", "fused_reshape")
    assert all(name.startswith(copies) for name in manifest["kernels"]["untuned"]), manifest["kernels"]
    assert sum(name.startswith("fire_expand_into_") for name in manifest["kernels"]["tuned"]) >= 8
    assert "kernels tuned from" in proc.stderr
    require_cpu({"avx512f", "avx512bw", "avx512vl"}, "parity of the AVX-512 artifact needs an AVX-512 host")
    x = np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype("float32")
    onnx_model, _ = load_onnx(model)
    want = ort.InferenceSession(onnx_model.SerializeToString()).run(None, {"data": x})[0]
    got = load(so).run(x)
    assert np.abs(got - want).max() <= 1e-4 * (want.max() - want.min())
    assert got.argmax() == want.argmax()


def test_host_cpu_folder_is_preferred_over_the_portable_one(tmp_path, monkeypatch):
    import tvmsqz.paths
    from tvmsqz.database import default_database

    monkeypatch.setattr(tvmsqz.paths, "USER_SCHEDULES_DIR", tmp_path / "no-user-tuning")
    spec = get_target("x86-avx512")
    for folder in CPU_FOLDERS:
        monkeypatch.setenv("TVMSQZ_HOST_CPU", folder.name)
        assert default_database(spec) == folder
    monkeypatch.setenv("TVMSQZ_HOST_CPU", "some-other-cpu")
    assert default_database(spec) == PORTABLE


def test_no_tuning_ignores_the_shipped_database(tmp_path):
    so = tmp_path / "m.so"
    run_cli("compile", "squeezenet1_1", "--target", "x86-avx512", "--no-tuning", "-o", str(so))
    manifest = json.loads(so.with_name(so.name + ".json").read_text())
    assert manifest["database"] is None and manifest["kernels"]["tuned"] == []


def test_merge_databases_keeps_every_record_once(tmp_path):
    from tvmsqz.database import RECORD_FILE, WORKLOAD_FILE, merge_databases

    n = check_database(PORTABLE, get_target("x86-avx512"))
    merged = tmp_path / "merged"
    assert merge_databases([PORTABLE, PORTABLE], merged) == n  # duplicates collapse
    assert check_database(merged, get_target("x86-avx512")) == n
    assert len((merged / WORKLOAD_FILE).read_text().splitlines()) == len(
        (PORTABLE / WORKLOAD_FILE).read_text().splitlines()
    )
    assert (merged / RECORD_FILE).stat().st_size > 0


def test_merge_with_keep_writes_each_workloads_fastest_records(tmp_path):
    from tvmsqz.database import RECORD_FILE, merge_databases

    def by_workload(folder):
        rows: dict[int, list[float]] = {}
        for line in (folder / RECORD_FILE).read_text().splitlines():
            index, rec = json.loads(line)
            secs = rec[1]
            rows.setdefault(index, []).append(sum(secs) / len(secs))
        return rows

    merged = tmp_path / "kept"
    n = merge_databases([PORTABLE], merged, keep=2)
    full, kept = by_workload(PORTABLE), by_workload(merged)
    assert n == sum(len(v) for v in kept.values()) < sum(len(v) for v in full.values())
    assert kept.keys() == {i for i, v in full.items() if min(v) < 1e9}
    for index, secs in kept.items():
        valid = sorted(s for s in full[index] if s < 1e9)
        assert sorted(secs) == valid[:2]  # the two fastest, nothing slower
    assert check_database(merged, get_target("x86-avx512")) == n


INT8 = REPO / "schedules" / "x86-avx512-int8"


@pytest.mark.parametrize("model", ["squeezenet1_1", "squeezenet1_0"])
def test_shipped_int8_schedules_cover_every_int8_conv(model, tmp_path):
    """The int8 database (its own target: +avx512vnni) is valid, applies by default to
    `--precision int8` and tunes every dot-product conv; it never serves the fp32 target."""
    spec = get_target("x86-avx512").for_precision("int8")
    assert check_database(INT8, spec) > 100
    so = tmp_path / f"{model}-int8.so"
    run_cli("compile", model, "--target", "x86-avx512", "--precision", "int8", "-o", str(so))
    manifest = json.loads(so.with_name(so.name + ".json").read_text())
    assert manifest["database"] in [str(INT8)] + [str(p) for p in INT8.iterdir() if p.is_dir()]
    tuned, untuned = manifest["kernels"]["tuned"], manifest["kernels"]["untuned"]
    assert sum("conv2d_nchwc_vnni" in name for name in tuned) >= 18
    assert not [name for name in untuned if "conv2d_nchwc" in name], untuned
