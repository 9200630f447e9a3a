"""Winograd F(m x m, 3 x 3) convolution in the channel-blocked layout, and its schedule space.

Why: a tuned direct 3x3 convolution here already runs near the core's FMA peak (110-116 GFLOP/s
per Zen 4 core), so the only way left to be faster is fewer multiplies. Winograd's minimal
filtering (Lavin & Gray, 2016) computes an m x m output tile from an (m+2) x (m+2) input tile
with (m+2)^2 multiplies per channel pair instead of 9 m^2: 2.25x fewer for F(2,3), 4x for
F(4,3). ncnn does this for its 3x3 stride-1 convs on x86; it is why ncnn beat the direct kernels.

The convolution splits into four stages, each an ordinary TE compute:

    U = G g G^T      weight transform, (alpha, alpha, K/ob, C/ib, ib, ob): done at compile time
                     (the weights are constants: FoldConstant evaluates it; `weight_transform`)
    V = B^T d B      input transform per tile, (alpha, alpha, C/ib, tiles, ib), two 1-D passes
    M = V . U        alpha^2 independent GEMMs over the input channels (block `wino_gemm`)
    Y = A^T M A      output transform per tile back to (N, K/ob, H, W, ob), two 1-D passes

with alpha = m + 2. The matrices are the Cook-Toom ones for the points 0, +-1, +-2, +-1/2 (the
accuracy-optimal choice for F(4,3): about 3e-7 relative error in fp32).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .constants import (
    GEMM_BLOCK,
    INPUT_BLOCK,
    INPUT_ROWS,
    OUTPUT_BLOCK,
    OUTPUT_ROWS,
    WINOGRAD_ACCUMULATORS,
    largest_divisor,
)
from .sched import block_named, epilogue_at, sample_unroll

_POINTS = {2: (0.0, 1.0, -1.0), 4: (0.0, 1.0, -1.0, 0.5, -2.0)}


@cache
def matrices(m: int, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T, G, B^T) of F(m, r), from Cook-Toom interpolation at `_POINTS[m]` plus infinity.

    A^T is m x alpha, G alpha x r, B^T alpha x alpha; Y = A^T [(G g G^T) * (B^T d B)] A.
    """
    points = np.array(_POINTS[m], dtype=np.float64)
    alpha = m + r - 1
    n = alpha - 1  # finite points

    # Vandermonde-style evaluation matrices at the finite points, with the point at infinity last.
    def vander(cols: int) -> np.ndarray:
        v = np.zeros((alpha, cols))
        v[:n] = points[:, None] ** np.arange(cols)[None, :]
        v[n, cols - 1] = 1.0
        return v

    a_t = vander(m).T  # m x alpha
    # Lagrange normalisation: divide G's rows by prod_{j != i} (p_i - p_j).
    norm = np.ones(alpha)
    for i in range(n):
        norm[i] = np.prod([points[i] - points[j] for j in range(n) if j != i])
    g = vander(r) / norm[:, None]
    # B^T: row i holds the coefficients of prod_{j != i} (x - p_j) (the Lagrange basis numerators),
    # the last row those of prod_j (x - p_j).
    b_t = np.zeros((alpha, alpha))
    for i in range(alpha):
        roots = [points[j] for j in range(n) if j != i]
        coeffs = np.poly(roots)[::-1] if roots else np.array([1.0])  # ascending powers
        b_t[i, : len(coeffs)] = coeffs
    return a_t, g, b_t


def _const(matrix: np.ndarray, name: str, dtype: str = "float32"):
    """A small constant matrix as a TE compute (Select chain: folds to constants once unrolled)."""
    from tvm import te
    from tvm import tirx as tir

    rows, cols = matrix.shape

    def value(i, j):
        out = tir.const(0.0, dtype)
        for a in range(rows):
            for b in range(cols):
                if matrix[a, b] != 0.0:
                    out = tir.Select(tir.all(i == a, j == b), tir.const(float(matrix[a, b]), dtype), out)
        return out

    return te.compute((rows, cols), value, name=name, attrs={"const_matrix": True})


