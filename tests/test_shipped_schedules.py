"""The shipped x86 database applies by default, covers every tunable kernel, and keeps parity."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from conftest import REPO, require_cpu, run_cli
from tvmsqz.database import check_database
from tvmsqz.models import load_onnx
from tvmsqz.runtime import Artifact
from tvmsqz.targets import get_target

SHIPPED = REPO / "schedules" / "x86-avx512"


def test_shipped_database_is_valid_for_its_target():
    assert check_database(SHIPPED, get_target("x86-avx512")) > 100


@pytest.mark.parametrize("model,fuse", [("squeezenet1_1", None), ("squeezenet1_0", None), ("squeezenet1_1", "--fuse"),
                                        ("squeezenet1_0", "--fuse")])
def test_compile_applies_shipped_schedules_by_default(model, fuse, tmp_path):
    so = tmp_path / f"{model}.so"
    proc = run_cli("compile", model, "--target", "x86-avx512", "-o", str(so), *([fuse] if fuse else []))
    manifest = json.loads(so.with_name(so.name + ".json").read_text())
    assert manifest["database"] == str(SHIPPED)
    assert manifest["fused"] is bool(fuse)  # x86's measured default is unfused (targets/x86-avx512.json)
    # only kernels with a single possible schedule (reshapes, concatenate copies) may stay untuned
    assert all(name.startswith(("reshape", "concatenate")) for name in manifest["kernels"]["untuned"]), manifest
    assert any(name.startswith("fire_expand_") for name in manifest["kernels"]["tuned"]) is bool(fuse)
    assert "kernels tuned from" in proc.stderr
    require_cpu({"avx512f", "avx512bw", "avx512vl"}, "parity of the AVX-512 artifact needs an AVX-512 host")
    x = np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype("float32")
    onnx_model, _ = load_onnx(model)
    want = ort.InferenceSession(onnx_model.SerializeToString()).run(None, {"data": x})[0]
    got = Artifact.load(so).run(x)
    assert np.abs(got - want).max() <= 1e-4 * (want.max() - want.min())


def test_no_tuning_ignores_the_shipped_database(tmp_path):
    so = tmp_path / "m.so"
    run_cli("compile", "squeezenet1_1", "--target", "x86-avx512", "--no-tuning", "-o", str(so))
    manifest = json.loads(so.with_name(so.name + ".json").read_text())
    assert manifest["database"] is None and manifest["kernels"]["tuned"] == []


def test_merge_databases_keeps_every_record_once(tmp_path):
    from tvmsqz.database import RECORD_FILE, WORKLOAD_FILE, merge_databases

    n = check_database(SHIPPED, get_target("x86-avx512"))
    merged = tmp_path / "merged"
    assert merge_databases([SHIPPED, SHIPPED], merged) == n  # duplicates collapse
    assert check_database(merged, get_target("x86-avx512")) == n
    assert len((merged / WORKLOAD_FILE).read_text().splitlines()) == len((SHIPPED / WORKLOAD_FILE).read_text().splitlines())
    assert (merged / RECORD_FILE).stat().st_size > 0
