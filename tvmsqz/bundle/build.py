"""`tvmsqz package`: assemble a self-contained bundle for the artifact's architecture.

The bundle is what a device needs instead of `pip install apache-tvm` (the compiler, LLVM
inside): the model and its manifest, `libtvm_runtime.so` + `libtvm_ffi.so` of the target's
architecture, a C++ runner compiled with the target's (cross) compiler, a Python runner that
needs only numpy, ImageNet labels, and `bundle.json` listing every file with its sha256.
Everything architecture-specific is read from the artifact: the ELF machine of the `.so`
(`cross.elf_machine`), the triple in its manifest's target, and the cross compiler it was
linked with (`target.cc`; none means this host's `c++`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TvmsqzError
from ..version import __version__
from .runtimes import DEVICE_LIBS, RUNTIME_LIBS, RuntimeSource, find_cuda_runtime, find_runtime, needed_libs

FORMAT = "tvmsqz-bundle/1"
RUNNER_CPP = Path(__file__).with_name("runner.cpp")
RUNNER_PY = Path(__file__).with_name("pyrunner.py")
CPP_RUNNER = "bin/tvmsqz-run"
PY_RUNNER = "bin/tvmsqz-run.py"
LABELS = "share/labels.txt"
#: Progress lines (the CLI prints them dimmed on stderr).
Log = Callable[[str], None]
#: `uname -m` of this host -> the ELF machine names `cross.elf_machine` returns
_HOST_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class BundleTarget:
    """What the artifact's manifest and ELF header say about the machine it runs on."""

    arch: str  # ELF machine: x86_64, aarch64, arm
    label: str  # the triple when the target names one, else the ELF machine
    cc: str  # the C++ compiler that links for this machine
    strip: str | None  # its strip tool, when installed
    device: str = "cpu"  # where the Relax VM runs the kernels: "cpu" or "cuda"


def host_arch() -> str:
    machine = platform.machine().lower()
    return _HOST_ARCH.get(machine, machine)


def _strip_tool(cc: str) -> str | None:
    """`aarch64-linux-gnu-g++` -> `aarch64-linux-gnu-strip`, `g++` -> `strip` (None if absent)."""
    tool = re.sub(r"(g\+\+|gcc|c\+\+|clang\+\+|clang)$", "strip", Path(cc).name)
    return shutil.which(tool) if tool != Path(cc).name else None


def bundle_target(artifact: Path, manifest: dict) -> BundleTarget:
    """The architecture, compiler and strip tool for `artifact`, from its ELF header and manifest.

    Artifacts that a backend runs on the CPU device, and CUDA artifacts (the bundle then carries
    `libtvm_runtime_cuda.so` and the CUDA runtime it needs; the Python runner drives the VM on
    the GPU, the C++ runner refuses such a bundle) can be bundled.
    """
    from ..backends import backend_for_family
    from ..toolchain import elf_machine

    target = manifest.get("target") or {}
    backend = backend_for_family(target.get("family", "cpu"))
    device_type = getattr(backend, "device_type", None)
    device = device_type(None) if callable(device_type) else None
    if device not in ("cpu", *DEVICE_LIBS):
        raise TvmsqzError(
            f"{artifact.name} is a {target.get('family')} artifact (device {device or 'of its own'}): "
            f"bundles carry the TVM runtime for {', '.join(('cpu', *DEVICE_LIBS))} only"
        )
    arch = elf_machine(artifact)
    triple = (target.get("tvm") or {}).get("mtriple")
    cc = target.get("cc") or os.environ.get("CXX") or "c++"
    if not target.get("cc") and arch != host_arch():
        raise TvmsqzError(
            f"{artifact.name} is an {arch} library, but its target {target.get('name')} names no cross "
            f"compiler to build the runner with"
        )
    if shutil.which(cc) is None:
        raise TvmsqzError(
            f"compiler {cc} not found: it builds the bundle's C++ runner for {triple or arch} "
            "(scripts/setup_arm.sh installs the cross compilers)"
        )
    return BundleTarget(arch=arch, label=triple or arch, cc=cc, strip=_strip_tool(cc), device=device)


def device_libs(runtime: RuntimeSource, target: BundleTarget) -> dict[str, Path]:
    """The device runtime libraries a bundle for `target.device` carries, in load order: for
    CUDA the CUDA runtime (`libcudart.so.N`, the soname libtvm_runtime_cuda.so needs) and then
    `libtvm_runtime_cuda.so`. Empty for the CPU."""
    if target.device == "cpu":
        return {}
    libs: dict[str, Path] = {}
    for name in DEVICE_LIBS[target.device]:
        path = runtime.device_lib(name)
        if path is None:
            raise TvmsqzError(
                f"the TVM runtime at {runtime.origin} has no {name}: a {target.device} bundle needs "
                f"it (the apache-tvm wheel for x86-64 carries it)"
            )
        for soname in needed_libs(path):
            if soname.startswith("libcudart.so"):
                cudart = find_cuda_runtime(soname)
                if cudart is None:
                    raise TvmsqzError(
                        f"{name} needs the CUDA runtime {soname}, which was not found on this "
                        "machine (bash scripts/setup_cuda.sh installs it with nvcc)"
                    )
                libs[soname] = cudart
        libs[name] = path
    return libs


