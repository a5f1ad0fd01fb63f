"""Order statistics by selection (no sort): k-th smallest, type-7 quantile, TM-IQR threshold.

All public functions are @njit so that compiled code (quantize_dynamic's core) can call them; they
copy their input and never mutate the caller's array.

Algorithm: quickselect with a deterministic pivot (median of 3 for short ranges, Tukey's ninther
for >= 64 elements) and a three-way (Dutch flag) partition, so runs of equal values (many tokens
with the same abs-max, zeros of padding) cost one pass instead of degrading to O(L^2). Expected
O(L). Introselect guard: after 2*log2(L) + 8 partition rounds that did not finish (an adversarial
input for the pivot rule), the remaining range is sorted (O(L log L) worst case, never quadratic).

NaN is rejected (InputError): abs-max values reaching here have been checked finite, and a NaN has
no place in an order (np.partition sorts it last; np.quantile then returns NaN).
"""

from __future__ import annotations

import math

import numpy as np

from npbert._jit import njit
from npbert.errors import InputError

__all__ = ["select_kth", "quantile_linear", "tmiqr_threshold"]


@njit
def _med3(a, b, c):
    """Median of three values (no NaN)."""
    if a < b:
        if b < c:
            return b
        return c if a < c else a
    # b <= a
    if a < c:
        return a
    return c if b < c else b


@njit
def _select_inplace(buf, lo, hi, k):
    """Partially order buf[lo:hi+1] in place so that buf[k] is its (k-lo)-th smallest element, every
    element left of k is <= buf[k] and every element right of k is >= buf[k]. Returns buf[k].

    Precondition: lo <= k <= hi, no NaN in the range, and everything outside [lo, hi] is already
    ordered against the range (true for a whole array, and for a right part of a previous call).
    """
    n = hi - lo + 1
    limit = 2 * int(math.log2(n)) + 8 if n > 1 else 1
    rounds = 0
    while hi > lo:
        if rounds >= limit:  # introselect fallback: sort what is left, O(n log n) worst case
            buf[lo : hi + 1].sort()
            return buf[k]
        rounds += 1
        span = hi - lo
        mid = lo + span // 2
        if span >= 64:  # Tukey's ninther: median of three medians of three
            e = span // 8
            p1 = _med3(buf[lo], buf[lo + e], buf[lo + 2 * e])
            p2 = _med3(buf[mid - e], buf[mid], buf[mid + e])
            p3 = _med3(buf[hi - 2 * e], buf[hi - e], buf[hi])
            pivot = _med3(p1, p2, p3)
        else:
            pivot = _med3(buf[lo], buf[mid], buf[hi])
        # three-way partition of [lo, hi]: [lo, lt) < pivot, [lt, gt] == pivot, (gt, hi] > pivot
        lt = lo
        i = lo
        gt = hi
        while i <= gt:
            v = buf[i]
            if v < pivot:
                buf[i] = buf[lt]
                buf[lt] = v
                lt += 1
                i += 1
            elif v > pivot:
                buf[i] = buf[gt]
                buf[gt] = v
                gt -= 1
            else:
                i += 1
        if k < lt:
            hi = lt - 1
        elif k > gt:
            lo = gt + 1
        else:
            return buf[k]  # buf[k] == pivot, ordered against both sides
    return buf[k]


@njit
def _check_no_nan(values):
    for i in range(values.shape[0]):
        if values[i] != values[i]:
            raise InputError("NaN in the values to select from: order statistics need non-NaN input")


@njit
def select_kth(values, k):
    """The k-th smallest element of values (0-based, k in [0, L)); equals np.partition(values, k)[k].

    values: float [L] (any float dtype; returned in that dtype). The input is copied, never mutated.
    """
    n = values.shape[0]
    if n == 0:
        raise InputError("select_kth: empty input; pass at least one value")
    if k < 0 or k >= n:
        raise InputError("select_kth: k out of range; pass 0 <= k < len(values)")
    buf = values.copy()
    _check_no_nan(buf)
    return _select_inplace(buf, 0, n - 1, k)


