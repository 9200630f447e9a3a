"""The VTA target through the CLI: compile, run on the simulator, bench report keys."""

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
    assert 0.5 < report["mac_offload_share"] < 1.0
    assert report["top1_agreement_vs_fp32"] >= 5 / 6
    assert 0.5 <= report["top5_overlap_vs_fp32"] <= 1.0
