"""Where the TVM runtime libraries of an architecture come from: installed wheels, or wheel files.

A bundle carries `libtvm_runtime.so` and `libtvm_ffi.so` of the artifact's architecture, and the
runner is compiled against the `tvm_ffi` headers of the same wheel. Nothing is downloaded when a
bundle is built: the sources are, in order,

1. `--runtime-from PATH`: a site-packages folder holding `tvm/` and `tvm_ffi/` (or `lib/` +
   `include/` of a runtime built from source), or an `apache_tvm*.whl` / `apache_tvm_ffi*.whl`
   file or a folder of them;
2. the site-packages folders this Python imports `tvm` and `tvm_ffi` from (x86-64 on this host);
3. the aarch64 root that `scripts/setup_arm.sh` pip-installs the aarch64 wheels into
   (`ROOT/opt/tvm-site`);
4. wheel files in `$TVMSQZ_CACHE/wheels/` and in `$TVMSQZ_WHEELS` (folders, `:`-separated).

Every candidate is checked by the ELF machine of its `libtvm_runtime.so`, so a source is never
assumed to be of an architecture because of where it lies. Versions come from the wheels'
dist-info and must equal the TVM that compiled the artifact.
"""

from __future__ import annotations

import importlib.util
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TvmsqzError

RUNTIME_LIBS = ("libtvm_ffi.so", "libtvm_runtime.so")
#: device runtime libraries beside libtvm_runtime.so, by device: loaded after it, they register
#: that device's DeviceAPI and VM builtins (CUDA graphs) with the runtime
DEVICE_LIBS = {"cuda": ("libtvm_runtime_cuda.so",)}
#: where the two libraries and the headers lie inside a site-packages folder (or a wheel)
_SITE_LAYOUT = {"libtvm_runtime.so": "tvm/lib/libtvm_runtime.so", "libtvm_ffi.so": "tvm_ffi/lib/libtvm_ffi.so"}
_SITE_INCLUDE = "tvm_ffi/include"
#: a runtime built from source, installed with CMake: PREFIX/lib/*.so, PREFIX/include/tvm/ffi
_PREFIX_LAYOUT = {"libtvm_runtime.so": "lib/libtvm_runtime.so", "libtvm_ffi.so": "lib/libtvm_ffi.so"}
_PREFIX_INCLUDE = "include"
_DIST = {"apache_tvm": "apache-tvm", "apache_tvm_ffi": "apache-tvm-ffi"}


@dataclass(frozen=True)
class RuntimeSource:
    """The runtime of one architecture: library paths, the tvm_ffi include folder, versions."""

    arch: str
    libs: dict[str, Path]
    include: Path
    versions: dict[str, str] = field(default_factory=dict)
    origin: str = ""

    def device_lib(self, name: str) -> Path | None:
        """A device runtime library (`libtvm_runtime_cuda.so`) beside libtvm_runtime.so, if built."""
        path = self.libs["libtvm_runtime.so"].with_name(name)
        return path if path.is_file() else None


def _machine(path: Path) -> str | None:
    from ..toolchain import elf_machine

    try:
        return elf_machine(path)
    except (TvmsqzError, OSError):
        return None


def _dist_versions(site: Path) -> dict[str, str]:
    """{"apache-tvm": "0.27.0.post1", ...} from the dist-info folders of a site-packages folder."""
    out = {}
    for info in site.glob("apache_tvm*.dist-info"):
        name, _, version = info.name[: -len(".dist-info")].rpartition("-")
        if name in _DIST:
            out[_DIST[name]] = version
    return out


def _from_folder(folder: Path) -> RuntimeSource | None:
    """A site-packages folder or a CMake install prefix holding both libraries and the headers."""
    for layout, include in ((_SITE_LAYOUT, _SITE_INCLUDE), (_PREFIX_LAYOUT, _PREFIX_INCLUDE)):
        libs = {name: folder / rel for name, rel in layout.items()}
        if all(p.is_file() for p in libs.values()) and (folder / include / "tvm/ffi/c_api.h").is_file():
            arch = _machine(libs["libtvm_runtime.so"])
            if arch is None or _machine(libs["libtvm_ffi.so"]) != arch:
                return None
            return RuntimeSource(arch, libs, folder / include, _dist_versions(folder), f"{folder}")
    return None


def _wheel_arch(path: Path) -> str:
    """The architecture in a wheel's platform tag (`...manylinux_2_28_aarch64.whl` -> "aarch64"),
    used only to pair the two wheels; the ELF header of the library decides."""
    tag = path.name[: -len(".whl")].rsplit("-", 1)[-1]
    match = re.search(r"(x86_64|aarch64|armv7l|armv6l|i686|ppc64le|s390x|riscv64)", tag)
    return match.group(1) if match else tag


