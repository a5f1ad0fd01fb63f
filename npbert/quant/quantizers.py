"""Pure quantize / dequantize / fake-quant, and the QUANTIZERS registry.

The formula (the Numba kernels in npbert/kernels use the same one, so results are bit-identical):

    x32 = float32(x)                                   # any input dtype is rounded to float32 first
    v   = rint(x32 / scale) + zero_point               # float32 division, IEEE correctly rounded;
                                                       # rint = round half to even (np.rint)
    q   = int(clamp(v, qmin, qmax))                    # stored as QParams.int_dtype
    dequantize(q) = float32(q - zero_point) * scale    # integer subtraction (exact), one float32 multiply

Adding zero_point in float32 is exact whenever the result lies in the grid (|v| <= 65535 < 2^24), and
rounding is monotone with qmin/qmax representable, so out-of-grid values clamp exactly as in integer
arithmetic. Because |q - zp| <= 65535 < 2^16, fl(fl(n * s) / s) == n for every normal scale s, which makes
fake_quant idempotent for every bit width 2..16.

Granularity comes from the QParams (see qparams.py): per tensor, per channel along any axis (per token
is per channel along the token axis), per group of contiguous slices of an optionally permuted axis.
The output keeps the input's order: each element uses the scale of its own channel / group.
"""

from __future__ import annotations

import numpy as np

from npbert.errors import InputError, QuantError
from npbert.quant.qparams import QParams, qparams_from_range


def _as_float32(x, what: str = "x") -> np.ndarray:
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            x32 = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be a numeric array: {e}") from None
    if not np.all(np.isfinite(x32)):
        raise InputError(f"{what} has non-finite values (NaN/inf, or beyond float32 range); "
                         "fix the input or the layer producing it before quantizing")
    return x32


def broadcast_params(shape: tuple, qp: QParams) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero_point) reshaped to broadcast against an array of `shape`.

    tensor -> shapes (); channel/group -> [1, .., C, .., 1] with C at qp.axis (groups expanded to the
    original, unpermuted positions by QParams.per_channel).
    """
    scale, zp = qp.per_channel()
    if qp.axis is None:
        return scale, zp
    nd = len(shape)
    if not -nd <= qp.axis < nd:
        raise InputError(f"QParams axis {qp.axis} is out of range for an array of shape {tuple(shape)}")
    ax = qp.axis % nd
    if shape[ax] != scale.size:
        raise InputError(f"array has {shape[ax]} positions along axis {qp.axis} (shape {tuple(shape)}) "
                         f"but the QParams have {scale.size} channels")
    bshape = [1] * nd
    bshape[ax] = scale.size
    return scale.reshape(bshape), zp.reshape(bshape)


def quantize(x, qp: QParams) -> np.ndarray:
    """x [...] float -> q [...] qp.int_dtype: clamp(rint(float32(x) / scale) + zp, qmin, qmax)."""
    x32 = _as_float32(x)
    scale, zp = broadcast_params(x32.shape, qp)
    with np.errstate(over="ignore"):              # x / tiny scale -> inf, then clamped: intended
        v = np.rint(x32 / scale) + zp.astype(np.float32)
    return np.clip(v, qp.qmin, qp.qmax).astype(qp.int_dtype)


def dequantize(q, qp: QParams) -> np.ndarray:
    """q [...] integer -> float32 [...]: float32(q - zp) * scale."""
    q = np.asarray(q)
    if not np.issubdtype(q.dtype, np.integer):
        raise InputError(f"dequantize expects integer codes, got dtype {q.dtype}")
    if q.size and (q.min() < qp.qmin or q.max() > qp.qmax):
        raise InputError(f"codes outside the grid [{qp.qmin}, {qp.qmax}] of these QParams")
    scale, zp = broadcast_params(q.shape, qp)
    return (q.astype(np.int32) - zp).astype(np.float32) * scale


def fake_quant(x, qp: QParams) -> np.ndarray:
    """dequantize(quantize(x)): x [...] -> float32 [...] on the grid."""
    return dequantize(quantize(x, qp), qp)


def symmetric_qparams(lo, hi, bits: int, **kw) -> QParams:
    """Symmetric grid (zero point 0) covering [lo, hi]; see qparams_from_range."""
    return qparams_from_range(lo, hi, bits, symmetric=True, **kw)


def asymmetric_qparams(lo, hi, bits: int, **kw) -> QParams:
    """Unsigned grid with integer zero point covering [min(lo,0), max(hi,0)]; see qparams_from_range."""
    return qparams_from_range(lo, hi, bits, symmetric=False, **kw)


# name -> fn(lo, hi, bits, **kw) -> QParams; the CLI reads its choices from here.
QUANTIZERS = {"symmetric": symmetric_qparams, "asymmetric": asymmetric_qparams}


def get_quantizer(name: str):
    """QUANTIZERS[name], or QuantError listing the valid names."""
    try:
        return QUANTIZERS[name]
    except (KeyError, TypeError):
        raise QuantError(f"unknown quantizer {name!r}; valid: {sorted(QUANTIZERS)}") from None


def group_bounds_equal(C: int, K: int) -> np.ndarray:
    """int64 [K+1] bounds of K contiguous groups over C positions.

    Sizes differ by at most one: the first C % K groups get C // K + 1, the rest C // K.
    K > C (an empty group) or K < 1 -> QuantError.
    """
    C, K = int(C), int(K)
    if K < 1 or C < 1:
        raise QuantError(f"need at least one group and one position, got C={C}, K={K}")
    if K > C:
        raise QuantError(f"cannot split {C} positions into {K} non-empty groups; use at most {C} groups")
    sizes = np.full(K, C // K, dtype=np.int64)
    sizes[: C % K] += 1
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
