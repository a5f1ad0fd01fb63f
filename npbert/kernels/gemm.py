"""Exact integer GEMMs for the CPU: C[M, N] = A[M, K] @ W[N, K].T (W in HF Linear layout, out x in).

Data layout (shapes next to the math):
    a16    int16 [Mpad, lda]       activations widened once per GEMM (zero point subtracted for
                                   8-bit inputs), Mpad = ceil(M/4)*4, lda = 2*KP, KP = ceil(K/2) k-pairs;
                                   padding is zeros, so padded rows/columns add nothing.
    panels int8 [NP, KP, 32]       weights packed offline: panel j holds output columns 16j..16j+15;
                                   panels[j, p, 2c + t] = w[16j + c, 2p + t] (zero padded). The
                                   packed panels ARE the stored weight (one byte per weight); the
                                   micro-kernel sign-extends them to int16 as it loads (vpmovsxbw).
    quads  int8 [NP, KQ, 64]       the other layout (AVX2): quads[j, q, c, t] = safe[16j + c, 4q + t],
                                   for 8-bit activations (int8 + 128 as uint8), see below.
Pair micro-kernel (npbert/kernels/_simd.py): a 4 x 16 int32 tile, for each k-pair p one 32-bit
broadcast of (a[r, 2p], a[r, 2p+1]) per row and two 16-lane int16 loads of the panel; a multiply-add
of int16 pairs into int32 (x86: vpmaddwd) then an int32 add into eight accumulators (vpaddd).

Exactness: vpmaddwd multiplies int16 x int16 into exact int32 products and adds adjacent pairs; the
only case that wraps is both pairs (-32768)*(-32768) = 2 * 2^30 = 2^31, impossible here because one
operand is a widened int8 (|w| <= 128): a pair sum is at most 2 * 32768 * 128 = 2^23. Accumulator
bounds, per int32 sum of K products:
    int8 x int8            |p| <= 2^14      -> K <= 131071 (K_MAX_S8S8)
    (uint8 - zp) x int8    |p| <= 255 * 128 -> K <= 65793  (K_MAX_U8S8; zp in [0, 255])
    int16 x int8           |p| <= 2^22      -> int32 only for K <= 511: gemm_s16s8 runs split-K blocks
                                               of 255 k-pairs (510 k, 510 * 2^22 < 2^31) in int32
                                               and sums the blocks into int64 (exact, no K limit
                                               short of 2^41).
Quad micro-kernel: vpmaddubsw multiplies uint8 x int8 and adds adjacent products into a SATURATING
int16, then vpmaddwd by ones adds those pairs into int32: 32 multiply-adds in three instructions
where the pair kernel needs four. A pair sum a0 w0 + a1 w1 (a in [0, 255]) fits int16 exactly when
the pair's positive weights sum to at most 128 and so do its negative ones; all 7-bit weights pass,
and 5.8e-5 of all-MiniLM-L6-v2's per-tensor 8-bit weights need a fix (README). split_saturating_pairs
takes such a pair's excess out of the panel into a sparse fix list that the micro-kernel adds in its
registers (a8[r, k] * v into one lane), so the result is exact for every weight: the quad panels
hold `safe`, and safe + fixes = w. The int32 sums wrap freely (all arithmetic is mod 2^32) and are
exact whenever the true result fits int32, which the K limits above ensure. Packing picks quads when
at most QUAD_FIX_MAX of the weights need a fix (bench/bench_quad_fixes.py times the trade).
Parallelism: prange over column panels (each thread writes its own 16 columns of C).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import prange, types
from numba.core.errors import TypingError
from numba.extending import overload

from npbert._jit import jit, njit
from npbert.errors import InputError, QuantError
from npbert.kernels import _checks as C
from npbert.kernels._simd import (_NO_FIX, HAVE_U8S7, MR, NR, QUAD_ISA, _microkernel_finish_ir, _microkernel_grouped2_vnni512_ir, _microkernel_grouped_vnni512_ir, _microkernel_quads_dequant_ir, _microkernel_quads2_dequant_ir, _microkernel_quads2x8_dequant_ir,
                                  _microkernel_quads_finish_ir, _microkernel_quads_first_ir, _microkernel_quads_scaled_ir, _microkernel_scaled_ir, _microkernel_u8s7_ir, microkernel)
from npbert.kernels.fused import ACT_CODES, ACT_NONE, activation, activation_into, epilogue, row_scales

__all__ = [
    "PackedInt8Weight",
    "pack_int8_weight",
    "concat_packed",
    "gemm_s8s8",
    "gemm_u8s8",
    "gemm_s16s8",
    "gemm_dequant",
    "gemm_grouped",
    "bgemm_s8s8",
    "bgemm_u8s8",
    "K_MAX_S8S8",
    "K_MAX_U8S8",
]

K_MAX_S8S8 = 131071  # (2^31 - 1) // 2^14
K_MAX_U8S8 = 65793  # (2^31 - 1) // (255 * 128)
CACHE_LINE = 64  # bytes


def aligned_empty(n: int, dtype) -> np.ndarray:
    """An uninitialised 1-D array of n elements of dtype whose data starts on a cache line. NumPy's
    large allocations start 16 bytes past one (malloc's header on an mmap'd block), so a tile row of
    16 float32 (64 bytes) stored there straddles two lines on every store; measured on MiniLM's FF1
    output [1024, 1536]: the dequantizing GEMM 4% slower into a buffer 16 bytes off a line
    (bench/ab_align.py). Weight panels, the executors' scratch and the GEMM's staging use this."""
    dtype = np.dtype(dtype)
    raw = np.empty(n * dtype.itemsize + CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + n * dtype.itemsize].view(dtype)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """a's values as a C-contiguous copy on a cache line (aligned_empty), in a's shape."""
    out = aligned_empty(a.size, a.dtype).reshape(a.shape)
    out[...] = a
    return out


def aligned_concat(parts: list[np.ndarray]) -> np.ndarray:
    """np.concatenate of 1-D arrays of one dtype, written straight into an aligned_empty array."""
    return np.concatenate(parts, out=aligned_empty(sum(p.size for p in parts), parts[0].dtype))


_NO_FLAT = np.zeros(0, dtype=np.int32)  # "no direct store" (int64 results go through the tile)
_NO_FIXES = (_NO_FIX, _NO_FIX, _NO_FIX, _NO_FIX)  # pairs panels hold w itself
K_MAX_FMA = 16448  # groups up to this width keep |acc| <= 255 * 128 * K < 2^29: the float32 scale times acc is exact in float64 (fma == mul + add)
# On VNNI (vpdpbusd: four u8 x s8 products straight into int32) no weight pair can saturate, so quad
# panels hold every 8-bit weight as it is, with no fixes, and "auto" always packs quads: per-channel
# 8-bit weights (8.0e-3 of all-MiniLM-L6-v2's would need a fix, README) run the byte kernel too.
# Tests set it True to keep the fix path covered on VNNI hosts (the fixes are an identity everywhere).
SPLIT_PAIRS = QUAD_ISA == "avx2"
# The attention GEMMs (Q K^T, P V) on quad panels packed per call: only on VNNI, where K's and V's
# full-range int8 codes need no fixes; elsewhere they widen to int16 pairs.
BGEMM_QUADS = QUAD_ISA in ("vnni256", "vnni512")
QUAD_FIX_MAX = 1.0 / 512  # the most fixes per weight quad panels carry; break-even is near 4e-3 (bench/bench_quad_fixes.py)
S16_BLOCK_PAIRS = 255  # k-pairs per int32 block of gemm_s16s8: 510 * 2^22 = 2139095040 < 2^31


# ------------------------------------------------------------------------------------------ packing


def split_saturating_pairs(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """w int8 [N, K] -> (safe int8 [N, K], fix_n, fix_k, fix_v) with safe + sparse(fix) = w, where no
    k-pair (2p, 2p+1) of safe can saturate vpmaddubsw against uint8 activations.

    The pair sum a0 w0 + a1 w1 with a0, a1 in [0, 255] is at most 255 * (w0+ + w1+) and at least
    -255 * (w0- + w1-), so it fits int16 exactly when the positive parts and the negative parts each
    sum to at most 128 (255 * 128 = 32640; 255 * 129 = 32895 does not fit). Only a same-sign pair can
    break that, and only when both are large: 5.8e-5 of all-MiniLM-L6-v2's per-tensor 8-bit weights
    need a fix. Such a pair keeps its larger member; the other becomes sign * (128 - |larger|) and the
    rest of it (one int8 value) goes to the fix list, which the micro-kernel adds in its registers.
    fix_* are int64 [F] sorted by (n // 16, k): column, k, value."""
    N, K = w.shape
    pad = np.zeros((N, K + (K & 1)), np.int16)  # [N, 2 KP]: int16, so |w0| + |w1| cannot wrap
    pad[:, :K] = w
    pr = pad.reshape(N, -1, 2)  # [N, KP, 2]
    pos = np.maximum(pr, 0).sum(axis=2)
    neg = np.maximum(-pr, 0).sum(axis=2)
    bad_n, bad_p = np.nonzero((pos > 128) | (neg > 128))
    pairs = pr[bad_n, bad_p]  # [F, 2], same sign
    big = np.argmax(np.abs(pairs), axis=1)  # which member stays
    small = 1 - big
    kept = np.abs(pairs[np.arange(len(pairs)), big])
    old = pairs[np.arange(len(pairs)), small]
    new = np.sign(old) * (128 - kept)  # |kept| + |new| = 128
    fix_k = 2 * bad_p + small
    safe = np.array(w, copy=True)
    safe[bad_n, fix_k] = new.astype(np.int8)
    order = np.lexsort((fix_k, bad_n // NR))
    return (safe, bad_n[order].astype(np.int64), fix_k[order].astype(np.int64),
            (old - new)[order].astype(np.int64))


class PackedInt8Weight:
    """An int8 weight [N, K] (HF Linear layout) packed for the GEMM kernels, packed once at load time.

    Attributes: n, k; layout: "pairs" (int8 [NP*KP*32], see the module docstring) or "quads"
    (int8 [NP*KQ*64], quads[j, q, c, t] = safe[16j + c, 4q + t], for the uint8 x int8 vpmaddubsw kernel
    on AVX2, see _simd.py); panels: the stored weights (with the fixes, the only copy, unless a kernel
    needs the other layout or per-group panels: pairs(), group_layout() and group_quads_layout() cache
    those, and gemm_grouped its checked plans); fixes (quads only): the
    sparse remainder w - safe of the few k-pairs that could saturate (split_saturating_pairs) as
    (panel starts int64 [NP+1], column in panel, k, value; int64 [F] each; no entries for 7-bit weights);
    row_sums (int32 [N], sum_k w[n, k], for zero-point correction:
    sum_k (a - z) w = sum_k a w - z * row_sums); w (property: the int8 [N, K] unpacked from the
    panels and fixes on each access, read-only; for the reference twins, simulation and saving).
    layout="auto" picks quads on AVX2 where at most QUAD_FIX_MAX of the weights need a fix (all 7-bit
    weights; all-MiniLM-L6-v2's per-tensor 8-bit ones, README), else pairs.
    """

    __slots__ = ("n", "k", "kp", "kq", "layout", "panels", "fixes", "row_sums", "_groups")

    def __init__(self, w: np.ndarray, layout: str = "auto"):
        w = C.array(w, "w", (np.int8,), 2)
        N, K = w.shape
        self.n, self.k = int(N), int(K)
        self.kp = (K + 1) // 2
        self.kq = (K + 3) // 4
        if layout not in ("auto", "pairs", "quads"):
            raise QuantError(f"layout must be 'auto', 'pairs' or 'quads', got {layout!r}")
        if layout == "quads" and not HAVE_U8S7:
            raise QuantError("quad panels need an AVX2 CPU (vpmaddubsw); pack with layout='pairs' or 'auto'")
        split = None
        if layout != "pairs" and HAVE_U8S7 and w.size > 0:
            if not SPLIT_PAIRS:
                layout = "quads"
            else:
                split = split_saturating_pairs(w)
                if layout == "auto":
                    layout = "quads" if split[1].size <= QUAD_FIX_MAX * w.size else "pairs"
        self.layout = layout = "pairs" if layout == "auto" else layout
        NP = -(-N // NR)
        per = 2 if layout == "pairs" else 4  # k values per group (pair / quad)
        ng = self.kp if layout == "pairs" else self.kq
        buf = np.zeros((NP * NR, per * ng), dtype=np.int8)  # [Npad, Kpad]
        buf[:N, :K] = w if (layout == "pairs" or split is None) else split[0]
        # [NP, NR, ng, per] -> [NP, ng, NR, per]: panel-major, then k-group, then column, then member
        self.panels = aligned_copy(buf.reshape(NP, NR, ng, per).transpose(0, 2, 1, 3)).reshape(-1)
        self.fixes = _NO_FIXES
        if layout == "quads":  # panel starts [NP+1] even without fixes (an empty or 7-bit weight)
            self.fixes = (np.zeros(NP + 1, np.int64), _NO_FIX, _NO_FIX, _NO_FIX)
        if layout == "quads" and split is not None:
            _, fn, fk, fv = split
            starts = np.searchsorted(fn // NR, np.arange(NP + 1)).astype(np.int64)
            self.fixes = (starts, fn % NR, fk, fv)
        self.row_sums = w.sum(axis=1, dtype=np.int64).astype(np.int32)  # |sum| <= 128 K fits int32
        self._groups = {}

    @property
    def w(self) -> np.ndarray:
        NP = -(-self.n // NR)
        per, ng = (2, self.kp) if self.layout == "pairs" else (4, self.kq)
        buf = self.panels.reshape(NP, ng, NR, per).transpose(0, 2, 1, 3).reshape(NP * NR, per * ng)
        w = np.array(buf[: self.n, : self.k], copy=True)  # a copy: with one k-group buf is a view of the panels
        starts, fc, fk, fv = self.fixes
        if fv.size:
            panel = np.repeat(np.arange(NP), np.diff(starts))
            w[panel * NR + fc, fk] += fv.astype(np.int8)  # (each (n, k) has at most one fix)
        w.flags.writeable = False
        return w

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.k)

    def pairs(self) -> "PackedInt8Weight":
        """This weight in pair panels (itself, or a repack cached on first use: the int16-activation
        and per-group kernels need pairs)."""
        if self.layout == "pairs":
            return self
        p = self._groups.get(b"pairs")
        if p is None:
            p = self._groups[b"pairs"] = PackedInt8Weight(self.w, "pairs")
        return p

    def group_packs(self, bounds: np.ndarray) -> list["PackedInt8Weight"]:
        """Packed column slices w[:, bounds[g]:bounds[g+1]] (pair panels), one per group, cached per bounds."""
        key = bounds.tobytes()
        packs = self._groups.get(key)
        if packs is None:
            w = self.w
            packs = [PackedInt8Weight(w[:, int(bounds[g]) : int(bounds[g + 1])], "pairs") for g in range(len(bounds) - 1)]
            self._groups[key] = packs
        return packs

    def group_layout(self, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """The group packs' panels in one flat int8 array: (panels, offsets int64 [G], k-pairs int64 [G],
        activation offsets int64 [G], lda); group g's panel j starts at offsets[g] + j * kps[g] * 32, its
        widened activation columns at aoff[g] of each lda-long row. Cached per bounds."""
        key = b"layout" + bounds.tobytes()
        lay = self._groups.get(key)
        if lay is None:
            packs = self.group_packs(bounds)
            kps = np.array([p.kp for p in packs], np.int64)
            offs = np.concatenate([[0], np.cumsum([p.panels.size for p in packs])[:-1]]).astype(np.int64)
            aoff = np.concatenate([[0], np.cumsum(2 * kps)[:-1]]).astype(np.int64)
            lay = self._groups[key] = (aligned_concat([p.panels for p in packs]), offs, kps, aoff,
                                       int(2 * kps.sum()))
        return lay

    def group_quads_layout(self, bounds: np.ndarray) -> tuple:
        """As group_layout, in quad panels (each group's slice split by split_saturating_pairs on its
        own k-pairs): (panels, offsets int64 [G], k-quads int64 [G], activation offsets int64 [G], lda,
        row sums int32 [G, NP*16] (zero padded), fix starts int64 [G, NP+1] into the fix arrays,
        fix columns, ks, values (int64 [F], k within the group)). Cached per bounds."""
        key = b"quads" + bounds.tobytes()
        lay = self._groups.get(key)
        if lay is None:
            w = self.w
            G, NP = len(bounds) - 1, -(-self.n // NR)
            packs = [PackedInt8Weight(w[:, int(bounds[g]) : int(bounds[g + 1])], "quads") for g in range(G)]
            kqs = np.array([p.kq for p in packs], np.int64)
            sizes = [p.panels.size for p in packs]
            offs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
            aoff = np.concatenate([[0], np.cumsum(4 * kqs)[:-1]]).astype(np.int64)
            sums = np.zeros((G, NP * NR), np.int32)
            starts = np.zeros((G, NP + 1), np.int64)
            nfix = 0
            for g, p in enumerate(packs):
                sums[g, : self.n] = p.row_sums
                starts[g] = p.fixes[0] + nfix
                nfix += p.fixes[3].size
            fixes = [np.concatenate([p.fixes[i] for p in packs]).astype(np.int64) for i in (1, 2, 3)]
            lay = self._groups[key] = (aligned_concat([p.panels for p in packs]), offs, kqs, aoff, int(4 * kqs.sum()),
                                       sums, starts, *fixes)
        return lay

    def __repr__(self) -> str:
        return f"PackedInt8Weight(n={self.n}, k={self.k}, layout={self.layout!r})"


def pack_int8_weight(w, layout: str = "auto") -> PackedInt8Weight:
    """Pack an int8 [N, K] weight (read-only / non-contiguous / memory-mapped accepted); layout
    "auto" (quads on AVX2 where at most QUAD_FIX_MAX of the weights need a fix, else pairs), "pairs"
    or "quads" (AVX2 only; any int8 weight, however many fixes it needs)."""
    return PackedInt8Weight(w, layout)


def stackable(parts: list[PackedInt8Weight]) -> bool:
    """Whether concat_packed takes these parts: one K and layout, each N whole panels (a multiple of NR)."""
    return bool(parts) and all(isinstance(p, PackedInt8Weight) and (p.k, p.layout) == (parts[0].k, parts[0].layout)
                               and p.n % NR == 0 for p in parts)


def concat_packed(parts: list[PackedInt8Weight]) -> PackedInt8Weight:
    """The weights stacked along N, [sum N_i, K], as one PackedInt8Weight whose bytes the parts then
    share: each part's panels, row sums and fixes become views of the result's (one copy of the bytes,
    as before). For one GEMM in place of several over the same input (attention's query, key and
    value). The parts need the same K and layout and each N a multiple of the panel width NR, so that
    their panels stack whole; every GEMM with the result equals the parts' GEMMs side by side, bit for
    bit (the same panels, fixes and sums, in the same order)."""
    if not parts or any(not isinstance(p, PackedInt8Weight) for p in parts):
        raise QuantError("concat_packed: pass a non-empty list of PackedInt8Weight")
    if not stackable(parts):
        raise QuantError(f"concat_packed: parts need one K and layout and N a multiple of {NR}; got "
                         f"{[(p.n, p.k, p.layout) for p in parts]}")
    p0 = parts[0]
    fused = PackedInt8Weight.__new__(PackedInt8Weight)
    fused.n, fused.k, fused.kp, fused.kq, fused.layout = sum(p.n for p in parts), p0.k, p0.kp, p0.kq, p0.layout
    fused.panels = aligned_concat([p.panels for p in parts])
    fused.row_sums = np.concatenate([p.row_sums for p in parts])
    fused._groups = {}
    fused.fixes = _NO_FIXES
    if p0.layout == "quads":  # panel starts shift by the fixes before each part; the rest concatenates
        counts = np.cumsum([0] + [p.fixes[3].size for p in parts])
        starts = np.concatenate([p.fixes[0][:-1] + c for p, c in zip(parts, counts)] + [counts[-1:]]).astype(np.int64)
        fused.fixes = (starts, *(np.concatenate([p.fixes[i] for p in parts]).astype(np.int64) for i in (1, 2, 3)))
    o = n0 = 0
    for i, p in enumerate(parts):  # the parts read the result's bytes from now on
        p.panels, o = fused.panels[o:o + p.panels.size], o + p.panels.size
        p.row_sums, n0 = fused.row_sums[n0:n0 + p.n], n0 + p.n
        if p0.layout == "quads":
            f0, f1 = int(counts[i]), int(counts[i + 1])
            p.fixes = (p.fixes[0], *(fused.fixes[j][f0:f1] for j in (1, 2, 3)))
    return fused


def _as_packed(w) -> PackedInt8Weight:
    if isinstance(w, PackedInt8Weight):
        return w
    if isinstance(w, np.ndarray):
        return PackedInt8Weight(w)
    raise QuantError(f"w: pass an int8 [N, K] array or a PackedInt8Weight, got {type(w).__name__}")


# ------------------------------------------------------------------------------------ numba cores


@njit
def _widen_rows(a, r0, r1, c0, c1, zp, out, base, lda):
    """out[base + (i-r0)*lda + k] = a[i, c0+k] - zp for rows r0..r1-1 (zero padded to lda columns)."""
    w = c1 - c0
    for i in range(r0, r1):
        src = a[i, c0:c1]  # slices + range indices: no wrap-around checks, so LLVM vectorises
        o = base + (i - r0) * lda
        dst = out[o : o + lda]  # (vpmovsxbw / vpmovzxbw + vpsubw)
        for k in range(w):
            dst[k] = src[k] - zp
        for k in range(w, lda):
            dst[k] = 0


@jit(parallel=True)
def _widen(a, c0, c1, zp, mpad, lda, out):
    """a[:, c0:c1] - zp, a [M, K] int8/uint8/int16 -> out flat [mpad*lda] (int16; or uint8 where a - zp
    fits it: the quad kernel's int8 + 128), rows >= M and columns >= c1-c0 zero."""
    M = a.shape[0]
    for i in prange(mpad):
        if i < M:
            _widen_rows(a, i, i + 1, c0, c1, zp, out, i * lda, lda)
        else:
            for k in range(lda):
                out[i * lda + k] = 0


@njit
def _pack_panels(b, ng, per, out):
    """b [N, K] int8 (any strides: a transposed view packs without a copy) -> out flat [NP*ng*per*NR],
    the PackedInt8Weight.panels layout in groups of `per` k values: int16 pairs (per 2) for the pair
    kernel, int8 quads (per 4, no fixes: VNNI only) for the quad kernel; zero padded."""
    N, K = b.shape
    NP = (N + NR - 1) // NR
    for j in range(NP):
        for p in range(ng):
            o = (j * ng + p) * per * NR
            for c in range(NR):
                n = j * NR + c
                for t in range(per):
                    k = per * p + t
                    out[o + per * c + t] = b[n, k] if (n < N and k < K) else 0


@njit
def _panel_rows(a16, lda, m, wp, kp, j, n, kblock, out, out_flat, tile):
    """All row tiles of column panel j: out[:, 16j:16j+16], k in blocks of kblock pairs.

    out int32 with one k block: full 4 x 16 tiles are stored by the micro-kernel straight into
    out_flat (out's C-contiguous memory); edge tiles and split-K blocks go through `tile` (int32 [64])
    and are copied / added (int64 out for gemm_s16s8). out_flat is None-like (size 0) when unused."""
    n0 = j * NR
    nn = min(NR, n - n0)
    direct = out_flat.shape[0] > 0 and kblock >= kp
    for i0 in range(0, m, MR):
        mm = min(MR, m - i0)
        if direct and mm == MR and nn == NR:
            microkernel(a16, i0 * lda, lda, wp, j * kp * 2 * NR, kp, out_flat, i0 * n + n0, n)
            continue
        for p0 in range(0, kp, kblock):
            npairs = min(kblock, kp - p0)
            microkernel(a16, i0 * lda + 2 * p0, lda, wp, (j * kp + p0) * 2 * NR, npairs, tile, 0, NR)
            if p0 == 0:
                for r in range(mm):
                    for c in range(nn):
                        out[i0 + r, n0 + c] = tile[r * NR + c]
            else:
                for r in range(mm):
                    for c in range(nn):
                        out[i0 + r, n0 + c] += tile[r * NR + c]


@jit(parallel=True)
def _gemm_core(a16, lda, m, wp, kp, n, kblock, out, out_flat):
    """out[m, n] = a16[:m] @ W.T over kp k-pairs; a16 int16 flat [Mpad*lda], wp int8 flat [NP*kp*32];
    out_flat: out's memory as int32 [m*n] for direct tile stores, or an empty int32 array."""
    NP = (n + NR - 1) // NR
    for j in prange(NP):
        tile = np.empty(MR * NR, dtype=np.int32)  # [4, 16] per-thread edge/split-K tile
        _panel_rows(a16, lda, m, wp, kp, j, n, kblock, out, out_flat, tile)


def _signed_codes(a) -> bool:
    """Whether a holds int8 codes (True) or uint8 ones (False); a compile-time constant in numba."""
    if a.dtype not in (np.int8, np.uint8):
        raise QuantError(f"8-bit codes needed, got {a.dtype}")
    return a.dtype == np.int8


@overload(_signed_codes)
def _signed_codes_ov(a):
    if not (isinstance(a, types.Array) and a.dtype in (types.int8, types.uint8)):
        raise TypingError(f"_signed_codes: an int8 or uint8 array, got {a}")
    signed = a.dtype == types.int8
    return lambda a: signed


@njit
def _pack_quads_rows(bi, kq, wq, sums):
    """_pack_quads for rows of whole k-quads and whole panels (K % 4 == 0, N % 16 == 0: Q K^T's K codes),
    each 4-byte quad copied as one int32 word, and sums[n] = sum_k bi[n, k] (int32).
    # bi int8 [N, K] C-contiguous -> wq int8 [NP*kq*64]"""
    N, K = bi.shape
    b32 = bi.view(np.int32)  # [N, kq]: each word one k-quad of a row
    w32 = wq.view(np.int32)  # [NP, kq, 16]
    for j in range(N // NR):
        for q in range(kq):
            o = (j * kq + q) * NR
            for c in range(NR):
                w32[o + c] = b32[j * NR + c, q]
    for n in range(N):
        row = bi[n]
        sn = np.int32(0)
        for k in range(K):
            sn += np.int32(row[k])
        sums[n] = sn


@jit(parallel=True)
def _bgemm_quads_core(a, zp, b, b_kn, out):
    """_bgemm_core on VNNI: per batch i, b[i] packed into quad panels and a[i] as uint8 codes (int8 a
    + 128, zero point zp + 128; uint8 a read in place where its rows are whole quads and tiles), then
    the quad micro-kernel with the zero-point correction zp_u8 * sum_k b[i][n, k]. Exact: the same
    int32 sums (wrapping alike) as the int16 pair path.   # a [B, M, K], b [B, N, K] -> out [B, M, N]"""
    B, M, K = a.shape
    N = b.shape[2] if b_kn else b.shape[1]
    kq = (K + 3) // 4
    lda = 4 * kq
    mpad = (M + MR - 1) // MR * MR
    NP = (N + NR - 1) // NR
    shift = -128 if _signed_codes(a) else 0  # a - shift in [0, 255]
    zp_u8 = zp - shift
    in_place = shift == 0 and lda == K and mpad == M
    whole = not b_kn and K % 4 == 0 and N % NR == 0
    for i in prange(B):
        wq = np.empty(NP * kq * 4 * NR, dtype=np.int8)  # [NP, kq, 16, 4]
        corr = np.zeros(NP * NR, dtype=np.int32)
        tile = np.empty(MR * NR, dtype=np.int32)
        if whole:  # Q K^T at the usual shapes: word copies
            _pack_quads_rows(b[i], kq, wq, corr)
        else:
            bi = b[i].T if b_kn else b[i]  # [N, K]
            _pack_panels(bi, kq, 4, wq)
            for n in range(N):
                sn = np.int32(0)
                for k in range(K):
                    sn += np.int32(bi[n, k])
                corr[n] = sn
        for n in range(N):
            corr[n] *= np.int32(zp_u8)
        ai = a[i]
        if in_place:
            a8 = ai.reshape(M * K).view(np.uint8)
        else:
            a8 = np.zeros(mpad * lda, dtype=np.uint8)  # [mpad, lda], pad rows and columns 0
            for m in range(M):
                src = ai[m]
                dst = a8[m * lda:m * lda + K]
                for k in range(K):  # (slices: no wrap-around checks, so it vectorises)
                    dst[k] = np.uint8(np.int32(src[k]) - shift)
        oi_flat = out[i].reshape(M * N)
        for j in range(NP):
            _quads_panel(a8, lda, M, wq, kq, N, corr, 0, 0, _NO_FIX, _NO_FIX, _NO_FIX, oi_flat, j, tile)


@njit
def _bgemm_core(a, zp, b, b_kn, out):
    """out[i] = (a[i] - zp) @ b[i].T for each batch i   # a [B, M, K], b [B, N, K] -> out [B, M, N] int32
    (b_kn: b given as [B, K, N], read transposed while packing): quad panels on VNNI, else int16 pairs."""
    if BGEMM_QUADS:
        _bgemm_quads_core(a, zp, b, b_kn, out)
    else:
        _bgemm_pairs_core(a, zp, b, b_kn, out)


@jit(parallel=True)
def _bgemm_pairs_core(a, zp, b, b_kn, out):
    """_bgemm_core through the int16 pair micro-kernel: a widened minus zp, b packed per batch."""
    B, M, K = a.shape
    N = b.shape[2] if b_kn else b.shape[1]
    kp = (K + 1) // 2
    lda = 2 * kp
    mpad = (M + MR - 1) // MR * MR
    NP = (N + NR - 1) // NR
    for i in prange(B):
        a16 = np.empty(mpad * lda, dtype=np.int16)  # [Mpad, lda] per-batch scratch
        wp = np.empty(NP * kp * 2 * NR, dtype=np.int16)  # [NP, kp, 32]
        tile = np.empty(MR * NR, dtype=np.int32)
        ai = a[i]
        _widen_rows(ai, 0, M, 0, K, zp, a16, 0, lda)
        for k in range(M * lda, mpad * lda):
            a16[k] = 0
        if b_kn:
            _pack_panels(b[i].T, kp, 2, wp)  # b[i] [K, N]: packed through its transposed view
        else:
            _pack_panels(b[i], kp, 2, wp)
        oi = out[i]
        oi_flat = oi.reshape(M * N)
        for j in range(NP):
            _panel_rows(a16, lda, M, wp, kp, j, N, kp, oi, oi_flat, tile)


@jit(parallel=True)
def _widen_grouped(a, bounds, zps, aoff, mpad, lda, out):
    """Group g's columns of a (minus zp_g) -> out[i*lda + aoff[g] : ... + 2*kp_g], each group padded to
    whole k-pairs with zeros (a pair never straddles two groups).   # a [M, K] -> out int16 [mpad*lda]"""
    M = a.shape[0]
    G = bounds.shape[0] - 1
    for i in prange(mpad):
        if i < M:
            for g in range(G):
                width = (aoff[g + 1] if g + 1 < G else lda) - aoff[g]
                _widen_rows(a, i, i + 1, bounds[g], bounds[g + 1], zps[g], out, i * lda + aoff[g], width)
        else:
            for k in range(lda):
                out[i * lda + k] = 0


@njit
def _panel_scale_bias(w_scale, has_w_scale, bias, has_bias, n0, nn, width=NR):
    """Columns n0..n0+nn's W scales and biases as float32 [width] each (one panel, or two for the
    4 x 32 tiles); without them 1.0 and -0.0, the exact identities of * and + (padding columns too)."""
    ws = np.ones(width, dtype=np.float32)
    bs = np.full(width, -0.0, dtype=np.float32)
    for c in range(nn):
        if has_w_scale:
            ws[c] = w_scale[n0 + c]
        if has_bias:
            bs[c] = bias[n0 + c]
    return ws, bs


@njit
def _store_edge(yf, mm, nn, out_flat, o, n):
    """The real mm rows x nn columns of a finished [4, 16] edge tile yf into out_flat at o (row stride n)."""
    for r in range(mm):
        out_flat[o + r * n: o + r * n + nn] = yf[r * NR: r * NR + nn]


@jit(parallel=True)
def _gemm_grouped_core(a16, lda, m, aoff, wp, woff, kps, n, scales, w_scale, has_w_scale, bias, has_bias, out_flat):
    """out[m, n] = float32(sum_g scales[g] * acc_g[m, n]) (float64 sum, g ascending) with acc_g the exact
    int32 GEMM of group g's k-pairs; per 4 x 16 tile, all groups in registers / L1 (the float64 sum
    kept in yt), then one float32 store, times w_scale[n] and plus bias[n] in float32 when given (the
    epilogue NumPy would apply afterwards).
    # a16 int16 [mpad*lda], wp int8 (group panels back to back), scales float64 [G] -> out_flat float32 [m*n]"""
    NP = (n + NR - 1) // NR
    G = kps.shape[0]
    for j in prange(NP):
        yt = np.empty(MR * NR, dtype=np.float64)  # [4, 16] the float64 group sum
        yf = np.empty(MR * NR, dtype=np.float32)  # [4, 16] the finished tile (edge columns computed, not stored)
        n0 = j * NR
        nn = min(NR, n - n0)
        ws, bs = _panel_scale_bias(w_scale, has_w_scale, bias, has_bias, n0, nn)
        for i0 in range(0, m, MR):
            mm = min(MR, m - i0)
            for t in range(MR * NR):
                yt[t] = 0.0  # the reference's float64 sum starts from +0.0 too
            for g in range(G - 1):
                _microkernel_scaled_ir(a16, i0 * lda + aoff[g], lda, wp, woff[g] + j * kps[g] * 2 * NR, kps[g], yt, scales[g])
            g = G - 1
            # two calls, not one on a destination picked at run time: that variant made the grouped
            # GEMM 1.3 ms slower at G = 12 (bench/bench_grouped.py, MiniLM FF1 at batch 8)
            if mm == MR and nn == NR:  # the finished tile straight into out
                _microkernel_finish_ir(a16, i0 * lda + aoff[g], lda, wp, woff[g] + j * kps[g] * 2 * NR, kps[g], yt,
                                       scales[g], ws, bs, out_flat, i0 * n + n0, n)
                continue
            _microkernel_finish_ir(a16, i0 * lda + aoff[g], lda, wp, woff[g] + j * kps[g] * 2 * NR, kps[g], yt,
                                   scales[g], ws, bs, yf, 0, NR)
            _store_edge(yf, mm, nn, out_flat, i0 * n + n0, n)


# vnni512: a PEG tile's groups in one kernel call with the float64 sums in registers
GROUPED_IN_REGISTERS = QUAD_ISA == "vnni512"


@njit
def _no_fixes(fix_start, j0, j1):
    """Whether panels j0..j1-1 have no fixes in any group (fix_start int64 [G, NP+1])."""
    for g in range(fix_start.shape[0]):
        if fix_start[g, j0] != fix_start[g, j1]:
            return False
    return True


@jit(parallel=True)
def _grouped_vnni512_panels(a8, lda, m, aoff, wq, woff, kqs, corr, fix_start, fix_c, fix_k, fix_v, n, scales, w_scale,
                            has_w_scale, bias, has_bias, out_flat):
    """_gemm_grouped_quads_core on vnni512: panels in pairs, each pair's whole row tiles as 4 x 32 tiles
    with every group in one call (_microkernel_grouped2_vnni512_ir), other tiles one panel at a time
    (_microkernel_grouped_vnni512_ir, edges through a [4, 16] tile); panels with fixes (AVX2-style
    packing) through the per-group kernels. Bit-identical to those."""
    NP = (n + NR - 1) // NR
    for jj in prange((NP + 1) // 2):
        yf = np.empty(MR * NR, dtype=np.float32)
        ya = np.empty(MR * NR, dtype=np.float64)
        yb = np.empty(MR * NR, dtype=np.float64)
        j = 2 * jj
        first_row = 0
        if j + 1 < NP and (j + 2) * NR <= n and _no_fixes(fix_start, j, j + 2):
            ws, bs = _panel_scale_bias(w_scale, has_w_scale, bias, has_bias, j * NR, 2 * NR, 2 * NR)
            first_row = m - m % MR  # the pair's last rows: panel by panel below
            for i0 in range(0, first_row, MR):
                _microkernel_grouped2_vnni512_ir(a8, i0 * lda, lda, wq, woff, j, kqs, aoff, corr, NP, scales, ws, bs,
                                                 out_flat, i0 * n + j * NR, n)
        for jp in range(j, min(j + 2, NP)):
            n0 = jp * NR
            nn = min(NR, n - n0)
            ws1, bs1 = _panel_scale_bias(w_scale, has_w_scale, bias, has_bias, n0, nn)
            if not _no_fixes(fix_start, jp, jp + 1):
                _grouped_quads_panel(a8, lda, m, aoff, wq, woff, kqs, corr, fix_start, fix_c, fix_k, fix_v, n, scales,
                                     ws1, bs1, out_flat, jp, ya, yb, yf)
                continue
            for i0 in range(first_row, m, MR):
                if m - i0 >= MR and nn == NR:
                    _microkernel_grouped_vnni512_ir(a8, i0 * lda, lda, wq, woff, jp, kqs, aoff, corr, NP, scales, ws1, bs1,
                                                    out_flat, i0 * n + n0, n)
                else:
                    _microkernel_grouped_vnni512_ir(a8, i0 * lda, lda, wq, woff, jp, kqs, aoff, corr, NP, scales, ws1, bs1,
                                                    yf, 0, NR)
                    _store_edge(yf, min(MR, m - i0), nn, out_flat, i0 * n + n0, n)


@njit
def _gemm_grouped_quads_core(a8, lda, m, aoff, wq, woff, kqs, corr, fix_start, fix_c, fix_k, fix_v, n, scales, w_scale,
                             has_w_scale, bias, has_bias, out_flat):
    """_gemm_grouped_core on quad panels: acc_g = sum_{k in g} a8 safe_g + group g's fixes - corr[g],
    complete in the micro-kernel's registers before it is scaled; a8 the uint8 codes (int8 ones + 128),
    corr[g, n] = (zp_g + 128 for int8 codes, zp_g for uint8) * sum_{k in g} w[n, k] (int32 [G, NP*16], flat),
    fix_start [G, NP+1]. Two row tiles go through each group back to back (ya, yb): their float64 sums
    are independent, so one tile's k loop runs while the other's sum waits on its accumulators
    (bench/bench_grouped.py times it). Same float64 sum, rounding and store as the pairs core: the
    two are bit-identical.   # a8 uint8 [mpad*lda] -> out_flat float32 [m*n]"""
    if GROUPED_IN_REGISTERS:
        _grouped_vnni512_panels(a8, lda, m, aoff, wq, woff, kqs, corr, fix_start, fix_c, fix_k, fix_v, n, scales, w_scale,
                                has_w_scale, bias, has_bias, out_flat)
    else:
        _grouped_quads_panels(a8, lda, m, aoff, wq, woff, kqs, corr, fix_start, fix_c, fix_k, fix_v, n, scales, w_scale,
                              has_w_scale, bias, has_bias, out_flat)


@jit(parallel=True)
def _grouped_quads_panels(a8, lda, m, aoff, wq, woff, kqs, corr, fix_start, fix_c, fix_k, fix_v, n, scales, w_scale,
                          has_w_scale, bias, has_bias, out_flat):
    """_gemm_grouped_quads_core panel by panel, group by group (the per-group kernels)."""
    NP = (n + NR - 1) // NR
    for j in prange(NP):
        ya = np.empty(MR * NR, dtype=np.float64)
        yb = np.empty(MR * NR, dtype=np.float64)
        yf = np.empty(MR * NR, dtype=np.float32)
        n0 = j * NR
        nn = min(NR, n - n0)
        ws, bs = _panel_scale_bias(w_scale, has_w_scale, bias, has_bias, n0, nn)
        _grouped_quads_panel(a8, lda, m, aoff, wq, woff, kqs, corr, fix_start, fix_c, fix_k, fix_v, n, scales, ws, bs,
                             out_flat, j, ya, yb, yf)


@njit
def _grouped_quads_panel(a8, lda, m, aoff, wq, woff, kqs, corr, fix_start, fix_c, fix_k, fix_v, n, scales, ws, bs,
                         out_flat, j, ya, yb, yf):
    """Panel j of the grouped quad GEMM through the per-group kernels: two row tiles go through each
    group back to back (ya, yb float64 [64]; edges through yf); ws, bs: the panel's float32 [16]."""
    NP = (n + NR - 1) // NR
    G = kqs.shape[0]
    n0 = j * NR
    nn = min(NR, n - n0)
    for i0 in range(0, m, 2 * MR):
        i1 = i0 + MR
        two = i1 < m
        if G == 1:  # the finish adds onto ya / yb: zeros (with more groups the first group writes them)
            for t in range(MR * NR):
                ya[t] = 0.0
                yb[t] = 0.0
        for g in range(G - 1):
            w_off = woff[g] + j * kqs[g] * 4 * NR
            c_off = (g * NP + j) * NR
            f0, f1 = fix_start[g, j], fix_start[g, j + 1]
            if g == 0:  # onto zero: the same fma, without reading or zeroing ya / yb
                _microkernel_quads_first_ir(a8, i0 * lda + aoff[g], lda, wq, w_off, kqs[g], corr, c_off, fix_c, fix_k,
                                            fix_v, f0, f1, ya, scales[g])
                if two:
                    _microkernel_quads_first_ir(a8, i1 * lda + aoff[g], lda, wq, w_off, kqs[g], corr, c_off, fix_c,
                                                fix_k, fix_v, f0, f1, yb, scales[g])
                continue
            _microkernel_quads_scaled_ir(a8, i0 * lda + aoff[g], lda, wq, w_off, kqs[g], corr, c_off, fix_c, fix_k,
                                         fix_v, f0, f1, ya, scales[g])
            if two:
                _microkernel_quads_scaled_ir(a8, i1 * lda + aoff[g], lda, wq, w_off, kqs[g], corr, c_off, fix_c, fix_k,
                                             fix_v, f0, f1, yb, scales[g])
        g = G - 1
        w_off = woff[g] + j * kqs[g] * 4 * NR
        c_off = (g * NP + j) * NR
        f0, f1 = fix_start[g, j], fix_start[g, j + 1]
        if m - i1 >= MR and nn == NR:  # both tiles whole: straight into out (the common case)
            _microkernel_quads_finish_ir(a8, i0 * lda + aoff[g], lda, wq, w_off, kqs[g], corr, c_off, fix_c, fix_k,
                                         fix_v, f0, f1, ya, scales[g], ws, bs, out_flat, i0 * n + n0, n)
            _microkernel_quads_finish_ir(a8, i1 * lda + aoff[g], lda, wq, w_off, kqs[g], corr, c_off, fix_c, fix_k,
                                         fix_v, f0, f1, yb, scales[g], ws, bs, out_flat, i1 * n + n0, n)
            continue
        for half in range(2 if two else 1):  # an edge: each tile through yf, its real rows and columns copied
            it = i0 + half * MR
            _microkernel_quads_finish_ir(a8, it * lda + aoff[g], lda, wq, w_off, kqs[g], corr, c_off, fix_c, fix_k,
                                         fix_v, f0, f1, ya if half == 0 else yb, scales[g], ws, bs, yf, 0, NR)
            _store_edge(yf, min(MR, m - it), nn, out_flat, it * n + n0, n)


@jit(parallel=True)
def _axpy_rows(y, s, acc):
    """y[m, n] += s * float64(acc[m, n])   # float64 [M, N] += float64 * int [M, N]"""
    M, N = y.shape
    for m in prange(M):
        for n in range(N):
            y[m, n] += s * np.float64(acc[m, n])


@njit
def _quads_panel(a8, lda, m, wq, kq, n, corr, f0, f1, fix_c, fix_k, fix_v, out_flat, j, tile):
    """Panel j of an int32 quad GEMM: its 4 x 16 tiles straight into out_flat [m*n], edge tiles through
    tile (int32 [64]); fixes f0:f1 added in the micro-kernel's registers."""
    n0 = j * NR
    nn = min(NR, n - n0)
    for i0 in range(0, m, MR):
        mm = min(MR, m - i0)
        if mm == MR and nn == NR:
            _microkernel_u8s7_ir(a8, i0 * lda, lda, wq, j * kq * 4 * NR, kq, corr, n0, fix_c, fix_k, fix_v, f0, f1,
                                 out_flat, i0 * n + n0, n)
            continue
        _microkernel_u8s7_ir(a8, i0 * lda, lda, wq, j * kq * 4 * NR, kq, corr, n0, fix_c, fix_k, fix_v, f0, f1,
                             tile, 0, NR)
        for r in range(mm):
            for c in range(nn):
                out_flat[(i0 + r) * n + n0 + c] = tile[r * NR + c]


@jit(parallel=True)
def _gemm_quads_core(a8, lda, m, wq, kq, n, corr, fix_start, fix_c, fix_k, fix_v, out_flat):
    """out[m, n] = a8[:m] @ W.T - corr over kq k-quads (u8 x s8 micro-kernel on the safe panels), panel
    j's fixes fix_start[j]:fix_start[j+1] added in the micro-kernel's registers. corr int32 [NP*16].
    All int32 arithmetic wraps (vpaddd), so the sum is exact whenever the true result fits int32."""
    NP = (n + NR - 1) // NR
    for j in prange(NP):
        tile = np.empty(MR * NR, dtype=np.int32)
        _quads_panel(a8, lda, m, wq, kq, n, corr, fix_start[j], fix_start[j + 1], fix_c, fix_k, fix_v, out_flat, j,
                     tile)


# vnni512: the dequantizing GEMM runs pairs of whole panels as 4 x 32 tiles (_microkernel_quads2_dequant_ir).
# Like BGEMM_QUADS and GROUPED_IN_REGISTERS, compiled in as a constant: setting it later changes nothing.
TWO_PANELS = QUAD_ISA == "vnni512"


@njit
def _dequant_panel(a8, lda, m, wq, kq, n, corr, fix_start, fix_c, fix_k, fix_v, rs, w_scale, bias, has_bias, out_flat,
                   j, yf, first_row):
    """Panel j of _gemm_quads_dequant_core from row first_row on: its 4 x 16 tiles, edge tiles through yf."""
    n0 = j * NR
    nn = min(NR, n - n0)
    f0, f1 = fix_start[j], fix_start[j + 1]
    ws, bs = _panel_scale_bias(w_scale, True, bias, has_bias, n0, nn)
    for i0 in range(first_row, m, MR):
        mm = min(MR, m - i0)
        if mm == MR and nn == NR:
            _microkernel_quads_dequant_ir(a8, i0 * lda, lda, wq, j * kq * 4 * NR, kq, corr, n0, fix_c, fix_k, fix_v,
                                          f0, f1, rs, i0, ws, bs, out_flat, i0 * n + n0, n)
            continue
        _microkernel_quads_dequant_ir(a8, i0 * lda, lda, wq, j * kq * 4 * NR, kq, corr, n0, fix_c, fix_k, fix_v,
                                      f0, f1, rs, i0, ws, bs, yf, 0, NR)
        _store_edge(yf, mm, nn, out_flat, i0 * n + n0, n)


@njit
def _gemm_quads_dequant_core(a8, lda, m, wq, kq, n, corr, fix_start, fix_c, fix_k, fix_v, rs, w_scale, bias, has_bias,
                             out_flat):
    """out[m, n] = float32(float64(acc[m, n]) * rs[m]) * w_scale[n] + bias[n], acc = _gemm_quads_core's
    int32 result, dequantized in the micro-kernel's registers: the int32 [M, N] never reaches memory.
    rs float64 [mpad] (rows past m: 0).   # a8 uint8 [mpad*lda] -> out_flat float32 [m*n]
    On vnni512 (TWO_PANELS) panels go in pairs (_dequant_panel_pairs), else one by one."""
    if TWO_PANELS:  # (a constant: numba prunes the other branch before typing it)
        _dequant_panel_pairs(a8, lda, m, wq, kq, n, corr, fix_start, fix_c, fix_k, fix_v, rs, w_scale, bias, has_bias,
                             out_flat)
    else:
        _dequant_panels(a8, lda, m, wq, kq, n, corr, fix_start, fix_c, fix_k, fix_v, rs, w_scale, bias, has_bias,
                        out_flat)


@jit(parallel=True)
def _dequant_panels(a8, lda, m, wq, kq, n, corr, fix_start, fix_c, fix_k, fix_v, rs, w_scale, bias, has_bias, out_flat):
    """_gemm_quads_dequant_core panel by panel."""
    NP = (n + NR - 1) // NR
    for j in prange(NP):
        yf = np.empty(MR * NR, dtype=np.float32)
        _dequant_panel(a8, lda, m, wq, kq, n, corr, fix_start, fix_c, fix_k, fix_v, rs, w_scale, bias, has_bias,
                       out_flat, j, yf, 0)


@jit(parallel=True)
def _dequant_panel_pairs(a8, lda, m, wq, kq, n, corr, fix_start, fix_c, fix_k, fix_v, rs, w_scale, bias, has_bias,
                         out_flat):
    """_gemm_quads_dequant_core on vnni512: two whole panels without fixes run as 8 x 32 tiles, then a
    4 x 32 one (the same sums, stored by the same rounding steps); their last rows, an odd last panel
    and panels with fixes panel by panel."""
    NP = (n + NR - 1) // NR
    for jj in prange((NP + 1) // 2):
        yf = np.empty(MR * NR, dtype=np.float32)
        j = 2 * jj
        first_row = 0
        if j + 1 < NP and (j + 2) * NR <= n and fix_start[j] == fix_start[j + 2]:
            n0 = j * NR
            ws, bs = _panel_scale_bias(w_scale, True, bias, has_bias, n0, 2 * NR, 2 * NR)
            first_row = m - m % MR  # the pair's last rows: panel by panel below
            m8 = m - m % (2 * MR)
            for i0 in range(0, m8, 2 * MR):  # 8 x 32 tiles, then a 4 x 32 one
                _microkernel_quads2x8_dequant_ir(a8, i0 * lda, lda, wq, j * kq * 4 * NR, (j + 1) * kq * 4 * NR, kq,
                                                 corr, n0, rs, i0, ws, bs, out_flat, i0 * n + n0, n)
            for i0 in range(m8, first_row, MR):
                _microkernel_quads2_dequant_ir(a8, i0 * lda, lda, wq, j * kq * 4 * NR, (j + 1) * kq * 4 * NR, kq, corr,
                                               n0, rs, i0, ws, bs, out_flat, i0 * n + n0, n)
        for jp in range(j, min(j + 2, NP)):
            _dequant_panel(a8, lda, m, wq, kq, n, corr, fix_start, fix_c, fix_k, fix_v, rs, w_scale, bias, has_bias,
                           out_flat, jp, yf, first_row)


# ---------------------------------------------------------------------------------------- wrappers


_SCRATCH = threading.local()


def _scratch(n: int, dtype) -> np.ndarray:
    """A per-thread buffer of at least n elements of dtype for the prepared activations (int16 widened,
    or uint8 for the quad kernel), kept between calls: a fresh multi-megabyte array per GEMM costs
    page faults comparable to a small GEMM."""
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    buf = bufs.get(dtype)  # keyed by the dtype as passed (np.int16 / np.uint8): no np.dtype() per call
    if buf is None or buf.size < n:
        buf = bufs[dtype] = aligned_empty(max(n, 1 << 16), dtype)
    return buf[:n]


def _run(a: np.ndarray, zp: int, c0: int, c1: int, pw: PackedInt8Weight, out_dtype, kblock: int | None, out=None,
         name: str = "gemm"):
    """Widen a[:, c0:c1] - zp to int16 and multiply by pw; out [M, N] of out_dtype (written into `out`
    when given)."""
    M = a.shape[0]
    N, kp = pw.n, pw.kp
    out = C.out_array(out, (M, N), out_dtype, name)
    if M == 0 or N == 0 or kp == 0:
        out[...] = 0
        return out
    lda = 2 * kp
    mpad = -(-M // MR) * MR
    a16 = _scratch(mpad * lda, np.int16)
    _widen(a, c0, c1, zp, mpad, lda, a16)
    out_flat = out.reshape(-1) if out.dtype == np.int32 else _NO_FLAT
    _gemm_core(a16, lda, M, pw.panels, kp, N, kp if kblock is None else kblock, out, out_flat)
    return out


def _quads_operands(a: np.ndarray, zp: int, pw: PackedInt8Weight):
    """a as the quad kernel's padded uint8 rows (int8 a + 128) and the zero-point correction row:
    (a8 [mpad * lda], lda, corr int32 [NP * 16]). A C-contiguous uint8 a whose rows need no padding
    (M a multiple of 4, K of 4) is that layout already and is passed as it is, without a copy."""
    shift, zp_u8 = (-128, zp + 128) if a.dtype == np.int8 else (0, zp)  # int8 a -> a + 128 in [0, 255]
    lda = 4 * pw.kq
    M = a.shape[0]
    if a.dtype == np.uint8 and M % MR == 0 and a.shape[1] == lda and a.flags.c_contiguous:
        a8 = a.reshape(-1)
    else:
        mpad = -(-M // MR) * MR
        a8 = _scratch(mpad * lda, np.uint8)
        _widen(a, 0, a.shape[1], shift, mpad, lda, a8)  # (widen's a - zp, stored as uint8 here)
    return a8, lda, _quads_corr(pw, zp_u8)


def _quads_corr(pw: PackedInt8Weight, zp_u8: int) -> np.ndarray:
    """The quad kernel's zero-point correction row for uint8 codes with zero point zp_u8: int32
    [NP * 16], zp_u8 times each output's weight sum (the fixes add a * fix only), cached per weight."""
    key = b"corr%d" % zp_u8  # (bytes: tuple keys are gemm_grouped's plans)
    corr = pw._groups.get(key)  # the same few zero points call after call
    if corr is None:
        corr = np.zeros(-(-pw.n // NR) * NR, np.int32)
        corr[:pw.n] = np.int32(zp_u8) * pw.row_sums
        pw._groups[key] = corr
    return corr


def _run_quads(a: np.ndarray, zp: int, pw: PackedInt8Weight, out, name: str):
    """int32 [M, N] = sum_k (a - zp) w with quad panels: int8 a is offset to uint8 (a + 128, so the
    zero point becomes zp + 128), then sum_k a_u8 safe + sum a_u8 fix - zp_u8 * row_sums, all in the
    micro-kernel. The terms may wrap int32 (for 8-bit weights near the K limits);
    all of it is arithmetic mod 2^32, so the result is exact wherever the true one fits int32, which
    the callers' K limits ensure."""
    M = a.shape[0]
    N, kq = pw.n, pw.kq
    out = C.out_array(out, (M, N), np.int32, name, (a,))  # (a may be read in place: no overlap)
    if M == 0 or N == 0 or kq == 0:
        out[...] = 0
        return out
    a8, lda, corr = _quads_operands(a, zp, pw)
    _gemm_quads_core(a8, lda, M, pw.panels, kq, N, corr, *pw.fixes, out.reshape(-1))
    return out


def _check_mk(a: np.ndarray, pw: PackedInt8Weight, name: str):
    if a.shape[1] != pw.k:
        raise InputError(f"{name}: a has K={a.shape[1]} columns but w is [N={pw.n}, K={pw.k}]; pass a [M, {pw.k}]")


def _check_k(K: int, kmax: int, what: str):
    if K > kmax:
        raise QuantError(
            f"{what}: K={K} exceeds {kmax}, beyond which the int32 accumulator can overflow; "
            "split K into blocks (e.g. via gemm_grouped) or use gemm_s16s8 (int64 accumulation)"
        )


def _u8_zp(zp, name="a_zero_point") -> int:
    zp = C.int_arg(zp, name)
    if not 0 <= zp <= 255:
        raise QuantError(f"{name}={zp}: a uint8 zero point must lie in [0, 255]")
    return zp


def gemm_s8s8(a, w, out=None) -> np.ndarray:
    """Exact int8 GEMM: a int8 [M, K], w PackedInt8Weight or int8 [N, K] -> int32 [M, N] = a @ w.T
    (into `out`, an int32 [M, N] C-contiguous array, when given)."""
    pw = _as_packed(w)
    a = C.as_c(C.array(a, "a", (np.int8,), 2))
    _check_mk(a, pw, "gemm_s8s8")
    _check_k(pw.k, K_MAX_S8S8, "gemm_s8s8")
    if pw.layout == "quads":
        return _run_quads(a, 0, pw, out, "gemm_s8s8")
    return _run(a, 0, 0, pw.k, pw, np.int32, None, out, "gemm_s8s8")


def gemm_u8s8(a, a_zero_point: int, w, out=None) -> np.ndarray:
    """Exact uint8 x int8 GEMM: int32 [M, N] = sum_k (a[m, k] - zp) * w[n, k]; zp in [0, 255].
    The zero point is subtracted while widening a to int16 (exact: a - zp lies in [-255, 255]), which
    equals the row_sums correction sum_k a w - zp * row_sums without the intermediate."""
    pw = _as_packed(w)
    zp = _u8_zp(a_zero_point)
    a = C.as_c(C.array(a, "a", (np.uint8,), 2))
    _check_mk(a, pw, "gemm_u8s8")
    _check_k(pw.k, K_MAX_U8S8, "gemm_u8s8")
    if pw.layout == "quads":
        return _run_quads(a, zp, pw, out, "gemm_u8s8")
    return _run(a, zp, 0, pw.k, pw, np.int32, None, out, "gemm_u8s8")


def gemm_dequant(a, a_zero_point: int, w, row_scale, w_scale, bias=None, act=None, out=None) -> np.ndarray:
    """A quantized linear layer's float output from its integer GEMM, in one pass where it can:
    float32 [M, N] = act(float32(float64(acc[m, n]) * row_scale[m]) * w_scale[n] + bias[n]),
    acc = sum_k (a[m, k] - zp) * w[n, k] exact (int8 a with zp 0, as gemm_s8s8; uint8 a, as gemm_u8s8).

    row_scale: float32 [M] (dynamic: each row's activation scale) or a scalar (static per tensor);
    w_scale float32 [N]; bias float32 [N] or None; act an activation name of fused.ACT_CODES or None;
    out a writeable C-contiguous float32 [M, N], else a new array. Bit-identical to
    fused.epilogue(gemm_*(a, ...), row_scale, w_scale, bias, act). On quad panels the micro-kernel
    dequantizes its tile in the registers (the int32 result is never stored), and the activation runs
    as its own pass over the float result; other layouts run the two steps.
    """
    if act not in ACT_CODES:
        raise InputError(f"gemm_dequant: unknown activation {act!r}; valid: {sorted(k for k in ACT_CODES if k)} or None")
    pw = _as_packed(w)
    a = C.as_c(C.array(a, "a", (np.int8, np.uint8), 2))
    if a.dtype == np.int8:
        zp = C.int_arg(a_zero_point, "a_zero_point")
        if zp != 0:
            raise QuantError(f"gemm_dequant: int8 a takes a_zero_point 0, got {zp}; pass uint8 codes for an asymmetric grid")
    else:
        zp = _u8_zp(a_zero_point)
    _check_mk(a, pw, "gemm_dequant")
    _check_k(pw.k, K_MAX_S8S8 if a.dtype == np.int8 else K_MAX_U8S8, "gemm_dequant")
    M, N = a.shape[0], pw.n
    if pw.layout != "quads" or M == 0 or N == 0 or pw.kq == 0:
        acc = gemm_s8s8(a, pw) if a.dtype == np.int8 else gemm_u8s8(a, zp, pw)
        return epilogue(acc, row_scale, w_scale, bias, act, out)
    out = C.out_array(out, (M, N), np.float32, "gemm_dequant", (a,))
    rs = row_scales(row_scale, M, "gemm_dequant")  # float64 [M], then padded to whole tiles (rows past M: 0)
    if M % MR:
        rs = np.concatenate([rs, np.zeros(MR - M % MR)])
    ws = C.f32_vector(w_scale, N, "gemm_dequant: w_scale")
    bs = None if bias is None else C.f32_vector(bias, N, "gemm_dequant: bias")
    return dequant_into(a, zp, pw, rs, ws, bs, ACT_CODES[act], out)


def dequant_into(a, zp: int, pw: PackedInt8Weight, rs, ws, bias, act_code: int, out) -> np.ndarray:
    """gemm_dequant on quad panels without its checks, for a caller that built every argument as
    gemm_dequant would (QuantExecutor's hot path, where those checks cost more than a batch-1 GEMM's
    dispatch): a uint8 / int8 [M, K] C-contiguous, M >= 1, within the K limit, zp as gemm_dequant takes
    it, rs float64 [M rounded up to whole tiles] (rows past M: 0), ws and bias (or None) float32 [N]
    C-contiguous, act_code a value of fused.ACT_CODES, out float32 [M, N] C-contiguous, not overlapping
    a. Returns out."""
    a8, lda, corr = _quads_operands(a, zp, pw)
    _gemm_quads_dequant_core(a8, lda, a.shape[0], pw.panels, pw.kq, pw.n, corr, *pw.fixes, rs, ws,
                             _NO_VEC if bias is None else bias, bias is not None, out.reshape(-1))
    if act_code != ACT_NONE:
        activation_into(out, act_code)
    return out


def gemm_s16s8(a, w, a_zero_point: int = 0) -> np.ndarray:
    """Exact int16 x int8 GEMM: int64 [M, N] = sum_k (a[m, k] - zp) * w[n, k].

    Split-K: int32 accumulation in blocks of 255 k-pairs (510 products of at most 2^22 each, < 2^31),
    blocks summed into int64; the zero point is applied in int64 as - zp * row_sums (a - zp may not
    fit int16). int64 per product would halve the SIMD width for no gain in exactness.
    """
    pw = _as_packed(w)
    zp = C.int_arg(a_zero_point, "a_zero_point")
    if not -(2**31) <= zp < 2**31:
        raise QuantError(f"a_zero_point={zp}: pass a zero point in the int32 range")
    a = C.as_c(C.array(a, "a", (np.int16,), 2))
    _check_mk(a, pw, "gemm_s16s8")
    out = _run(a, 0, 0, pw.k, pw.pairs(), np.int64, S16_BLOCK_PAIRS)
    if zp != 0:
        out -= np.int64(zp) * pw.row_sums.astype(np.int64)[None, :]
    return out


_NO_VEC = np.zeros(1, np.float32)
_PLANS_MAX = 64  # cached gemm_grouped plans per weight (a model has one per layer; more means callers vary them)


def _check_grouped(dtype, K: int, group_bounds, group_zero_points, group_scales):
    """Checked (bounds int64 [G+1], zero points, scales float32 [G]); 8-bit zero points as int64 [G],
    each in its dtype's range and checked as a Python int before any cast."""
    bounds = C.group_bounds(group_bounds, K)
    G = bounds.size - 1
    zps = np.asarray(group_zero_points)
    scales = np.asarray(group_scales, dtype=np.float32)
    if zps.shape != (G,) or scales.shape != (G,):
        raise InputError(f"gemm_grouped: zero points and scales must have shape [{G}], got {zps.shape}, {scales.shape}")
    if not np.all(np.isfinite(scales)):
        raise QuantError("gemm_grouped: group scales must be finite")
    if dtype == np.int16:
        return bounds, zps, scales
    lo_z, hi_z = (0, 255) if dtype == np.uint8 else (-128, 127)
    if np.issubdtype(zps.dtype, np.integer) and np.can_cast(zps.dtype, np.int64):  # (uint64 would wrap)
        zp_list = zps.astype(np.int64)
    else:  # integral floats, Python ints of any size: checked as Python ints before any cast
        zp_list = [C.int_arg(z, "group_zero_points[g]") for z in zps]
    bad = [g for g in range(G) if not lo_z <= zp_list[g] <= hi_z]
    if bad:
        g = bad[0]
        raise QuantError(f"gemm_grouped: zero point {zp_list[g]} of group {g} outside [{lo_z}, {hi_z}] for {np.dtype(dtype)}")
    widths = np.diff(bounds)
    if widths.max() > K_MAX_U8S8:
        g = int(np.argmax(widths))
        _check_k(int(widths[g]), K_MAX_U8S8, f"gemm_grouped group {g}")
    return bounds, np.asarray(zp_list, np.int64), scales


def _grouped_plan(pw: PackedInt8Weight, dtype, K: int, group_bounds, group_zero_points, group_scales):
    """(core, args, in_place) of an 8-bit gemm_grouped call (core None: a group wider than K_MAX_FMA,
    for the split-K path): args = (bounds, per-group widen offsets, activation
    offsets, lda, the core's weight / correction arguments..., scales float64 [G]); in_place: uint8
    codes whose groups are whole k-quads are the quad core's layout already (read without widening,
    when M is whole row tiles too). Cached on the weight,
    keyed by the arguments' bytes: a PEG layer calls with the same groups, zero points and scales every
    time, so the checks and the zero-point corrections (tens of microseconds of Python per call) run
    once. Arguments that have no plain bytes (object arrays,
    lists of Python ints beyond int64) are checked on every call instead."""
    gb, zp_in, sc_in = np.asarray(group_bounds), np.asarray(group_zero_points), np.asarray(group_scales)
    key = None
    if gb.dtype.kind in "iu" and zp_in.dtype.kind in "iuf" and sc_in.dtype.kind in "iuf":
        # dtype.str, not .char: it names the byte order, so '>i2' and '<i2' bytes never share a plan
        key = (b"plan", np.dtype(dtype).str, K, gb.dtype.str, gb.shape, gb.tobytes(), zp_in.dtype.str, zp_in.shape,
               zp_in.tobytes(), sc_in.dtype.str, sc_in.shape, sc_in.tobytes())
        plan = pw._groups.get(key)
        if plan is not None:
            return plan
    bounds, zp_arr, scales = _check_grouped(dtype, K, gb, zp_in, sc_in)
    G = bounds.size - 1
    if np.diff(bounds).max() > K_MAX_FMA:  # the tile kernels' fma needs exact products: the split-K path
        plan = (None, (), False)
    elif pw.layout == "quads":  # the weight qualified for quad panels: its group slices run them too
        wq, woff, kqs, aoff, lda, sums, fstart, fc, fk, fv = pw.group_quads_layout(bounds)
        shift = -128 if dtype == np.int8 else 0  # int8 codes + 128 -> uint8, zero points with them
        corr = ((zp_arr - shift).astype(np.int32)[:, None] * sums).reshape(-1)  # wraps like the kernel: mod 2^32
        in_place = dtype == np.uint8 and lda == K and np.array_equal(aoff, bounds[:-1])
        plan = (_gemm_grouped_quads_core, (bounds, np.full(G, shift, np.int64), aoff, lda, wq, woff, kqs, corr, fstart,
                                           fc, fk, fv, scales.astype(np.float64)), in_place)
    else:
        wp, woff, kps, aoff, lda = pw.group_layout(bounds)
        plan = (_gemm_grouped_core, (bounds, zp_arr, aoff, lda, wp, woff, kps, scales.astype(np.float64)), False)
    if key is not None:
        plans = [k for k in list(pw._groups) if isinstance(k, tuple)]  # (a snapshot: other threads may insert)
        if len(plans) >= _PLANS_MAX:
            for k in plans:
                pw._groups.pop(k, None)
        pw._groups[key] = plan
    return plan


def gemm_grouped(a, group_bounds, group_zero_points, group_scales, w, w_scale=None, bias=None, act=None,
                 out=None) -> np.ndarray:
    """Per-embedding-group (PEG) GEMM: float32 [M, N] = float32(sum_g float64(scale_g) * float64(acc_g)),
    g ascending, acc_g = sum_{k in group g} (a[m, k] - zp_g) * w[n, k] exact (int32 for 8-bit a,
    split-K int64 for int16 a). Groups are contiguous column ranges bounds[g]:bounds[g+1]
    (int64 [G+1]); zero points int32 [G]; scales float32 [G]. Optional float32 [N] w_scale and bias:
    the result is then (that * w_scale) + bias, rounded in float32 exactly as NumPy would do it after;
    act (an activation name of fused.ACT_CODES) is applied last, bit-identical to fused.activation.
    out: a writeable C-contiguous float32 [M, N] to write the result into, else a new array.
    """
    if act not in ACT_CODES:
        raise InputError(f"gemm_grouped: unknown activation {act!r}; valid: {sorted(k for k in ACT_CODES if k)} or None")
    pw = _as_packed(w)
    a = C.as_c(C.array(a, "a", (np.uint8, np.int8, np.int16), 2))
    _check_mk(a, pw, "gemm_grouped")
    M, K = a.shape
    kernel = None
    if a.dtype != np.int16:
        kernel, args, in_place = _grouped_plan(pw, a.dtype, K, group_bounds, group_zero_points, group_scales)
    if kernel is not None:
        # One pass: every group's tile accumulated while it is in registers / L1, one float32 store.
        out = C.out_array(out, (M, pw.n), np.float32, "gemm_grouped", (a,))
        if M == 0 or pw.n == 0:
            return out
        ws = _NO_VEC if w_scale is None else C.f32_vector(w_scale, pw.n, "gemm_grouped: w_scale")
        bs = _NO_VEC if bias is None else C.f32_vector(bias, pw.n, "gemm_grouped: bias")
        mpad = -(-M // MR) * MR
        bounds, widen_zps, aoff, lda = args[:4]
        if in_place and M == mpad:
            buf = a.reshape(-1)
        else:
            buf = _scratch(mpad * lda, np.uint8 if kernel is _gemm_grouped_quads_core else np.int16)
            _widen_grouped(a, bounds, widen_zps, aoff, mpad, lda, buf)
        kernel(buf, lda, M, aoff, *args[4:-1], pw.n, args[-1], ws, w_scale is not None, bs, bias is not None, out.reshape(-1))
        # the activation as its own parallel pass: GELU on each 4 x 16 tile in the store was tried and
        # was slower (per-call overhead of the vectorised exp on 64 values)
        return out if act is None else activation(act, out, inplace=True)
    bounds, zps, scales = _check_grouped(a.dtype, K, group_bounds, group_zero_points, group_scales)
    G = bounds.size - 1
    # int16 activations (or groups wider than K_MAX_FMA): one split-K int64 GEMM per group, summed in
    # float64 in group order
    packs = pw.group_packs(bounds)
    y = np.zeros((M, pw.n), dtype=np.float64)  # [M, N] float64 sum over groups
    for g in range(G):
        lo, hi = int(bounds[g]), int(bounds[g + 1])
        zp = C.int_arg(zps[g], "group_zero_points[g]")
        acc = _run(a, 0, lo, hi, packs[g], np.int64, S16_BLOCK_PAIRS)
        if zp != 0:
            acc -= np.int64(zp) * packs[g].row_sums.astype(np.int64)[None, :]
        _axpy_rows(y, np.float64(scales[g]), acc)
    res = y.astype(np.float32)
    if w_scale is not None:
        res = res * C.f32_vector(w_scale, pw.n, "gemm_grouped: w_scale")[None, :]
    if bias is not None:
        res = res + C.f32_vector(bias, pw.n, "gemm_grouped: bias")
    if out is not None:
        C.out_array(out, (M, pw.n), np.float32, "gemm_grouped")[...] = res
        res = out
    return res if act is None else activation(act, res, inplace=True)


def _check_batched(a, b, b_kn, name):
    k_b, n_b = (b.shape[1], b.shape[2]) if b_kn else (b.shape[2], b.shape[1])
    if a.shape[0] != b.shape[0] or a.shape[2] != k_b:
        want = "b [B, K, N]" if b_kn else "b [B, N, K]"
        raise InputError(f"{name}: a [B, M, K] = {a.shape} and {want} = {b.shape} must agree in B and K")
    return n_b


def bgemm_s8s8(a, b, out=None, b_kn: bool = False) -> np.ndarray:
    """Batched exact int8 GEMM: a int8 [B, M, K], b int8 [B, N, K] -> int32 [B, M, N] = a @ b^T per batch.
    For attention: Q K^T (K = head dim) and P V (b = V^T, K = T). prange over B.
    b_kn=True: b is given as [B, K, N] (P V with V as stored, [T, d]): read transposed while it is
    packed, so no transposed copy is made."""
    a = C.as_c(C.array(a, "a", (np.int8,), 3))
    b = C.as_c(C.array(b, "b", (np.int8,), 3))
    n = _check_batched(a, b, b_kn, "bgemm_s8s8")
    _check_k(a.shape[2], K_MAX_S8S8, "bgemm_s8s8")
    out = C.out_array(out, (a.shape[0], a.shape[1], n), np.int32, "bgemm_s8s8")
    if out.size and a.shape[2]:
        _bgemm_core(a, 0, b, bool(b_kn), out)  # writes every element
    else:
        out[...] = 0
    return out


def bgemm_u8s8(a, a_zero_point: int, b, out=None, b_kn: bool = False) -> np.ndarray:
    """Batched uint8 x int8 GEMM: int32 [B, M, N] = sum_k (a[i, m, k] - zp) * b[i, n, k]; zp in [0, 255].
    b_kn=True: b is given as [B, K, N] (as bgemm_s8s8)."""
    zp = _u8_zp(a_zero_point)
    a = C.as_c(C.array(a, "a", (np.uint8,), 3))
    b = C.as_c(C.array(b, "b", (np.int8,), 3))
    n = _check_batched(a, b, b_kn, "bgemm_u8s8")
    _check_k(a.shape[2], K_MAX_U8S8, "bgemm_u8s8")
    out = C.out_array(out, (a.shape[0], a.shape[1], n), np.int32, "bgemm_u8s8")
    if out.size and a.shape[2]:
        _bgemm_core(a, zp, b, bool(b_kn), out)
    else:
        out[...] = 0
    return out


def bgemm_into(a, zp: int, b, b_kn: bool, out) -> np.ndarray:
    """bgemm_s8s8 (zp 0, int8 a) / bgemm_u8s8 (uint8 a) without their checks, for a caller that built
    every argument as they would (QuantExecutor's attention): a [B, M, K] and b C-contiguous, agreeing
    in B and K, K >= 1 within the kernel's limit, out int32 [B, M, N] C-contiguous, non-empty. Returns out."""
    _bgemm_core(a, zp, b, b_kn, out)
    return out
