"""Quantize / requantize kernels: dynamic (per segment, abs-max or TM-IQR), static, per-group static,
requantize of accumulators, and the integer residual add.

Rounding everywhere is half-to-even (np.rint / llvm.rint), clamps are to [qmin, qmax].
Division convention (bit-exactness with reference.py): quantizers compute float32(x) / float32(scale)
(a correctly rounded IEEE division, 8 lanes per AVX2 op), never x * (1/scale) (two roundings).
Requantize and add_requant work in float64 (accumulators up to 2^53 convert exactly).

Non-finite detection is fused into the pass that already reads the data: the float32 bit pattern with
the sign masked off, compared as an int32, orders |x| for every non-NaN value, and is >= 0x7F800000
exactly for Inf and NaN. One vectorisable integer max per row gives both the abs-max and the check.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from npbert._jit import jit, njit
from npbert.errors import InputError, QuantError
from npbert.kernels import _checks as C
from npbert.kernels.selection import _tmiqr_inplace

__all__ = ["quantize_dynamic", "quantize_dynamic_rows", "quantize_dynamic_heads", "quantize_dynamic_heads_split", "quantize_static", "quantize_static_grouped", "requantize", "add_requant", "add_requant_grouped"]

_ABS_MASK = 0x7FFFFFFF
_EXP_ALL_ONES = 0x7F800000  # bits of +Inf; anything above is NaN
_CHUNK = 1 << 14  # elements per parallel chunk of the flat kernels
# Rows per parallel chunk (here and in fused.py): scratch buffers are allocated once per chunk, not
# per row (an allocation per 128-value softmax row cost as much as the row's arithmetic).
ROWS_PER_CHUNK = 32
UNSIGNED_ZP = 128  # unsigned dynamic codes: the symmetric codes + 128, read with this zero point


def _raise_nonfinite(x: np.ndarray, row: int, what: str, seq_len: int | None = None):
    v = x[row]
    kind = "NaN" if np.isnan(v).any() else "Inf"
    where = f"row {row}" if seq_len is None else f"sequence {row // seq_len}, token {row % seq_len}"
    raise InputError(f"{what}: {kind} in {where}; the activations are not finite (check the layer before)")


# ------------------------------------------------------------------------------------------ dynamic


@njit
def _absmax_bits_row(xr):
    """max_k (bits(x[k]) & 0x7FFFFFFF) over one row of float32 bits (int32 [K]); int32 max -> vpmaxsd."""
    mb = np.int32(0)
    for k in range(xr.shape[0]):
        mb = max(mb, np.int32(xr[k] & _ABS_MASK))
    return mb


@njit
def _segment_stats(row_abs, row_bits, seg, valid, tmiqr, qmax, scales, thresholds):
    """Per segment s (rows seg[s]:seg[s+1]): abs-max over VALID rows, optional TM-IQR threshold, scale.
    Returns -1, -2 if seg is not a valid partition of the rows (the wrapper raises), or the first valid
    row holding NaN/Inf. Serial: S small steps."""
    S = seg.shape[0] - 1
    if seg[0] != 0 or seg[S] != row_abs.shape[0]:
        return -2
    for s in range(S):
        if seg[s + 1] < seg[s]:
            return -2
    buf = np.empty(row_abs.shape[0], dtype=np.float32)  # [L] per-token abs-max of one segment
    for s in range(S):
        L = 0
        amax = np.float32(0.0)
        for m in range(seg[s], seg[s + 1]):
            if valid[m]:
                if row_bits[m] >= _EXP_ALL_ONES:
                    return m
                buf[L] = row_abs[m]
                L += 1
                if row_abs[m] > amax:
                    amax = row_abs[m]
        t = amax
        if tmiqr and L > 0:
            tt = _tmiqr_inplace(buf[:L])
            if tt < t:  # cap at the abs-max: clipping above the max changes nothing but the scale
                t = tt
        thresholds[s] = t
        # t == 0: every valid value is 0 (or TM-IQR clips all to 0); any scale represents that, and
        # 1.0 keeps later dequantize / requant multipliers finite (no 0 division, no 0 scale).
        scales[s] = t / np.float32(qmax) if t > 0 else np.float32(1.0)
    return -1


# A threshold t at or above this quantizes without clipping to [-t, t] first: the clamp to +-fq
# gives the same codes. scale = fl(t / fq) is then a normal float (t / fq > 2^-126), so fl(t / scale)
# lies within fq * 3 * 2^-24 < 0.006 of fq and rounds to fq; division by a positive scale and rint
# are monotone, so every v beyond t lands at or past +-fq, where the clamp puts it, as the clip
# would (+-inf too; NaN -> 0 either way). Below it (t = 0 gives scale 1.0, and padding rows hold
# values of any size) the clip stays. Saves two of the loop's ~13 vector operations.
_CLIP_FREE_T = np.float32(2.0**-100)


@njit
def _quantize_row(xr, sc, t, fq, off, qr):
    """qr[k] = clamp(rint(clip(xr[k], -t, t) / sc), -fq, fq) + off; NaN -> 0 (+ off). Written as selects
    on float32 so LLVM vectorises it (vdivps, vroundps, vcvttps2dq); a nonzero offset is added in
    float32 (exact: small integers; an integer add would widen the lanes to int64), in a loop of its
    own, so the signed codes do not pay for it. The clip is left out where the clamp implies it
    (_CLIP_FREE_T)."""
    offf = np.float32(off)
    if t >= _CLIP_FREE_T:
        if off == 0:
            for k in range(xr.shape[0]):
                qr[k] = np.int32(_clamped(xr[k], sc, fq))
        else:
            for k in range(xr.shape[0]):
                qr[k] = np.int32(_clamped(xr[k], sc, fq) + offf)
    elif off == 0:
        for k in range(xr.shape[0]):
            qr[k] = np.int32(_code(xr[k], sc, t, fq))
    else:
        for k in range(xr.shape[0]):
            qr[k] = np.int32(_code(xr[k], sc, t, fq) + offf)


@njit
def _code(v, sc, t, fq):
    """clamp(rint(clip(v, -t, t) / sc), -fq, fq) as float32; NaN -> 0."""
    c = t if v > t else v
    c = -t if c < -t else c
    return _clamped(c, sc, fq)


@njit
def _clamped(v, sc, fq):
    """clamp(rint(v / sc), -fq, fq) as float32; NaN -> 0."""
    r = np.rint(v / sc)
    r = fq if r > fq else r
    r = -fq if r < -fq else r
    return r if r == r else np.float32(0.0)


@jit(parallel=True)
def _dynamic_scales(x, c0, c1, seg, valid, tmiqr, qmax, scales, thresholds, row_scale):
    """The statistics half of dynamic quantization of x[:, c0:c1]: per-row abs-max (parallel),
    per-segment threshold and scale (_segment_stats), row_scale[m] = scales[segment of row m]. Returns
    (-1 or _segment_stats' error code, each row's segment int64 [M]).   # x float32 [M, >= c1]"""
    M = x.shape[0]
    xi = x.view(np.int32)  # [M, W] the float32 bits
    row_bits = np.empty(M, dtype=np.int32)  # [M] |x| max per row, as float32 bits
    for m in prange(M):
        row_bits[m] = _absmax_bits_row(xi[m, c0:c1])
    row_seg = np.empty(M, dtype=np.int64)
    bad = _segment_stats(row_bits.view(np.float32), row_bits, seg, valid, tmiqr, qmax, scales, thresholds)
    if bad == -1:
        for s in range(seg.shape[0] - 1):
            for m in range(seg[s], seg[s + 1]):
                row_seg[m] = s
                row_scale[m] = scales[s]
    return bad, row_seg


