"""NumPy reference of TM-IQR clipping (El-Kurdi et al., "Zero-Shot Dynamic Quantization for
Transformer Inference", Algorithm 1). The fast, fused Numba version lives in npbert/kernels and must
agree with this one bit for bit.

    m_l = max_h |x[l, h]|                        token abs-max, x [L, H] -> m [L]
    Q1, Q3 = quantile(m, 0.25), quantile(m, 0.75)  Hyndman-Fan type 7 (np.quantile method="linear")
    t = Q3 + 1.5 (Q3 - Q1)                       float64, then rounded once to float32
    t = min(t, max_l m_l)                        never wider than the abs-max (plain dynamic range)
    x_clipped = clip(x, -t, t)                   float32

Quantile definition (type 7, exactly as NumPy computes it, in float64 on the float32 maxima):
    sort m ascending; h = (L - 1) p; j = floor(h); g = h - j; d = m_(j+1) - m_(j)
    Q_p = m_(j) + g d           if g < 0.5
    Q_p = m_(j+1) - (1 - g) d   if g >= 0.5           (j + 1 capped at L - 1)
For p in {0.25, 0.75}, h and g are exact (g in {0, .25, .5, .75}), so a selection kernel (no sort)
that finds m_(j), m_(j+1) reproduces it exactly. Q3 + 1.5 IQR leaves at least 75% of the token
maxima unclipped for every L >= 1.
"""

from __future__ import annotations

import math

import numpy as np

from npbert.errors import InputError
from npbert.quant.qparams import QParams, qparams_from_range

IQR_FACTOR = 1.5


def _check_2d(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"TM-IQR expects a non-empty [L, H] array (one sequence's valid tokens), "
                         f"got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InputError("TM-IQR input has non-finite values")
    return x


def token_absmax(x) -> np.ndarray:
    """x [L, H] -> m [L] float32: max_h |x[l, h]|."""
    return np.max(np.abs(_check_2d(x)), axis=1)


def quantile_type7(v, p: float) -> float:
    """Hyndman-Fan type 7 quantile of v [L], written out (see module doc); equals np.quantile(v64, p)."""
    s = np.sort(np.asarray(v, dtype=np.float64).ravel())
    if s.size == 0:
        raise InputError("quantile of an empty array")
    h = (s.size - 1) * p
    j = int(math.floor(h))
    g = h - j
    a, b = s[j], s[min(j + 1, s.size - 1)]
    d = b - a
    return float(a + d * g) if g < 0.5 else float(b - d * (1.0 - g))


def tmiqr_threshold_ref(token_max) -> np.float32:
    """m [L] -> t = Q3 + 1.5 (Q3 - Q1) (uncapped), float64 math, rounded to float32."""
    m = np.asarray(token_max, dtype=np.float64).ravel()
    if m.size == 0 or not np.all(np.isfinite(m)):
        raise InputError("TM-IQR needs at least one finite token maximum")
    q1, q3 = np.quantile(m, [0.25, 0.75], method="linear")
    return np.float32(q3 + IQR_FACTOR * (q3 - q1))


def tmiqr_clip_threshold_ref(x) -> np.float32:
    """x [L, H] -> min(t, max |x|) float32: the clip threshold actually applied."""
    m = token_absmax(x)
    return np.minimum(tmiqr_threshold_ref(m), m.max())


def tmiqr_clip_ref(x) -> np.ndarray:
    """x [L, H] -> clip(x, -t, t) float32 with t = tmiqr_clip_threshold_ref(x)."""
    x = _check_2d(x)
    t = tmiqr_clip_threshold_ref(x)
    return np.clip(x, -t, t)


def tmiqr_qparams_ref(x, bits: int = 8, symmetric: bool = True) -> QParams:
    """Per-tensor dynamic QParams of the clipped x [L, H]: range (min, max) of tmiqr_clip_ref(x)."""
    xc = tmiqr_clip_ref(x)
    return qparams_from_range(xc.min(), xc.max(), bits, symmetric)
