"""Hypothesis properties of the FP32 forward and its reference ops."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npbert import ops
from npbert.io.tokenizer import Batch
from npbert.model import load_model

from tests.conftest import GOLDEN

_MODELS = {name: load_model(GOLDEN / name) for name in ("tiny-bert", "tiny-roberta-bf16")}
# Padding and batching change only which float32 reductions run together, never their terms:
# masked keys get exp(min - max) == 0 exactly. Differences come from BLAS blocking on different
# shapes: a few float32 ulps of O(1) activations.
BATCH_ATOL = 1e-5

finite = st.floats(-20, 20, width=32, allow_nan=False)


@st.composite
def token_batches(draw, vocab=97, pad=0, lo=5, max_len=18):
    B = draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(1, max_len), min_size=B, max_size=B))
    T = max(lengths)
    ids = np.full((B, T), pad, np.int64)
    mask = np.zeros((B, T), np.int64)
    for b, n in enumerate(lengths):
        ids[b, :n] = draw(hnp.arrays(np.int64, n, elements=st.integers(lo, vocab - 1)))
        mask[b, :n] = 1
    types = np.zeros_like(ids)
    return Batch(ids, mask, types, np.zeros(B, bool))


def _pad(b: Batch, extra: int, pad: int) -> Batch:
    B, T = b.input_ids.shape
    ids = np.concatenate([b.input_ids, np.full((B, extra), pad, np.int64)], axis=1)
    z = np.zeros((B, extra), np.int64)
    return Batch(ids, np.concatenate([b.attention_mask, z], 1), np.concatenate([b.token_type_ids, z], 1), b.truncated)


@settings(max_examples=15)
@given(st.sampled_from(sorted(_MODELS)), st.data(), st.integers(1, 6))
def test_padding_does_not_change_unmasked_outputs(name, data, extra):
    model = _MODELS[name]
    pad = model.config.pad_token_id
    b = data.draw(token_batches(pad=pad, lo=4))
    o1 = model.forward(b)
    o2 = model.forward(_pad(b, extra, pad))
    T = b.input_ids.shape[1]
    m = b.attention_mask.astype(bool)
    np.testing.assert_allclose(o2.last_hidden_state[:, :T][m], o1.last_hidden_state[m], atol=BATCH_ATOL, rtol=0)
    np.testing.assert_allclose(o2.logits, o1.logits, atol=BATCH_ATOL, rtol=0)


@settings(max_examples=15)
@given(st.sampled_from(sorted(_MODELS)), st.data())
def test_batch_equals_rows_one_by_one(name, data):
    model = _MODELS[name]
    b = data.draw(token_batches(pad=model.config.pad_token_id, lo=4))
    full = model.forward(b)
    for r in range(len(b)):
        n = int(b.attention_mask[r].sum())
        row = Batch(b.input_ids[r : r + 1, :n], b.attention_mask[r : r + 1, :n], b.token_type_ids[r : r + 1, :n], b.truncated[r : r + 1])
        o = model.forward(row)
        np.testing.assert_allclose(o.last_hidden_state[0], full.last_hidden_state[r, :n], atol=BATCH_ATOL, rtol=0)
        np.testing.assert_allclose(o.logits[0], full.logits[r], atol=BATCH_ATOL, rtol=0)


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40), elements=finite))
def test_softmax_rows_sum_to_one(x):
    p = ops.softmax(x)
    assert (p >= 0).all()
    # Each row sums n terms in float32: error <= n * eps; rows are at most 40 long.
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=40 * np.finfo(np.float32).eps)


@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(2, 64)), elements=finite))
def test_layer_norm_zero_mean_unit_variance(x):
    C = x.shape[1]
    y = ops.layer_norm(x, np.ones(C, np.float32), np.zeros(C, np.float32), 1e-12)
    spread = x.max(axis=1) - x.min(axis=1)
    ok = spread > 1e-2  # rows of near-constant values have variance ~ eps and no unit-variance promise
    # float32 mean/variance of C terms: error ~ C * eps relative.
    tol = 64 * C * np.finfo(np.float32).eps
    np.testing.assert_allclose(y[ok].mean(axis=1), 0.0, atol=tol)
    np.testing.assert_allclose(y[ok].var(axis=1), 1.0, atol=tol)


@given(hnp.arrays(np.float32, st.integers(1, 200), elements=st.floats(-6, 6, width=32)))
def test_erf_matches_math_erf(x):
    import math

    ref = np.array([math.erf(float(v)) for v in x])
    # A&S 7.1.26 bound 1.5e-7 plus float32 evaluation (~2 ulp of 1).
    np.testing.assert_allclose(ops.erf(x), ref, atol=1.5e-7 + 4 * np.finfo(np.float32).eps, rtol=0)
