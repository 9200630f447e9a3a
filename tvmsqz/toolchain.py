"""Toolchains for CPU artifacts: cross export with a cross compiler, and read back what was built (ELF).

ARM targets name a cross compiler in their target file (`export.cc`): the artifact is linked
on this host, so the board needs no compiler. `elf_machine`/`elf_info` read the ELF header
(pyelftools) to check an artifact is for the machine it is about to be run on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import E_FLAGS
from elftools.elf.elffile import ELFFile

from .errors import TvmsqzError
from .fsutil import export_library

#: pyelftools' e_machine names -> the names TVM triples and `uname -m` use.
_MACHINES = {"EM_AARCH64": "aarch64", "EM_ARM": "arm", "EM_X86_64": "x86_64", "EM_386": "x86", "EM_RISCV": "riscv"}


def cross_compiler(cc: str | None):
    """`fcompile` for `export_library`: `tvm.support.cc.cross_compiler(cc)`; None for native."""
    if not cc:
        return None
    if shutil.which(cc) is None:
        raise TvmsqzError(f"cross compiler {cc} not found: run scripts/setup_arm.sh (as root) first")
    from tvm.support import cc as _cc

    return _cc.cross_compiler(cc)


def export_cross(executable, path: str | Path, cc: str | None, options: list[str] | None = None) -> Path:
    """Export `executable` (from `tvm.compile`) as a shared library linked by `cc`, atomically.

    A failed or interrupted export leaves no file at `path` and no temporary file beside it.
    TvmsqzError when `cc` is missing or the link fails.
    """
    path = Path(path)
    fcompile = cross_compiler(cc)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_library(executable, path, fcompile=fcompile, **({"options": options} if options else {}))
    return path


def elf_machine(path: str | Path) -> str:
    """The machine of an ELF file from its header: "aarch64", "arm", "x86_64", ... ."""
    return elf_info(path)["machine"]


def elf_info(path: str | Path) -> dict:
    """{"machine", "class" (32/64), "endian", "float_abi" (32-bit ARM: "hard"/"soft"/None)}."""
    with open(path, "rb") as f:
        try:
            elf = ELFFile(f)
        except ELFError:
            raise TvmsqzError(f"{path} is not an ELF file") from None
    machine, flags = elf.header.e_machine, elf.header.e_flags
    out = {
        "machine": _MACHINES.get(machine, str(machine).removeprefix("EM_").lower()),
        "class": elf.elfclass,
        "endian": "little" if elf.little_endian else "big",
        "float_abi": None,
    }
    if out["machine"] == "arm" and out["class"] == 32:
        out["float_abi"] = (
            "hard"
            if flags & E_FLAGS.EF_ARM_ABI_FLOAT_HARD
            else "soft"
            if flags & E_FLAGS.EF_ARM_ABI_FLOAT_SOFT
            else None
        )
    return out
