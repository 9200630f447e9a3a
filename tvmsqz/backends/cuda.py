"""CUDA family (NVIDIA GPUs): architecture resolution, default GPU schedules, CUDA graphs, export.

What this module guarantees:

* **Architecture.** `targets/cuda-sm80|86|89|90.json` fix the SM architecture; `targets/cuda.json`
  says `"arch": "auto"`, which `resolve_target_data` turns into the architecture of the first
  GPU that `nvidia-smi` reports, or `sm_90` (with a note on stderr) on a machine without one.
  An architecture that is not a real NVIDIA SM version is refused before anything is compiled.
* **nvcc.** Device code is compiled by the CUDA toolkit's `nvcc`, which must be on `PATH`; a
  missing `nvcc` is refused before anything is compiled. No GPU is needed to compile.
* **Artifact.** `export` writes a `.so` whose embedded CUDA module holds a *fatbin* with SASS for
  the requested architecture plus its PTX (so newer GPUs can JIT it). TVM 0.27 on a machine
  without the CUDA driver would otherwise embed the CUDA *source* and compile it when the
  artifact is loaded, which needs a compiler on the GPU machine; here the GPU machine needs only
  the TVM runtime and the driver.
* **Untuned kernels.** `default_schedule` gives every kernel that no tuning record scheduled a GPU
  schedule: dlight's rules (Matmul for single convolutions, Reduction for the global average
  pool, Fallback for pools and reshapes) and `FusedConv` for kernels with several convolutions
  (the fused Fire kernels of `tvmsqz.fuse`), which dlight would only give one thread per output
  and a global temporary per convolution.
* **Launch overhead.** `pass_config` turns on Relax's `RewriteCUDAGraph`: the kernels of one
  inference are captured once into a CUDA graph and replayed with one launch.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from ..errors import TvmsqzError
from ..quiet import quiet_stderr
from ..targets import TargetSpec

log = logging.getLogger("tvmsqz")

#: Real NVIDIA SM architectures (Turing and newer: what CUDA 12 and 13 compile for).
KNOWN_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_88", "sm_89", "sm_90", "sm_90a",
               "sm_100", "sm_100a", "sm_101", "sm_103", "sm_110", "sm_120", "sm_121")
#: What `"arch": "auto"` means on a machine without a GPU (H100/H200, the GPUs tuned for).
DEFAULT_ARCH = "sm_90"

_FATBIN_MAGIC = 0xBA55ED50
_EM_CUDA = 190


# ----------------------------------------------------------------------------------------------
# Target data: architecture resolution and validation
# ----------------------------------------------------------------------------------------------


def detect_gpu_arch() -> str | None:
    """`sm_XY` of the first GPU `nvidia-smi` reports, or None without a GPU or driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"\s*(\d+)\.(\d+)", out.stdout) if out.returncode == 0 else None
    return f"sm_{match.group(1)}{match.group(2)}" if match else None


def check_arch(arch, target_name: str = "cuda") -> str:
    """The architecture if it is a known SM version, else a one-line `TvmsqzError`."""
    if arch == "auto":
        raise TvmsqzError(f"target {target_name!r}: CUDA architecture 'auto' was not resolved "
                          "(tvmsqz.targets must call tvmsqz.backends.cuda.resolve_target_data)")
    if not isinstance(arch, str) or arch not in KNOWN_ARCHS:
        raise TvmsqzError(f"target {target_name!r}: unknown CUDA architecture {arch!r} "
                          f"(known: {', '.join(KNOWN_ARCHS)})")
    return arch


def arch_number(arch: str) -> str:
    """`sm_90a` -> `90a`."""
    return arch.split("_", 1)[1]


def resolve_target_data(raw: dict) -> dict:
    """Resolve a CUDA target file's `"arch": "auto"` (and `"schedules": "auto"`) and validate it.

    Called by `tvmsqz.targets.get_target` for every target of family `cuda`; returns a new dict.
    """
    raw = dict(raw)
    tvm_config = dict(raw.get("tvm") or {})
    arch = tvm_config.get("arch")
    if arch == "auto":
        arch = detect_gpu_arch()
        if arch is None:
            arch = DEFAULT_ARCH
            _note_default_arch()
            raw["arch_source"] = "default (no GPU found)"
        else:
            raw["arch_source"] = "detected with nvidia-smi"
        tvm_config["arch"] = arch
    check_arch(arch, raw.get("name", "cuda"))
    raw["tvm"] = tvm_config
    _prefer_nvcc()
    if raw.get("schedules") == "auto":
        raw["schedules"] = f"cuda-sm{arch_number(arch)}"
    return raw


