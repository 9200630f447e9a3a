"""Numbers the CPU kernels share: block names the schedules look up, register budgets, tiles.

One home for them, so the compute (`direct`, `winograd`), the schedule spaces (`direct_space`,
`winograd`) and the legalization (`legalize`) cannot disagree (they used to import each other
for these, in a cycle).
"""

from __future__ import annotations

#: Name of the reduction block of a blocked direct convolution (the schedule rule looks for it).
CONV_BLOCK = "conv2d_nchwc"

#: Most accumulators a direct-conv register tile may hold (AVX-512 has 32 vector registers;
#: leave room for the broadcast input and the weight vectors).
MAX_ACCUMULATORS = 24

#: Most accumulators the untuned Winograd GEMM register tile holds, by output block: AVX-512
#: has 32 vector registers (16-lane blocks), AVX2 16 (8-lane blocks).
WINOGRAD_ACCUMULATORS = {16: 24, 8: 12}

#: The searched unroll depths (MetaSchedule's `unroll_explicit`), the same in every space.
UNROLL_STEPS = (0, 16, 64, 512)

#: A register tile needs a divisor of the output width; widths whose best divisor (up to the
#: accumulator budget) is below this get computed over a wider, padded row and cropped.
MIN_WIDTH_TILE = 3
WIDTH_PAD_MULTIPLE = 8

#: Winograd block names the schedule looks for.
GEMM_BLOCK = "wino_gemm"
INPUT_BLOCK = "wino_input"
INPUT_ROWS = "wino_input_rows"
OUTPUT_BLOCK = "wino_output"
OUTPUT_ROWS = "wino_output_rows"


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of `n` not above `limit` (a register tile without a tail loop)."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def padded_width(out_w: int) -> int:
    """Output width the conv computes: `out_w`, or the next multiple of 8 when `out_w` has no
    divisor from 3 to 24 (SqueezeNet 1.0's 109-wide conv1, a prime: a 1-column register tile
    ran it at 170 GFLOP/s against 228 for the other convs)."""
    if largest_divisor(out_w, MAX_ACCUMULATORS) >= MIN_WIDTH_TILE:
        return out_w
    return -(-out_w // WIDTH_PAD_MULTIPLE) * WIDTH_PAD_MULTIPLE
