"""npbert.eval.metrics against scipy.stats and a hand-written sklearn-equivalent F1 / MCC, plus
hypothesis properties (ties, constant inputs, permutation invariance, ranges)."""

from __future__ import annotations

import importlib.util
import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from npbert.errors import InputError
from npbert.eval.metrics import accuracy, f1, mcc, pearson, rankdata, spearman

# Correlations are float64 sums of n <= 200 products of unit-normalised terms: the rounding error is
# a few n * eps_64 ~ 1e-13; 1e-9 leaves four orders of headroom and still catches any formula slip.
CORR_TOL = 1e-9

labels = st.lists(st.integers(0, 1), min_size=1, max_size=200)
# Bounded floats, no subnormals: the correlations are scale-free, the references are not robust to
# values near the float64 overflow / underflow limits.
reals = st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False)
# Few distinct values -> many ties.
tied = st.integers(-3, 3).map(float)


def pairs_of(elem, min_size=2, max_size=200):
    return st.integers(min_size, max_size).flatmap(lambda n: st.tuples(st.lists(elem, min_size=n, max_size=n), st.lists(elem, min_size=n, max_size=n)))


needs_scipy = pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="scipy not installed (extra: peers)")
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn not installed")


# ------------------------------------------------------------------ hand-written references


def f1_ref(y, p):
    """sklearn.metrics.f1_score(y, p, pos_label=1, zero_division=0), written out."""
    tp = sum(1 for a, b in zip(y, p) if a == 1 and b == 1)
    fp = sum(1 for a, b in zip(y, p) if a != 1 and b == 1)
    fn = sum(1 for a, b in zip(y, p) if a == 1 and b != 1)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return 2 * prec * rec / (prec + rec) if prec + rec else 0.0


def mcc_ref(y, p):
    """Binary MCC (TP TN - FP FN) / sqrt(...), 0 when a marginal is empty (sklearn's convention)."""
    tp = sum(1 for a, b in zip(y, p) if a == 1 and b == 1)
    tn = sum(1 for a, b in zip(y, p) if a == 0 and b == 0)
    fp = sum(1 for a, b in zip(y, p) if a == 0 and b == 1)
    fn = sum(1 for a, b in zip(y, p) if a == 1 and b == 0)
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return (tp * tn - fp * fn) / math.sqrt(den) if den else 0.0


# ----------------------------------------------------------------------- examples by hand


def test_known_values():
    y = [1, 1, 0, 0, 1, 0]
    p = [1, 0, 0, 1, 1, 0]
    assert accuracy(y, p) == pytest.approx(4 / 6)
    assert f1(y, p) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert mcc(y, p) == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    np.testing.assert_array_equal(rankdata([10, 20, 20, 5]), [2.0, 3.5, 3.5, 1.0])


def test_undefined_cases():
    assert f1([0, 0], [0, 0]) == 0.0  # no positives anywhere
    assert mcc([1, 1, 1], [1, 1, 1]) == 0.0  # one class only
    assert mcc([0, 1, 0], [1, 1, 1]) == 0.0  # constant prediction
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, 2, 3], [7, 7, 7]))
    assert math.isnan(pearson([0.1] * 3, [1, 2, 3]))  # mean of equal floats may round: still constant


def test_bad_arguments():
    with pytest.raises(InputError, match="must match"):
        accuracy([1, 0], [1])
    with pytest.raises(InputError, match="no values"):
        f1([], [])
    with pytest.raises(InputError, match="1-D"):
        mcc([[1]], [[1]])
    with pytest.raises(InputError, match="at least 2"):
        pearson([1.0], [2.0])
    with pytest.raises(InputError, match="NaN"):
        spearman([1.0, float("nan")], [1.0, 2.0])


# ------------------------------------------------------------------------- vs references


@given(pairs_of(st.integers(0, 1), min_size=1))
def test_f1_mcc_accuracy_match_reference(yp):
    y, p = yp
    assert f1(y, p) == pytest.approx(f1_ref(y, p), abs=1e-12)
    assert mcc(y, p) == pytest.approx(mcc_ref(y, p), abs=1e-12)
    assert accuracy(y, p) == pytest.approx(sum(a == b for a, b in zip(y, p)) / len(y), abs=1e-15)