@functools.lru_cache(maxsize=1)
def _note_default_arch() -> None:
    log.warning("note: no GPU found (nvidia-smi); target cuda compiles for %s (pick cuda-sm80, cuda-sm86, "
                "cuda-sm89 or cuda-sm90 to choose)", DEFAULT_ARCH)


def spec_arch(spec: TargetSpec) -> str:
    return check_arch((spec.tvm_config or {}).get("arch"), spec.name)


# ----------------------------------------------------------------------------------------------
# Toolchain
# ----------------------------------------------------------------------------------------------


def find_nvcc() -> str:
    """Path of `nvcc` on PATH, or a one-line `TvmsqzError`."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise TvmsqzError("nvcc (the CUDA toolkit compiler) is not on PATH; CUDA targets need it to compile "
                          "device code (no GPU needed): install the CUDA toolkit 12 or 13 and add its bin/ to PATH")
    return nvcc


@functools.lru_cache(maxsize=8)
def _nvcc_archs(nvcc: str) -> tuple[str, ...] | None:
    try:
        out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return tuple(out.stdout.split()) if out.returncode == 0 else None


@functools.lru_cache(maxsize=8)
def nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    match = re.search(r"release ([\d.]+)", out)
    return match.group(1) if match else "unknown"


def check_toolchain(spec: TargetSpec) -> str:
    """Refuse, before compiling, a bad architecture or a missing/too old nvcc; returns nvcc's path."""
    arch = spec_arch(spec)
    nvcc = find_nvcc()
    supported = _nvcc_archs(nvcc)
    base = arch.rstrip("af")
    if supported is not None and base not in supported:
        raise TvmsqzError(f"nvcc {nvcc_version(nvcc)} at {nvcc} cannot compile for {arch} "
                          f"(it supports {', '.join(supported)}); use a newer CUDA toolkit or another target")
    _prefer_nvcc()
    return nvcc


def _prefer_nvcc() -> None:
    """Where a GPU is present TVM compiles kernels while building (and in MetaSchedule's builder
    workers, which inherit the environment); make that use nvcc too: TVM's default, NVRTC, needs
    the cuda-python package. A user's own TVM_CUDA_COMPILE_MODE is kept."""
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")


def compile_cuda_source(code: str, arch: str, nvcc: str | None = None) -> bytes:
    """CUDA C++ source -> fatbin with SASS for `arch` and its PTX (uncompressed, readable).

    The flags follow TVM's own nvcc invocation (`tvm.support.nvcc`), fast math included
    (`TVM_CUDA_NVCC_NO_FAST_MATH=1` turns it off, as it does for TVM).
    """
    nvcc = nvcc or find_nvcc()
    num = arch_number(arch)
    with tempfile.TemporaryDirectory(prefix="tvmsqz-nvcc-") as tmp:
        src, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.fatbin"
        src.write_text(code)
        cmd = [nvcc, "--fatbin", "-O3",
               "-gencode", f"arch=compute_{num},code=[sm_{num},compute_{num}]",
               "-Xfatbin=-compress=false",
               "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
               "--expt-relaxed-constexpr", "--expt-extended-lambda",
               *([] if os.environ.get("TVM_CUDA_NVCC_NO_FAST_MATH") else ["--use_fast_math"]),
               "-o", str(out), str(src)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.SubprocessError) as exc:
            raise TvmsqzError(f"nvcc failed to run: {exc}") from None
        if proc.returncode != 0 or not out.is_file():
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            first = next((line for line in detail if "error" in line.lower()), detail[-1] if detail else "")
            raise TvmsqzError(f"nvcc could not compile the kernels for {arch}: {first.strip()}")
        return out.read_bytes()


# ----------------------------------------------------------------------------------------------
# Device code inspection (fatbin / cubin), used by export's self-check and the tests
# ----------------------------------------------------------------------------------------------


