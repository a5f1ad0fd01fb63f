"""Property tests (hypothesis) of npbert/kernels: exact agreement with the naive twins over drawn shapes
and values, and the TM-IQR threshold's invariances.

Integers compare exactly. TM-IQR properties draw values on a grid (integers < 2^16 times a power of
two) on which every float32 step of the quantile and threshold arithmetic is exact, so the exact
statements (equivariance, the 75 % bound) are tested without rounding slack.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npbert.kernels import reference as R
from npbert.kernels._simd import HAVE_U8S7
from npbert.kernels.gemm import bgemm_u8s8, gemm_grouped, gemm_s8s8, gemm_s16s8, gemm_u8s8, pack_int8_weight
from npbert.kernels.quantize import quantize_dynamic, quantize_static, requantize
from npbert.kernels.selection import quantile_linear, select_kth, tmiqr_threshold

ODD = [1, 3, 7, 17, 33, 127, 129]
dim = st.one_of(st.sampled_from(ODD), st.integers(1, 80))

EXAMPLES = 40


def _fill(draw, dtype, shape):
    """Full-range values with the extremes over-represented (hypothesis' array strategy does that)."""
    info = np.iinfo(dtype)
    mode = draw(st.sampled_from(["random", "min", "max", "mixed"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if mode == "min":
        return np.full(shape, info.min, dtype)
    if mode == "max":
        return np.full(shape, info.max, dtype)
    if mode == "mixed":
        return rng.choice(np.array([info.min, info.max, 0, -1 if info.min < 0 else 1], dtype=dtype), shape)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


def _layout(draw, x):
    """The same values as a C, Fortran, strided or read-only array."""
    kind = draw(st.sampled_from(["c", "f", "strided", "readonly"]))
    if kind == "f":
        return np.asfortranarray(x)
    if kind == "strided":
        big = np.zeros((x.shape[0], 2 * x.shape[1]), x.dtype)
        big[:, ::2] = x
        return big[:, ::2]
    if kind == "readonly":
        y = x.copy()
        y.setflags(write=False)
        return y
    return x


@settings(deadline=None, max_examples=EXAMPLES)
@given(st.data(), dim, dim, dim, st.booleans())
def test_gemm_s8s8_u8s8_exact(data, m, n, k, packed):
    a = _layout(data.draw, _fill(data.draw, np.int8, (m, k)))
    w = _layout(data.draw, _fill(data.draw, np.int8, (n, k)))
    wk = pack_int8_weight(w) if packed else w
    assert np.array_equal(gemm_s8s8(a, wk), R.gemm_s8s8_ref(a, w))
    au = _layout(data.draw, _fill(data.draw, np.uint8, (m, k)))
    zp = data.draw(st.integers(0, 255))
    out = gemm_u8s8(au, zp, wk)
    assert out.dtype == np.int32
    assert np.array_equal(out, (au.astype(np.int64) - zp) @ w.astype(np.int64).T)


@settings(deadline=None, max_examples=EXAMPLES)
@given(st.data(), dim, dim, dim)
def test_gemm_seven_bit_weights_exact(data, m, n, k):
    """Weights in [-64, 63] pack as quads (on AVX2) and run the saturating vpmaddubsw kernel: still
    exact for every int8 / uint8 activation and zero point, the extremes included."""
    w = np.clip(_fill(data.draw, np.int8, (n, k)), -64, 63).astype(np.int8)
    pw = pack_int8_weight(_layout(data.draw, w))
    a = _layout(data.draw, _fill(data.draw, np.int8, (m, k)))
    assert np.array_equal(gemm_s8s8(a, pw), R.gemm_s8s8_ref(a, w))
    au = _layout(data.draw, _fill(data.draw, np.uint8, (m, k)))
    zp = data.draw(st.integers(0, 255))
    assert np.array_equal(gemm_u8s8(au, zp, pw), (au.astype(np.int64) - zp) @ w.astype(np.int64).T)


@pytest.mark.skipif(not HAVE_U8S7, reason="quad panels need an AVX2 CPU")
@settings(deadline=None, max_examples=EXAMPLES)
@given(st.data(), dim, dim, dim)
def test_gemm_eight_bit_quads_exact(data, m, n, k):
    """Any int8 weight in quad panels (its saturating pairs split off as sparse fixes) runs the
    vpmaddubsw kernel exactly, for every int8 / uint8 activation and zero point."""
    w = _fill(data.draw, np.int8, (n, k))
    pw = pack_int8_weight(_layout(data.draw, w), "quads")
    assert np.array_equal(pw.w, w)
    a = _layout(data.draw, _fill(data.draw, np.int8, (m, k)))
    assert np.array_equal(gemm_s8s8(a, pw), R.gemm_s8s8_ref(a, w))
    au = _layout(data.draw, _fill(data.draw, np.uint8, (m, k)))
    zp = data.draw(st.integers(0, 255))
    assert np.array_equal(gemm_u8s8(au, zp, pw), (au.astype(np.int64) - zp) @ w.astype(np.int64).T)


@settings(deadline=None, max_examples=EXAMPLES)
@given(st.data(), dim, dim, st.one_of(dim, st.integers(500, 1100)), st.integers(-(2**16), 2**16))
def test_gemm_s16s8_exact(data, m, n, k, zp):
    a = _layout(data.draw, _fill(data.draw, np.int16, (m, k)))
    w = _fill(data.draw, np.int8, (n, k))
    assert np.array_equal(gemm_s16s8(a, pack_int8_weight(w), zp), R.gemm_s16s8_ref(a, w, zp))


@settings(deadline=None, max_examples=EXAMPLES)
@given(st.data(), dim, dim, st.integers(2, 140), st.sampled_from([np.uint8, np.int8, np.int16]))
def test_gemm_grouped_bit_identical(data, m, n, k, dtype):
    G = data.draw(st.integers(1, min(k, 6)))
    inner = sorted(data.draw(st.sets(st.integers(1, k - 1), min_size=G - 1, max_size=G - 1))) if G > 1 else []
    bounds = np.array([0, *inner, k], np.int64)
    info = np.iinfo(dtype)
    zlo, zhi = (info.min, info.max) if dtype != np.int16 else (-(2**20), 2**20)
    zps = np.array(data.draw(st.lists(st.integers(zlo, zhi), min_size=G, max_size=G)), np.int32)
    scales = np.array(
        data.draw(st.lists(st.floats(2.0**-20, 16.0, width=32), min_size=G, max_size=G)), np.float32
    )
    a = _fill(data.draw, dtype, (m, k))
    w = _fill(data.draw, np.int8, (n, k))
    # quad panels (8-bit activations on AVX2; the int16 path repacks pairs) must match the same reference
    layout = data.draw(st.sampled_from(("pairs", "quads") if HAVE_U8S7 else ("pairs",)))
    y = gemm_grouped(a, bounds, zps, scales, pack_int8_weight(w, layout))
    ref = R.gemm_grouped_ref(a, bounds, zps, scales, w)
    assert np.array_equal(y.view(np.int32), ref.view(np.int32))


@settings(deadline=None, max_examples=30)
@given(st.data(), st.integers(1, 6), dim, dim, st.integers(1, 140), st.integers(0, 255))
def test_bgemm_u8s8_exact(data, b, m, n, k, zp):
    a = _fill(data.draw, np.uint8, (b, m, k))
    bb = _fill(data.draw, np.int8, (b, n, k))
    assert np.array_equal(bgemm_u8s8(a, zp, bb), R.bgemm_u8s8_ref(a, zp, bb))


# ---------------------------------------------------------------------------------------- selection

finite32 = st.floats(-(2.0**100), 2.0**100, width=32)  # finite; differences stay finite


@settings(deadline=None, max_examples=60)
@given(hnp.arrays(np.float32, st.integers(1, 300), elements=finite32), st.data())
def test_select_and_quantile_match_numpy(v, data):
    L = v.size
    k = data.draw(st.integers(0, L - 1))
    v0 = v.copy()
    assert select_kth(v, k) == np.partition(v, k)[k]
    p = data.draw(st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.floats(0.0, 1.0)))
    got, want = quantile_linear(v, p), np.quantile(v, p, method="linear")
    assert got == want, (got, want)
    assert np.array_equal(v, v0)


grid = hnp.arrays(np.float32, st.integers(1, 200), elements=st.integers(0, 2**16 - 1).map(np.float32))


@settings(deadline=None, max_examples=60)
@given(grid, st.integers(-20, 20), st.randoms(use_true_random=False))
def test_tmiqr_threshold_properties(v, e, rnd):
    t = tmiqr_threshold(v)
    q1 = np.quantile(v, 0.25, method="linear")
    q3 = np.quantile(v, 0.75, method="linear")
    assert t == q3 + np.float32(1.5) * (q3 - q1)  # the formula, with numpy's quantile
    c = np.float32(2.0**e)
    assert tmiqr_threshold(v * c) == c * t  # scale-equivariant (exact for powers of two)
    perm = list(range(v.size))
    rnd.shuffle(perm)
    assert tmiqr_threshold(v[perm]) == t  # invariant to token order
    assert np.count_nonzero(v <= t) >= 0.75 * v.size  # >= 75 % of token maxima unclipped


# ----------------------------------------------------------------------------------------- quantize


@settings(deadline=None, max_examples=EXAMPLES)
@given(
    st.data(),
    st.integers(1, 40),
    st.integers(1, 50),
    st.integers(2, 16),
    st.booleans(),
)
def test_quantize_dynamic_matches_reference(data, M, K, bits, tmiqr):
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((M, K)) * 10.0 ** rng.uniform(-3, 3, (M, 1))).astype(np.float32)
    nseg = data.draw(st.integers(1, min(M, 5)))
    cuts = sorted(data.draw(st.lists(st.integers(0, M), min_size=nseg - 1, max_size=nseg - 1)))
    seg = np.array([0, *cuts, M], np.int64)
    valid = rng.random(M) < data.draw(st.sampled_from([1.0, 0.7, 0.3]))
    q, s, t = quantize_dynamic(x, seg, valid, bits=bits, tmiqr=tmiqr)
    qr, sr, tr = R.quantize_dynamic_ref(x, seg, valid, bits=bits, tmiqr=tmiqr)
    assert np.array_equal(q, qr) and np.array_equal(s, sr) and np.array_equal(t, tr)
    qmax = 2 ** (bits - 1) - 1
    assert np.all(np.abs(q.astype(np.int64)) <= qmax)
    assert np.all(q[x == 0] == 0)  # symmetric quantization maps 0 to 0


@settings(deadline=None, max_examples=EXAMPLES)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=20), elements=st.floats(-1e4, 1e4, width=32)),
    st.floats(1e-3, 10.0),
    st.integers(-20, 20),
)
def test_quantize_static_matches_reference(x, scale, zp):
    q = quantize_static(x, scale, zp, -128, 127, np.int8)
    assert np.array_equal(q, R.quantize_static_ref(x, scale, zp, -128, 127, np.int8))