@needs_sklearn
@given(pairs_of(st.integers(0, 3), min_size=1))
def test_multiclass_mcc_matches_sklearn(yp):
    import sklearn.metrics as sklearn_metrics

    y, p = yp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sklearn_metrics.matthews_corrcoef(y, p)
    assert mcc(y, p) == pytest.approx(ref, abs=1e-12)


@needs_scipy
@given(pairs_of(st.one_of(reals, tied)))
def test_correlations_match_scipy(xy):
    import scipy.stats as stats

    x, y = map(np.asarray, xy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input
        rp = stats.pearsonr(x, y)[0]
        rs = stats.spearmanr(x, y)[0]
    for ours, ref in ((pearson(x, y), rp), (spearman(x, y), rs)):
        if math.isnan(ref):
            assert math.isnan(ours)
        else:
            assert ours == pytest.approx(ref, abs=CORR_TOL)


@needs_scipy
@given(st.lists(st.one_of(reals, tied), min_size=1, max_size=200))
def test_rankdata_matches_scipy(x):
    import scipy.stats as stats

    np.testing.assert_array_equal(rankdata(np.asarray(x)), stats.rankdata(x, method="average"))


# ---------------------------------------------------------------------------- properties


@given(pairs_of(st.integers(0, 1), min_size=1), st.randoms(use_true_random=False))
def test_classification_metrics_ranges_and_permutation(yp, rnd):
    y, p = yp
    idx = list(range(len(y)))
    rnd.shuffle(idx)
    ys, ps = [y[i] for i in idx], [p[i] for i in idx]
    for fn, lo in ((accuracy, 0.0), (f1, 0.0), (mcc, -1.0)):
        v = fn(y, p)
        assert lo <= v <= 1.0
        assert fn(ys, ps) == pytest.approx(v, abs=1e-12)
    assert accuracy(y, y) == 1.0
    assert mcc(y, p) == pytest.approx(mcc(p, y), abs=1e-12)  # symmetric
    assert f1(y, p) == pytest.approx(f1(p, y), abs=1e-12)


@given(pairs_of(st.one_of(reals, tied)), st.randoms(use_true_random=False))
def test_correlation_properties(xy, rnd):
    x, y = map(np.asarray, xy)
    idx = np.array(rnd.sample(range(len(x)), len(x)))
    for fn in (pearson, spearman):
        v = fn(x, y)
        if math.isnan(v):
            assert np.ptp(x) == 0 or np.ptp(y) == 0  # nan only for a constant input
            continue
        assert -1.0 <= v <= 1.0
        assert fn(x[idx], y[idx]) == pytest.approx(v, abs=CORR_TOL)  # permutation invariant
        assert fn(y, x) == pytest.approx(v, abs=CORR_TOL)  # symmetric
        assert fn(x, -y) == pytest.approx(-v, abs=CORR_TOL)


@given(st.lists(st.one_of(reals, tied), min_size=2, max_size=200))
def test_self_correlation_and_monotone_invariance(x):
    x = np.asarray(x)
    assume(np.ptp(x) > 0)
    assert pearson(x, x) == pytest.approx(1.0, abs=CORR_TOL)
    assert spearman(x, x) == pytest.approx(1.0, abs=CORR_TOL)
    # Spearman only sees ranks: a strictly increasing transform changes nothing. Scaling by powers
    # of two is exact in floating point, so no two values can round together into a new tie.
    assert spearman(x, np.where(x > 0, x * 8.0, x * 0.5)) == pytest.approx(1.0, abs=CORR_TOL)


@given(st.lists(st.one_of(reals, tied), min_size=1, max_size=200))
def test_ranks_sum_and_ties(x):
    r = rankdata(np.asarray(x))
    n = len(x)
    assert r.sum() == pytest.approx(n * (n + 1) / 2)
    for v in set(x):  # equal values share one rank
        assert len({r[i] for i in range(n) if x[i] == v}) == 1
