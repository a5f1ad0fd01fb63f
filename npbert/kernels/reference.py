"""Naive twins of every fast kernel: plain NumPy, int64 / float64 math, no numba.

Each `<name>_ref` has the signature of the fast `<name>` and returns the same dtype. Tests compare the
fast kernels against these EXACTLY (integers) or bit for bit (floats: the twin performs the same
IEEE operations in the same order), and bench/ checks agreement before it times anything.

Shapes: a [M, K] activations, w [N, K] weights in HF Linear layout (C = a @ w.T), out [M, N].
These functions validate little on purpose (they are oracles); the fast wrappers validate.
"""

from __future__ import annotations

import numpy as np

from npbert.errors import InputError

__all__ = [
    "gemm_s8s8_ref",
    "gemm_u8s8_ref",
    "gemm_s16s8_ref",
    "gemm_grouped_ref",
    "bgemm_s8s8_ref",
    "bgemm_u8s8_ref",
    "quantize_dynamic_ref",
    "quantize_static_ref",
    "quantize_static_grouped_ref",
    "requantize_ref",
    "add_requant_ref",
    "select_kth_ref",
    "quantile_linear_ref",
    "tmiqr_threshold_ref",
]


def _w(w) -> np.ndarray:
    """The int8 [N, K] weight behind a PackedInt8Weight (duck-typed: kernels/ must not import upward)."""
    return np.asarray(getattr(w, "w", w))


# ----------------------------------------------------------------------------------------------- GEMM


def gemm_s8s8_ref(a, w) -> np.ndarray:
    """[M, K] int8 x [N, K] int8 -> [M, N] int32, summed in int64 then narrowed (must fit)."""
    acc = np.asarray(a).astype(np.int64) @ _w(w).astype(np.int64).T  # [M, N]
    return acc.astype(np.int32)


def gemm_u8s8_ref(a, a_zero_point: int, w) -> np.ndarray:
    """sum_k (a[m,k] - zp) * w[n,k] in int64 -> int32."""
    acc = (np.asarray(a).astype(np.int64) - int(a_zero_point)) @ _w(w).astype(np.int64).T
    return acc.astype(np.int32)


def gemm_s16s8_ref(a, w, a_zero_point: int = 0) -> np.ndarray:
    """sum_k (a[m,k] - zp) * w[n,k] in int64."""
    return (np.asarray(a).astype(np.int64) - int(a_zero_point)) @ _w(w).astype(np.int64).T


def gemm_grouped_ref(a, group_bounds, group_zero_points, group_scales, w) -> np.ndarray:
    """y = float32(sum_g float64(scale_g) * float64(acc_g)), g ascending; acc_g exact in int64.

    acc_g = (a[:, lo:hi] - zp_g) @ w[:, lo:hi].T with lo, hi = bounds[g], bounds[g+1].
    """
    a = np.asarray(a)
    wm = _w(w)
    bounds = np.asarray(group_bounds, dtype=np.int64)
    y = np.zeros((a.shape[0], wm.shape[0]), dtype=np.float64)  # [M, N]
    for g in range(len(bounds) - 1):
        lo, hi = int(bounds[g]), int(bounds[g + 1])
        acc = (a[:, lo:hi].astype(np.int64) - int(group_zero_points[g])) @ wm[:, lo:hi].astype(np.int64).T
        y += np.float64(np.float32(group_scales[g])) * acc.astype(np.float64)
    return y.astype(np.float32)


def bgemm_s8s8_ref(a, b) -> np.ndarray:
    """[B, M, K] int8 x [B, N, K] int8 -> [B, M, N] int32."""
    acc = np.asarray(a).astype(np.int64) @ np.asarray(b).astype(np.int64).transpose(0, 2, 1)
    return acc.astype(np.int32)


def bgemm_u8s8_ref(a, a_zero_point: int, b) -> np.ndarray:
    """[B, M, K] uint8 (minus zp) x [B, N, K] int8 -> [B, M, N] int32."""
    acc = (np.asarray(a).astype(np.int64) - int(a_zero_point)) @ np.asarray(b).astype(np.int64).transpose(0, 2, 1)
    return acc.astype(np.int32)


# ------------------------------------------------------------------------------------------ selection


def select_kth_ref(values, k: int):
    """The k-th smallest (0-based) value."""
    return np.partition(np.asarray(values), k)[k]


def quantile_linear_ref(values, p: float):
    """np.quantile(values, p, method="linear") (Hyndman-Fan type 7), in the dtype NumPy uses."""
    return np.quantile(np.asarray(values), float(p), method="linear")