def weight_transform(kernel, tile: int):
    """U[e, n, kb, cb, i, o] = sum_{kh, kw} G[e, kh] g[kb, cb, kh, kw, i, o] G[n, kw] (compile time,
    or at load for a `--compress` artifact).

    Computed so that the bits of U do not depend on how the code computing it was compiled (FMA
    contraction, vector width, summation order): FoldConstant at compile time and a `--compress`
    artifact's load-time packing then give the same U. Each row of G is a small integer row over
    a common denominator (F(4,3): 1, 3, 3, 15, 15, 1), so the sum runs over integer multiples of
    float32 weights in float64, where it is exact (9 terms of at most 24 + 9 significant bits);
    one correctly rounded division by the two rows' denominators and one rounding to float32 follow."""
    from tvm import te

    k_chunks, c_chunks, r, s, ib, ob = (int(d) for d in kernel.shape)
    _, g, _ = matrices(tile, r)
    alpha = tile + r - 1
    numer, denom = integer_rows(g)
    gm = _const(numer, "G", "float64")
    dm = _const(denom[:, None] * denom[None, :], "G_denominator", "float64")
    kh = te.reduce_axis((0, r), "kh")
    kw = te.reduce_axis((0, s), "kw")
    wide = te.compute(
        (alpha, alpha, k_chunks, c_chunks, ib, ob),
        lambda e, n, kb, cb, i, o: te.sum(
            gm[e, kh] * gm[n, kw] * kernel[kb, cb, kh, kw, i, o].astype("float64"), axis=[kh, kw]
        ),
        name="wino_weight64",
    )
    return te.compute(
        wide.shape,
        lambda e, n, *rest: (wide(e, n, *rest) / dm[e, n]).astype(kernel.dtype),
        name="wino_weight",
    )


