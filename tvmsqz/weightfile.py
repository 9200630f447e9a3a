"""The compressed weight file (`model.weights`): its format and its decoder.

Why a file of its own: SqueezeNet's paper promises "<0.5MB model size" through Deep Compression
(pruning, weight sharing, Huffman coding), and no runtime a user can pick runs such a file. A
`--compress` artifact keeps its weights out of the compiled code, stored the way Deep Compression
stores them, and decodes them at load into exactly the tensors the kernels take.

This module is the runtime side: it imports numpy and the standard library only (it is copied
into bundles beside the Python runner, `bin/tvmsqz_weightfile.py`), and it must agree byte for
byte with the C++ runner's decoder (`bundle/runner.cpp`, `DecodeWeights`). The encoder is
`tvmsqz.compress`.

Format (little-endian, sequential, no padding):

    magic        8 bytes  b"TVSQZW01"
    count        u32      number of tensors
    per tensor:
      name       u16 length, UTF-8 bytes
      ndim       u8, then u32 dims[ndim]          (C order)
      dtype      u8: 0 float32, 1 int8            (int8: integer values, stored as float32 below)
      kind       u8: 0 raw, 1 shared
      raw:       float32[prod(dims)]
      shared:    u32 entries                      (stored nonzero weights)
                 u16 K, float32 codebook[K]       (weight sharing: one codebook per tensor)
                 u8  E                            (gap escape: gap symbols are 0..E)
                 u8  code_lengths[K], u8 gap_lengths[E + 1]   (canonical Huffman, 0 = unused)
                 u32 chunk                        (entries per stream)
                 u32 streams, u32 stream_bytes[streams], the streams' bytes
    crc32        u32      zlib CRC-32 of every byte before it

A shared tensor's entries are its nonzero weights in C order. Entry i sits `gap_i + 1` positions
after entry i - 1 (the first after position -1), as Deep Compression's relative indices. Each
gap is coded as `gap_i // E` escape symbols E followed by the symbol `gap_i % E`, then the
entry's codebook index. Entries are cut into streams of `chunk` consecutive entries, each stream
a separate MSB-first bit string of Huffman codes (gap symbols and code symbols interleaved as
above), so that a decoder can run every stream in lock step (numpy here) or one after another
(C++). Code lengths are at most `MAX_CODE_BITS`; canonical codes are assigned in (length,
symbol) order.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

MAGIC = b"TVSQZW01"
RAW, SHARED = 0, 1
#: dtype codes: what the decoded tensor is (values are stored as float32 either way).
DTYPES = ("float32", "int8")
#: The longest Huffman code the format allows (decode tables have 2**length entries).
MAX_CODE_BITS = 15
#: Bounds a reader checks before allocating (far beyond any SqueezeNet-class model).
MAX_TENSORS = 4096
MAX_ELEMENTS = 1 << 28
MAX_DIMS = 8


class WeightFileError(ValueError):
    """A weight file this decoder refuses (truncated, corrupt, foreign): one line for the user."""


class _Reader:
    """Bounds-checked little-endian reads over the file's bytes."""

    def __init__(self, blob: bytes, name: str):
        self.blob, self.name, self.off = blob, name, 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.off + size > len(self.blob):
            raise WeightFileError(f"{self.name} is truncated (a field at byte {self.off} runs past its end)")
        out = self.blob[self.off : self.off + size]
        self.off += size
        return out

    def u(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        return np.frombuffer(self.take(size), dtype=dtype, count=count)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codewords for `lengths` (0 = unused symbol): codes are assigned in
    (length, symbol) order, each the previous plus one, shifted left when the length grows
    (equivalently: the Kraft sum of the codes before it, at the code's own length)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    if order.size:
        top = int(lengths[order].max())
        width = np.left_shift(1, top - lengths[order])
        before = np.concatenate([[0], np.cumsum(width)[:-1]])
        codes[order] = before >> (top - lengths[order])
    return codes


def check_lengths(lengths: np.ndarray, what: str) -> None:
    """Refuse code lengths that do not form a prefix code (Kraft sum over 1) or are too long."""
    used = lengths[lengths > 0].astype(np.int64)
    if used.size and int(used.max()) > MAX_CODE_BITS:
        raise WeightFileError(f"{what}: a Huffman code is longer than {MAX_CODE_BITS} bits")
    if used.size and int(np.sum(np.left_shift(1, MAX_CODE_BITS - used))) > (1 << MAX_CODE_BITS):
        raise WeightFileError(f"{what}: its Huffman code lengths do not form a prefix code")


def decode_table(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(symbol, length) lookup tables indexed by the next `bits` bits of a stream, and `bits`.

    Canonical codes in (length, symbol) order cover the table's slots left to right, each
    2**(bits - length) of them; slots past the last (an incomplete code) have length 0: a stream
    that reaches one is corrupt.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    bits = max(1, int(lengths.max(initial=0)))
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    width = np.left_shift(1, bits - lengths[order])
    filled = int(width.sum())
    symbols = np.zeros(1 << bits, dtype=np.int64)
    lens = np.zeros(1 << bits, dtype=np.int64)
    symbols[:filled] = np.repeat(order, width)
    lens[:filled] = np.repeat(lengths[order], width)
    return symbols, lens, bits


class _Shared:
    """One shared tensor's fields, read and checked, waiting for the lock-step decode."""

    def __init__(self, rd: _Reader, name: str, size: int):
        self.entries = rd.u("I")
        if self.entries > size:
            raise WeightFileError(f"{rd.name}: {name} claims {self.entries} entries for {size} weights")
        k = rd.u("H")
        self.codebook = rd.array("<f4", k).astype(np.float32)
        self.escape = rd.u("B")
        if self.escape < 1:
            raise WeightFileError(f"{rd.name}: {name} has gap escape 0")
        self.code_lengths = rd.array("u1", k)
        self.gap_lengths = rd.array("u1", self.escape + 1)
        chunk = rd.u("I")
        streams = rd.u("I")
        if self.entries and (chunk < 1 or streams != -(-self.entries // chunk)):
            raise WeightFileError(f"{rd.name}: {name} has {streams} streams for {self.entries} entries of {chunk}")
        if not self.entries and streams:
            raise WeightFileError(f"{rd.name}: {name} has streams but no entries")
        self.chunk = chunk
        sizes = rd.array("<u4", streams).astype(np.int64)
        self.data = rd.take(int(sizes.sum()))
        self.sizes = sizes
        what = f"{rd.name}: {name}"
        if self.entries:
            if k < 1:
                raise WeightFileError(f"{what} has entries but an empty codebook")
            check_lengths(self.code_lengths, what)
            check_lengths(self.gap_lengths, what)
            if not self.code_lengths.any() or not self.gap_lengths[: self.escape].any():
                raise WeightFileError(f"{what} has entries but no Huffman code for them")


def read(path: str | Path) -> dict[str, np.ndarray]:
    """Decode a weight file into `{name: float32 array}` in file order.

    Everything is checked (magic, CRC-32, bounds, code lengths, that each stream decodes exactly
    its bytes and every position stays inside its tensor); any failure is one `WeightFileError`.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise WeightFileError(f"cannot read weight file {path}: {exc.strerror or exc}") from None
    return decode(blob, path.name)


def decode(blob: bytes, name: str = "weight file") -> dict[str, np.ndarray]:
    """`read` on bytes already in memory."""
    if len(blob) < len(MAGIC) + 8 or blob[: len(MAGIC)] != MAGIC:
        raise WeightFileError(f"{name} is not a tvmsqz weight file (bad magic or too short)")
    stored = struct.unpack("<I", blob[-4:])[0]
    if zlib.crc32(blob[:-4]) & 0xFFFFFFFF != stored:
        raise WeightFileError(f"{name} is corrupt or truncated (CRC-32 mismatch)")
    rd = _Reader(blob[:-4], name)
    rd.take(len(MAGIC))
    count = rd.u("I")
    if count > MAX_TENSORS:
        raise WeightFileError(f"{name} claims {count} tensors (at most {MAX_TENSORS})")
    out: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    shared: list[tuple[str, tuple[int, ...], _Shared]] = []
    for _ in range(count):
        try:
            tname = rd.take(rd.u("H")).decode("utf-8")
        except UnicodeDecodeError:
            raise WeightFileError(f"{name} has a tensor name that is not UTF-8") from None
        ndim = rd.u("B")
        if ndim > MAX_DIMS:
            raise WeightFileError(f"{name}: {tname} has {ndim} dimensions")
        dims = tuple(int(d) for d in rd.array("<u4", ndim))
        size = int(np.prod(dims, dtype=np.int64))
        if size > MAX_ELEMENTS:
            raise WeightFileError(f"{name}: {tname} has {size} elements (at most {MAX_ELEMENTS})")
        if tname in out or any(tname == s[0] for s in shared):
            raise WeightFileError(f"{name} holds {tname} twice")
        code = rd.u("B")
        if code >= len(DTYPES):
            raise WeightFileError(f"{name}: {tname} has unknown dtype {code}")
        dtypes[tname] = DTYPES[code]
        kind = rd.u("B")
        if kind == RAW:
            out[tname] = rd.array("<f4", size).astype(np.float32).reshape(dims)
        elif kind == SHARED:
            shared.append((tname, dims, _Shared(rd, tname, size)))
            out[tname] = None  # keeps file order
        else:
            raise WeightFileError(f"{name}: {tname} has unknown kind {kind}")
    if rd.off != len(rd.blob):
        raise WeightFileError(f"{name} has {len(rd.blob) - rd.off} unexpected bytes after its last tensor")
    for (tname, dims, fields), (codes, gaps) in zip(shared, _decode_streams([s[2] for s in shared], name)):
        size = int(np.prod(dims, dtype=np.int64))
        positions = np.cumsum(gaps + 1) - 1
        if positions.size and (positions[-1] >= size):
            raise WeightFileError(f"{name}: {tname} addresses a weight beyond its {size}")
        flat = np.zeros(size, dtype=np.float32)
        flat[positions] = fields.codebook[codes]
        out[tname] = flat.reshape(dims)
    for tname, dtype in dtypes.items():
        if dtype != "float32":
            value = out[tname]
            info = np.iinfo(dtype)
            in_range = value.min(initial=0) >= info.min and value.max(initial=0) <= info.max
            if not (in_range and np.all(value == np.round(value))):
                raise WeightFileError(f"{name}: {tname} holds values that are not {dtype}")
            out[tname] = value.astype(dtype)
    return out


def _decode_streams(tensors: list[_Shared], name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every stream of every shared tensor, decoded in lock step: one numpy step decodes the
    next gap symbol of all streams, then the next code symbol of those whose gap ended."""
    table_sym, table_len, table_bits = [], [], []
    offsets, at = [], 0
    for t in tensors:  # per tensor: its code table, then its gap table
        for lengths in (t.code_lengths, t.gap_lengths):
            sym, lens, bits = decode_table(lengths)
            table_sym.append(sym)
            table_len.append(lens)
            table_bits.append(bits)
            offsets.append(at)
            at += sym.size
    sym_all = np.concatenate(table_sym) if table_sym else np.zeros(1, np.int32)
    len_all = np.concatenate(table_len) if table_len else np.zeros(1, np.int32)

    # One row per stream: tensor, first entry, entries, byte range, tables.
    s_tensor, s_first, s_count, s_start, s_end = [], [], [], [], []
    base, data_parts, entry_base = 0, [], 0
    tensor_first_entry = []
    for ti, t in enumerate(tensors):
        tensor_first_entry.append(entry_base)
        pos = 0
        for si, nbytes in enumerate(t.sizes):
            s_tensor.append(ti)
            s_first.append(entry_base + si * t.chunk)
            s_count.append(min(t.chunk, t.entries - si * t.chunk))
            s_start.append(base + pos)
            s_end.append(base + pos + int(nbytes))
            pos += int(nbytes)
        data_parts.append(t.data)
        base += len(t.data)
        entry_base += t.entries
    total = entry_base
    codes = np.zeros(total, dtype=np.int64)
    gaps = np.zeros(total, dtype=np.int64)
    if s_tensor:
        raw = np.frombuffer(b"".join(data_parts) + b"\0" * 8, dtype=np.uint8)
        # the big-endian 64-bit word at every byte: one gather per step gives both symbols' bits
        words = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(raw, 8)).view(">u8").ravel()
        words = words.astype(np.uint64)
        st = np.asarray(s_tensor)
        # Per live stream (compacted when streams finish): bit position, tables, progress.
        pos = np.asarray(s_start, dtype=np.int64) * 8
        end = np.asarray(s_end, dtype=np.int64) * 8
        first = np.asarray(s_first, dtype=np.int64)
        left = np.asarray(s_count, dtype=np.int64)
        code_off = np.asarray(offsets[0::2], dtype=np.int64)[st]
        code_shift = (64 - np.asarray(table_bits[0::2], dtype=np.int64)[st]).astype(np.uint64)
        gap_off = np.asarray(offsets[1::2], dtype=np.int64)[st]
        gap_shift = (64 - np.asarray(table_bits[1::2], dtype=np.int64)[st]).astype(np.uint64)
        escape = np.asarray([t.escape for t in tensors], dtype=np.int64)[st]
        pending = np.zeros(st.size, dtype=np.int64)
        keep = left > 0
        live = [pos, end, first, left, code_off, code_shift, gap_off, gap_shift, escape, pending]
        live = [a[keep] for a in live]
        limit = int(max(s_count)) * 64 + 64  # escapes alone never end a stream: bounded steps
        steps = 0
        while live[0].size:
            pos, end, first, left, code_off, code_shift, gap_off, gap_shift, escape, pending = live
            steps += 1
            if steps > limit:
                raise WeightFileError(f"{name} is corrupt (a stream never ends)")
            word = words[pos >> 3] << (pos & 7).astype(np.uint64)  # at most 7 + 15 + 15 bits used
            idx = gap_off + (word >> gap_shift).astype(np.int64)
            g, glen = sym_all[idx], len_all[idx]
            pos = pos + glen
            idx = code_off + ((word << glen.astype(np.uint64)) >> code_shift).astype(np.int64)
            c, clen = sym_all[idx], len_all[idx]
            esc = g == escape
            if not (glen.all() and (clen > 0)[~esc].all()):
                raise WeightFileError(f"{name} is corrupt (an invalid Huffman code)")
            # An escaping stream writes a placeholder its next emitted entry overwrites.
            where = first
            gaps[where] = pending + g
            codes[where] = c
            emit = (~esc).astype(np.int64)
            pending = np.where(esc, pending + g, 0)
            pos = pos + clen * emit
            first = first + emit
            left = left - emit
            if (pos > end).any():
                raise WeightFileError(f"{name} is corrupt (a stream reads past its bytes)")
            live = [pos, end, first, left, code_off, code_shift, gap_off, gap_shift, escape, pending]
            if not left.all():
                done = left == 0
                if ((end[done] - pos[done]) >= 8).any():
                    raise WeightFileError(f"{name} is corrupt (a stream has bytes it does not use)")
                live = [a[~done] for a in live]
    out = []
    for ti, t in enumerate(tensors):
        lo = tensor_first_entry[ti]
        c = codes[lo : lo + t.entries]
        if c.size and int(c.max()) >= t.codebook.size:
            raise WeightFileError(f"{name} is corrupt (a codebook index out of range)")
        out.append((c, gaps[lo : lo + t.entries]))
    return out