@njit
def _quantile_inplace(buf, lo, p):
    """Type-7 quantile of buf (partially reordered in place). Precondition for lo > 0: buf[:lo] holds
    order statistics 0..lo-1 already (everything right of lo is >= them), so the search starts at lo.
    Returns (value, previous index) so that a larger quantile can start its search there.
    """
    n = buf.shape[0]
    # virtual index, the float64 operation numpy's "linear" method uses: (n - 1) * p
    h = float(n - 1) * p
    fh = math.floor(h)
    gamma = h - fh
    if h >= n - 1:  # at or beyond the last index: the maximum, no interpolation (numpy's rule)
        prev = n - 1
        x0 = _select_inplace(buf, lo, n - 1, prev)
        return x0, prev
    prev = int(fh)
    if prev < lo:
        prev = lo
    x0 = _select_inplace(buf, lo, n - 1, prev)
    # next order statistic: the minimum of the right part (all of it is >= x0)
    x1 = buf[prev + 1]
    for i in range(prev + 2, n):
        if buf[i] < x1:
            x1 = buf[i]
    # numpy's _lerp in the values' dtype, gamma entering as a weak Python float:
    #   d = x1 - x0;  q = x0 + d*gamma  if gamma < 0.5  else  x1 - d*(1 - gamma)
    d = x1 - x0
    if gamma >= 0.5:
        q = x1 - d * _as_dtype(buf, 1.0 - gamma)
    else:
        q = x0 + d * _as_dtype(buf, gamma)
    return q, prev


@njit
def _as_dtype(buf, v):
    """v (float64) rounded to buf's dtype: the weak-scalar conversion numpy applies."""
    tmp = np.empty(1, dtype=buf.dtype)
    tmp[0] = v
    return tmp[0]


@njit
def quantile_linear(values, p):
    """Sample quantile, Hyndman-Fan type 7, equal to np.quantile(values, p, method="linear"):

        h = (L - 1) p    (float64, as numpy computes it)
        Q = x[floor h] + (h - floor h) (x[floor h + 1] - x[floor h])

    where x is values sorted ascending (found by selection, never a sort: select floor(h), then the
    next order statistic is the minimum of the right part). The interpolation is numpy's _lerp, in
    the values' dtype (float32 in, float32 arithmetic), including its switch to
    x1 - d (1 - gamma) for gamma >= 0.5, so the result agrees bit for bit.
    """
    n = values.shape[0]
    if n == 0:
        raise InputError("quantile_linear: empty input; pass at least one value")
    if not (p >= 0.0 and p <= 1.0):
        raise InputError("quantile_linear: p must lie in [0, 1]")
    buf = values.copy()
    _check_no_nan(buf)
    q, _ = _quantile_inplace(buf, 0, p)
    return q


@njit
def _tmiqr_inplace(buf):
    """TM-IQR threshold of buf (reordered in place): Q3 + 1.5 (Q3 - Q1), arithmetic in buf's dtype."""
    q1, prev1 = _quantile_inplace(buf, 0, 0.25)
    q3, _ = _quantile_inplace(buf, prev1, 0.75)  # Q3's index is >= Q1's: search only the right part
    return q3 + _as_dtype(buf, 1.5) * (q3 - q1)


@njit
def tmiqr_threshold(token_absmax):
    """TM-IQR clipping threshold (El-Kurdi et al., Algorithm 1) over L per-token abs-max values:

        t = Q3 + 1.5 (Q3 - Q1),  Q1, Q3 = quantile_linear(token_absmax, 0.25 / 0.75)

    computed in token_absmax's dtype like NumPy would (float32 in, float32 out). L = 1 gives the
    value itself (Q1 = Q3). The caller caps t at the abs-max (clipping above the max is pointless).
    """
    n = token_absmax.shape[0]
    if n == 0:
        raise InputError("tmiqr_threshold: no tokens; pass at least one per-token abs-max")
    buf = token_absmax.copy()
    _check_no_nan(buf)
    return _tmiqr_inplace(buf)
