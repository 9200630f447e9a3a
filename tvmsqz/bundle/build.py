"""`tvmsqz package`: assemble a self-contained bundle for the artifact's architecture.

The bundle is what a device needs instead of `pip install apache-tvm` (the compiler, LLVM
inside): the model and its manifest, `libtvm_runtime.so` + `libtvm_ffi.so` of the target's
architecture, a C++ runner compiled with the target's (cross) compiler, a Python runner that
needs only numpy, ImageNet labels, and `bundle.json` listing every file with its sha256.
Everything architecture-specific is read from the artifact: the ELF machine of the `.so`
(`toolchain.elf_machine`) and the triple in its manifest's target. The manifest is data, never
code: the compiler that builds the C++ runner comes from the shipped target file the manifest
names (`export.cc`) or, for any other target, from the ELF machine (this host's `c++`, or the
cross compiler the shipped target files name for that machine); the manifest's own `target.cc`
is never run, and an edited manifest cannot make `package` run anything else.
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
#: The weight-file decoder (`tvmsqz/weightfile.py`, numpy only) beside the Python runner, which
#: imports it for a `--compress` model.
WEIGHTFILE_PY = Path(__file__).parent.parent / "weightfile.py"
PY_WEIGHTFILE = "bin/tvmsqz_weightfile.py"
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


def _triple_machine(triple: Any) -> str | None:
    """`aarch64-linux-gnu` -> "aarch64", `armv7a-linux-gnueabihf` -> "arm" (ELF machine names)."""
    if not isinstance(triple, str) or not triple:
        return None
    cpu = triple.split("-", 1)[0]
    if cpu.startswith("aarch64"):
        return "aarch64"
    if cpu.startswith(("arm", "thumb")):
        return "arm"
    return cpu


def _shipped_target(name: Any) -> dict | None:
    """The shipped target file `name` (by name only, never a path); None for any other name."""
    from ..paths import TARGETS_DIR
    from ..targets import load_target_file

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        return None
    path = TARGETS_DIR / f"{name}.json"
    return load_target_file(path) if path.is_file() else None


def _cross_compilers() -> dict[str, str]:
    """ELF machine -> the cross C++ compiler the shipped target files name for it."""
    from ..paths import TARGETS_DIR
    from ..targets import load_target_file

    found: dict[str, str] = {}
    for path in sorted(TARGETS_DIR.glob("*.json")):
        raw = load_target_file(path)
        cc, machine = (raw.get("export") or {}).get("cc"), _triple_machine((raw.get("tvm") or {}).get("mtriple"))
        if cc and machine:
            found.setdefault(machine, cc)
    return found


def runner_compiler(artifact: Path, arch: str, target_name: Any) -> str:
    """The C++ compiler for a runner of `arch`, from trusted data only (never the manifest's cc).

    The shipped target the manifest names gives its `export.cc` (its triple must be of `arch`);
    otherwise a native artifact gets `$CXX` or `c++`, a foreign one the cross compiler the
    shipped targets name for its machine.
    """
    raw = _shipped_target(target_name)
    cc = (raw.get("export") or {}).get("cc") if raw else None
    if cc:
        triple = (raw.get("tvm") or {}).get("mtriple")
        if _triple_machine(triple) not in (None, arch):
            raise TvmsqzError(
                f"{artifact.name} is an {arch} library, but its manifest names target {target_name} "
                f"({triple}): the manifest does not describe this artifact"
            )
        return cc
    if arch == host_arch():
        return os.environ.get("CXX") or "c++"
    cross = _cross_compilers().get(arch)
    if cross is None:
        raise TvmsqzError(
            f"{artifact.name} is an {arch} library, and no shipped target names a cross compiler for "
            f"{arch} to build the runner with"
        )
    return cross


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
    triple = triple if isinstance(triple, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", triple) else None
    cc = runner_compiler(artifact, arch, target.get("name"))
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
            "-ldl",  # dlopen/dlsym (in libc since glibc 2.34; older device toolchains need it)
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
    """Refuse an `-o` that is a file, or a folder holding anything but a bundle `package` made
    (checked before any work, and again just before the old bundle is replaced).

    A folder is replaced only when it holds `bundle.json` and nothing else but the files that
    `bundle.json` lists (and the folders they lie in): the user's own files beside a bundle
    (or a hand-made `bundle.json`) make the folder theirs, and it is refused, never emptied.
    """
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink():
        raise TvmsqzError(f"-o {out} is a symbolic link; give the bundle folder itself")
    if not out.is_dir():
        raise TvmsqzError(f"-o {out} is a file; a bundle is a folder")
    if not any(out.iterdir()):
        return
    listed = _bundle_listing(out)
    if listed is None:
        why = "its bundle.json is not one package wrote" if (out / "bundle.json").exists() else "no bundle.json"
        raise TvmsqzError(f"-o {out} exists and is not a bundle ({why}): choose another folder")
    folders = {str(Path(rel).parents[i]) for rel in listed for i in range(len(Path(rel).parents) - 1)}
    foreign = []
    for dirpath, dirnames, filenames in os.walk(out):
        base = Path(dirpath).relative_to(out)
        for name in sorted(dirnames):
            rel = (base / name).as_posix()
            if (out / rel).is_symlink() or rel not in folders:
                foreign.append(rel + ("" if (out / rel).is_symlink() else "/"))
        dirnames[:] = [d for d in dirnames if (base / d).as_posix() in folders and not (out / base / d).is_symlink()]
        foreign += [(base / n).as_posix() for n in sorted(filenames) if (base / n).as_posix() not in listed]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise TvmsqzError(
            f"-o {out} holds files that are not part of the bundle there ({shown}): package replaces only a "
            "bundle it made; choose another folder"
        )


def _bundle_listing(folder: Path) -> set[str] | None:
    """`bundle.json` and the files it lists (relative paths), or None when it is no bundle manifest."""
    try:
        manifest = json.loads((folder / "bundle.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if not isinstance(manifest.get("files"), list):
        return None
    listed = {"bundle.json"}
    for entry in manifest["files"]:
        rel = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
            return None
        listed.add(Path(rel).as_posix())
    return listed


def check_tar_output(out: Path) -> None:
    """`--tar` writes OUT.tar.gz: refuse when a file of that name is not a bundle archive of OUT
    (the user's own archive is never replaced)."""
    import tarfile

    tar_path = out.with_name(out.name + ".tar.gz")
    if not tar_path.exists() and not tar_path.is_symlink():
        return
    why = f"{tar_path} exists and is not a bundle archive of {out.name}: choose another -o or move it away"
    if tar_path.is_symlink() or not tar_path.is_file():
        raise TvmsqzError(why)
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            names = tar.getnames()
    except (OSError, EOFError, tarfile.TarError):
        raise TvmsqzError(why) from None
    if f"{out.name}/bundle.json" not in names or any(n != out.name and not n.startswith(f"{out.name}/") for n in names):
        raise TvmsqzError(why)


def _install(stage: Path, out: Path, manifest_text: str) -> None:
    """Put the staged bundle at `out` in one rename: `out` is always either the previous bundle or
    the whole new one. The copy goes to a hidden sibling first (same file system as `out`), with
    `bundle.json` written last: a folder without it is no bundle, and the runners refuse it."""
    import tempfile

    from ..fsutil import atomic_write, current_umask, forget_temp, keep_temp

    check_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    keep_temp(partial)  # SIGTERM removes it; `old` is not registered: it may hold the previous bundle
    old = None
    try:
        shutil.copytree(stage, partial, dirs_exist_ok=True)
        atomic_write(partial / "bundle.json", manifest_text)
        partial.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 -> what mkdir would have made
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "bundle")
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        forget_temp(partial)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_tar(out: Path) -> Path:
    import tarfile

    from ..fsutil import atomic_path

    def regular(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        # files and folders only (a bundle holds nothing else), under one top folder, no owner names
        if not (info.isfile() or info.isdir()):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    tar_path = out.with_name(out.name + ".tar.gz")
    check_tar_output(out)
    with atomic_path(tar_path, suffix=".tar.gz") as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(out, arcname=out.name, filter=regular)
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
    from ..manifest import manifest_path, read_manifest, sha256, verify_files

    artifact, out = Path(artifact), Path(out)
    check_output(out)
    if tar:
        check_tar_output(out)
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
            shutil.copyfile(WEIGHTFILE_PY, stage / PY_WEIGHTFILE)
            for rel in (CPP_RUNNER, PY_RUNNER):
                (stage / rel).chmod(0o755)
            (stage / LABELS).write_text("\n".join(class_names()) + "\n")
            (stage / "README.txt").write_text(_readme(manifest, target))
            files = (
                [_entry(stage, f"lib/{n}", "runtime") for n in lib_files]
                + [_entry(stage, f"model/{n}", "model") for n in model_files]
                + [_entry(stage, rel, "runner") for rel in (CPP_RUNNER, PY_RUNNER, PY_WEIGHTFILE)]
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
                    # the manifest as bundled: compare with `sha256sum NAME.so.json` where it was compiled
                    "manifest_sha256": sha256(manifest_path(artifact)),
                    # a --compress model: its weight file, decoded by the runners at load
                    **(
                        {
                            "weights": {
                                "file": f"model/{manifest['weights']['file']}",
                                "tensors": manifest["weights"]["tensors"],
                            }
                        }
                        if isinstance(manifest.get("weights"), dict)
                        else {}
                    ),
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