def tmiqr_threshold_ref(token_absmax):
    """Q3 + 1.5 (Q3 - Q1), same dtype arithmetic as NumPy does it (float32 for float32 input)."""
    v = np.asarray(token_absmax)
    q1 = np.quantile(v, 0.25, method="linear")
    q3 = np.quantile(v, 0.75, method="linear")
    return q3 + v.dtype.type(1.5) * (q3 - q1)


# ----------------------------------------------------------------------------------------- quantize


def quantize_dynamic_ref(x, seg_starts, row_valid=None, bits: int = 8, tmiqr: bool = False):
    """Same contract as kernels.quantize.quantize_dynamic, written the slow obvious way."""
    x = np.asarray(x, dtype=np.float32)  # [M, K]
    M = x.shape[0]
    seg = np.asarray(seg_starts, dtype=np.int64)  # [S+1]
    valid = np.ones(M, dtype=bool) if row_valid is None else np.asarray(row_valid, dtype=bool)
    qmax = (1 << (bits - 1)) - 1
    out_dtype = np.int8 if bits <= 8 else np.int16
    S = len(seg) - 1
    q = np.zeros(x.shape, dtype=out_dtype)
    scales = np.ones(S, dtype=np.float32)
    thresholds = np.zeros(S, dtype=np.float32)
    for s in range(S):
        lo, hi = int(seg[s]), int(seg[s + 1])
        xs = x[lo:hi]  # [L_all, K]
        v = valid[lo:hi]
        xv = xs[v]  # [L, K] valid rows only
        if not np.isfinite(xv).all():
            raise InputError("non-finite activation (NaN or Inf) in a valid row")
        if xv.size:
            tok = np.abs(xv).max(axis=1)  # [L] per-token abs-max
            amax = tok.max()
        else:
            tok = np.zeros(0, np.float32)
            amax = np.float32(0)
        t = np.float32(amax)
        if tmiqr and tok.size:
            t = np.float32(min(tmiqr_threshold_ref(tok), amax))
        scale = np.float32(t) / np.float32(qmax) if t > 0 else np.float32(1.0)
        xc = np.clip(xs, -t, t)
        with np.errstate(invalid="ignore"):
            r = np.clip(np.rint(xc / scale), -qmax, qmax)
        r[np.isnan(r)] = 0  # NaN can only sit in padding rows; it quantizes to 0
        q[lo:hi] = r.astype(out_dtype)
        scales[s] = scale
        thresholds[s] = t
    return q, scales, thresholds


def quantize_static_ref(x, scale: float, zero_point: int, qmin: int, qmax: int, out_dtype):
    """clamp(rint(x / float32(scale)) + zp, qmin, qmax); the division is float32 / float32."""
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InputError("non-finite value (NaN or Inf) in the tensor to quantize")
    r = np.rint(x / np.float32(scale))
    r = np.clip(r, np.float32(qmin - zero_point), np.float32(qmax - zero_point))
    return (r.astype(np.int64) + int(zero_point)).astype(out_dtype)


def quantize_static_grouped_ref(x, group_bounds, scales, zero_points, qmin, qmax, out_dtype):
    """Per embedding group along K: columns bounds[g]:bounds[g+1] use scales[g], zero_points[g]."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty(x.shape, dtype=out_dtype)
    b = np.asarray(group_bounds, dtype=np.int64)
    for g in range(len(b) - 1):
        lo, hi = int(b[g]), int(b[g + 1])
        out[:, lo:hi] = quantize_static_ref(x[:, lo:hi], np.float32(scales[g]), int(zero_points[g]), qmin, qmax, out_dtype)
    return out


def requantize_ref(acc, multiplier, out_zero_point: int, qmin: int, qmax: int, out_dtype):
    """clamp(rint(float64(acc) * multiplier) + zp, qmin, qmax), multiplier scalar or [N]."""
    acc = np.asarray(acc)
    mult = np.asarray(multiplier, dtype=np.float64)
    r = np.rint(acc.astype(np.float64) * mult) + np.float64(out_zero_point)
    return np.clip(r, qmin, qmax).astype(out_dtype)


def add_requant_ref(a, a_scale, a_zp, b, b_scale, b_zp, out_scale, out_zp, qmin, qmax, out_dtype):
    """clamp(rint((a - a_zp) * (a_scale/out_scale) + (b - b_zp) * (b_scale/out_scale)) + out_zp)."""
    ra = float(a_scale) / float(out_scale)
    rb = float(b_scale) / float(out_scale)
    va = (np.asarray(a).astype(np.float64) - np.float64(a_zp)) * ra
    vb = (np.asarray(b).astype(np.float64) - np.float64(b_zp)) * rb
    r = np.rint(va + vb) + np.float64(out_zp)
    return np.clip(r, qmin, qmax).astype(out_dtype)
