"""The chunk-claiming parallel launcher every CPU artifact carries (tvmsqz/backends/cpu/parallel_launch.c).

Each check runs the artifact in a fresh process, as a user's program would load it: the launcher
is chosen at load (`TVMSQZ_PARALLEL=static` keeps TVM's own pool).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import REPO, require
from elftools.elf.elffile import ELFFile

PROBE = r"""
import json, os, sys, time
import numpy as np
import tvmsqz
from tvmsqz.vm import install_parallel_launch
a = tvmsqz.load(sys.argv[1])
x = np.random.default_rng(7).standard_normal(a.input_shape).astype("float32")
y = a.run(x)
np.save(sys.argv[2], y)
run = a.timer(x)
for _ in range(10):
    run()
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
print(json.dumps({"threads": install_parallel_launch(sys.argv[1]), "tasks": len(os.listdir("/proc/self/task")),
                  "median_ms": float(np.median(times)) * 1e3}))
"""


def probe(so: Path, out: Path, env: dict, runs: int = 30) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(so), str(out), str(runs)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cpu_artifacts_carry_the_launcher(x86_so):
    with open(x86_so, "rb") as f:
        names = {s.name for s in ELFFile(f).get_section_by_name(".dynsym").iter_symbols()}
    assert {"tvmsqz_parallel_install", "tvmsqz_parallel_launch", "__TVMBackendParallelLaunch"} <= names


def test_claimed_chunks_compute_what_tvms_pool_computes(x86_so, tmp_path):
    """Same outputs, bit for bit, with TVM's static pool, the claiming launcher on 2 threads (8
    chunks a loop), 5 chunks per thread and 1 thread (each loop run inline)."""
    ref = probe(x86_so, tmp_path / "static.npy", {"TVMSQZ_PARALLEL": "static", "TVM_NUM_THREADS": "2"})
    assert ref["threads"] is None  # TVM's pool: nothing installed
    expected = np.load(tmp_path / "static.npy")
    for name, env, threads in (
        ("claim2", {"TVM_NUM_THREADS": "2"}, 2),
        ("claim2x5", {"TVM_NUM_THREADS": "2", "TVMSQZ_PARALLEL_CHUNKS": "5"}, 2),
        ("claim1", {"TVM_NUM_THREADS": "1"}, 1),
    ):
        got = probe(x86_so, tmp_path / f"{name}.npy", env)
        assert got["threads"] == threads, (name, got)
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), expected, err_msg=name)


def _busy(core: int) -> subprocess.Popen:
    code = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_busy_core_slows_the_model_by_its_share_not_by_a_stall(x86_so, tmp_path):
    """With a busy process pinned to one of two cores, the model on 2 threads loses about that
    core's half (measured 1.3-1.7x); TVM's own pool, its threads pinned, waited for the shared
    core at every kernel and ran up to 80x slower here (benchmarks/slow_core.py)."""
    cores = sorted(os.sched_getaffinity(0))
    require(len(cores) >= 2, "needs two cores")
    env = {"TVM_NUM_THREADS": "2"}
    idle = probe(x86_so, tmp_path / "idle.npy", env, runs=60)["median_ms"]
    busy = _busy(cores[-1])
    try:
        time.sleep(0.3)
        loaded = probe(x86_so, tmp_path / "busy.npy", env, runs=60)["median_ms"]
    finally:
        busy.kill()
        busy.wait()
    assert loaded < 3.0 * idle, (idle, loaded)
    np.testing.assert_array_equal(np.load(tmp_path / "busy.npy"), np.load(tmp_path / "idle.npy"))
