"""Shared fixtures: one compiled artifact per (model, options), reused across test files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TVM_NUM_THREADS", "2")
# `tune` compiles and times the model after tuning (the in-graph check); the tests that tune only
# to get a database skip it, and test_tune's in-graph test runs it through the CLI's own flag.
os.environ.setdefault("TVMSQZ_MODEL_TIME", "0")
REPO = Path(__file__).resolve().parent.parent
#: `.ci/run` sets CI=true: there every prerequisite is installed by the project's scripts, so a
#: missing one is a failure, never a skip.
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, why: str) -> None:
    """The one test policy for prerequisites: fail under CI=true, skip elsewhere, with `why`."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {why} (scripts/test.sh installs it)")
    pytest.skip(why)


def require_cpu(flags: set[str], why: str) -> None:
    """Hardware is the one prerequisite no script can install: a host without `flags` skips,
    in CI too, saying so (the compile-side checks of the same test still ran)."""
    from tvmsqz.spec import host_cpu_flags

    missing = flags - host_cpu_flags()
    if missing:
        pytest.skip(f"{why}: this CPU lacks {', '.join(sorted(missing))}")


#: CPU flags the x86-avx512 int8 kernels need (`targets/x86-avx512.json`, `int8`).
VNNI_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}


def run_cli(
    *args: str, cwd: Path | None = None, timeout: int = 900, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run `python -m tvmsqz ARGS` as a real subprocess, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "tvmsqz", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tvmsqz {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A user mistake: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("error:"), lines[0]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def compiled(artifacts_dir):
    """compiled(model, target='x86', fuse=True, database=None) -> Path of a .so, built once."""
    cache: dict[tuple, Path] = {}

    def build(model: str, target: str = "x86", fuse: bool = True, tuning: bool = False) -> Path:
        key = (model, target, fuse, tuning)
        if key not in cache:
            out = (
                artifacts_dir
                / f"{model}-{target}-{'fused' if fuse else 'unfused'}-{'tuned' if tuning else 'untuned'}.so"
            )
            args = ["compile", model, "--target", target, "-o", str(out)]
            args += ["--fuse"] if fuse else ["--no-fuse"]  # explicit: the x86 default is measured per target
            args += [] if tuning else ["--no-tuning"]
            run_cli(*args)
            cache[key] = out
        return cache[key]

    return build


@pytest.fixture(scope="session")
def x86_so(compiled) -> Path:
    """SqueezeNet 1.1 compiled for this host's x86 target (untuned), built once."""
    return compiled("squeezenet1_1")


@pytest.fixture(scope="session")
def x86_bundle(x86_so, tmp_path_factory) -> Path:
    """Its runtime-only bundle (with the .tar.gz beside it), packaged once; tests copy it before
    changing anything in it."""
    out = tmp_path_factory.mktemp("x86") / "sq11-x86"
    proc = run_cli("package", str(x86_so), "-o", str(out), "--tar")
    assert f"wrote {out}" in proc.stdout
    return out