def fatbin_entries(data: bytes, offset: int = 0) -> list[dict]:
    """The images in a fatbin: `{"kind": "elf"|"ptx", "arch": "sm_90", "ptx_target": ...}`."""
    magic, _version, header_size, size = struct.unpack_from("<IHHQ", data, offset)
    if magic != _FATBIN_MAGIC:
        raise ValueError("not a fatbin")
    entries, pos, end = [], offset + header_size, offset + header_size + size
    while pos + 32 <= end:
        kind, _flags, entry_header, payload = struct.unpack_from("<HHIQ", data, pos)
        arch_num = struct.unpack_from("<I", data, pos + 28)[0]
        body = data[pos + entry_header: pos + entry_header + payload]
        entry = {"kind": {1: "ptx", 2: "elf"}.get(kind, str(kind)), "arch": f"sm_{arch_num}", "bytes": payload}
        if kind == 1:
            match = re.search(rb"\.target\s+(sm_\w+)", body)
            entry["ptx_target"] = match.group(1).decode() if match else None  # None: compressed PTX
        elif kind == 2:
            entry["elf_machine"] = struct.unpack_from("<H", body, 18)[0] if len(body) > 20 else None
        entries.append(entry)
        if entry_header == 0:
            break
        pos += entry_header + payload
    return entries


def cubin_arch(data: bytes) -> str | None:
    """SM architecture of a CUDA ELF (cubin), from its `e_flags`."""
    if data[:4] != b"\x7fELF" or struct.unpack_from("<H", data, 18)[0] != _EM_CUDA:
        return None
    flags = struct.unpack_from("<I", data, 48)[0]
    abi = data[8]
    return f"sm_{(flags >> 8) & 0xFF if abi >= 7 else flags & 0xFF}"


def device_code_info(code: bytes, fmt: str) -> dict:
    """What a CUDA module's code is: format and the architectures it holds."""
    if code[:4] == struct.pack("<I", _FATBIN_MAGIC):
        entries = fatbin_entries(code)
        return {"format": "fatbin", "entries": entries,
                "sass": sorted({e["arch"] for e in entries if e["kind"] == "elf"}),
                "ptx": sorted({e["arch"] for e in entries if e["kind"] == "ptx"})}
    arch = cubin_arch(code)
    if arch is not None:
        return {"format": "cubin", "sass": [arch], "ptx": []}
    match = re.search(rb"\.target\s+(sm_\w+)", code[:4096])
    if match:
        return {"format": "ptx", "sass": [], "ptx": [match.group(1).decode()]}
    return {"format": fmt, "sass": [], "ptx": []}


# ----------------------------------------------------------------------------------------------
# The packed module blob (what export_library embeds as __tvm_ffi__library_bin)
# ----------------------------------------------------------------------------------------------
#
# blob    = u64 nbytes, import tree (u64 count + u64 row pointers, u64 count + u64 child indices),
#           then per module: string kind, and unless kind == "_lib" (the host library itself)
#           bytes payload. string/bytes = u64 length + data.
# payload of kind "cuda" = string fmt, fmap (function table), bytes code.


def _read_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("<Q", data, pos)
    if pos + 8 + n > len(data):
        raise ValueError("truncated module blob")
    return data[pos + 8: pos + 8 + n], pos + 8 + n


