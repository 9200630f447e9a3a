"""Length-limited canonical Huffman codes and MSB-first bit packing (the encoder's half of
`tvmsqz.weightfile`, which decodes)."""

from __future__ import annotations

import heapq

import numpy as np

from ..weightfile import MAX_CODE_BITS, canonical_codes


def code_lengths(counts: np.ndarray, limit: int = MAX_CODE_BITS) -> np.ndarray:
    """Huffman code lengths (uint8, 0 for unused symbols) of a symbol histogram, none over `limit`.

    A single used symbol gets length 1 (a decoder needs one bit per symbol to advance). Over the
    limit, the histogram is flattened (halved, kept nonzero) and coded again: the few bits this
    costs on the rarest symbols keep every decode table at 2**limit entries.
    """
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, dtype=np.uint8)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    if used.size > (1 << limit):
        raise ValueError(f"{used.size} symbols cannot have codes of at most {limit} bits")
    weights = counts[used].copy()
    while True:
        depth = _huffman_depths(weights)
        if depth.max() <= limit:
            lengths[used] = depth
            return lengths
        weights = np.maximum(weights >> 1, 1)


def _huffman_depths(weights: np.ndarray) -> np.ndarray:
    """Leaf depths of a Huffman tree over `weights` (ties broken by insertion order: deterministic)."""
    heap = [(int(w), i, (i,)) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    depth = np.zeros(len(weights), dtype=np.int64)
    tie = len(weights)
    while len(heap) > 1:
        w1, _, a = heapq.heappop(heap)
        w2, _, b = heapq.heappop(heap)
        leaves = a + b
        depth[list(leaves)] += 1
        heapq.heappush(heap, (w1 + w2, tie, leaves))
        tie += 1
    return depth


def pack_bits(symbols: np.ndarray, codes: np.ndarray, lengths: np.ndarray) -> bytes:
    """The codewords of `symbols` (indices into `codes`/`lengths`) as one MSB-first bit string,
    zero-padded to a whole byte."""
    if symbols.size == 0:
        return b""
    c = codes[symbols].astype(np.int64)
    n = lengths[symbols].astype(np.int64)
    shifts = n[:, None] - 1 - np.arange(MAX_CODE_BITS, dtype=np.int64)[None, :]
    bits = (c[:, None] >> np.maximum(shifts, 0)) & 1
    return np.packbits(bits[shifts >= 0].astype(np.uint8)).tobytes()


__all__ = ["canonical_codes", "code_lengths", "pack_bits"]
