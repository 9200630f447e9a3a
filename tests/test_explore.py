"""`tvmsqz explore`: design points measured on the target, resumable, as JSON, table and plot."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error, run_cli

from tvmsqz.explore import pareto
from tvmsqz.models import torch_model
from tvmsqz.models.design import Point, counts, default_points


def test_design_space_follows_the_paper():
    """SqueezeNet 1.0 is the space's point (SR 0.125, pct3x3 50%, base_e = incr_e = 128,
    freq 2): the same Fire modules and parameter count as the built-in model."""
    points = default_points()
    assert len(points) >= 20 and len({p.key for p in points}) == len(points)
    sq10 = points[0]
    assert sq10.label == "SqueezeNet 1.0"
    assert sq10.fires() == [(16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128),
                            (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]  # fmt: skip
    built, reference = sq10.build(), torch_model("squeezenet1_0")
    assert counts(built, 224)["params"] == sum(p.numel() for p in reference.parameters())
    # the paper's sweeps: squeeze ratio and share of 3x3 filters
    srs = {p.sr for p in points if p.kind == "squeezenet" and p.pct3x3 == 0.5 and p.base_e == 128}
    pcts = {p.pct3x3 for p in points if p.kind == "squeezenet" and p.sr == 0.125 and p.base_e == 128}
    assert {0.125, 0.25, 0.5, 0.75, 1.0} <= srs and {0.01, 0.25, 0.5, 0.75, 0.99} <= pcts
    assert {p.width for p in points if p.kind == "squeezenext"} >= {0.5, 1.5}


def test_counts_are_the_networks_work():
    """MACs of SqueezeNext 1.0-23 at 227x227: the paper's 282 M (table 2), within 2%."""
    c = counts(torch_model("squeezenext_1_0_23"), 227)
    assert abs(c["macs"] / 282e6 - 1) < 0.02
    assert c["bytes_fp32"] == 4 * c["params"] and c["bytes_int8"] < c["bytes_fp32"] / 3
    wider = Point("squeezenext", width=1.5).build()
    assert counts(wider, 227)["macs"] > c["macs"]
    x = torch.zeros(1, 3, 227, 227)
    with torch.inference_mode():
        assert wider(x).shape == (1, 1000)


def test_pareto_front():
    rows = [
        {"key": "a", "params": 1, "latency_ms": 5.0},
        {"key": "b", "params": 2, "latency_ms": 3.0},
        {"key": "c", "params": 3, "latency_ms": 4.0},  # beaten by b on both
        {"key": "d", "params": 1, "latency_ms": 6.0},  # beaten by a
        {"key": "e", "params": 0.5, "latency_ms": None, "error": "x"},
    ]
    assert pareto(rows) == ["a", "b"]


@pytest.mark.slow
def test_three_point_exploration_on_x86_then_resume(tmp_path):
    out = tmp_path / "explore"
    proc = run_cli("explore", "--target", "x86", "-o", str(out), "--points", "3", "--trials", "1", timeout=1500)
    data = json.loads((out / "explore.json").read_text())
    assert [p["key"] for p in data["points"]] == [p.key for p in default_points()[:3]]
    for row in data["points"]:
        assert row["latency_ms"] > 0 and "measured" in row["latency_unit"], row
        assert row["params"] > 0 and row["macs"] > 0
        assert row["bytes_int8"] < row["bytes_fp32"] and row["bytes_compressed"] < row["bytes_int8"]
    assert data["pareto"] and set(data["pareto"]) <= {p["key"] for p in data["points"]}
    assert (out / "explore.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Pareto" in proc.stdout and "accuracy not measured" in proc.stdout
    # a rerun resumes: nothing measured again, the same results
    again = run_cli("explore", "--target", "x86", "-o", str(out), "--points", "3", "--json")
    resumed = json.loads(again.stdout)
    assert resumed["measured_this_run"] == 0
    assert [p["latency_ms"] for p in resumed["points"]] == [p["latency_ms"] for p in data["points"]]


@pytest.mark.slow
def test_three_point_exploration_on_the_vta_simulator(tmp_path):
    """VTA points are simulated cycles (deterministic, no tuning); a network the VTA flow cannot
    take (SqueezeNext's 3x1 convs) is one error line in its row, and the run goes on."""
    out = tmp_path / "vta"
    proc = run_cli("explore", "--target", "vta", "-o", str(out), "--points", "3", "--json", timeout=900)
    data = json.loads(proc.stdout)
    rows = {p["key"]: p for p in data["points"]}
    assert list(rows) == [p.key for p in default_points()[:3]]
    for key in (default_points()[0].key, "squeezenet1_1"):
        row = rows[key]
        assert row["simulated_cycles"] > 0 and row["mac_offload_share"] == 1.0, row
        assert "simulated ms" in row["latency_unit"] and row["latency_ms"] > 0
    # SqueezeNet 1.1 does less work than 1.0 on VTA too
    assert rows["squeezenet1_1"]["simulated_cycles"] < rows[default_points()[0].key]["simulated_cycles"]
    failed = rows["squeezenext_1_0_23"]
    assert failed["latency_ms"] is None and "\n" not in failed["error"] and "padding" in failed["error"]
    assert data["pareto"] == ["squeezenet1_1"]


def test_explore_refuses_bad_input(tmp_path):
    not_a_results_file = tmp_path / "out"
    not_a_results_file.mkdir()
    (not_a_results_file / "explore.json").write_text("{not json")
    proc = run_cli("explore", "-o", str(not_a_results_file), "--points", "1", check=False)
    assert_one_line_error(proc, "not an explore results file")
    proc = run_cli("explore", "--target", "nosuchtarget", "-o", str(tmp_path / "x"), check=False)
    assert_one_line_error(proc, "nosuchtarget")
    proc = run_cli("explore", "-o", str(tmp_path / "y"), "--time-budget", "soon", check=False)
    assert_one_line_error(proc, "soon")
