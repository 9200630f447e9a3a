"""The packed module blob that `export_library` embeds, and the rewrite that puts fatbins in it.

TVM 0.27, on a machine where its CUDA runtime cannot load (no driver), embeds the kernels as
CUDA *source* and compiles them when the `.so` is loaded, which needs a compiler on the GPU
machine. `pack_imports_for` is the `export_library(fpack_imports=...)` hook that replaces that
source, in the blob, by an nvcc-compiled fatbin for the target's architecture, so the GPU
machine needs only the TVM runtime and the driver. TVM has no API for this, hence the format
below (`ffi/src/ffi/extra/library_module.cc`, `src/runtime/cuda/cuda_module.cc`):

    blob    = u64 nbytes, import tree (u64 count + u64 row pointers, u64 count + u64 child
              indices), then per module: string kind, and unless kind == "_lib" (the host library
              itself) bytes payload. string/bytes = u64 length + data.
    payload of kind "cuda" = string fmt, fmap (function table), bytes code.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

from ...errors import TvmsqzError
from ...spec import TargetSpec
from .detect import base_arch, spec_arch
from .fatbin import device_code_info, elf_symbol, is_device_code
from .nvcc import compile_cuda_source, find_nvcc

#: The symbol under which `export_library` stores the blob in the `.so`.
BLOB_SYMBOL = "__tvm_ffi__library_bin"

Modules = list[tuple[str, bytes | None]]


def _read_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("<Q", data, pos)
    if pos + 8 + n > len(data):
        raise ValueError("truncated module blob")
    return data[pos + 8 : pos + 8 + n], pos + 8 + n


def pack_bytes(data: bytes) -> bytes:
    """A blob string/bytes field: u64 length + data."""
    return struct.pack("<Q", len(data)) + data


def parse_blob(blob: bytes) -> tuple[bytes, Modules]:
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


def build_blob(tree: bytes, modules: Modules) -> bytes:
    """The inverse of `parse_blob`."""
    body = tree + b"".join(pack_bytes(k.encode()) + (b"" if p is None else pack_bytes(p)) for k, p in modules)
    return struct.pack("<Q", len(body)) + body


def split_cuda_payload(payload: bytes, source: bytes | None = None) -> tuple[str, bytes, bytes]:
    """(fmt, fmap bytes, code) of a serialized CUDA module.

    The function table has no length of its own, so the code is found from the end: `source`
    when the caller knows it, else the one self-consistent length prefix followed by compiled
    device code.
    """
    fmt_raw, pos = _read_bytes(payload, 0)
    fmt = fmt_raw.decode()
    if source is not None and payload.endswith(pack_bytes(source)):
        code_at = len(payload) - len(source) - 8
        return fmt, payload[pos:code_at], source
    for at in range(pos, len(payload) - 8):
        (n,) = struct.unpack_from("<Q", payload, at)
        if n == len(payload) - at - 8 and n >= 4 and is_device_code(payload[at + 8 :]):
            return fmt, payload[pos:at], payload[at + 8 :]
    raise ValueError(f"cannot locate the code of a CUDA module (format {fmt!r})")


def artifact_blob(path: str | Path) -> bytes:
    """The packed module blob embedded in an exported `.so`."""
    blob = elf_symbol(path, BLOB_SYMBOL)
    if blob is None:
        raise ValueError(f"{path} has no embedded TVM module blob")
    (total,) = struct.unpack_from("<Q", blob, 0)
    return blob[: 8 + total]


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


def compile_blob(blob: bytes, sources: list[bytes], spec: TargetSpec) -> tuple[bytes, list[dict]]:
    """Replace the code of every CUDA module in the blob by a fatbin for the target's arch.

    Each fatbin is checked to hold SASS and PTX for exactly that arch: a wrong `-gencode` would
    otherwise surface only as "no kernel image" on the GPU machine.
    """
    arch = spec_arch(spec)
    nvcc = find_nvcc()
    tree, modules = parse_blob(blob)
    cuda_payloads = [i for i, (kind, _) in enumerate(modules) if kind == "cuda"]
    if len(cuda_payloads) != len(sources):
        raise TvmsqzError(
            f"export for {spec.name}: found {len(cuda_payloads)} CUDA modules but {len(sources)} kernel sources"
        )
    compiled: dict[bytes, bytes] = {}
    infos = []
    for index, source in zip(cuda_payloads, sources):
        kind, payload = modules[index]
        try:
            _fmt, fmap, _code = split_cuda_payload(payload or b"", source)
        except ValueError as exc:
            raise TvmsqzError(f"export for {spec.name}: {exc}") from None
        if source not in compiled:
            compiled[source] = compile_cuda_source(source.decode(), arch, nvcc)
        code = compiled[source]
        info = device_code_info(code, "fatbin")
        base = base_arch(arch)  # the fatbin header names sm_90 for sm_90a code
        if info["sass"] != [base] or info["ptx"] != [base]:
            raise TvmsqzError(
                f"export for {spec.name}: nvcc produced {info['sass']} SASS / {info['ptx']} PTX, not {arch}"
            )
        modules[index] = (kind, pack_bytes(b"fatbin") + fmap + pack_bytes(code))
        infos.append(info)
    return build_blob(tree, modules), infos


def _find_llvm_target(mod) -> str | None:
    if mod.kind == "llvm":
        return mod.get_function("_get_target_string")()
    for sub in mod.imports:
        found = _find_llvm_target(sub)
        if found:
            return found
    return None


def _cuda_sources(mod, out: list[bytes]) -> list[bytes]:
    for sub in mod.imports:
        if sub.kind == "cuda":
            out.append(sub.inspect_source("cuda").encode())
        _cuda_sources(sub, out)
    return out


def pack_imports_for(root, spec: TargetSpec) -> Callable[..., str]:
    """An `export_library(fpack_imports=...)` function that embeds nvcc-compiled device code.

    The sources are read off the module tree now, in TVM's module order, which is also the
    order of the CUDA modules in the blob that TVM packs at export time.
    """
    import tvm

    sources = _cuda_sources(root, [])
    llvm_target = _find_llvm_target(root)

    def pack_imports(mod, is_system_lib, prefix, workspace_dir) -> str:
        blob = tvm.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy().tobytes()
        blob, _ = compile_blob(blob, sources, spec)
        packed = tvm.get_global_func("codegen.codegen_blob")(blob, is_system_lib, llvm_target, prefix)
        out = os.path.join(workspace_dir, f"{prefix}devc.o")
        packed.write_to_file(out)
        return out

    return pack_imports
