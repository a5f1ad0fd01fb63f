"""The numba intrinsics of npbert/kernels/_lanes.py against NumPy: bit casts, the fused multiply-add,
and the in-order float64 lane sums. All exact: each is defined by its bits."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from npbert.kernels._lanes import f32_bits, f32_from_bits, fma32, sum4_f64, sumsq4_f64


@numba.njit
def _casts(x, b):
    """(f32_bits of each float32 x, f32_from_bits of each int32 b)"""
    bits, floats = np.empty(x.shape[0], np.int32), np.empty(b.shape[0], np.float32)
    for i in range(x.shape[0]):
        bits[i] = f32_bits(x[i])
    for i in range(b.shape[0]):
        floats[i] = f32_from_bits(b[i])
    return bits, floats


@numba.njit
def _fma(a, b, c):
    out = np.empty(a.shape[0], np.float32)
    for i in range(a.shape[0]):
        out[i] = fma32(a[i], b[i], c[i])
    return out


@numba.njit
def _sums(x, square):
    return sumsq4_f64(x, x.shape[0] // 4) if square else sum4_f64(x, x.shape[0] // 4)


def test_bit_casts_are_numpy_views():
    x = np.array([0.0, -0.0, 1.5, -2.25, np.inf, -np.inf, np.finfo(np.float32).tiny, 3.4e38], np.float32)
    b = np.random.default_rng(0).integers(-(2**31), 2**31, 1000).astype(np.int32)
    bits, floats = _casts(x, b)
    np.testing.assert_array_equal(bits, x.view(np.int32))
    np.testing.assert_array_equal(floats.view(np.int32), b)  # NaN payloads included


def test_fma32_rounds_once():
    # (1 + 2^-12)^2 - 1 = 2^-11 + 2^-24: fused it is exact; mul then add loses the 2^-24 to the product's
    # rounding (a tie at 1 + 2^-11, to even)
    a = np.array([1 + 2.0**-12], np.float32)
    got = _fma(a, a, np.array([-1.0], np.float32))[0]
    assert got == np.float32(2.0**-11 + 2.0**-24)
    assert np.float32(a[0] * a[0]) - np.float32(1.0) == np.float32(2.0**-11)  # the unfused result differs


def test_fma32_equals_exact_product_sum_rounded():
    # where float64 holds a * b + c exactly (exponents close), one float32 rounding of it is the fma
    rng = np.random.default_rng(1)
    a, b = (rng.uniform(1, 2, 10_000).astype(np.float32) for _ in range(2))
    c = rng.uniform(-4, 4, 10_000).astype(np.float32)
    c[np.abs(c) < 2.0**-10] = 1.0  # keeps the sum's bits within float64's 53
    exact = a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)  # 48-bit product, no loss
    np.testing.assert_array_equal(_fma(a, b, c), exact.astype(np.float32))


@pytest.mark.parametrize("square", [False, True])
@pytest.mark.parametrize("K", [0, 4, 12, 128, 1540])
def test_lane_sums_are_the_scalar_chains(K, square):
    x = (np.random.default_rng(K).standard_normal(K + 3) * 1e3).astype(np.float32)  # + a tail the sum skips
    got = _sums(x, square)
    for j in range(4):
        s = 0.0
        for i in range(K // 4):
            d = float(x[4 * i + j])
            s += d * d if square else d
        assert got[j] == s  # lane j, elements 4i + j in order of i: the same bits