@settings(deadline=None, max_examples=EXAMPLES)
@given(st.data(), st.integers(1, 30), st.integers(1, 30))
def test_requantize_matches_reference(data, M, N):
    acc = _fill(data.draw, np.int32, (M, N))
    mult = data.draw(st.floats(1e-9, 1e-2))
    zp = data.draw(st.integers(-10, 10))
    assert np.array_equal(requantize(acc, mult, zp, -128, 127, np.int8), R.requantize_ref(acc, mult, zp, -128, 127, np.int8))


@settings(deadline=None, max_examples=EXAMPLES)
@given(st.data(), dim, dim, dim, st.sampled_from([np.int8, np.uint8]), st.sampled_from([None, "gelu"]), st.booleans())
def test_gemm_dequant_equals_epilogue_of_exact_gemm(data, m, n, k, dtype, act, has_bias):
    """gemm_dequant (the tile dequantized in the micro-kernel's registers on quad panels) equals
    fused.epilogue applied to the exact integer product, bit for bit, in either layout."""
    from npbert.kernels.fused import epilogue
    from npbert.kernels.gemm import gemm_dequant

    w = _fill(data.draw, np.int8, (n, k))
    pw = pack_int8_weight(w, data.draw(st.sampled_from(("pairs", "quads") if HAVE_U8S7 else ("pairs",))))
    a = _layout(data.draw, _fill(data.draw, dtype, (m, k)))
    zp = data.draw(st.integers(0, 255)) if dtype == np.uint8 else 0
    acc = R.gemm_s8s8_ref(a, w) if dtype == np.int8 else R.gemm_u8s8_ref(a, zp, w)
    floats = st.floats(2.0**-30, 4.0, width=32)
    rs = np.array(data.draw(st.lists(floats, min_size=m, max_size=m)), np.float32)
    ws = np.array(data.draw(st.lists(floats, min_size=n, max_size=n)), np.float32)
    bias = np.array(data.draw(st.lists(st.floats(-8, 8, width=32), min_size=n, max_size=n)), np.float32) if has_bias else None
    got = gemm_dequant(a, zp, pw, rs, ws, bias, act)
    assert np.array_equal(got.view(np.int32), epilogue(acc.astype(np.int32), rs, ws, bias, act).view(np.int32))