@jit(parallel=True)
def _quantize_dynamic_core(x, seg, valid, tmiqr, qmax, off, q, scales, thresholds, row_scale):
    """The whole of quantize_dynamic in one call (one dispatch from Python: at batch 1 the wrapper
    overhead of three kernels cost as much as their work).   # x float32 [M, K] -> q [M, K] (+ off),
    scales / thresholds float32 [S], row_scale float32 [M] (each row's segment scale).
    Returns -1, or _segment_stats' error code (-2 bad segments, or a row holding NaN/Inf)."""
    bad, row_seg = _dynamic_scales(x, 0, x.shape[1], seg, valid, tmiqr, qmax, scales, thresholds, row_scale)
    if bad != -1:
        return bad
    fq = np.float32(qmax)
    for m in prange(x.shape[0]):
        s = row_seg[m]
        _quantize_row(x[m], scales[s], thresholds[s], fq, off, q[m])
    return -1


@jit(parallel=True)
def _quantize_dynamic_heads_core(x, c0s, width, seg, valid, tmiqr, qmax, heads, T, q, scales, thresholds, row_scale):
    """_quantize_dynamic_core of each column block x[:, c0s[i]:c0s[i] + width] (its own tensor, its own
    scales) with the codes head-major: x's rows are sequences of T tokens (m = b*T + t) and q[i] is
    [B*heads*T, d] ([B, heads, T, d]): head hh of row m goes to q[i] row (b*heads + hh)*T + t. One call
    for query, key and value from one GEMM (three blocks) or for one tensor (one block).
    # x float32 [M, W]; q int8 [nb, B*heads*T, d]; scales / thresholds [nb, S]; row_scale [nb, M]
    Returns (-1 or _segment_stats' error code, the block it concerns)."""
    nb = c0s.shape[0]
    row_seg = np.empty(0, np.int64)
    for i in range(nb):
        bad, row_seg = _dynamic_scales(x, c0s[i], c0s[i] + width, seg, valid, tmiqr, qmax, scales[i], thresholds[i],
                                       row_scale[i])
        if bad != -1:
            return bad, i
    M = x.shape[0]
    fq = np.float32(qmax)
    d = width // heads
    for c in prange((M + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK):
        row = np.empty(width, dtype=q.dtype)  # one row's codes, then scattered head by head
        for m in range(c * ROWS_PER_CHUNK, min(M, (c + 1) * ROWS_PER_CHUNK)):
            s = row_seg[m]
            b, t = m // T, m % T
            for i in range(nb):
                c0 = c0s[i]
                _quantize_row(x[m, c0:c0 + width], scales[i, s], thresholds[i, s], fq, 0, row)  # whole rows vectorise
                for hh in range(heads):
                    q[i, (b * heads + hh) * T + t, :] = row[hh * d:(hh + 1) * d]
    return -1, 0


def quantize_dynamic(x, seg_starts, row_valid=None, bits: int = 8, tmiqr: bool = False):
    """Symmetric signed dynamic quantization with one scale per segment of rows.

    x: float32 [M, K]; seg_starts: int64 [S+1] (0 = seg_starts[0] <= ... <= seg_starts[S] = M; segment
    s is rows seg_starts[s]:seg_starts[s+1], e.g. one sequence's tokens; per-tensor = [0, M],
    per-token = arange(M+1)); row_valid: bool [M] or None (False = padding: excluded from the
    statistics and the NaN/Inf check, still quantized and clamped).
    Threshold t per segment: abs-max over valid rows, or with tmiqr=True the TM-IQR threshold
    Q3 + 1.5 (Q3 - Q1) of the valid per-token abs-maxes, capped at the abs-max. Then
    scale = t / qmax (float32), q = clamp(rint(clip(x, -t, t) / scale), -qmax, qmax), qmax = 2^(bits-1) - 1.
    A segment with t == 0 gets scale 1.0 (all its values quantize to 0 whatever the scale; 1.0 keeps
    dequantization and requant multipliers finite).

    Returns (q int8 [M, K] for bits <= 8 else int16, scales float32 [S], thresholds float32 [S]).
    Raises QuantError for bits outside 2..16, InputError for NaN/Inf in a valid row or bad shapes.
    """
    q, _row_scale, scales, thresholds = quantize_dynamic_rows(x, seg_starts, row_valid, bits, tmiqr)
    return q, scales, thresholds


def _dynamic_args(x, seg_starts, row_valid):
    """Checked (seg int64 [S+1], valid bool [M]) for the rows of x [M, K] (copies only when needed)."""
    M = x.shape[0]
    seg = np.asarray(seg_starts)
    if seg.ndim != 1 or seg.size < 1 or seg.dtype.kind not in "iu":
        raise InputError(f"seg_starts: pass an int64 array [S+1] of row offsets, got shape {seg.shape} dtype {seg.dtype}")
    if seg.dtype != np.int64 or not seg.flags.c_contiguous:
        seg = np.ascontiguousarray(seg, dtype=np.int64)  # (the order is checked in the compiled core)
    if row_valid is None:
        return seg, np.ones(M, dtype=np.bool_)
    valid = row_valid
    if not (isinstance(valid, np.ndarray) and valid.dtype == np.bool_ and valid.flags.c_contiguous):
        valid = np.ascontiguousarray(row_valid, dtype=np.bool_)
    if valid.shape != (M,):
        raise InputError(f"row_valid: expected bool [{M}], got shape {valid.shape}")
    return seg, valid


def _raise_bad(bad: int, x, seg, what: str = "quantize_dynamic", seq_len: int | None = None):
    """The dynamic core's error code -> its exception (-1: none)."""
    if bad == -2:
        raise InputError(f"seg_starts must start at 0, end at M={x.shape[0]} and not decrease; got {seg.tolist()[:8]}...")
    if bad >= 0:
        _raise_nonfinite(x, int(bad), what, seq_len)


def quantize_dynamic_rows(x, seg_starts, row_valid=None, bits: int = 8, tmiqr: bool = False, out=None,
                          unsigned: bool = False):
    """quantize_dynamic, also returning each row's scale: (q [M, K], row_scale float32 [M] =
    scales[segment of the row], scales [S], thresholds [S]). What a GEMM epilogue consumes.
    unsigned=True (bits <= 8): the codes + 128 as uint8, i.e. the same grid with zero point UNSIGNED_ZP, which
    is the quad GEMM kernel's own operand (uint8 x int8): it then reads them without a converting copy.
    out: an int8 (bits <= 8; uint8 if unsigned) / int16 [M, K] array to write the codes into, else a new one."""
    bits = C.int_arg(bits, "bits")
    if not 2 <= bits <= 16:
        raise QuantError(f"bits={bits}: dynamic quantization supports 2..16 bits")
    if unsigned and bits > 8:
        raise QuantError(f"bits={bits}: unsigned (uint8) dynamic codes need bits <= 8")
    x = C.as_c(C.array(x, "x", (np.float32,), 2))
    M, K = x.shape
    seg, valid = _dynamic_args(x, seg_starts, row_valid)
    S = seg.size - 1
    q = C.out_array(out, (M, K), np.dtype(np.uint8 if unsigned else np.int8 if bits <= 8 else np.int16),
                    "quantize_dynamic_rows", (x,))
    row_scale = np.empty(M, dtype=np.float32)
    scales = np.empty(S, dtype=np.float32)
    thresholds = np.empty(S, dtype=np.float32)
    dynamic_rows_into(x, seg, valid, bits, bool(tmiqr), unsigned, q, row_scale, scales, thresholds)
    return q, row_scale, scales, thresholds


def dynamic_rows_into(x, seg, valid, bits: int, tmiqr: bool, unsigned: bool, q, row_scale, scales, thresholds) -> None:
    """quantize_dynamic_rows without its argument checks, for a caller that built every argument as it
    would (QuantExecutor's hot path): x float32 [M, K] C-contiguous, seg int64 [S+1], valid bool [M],
    bits in 2..16 (<= 8 if unsigned), q the codes' array [M, K] (uint8 if unsigned, else int8 / int16 by
    bits) not overlapping x, row_scale float32 [M], scales / thresholds float32 [S]. Still raises for
    NaN/Inf in a valid row and for bad segments (the data, not the call, decides those)."""
    bad = _quantize_dynamic_core(x, seg, valid, tmiqr, (1 << (bits - 1)) - 1, UNSIGNED_ZP if unsigned else 0, q, scales,
                                 thresholds, row_scale)
    _raise_bad(bad, x, seg)


def quantize_dynamic_heads(x, heads: int, seg_starts, row_valid=None, bits: int = 8, tmiqr: bool = False, out=None,
                           columns: tuple[int, int] | None = None):
    """quantize_dynamic_rows of x float32 [B, T, C] (rows b*T + t) with the codes written head-major:
    (q int8 [B, heads, T, C/heads], row_scale float32 [B*T], scales [S], thresholds [S]), equal to
    quantize_dynamic_rows' codes reshaped [B, T, heads, d] and transposed to [B, heads, T, d], which
    is what the attention GEMMs read, without that transposing copy. bits <= 8.
    out: an int8 [B, heads, T, d] C-contiguous array to write the codes into, else a new one.
    columns=(c0, c1): quantize x[..., c0:c1] of x [B, T, W] as that tensor, read in place (a column
    block of one GEMM's output)."""
    x = C.array(x, "x", (np.float32,), 3)
    W = x.shape[2]
    if columns is None:
        c0, c1 = 0, W
    else:
        if len(columns) != 2:
            raise InputError(f"columns={columns}: pass a pair (c0, c1)")
        c0, c1 = (C.int_arg(c, "columns") for c in columns)
        if not 0 <= c0 < c1 <= W:
            raise InputError(f"columns={columns}: pass (c0, c1) with 0 <= c0 < c1 <= {W}, the width of x")
    B, T = x.shape[:2]
    heads = C.int_arg(heads, "heads")
    if heads < 1 or (c1 - c0) % heads:
        raise InputError(f"heads={heads} must be positive and divide the width C={c1 - c0}")
    q = None
    if out is not None:  # the kernel's [1, B, heads, T, d] block
        out = C.out_array(out, (B, heads, T, (c1 - c0) // heads), np.dtype(np.int8), "quantize_dynamic_heads", (x,))
        q = out.reshape(1, *out.shape)
    q, row_scale, scales, thresholds = _heads_blocks(x, heads, [c0], c1 - c0, seg_starts, row_valid, bits, tmiqr, q,
                                                     "quantize_dynamic_heads")
    return (q[0] if out is None else out), row_scale[0], scales[0], thresholds[0]


def quantize_dynamic_heads_split(x, parts: int, heads: int, seg_starts, row_valid=None, bits: int = 8,
                                 tmiqr: bool = False, out=None):
    """x float32 [B, T, parts*C] as `parts` tensors x[..., i*C:(i+1)*C] (query, key and value from one
    GEMM), each quantized as quantize_dynamic_heads(x[..., i*C:(i+1)*C]) would, in one call:
    (q int8 [parts, B, heads, T, d], row_scale [parts, B*T], scales [parts, S], thresholds [parts, S]).
    out: an int8 [parts, B, heads, T, d] C-contiguous array to write the codes into, else a new one."""
    x = C.array(x, "x", (np.float32,), 3)
    parts = C.int_arg(parts, "parts")
    if parts < 1 or x.shape[2] % parts:
        raise InputError(f"parts={parts} must be positive and divide the width {x.shape[2]} of x")
    Cw = x.shape[2] // parts
    return _heads_blocks(x, heads, [i * Cw for i in range(parts)], Cw, seg_starts, row_valid, bits, tmiqr, out,
                         "quantize_dynamic_heads_split")


def _heads_blocks(x, heads, c0s, width, seg_starts, row_valid, bits, tmiqr, out, what):
    """The checked call of _quantize_dynamic_heads_core for column blocks c0s of `width` of x [B, T, W]."""
    heads = C.int_arg(heads, "heads")
    B, T, W = x.shape
    if heads < 1 or width % heads:
        raise InputError(f"heads={heads} must be positive and divide the width C={width}")
    bits = C.int_arg(bits, "bits")
    if not 2 <= bits <= 8:
        raise QuantError(f"bits={bits}: head-major codes are int8 (bits 2..8)")
    nb, d = len(c0s), width // heads
    out = C.out_array(out, (nb, B, heads, T, d), np.dtype(np.int8), what, (x,))
    x2 = C.as_c(x).reshape(B * T, W)
    seg, valid = _dynamic_args(x2, seg_starts, row_valid)
    S = seg.size - 1
    row_scale = np.empty((nb, B * T), dtype=np.float32)
    scales = np.empty((nb, S), dtype=np.float32)
    thresholds = np.empty((nb, S), dtype=np.float32)
    heads_into(x2, np.array(c0s, np.int64), width, seg, valid, bits, bool(tmiqr), heads, T, out, row_scale, scales,
               thresholds, what)
    return out, row_scale, scales, thresholds


def heads_into(x2, c0s, width: int, seg, valid, bits: int, tmiqr: bool, heads: int, T: int, out, row_scale, scales,
               thresholds, what: str = "quantize_dynamic_heads") -> None:
    """The head-major quantizers' call without their argument checks, for a caller that built every
    argument as they would (QuantExecutor's hot path): x2 float32 [B*T, W] C-contiguous, c0s int64 [nb]
    column blocks of `width` (heads divides it) inside W, seg int64 [S+1], valid bool [B*T], bits
    2..8, out int8 [nb, B, heads, T, width/heads] C-contiguous not overlapping x2, row_scale float32
    [nb, B*T], scales / thresholds float32 [nb, S]. Still raises for NaN/Inf in a valid row (naming
    the sequence, the token and, for several blocks, the part)."""
    nb, d = c0s.shape[0], width // heads
    bad, i = _quantize_dynamic_heads_core(x2, c0s, width, seg, valid, tmiqr, (1 << (bits - 1)) - 1, heads, T,
                                          out.reshape(nb, -1, d), scales, thresholds, row_scale)
    _raise_bad(bad, x2[:, c0s[i]:c0s[i] + width], seg, what if nb == 1 else f"{what} (part {i})", T)


# ------------------------------------------------------------------------------------------- static


@njit
def _quantize_static_span(x, xi, lo_i, hi_i, scale, lo, hi, zpf, out):
    """out[i] = clamp(rint(x[i] / scale), lo, hi) + zp for i in [lo_i, hi_i), all in float32 (exact:
    |values| < 2^24), NaN -> zp; returns the max |x| bit pattern (>= 0x7F800000: NaN/Inf present)."""
    # slices + a range from 0: indices LLVM can prove in bounds and non-negative, so no wrap-around
    # checks and the loop vectorises (x[i] for i in range(lo_i, hi_i) made quantize_static 3.5x slower,
    # bench/results/passes-b8*.json)
    xs, bs, os_ = x[lo_i:hi_i], xi[lo_i:hi_i], out[lo_i:hi_i]
    mb = np.int32(0)
    for k in range(xs.shape[0]):
        mb = max(mb, np.int32(bs[k] & _ABS_MASK))
        r = np.rint(xs[k] / scale)
        r = hi if r > hi else r
        r = lo if r < lo else r
        r = r if r == r else np.float32(0.0)
        os_[k] = np.int32(r + zpf)
    return mb


@jit(parallel=True)
def _quantize_flat(x, xi, scale, lo, hi, zpf, out, bad):
    """out[i] = clamp(rint(x[i] / scale), lo, hi) + zp with lo = qmin - zp, hi = qmax - zp, chunked:
    bad[c] = 1 if chunk c holds NaN/Inf.   # x float32 [n] -> out [n]"""
    n = x.shape[0]
    for c in prange(bad.shape[0]):
        mb = _quantize_static_span(x, xi, c * _CHUNK, min(n, (c + 1) * _CHUNK), scale, lo, hi, zpf, out)
        bad[c] = 1 if mb >= _EXP_ALL_ONES else 0


def _static_args(qmin, qmax, out_dtype, zero_point):
    dt, qmin, qmax = C.out_range(out_dtype, qmin, qmax, allowed=(np.int8, np.uint8, np.int16, np.uint16))
    zp = C.int_arg(zero_point, "zero_point")
    if not qmin <= zp <= qmax:
        raise QuantError(f"zero_point={zp} must lie in [qmin, qmax] = [{qmin}, {qmax}]")
    return dt, qmin, qmax, zp


def quantize_static(x, scale: float, zero_point: int, qmin: int, qmax: int, out_dtype):
    """q = clamp(rint(x / scale) + zero_point, qmin, qmax) for float32 x of any shape.

    The division is float32(x) / float32(scale) (not x * (1/scale)); reference.quantize_static_ref
    does the same. out_dtype: int8, uint8, int16 or uint16. NaN/Inf in x -> InputError.
    """
    x = C.array(x, "x", (np.float32,))
    s = np.float32(C.pos_scale(scale, "scale"))
    if not (np.isfinite(s) and s > 0):
        raise QuantError(f"scale={scale!r} is not a positive finite float32")
    dt, qmin, qmax, zp = _static_args(qmin, qmax, out_dtype, zero_point)
    xf = C.as_c(x).reshape(-1)
    out = np.empty(xf.shape, dtype=dt)
    bad = np.zeros(max(1, -(-xf.size // _CHUNK)), dtype=np.uint8)
    _quantize_flat(xf, xf.view(np.int32), s, np.float32(qmin - zp), np.float32(qmax - zp), np.float32(zp), out, bad)
    if bad.any():
        raise InputError("quantize_static: NaN or Inf in the tensor to quantize; the activations are not finite")
    return out.reshape(x.shape)


@jit(parallel=True)
def _quantize_grouped_rows(x, xi, bounds, scales, lo, hi, zpf, out, bad):
    """Per row m, per group g (columns bounds[g]:bounds[g+1]): as _quantize_flat with scale/zp of g."""
    M = x.shape[0]
    G = bounds.shape[0] - 1
    for m in prange(M):
        mb = np.int32(0)
        for g in range(G):
            mg = _quantize_static_span(x[m], xi[m], bounds[g], bounds[g + 1], scales[g], lo[g], hi[g], zpf[g], out[m])
            mb = max(mb, mg)
        bad[m] = 1 if mb >= _EXP_ALL_ONES else 0


def quantize_static_grouped(x, group_bounds, scales, zero_points, qmin: int, qmax: int, out_dtype):
    """Per-embedding-group static quantization along K: x float32 [M, K]; group g = columns
    group_bounds[g]:group_bounds[g+1] (int64 [G+1]) uses scales[g] (float32 [G]) and zero_points[g]
    (int32 [G]). Same rounding/division convention as quantize_static."""
    x = C.as_c(C.array(x, "x", (np.float32,), 2))
    M, K = x.shape
    b = C.group_bounds(group_bounds, K)
    G = b.size - 1
    sc = np.ascontiguousarray(scales, dtype=np.float32)
    zps = np.asarray(zero_points)
    if sc.shape != (G,) or zps.shape != (G,):
        raise InputError(f"scales and zero_points must have shape [{G}] (one per group), got {sc.shape}, {zps.shape}")
    if not (np.all(np.isfinite(sc)) and np.all(sc > 0)):
        raise QuantError("scales must be finite and positive")
    dt, qmin, qmax = C.out_range(out_dtype, qmin, qmax, allowed=(np.int8, np.uint8, np.int16, np.uint16))
    zps = zps.astype(np.int64)
    if np.any(zps < qmin) or np.any(zps > qmax):
        raise QuantError(f"zero_points must lie in [qmin, qmax] = [{qmin}, {qmax}]")
    lo = (qmin - zps).astype(np.float32)
    hi = (qmax - zps).astype(np.float32)
    out = np.empty((M, K), dtype=dt)
    bad = np.zeros(M, dtype=np.uint8)
    _quantize_grouped_rows(x, x.view(np.int32), b, sc, lo, hi, zps.astype(np.float32), out, bad)
    if bad.any():
        raise InputError(f"quantize_static_grouped: NaN or Inf in row {int(np.argmax(bad))}; the activations are not finite")
    return out


# ------------------------------------------------------------------------------------- requantize


@jit(parallel=True)
def _requant_rows(acc, mult, zp, qmin, qmax, out):
    """out[m, n] = clamp(rint(float64(acc[m, n]) * mult[n]) + zp, qmin, qmax)   # [M, N] -> [M, N]"""
    M, N = acc.shape
    for m in prange(M):
        for n in range(N):
            r = np.rint(np.float64(acc[m, n]) * mult[n]) + zp
            r = qmax if r > qmax else r
            r = qmin if r < qmin else r
            out[m, n] = np.int32(r)  # in [qmin, qmax], inside int32


def requantize(acc, multiplier, out_zero_point: int, qmin: int, qmax: int, out_dtype):
    """q = clamp(rint(acc * multiplier) + out_zero_point, qmin, qmax), in float64.

    acc: int32 or int64 [M, N]; multiplier: float64 scalar or [N] (per output channel), e.g.
    a_scale * w_scale / out_scale. out_dtype: int8, uint8, int16, uint16 or int32.
    """
    acc = C.as_c(C.array(acc, "acc", (np.int32, np.int64), 2))
    M, N = acc.shape
    mult = np.asarray(multiplier, dtype=np.float64)
    if mult.ndim == 0:
        mult = np.full(N, float(mult), dtype=np.float64)
    if mult.shape != (N,):
        raise InputError(f"multiplier: pass a scalar or a float64 [{N}] array, got shape {mult.shape}")
    if not np.all(np.isfinite(mult)):
        raise QuantError("multiplier must be finite")
    dt, qmin, qmax = C.out_range(out_dtype, qmin, qmax)
    zp = C.int_arg(out_zero_point, "out_zero_point")
    out = np.empty((M, N), dtype=dt)
    _requant_rows(acc, np.ascontiguousarray(mult), np.float64(zp), np.float64(qmin), np.float64(qmax), out)
    return out


@njit
def _add_requant_one(a, b, a_zp, ra, b_zp, rb, zp, qmin, qmax):
    """clamp(rint((a - a_zp) * ra + (b - b_zp) * rb) + zp, qmin, qmax) in float64 -> int32."""
    r = np.rint((np.float64(a) - a_zp) * ra + (np.float64(b) - b_zp) * rb) + zp
    r = qmax if r > qmax else r
    r = qmin if r < qmin else r
    return np.int32(r)


@jit(parallel=True)
def _add_requant_flat(a, b, a_zp, ra, b_zp, rb, zp, qmin, qmax, out):
    """out[i] = _add_requant_one(a[i], b[i], ...) over flat arrays, in chunks."""
    n = a.shape[0]
    nch = (n + _CHUNK - 1) // _CHUNK
    for c in prange(nch):
        i0, i1 = c * _CHUNK, min(n, (c + 1) * _CHUNK)
        ac, bc, oc = a[i0:i1], b[i0:i1], out[i0:i1]  # slices indexed from 0: vectorisable (_quantize_static_span)
        for i in range(i1 - i0):
            oc[i] = _add_requant_one(ac[i], bc[i], a_zp, ra, b_zp, rb, zp, qmin, qmax)


def add_requant(a, a_scale, a_zp, b, b_scale, b_zp, out_scale, out_zp, qmin, qmax, out_dtype):
    """Integer residual add: out = clamp(rint((a - a_zp) * a_scale/out_scale + (b - b_zp) * b_scale/out_scale)
    + out_zp, qmin, qmax), each rescale in float64 (ratios computed once, in float64).

    a, b: same shape, int8 / uint8 / int16 each. With all scales equal the ratios are exactly 1.0 and
    every step is exact, so the result is the saturating integer sum clamp(a - a_zp + b - b_zp + out_zp).
    """
    a = C.array(a, "a", (np.int8, np.uint8, np.int16))
    b = C.array(b, "b", (np.int8, np.uint8, np.int16))
    if a.shape != b.shape:
        raise InputError(f"add_requant: a {a.shape} and b {b.shape} must have the same shape")
    ra = C.pos_scale(a_scale, "a_scale") / C.pos_scale(out_scale, "out_scale")
    rb = C.pos_scale(b_scale, "b_scale") / float(out_scale)
    dt, qmin, qmax = C.out_range(out_dtype, qmin, qmax)
    af = C.as_c(a).reshape(-1)
    bf = C.as_c(b).reshape(-1)
    out = np.empty(af.shape, dtype=dt)
    _add_requant_flat(
        af, bf,
        np.float64(C.int_arg(a_zp, "a_zp")), ra,
        np.float64(C.int_arg(b_zp, "b_zp")), rb,
        np.float64(C.int_arg(out_zp, "out_zp")), np.float64(qmin), np.float64(qmax), out,
    )
    return out.reshape(a.shape)


@jit(parallel=True)
def _add_requant_grouped_rows(a, b, bounds, a_zp, ra, b_zp, rb, zp, qmin, qmax, out):
    """Row-parallel add_requant with per-column-group (zero points, ratios): group g = columns
    bounds[g]:bounds[g+1].   # a, b [M, C] -> out [M, C]"""
    M = a.shape[0]
    G = bounds.shape[0] - 1
    for m in prange(M):
        ar, br, orow = a[m], b[m], out[m]
        for g in range(G):
            az, bz, oz, fa, fb = a_zp[g], b_zp[g], zp[g], ra[g], rb[g]
            c0, c1 = bounds[g], bounds[g + 1]
            ag, bg, og = ar[c0:c1], br[c0:c1], orow[c0:c1]
            for i in range(c1 - c0):
                og[i] = _add_requant_one(ag[i], bg[i], az, fa, bz, fb, oz, qmin, qmax)


def add_requant_grouped(a, a_scales, a_zps, b, b_scales, b_zps, out_scales, out_zps, group_bounds, qmin: int, qmax: int,
                        out_dtype):
    """add_requant with one (scale, zero point) per column group for a, b and the output (PEG residual
    sums): group g = columns group_bounds[g]:group_bounds[g+1] of the last axis; every group is exactly
    add_requant on its columns (ratios a_scale/out_scale in float64), in one pass."""
    a = C.array(a, "a", (np.int8, np.uint8, np.int16))
    b = C.array(b, "b", (np.int8, np.uint8, np.int16))
    if a.shape != b.shape or a.ndim < 1:
        raise InputError(f"add_requant_grouped: a {a.shape} and b {b.shape} must have the same shape")
    Cn = a.shape[-1]
    bounds = C.group_bounds(group_bounds, Cn)
    G = bounds.size - 1

    def per_group(v, name, positive=False):
        v = np.broadcast_to(np.asarray(v, np.float64), (G,)).copy()
        if positive and not (np.all(np.isfinite(v)) and np.all(v > 0)):
            raise QuantError(f"add_requant_grouped: {name} must be finite and > 0, got {v.tolist()}")
        return v

    so = per_group(out_scales, "out_scales", True)
    ra = per_group(a_scales, "a_scales", True) / so
    rb = per_group(b_scales, "b_scales", True) / so
    dt, qmin, qmax = C.out_range(out_dtype, qmin, qmax)
    a2 = C.as_c(a).reshape(-1, Cn)
    b2 = C.as_c(b).reshape(-1, Cn)
    out = np.empty(a2.shape, dtype=dt)
    if out.size:
        _add_requant_grouped_rows(a2, b2, bounds, per_group(a_zps, "a_zps"), ra, per_group(b_zps, "b_zps"), rb,
                                  per_group(out_zps, "out_zps"), np.float64(qmin), np.float64(qmax), out)
    return out.reshape(a.shape)