def _pack_bytes(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def parse_blob(blob: bytes) -> tuple[bytes, list[tuple[str, bytes | None]]]:
    """Split a packed module blob into (import tree bytes, [(kind, payload or None)])."""
    (total,) = struct.unpack_from("<Q", blob, 0)
    if total != len(blob) - 8:
        raise ValueError("module blob length mismatch")
    pos = 8
    for _ in range(2):
        (count,) = struct.unpack_from("<Q", blob, pos)
        pos += 8 + 8 * count
    tree, modules = blob[8:pos], []
    while pos < len(blob):
        kind, pos = _read_bytes(blob, pos)
        payload = None
        if kind != b"_lib":
            payload, pos = _read_bytes(blob, pos)
        modules.append((kind.decode(), payload))
    return tree, modules


def build_blob(tree: bytes, modules: list[tuple[str, bytes | None]]) -> bytes:
    body = tree + b"".join(_pack_bytes(k.encode()) + (b"" if p is None else _pack_bytes(p)) for k, p in modules)
    return struct.pack("<Q", len(body)) + body


def split_cuda_payload(payload: bytes, source: bytes | None = None) -> tuple[str, bytes, bytes]:
    """(fmt, fmap bytes, code) of a serialized CUDA module."""
    fmt, pos = _read_bytes(payload, 0)
    fmt = fmt.decode()
    if source is not None and payload.endswith(_pack_bytes(source)):
        code_at = len(payload) - len(source) - 8
        return fmt, payload[pos:code_at], source
    # Compiled code (fatbin / cubin / ptx) is the last field: find the one self-consistent
    # length prefix followed by a known binary header.
    for at in range(pos, len(payload) - 8):
        (n,) = struct.unpack_from("<Q", payload, at)
        if n == len(payload) - at - 8 and n >= 4:
            code = payload[at + 8:]
            if code[:4] in (struct.pack("<I", _FATBIN_MAGIC), b"\x7fELF") or code[:2] == b"//":
                return fmt, payload[pos:at], code
    raise ValueError(f"cannot locate the code of a CUDA module (format {fmt!r})")


def _elf_symbol(data: bytes, name: str) -> bytes | None:
    """Contents of a defined symbol of a 64-bit little-endian ELF shared library."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type not in (2, 11) or not entsize:  # SHT_SYMTAB, SHT_DYNSYM
            continue
        strtab = sections[link]
        for at in range(offset, offset + size, entsize):
            st_name, _st_info, _other, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, at)
            start = strtab[4] + st_name
            if st_shndx == 0 or data[start:data.index(b"\0", start)] != name.encode():
                continue
            for _n, _t, _f, sec_addr, sec_offset, sec_size, *_ in sections:
                if sec_addr <= st_value < sec_addr + sec_size and _t != 8:  # not SHT_NOBITS
                    begin = sec_offset + st_value - sec_addr
                    return data[begin:begin + st_size] if st_size else data[begin:]
    return None


def artifact_blob(path: str | Path) -> bytes:
    """The packed module blob embedded in an exported `.so` (`__tvm_ffi__library_bin`)."""
    data = Path(path).read_bytes()
    blob = _elf_symbol(data, "__tvm_ffi__library_bin")
    if blob is None:
        raise ValueError(f"{path} has no embedded TVM module blob")
    (total,) = struct.unpack_from("<Q", blob, 0)
    return blob[:8 + total]


def artifact_device_code(path: str | Path) -> list[dict]:
    """The CUDA modules embedded in an exported `.so`: code format and architectures.

    Reads bytes only (nothing is loaded), so it works on a machine without a GPU. A module that
    still holds CUDA source (what TVM embeds when it cannot compile) shows as format "source".
    """
    _, modules = parse_blob(artifact_blob(path))
    found = []
    for kind, payload in modules:
        if kind != "cuda" or payload is None:
            continue
        fmt, _ = _read_bytes(payload, 0)
        if fmt == b"cuda":
            found.append({"fmt": "cuda", "format": "source", "sass": [], "ptx": []})
            continue
        fmt, fmap, code = split_cuda_payload(payload)
        # the function table starts with its entry count: one entry per __global__ kernel
        found.append({"fmt": fmt, "kernels": struct.unpack_from("<Q", fmap)[0], **device_code_info(code, fmt)})
    return found


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


def _fused_conv_rule():
    """Build the `FusedConv` dlight rule class (TVM imported lazily)."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.gpu.base import GPUScheduleRule

    class FusedConv(GPUScheduleRule):
        """Kernels with two or more NCHW convolutions (the fused Fire kernels of `tvmsqz.fuse`).

        Per convolution block, one launch: padding inlined into the reads; threadIdx.x over output
        pixels (coalesced NCHW loads and stores), threadIdx.y over output-channel groups; each thread
        accumulates `c_tile` output channels in registers (every input value it loads is used
        `c_tile` times); bias, ReLU, residual add and the store into the output's channel slice run
        on the registers (no global temporary, no separate epilogue launch).
        """

        def __init__(self, threads_x: int = 32, threads_y: int = 4, c_tile: int = 4, unroll: int = 64):
            self.threads_x, self.threads_y, self.c_tile, self.unroll = threads_x, threads_y, c_tile, unroll

        def apply(self, func, target, _tunable):  # noqa: C901 - one linear recipe
            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            try:
                root = sch.get_sblock("root")
                blocks = sch.get_child_blocks(root)
            except Exception:  # noqa: BLE001 - not a plain s_tir function
                return None

            def is_reduction(block) -> bool:
                return self._is_reduction(sch, block)

            reductions = [b for b in blocks if is_reduction(b)]
            if len(reductions) < 2 or not all(self._conv_like(sch, b) for b in reductions):
                return None
            try:
                for block in blocks:
                    if not is_reduction(block):
                        try:
                            sch.compute_inline(block)  # padding (and squeeze epilogues feeding convs)
                        except Exception:  # noqa: BLE001 - not inlinable: an output or a reused value
                            pass
                handled: set[str] = set()
                for block in reductions:
                    handled |= self._schedule_conv(sch, block)
                for block in sch.get_child_blocks(root):  # anything left: one thread per element
                    if sch.get(block).name_hint in handled:
                        continue
                    if is_reduction(block):
                        return None
                    loops = sch.get_loops(block)
                    if not loops:
                        loops = [sch.add_unit_loop(block)]
                    bx, tx = sch.split(sch.fuse(*loops), factors=[None, 256])
                    sch.bind(bx, "blockIdx.x")
                    sch.bind(tx, "threadIdx.x")
            except Exception:  # noqa: BLE001 - any failed step: leave the kernel to the next rule
                return None
            return sch

        @staticmethod
        def _is_reduction(sch, block) -> bool:
            return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)

        @staticmethod
        def _conv_like(sch, block) -> bool:
            ivs = sch.get(block).iter_vars
            kinds = [iv.iter_type for iv in ivs]
            n_spatial = sum(k == tirx.IterVar.DataPar for k in kinds)
            return (len(sch.get_loops(block)) == len(ivs) and n_spatial == 4
                    and kinds[:4] == [tirx.IterVar.DataPar] * 4
                    and all(k == tirx.IterVar.CommReduce for k in kinds[4:]) and len(kinds) > 4
                    and len(sch.get(block).writes) == 1 and len(sch.get(block).writes[0].region) == 4)

        def _schedule_conv(self, sch, block) -> set:
            """Schedule one conv block; returns the names of the blocks it placed."""
            loops = sch.get_loops(block)
            n, f, y, x, *rs = loops
            channels = int(sch.get(f).extent)
            c_tile = next(t for t in (self.c_tile, 2, 1) if channels % t == 0)
            sch.reorder(f, n, y, x, *rs)
            p = sch.fuse(n, y, x)
            f0, f1, f2 = sch.split(f, factors=[None, self.threads_y, c_tile])
            p0, p1 = sch.split(p, factors=[None, self.threads_x])
            sch.reorder(f0, p0, f1, p1, *rs, f2)
            sch.bind(f0, "blockIdx.y")
            sch.bind(p0, "blockIdx.x")
            sch.bind(f1, "threadIdx.y")
            sch.bind(p1, "threadIdx.x")
            write_back = sch.cache_write(block, 0, "local")
            placed = {sch.get(block).name_hint, sch.get(write_back).name_hint}
            sch.reverse_compute_at(write_back, p1, preserve_unit_loops=True)
            for consumer in sch.get_consumers(write_back):
                if self._is_reduction(sch, consumer):
                    continue  # another conv reads this one (folded squeeze): it stays in global memory
                try:  # bias + ReLU (+ residual) straight from the registers into the output slice
                    sch.reverse_compute_inline(consumer)
                    continue
                except Exception:  # noqa: BLE001 - TVM raises ScheduleError or ValueError
                    pass
                try:
                    sch.reverse_compute_at(consumer, p1, preserve_unit_loops=True)
                    placed.add(sch.get(consumer).name_hint)
                except Exception:  # noqa: BLE001 - left to the one-thread-per-element binding
                    pass
            init = sch.decompose_reduction(block, rs[0])
            placed |= {sch.get(init).name_hint, sch.get(block).name_hint}  # "<conv>_init", "<conv>_update"
            sch.annotate(p1, "pragma_auto_unroll_max_step", self.unroll)
            sch.annotate(p1, "pragma_unroll_explicit", 1)
            return placed

    return FusedConv


