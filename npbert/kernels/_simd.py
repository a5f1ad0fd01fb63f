"""The GEMM micro-kernel: a 4 x 16 int32 tile over k-pairs of int16 operands.

microkernel(a16, a_off, lda, wp, w_off, npairs, tile):
    tile[r*16 + c] = sum_{p < npairs} a16[a_off + r*lda + 2p]     * wp[w_off + 32p + 2c]
                                    + a16[a_off + r*lda + 2p + 1] * wp[w_off + 32p + 2c + 1]
    for r < 4, c < 16; a16, wp int16 flat arrays, tile int32 [64]. int32 wrap-around arithmetic
    (callers keep sums in range, see gemm.py).
"""

from __future__ import annotations

import numpy as np

from npbert._jit import njit

MR = 4  # rows of a tile
NR = 16  # columns of a tile (= columns of a weight panel)


@njit
def microkernel_numba(a16, a_off, lda, wp, w_off, npairs, tile):
    """Plain-Numba micro-kernel (the simple version; LLVM vectorises it to 128-bit vpmaddwd)."""
    for i in range(MR * NR):
        tile[i] = 0
    for r in range(MR):
        ao = a_off + r * lda
        for p in range(npairs):
            a0 = np.int32(a16[ao + 2 * p])
            a1 = np.int32(a16[ao + 2 * p + 1])
            wo = w_off + 2 * NR * p
            for c in range(NR):
                tile[r * NR + c] += a0 * np.int32(wp[wo + 2 * c]) + a1 * np.int32(wp[wo + 2 * c + 1])



microkernel = microkernel_numba