def _from_wheels(wheels: list[Path], cache: Path, skipped: list[str] | None = None) -> list[RuntimeSource]:
    """Runtimes assembled from pairs of apache-tvm / apache-tvm-ffi wheel files, by architecture.

    Only the two libraries and the tvm_ffi headers are extracted (into `cache`, once per wheel):
    the compiler library inside the apache-tvm wheel is never unpacked. With `skipped`, a pair
    that cannot be used (an unsafe entry, a truncated download) is passed over and why is
    appended there: wheels found in caches must not stop a bundle another runtime can serve;
    without it (the user's own `--runtime-from`), the refusal is the error.
    """
    by_arch: dict[str, dict[str, Path]] = {}
    for whl in wheels:
        dist = whl.name.split("-", 1)[0]
        if dist in _DIST:
            by_arch.setdefault(_wheel_arch(whl), {})[dist] = whl
    found = []
    for arch, pair in sorted(by_arch.items()):
        if set(pair) != set(_DIST):
            continue
        site = cache / "-".join(sorted(p.name[: -len(".whl")] for p in pair.values()))
        if not (site / ".complete").is_file():
            try:
                _extract(pair, site)
            except TvmsqzError as exc:
                if skipped is None:
                    raise
                skipped.append(f"skipped: {exc}")
                continue
        source = _from_folder(site)
        if source is not None:
            found.append(
                RuntimeSource(
                    source.arch, source.libs, source.include, source.versions, " + ".join(str(p) for p in pair.values())
                )
            )
    return found


def safe_member(name: str, dest: Path) -> Path | None:
    """Where archive member `name` goes under `dest`, or None when it must not be extracted: an
    absolute path, a drive or backslash path, a `..` part, or anything that resolves (through a
    link already there) outside `dest`. Every extraction goes through this (zip-slip)."""
    if not name or "\0" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = Path(name).parts
    if ".." in parts:
        return None
    root = dest.resolve()
    target = (root / name).resolve()
    return target if target == root or root in target.parents else None


def _is_link(info: zipfile.ZipInfo) -> bool:
    """A member stored as a symbolic link (unix mode in the high bits of external_attr)."""
    import stat

    return stat.S_ISLNK(info.external_attr >> 16)


def _extract(pair: dict[str, Path], site: Path) -> None:
    """Extract the runtime's files of a wheel pair into `site`. A wheel holding a member that
    would land outside `site` (absolute, `..`, a link) is refused as a whole, before any byte
    of it is written."""
    from ..fsutil import atomic_write

    wanted = re.compile(
        r"^(tvm/lib/libtvm_runtime(_cuda)?\.so|tvm_ffi/lib/libtvm_ffi\.so|tvm_ffi/include/.*"
        r"|apache_tvm[^/]*\.dist-info/METADATA)$"
    )
    site.mkdir(parents=True, exist_ok=True)
    for whl in pair.values():
        try:
            with zipfile.ZipFile(whl) as zf:
                members = []
                for info in zf.infolist():
                    dest = safe_member(info.filename, site)
                    if dest is None or _is_link(info):
                        raise TvmsqzError(
                            f"the wheel {whl} holds an unsafe entry {info.filename!r} (an absolute path, '..' or "
                            "a link leaving the folder it unpacks into): refusing it"
                        )
                    if wanted.match(info.filename) and not info.is_dir():
                        members.append((info, dest))
                for info, dest in members:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(dest, zf.read(info))
        except (zipfile.BadZipFile, OSError) as exc:
            raise TvmsqzError(f"cannot read the wheel {whl}: {exc}") from None
    atomic_write(site / ".complete", "")


