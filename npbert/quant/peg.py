"""Per-embedding-group (PEG) quantization helpers (Bondarenko et al., "Understanding and Overcoming
the Challenges of Efficient Transformer Quantization", sec. 4).

The hidden dim C is split into K contiguous groups, each with its own scale / zero point. A
range-sorted permutation (ascending, stable) first moves the few outlier dims into the last group,
so the other groups keep fine scales. The permutation can be

- applied at quantization time: ``peg_qparams(..., permute=True)`` returns QParams with ``perm``; or
- folded offline into the model, so activations arrive already permuted: permute LayerNorm
  gamma/beta (``permute_vector``), the rows + bias of the Linear that writes the hidden state
  (``permute_linear_out``) and the columns of every Linear that reads it (``permute_linear_in``);
  then quantize with ``peg_qparams(lo[perm], hi[perm], ..., permute=False)``. The residual stream is
  permuted consistently, so every layer sharing it must be folded with the same perm.

Linear weights use the HF layout W [N, K] (out, in): y = x @ W.T + b.
"""

from __future__ import annotations

import numpy as np

from npbert.errors import InputError, QuantError
from npbert.quant.qparams import QParams, qparams_from_range
from npbert.quant.quantizers import group_bounds_equal


def _check_perm(perm, n: int | None = None) -> np.ndarray:
    p = np.asarray(perm)
    if p.ndim != 1 or not np.issubdtype(p.dtype, np.integer) or not np.array_equal(np.sort(p), np.arange(p.size)):
        raise QuantError(f"not a permutation of range(n): dtype {p.dtype}, shape {p.shape}")
    if n is not None and p.size != n:
        raise QuantError(f"permutation has {p.size} entries, the dimension it permutes has {n}")
    return p.astype(np.int64)


def range_permutation(per_dim_range) -> np.ndarray:
    """r [C] (e.g. hi - lo per hidden dim) -> perm int64 [C], stable argsort ascending (outliers last).

    x.take(perm, axis) puts the widest dims at the end; ties keep their original order.
    """
    r = np.asarray(per_dim_range, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)):
        raise InputError(f"per_dim_range must be a non-empty finite 1-D array, got shape {r.shape}")
    return np.argsort(r, kind="stable").astype(np.int64)


def range_optimal_bounds(sorted_ranges, n_groups: int) -> np.ndarray:
    """Group bounds int64 [K+1] over dims sorted by range (ascending) that minimise sum_g n_g * r_g^2,
    r_g the largest range in group g: the total squared quantization step over all dims, up to a
    constant. Equal-size groups put the few widest dims in a group of C/K dims, whose step then
    crushes the rest of that group; here the widest dims get a group to themselves when that pays.
    Exact dynamic programme over contiguous partitions into exactly K non-empty groups (O(K C^2))."""
    r = np.asarray(sorted_ranges, np.float64)
    C = r.shape[0]
    K = int(n_groups)
    if r.ndim != 1 or not 1 <= K <= C:
        raise QuantError(f"range_optimal_bounds: need 1 <= groups <= dims, got {K} groups for {C} dims")
    if np.any(np.diff(r) < 0) or not np.all(np.isfinite(r)):
        raise QuantError("range_optimal_bounds: ranges must be finite and sorted ascending")
    sq = r * r
    best = np.full((K + 1, C + 1), np.inf)  # best[k, j]: dims [0, j) in k groups
    arg = np.zeros((K + 1, C + 1), np.int64)
    best[0, 0] = 0.0
    idx = np.arange(C + 1)
    for k in range(1, K + 1):
        for j in range(k, C + 1):
            i = idx[k - 1 : j]  # the last group is [i, j), its widest dim j - 1
            cost = best[k - 1, i] + (j - i) * sq[j - 1]
            t = int(np.argmin(cost))
            best[k, j], arg[k, j] = cost[t], i[t]
    bounds = [C]
    for k in range(K, 0, -1):
        bounds.append(int(arg[k, bounds[-1]]))
    return np.array(bounds[::-1], np.int64)


def inverse_permutation(perm) -> np.ndarray:
    """perm [C] -> inv [C] with inv[perm] = arange(C): x.take(perm).take(inv) == x."""
    p = _check_perm(perm)
    inv = np.empty_like(p)
    inv[p] = np.arange(p.size, dtype=np.int64)
    return inv


def peg_qparams(lo, hi, n_groups: int, bits: int, symmetric: bool, permute: bool, axis: int = -1,
                signed: bool | None = None) -> QParams:
    """Per-group QParams from per-dim ranges lo, hi [C] (e.g. a per-channel estimator's range()).

    perm = range_permutation(hi - lo) if permute else None (identity);
    bounds = group_bounds_equal(C, n_groups) over the permuted dims;
    group g range = (min lo[perm][b_g:b_g+1], max hi[perm][b_g:b_g+1]).
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if lo.ndim != 1 or lo.shape != hi.shape:
        raise QuantError(f"PEG needs per-dim ranges lo, hi of shape [C]; got {lo.shape}, {hi.shape} "
                         "(construct the estimator with axis=<hidden axis>)")
    C, K = lo.size, int(n_groups)
    if K > C:
        raise QuantError(f"PEG: {K} groups need at least {K} hidden dims, the calibrated ranges have {C}; "
                         "use fewer groups or calibrate per hidden dim (estimator axis=-1)")
    perm = range_permutation(hi - lo) if permute else None
    bounds = group_bounds_equal(C, K)
    lo_p = lo if perm is None else lo[perm]
    hi_p = hi if perm is None else hi[perm]
    glo = np.minimum.reduceat(lo_p, bounds[:-1])      # [K]
    ghi = np.maximum.reduceat(hi_p, bounds[:-1])      # [K]
    return qparams_from_range(glo, ghi, bits, symmetric, signed=signed, axis=axis,
                              group_bounds=bounds, perm=perm)


def permute_vector(v, perm) -> np.ndarray:
    """v [C] -> v[perm] [C] (LayerNorm gamma / beta, per-dim biases)."""
    v = np.asarray(v)
    if v.ndim != 1:
        raise InputError(f"permute_vector expects [C], got {v.shape}")
    return v[_check_perm(perm, v.shape[0])]


def permute_linear_in(W, perm) -> np.ndarray:
    """W [N, K] -> W[:, perm]: the Linear now reads permuted inputs, x[perm] @ W[:, perm].T == x @ W.T."""
    W = np.asarray(W)
    if W.ndim != 2:
        raise InputError(f"permute_linear_in expects W [N, K], got {W.shape}")
    return W[:, _check_perm(perm, W.shape[1])]


def permute_linear_out(W, b, perm) -> tuple[np.ndarray, np.ndarray | None]:
    """W [N, K], b [N] -> (W[perm, :], b[perm]): the Linear now writes y[perm]. b may be None."""
    W = np.asarray(W)
    if W.ndim != 2:
        raise InputError(f"permute_linear_out expects W [N, K], got {W.shape}")
    p = _check_perm(perm, W.shape[0])
    if b is None:
        return W[p, :], None
    b = np.asarray(b)
    if b.shape != (W.shape[0],):
        raise InputError(f"bias shape {b.shape} != ({W.shape[0]},)")
    return W[p, :], b[p]
