"""Evaluation metrics in plain NumPy. Every function returns a fraction (0.8648, not 86.48).

Conventions, each the one its reference implementation uses (the tests compare against them):
  f1        binary, positive class 1; 0 when there are no true and no predicted positives
            (sklearn's f1_score with zero_division=0).
  mcc       Matthews correlation, multi-class form (Gorodkin's R_K, as sklearn computes it);
            0 when undefined (a constant prediction or a single gold class), as sklearn returns.
  pearson   nan when either input is constant (undefined), as scipy.stats.pearsonr returns.
  spearman  Pearson of the ranks, ties get the average of their ranks (scipy.stats.rankdata
            method="average"); nan when either input is constant.
All arithmetic is float64 whatever the input dtype.
"""

from __future__ import annotations

import numpy as np

from npbert.errors import InputError

__all__ = ["accuracy", "f1", "mcc", "pearson", "spearman", "rankdata", "METRICS"]


def _pair(y_true, y_pred, name: str, numeric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(y_true)
    b = np.asarray(y_pred)
    if a.ndim != 1 or b.ndim != 1:
        raise InputError(f"{name}: expected two 1-D arrays, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise InputError(f"{name}: gold has {a.shape[0]} values but predictions have {b.shape[0]}; they must match")
    if a.size == 0:
        raise InputError(f"{name}: no values to score")
    if numeric:
        a = a.astype(np.float64)
        b = b.astype(np.float64)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise InputError(f"{name}: inputs contain NaN or infinity")
    return a, b


def accuracy(y_true, y_pred) -> float:
    """Fraction of exact matches."""
    a, b = _pair(y_true, y_pred, "accuracy")
    return float(np.mean(a == b))


def _binary_counts(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    """-> (tp, fp, fn, tn) with positive class 1."""
    t = a == 1
    p = b == 1
    tp = int(np.count_nonzero(t & p))
    fp = int(np.count_nonzero(~t & p))
    fn = int(np.count_nonzero(t & ~p))
    tn = a.size - tp - fp - fn
    return tp, fp, fn, tn


def f1(y_true, y_pred) -> float:
    """Binary F1 of class 1: 2 TP / (2 TP + FP + FN); 0 when the denominator is 0."""
    a, b = _pair(y_true, y_pred, "f1")
    tp, fp, fn, _ = _binary_counts(a, b)
    den = 2 * tp + fp + fn
    return 0.0 if den == 0 else 2.0 * tp / den


def mcc(y_true, y_pred) -> float:
    """Matthews correlation coefficient (any number of classes); 0 when undefined.

    R_K = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)) with confusion
    matrix C, c = trace(C), s = n, t_k = row sums (gold counts), p_k = column sums (predicted counts).
    For two classes this is (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    """
    a, b = _pair(y_true, y_pred, "mcc")
    classes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    k = classes.size
    ia, ib = inv[: a.size], inv[a.size :]
    C = np.zeros((k, k), np.float64)  # [gold, pred]
    np.add.at(C, (ia, ib), 1.0)
    t = C.sum(axis=1)
    p = C.sum(axis=0)
    c = np.trace(C)
    s = float(a.size)
    cov_ytyp = c * s - float(p @ t)
    cov_ypyp = s * s - float(p @ p)
    cov_ytyt = s * s - float(t @ t)
    if cov_ypyp == 0.0 or cov_ytyt == 0.0:
        return 0.0
    r = cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp)
    return float(np.clip(r, -1.0, 1.0))


def _centered_unit(x: np.ndarray) -> np.ndarray | None:
    """x - mean(x), scaled to unit length; None if x is constant. Scaling by max |.| first keeps
    tiny or huge inputs from under/overflowing in the sum of squares (what scipy.stats.pearsonr does)."""
    if x.max() == x.min():
        return None
    xm = x - x.mean()
    m = np.abs(xm).max()
    if m == 0.0:  # pragma: no cover - non-constant x always has a nonzero deviation
        return None
    xm = xm / m
    return xm / np.sqrt(xm @ xm)


def pearson(x, y) -> float:
    """Pearson correlation; nan when either input is constant."""
    a, b = _pair(x, y, "pearson", numeric=True)
    if a.size < 2:
        raise InputError("pearson: needs at least 2 values")
    ua, ub = _centered_unit(a), _centered_unit(b)
    if ua is None or ub is None:
        return float("nan")
    return float(np.clip(ua @ ub, -1.0, 1.0))


def rankdata(x) -> np.ndarray:
    """Ranks 1..n (float64), ties get the average of the ranks they span (scipy's method="average")."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise InputError(f"rankdata: expected a 1-D array, got shape {x.shape}")
    n = x.size
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # start of each run of equal values in sorted order
    new = np.ones(n, bool)
    new[1:] = xs[1:] != xs[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(n, np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation with average ranks for ties; nan when either input is constant."""
    a, b = _pair(x, y, "spearman", numeric=True)
    if a.size < 2:
        raise InputError("spearman: needs at least 2 values")
    return pearson(rankdata(a), rankdata(b))


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}