def _installed_site() -> list[Path]:
    """The site-packages folders of this Python's tvm and tvm_ffi (found without importing them)."""
    sites = []
    for name in ("tvm", "tvm_ffi"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            sites.append(Path(list(spec.submodule_search_locations)[0]).parent)
    return sites[:1] if len(sites) == 2 and sites[0] == sites[1] else []


def _wheel_dirs() -> list[Path]:
    from ..paths import CACHE_DIR

    dirs = [CACHE_DIR / "wheels"]
    dirs += [Path(p) for p in os.environ.get("TVMSQZ_WHEELS", "").split(os.pathsep) if p]
    return dirs


def candidate_sources(runtime_from: Path | None = None) -> tuple[list[RuntimeSource], list[str]]:
    """Every runtime found (first = preferred), and the places searched (for the error message)."""
    from ..device.emulator import arm_root
    from ..paths import CACHE_DIR

    searched: list[str] = []
    found: list[RuntimeSource] = []
    wheel_cache = CACHE_DIR / "bundle" / "wheel-runtimes"
    folders: list[Path] = []
    wheels: list[Path] = []
    if runtime_from is not None:
        runtime_from = Path(runtime_from)
        if not runtime_from.exists():
            raise TvmsqzError(f"--runtime-from {runtime_from}: no such file or folder")
        if runtime_from.suffix == ".whl":
            wheels.append(runtime_from)
        else:
            folders.append(runtime_from)
            wheels += sorted(runtime_from.glob("apache_tvm*.whl"))
    folders += _installed_site() + [arm_root() / "opt/tvm-site"]
    for folder in folders:
        searched.append(str(folder))
        source = _from_folder(folder)
        if source is not None:
            found.append(source)
    found += _from_wheels(wheels, wheel_cache)  # the user's own wheels: a bad one is the error
    cached: list[Path] = []
    for d in _wheel_dirs():
        searched.append(f"{d}/*.whl")
        if d.is_dir():
            cached += sorted(d.glob("apache_tvm*.whl"))
    found += _from_wheels(cached, wheel_cache, skipped=searched)
    return found, searched


def find_runtime(
    arch: str, tvm_version: str | None, *, runtime_from: Path | None = None, arch_label: str | None = None
) -> RuntimeSource:
    """The runtime for `arch` ("x86_64", "aarch64", "arm"), of the TVM version that built the model.

    TvmsqzError naming what was searched when there is none: apache-tvm publishes wheels for
    x86-64 and aarch64 only, so armv7 needs a runtime built from source (`--runtime-from`).
    """
    found, searched = candidate_sources(runtime_from)
    same_arch = [s for s in found if s.arch == arch]
    if not same_arch:
        label = arch_label or arch
        raise TvmsqzError(
            f"no TVM runtime for {label} found (searched {', '.join(searched)}): apache-tvm "
            "publishes wheels for x86_64 and aarch64 only; for another architecture build "
            "libtvm_runtime.so and libtvm_ffi.so from source and pass --runtime-from PREFIX"
        )
    if tvm_version:
        exact = [s for s in same_arch if s.versions.get("apache-tvm") in (tvm_version, None)]
        if not exact:
            have = ", ".join(f"{s.versions.get('apache-tvm')} ({s.origin})" for s in same_arch)
            raise TvmsqzError(
                f"the artifact was compiled by TVM {tvm_version}, but the {arch} runtime found is "
                f"TVM {have}: a runtime must match its compiler"
            )
        return exact[0]
    return same_arch[0]


def needed_libs(path: Path) -> list[str]:
    """The DT_NEEDED sonames of an ELF shared library (64-bit little-endian), read without readelf."""
    import struct

    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise TvmsqzError(f"{path} is not a 64-bit little-endian ELF file")
    shoff, shentsize, shnum = struct.unpack_from("<Q", data, 0x28)[0], *struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    dynamic = [s for s in sections if s[1] == 6]  # SHT_DYNAMIC
    if not dynamic:
        return []
    dyn = dynamic[0]
    strtab = sections[dyn[6]]  # sh_link: the dynamic string table
    names = []
    for off in range(dyn[4], dyn[4] + dyn[5], 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            start = strtab[4] + val
            names.append(data[start : data.index(b"\0", start)].decode())
    return names


def find_cuda_runtime(soname: str) -> Path | None:
    """The CUDA runtime library `soname` (`libcudart.so.13`) that libtvm_runtime_cuda.so needs,
    from this machine's CUDA: the `nvidia-cuda-runtime` pip package (which scripts/setup_cuda.sh
    installs), `$CUDA_HOME` / `$CUDA_PATH`, nvcc's toolkit, /usr/local/cuda*. It is redistributable
    and small (under 1 MB), so a CUDA bundle carries it: the GPU machine then needs only the driver."""
    import glob
    import sys

    roots: list[Path] = []
    for base in sys.path:
        for sub in ("nvidia/cu13/lib", "nvidia/cu12/lib", "nvidia/cuda_runtime/lib"):
            roots.append(Path(base) / sub)
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            roots += [Path(os.environ[var]) / "lib64", Path(os.environ[var]) / "lib"]
    import shutil

    nvcc = shutil.which("nvcc")
    if nvcc:
        toolkit = Path(nvcc).resolve().parent.parent
        roots += [toolkit / "lib64", toolkit / "lib", toolkit / "targets/x86_64-linux/lib"]
    for pattern in (
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/lib",
        "/usr/local/cuda-*/lib64",
        "/usr/local/cuda-*/lib",
        "/usr/local/cuda-*/targets/x86_64-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
    ):
        roots += [Path(p) for p in sorted(glob.glob(pattern), reverse=True)]
    for root in roots:
        candidate = root / soname
        if candidate.is_file():
            return candidate.resolve()
    return None
