"""The VTA target through the CLI: compile, run on the simulator, the bench report (MAC share,
per-layer placement and statistics, per-image simulated and host time)."""

from __future__ import annotations

import json

import numpy as np
from conftest import run_cli

from tvmsqz.images import class_names, preprocess, sample_images


def test_vta_compile_run_and_bench(tmp_path):
    so = tmp_path / "dc-vta.so"
    run_cli("compile", "squeezenet1_0_dc", "--target", "vta", "-o", str(so))
    assert so.is_file() and so.with_suffix(".vta.npz").is_file()
    photo = dict(sample_images())["chelsea"]
    np.save(tmp_path / "cat.npy", preprocess(photo, "caffe", 227))
    proc = run_cli("run", str(so), "--input", str(tmp_path / "cat.npy"), "-o", str(tmp_path / "y.npy"))
    y = np.load(tmp_path / "y.npy")
    assert class_names()[int(y.argmax())] in {"tabby", "tiger cat", "Egyptian cat"}
    assert "cat" in proc.stdout

    out = tmp_path / "bench.json"
    run_cli("bench", "squeezenet1_0_dc", "--target", "vta", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["simulated_cycles"] > 1e6 and report["dram_bytes"] > 1e6
    assert report["mac_offload_share"] >= 0.95  # issue 14: conv1 and the classifier on VTA too
    assert report["top1_agreement_vs_fp32"] >= 5 / 6
    assert 0.5 <= report["top5_overlap_vs_fp32"] <= 1.0
    # the per-layer report: where each layer ran, cycles, DRAM bytes, MACs/cycle vs the 256 peak
    layers = report["per_layer"]
    assert {r["where"] for r in layers} == {"vta", "host"}
    vta = [r for r in layers if r["where"] == "vta"]
    assert {"conv1", "pool1", "conv_final"} <= {r["name"] for r in vta}
    assert sum(r["cycles"] for r in vta) == report["simulated_cycles"]
    assert all(r["dram_bytes"] > 0 and r["peak_macs_per_cycle"] == 256 for r in vta)
    assert all(r["why"] for r in layers if r["where"] == "host")
    assert all(r["host_ms"] > 0 and r["simulated_ms"] > 0 for r in report["per_image"])
