"""Hypothesis properties of npbert.quant: quantizers, QParams, estimators, TM-IQR reference, PEG.

Tolerances: integer codes and fake-quant results compare exactly (the formula is fixed, see
quantizers.py). The rounding-error bound |x - fq(x)| <= scale/2 gets QERR_SLACK: x / scale and
(q - zp) * scale are each one float32 rounding (relative 2^-24), which can move the code across a
.5 tie and perturb the product, so the bound is scale/2 + 2 eps32 (|x| + scale).
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npbert.errors import CalibrationError, QuantError
from npbert.quant import (ESTIMATORS, QParams, dequantize, fake_quant, group_bounds_equal, inverse_permutation,
                          make_estimator, peg_qparams, permute_linear_in, permute_linear_out, permute_vector,
                          qparams_from_range, quantize, range_permutation, tmiqr_clip_ref, tmiqr_threshold_ref,
                          token_absmax)
from npbert.quant.tmiqr import quantile_type7, tmiqr_clip_threshold_ref

EPS32 = float(np.finfo(np.float32).eps)
FAST = settings(deadline=None, max_examples=60)
SLOW = settings(deadline=None, max_examples=25)

bits_st = st.integers(2, 16)
# float32 values over many binades (subnormals included) but away from float32 max, where a grid's
# end points would overflow (QParams rejects such ranges; tested in the unit tests).
val_st = st.floats(-1e6, 1e6, width=32, allow_nan=False)
shape_st = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)


def arrays(shape, elements=val_st):
    return hnp.arrays(np.float32, shape, elements=elements)


def qerr_bound(x, scale):
    return 0.5 * scale + 2 * EPS32 * (np.abs(x) + scale)


@st.composite
def range_st(draw, shape=()):
    """lo <= hi float32 arrays of `shape` (possibly zero-width, possibly excluding 0)."""
    a = draw(arrays(shape))
    b = draw(arrays(shape))
    return np.minimum(a, b), np.maximum(a, b)


@st.composite
def x_and_qp(draw, granularity=None):
    """(x, qp) for a random granularity: tensor, channel (any axis) or group (random bounds, perm)."""
    shape = draw(shape_st)
    x = draw(arrays(shape))
    gran = granularity or draw(st.sampled_from(["tensor", "channel", "group"]))
    bits, sym = draw(bits_st), draw(st.booleans())
    if gran == "tensor":
        lo, hi = draw(range_st())
        return x, qparams_from_range(lo, hi, bits, sym)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    C = shape[axis]
    if gran == "channel":
        lo, hi = draw(range_st((C,)))
        return x, qparams_from_range(lo, hi, bits, sym, axis=axis)
    cuts = draw(st.sets(st.integers(1, C - 1), max_size=C - 1)) if C > 1 else set()
    bounds = np.array([0, *sorted(cuts), C], dtype=np.int64)
    perm = draw(st.none() | st.permutations(range(C)).map(lambda p: np.array(p, dtype=np.int64)))
    lo, hi = draw(range_st((len(bounds) - 1,)))
    return x, qparams_from_range(lo, hi, bits, sym, axis=axis, group_bounds=bounds, perm=perm)


def grid_ends(qp, shape):
    """float64 (lowest, highest) representable value per element, broadcast to `shape`."""
    from npbert.quant.quantizers import broadcast_params
    s, z = broadcast_params(shape, qp)
    s, z = s.astype(np.float64), z.astype(np.float64)
    return np.broadcast_to((qp.qmin - z) * s, shape), np.broadcast_to((qp.qmax - z) * s, shape)


# --- quantizers -------------------------------------------------------------------------------------

@FAST
@given(x_and_qp())
def test_error_within_half_step_inside_grid_and_clamps_outside(xqp):
    x, qp = xqp
    q = quantize(x, qp)
    assert q.dtype == qp.int_dtype and q.shape == x.shape
    assert q.min() >= qp.qmin and q.max() <= qp.qmax
    from npbert.quant.quantizers import broadcast_params
    s = np.broadcast_to(broadcast_params(x.shape, qp)[0], x.shape).astype(np.float64)
    glo, ghi = grid_ends(qp, x.shape)
    x64, fq = x.astype(np.float64), dequantize(q, qp).astype(np.float64)
    inside = (x64 >= glo) & (x64 <= ghi)
    assert np.all(np.abs(fq - x64)[inside] <= qerr_bound(x64, s)[inside])
    assert np.all(q[x64 < glo - s / 2] == qp.qmin)
    assert np.all(q[x64 > ghi + s / 2] == qp.qmax)


@FAST
@given(st.data(), bits_st, st.booleans())
def test_error_within_half_step_inside_calibrated_range(data, bits, sym):
    # values inside [lo, hi] (widened to 0 for asymmetric) are never off by more than scale/2, even
    # though the integer zero point shifts the asymmetric grid by up to scale/2
    lo, hi = data.draw(range_st())
    qp = qparams_from_range(lo, hi, bits, sym)
    a, b = (min(lo, 0), max(hi, 0)) if not sym else (lo, hi)
    x = data.draw(arrays((8,), st.floats(float(a), float(b), width=32)))
    err = np.abs(fake_quant(x, qp).astype(np.float64) - x)
    assert np.all(err <= qerr_bound(x.astype(np.float64), float(qp.scale)))


@FAST
@given(x_and_qp())
def test_fake_quant_idempotent(xqp):
    x, qp = xqp
    y = fake_quant(x, qp)
    assert np.array_equal(fake_quant(y, qp), y)
    assert np.array_equal(quantize(y, qp), quantize(x, qp))


@FAST
@given(x_and_qp(granularity="tensor"))
def test_monotone(xqp):
    x, qp = xqp
    xs = np.sort(x.ravel())
    assert np.all(np.diff(quantize(xs, qp).astype(np.int64)) >= 0)
    assert np.all(np.diff(fake_quant(xs, qp)) >= 0)


@FAST
@given(range_st(), bits_st, st.sampled_from([None, True]))
def test_symmetric_maps_zero_to_zero(r, bits, signed):
    qp = qparams_from_range(*r, bits, symmetric=True, signed=signed)
    assert int(qp.zero_point) == 0
    assert quantize(np.float32(0.0), qp) == 0 and fake_quant(np.zeros(3, np.float32), qp).tolist() == [0, 0, 0]
    # the signed grid is narrow: negation stays in the grid
    assert qp.qmin == (-qp.qmax if qp.signed else 0)


@FAST
@given(range_st(), bits_st)
def test_asymmetric_zero_point_in_grid_and_zero_exact(r, bits):
    qp = qparams_from_range(*r, bits, symmetric=False)
    assert qp.zero_point.dtype == np.int32 and qp.qmin <= int(qp.zero_point) <= qp.qmax
    assert not qp.signed and qp.qmin == 0 and qp.qmax == 2**bits - 1
    assert quantize(np.float32(0.0), qp) == qp.zero_point
    assert fake_quant(np.float32(0.0), qp) == 0.0


@FAST
@given(x_and_qp(granularity="channel"))
def test_per_channel_equals_per_tensor_slice_by_slice(xqp):
    x, qp = xqp
    q = quantize(x, qp)
    for c in range(qp.scale.size):
        qc = QParams(qp.scale[c], qp.zero_point[c], qp.bits, qp.signed)
        assert np.array_equal(q.take(c, axis=qp.axis), quantize(x.take(c, axis=qp.axis), qc))


@FAST
@given(st.data(), bits_st, st.booleans())
def test_one_group_without_perm_equals_per_tensor(data, bits, sym):
    shape = data.draw(shape_st)
    x = data.draw(arrays(shape))
    axis = data.draw(st.integers(0, len(shape) - 1))
    C = shape[axis]
    lo, hi = data.draw(range_st((C,)))
    g = peg_qparams(lo, hi, 1, bits, sym, permute=False, axis=axis)
    t = qparams_from_range(lo.min(), hi.max(), bits, sym)
    assert g.granularity == "group" and g.scale[0] == t.scale and g.zero_point[0] == t.zero_point
    assert np.array_equal(quantize(x, g), quantize(x, t))
    assert np.array_equal(fake_quant(x, g), fake_quant(x, t))


@FAST
@given(x_and_qp(granularity="group"))
def test_permuted_groups_equal_groups_on_permuted_tensor(xqp):
    x, qp = xqp
    assume(qp.perm is not None)
    plain = QParams(qp.scale, qp.zero_point, qp.bits, qp.signed, qp.axis, qp.group_bounds)
    inv = inverse_permutation(qp.perm)
    expect = quantize(x.take(qp.perm, axis=qp.axis), plain).take(inv, axis=qp.axis)
    assert np.array_equal(quantize(x, qp), expect)


@FAST
@given(st.integers(1, 40).flatmap(lambda n: st.permutations(range(n))))
def test_permutation_inverse_round_trip(p):
    p = np.array(p, dtype=np.int64)
    inv = inverse_permutation(p)
    x = np.arange(p.size) * 10
    assert np.array_equal(x.take(p).take(inv), x) and np.array_equal(x.take(inv).take(p), x)
    assert np.array_equal(inverse_permutation(inv), p)


@FAST
@given(st.data())
def test_fold_permutation_into_linears_is_exact(data):
    # integer-valued weights/activations so the permuted sums are exact whatever their order
    n, k, m = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 8)), data.draw(st.integers(1, 5))
    ints = lambda shape: data.draw(hnp.arrays(np.int64, shape, elements=st.integers(-50, 50)))  # noqa: E731
    x, W1, b1, W2 = ints((n, k)), ints((m, k)), ints((m,)), ints((3, m))
    p = np.array(data.draw(st.permutations(range(m))), dtype=np.int64)
    h = x @ W1.T + b1                                # [n, m]  the hidden state to permute
    W1p, b1p = permute_linear_out(W1, b1, p)
    hp = x @ W1p.T + b1p
    assert np.array_equal(hp, h[:, p])
    assert np.array_equal(hp @ permute_linear_in(W2, p).T, h @ W2.T)
    gamma = ints((m,))
    assert np.array_equal(hp * permute_vector(gamma, p), (h * gamma)[:, p])


@FAST
@given(st.data())
def test_range_permutation_sorts_ranges_stably(data):
    r = data.draw(hnp.arrays(np.float32, st.integers(1, 30), elements=st.sampled_from([0.5, 1.0, 2.0, 7.0])))
    p = range_permutation(r)
    assert np.all(np.diff(r[p]) >= 0)
    for v in np.unique(r):           # ties keep their original order
        idx = p[r[p] == v]
        assert np.all(np.diff(idx) > 0)


@FAST
@given(st.data(), bits_st, st.booleans(), st.booleans())
def test_peg_group_range_covers_its_dims(data, bits, sym, permute):
    C = data.draw(st.integers(1, 24))
    lo, hi = data.draw(range_st((C,)))
    K = data.draw(st.integers(1, C))
    qp = peg_qparams(lo, hi, K, bits, sym, permute=permute)
    assert qp.scale.shape == (K,) and np.array_equal(qp.group_bounds, group_bounds_equal(C, K))
    # every dim's calibrated [lo, hi] is quantized within half a step by its group's grid
    x = np.stack([lo, hi])                               # [2, C]
    s = qp.per_channel()[0].astype(np.float64)
    err = np.abs(fake_quant(x, qp).astype(np.float64) - x)
    assert np.all(err <= qerr_bound(x.astype(np.float64), s))


@FAST
@given(st.integers(1, 200), st.integers(1, 200))
def test_group_bounds_equal(C, K):
    if K > C:
        with pytest.raises(QuantError):
            group_bounds_equal(C, K)
        return
    b = group_bounds_equal(C, K)
    sizes = np.diff(b)
    assert b.dtype == np.int64 and b[0] == 0 and b[-1] == C and sizes.size == K
    assert sizes.max() - sizes.min() <= 1 and np.all(np.diff(sizes) <= 0)


@FAST
@given(x_and_qp())
def test_qparams_dict_round_trip(xqp):
    import json
    _, qp = xqp
    back = QParams.from_dict(json.loads(json.dumps(qp.to_dict())))
    assert back == qp and back.scale.dtype == np.float32 and back.granularity == qp.granularity


@FAST
@given(st.integers(-1000, 1000).filter(lambda b: not 2 <= b <= 16))
def test_bits_out_of_range_rejected(bits):
    with pytest.raises(QuantError, match="bits must be in 2..16"):
        qparams_from_range(-1.0, 1.0, bits, True)
    with pytest.raises(QuantError, match="bits must be in 2..16"):
        QParams(np.float32(1.0), np.int32(0), bits, True)
    with pytest.raises(QuantError, match="bits must be in 2..16"):
        make_estimator("minmax", bits=bits)


@FAST
@given(st.text(max_size=20).filter(lambda s: s not in ESTIMATORS))
def test_unknown_estimator_rejected(name):
    with pytest.raises(QuantError, match="valid"):
        make_estimator(name)


# --- estimators -------------------------------------------------------------------------------------

batch_st = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
                      elements=st.floats(-1e4, 1e4, width=32))


@FAST
@given(st.lists(batch_st, min_size=1, max_size=5), st.floats(0.0, 0.99))
def test_running_minmax_moves_between_old_and_batch(batches, momentum):
    e = make_estimator("running_minmax", momentum=momentum)
    e.update(batches[0])
    assert e.range() == (batches[0].min(), batches[0].max())   # first batch initialises
    for b in batches[1:]:
        (olo, ohi), (blo, bhi) = e.range(), (b.min(), b.max())
        e.update(b)
        lo, hi = e.range()
        assert min(olo, blo) <= lo <= max(olo, blo)
        assert min(ohi, bhi) <= hi <= max(ohi, bhi)


@FAST
@given(st.lists(batch_st, min_size=1, max_size=5))
def test_minmax_is_min_max_of_everything(batches):
    e = make_estimator("minmax")
    for b in batches:
        e.update(b)
    allv = np.concatenate([b.ravel() for b in batches])
    assert e.range() == (allv.min(), allv.max())
    c = make_estimator("current_minmax")
    for b in batches:
        c.update(b)
    assert c.range() == (batches[-1].min(), batches[-1].max())


def _mse(data, lo, hi, bits, sym):
    qp = qparams_from_range(lo, hi, bits, sym)
    d = data.astype(np.float64)
    return np.mean((fake_quant(data, qp).astype(np.float64) - d) ** 2)


@SLOW
@given(st.lists(batch_st, min_size=1, max_size=3), st.integers(2, 8), st.booleans())
def test_mse_range_no_wider_and_no_worse_than_minmax(batches, bits, sym):
    e = make_estimator("mse", bits=bits, symmetric=sym, n_grid=16, n_offsets=4)
    for b in batches:
        e.update(b)
    allv = np.concatenate([b.ravel() for b in batches])       # below the reservoir size: all kept
    mlo, mhi = allv.min(), allv.max()
    lo, hi = e.range()
    assert mlo <= lo <= hi <= mhi
    assert _mse(allv, lo, hi, bits, sym) <= _mse(allv, mlo, mhi, bits, sym) * (1 + 1e-12)


@SLOW
@given(st.lists(batch_st, min_size=1, max_size=3), st.floats(50, 100), st.booleans())
def test_percentile_range_within_minmax(batches, p, sym):
    e = make_estimator("percentile", p=p, symmetric=sym)
    for b in batches:
        e.update(b)
    allv = np.concatenate([b.ravel() for b in batches])
    lo, hi = e.range()
    assert allv.min() <= lo <= hi <= allv.max()


@st.composite
def padded_batch(draw, H):
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    x = draw(hnp.arrays(np.float32, (B, T, H), elements=st.floats(-100, 100, width=32)))
    mask = draw(hnp.arrays(np.bool_, (B, T)))
    junk = draw(st.sampled_from([np.nan, np.inf, 1e30, -1e30, 0.0]))
    return x, mask, np.where(mask[..., None], x, np.float32(junk)).astype(np.float32)


def _est_state(e):
    try:
        return tuple(a.tobytes() for a in e.range())
    except CalibrationError:
        return "empty"


@SLOW
@given(st.sampled_from(sorted(ESTIMATORS)), st.sampled_from([None, -1]), st.booleans(),
       st.integers(1, 4).flatmap(lambda H: st.lists(padded_batch(H), min_size=1, max_size=3)))
def test_masked_padding_never_changes_an_estimator(name, axis, sym, batches):
    kw = dict(axis=axis, symmetric=sym, **({"n_grid": 8, "n_offsets": 3} if name == "mse" else {}))
    a, b, c = (make_estimator(name, **kw) for _ in range(3))
    for x, mask, xjunk in batches:
        before = _est_state(a)
        a.update(x, mask)
        b.update(xjunk, mask.astype(np.int64))   # junk (even NaN) in padding; an int attention mask
        c.update(x[mask])                        # only the valid tokens, no mask: [n, H]
        if not mask.any():
            assert _est_state(a) == before       # an all-masked batch is ignored
        assert _est_state(a) == _est_state(b) == _est_state(c)


def test_ema_momentum_weights_the_old_value():
    # Regression for the PEG paper code's EMA typo (range_estimators.py:79:
    # `momentum * ranges + (1 - momentum) * ranges`, which never reads the old value):
    # old = [0, 1], batch = [0, 11] -> new hi = 0.9 * 1 + 0.1 * 11 = 2.0, not 11 (typo) or 10 (swapped).
    e = make_estimator("running_minmax", momentum=0.9)
    e.update(np.array([0.0, 1.0], np.float32))
    e.update(np.array([0.0, 11.0], np.float32))
    assert e.range()[1] == np.float32(2.0)
    e.update(np.array([-10.0, 2.0], np.float32))    # lo: 0.9 * 0 + 0.1 * -10
    assert e.range() == (np.float32(-1.0), np.float32(2.0))


# --- TM-IQR reference -------------------------------------------------------------------------------

# normal magnitudes (or exact 0) so scaling by 2^k neither overflows nor rounds subnormals
tok_st = st.floats(-1e3, 1e3, width=32).filter(lambda v: v == 0 or abs(v) >= 1e-3)
LH_st = st.tuples(st.integers(1, 40), st.integers(1, 6)).flatmap(lambda s: hnp.arrays(np.float32, s, elements=tok_st))


@FAST
@given(LH_st, st.integers(-10, 10))
def test_tmiqr_scale_equivariant_power_of_two(x, k):
    c = np.float32(2.0**k)
    assert np.array_equal(tmiqr_clip_ref(c * x), c * tmiqr_clip_ref(x))
    assert tmiqr_threshold_ref(token_absmax(c * x)) == c * tmiqr_threshold_ref(token_absmax(x))


@FAST
@given(LH_st, st.data())
def test_tmiqr_token_order_invariant(x, data):
    p = np.array(data.draw(st.permutations(range(x.shape[0]))), dtype=np.int64)
    assert tmiqr_clip_threshold_ref(x[p]) == tmiqr_clip_threshold_ref(x)
    assert np.array_equal(tmiqr_clip_ref(x[p]), tmiqr_clip_ref(x)[p])


@FAST
@given(LH_st)
def test_tmiqr_leaves_three_quarters_of_token_maxima_unclipped(x):
    m = token_absmax(x)
    t = tmiqr_clip_threshold_ref(x)
    assert t <= m.max()                                           # capped at the abs-max
    assert np.count_nonzero(m <= t) >= 0.75 * m.size
    xc = tmiqr_clip_ref(x)
    assert np.all(np.abs(xc) <= t) and np.array_equal(xc[np.abs(x) <= t], x[np.abs(x) <= t])


@FAST
@given(hnp.arrays(np.float32, st.integers(1, 60), elements=st.floats(0, 1e6, width=32)),
       st.sampled_from([0.25, 0.5, 0.75]))
def test_quantile_is_hyndman_fan_type7_as_numpy(m, p):
    # the written-out formula the selection kernel follows equals np.quantile(method="linear") bit for bit
    assert quantile_type7(m, p) == np.quantile(m.astype(np.float64), p, method="linear")


@given(st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=1, max_size=11), st.integers(1, 11))
def test_range_optimal_bounds_is_the_best_contiguous_partition(values, k):
    """The DP's bounds cost no more than any contiguous partition into k groups (brute force), and are
    valid bounds (0 ... C, strictly increasing, exactly k groups)."""
    import itertools

    from npbert.quant.peg import range_optimal_bounds

    r = np.sort(np.asarray(values, np.float64))
    C = r.size
    k = min(k, C)

    def cost(b):
        return sum((b[g + 1] - b[g]) * r[b[g + 1] - 1] ** 2 for g in range(len(b) - 1))

    got = range_optimal_bounds(r, k)
    assert got[0] == 0 and got[-1] == C and len(got) == k + 1 and np.all(np.diff(got) > 0)
    best = min(cost([0, *c, C]) for c in itertools.combinations(range(1, C), k - 1))
    assert cost(got) <= best * (1 + 1e-12) + 1e-12
