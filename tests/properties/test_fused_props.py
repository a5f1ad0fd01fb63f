"""Property tests (hypothesis) of the fused float kernels against ops.py over drawn shapes and values.
Tolerances as in tests/unit/test_fused.py (and why there)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npbert import ops
from npbert.kernels import fused as F

rows = st.integers(1, 6)
cols = st.one_of(st.integers(1, 40), st.sampled_from([127, 128, 129, 384]))


@given(hnp.arrays(np.float32, st.tuples(rows, cols), elements=st.floats(-87.0, 88.0, width=32)))
def test_exp_relative_error(x):
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(F.exp(x) - ref) / ref) <= 4e-7


@given(hnp.arrays(np.float32, st.tuples(rows, cols), elements=st.floats(-1e4, 1e4, width=32)))
def test_softmax_is_a_distribution_equal_to_ops(x):
    p = F.softmax_rows(x)
    assert np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p, ops.softmax(x), atol=1e-6, rtol=0)


@given(hnp.arrays(np.float32, st.tuples(rows, cols), elements=st.floats(-30.0, 30.0, width=32)),
       st.sampled_from(["gelu", "gelu_new", "relu"]))
def test_activation_equals_ops(x, act):
    got = F.activation(act, x)
    np.testing.assert_array_less(np.abs(got - ops.ACTIVATIONS[act](x)), 1e-6 * np.maximum(1.0, np.abs(x)) + 1e-30)


@given(hnp.arrays(np.float32, st.tuples(rows, st.integers(2, 64)), elements=st.floats(-1e3, 1e3, width=32)))
def test_layer_norm_moments(x):
    C = x.shape[1]
    y = F.layer_norm(x, np.ones(C, np.float32), np.zeros(C, np.float32), 1e-5)
    var = x.astype(np.float64).var(-1)
    live = var > 1e-2  # rows that are not (nearly) constant: eps does not dominate
    # The mean is subtracted as float32(mean), off by up to half an ulp of |mean| (2^-24 |mean|), which
    # shifts every centred value alike; normalised, that is 2^-24 |mean| / sqrt(var + eps) in the output
    # mean (e.g. one -502 among 27 -513: |mean| 512.6, std 2.0 -> 1.5e-5), beside float32 rounding.
    shift = 2.0**-24 * np.abs(x.astype(np.float64).mean(-1)) / np.sqrt(var + 1e-5)
    assert np.all(np.abs(y.mean(-1, dtype=np.float64)[live]) <= 1e-5 + shift[live])
    np.testing.assert_allclose(y.astype(np.float64).var(-1)[live], var[live] / (var[live] + 1e-5), atol=1e-4)
    # vs ops: NumPy's float32 mean is off by up to ~C ulp of max|x|, which the normalisation divides by
    # sqrt(var + eps); the fused float64 mean is not (a constant row gives exactly 0 here, not ops' 4e-5)
    ref = ops.layer_norm(x, np.ones(C, np.float32), np.zeros(C, np.float32), 1e-5)
    mean_err = C * np.finfo(np.float32).eps * np.abs(x).max(-1) / np.sqrt(var + 1e-5)
    assert np.all(np.abs(y - ref) <= (5e-6 + mean_err)[:, None])
