"""Reading compiled device code without a GPU: fatbin containers, cubins and ELF symbols.

Export checks what nvcc produced (SASS and PTX for exactly the target's architecture) and the
tests check what an artifact embeds, both on machines without a GPU or a CUDA driver, so the
device code is read as bytes here and never loaded. ELF files (cubins, the exported `.so`) are
read through `pyelftools`; the fatbin container, which no Python library parses, by its header
layout (`fatbinary_section.h` / `fatbin.h` of the CUDA toolkit).
"""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE

FATBIN_MAGIC = 0xBA55ED50
#: The first bytes of a fatbin, a cubin/ELF and a PTX text: how compiled code is recognized.
FATBIN_HEADER = struct.pack("<I", FATBIN_MAGIC)
ELF_HEADER = b"\x7fELF"
_PTX_TARGET = re.compile(rb"\.target\s+(sm_\w+)")


def _elf(data: bytes | BinaryIO) -> ELFFile | None:
    try:
        return ELFFile(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
    except (ELFError, struct.error, ValueError):
        return None


def cubin_arch(data: bytes) -> str | None:
    """SM architecture of a CUDA ELF (cubin), from its `e_flags`; None for anything else.

    CUDA 12.8+ cubins (EI_ABIVERSION >= 7) keep the SM number in bits 8-15 of `e_flags`, older
    ones in bits 0-7.
    """
    elf = _elf(data) if data[:4] == ELF_HEADER else None
    if elf is None or elf.header["e_machine"] != "EM_CUDA":
        return None
    flags = elf.header["e_flags"]
    abi = elf.header["e_ident"]["EI_ABIVERSION"]
    return f"sm_{(flags >> 8) & 0xFF if abi >= 7 else flags & 0xFF}"


def _elf_machine(body: bytes) -> int | None:
    """`e_machine` of an embedded ELF as its number (190 = EM_CUDA), as the fatbin entry shows it."""
    elf = _elf(body) if body[:4] == ELF_HEADER else None
    if elf is None:
        return None
    machine = elf.header["e_machine"]
    return ENUM_E_MACHINE.get(machine, machine) if isinstance(machine, str) else machine


def fatbin_entries(data: bytes, offset: int = 0) -> list[dict]:
    """The images in a fatbin: `{"kind": "elf"|"ptx", "arch": "sm_90", "bytes": n, ...}`.

    A PTX entry has `ptx_target` (its `.target`; None when the PTX is compressed), an ELF entry
    `elf_machine`.
    """
    magic, _version, header_size, size = struct.unpack_from("<IHHQ", data, offset)
    if magic != FATBIN_MAGIC:
        raise ValueError("not a fatbin")
    entries, pos, end = [], offset + header_size, offset + header_size + size
    while pos + 32 <= end:
        kind, _flags, entry_header, payload = struct.unpack_from("<HHIQ", data, pos)
        arch_num = struct.unpack_from("<I", data, pos + 28)[0]
        body = data[pos + entry_header : pos + entry_header + payload]
        entry = {"kind": {1: "ptx", 2: "elf"}.get(kind, str(kind)), "arch": f"sm_{arch_num}", "bytes": payload}
        if kind == 1:
            match = _PTX_TARGET.search(body)
            entry["ptx_target"] = match.group(1).decode() if match else None
        elif kind == 2:
            entry["elf_machine"] = _elf_machine(body)
        entries.append(entry)
        if entry_header == 0:
            break
        pos += entry_header + payload
    return entries


def is_device_code(code: bytes) -> bool:
    """Whether `code` starts like compiled device code: a fatbin, a cubin or PTX text."""
    return code[:4] in (FATBIN_HEADER, ELF_HEADER) or code[:2] == b"//"


def device_code_info(code: bytes, fmt: str) -> dict:
    """What a CUDA module's code is: format and the architectures it holds SASS and PTX for."""
    if code[:4] == FATBIN_HEADER:
        entries = fatbin_entries(code)
        return {
            "format": "fatbin",
            "entries": entries,
            "sass": sorted({e["arch"] for e in entries if e["kind"] == "elf"}),
            "ptx": sorted({e["arch"] for e in entries if e["kind"] == "ptx"}),
        }
    arch = cubin_arch(code)
    if arch is not None:
        return {"format": "cubin", "sass": [arch], "ptx": []}
    match = _PTX_TARGET.search(code[:4096])
    if match:
        return {"format": "ptx", "sass": [], "ptx": [match.group(1).decode()]}
    return {"format": fmt, "sass": [], "ptx": []}


def elf_symbol(path: str | Path, name: str) -> bytes | None:
    """Contents of a defined data symbol of an ELF shared library (`.symtab`, then `.dynsym`)."""
    with open(path, "rb") as fh:
        elf = _elf(fh)
        if elf is None:
            return None
        for table_name in (".symtab", ".dynsym"):
            table = elf.get_section_by_name(table_name)
            for symbol in (table.get_symbol_by_name(name) or []) if table is not None else []:
                index = symbol["st_shndx"]
                if not isinstance(index, int):  # SHN_UNDEF, SHN_ABS, ...
                    continue
                section = elf.get_section(index)
                if section["sh_type"] == "SHT_NOBITS":
                    continue
                start = symbol["st_value"] - section["sh_addr"]
                size = symbol["st_size"] or section["sh_size"] - start
                fh.seek(section["sh_offset"] + start)
                return fh.read(size)
    return None
