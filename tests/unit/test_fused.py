"""The fused float kernels (npbert/kernels/fused.py) against ops.py, the readable definition.

Tolerances, named and why:
- EXP_REL = 4e-7: Cody-Waite + a degree-6 polynomial in float32 fused multiply-adds; each of ~9
  roundings is at most half an ulp (6e-8), measured max 8.9e-8 relative to float64 exp.
- GELU_ABS = 1e-6 * max(1, |x|): same A&S erf as ops.erf, differences only from exp's last ulp.
- SOFTMAX_ABS = 1e-6: probabilities <= 1, exp ulp plus a float64 sum (ops sums in float32 pairwise).
- LN_ABS = 2e-6 * (1 + |gamma| * |normalised|): float64 moments vs NumPy's float32 pairwise moments.
The epilogue has no tolerance: it performs the NumPy expression's float32 operations in the same order.
"""

from __future__ import annotations

import numpy as np
import pytest

from npbert import ops
from npbert.errors import InputError, QuantError
from npbert.kernels import fused as F
from npbert.kernels.quantize import quantize_static
from npbert.quant.qparams import QParams
from npbert.quant.quantizers import dequantize

EXP_REL = 4e-7
SOFTMAX_ABS = 1e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("K", [1, 3, 7, 8, 9, 31, 384, 1537])
def test_exp_matches_float64_exp(K):
    x = _rng(K).uniform(-87.0, 88.0, (5, K)).astype(np.float32)
    got = F.exp(x).astype(np.float64)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - ref) / ref) <= EXP_REL


def test_exp_polynomial_is_the_float32_chebyshev_interpolant():
    """The written-out coefficients are what their comment derives: the degree-6 Chebyshev interpolant of
    e^r on |r| <= ln2/2 in the monomial basis, rounded to float32; within 2.1e-8 of e^r relative."""
    h = np.log(2.0) / 2
    cheb = np.polynomial.Chebyshev.interpolate(np.exp, 6, domain=[-h, h]).convert(kind=np.polynomial.Polynomial).coef
    np.testing.assert_array_equal(np.array(F._EXP_POLY, np.float32), cheb.astype(np.float32))
    r = np.linspace(-h, h, 10001)
    p = np.polynomial.polynomial.polyval(r, np.array(F._EXP_POLY, np.float64))
    assert np.max(np.abs(p / np.exp(r) - 1)) < 2.1e-8


def test_exp_edges():
    x = np.array([[0.0, -0.0, 1.0, -1.0, -87.0, -87.4, -100.0, -1e30, np.finfo(np.float32).min, 88.0, 88.3]], np.float32)
    got = F.exp(x)[0]
    assert got[0] == 1.0 and got[1] == 1.0
    # below float32's normal range the kernel returns exactly 0: a masked key gets probability 0
    assert got[5] == 0.0 and got[6] == 0.0 and got[7] == 0.0 and got[8] == 0.0
    assert got[4] > 0 and np.isfinite(got[10])
    assert abs(got[9] / np.exp(np.float64(88.0)) - 1) <= EXP_REL


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4, 1536), (2, 5, 33)])
def test_activation_matches_ops(act, shape):
    x = (_rng(1).standard_normal(shape) * 5).astype(np.float32)
    x.flat[0] = 0.0
    got = F.activation(act, x)
    ref = ops.ACTIVATIONS[act](x)
    assert got.shape == x.shape and got.dtype == np.float32
    np.testing.assert_array_less(np.abs(got - ref), 1e-6 * np.maximum(1.0, np.abs(x)) + 1e-30)


def test_activation_large_inputs_saturate_like_ops():
    x = np.array([[-1e4, -50.0, -10.0, 10.0, 50.0, 1e4]], np.float32)
    for act in ("gelu", "gelu_new"):
        got = F.activation(act, x)
        np.testing.assert_allclose(got, ops.ACTIVATIONS[act](x), atol=1e-6, rtol=1e-6)
        assert got[0, 0] == 0.0 or abs(got[0, 0]) < 1e-30  # GELU(-large) -> 0, not NaN


@pytest.mark.parametrize("T", [1, 2, 9, 128, 257])
def test_softmax_rows_matches_ops(T):
    x = (_rng(T).standard_normal((6, T)) * 8).astype(np.float32)
    got = F.softmax_rows(x)
    np.testing.assert_allclose(got, ops.softmax(x), atol=SOFTMAX_ABS, rtol=0)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)