def build_runner(runtime: RuntimeSource, target: BundleTarget, log: Log | None = None) -> Path:
    """The C++ runner for `runtime`, compiled with `target.cc`; cached by everything it depends on.

    Compiling it takes seconds (the tvm-ffi headers are template-heavy); the cache key covers
    the source, the compiler and its version, the headers and the exact libraries linked.
    """
    from ..fsutil import atomic_path, temp_dir
    from ..manifest import sha256
    from ..paths import CACHE_DIR

    version = subprocess.run([target.cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256(
        json.dumps(
            [
                RUNNER_CPP.read_text(),
                target.cc,
                version,
                (runtime.include / "tvm/ffi/c_api.h").read_text(),
                {name: sha256(path) for name, path in sorted(runtime.libs.items())},
            ]
        ).encode()
    ).hexdigest()[:20]
    exe = CACHE_DIR / "bundle" / "runners" / key / "tvmsqz-run"
    if exe.is_file():
        return exe
    if log is not None:
        log(f"compiling the C++ runner with {target.cc}")
    with temp_dir("tvmsqz-runner-") as tmp:
        libdir = tmp / "lib"
        libdir.mkdir()
        for name, path in runtime.libs.items():
            (libdir / name).symlink_to(path)
        built = tmp / "tvmsqz-run"
        cmd = [
            target.cc,
            "-std=c++17",
            "-O2",
            "-s",
            "-I",
            str(runtime.include),
            str(RUNNER_CPP),
            "-o",
            str(built),
            "-L",
            str(libdir),
            f"-Wl,-rpath-link,{libdir}",
            "-Wl,--no-as-needed",
            "-ltvm_ffi",
            "-ltvm_runtime",
            "-Wl,--as-needed",
            "-Wl,-rpath,$ORIGIN/../lib",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()] or proc.stderr.splitlines()[-1:]
            raise TvmsqzError(f"cannot build the C++ runner with {target.cc}: {lines[0] if lines else 'failed'}")
        exe.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(exe) as dest:
            shutil.copyfile(built, dest)
        exe.chmod(0o755)
    return exe


def _readme(manifest: dict, target: BundleTarget) -> str:
    shape = "x".join(map(str, manifest["input"]["shape"]))
    return f"""tvmsqz bundle: {manifest["model"]} for {manifest["target"]["name"]} ({target.label})

Needs no TVM installation and no pip: copy this folder to the device, then

  bin/tvmsqz-run --repeat 10                 # C++ runner: seeded random input, top-5, latency
  bin/tvmsqz-run --input x.npy -o y.npy      # x.npy: {manifest["input"]["dtype"]} {shape}
  python3 bin/tvmsqz-run.py --input x.npy    # Python runner: needs python3 and numpy only

Both check every file in bundle.json (size, sha256) before loading the model, and refuse an
input of another shape or dtype, with one line on stderr and exit code 2. See docs/bundle.md.
"""


def _entry(root: Path, rel: str, part: str) -> dict[str, Any]:
    from ..manifest import sha256

    path = root / rel
    return {"file": rel, "bytes": path.stat().st_size, "sha256": sha256(path), "part": part}


def check_output(out: Path) -> None:
    """Refuse an `-o` that is a file or a folder holding something other than a bundle (checked
    before any work, and again just before the old bundle is replaced)."""
    if out.exists():
        if not out.is_dir():
            raise TvmsqzError(f"-o {out} is a file; a bundle is a folder")
        if any(out.iterdir()) and not (out / "bundle.json").is_file():
            raise TvmsqzError(f"-o {out} exists and is not a bundle (no bundle.json): choose another folder")


def _install(stage: Path, out: Path, manifest_text: str) -> None:
    """Put the staged bundle at `out` in one rename: `out` is always either the previous bundle or
    the whole new one. The copy goes to a hidden sibling first (same file system as `out`), with
    `bundle.json` written last: a folder without it is no bundle, and the runners refuse it."""
    import tempfile

    from ..fsutil import atomic_write

    check_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    old = None
    try:
        shutil.copytree(stage, partial, dirs_exist_ok=True)
        atomic_write(partial / "bundle.json", manifest_text)
        partial.chmod(0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "bundle")
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_tar(out: Path) -> Path:
    import tarfile

    from ..fsutil import atomic_path

    tar_path = out.with_name(out.name + ".tar.gz")
    with atomic_path(tar_path, suffix=".tar.gz") as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(out, arcname=out.name)
    return tar_path


def build_bundle(
    artifact: str | Path,
    out: str | Path,
    *,
    tar: bool = False,
    strip: bool = True,
    runtime_from: str | Path | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Build the bundle of `artifact` at folder `out` (and `out.tar.gz` with `tar`); its manifest.

    The artifact must have its manifest and match it (the same check `tvmsqz run` makes). The
    returned dict is `bundle.json` plus `path` (and `tar` when asked).
    """
    from ..fsutil import os_error, temp_dir
    from ..images import class_names
    from ..manifest import read_manifest, verify_files

    artifact, out = Path(artifact), Path(out)
    check_output(out)
    if not artifact.is_file():
        raise TvmsqzError(f"no such file: {artifact}")
    manifest = read_manifest(artifact)
    if manifest is None:
        raise TvmsqzError(f"{artifact} has no manifest ({artifact.name}.json): a bundle needs its input and target")
    verify_files(artifact, manifest)
    target = bundle_target(artifact, manifest)
    runtime = find_runtime(
        target.arch,
        (manifest.get("versions") or {}).get("tvm"),
        runtime_from=Path(runtime_from) if runtime_from else None,
        arch_label=target.label,
    )
    extra_libs = device_libs(runtime, target)
    exe = build_runner(runtime, target, log=log)
    if log is not None:
        log(f"runtime for {target.label}: {runtime.origin}")
    try:
        with temp_dir("tvmsqz-bundle-") as tmp:
            stage = tmp / "bundle"
            for sub in ("bin", "lib", "model", "share"):
                (stage / sub).mkdir(parents=True)
            unstripped = 0
            lib_files = {**{name: runtime.libs[name] for name in RUNTIME_LIBS}, **extra_libs}
            for name, source in lib_files.items():
                dest = stage / "lib" / name
                shutil.copyfile(source, dest)
                unstripped += dest.stat().st_size
                if strip and target.strip:
                    proc = subprocess.run([target.strip, "--strip-unneeded", str(dest)], capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise TvmsqzError(f"{target.strip} failed on {name}: {proc.stderr.strip()[:200]}")
            extra = [e["file"] for e in manifest.get("files", []) if isinstance(e, dict)]
            model_files = [artifact.name, artifact.name + ".json", *extra]
            for name in model_files:
                shutil.copyfile(artifact.with_name(name), stage / "model" / name)
            shutil.copyfile(exe, stage / CPP_RUNNER)
            shutil.copyfile(RUNNER_PY, stage / PY_RUNNER)
            for rel in (CPP_RUNNER, PY_RUNNER):
                (stage / rel).chmod(0o755)
            (stage / LABELS).write_text("\n".join(class_names()) + "\n")
            (stage / "README.txt").write_text(_readme(manifest, target))
            files = (
                [_entry(stage, f"lib/{n}", "runtime") for n in lib_files]
                + [_entry(stage, f"model/{n}", "model") for n in model_files]
                + [_entry(stage, rel, "runner") for rel in (CPP_RUNNER, PY_RUNNER)]
                + [_entry(stage, rel, "other") for rel in (LABELS, "README.txt")]
            )
            sizes = {
                f"{part}_bytes": sum(f["bytes"] for f in files if f["part"] == part)
                for part in ("runtime", "model", "runner", "other")
            }
            sizes["total_bytes"] = sum(f["bytes"] for f in files)
            sizes["runtime_unstripped_bytes"] = unstripped
            bundle = {
                "format": FORMAT,
                "model": {
                    "name": manifest["model"],
                    "file": f"model/{artifact.name}",
                    "manifest": f"model/{artifact.name}.json",
                    "labels": LABELS,
                    "sha256": manifest["artifact"]["sha256"],
                },
                "target": manifest["target"]["name"],
                "target_config": manifest["target"].get("tvm"),
                "arch": target.arch,
                "triple": target.label,
                "device": target.device,
                "input": {
                    "name": manifest["input"].get("name", "data"),
                    "shape": manifest["input"]["shape"],
                    "dtype": manifest["input"].get("dtype", "float32"),
                },
                "runtime": {
                    **runtime.versions,
                    "source": runtime.origin,
                    "stripped": bool(strip and target.strip),
                    "libs": [f"lib/{n}" for n in lib_files],
                    "device_libs": list(extra_libs),
                },
                "runners": {"cpp": CPP_RUNNER, "python": PY_RUNNER},
                "built_with": {"cc": target.cc, "tvmsqz": __version__},
                "sizes": sizes,
                "files": files,
            }
            _install(stage, out, json.dumps(bundle, indent=2) + "\n")
    except OSError as exc:
        raise os_error(exc.filename or out, exc) from None
    result = {**bundle, "path": str(out)}
    if tar:
        result["tar"] = str(_write_tar(out))
    return result