def integer_rows(g: np.ndarray, limit: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(N, d) with g = N / d[:, None], N integer, d the smallest positive integer per row (<= limit)."""
    from fractions import Fraction
    from math import lcm

    numer = np.zeros_like(g, dtype=np.float64)
    denom = np.ones(g.shape[0], dtype=np.float64)
    for row in range(g.shape[0]):
        fractions = [Fraction(float(v)).limit_denominator(limit) for v in g[row]]
        d = lcm(*(f.denominator for f in fractions))
        numer[row] = [float(f * d) for f in fractions]
        denom[row] = d
        if not np.allclose(numer[row] / d, g[row], rtol=0, atol=1e-12):
            raise ValueError(f"row {row} of G is not a small rational row")
    return numer, denom


def conv2d_nchwc_winograd(data, packed, padding, tile: int):
    """TE Winograd conv: data (N, C/ib, H, W, ib), packed weights from `weight_transform`."""
    from tvm import te
    from tvm import tirx as tir

    n_, c_chunks, h, w, ib = (int(d) for d in data.shape)
    alpha, _, k_chunks, _, _, ob = (int(d) for d in packed.shape)
    m = tile
    pad_t, pad_l, pad_b, pad_r = (int(v) for v in padding)
    out_h, out_w = h + pad_t + pad_b - 2, w + pad_l + pad_r - 2
    tiles_h, tiles_w = -(-out_h // m), -(-out_w // m)
    tiles = tiles_h * tiles_w
    a_t, _, b_t = matrices(m)
    bt = _const(b_t, "BT")
    at = _const(a_t, "AT")
    zero = tir.const(0.0, data.dtype)
    padded = te.compute(
        (n_, c_chunks, tiles_h * m + 2, tiles_w * m + 2, ib),
        lambda b, c, y, x, i: tir.if_then_else(
            tir.all(y >= pad_t, y < h + pad_t, x >= pad_l, x < w + pad_l), data[b, c, y - pad_t, x - pad_l, i], zero
        ),
        name="data_pad",
    )
    ra = te.reduce_axis((0, alpha), "ra")
    rows = te.compute(  # B^T d: along the tile's rows
        (n_, alpha, alpha, c_chunks, tiles, ib),
        lambda b, e, x, c, t, i: te.sum(
            bt[e, ra] * padded[b, c, (t // tiles_w) * m + ra, (t % tiles_w) * m + x, i], axis=ra
        ),
        name=INPUT_ROWS,
    )
    rb = te.reduce_axis((0, alpha), "rb")
    # A batch's images are more tiles of the same GEMMs (tile index = image x tiles + tile). At
    # batch 1 the expressions stay exactly as they were, so tuned batch-1 records still apply.
    all_tiles = n_ * tiles

    def image_tile(t):
        return (0, t) if n_ == 1 else (t // tiles, t % tiles)

    def v_value(e, nu, c, t, i):
        b, tt = image_tile(t)
        return te.sum(rows[b, e, rb, c, tt, i] * bt[nu, rb], axis=rb)

    v = te.compute(  # (B^T d) B: along the columns
        (alpha, alpha, c_chunks, all_tiles, ib),
        v_value,
        name=INPUT_BLOCK,
    )
    ic = te.reduce_axis((0, c_chunks * ib), "ic")
    gemm = te.compute(
        (alpha, alpha, k_chunks, all_tiles, ob),
        lambda e, nu, k, t, o: te.sum(v[e, nu, ic // ib, t, ic % ib] * packed[e, nu, k, ic // ib, ic % ib, o], axis=ic),
        name=GEMM_BLOCK,
    )
    rc = te.reduce_axis((0, alpha), "rc")
    out_rows = te.compute(  # A^T M: rows of each tile
        (k_chunks, all_tiles, m, alpha, ob),
        lambda k, t, y, nu, o: te.sum(at[y, rc] * gemm[rc, nu, k, t, o], axis=rc),
        name=OUTPUT_ROWS,
    )
    rd = te.reduce_axis((0, alpha), "rd")
    return te.compute(
        (n_, k_chunks, out_h, out_w, ob),
        lambda b, k, y, x, o: te.sum(
            out_rows[k, (y // m) * tiles_w + x // m + (b * tiles if n_ > 1 else 0), y % m, rd, o] * at[x % m, rd],
            axis=rd,
        ),
        name=OUTPUT_BLOCK,
    )


def is_winograd(sch) -> bool:
    """Whether a (fused) kernel holds this module's Winograd convolution."""
    return block_named(sch, GEMM_BLOCK) is not None


def schedule_winograd(sch, *, t_tile: int | None = None, k_tile: int | None = None, sample: bool = False):
    """Schedule the four stages of a (fused) Winograd kernel.

    input transform  parallel over (channel block x tile), both 1-D passes unrolled in registers
    GEMM             parallel over (alpha^2 x output-block groups); a register tile of `t_tile`
                     tiles x `k_tile` output blocks, reduced over input blocks then lanes,
                     vectorized along the output lane (the searched knobs)
    output transform parallel over (output block x tile rows), both passes unrolled; bias + ReLU
                     (whatever elementwise FuseOps put after the conv) applied per tile
    """
    # Input transform.
    for producer in sch.get_producers(sch.get_sblock(INPUT_ROWS)):
        if sch.get(producer).name_hint.endswith("pad"):
            sch.compute_inline(producer)
    for name in ("BT", "AT"):
        blk = block_named(sch, name)
        if blk is not None:
            sch.compute_inline(blk)
    v = sch.get_sblock(INPUT_BLOCK)
    e, nu, c, t, i, rb = sch.get_loops(v)
    sch.reorder(c, t, e, nu, rb, i)
    outer = sch.fuse(c, t)
    sch.parallel(outer)
    rows = sch.get_sblock(INPUT_ROWS)
    sch.compute_at(rows, outer)
    re_, x, ri, ra = sch.get_loops(rows)[-4:]
    sch.reorder(re_, x, ra, ri)
    for loop in (re_, x, ra):
        sch.unroll(loop)
    sch.vectorize(ri)
    for loop in (e, nu, rb):
        sch.unroll(loop)
    sch.vectorize(i)

    # GEMM.
    gemm = sch.get_sblock(GEMM_BLOCK)
    e, nu, k, t, o, ic = sch.get_loops(gemm)
    (packed,) = [r.source for r in sch.get(gemm).reads if len(r.source.shape) == 6]
    in_lanes = int(packed.shape[4])
    tiles, k_chunks = int(sch.get(t).extent), int(sch.get(k).extent)
    if sample:
        t_factors = sch.sample_perfect_tile(t, n=2, max_innermost_factor=16)
        k_factors = sch.sample_perfect_tile(k, n=2, max_innermost_factor=4)
    else:
        k_tile = k_tile or (2 if k_chunks % 2 == 0 else 1)
        budget = WINOGRAD_ACCUMULATORS.get(int(packed.shape[5]), 12)
        t_tile = t_tile or largest_divisor(tiles, budget // k_tile)
        t_factors, k_factors = [None, t_tile], [None, k_tile]
    ico, ici = sch.split(ic, [None, in_lanes])
    to, ti = sch.split(t, t_factors)
    ko, ki = sch.split(k, k_factors)
    sch.reorder(e, nu, ko, to, ico, ici, ki, ti, o)
    outer = sch.fuse(e, nu, ko)
    sch.parallel(outer)
    sch.vectorize(o)
    sch.unroll(ti)
    sch.unroll(ki)

    # Output transform (+ epilogue).
    out = sch.get_sblock(OUTPUT_BLOCK)
    b, k, y, x, o, rd = sch.get_loops(out)
    m = int(sch.get(sch.get_loops(sch.get_sblock(OUTPUT_ROWS))[2]).extent)
    th, yi = sch.split(y, [None, m])
    tw, xi = sch.split(x, [None, m])
    sch.reorder(b, k, th, tw, yi, xi, rd, o)
    outer = sch.fuse(b, k, th)
    sch.parallel(outer)
    orow = sch.get_sblock(OUTPUT_ROWS)
    sch.compute_at(orow, tw)
    loops = sch.get_loops(orow)
    ry, rnu, ro, rc = loops[-4:]
    sch.reorder(ry, rnu, rc, ro)
    for loop in (ry, rnu, rc):
        sch.unroll(loop)
    sch.vectorize(ro)
    epilogue_at(sch, out, tw)
    for loop in (yi, xi, rd):
        sch.unroll(loop)
    sch.vectorize(o)
    if sample:
        sample_unroll(sch)
    return sch