def test_softmax_masked_keys_get_zero():
    x = _rng().standard_normal((2, 3, 10)).astype(np.float32)
    x[..., 7:] += np.finfo(np.float32).min  # HF's mask bias
    p = F.softmax_rows(x)
    assert np.all(p[..., 7:] == 0.0)
    np.testing.assert_allclose(p, ops.softmax(x), atol=SOFTMAX_ABS, rtol=0)


@pytest.mark.parametrize("C", [1, 5, 384, 769])
def test_layer_norm_and_fused_add(C):
    rng = _rng(C)
    a = (rng.standard_normal((2, 7, C)) * 3 + 1).astype(np.float32)
    b = (rng.standard_normal((2, 7, C)) * 50).astype(np.float32)
    b[..., 0] += 200.0  # an outlier dimension, as in real residual streams
    g = rng.standard_normal(C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    ref = ops.layer_norm(a + b, g, beta, 1e-12)
    s, y = F.add_layer_norm(a, b, g, beta, 1e-12)
    np.testing.assert_array_equal(s, a + b)  # the sum is one float32 add per element, exactly NumPy's
    tol = 2e-6 * (1 + np.abs(ref - beta))
    np.testing.assert_array_less(np.abs(y - ref), tol + 1e-30)
    np.testing.assert_array_less(np.abs(F.layer_norm(a + b, g, beta, 1e-12) - ref), tol + 1e-30)


def test_layer_norm_constant_row_is_beta():
    x = np.full((3, 16), 7.5, np.float32)
    g = np.full(16, 2.0, np.float32)
    beta = np.arange(16, dtype=np.float32)
    np.testing.assert_array_equal(F.layer_norm(x, g, beta, 1e-5), np.broadcast_to(beta, x.shape))


@pytest.mark.parametrize("acc_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("bias", [True, False])
def test_epilogue_equals_numpy_expression(acc_dtype, bias):
    rng = _rng(2)
    M, N = 37, 53
    lim = 2**31 - 1 if acc_dtype == np.int32 else 2**40
    acc = rng.integers(-lim, lim, (M, N)).astype(acc_dtype)
    rs = rng.uniform(1e-6, 1e-2, M)
    ws = rng.uniform(1e-4, 1e-1, N).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    ref = (acc.astype(np.float64) * rs[:, None]).astype(np.float32) * ws[None, :]
    if bias:
        ref = ref + b
    np.testing.assert_array_equal(F.epilogue(acc, rs, ws, b), ref)
    # a scalar activation scale (static per tensor) broadcasts over the rows
    ref1 = (acc.astype(np.float64) * np.float64(0.003)).astype(np.float32) * ws[None, :]
    np.testing.assert_array_equal(F.epilogue(acc, 0.003, ws, None), ref1)
    # with the activation fused in: equal to the activation applied afterwards by the same kernel
    np.testing.assert_array_equal(F.epilogue(acc, rs, ws, b, "gelu"), F.activation("gelu", ref))


def test_epilogue_empty():
    assert F.epilogue(np.zeros((0, 4), np.int32), np.zeros(0), np.ones(4, np.float32), None).shape == (0, 4)


def test_epilogue_bad_row_scale_or_out():
    acc = np.ones((3, 4), np.int32)
    ws = np.ones(4, np.float32)
    with pytest.raises(InputError, match="row_scale"):
        F.epilogue(acc, np.ones(2), ws, None)
    with pytest.raises(InputError, match="out must be"):
        F.epilogue(acc, 1.0, ws, None, out=np.empty((3, 4), np.float64))
    # a one-element array scale broadcasts like a scalar
    np.testing.assert_array_equal(F.epilogue(acc, np.array([0.5]), ws, None), F.epilogue(acc, 0.5, ws, None))


@pytest.mark.parametrize("rel", [False, True], ids=["key-mask", "mpnet-relative-bias"])
@pytest.mark.parametrize("zp,qmin,qmax,dt", [(0, -127, 127, np.int8), (0, 0, 255, np.uint8), (-128, -128, 127, np.int8)])
def test_softmax_quantize_equals_unfused_chain(zp, qmin, qmax, dt, rel):
    rng = _rng(3)
    B, h, T = 2, 3, 19
    acc = rng.integers(-20000, 20000, (B, h, T, T)).astype(np.int32)
    seq_scale = np.array([1e-3, 4e-4], np.float32)
    mask = np.ones((B, T), np.int64)
    mask[1, 15:] = 0
    bias = ops.mask_bias(mask)  # [B, 1, 1, T]
    if rel:  # a full [B, h, T, T] bias, as MPNet adds its relative position bias to the mask
        bias = bias + rng.standard_normal((1, h, T, T)).astype(np.float32)
    p_scale = np.float32(1.0 / (qmax - zp))
    got = F.softmax_quantize(acc, seq_scale, bias, p_scale, zp, qmin, qmax, dt)
    scores = acc.astype(np.float32) * seq_scale[:, None, None, None] + bias
    ref = quantize_static(ops.softmax(scores).astype(np.float32), float(p_scale), zp, qmin, qmax, dt)
    assert got.dtype == dt and got.shape == ref.shape
    diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
    # the probabilities agree to ~1e-7, so a code can differ only where p / scale sits on a .5 boundary
    assert diff.max() <= 1 and np.mean(diff) < 1e-3
    assert np.all(got[1, :, :, 15:] == zp)  # masked keys: probability 0 exactly -> the zero point


def test_serial_and_parallel_kernels_agree_bitwise():
    """parallel=False (used next to BLAS GEMMs) runs the same row functions on one thread."""
    rng = _rng(9)
    x = (rng.standard_normal((70, 45)) * 4).astype(np.float32)
    y = rng.standard_normal((70, 45)).astype(np.float32)
    g, b = rng.standard_normal(45).astype(np.float32), rng.standard_normal(45).astype(np.float32)
    for act in ("gelu", "gelu_new", "relu"):
        np.testing.assert_array_equal(F.activation(act, x, parallel=False), F.activation(act, x))
    np.testing.assert_array_equal(F.softmax_rows(x, parallel=False), F.softmax_rows(x))
    np.testing.assert_array_equal(F.layer_norm(x, g, b, 1e-5, parallel=False), F.layer_norm(x, g, b, 1e-5))
    for u, v in zip(F.add_layer_norm(x, y, g, b, 1e-5, parallel=False), F.add_layer_norm(x, y, g, b, 1e-5)):
        np.testing.assert_array_equal(u, v)


def _grid(rng, G, qmin, qmax, symmetric):
    scale = rng.uniform(0.02, 0.2, G).astype(np.float32)
    zp = np.zeros(G, np.int64) if symmetric else rng.integers(qmin + 20, qmax - 20, G)
    return scale, zp


@pytest.mark.parametrize("s_groups,o_groups", [(1, 1), (3, 1), (3, 3)], ids=["tensor", "groups-then-tensor", "groups"])
@pytest.mark.parametrize("dt,qmin,qmax,sym", [(np.uint8, 0, 255, False), (np.int16, -32767, 32767, True)],
                         ids=["uint8", "int16"])
def test_residual_layer_norm_quantize_equals_the_four_steps(s_groups, o_groups, dt, qmin, qmax, sym):
    """One pass (integer add -> dequantize -> LayerNorm -> quantize) against the four unfused kernels,
    bit for bit: the fused kernel calls the same row functions in the same order."""
    from npbert.kernels.quantize import add_requant_grouped, quantize_static_grouped

    rng = _rng(11)
    M, C = 37, 45
    a = rng.integers(qmin, qmax + 1, (M, C)).astype(dt)
    b = rng.integers(qmin, qmax + 1, (M, C)).astype(dt)
    sb = np.array([0, 10, 31, C], np.int64) if s_groups == 3 else np.array([0, C], np.int64)
    ob = sb if o_groups == 3 else np.array([0, C], np.int64)
    (sa, za), (sb_, zb), (ss, zs) = (_grid(rng, len(sb) - 1, qmin, qmax, sym) for _ in range(3))
    so, zo = _grid(rng, len(ob) - 1, qmin, qmax, sym)
    gamma, beta = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    s_codes = add_requant_grouped(a, sa, za, b, sb_, zb, ss, zs, sb, qmin, qmax, dt)
    grouped = dict(axis=-1, group_bounds=sb) if s_groups == 3 else {}
    s_qp = QParams(ss if s_groups == 3 else ss[0], zs if s_groups == 3 else zs[0], 16 if dt == np.int16 else 8, sym,
                   **grouped)
    x = dequantize(s_codes, s_qp)  # the production step the fused kernel replaces
    y = F.layer_norm(x, gamma, beta, 1e-12)
    ref = quantize_static_grouped(y, ob, so, zo, qmin, qmax, dt)
    f64 = lambda v: np.asarray(v, np.float64)  # noqa: E731
    got = F.residual_layer_norm_quantize(a, b, sb, f64(za), f64(sa) / f64(ss), f64(zb), f64(sb_) / f64(ss), f64(zs), ss,
                                         qmin, qmax, gamma, beta, 1e-12, F.OutGrid(ob, so, zo, qmin, qmax, dt))
    assert got.dtype == dt
    np.testing.assert_array_equal(got, ref)


def test_residual_layer_norm_quantize_rejects_non_finite():
    a = np.full((2, 4), 3, np.uint8)
    one, z = np.ones(1), np.zeros(1)
    bounds = np.array([0, 4], np.int64)
    gamma = np.array([1, np.inf, 1, 1], np.float32)
    with pytest.raises(InputError, match="NaN or Inf in row 0"):
        F.residual_layer_norm_quantize(a, a, bounds, z, one, z, one, z, np.ones(1, np.float32), 0, 255, gamma,
                                       np.zeros(4, np.float32), 1e-12, F.OutGrid(bounds, 1.0, 0, 0, 255, np.uint8))


@pytest.mark.parametrize("act", [None, "gelu", "relu"])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("dt,qmin,qmax,sym", [(np.uint8, 0, 255, False), (np.int8, -127, 127, True),
                                              (np.int16, -32767, 32767, True)], ids=["uint8", "int8", "int16"])
def test_epilogue_and_activation_quantize_equal_the_two_steps(act, groups, dt, qmin, qmax, sym):
    """The fused linear-output quantizers against epilogue / activation then quantize_static_grouped."""
    from npbert.kernels.quantize import quantize_static_grouped

    rng = _rng(21)
    M, N = 37, 45
    rs = rng.uniform(1e-9, 1e-8, M)
    ws = rng.uniform(0.5, 2, N).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    bounds = np.array([0, 10, 31, N], np.int64) if groups == 3 else np.array([0, N], np.int64)
    scale, zp = _grid(rng, groups, qmin, qmax, sym)
    grid = F.OutGrid(bounds, scale, zp, qmin, qmax, dt)
    # full-range accumulators (float32(float64(acc) * rs) rounds), int32 and int64 (16-bit GEMMs)
    for acc in (rng.integers(-(2**31), 2**31, (M, N)).astype(np.int32), rng.integers(-(2**40), 2**40, (M, N))):
        y = F.epilogue(acc, rs * (2**-9 if acc.dtype == np.int64 else 1), ws, bias, act)
        np.testing.assert_array_equal(F.epilogue_quantize(acc, rs * (2**-9 if acc.dtype == np.int64 else 1), ws, bias, act, grid),
                                      quantize_static_grouped(y, bounds, scale, zp, qmin, qmax, dt))
    x = (rng.standard_normal((M, N)) * 3).astype(np.float32)
    x_before = x.copy()
    ref = quantize_static_grouped(x if act is None else F.activation(act, x), bounds, scale, zp, qmin, qmax, dt)
    np.testing.assert_array_equal(F.activation_quantize(x, act, grid), ref)
    np.testing.assert_array_equal(x, x_before)  # the input is not modified


def test_fused_quantizers_reject_bad_arguments():
    grid = F.OutGrid(np.array([0, 4], np.int64), np.float32(0.1), 0, -127, 127, np.int8)
    with pytest.raises(InputError, match="grid's groups cover 4 columns, the rows have 5"):
        F.activation_quantize(np.ones((2, 5), np.float32), None, grid)
    with pytest.raises(InputError, match="expected a 2-D array"):
        F.epilogue_quantize(np.ones((2, 2, 4), np.int32), 1.0, np.ones(4, np.float32), None, None, grid)
    with pytest.raises(InputError, match=r"w_scale must have shape \[4\]"):
        F.epilogue_quantize(np.ones((2, 4), np.int32), 1.0, np.ones(3, np.float32), None, None, grid)
    with pytest.raises(QuantError, match="out_dtype int32 not supported"):
        F.OutGrid(np.array([0, 4]), 0.1, 0, 0, 10, np.int32)
    with pytest.raises(InputError, match="zero points must lie in"):
        F.OutGrid(np.array([0, 4]), 0.1, 300, 0, 255, np.uint8)
    a = np.zeros((2, 4), np.uint8)
    one, z = np.ones(1), np.zeros(1)
    args = dict(s_bounds=np.array([0, 4]), a_zp=z, ra=one, b_zp=z, rb=one, s_zp=z, s_scale=np.ones(1, np.float32),
                s_qmin=0, s_qmax=255, gamma=np.ones(4, np.float32), beta=np.zeros(4, np.float32), eps=1e-12,
                grid=F.OutGrid(np.array([0, 4]), 1.0, 0, 0, 255, np.uint8))
    with pytest.raises(InputError, match=r"gamma must have shape \[4\]"):
        F.residual_layer_norm_quantize(a, a, **{**args, "gamma": np.ones(3, np.float32)})
    with pytest.raises(InputError, match="grid's groups cover 5 columns, the rows have 4"):
        F.residual_layer_norm_quantize(a, a, **{**args, "grid": F.OutGrid(np.array([0, 5]), 1.0, 0, 0, 255, np.uint8)})
    with pytest.raises(InputError, match="s_bounds: must start at 0, end at K=4"):
        F.residual_layer_norm_quantize(a, a, **{**args, "s_bounds": np.array([0, 3])})
    with pytest.raises(QuantError, match="dtype float32 is not accepted"):
        F.residual_layer_norm_quantize(a.astype(np.float32), a, **args)


def test_linear_output_quantizers_reject_non_finite():
    grid = F.OutGrid(np.array([0, 4], np.int64), np.float32(0.1), 0, -127, 127, np.int8)
    x = np.ones((3, 4), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(InputError, match="NaN or Inf in row 2"):
        F.activation_quantize(x, None, grid)
    w_inf = np.array([1, 1, np.inf, 1], np.float32)
    with pytest.raises(InputError, match="NaN or Inf in row 0"):
        F.epilogue_quantize(np.ones((2, 4), np.int32), 1.0, w_inf, None, None, grid)


@pytest.mark.parametrize("B,h,T,d", [(1, 1, 1, 1), (2, 3, 5, 4), (3, 12, 17, 32)])
def test_merge_heads_scaled_equals_numpy(B, h, T, d):
    rng = _rng(B * h + T)
    acc = rng.integers(-(2**24), 2**24, (B * h, T, d)).astype(np.int32)
    scale = rng.uniform(1e-6, 1e-3, B).astype(np.float32)
    want = ops.merge_heads(acc.reshape(B, h, T, d).astype(np.float32) * scale[:, None, None, None])
    got = F.merge_heads_scaled(acc, scale, h)
    assert got.shape == (B, T, h * d)
    assert np.array_equal(got.view(np.int32), want.view(np.int32))


def test_out_buffers_equal_fresh_results_and_are_checked():
    """out= (the forward's reused buffers): the same bits as a fresh result, written into the buffer
    given, whatever it held before; a buffer of the wrong shape / dtype / layout, or one overlapping an
    input, is refused."""
    rng = _rng(21)
    a = rng.standard_normal((3, 5, 16)).astype(np.float32)
    b = rng.standard_normal((3, 5, 16)).astype(np.float32)
    g, beta = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    s_buf, y_buf = np.full_like(a, np.nan), np.full_like(a, np.nan)
    s, y = F.add_layer_norm(a, b, g, beta, 1e-12, out_sum=s_buf, out=y_buf)
    assert s is s_buf and y is y_buf
    for u, v in zip((s, y), F.add_layer_norm(a, b, g, beta, 1e-12)):
        np.testing.assert_array_equal(u, v)
    for bad in (np.empty((3, 5, 15), np.float32), np.empty((3, 5, 16), np.float64), np.empty((3, 16, 5), np.float32).transpose(0, 2, 1)):
        with pytest.raises(InputError, match="out must be"):
            F.add_layer_norm(a, b, g, beta, 1e-12, out=bad)
    with pytest.raises(InputError, match="overlap"):
        F.add_layer_norm(a, b, g, beta, 1e-12, out=a)
    with pytest.raises(InputError, match="same shape"):
        F.add_layer_norm(a, b[:, :4], g, beta, 1e-12)

    acc = rng.integers(-(2**20), 2**20, (6, 5, 8)).astype(np.int32)  # [B*h, T, d], h = 2
    scale = np.array([1e-4, 3e-4, 2e-5], np.float32)
    buf = np.full((3, 5, 16), np.nan, np.float32)
    assert F.merge_heads_scaled(acc, scale, 2, out=buf) is buf
    np.testing.assert_array_equal(buf, F.merge_heads_scaled(acc, scale, 2))
    with pytest.raises(InputError, match="out must be"):
        F.merge_heads_scaled(acc, scale, 2, out=np.empty((3, 5, 8), np.float32))

    sc = rng.integers(-20000, 20000, (3, 2, 5, 5)).astype(np.int32)
    bias = ops.mask_bias(np.ones((3, 5), np.int64))
    codes = np.full((3, 2, 5, 5), 7, np.uint8)
    assert F.softmax_quantize(sc, scale, bias, 1 / 255, 0, 0, 255, np.uint8, out=codes) is codes
    np.testing.assert_array_equal(codes, F.softmax_quantize(sc, scale, bias, 1 / 255, 0, 0, 255, np.uint8))
    with pytest.raises(InputError, match="out must be"):
        F.softmax_quantize(sc, scale, bias, 1 / 255, 0, 0, 255, np.uint8, out=np.empty((3, 2, 5, 5), np.int8))


def test_out_buffers_refuse_overlap_and_take_sequences_of_scales():
    rng = _rng(22)
    acc = rng.integers(-(2**20), 2**20, (6, 5, 8)).astype(np.int32)
    with pytest.raises(InputError, match="overlap"):  # same size and element width as acc: would be accepted by shape
        F.merge_heads_scaled(acc, np.ones(3, np.float32), 2, out=acc.view(np.float32).reshape(3, 5, 16))
    a2 = rng.integers(-100, 100, (3, 4)).astype(np.int32)
    ws = np.ones(4, np.float32)
    with pytest.raises(InputError, match="overlap"):
        F.epilogue(a2, 1.0, ws, None, out=a2.view(np.float32))
    # a list of per-row scales is a per-row scale, as an array is
    np.testing.assert_array_equal(F.epilogue(a2, [0.5, 0.25, 2.0], ws, None), F.epilogue(a2, np.array([0.5, 0.25, 2.0]), ws, None))
    with pytest.raises(InputError, match="row_scale"):
        F.epilogue(a2, np.ones((3, 1)), ws, None)


def test_embed_sum_is_numpys_gathers_and_adds():
    """Word + position (+ token type) rows summed in one pass equal NumPy's gathers and adds bit for
    bit (the same float32 additions in the same order), with and without the type table, from a word
    table or from given rows; indices outside a table, tables of another width and indices of
    different lengths are refused before the unchecked kernel reads anything."""
    rng = np.random.default_rng(21)
    C = 24
    words, pos, types = (rng.standard_normal((n, C)).astype(np.float32) * s for n, s in ((50, 1.0), (16, 0.1), (2, 3.0)))
    wi, pi, ti = rng.integers(0, 50, 37), rng.integers(0, 16, 37), rng.integers(0, 2, 37)
    np.testing.assert_array_equal(F.embed_sum(words, wi, pos, pi, types, ti), (words[wi] + pos[pi]) + types[ti])
    np.testing.assert_array_equal(F.embed_sum(words, wi, pos, pi, None, None), words[wi] + pos[pi])
    rows = words[wi]
    np.testing.assert_array_equal(F.embed_sum(rows, np.arange(37), pos, pi, types, ti), (rows + pos[pi]) + types[ti])
    assert F.embed_sum(words, wi[:0], pos, pi[:0], None, None).shape == (0, C)
    for bad, match in (((words, wi, pos, pi + 16, types, ti), "position indices must lie in \\[0, 16\\)"),
                       ((words, np.r_[wi[:-1], -1], pos, pi, None, None), "word indices"),
                       ((words, wi, pos[:, :5], pi, None, None), "position table must be \\[\\*, 24\\]"),
                       ((words, wi, pos, pi[:3], None, None), "one length"),
                       ((words, wi + 0.5, pos, pi, None, None), "word indices must be integers")):
        with pytest.raises(InputError, match=match):
            F.embed_sum(*bad)