@functools.lru_cache(maxsize=1)
def default_rules() -> tuple:
    """dlight's GPU rules, with `FusedConv` ahead of the one-thread-per-output Fallback."""
    from tvm.s_tir import dlight as dl

    return (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            _fused_conv_rule()(), dl.gpu.Fallback())


# ----------------------------------------------------------------------------------------------
# Backend hooks (see tvmsqz/backends/__init__.py)
# ----------------------------------------------------------------------------------------------


def pre_tuning_passes(spec: TargetSpec) -> list:
    """GPU tuning needs no layout rewrite; this is where a bad arch or missing nvcc stops a build."""
    check_toolchain(spec)
    return []


def post_database_passes(spec: TargetSpec) -> list:
    return []


def default_schedule(mod, spec: TargetSpec):
    """Schedule every kernel that no tuning record scheduled (`tirx.is_scheduled` unset)."""
    from tvm.s_tir import dlight as dl

    with spec.target:
        return dl.ApplyDefaultSchedule(*default_rules())(mod)


def pass_config(spec: TargetSpec) -> dict:
    """PassContext options for `tvm.compile`: capture each inference into a CUDA graph."""
    return {"relax.backend.use_cuda_graph": True}


def _find_llvm_target(mod) -> str | None:
    if mod.kind == "llvm":
        return mod.get_function("_get_target_string")()
    for sub in mod.imports:
        found = _find_llvm_target(sub)
        if found:
            return found
    return None


