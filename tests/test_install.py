"""A normal (non-editable) install works from any directory: package data, not the checkout.

Builds the wheel, installs it into a fresh venv that sees this interpreter's packages
(`--system-site-packages`, so nothing is downloaded), and runs the installed `tvmsqz` from
another folder: the targets list, a compile that applies the shipped schedules, a bad target file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO), "-w", str(wheels)],
        check=True,
        capture_output=True,
        cwd=root,
    )
    (wheel,) = wheels.glob("tvmsqz-*.whl")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], check=True)
    subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    return env_dir


def _run(venv: Path, cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TVMSQZ_")}
    env["TVMSQZ_DATA"] = str(cwd / "user-data")  # user data of this test only
    return subprocess.run(
        [str(venv / "bin" / "tvmsqz"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def test_installed_package_is_the_wheel_not_the_checkout(venv, tmp_path):
    out = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import tvmsqz, tvmsqz.paths as p; print(tvmsqz.__file__); print(p.TARGETS_DIR); print(p.SCHEDULES_DIR)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    package, targets, schedules = out.stdout.split()
    assert package.startswith(str(venv)), package
    assert targets.startswith(str(venv)) and targets.endswith("_data/targets"), targets
    assert (Path(schedules) / "x86-avx512" / "database_tuning_record.json").is_file()


def test_installed_targets_lists_every_shipped_target(venv, tmp_path):
    proc = _run(venv, tmp_path, "targets", "--json")
    assert proc.returncode == 0, proc.stderr
    names = {row["name"] for row in json.loads(proc.stdout)}
    shipped = {p.stem for p in (REPO / "targets").glob("*.json")}
    assert names == shipped


def test_installed_compile_applies_the_shipped_schedules(venv, tmp_path):
    out = tmp_path / "m.so"
    proc = _run(venv, tmp_path, "compile", "squeezenet1_1", "--target", "x86-avx512", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "m.so.json").read_text())
    assert manifest["database"].startswith(str(venv)), manifest["database"]
    assert "_data/schedules/x86-avx512" in manifest["database"]  # the portable folder or this CPU's
    kernels = manifest["kernels"]
    # every convolution ran with a shipped schedule; only copies (concat, reshape) have none to tune
    assert kernels["tuned"] and any("conv2d" in k for k in kernels["tuned"]), kernels
    assert all(k.startswith(("reshape", "fused_reshape", "te_layout_transform")) for k in kernels["untuned"]), kernels
    assert out.stat().st_size == manifest["artifact"]["bytes"]


def test_installed_malformed_target_file_is_one_line_naming_file_and_field(venv, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "family": "cpu", "tvm": {"kind": "llvm", "num-cores": "many"}}))
    proc = _run(venv, tmp_path, "compile", "squeezenet1_1", "--target", str(bad), "-o", str(tmp_path / "x.so"))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(bad) in lines[0] and "tvm.num-cores" in lines[0], lines[0]
    assert not (tmp_path / "x.so").exists()
