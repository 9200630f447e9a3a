"""Run a bundle's runners as a device would: on this host, or chrooted into an emulated root.

The emulated case is what makes "no TVM on the device" real: `scripts/setup_arm.sh` builds
`arm64-bare-root`, a copy of the aarch64 root without `/opt/tvm-site` (no TVM, no pip
packages; numpy only, for the Python runner). A bundle is copied into its `/tmp`, then run by
qemu-user through binfmt_misc under `chroot`, with an environment that names no Python path.
Timings from there are qemu-user timings: never ARM performance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..device.emulator import bare_arm_root, bare_root_problem  # noqa: F401 - bundle API
from ..errors import TvmsqzError
from .build import CPP_RUNNER, PY_RUNNER

RUNNERS = ("cpp", "python")
#: The environment of a runner in an emulated root: no PYTHONPATH, nothing from this host.
_ROOT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def runner_argv(runner: str, bundle: Path, python: str) -> list[str]:
    """The command line of a bundle's `runner` ("cpp" or "python")."""
    if runner not in RUNNERS:
        raise TvmsqzError(f"unknown runner {runner!r} (known: {', '.join(RUNNERS)})")
    return [str(bundle / CPP_RUNNER)] if runner == "cpp" else [python, str(bundle / PY_RUNNER)]


def run_bundle(
    bundle: str | Path,
    args: Sequence[str | Path] = (),
    *,
    runner: str = "cpp",
    root: str | Path | None = None,
    inputs: dict[str, Path] | None = None,
    outputs: dict[str, Path] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run `runner` ("cpp", "python") of `bundle` with `args`; chrooted into `root` when given.

    In a root, the bundle and `inputs` ({name: host file}) are copied into a private folder
    under its /tmp (removed afterwards), `{work}` in `args` stands for that folder as the
    runner sees it, and each of `outputs` ({name: host path}) the runner wrote there is copied
    back to its host path. On this host `args` are passed as they are.
    """
    bundle = Path(bundle)
    if root is None:
        argv = runner_argv(runner, bundle, sys.executable)
        return subprocess.run(
            argv + [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
    root = Path(root)
    work = Path(tempfile.mkdtemp(prefix="tvmsqz-bundle-", dir=root / "tmp"))
    try:
        inside = Path("/") / work.relative_to(root)
        shutil.copytree(bundle, work / "bundle")
        for name, path in (inputs or {}).items():
            shutil.copyfile(path, work / name)
        argv = runner_argv(runner, inside / "bundle", "/usr/bin/python3")
        cmd = [
            shutil.which("chroot") or "/usr/sbin/chroot",
            str(root),
            *argv,
            *[str(a).replace("{work}", str(inside)) for a in args],
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**_ROOT_ENV, **(env or {})})
        for name, dest in (outputs or {}).items():
            if (work / name).is_file():
                shutil.copyfile(work / name, dest)
        return proc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def runner_report(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    """The JSON line a runner prints with `--json`; TvmsqzError with its error line when it failed."""
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise TvmsqzError(f"bundle runner failed (exit {proc.returncode}): {lines[-1] if lines else 'no message'}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise TvmsqzError("bundle runner printed no JSON report (was --json passed?)")