def _cuda_sources(mod, out: list) -> list:
    for sub in mod.imports:
        if sub.kind == "cuda":
            out.append(sub.inspect_source("cuda").encode())
        _cuda_sources(sub, out)
    return out


def _compile_blob(blob: bytes, sources: list[bytes], spec: TargetSpec) -> tuple[bytes, list[dict]]:
    """Replace the code of every CUDA module in the blob by a fatbin for the target's arch."""
    arch = spec_arch(spec)
    nvcc = find_nvcc()
    tree, modules = parse_blob(blob)
    cuda_payloads = [i for i, (kind, payload) in enumerate(modules) if kind == "cuda"]
    if len(cuda_payloads) != len(sources):
        raise TvmsqzError(f"export for {spec.name}: found {len(cuda_payloads)} CUDA modules but "
                          f"{len(sources)} kernel sources")
    compiled: dict[bytes, bytes] = {}
    infos = []
    for index, source in zip(cuda_payloads, sources):
        kind, payload = modules[index]
        try:
            _fmt, fmap, _code = split_cuda_payload(payload, source)
        except ValueError as exc:
            raise TvmsqzError(f"export for {spec.name}: {exc}") from None
        if source not in compiled:
            compiled[source] = compile_cuda_source(source.decode(), arch, nvcc)
        code = compiled[source]
        info = device_code_info(code, "fatbin")
        base = arch.rstrip("af")  # the fatbin header names sm_90 for sm_90a code
        if info["sass"] != [base] or info["ptx"] != [base]:
            raise TvmsqzError(f"export for {spec.name}: nvcc produced {info['sass']} SASS / {info['ptx']} PTX, "
                              f"not {arch}")
        modules[index] = (kind, _pack_bytes(b"fatbin") + fmap + _pack_bytes(code))
        infos.append(info)
    return build_blob(tree, modules), infos


def _pack_imports_for(root, spec: TargetSpec):
    """An `export_library(fpack_imports=...)` function that embeds nvcc-compiled device code."""
    import tvm

    sources = _cuda_sources(root, [])
    llvm_target = _find_llvm_target(root)

    def pack_imports(mod, is_system_lib, prefix, workspace_dir):
        blob = tvm.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy().tobytes()
        blob, _ = _compile_blob(blob, sources, spec)
        packed = tvm.get_global_func("codegen.codegen_blob")(blob, is_system_lib, llvm_target, prefix)
        out = os.path.join(workspace_dir, f"{prefix}devc.o")
        packed.write_to_file(out)
        return out

    return pack_imports


def export(executable, spec: TargetSpec, path: Path) -> None:
    """Write the `.so` atomically, its CUDA kernels compiled by nvcc for the target's arch."""
    check_toolchain(spec)
    pack_imports = _pack_imports_for(executable.mod, spec)
    fd, tmp = tempfile.mkstemp(suffix=".so", prefix=".tvmsqz-", dir=path.parent)
    os.close(fd)
    try:
        with quiet_stderr():
            executable.export_library(tmp, fpack_imports=pack_imports)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _export_candidate(arch: str, rt_mod) -> str:
    """MetaSchedule builder export for RPC tuning: a `.so` with nvcc-compiled device code."""
    spec = TargetSpec(name=f"cuda-{arch}", family="cuda", description="", tvm_config={"kind": "cuda", "arch": arch})
    folder = tempfile.mkdtemp(prefix="tvmsqz-cand-")
    path = os.path.join(folder, "candidate.so")
    rt_mod.export_library(path, fpack_imports=_pack_imports_for(getattr(rt_mod, "mod", rt_mod), spec))
    return path


def candidate_export(spec: TargetSpec):
    """`f_export` for a MetaSchedule builder whose candidates run on a remote GPU (RPC tuning).

    Built on a machine without a GPU, a candidate holds CUDA source (TVM compiles it only where a
    GPU is present); this export compiles it with nvcc for the target's arch, so the GPU machine
    needs only the TVM runtime. Picklable (builder workers receive it).
    """
    return functools.partial(_export_candidate, spec_arch(spec))


def device(spec: TargetSpec):
    import tvm

    return tvm.cuda(0)
