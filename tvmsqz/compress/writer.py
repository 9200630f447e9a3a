"""Write a `tvmsqz.weightfile` file: shared tensors entropy coded, the rest raw."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..weightfile import DTYPES, MAGIC, MAX_CODE_BITS, RAW, SHARED
from .huffman import canonical_codes, code_lengths, pack_bits
from .sharing import Shared

#: Entries per stream: more streams decode faster in lock step (fewer numpy steps), each costs 4
#: bytes of size and up to 7 bits of padding. 256 keeps that under 2% of a SqueezeNet layer.
DEFAULT_CHUNK = 256
#: Gap escapes tried per tensor; the one giving the fewest coded bits is kept.
ESCAPES = (4, 8, 16, 32, 64, 128, 255)


@dataclass
class TensorStats:
    """What one tensor cost in the file."""

    name: str
    kind: str
    elements: int
    entries: int = 0
    codebook: int = 0
    bytes: int = 0
    code_bits: float = 0.0  # order-0 entropy of the codebook indices, bits per entry
    gap_bits: float = 0.0  # order-0 entropy of the gap symbols, bits per entry


@dataclass
class FileStats:
    path: str
    bytes: int = 0
    tensors: list[TensorStats] = field(default_factory=list)

    @property
    def entropy_bytes(self) -> float:
        """The order-0 entropy bound of the shared tensors' indices and gaps, plus every raw and
        codebook byte: what any order-0 coder of this data would need."""
        total = 0.0
        for t in self.tensors:
            if t.kind == "raw":
                total += 4 * t.elements
            else:
                total += t.entries * (t.code_bits + t.gap_bits) / 8 + 4 * t.codebook
        return total

    def to_json(self) -> dict:
        return {
            "bytes": self.bytes,
            "entropy_bound_bytes": round(self.entropy_bytes),
            "tensors": [t.__dict__ for t in self.tensors],
        }


def _entropy(symbols: np.ndarray, size: int) -> float:
    counts = np.bincount(symbols, minlength=size).astype(np.float64)
    p = counts[counts > 0] / max(1, symbols.size)
    return float(-(p * np.log2(p)).sum() * symbols.size)


def _gap_symbols(gaps: np.ndarray, escape: int) -> tuple[np.ndarray, np.ndarray]:
    """Per entry: how many escapes, and the remainder symbol."""
    return gaps // escape, gaps % escape


def _shared_record(s: Shared, chunk: int, stats: TensorStats) -> bytes:
    entries = s.codes.size
    gaps = np.diff(s.positions, prepend=-1) - 1
    code_len = code_lengths(np.bincount(s.codes, minlength=s.codebook.size), MAX_CODE_BITS)
    best = None
    for escape in ESCAPES:
        n_esc, rest = _gap_symbols(gaps, escape)
        hist = np.bincount(rest, minlength=escape + 1)
        hist[escape] += int(n_esc.sum())
        lengths = code_lengths(hist, MAX_CODE_BITS)
        bits = int((hist * lengths).sum())
        if best is None or bits < best[0]:
            best = (bits, escape, lengths)
    _, escape, gap_len = best if best else (0, 1, np.zeros(2, np.uint8))
    code_cw, gap_cw = canonical_codes(code_len), canonical_codes(gap_len)
    n_esc, rest = _gap_symbols(gaps, escape)
    # One symbol sequence per entry: n_esc escapes, the gap remainder, the code; as (alphabet, symbol).
    per_entry = n_esc + 2
    starts = np.concatenate([[0], np.cumsum(per_entry)])
    total = int(starts[-1])
    is_code = np.zeros(total, dtype=bool)
    symbols = np.full(total, escape, dtype=np.int64)
    is_code[starts[1:] - 1] = True
    symbols[starts[1:] - 1] = s.codes
    symbols[starts[1:] - 2] = rest
    codewords = np.where(is_code, code_cw[np.where(is_code, symbols, 0)], gap_cw[np.where(is_code, 0, symbols)])
    lengths = np.where(is_code, code_len[np.where(is_code, symbols, 0)], gap_len[np.where(is_code, 0, symbols)])
    streams = []
    for first in range(0, entries, chunk):
        lo, hi = starts[first], starts[min(entries, first + chunk)]
        idx = np.arange(lo, hi)
        streams.append(pack_bits(idx, codewords, lengths))
    stats.entries = entries
    stats.codebook = int(s.codebook.size)
    stats.code_bits = _entropy(s.codes, s.codebook.size) / max(1, entries)
    stats.gap_bits = _entropy(rest, escape + 1) / max(1, entries) + (
        _entropy(np.concatenate([rest, np.full(int(n_esc.sum()), escape)]), escape + 1) - _entropy(rest, escape + 1)
    ) / max(1, entries)
    return b"".join(
        [
            struct.pack("<IH", entries, s.codebook.size),
            s.codebook.astype("<f4").tobytes(),
            struct.pack("<B", escape),
            code_len.astype(np.uint8).tobytes(),
            gap_len.astype(np.uint8).tobytes(),
            struct.pack("<II", chunk, len(streams)),
            np.asarray([len(b) for b in streams], dtype="<u4").tobytes(),
            *streams,
        ]
    )


def encode(tensors: list[tuple[str, np.ndarray | Shared]], chunk: int = DEFAULT_CHUNK) -> tuple[bytes, FileStats]:
    """The file's bytes for `tensors` (a `Shared` is entropy coded, an array stored raw)."""
    parts = [MAGIC, struct.pack("<I", len(tensors))]
    stats = FileStats(path="")
    for name, value in tensors:
        raw_name = name.encode("utf-8")
        shape = value.shape if isinstance(value, Shared) else np.asarray(value).shape
        head = struct.pack("<H", len(raw_name)) + raw_name + struct.pack("<B", len(shape))
        head += np.asarray(shape, dtype="<u4").tobytes()
        dtype = value.dtype if isinstance(value, Shared) else str(np.asarray(value).dtype)
        head += struct.pack("<B", DTYPES.index(dtype if dtype in DTYPES else "float32"))
        elements = int(np.prod(shape, dtype=np.int64))
        if isinstance(value, Shared):
            t = TensorStats(name, "shared", elements)
            body = struct.pack("<B", SHARED) + _shared_record(value, chunk, t)
        else:
            t = TensorStats(name, "raw", elements)
            body = struct.pack("<B", RAW) + np.ascontiguousarray(value, dtype="<f4").tobytes()
        t.bytes = len(head) + len(body)
        stats.tensors.append(t)
        parts += [head, body]
    blob = b"".join(parts)
    blob += struct.pack("<I", zlib.crc32(blob) & 0xFFFFFFFF)
    stats.bytes = len(blob)
    return blob, stats


def write(path: Path, tensors: list[tuple[str, np.ndarray | Shared]], chunk: int = DEFAULT_CHUNK) -> FileStats:
    """Encode and write atomically (a partial file never appears at `path`)."""
    from ..fsutil import atomic_write

    blob, stats = encode(tensors, chunk)
    atomic_write(Path(path), blob)
    stats.path = str(path)
    return stats
