"""Fused float kernels of the forward: GEMM epilogues, GELU, attention softmax, residual add + LayerNorm.

Why: between the integer GEMMs the forward used to run NumPy expressions (dequantize, bias, GELU via
the A&S erf, softmax, LayerNorm), each a full pass over memory with temporaries; together they took
about 70% of a quantized forward (profile in bench/results/e2e.md). Each kernel here is one parallel
pass over rows, with the arithmetic written so LLVM vectorises it (AVX2: 8 float32 lanes).

Numerics. ops.py stays the readable definition; these kernels are checked against it with named
tolerances (tests/unit/test_fused.py, tests/properties/test_fused_props.py):
- exp: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, the degree-6 Chebyshev interpolant of
  e^r on that interval (truncation 2.5e-9 relative; its coefficients rounded to float32 2.0e-8, under
  half an ulp) evaluated by Horner in fused multiply-adds
  (_lanes.fma32: explicit, so the same bits on every CPU), and 2^n built from exponent bits: max
  relative error 8.9e-8 (~1.5 ulp) against float64 exp, vectorised (libm's scalar exp is not). x below
  -87.3 gives exactly 0 (as float32 exp underflows), so masked keys (bias = float32 min) get
  probability 0 as in NumPy. (The degree-7 Taylor form in mul + add it replaced took 1.5x as long.)
- GELU: 0.5 x (1 + erf(x / sqrt 2)) with the same Abramowitz & Stegun 7.1.26 erf as ops.erf
  (|error| <= 1.5e-7), its polynomial in fused multiply-adds, so it agrees with ops.gelu_erf to a
  few float32 ulp.
- LayerNorm: mean and variance accumulated in float64 (NumPy's float32 pairwise sums are slightly
  less accurate; both are within 1e-6 relative of the exact value for C <= 4096).
- Epilogues: y = float32(float64(acc) * float64(row_scale)) * w_scale + bias, each operation rounded
  in float32 exactly as the NumPy expression it replaces (fastmath off: no FMA contraction), so the
  static per-tensor GEMM stays bit-identical to PEG with one group.

parallel=False (PARALLEL_NOTE): the FP32 forward runs its GEMMs in OpenBLAS, whose worker threads
spin after each call, while numba's OpenMP workers spin after each parallel kernel; interleaving the
two on 2 cores measured 4.8 seq/s instead of 37.5 (MiniLM, batch 1, 2 threads; bench/results/
e2e-fp32-contention.log against bench/results/e2e.md at 735e1bc): each pool's threads wait on cores
the other's spinners hold. The FP32 executor therefore runs these kernels on one thread; the integer
forward (no BLAS) runs them in parallel.

Shapes: M rows (tokens), N outputs, B batch, h heads, T tokens, C hidden.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from npbert._jit import jit, njit_ieee as njit
from npbert.errors import InputError
from npbert.kernels import _checks as chk
from npbert.kernels._lanes import f32_bits, f32_from_bits, fma32, sum4_f64, sumsq4_f64
from npbert.kernels.quantize import _EXP_ALL_ONES, ROWS_PER_CHUNK, _add_requant_one, _quantize_static_span

__all__ = ["ACT_CODES", "epilogue", "activation", "softmax_rows", "softmax_quantize", "add_layer_norm", "layer_norm",
           "residual_layer_norm_quantize", "OutGrid", "epilogue_quantize", "activation_quantize", "merge_heads_scaled"]

# Activation codes shared by the epilogue and activation kernels.
ACT_NONE, ACT_GELU, ACT_GELU_TANH, ACT_RELU = 0, 1, 2, 3
ACT_CODES = {None: ACT_NONE, "gelu": ACT_GELU, "gelu_new": ACT_GELU_TANH, "gelu_pytorch_tanh": ACT_GELU_TANH, "relu": ACT_RELU}

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 split so n * LN2_HI is exact for |n| < 2^9
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_LO = np.float32(-87.33654)  # below: e^x < float32's smallest normal -> 0
_EXP_HI = np.float32(88.37626)  # above: inf in float32; clamp (n <= 127 keeps the exponent valid)
# e^r ~ sum_i _EXP_POLY[i] r^i on |r| <= ln2/2: the degree-6 Chebyshev interpolant of e^r there
# (np.polynomial.Chebyshev.interpolate(np.exp, 6, domain=[-ln2/2, ln2/2]), in the monomial basis)
# rounded to float32, written out so the bits are fixed (a test recomputes them). Near-minimax:
# relative truncation 2.5e-9, 2.0e-8 with the float32 coefficients, both under float32's half ulp
# (6e-8); Taylor of degree 6 truncates at 1.2e-7, of degree 7 at 7.0e-9.
_EXP_POLY = tuple(np.float32(c) for c in (1.0, 1.0, 0.5, 0.16666415333747864, 0.04166635125875473,
                                          0.00837512593716383, 0.0013941108481958508))

# ops.erf's A&S 7.1.26 constants
_P = np.float32(0.3275911)
_A1, _A2, _A3, _A4, _A5 = (np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))
_INV_SQRT2 = np.float32(1 / np.sqrt(2.0))
_SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))


# ---------------------------------------------------------------------------------------- exp


@njit
def _exp1(v):
    """e^v for one float32; inlined into the loops below, which LLVM then vectorises. 2^n is built
    from its exponent bits (f32_from_bits); exactly 0 below _EXP_LO (p * 2^-126 would not be)."""
    under = v < _EXP_LO
    v = _EXP_LO if under else v
    v = _EXP_HI if v > _EXP_HI else v
    n = np.rint(v * _LOG2E)
    r = fma32(n, -_LN2_LO, fma32(n, -_LN2_HI, v))  # r = v - n ln2, ln2 in two parts (Cody-Waite)
    c = _EXP_POLY
    p = fma32(fma32(fma32(fma32(fma32(fma32(c[6], r, c[5]), r, c[4]), r, c[3]), r, c[2]), r, c[1]), r, c[0])
    return np.float32(0.0) if under else p * f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@njit
def _exp_inplace(x):
    """x[k] = e^x[k] for float32 x [K]. In place on purpose: with separate in/out arrays LLVM guards
    the loop with an overlap check, and an in-place call (in == out) then takes the scalar fallback
    (measured 12x slower)."""
    for k in range(x.shape[0]):
        x[k] = _exp1(x[k])


@jit(parallel=True, ieee=True)
def exp(x):
    """e^x for float32 x [M, K] (row-parallel). For tests; the kernels below call _exp1."""
    out = x.copy()
    M = x.shape[0]
    for c in prange((M + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK):
        for m in range(c * ROWS_PER_CHUNK, min(M, (c + 1) * ROWS_PER_CHUNK)):
            _exp_inplace(out[m])
    return out


# ---------------------------------------------------------------------------------- activations


@njit
def _act_row(y, act):
    """y[k] = act(y[k]) in place, one vectorised loop per activation."""
    K = y.shape[0]
    one, half = np.float32(1.0), np.float32(0.5)
    if act == ACT_GELU:
        # erf(|z|) = 1 - poly(t) e^{-z^2}, t = 1 / (1 + p|z|), z = y / sqrt 2
        for k in range(K):
            x = y[k]
            z = x * _INV_SQRT2
            az = abs(z)
            t = one / fma32(_P, az, one)
            poly = fma32(fma32(fma32(fma32(_A5, t, _A4), t, _A3), t, _A2), t, _A1) * t
            e = fma32(-poly, _exp1(-(z * z)), one)
            e = -e if x < 0 else e
            y[k] = half * x * (one + e)
    elif act == ACT_GELU_TANH:
        # tanh(u) = 1 - 2 / (e^{2u} + 1), stable at both ends with e^{2u} clamped to [0, inf)
        for k in range(K):
            x = y[k]
            e2u = _exp1(np.float32(2.0) * (_SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)))
            th = one - np.float32(2.0) / (e2u + one)
            y[k] = half * x * (one + th)
    elif act == ACT_RELU:
        for k in range(K):
            y[k] = y[k] if y[k] > 0 else np.float32(0.0)


@njit
def _act_span(y, act, m0, m1):
    """Rows m0:m1 of y [M, K], in place."""
    for m in range(m0, m1):
        _act_row(y[m], act)


@jit(parallel=True, ieee=True)
def _activation_rows(y, act):
    M = y.shape[0]
    for c in prange((M + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK):
        _act_span(y, act, c * ROWS_PER_CHUNK, min(M, (c + 1) * ROWS_PER_CHUNK))


def activation(name: str, x: np.ndarray, parallel: bool = True, inplace: bool = False) -> np.ndarray:
    """ops.ACTIVATIONS[name](x) as one fused pass: float32 [..., K] -> new float32 [..., K] (or x itself,
    overwritten, with inplace=True and a C-contiguous float32 x). parallel=False: one thread (see PARALLEL_NOTE)."""
    if inplace and not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable):
        raise ValueError("activation(inplace=True) needs a writeable C-contiguous float32 array")
    y = x if inplace else np.array(x, dtype=np.float32, order="C", copy=True)
    if y.size:
        y2 = y.reshape(-1, y.shape[-1])
        if parallel:
            activation_into(y2, ACT_CODES[name])
        else:  # one thread: the span over all rows, no parallel region
            _act_span(y2, ACT_CODES[name], 0, y2.shape[0])
    return y


def activation_into(y: np.ndarray, act_code: int) -> None:
    """activation in place, row-parallel, unchecked: y a non-empty writeable C-contiguous float32 [M, K],
    act_code a value of ACT_CODES (for callers that built y themselves)."""
    _activation_rows(y, act_code)


# ------------------------------------------------------------------------------------ epilogues


@njit
def _epilogue_row(a, rs, w_scale, bias, has_bias, act, o):
    """o[n] = act(float32(float64(a[n]) * rs) * w_scale[n] + bias[n]) for one row."""
    N = a.shape[0]
    for n in range(N):
        o[n] = np.float32(np.float64(a[n]) * rs) * w_scale[n]
    if has_bias:
        for n in range(N):
            o[n] = o[n] + bias[n]
    if act != ACT_NONE:
        _act_row(o, act)


@jit(parallel=True, ieee=True)
def _epilogue_rows(acc, row_scale, w_scale, bias, has_bias, act, out):
    """out[m, n] = act(float32(float64(acc[m, n]) * row_scale[m]) * w_scale[n] + bias[n])
    # acc int32/int64 [M, N], row_scale float64 [M], w_scale/bias float32 [N] -> out float32 [M, N]"""
    M, N = acc.shape
    for c in prange((M + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK):
        for m in range(c * ROWS_PER_CHUNK, min(M, (c + 1) * ROWS_PER_CHUNK)):
            _epilogue_row(acc[m], row_scale[m], w_scale, bias, has_bias, act, out[m])


@njit
def _quantize_row(y, yi, o_bounds, o_scale, o_lo, o_hi, o_zpf, q):
    """q = quantize_static_grouped(y) for one row (one group = per tensor); returns the max |y| bits."""
    mb = np.int32(0)
    for g in range(o_bounds.shape[0] - 1):
        mb = max(mb, _quantize_static_span(y, yi, o_bounds[g], o_bounds[g + 1], o_scale[g], o_lo[g], o_hi[g], o_zpf[g], q))
    return mb


@jit(parallel=True, ieee=True)
def _quantize_out_rows(acc, x, from_acc, row_scale, w_scale, bias, has_bias, act, o_bounds, o_scale, o_lo, o_hi, o_zpf,
                       out, bad):
    """out[m] = quantize(act(y)) per row with y = the epilogue of acc[m] (from_acc) or x[m] (read, not
    modified); the float row stays in L1; bad[m] = 1 on NaN/Inf. The unused input is a dummy array."""
    M, N = out.shape
    for c in prange((M + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK):
        y = np.empty(N, np.float32)
        yi = y.view(np.int32)
        for m in range(c * ROWS_PER_CHUNK, min(M, (c + 1) * ROWS_PER_CHUNK)):
            if from_acc:
                _epilogue_row(acc[m], row_scale[m], w_scale, bias, has_bias, act, y)
            else:
                y[:] = x[m]
                if act != ACT_NONE:
                    _act_row(y, act)
            bad[m] = 1 if _quantize_row(y, yi, o_bounds, o_scale, o_lo, o_hi, o_zpf, out[m]) >= _EXP_ALL_ONES else 0


class OutGrid:
    """A static output grid prepared for the fused quantizing kernels: per column group (one group =
    per tensor) float32 scale, clamp bounds qmin - zp, qmax - zp and zp; codes of dtype."""

    __slots__ = ("bounds", "scale", "lo", "hi", "zpf", "dtype")

    def __init__(self, bounds, scale, zero_point, qmin: int, qmax: int, dtype):
        b = np.asarray(bounds)
        self.bounds = chk.group_bounds(b, int(b[-1]) if b.ndim == 1 and b.size else -1, "OutGrid bounds")
        G = self.bounds.size - 1
        dtype, qmin, qmax = chk.out_range(dtype, qmin, qmax, allowed=(np.int8, np.uint8, np.int16, np.uint16))
        try:
            zp = np.broadcast_to(np.asarray(zero_point, np.int64), (G,))
            self.scale = np.ascontiguousarray(np.broadcast_to(np.asarray(scale, np.float32), (G,)))
        except ValueError:
            raise InputError(f"OutGrid: scale and zero_point must be scalars or have one entry per group ({G})") from None
        if not (np.all(np.isfinite(self.scale)) and np.all(self.scale > 0)):
            raise InputError("OutGrid: scales must be finite and positive")
        if np.any(zp < qmin) or np.any(zp > qmax):
            raise InputError(f"OutGrid: zero points must lie in [qmin, qmax] = [{qmin}, {qmax}]")
        self.lo = (qmin - zp).astype(np.float32)
        self.hi = (qmax - zp).astype(np.float32)
        self.zpf = zp.astype(np.float32)
        self.dtype = np.dtype(dtype)


def _check_grid(grid: OutGrid, N: int, what: str):
    if not isinstance(grid, OutGrid):
        raise InputError(f"{what}: grid must be an OutGrid, got {type(grid).__name__}")
    if grid.bounds[-1] != N:
        raise InputError(f"{what}: the grid's groups cover {int(grid.bounds[-1])} columns, the rows have {N}")


def _check_bad(bad, what):
    if bad.any():
        raise InputError(f"{what}: NaN or Inf in row {int(np.argmax(bad))}; the activations are not finite")


def epilogue_quantize(acc: np.ndarray, row_scale, w_scale: np.ndarray, bias: np.ndarray | None, act: str | None,
                      grid: OutGrid) -> np.ndarray:
    """quantize_static(_grouped)(epilogue(acc, ...), grid) in one pass: int [M, N] -> codes [M, N] of
    grid.dtype, bit for bit the two steps (the float row never leaves L1). NaN/Inf -> InputError."""
    acc = chk.array(acc, "acc", (np.int32, np.int64), 2)
    M, N = acc.shape
    _check_grid(grid, N, "epilogue_quantize")
    if act not in ACT_CODES:
        raise InputError(f"epilogue_quantize: unknown activation {act!r}")
    rs = row_scales(row_scale, M, "epilogue_quantize")
    ws = chk.f32_vector(w_scale, N, "w_scale")
    b = _NO_BIAS if bias is None else chk.f32_vector(bias, N, "bias")
    return _quantize_out(np.ascontiguousarray(acc), _NO_ROWS, True, rs, ws, b, bias is not None, act, grid)


def _quantize_out(acc, x, from_acc, rs, ws, b, has_bias, act, grid):
    out = np.empty((acc if from_acc else x).shape, grid.dtype)
    bad = np.zeros(out.shape[0], np.uint8)
    if out.size:
        _quantize_out_rows(acc, x, from_acc, rs, ws, b, has_bias, ACT_CODES[act], grid.bounds, grid.scale, grid.lo, grid.hi,
                           grid.zpf, out, bad)
    _check_bad(bad, "linear output")
    return out


def activation_quantize(x: np.ndarray, act: str | None, grid: OutGrid) -> np.ndarray:
    """quantize_static(_grouped)(activation(act, x), grid) in one pass: float32 [M, N] -> codes [M, N]."""
    x = np.ascontiguousarray(chk.array(x, "x", (np.float32,), 2))
    _check_grid(grid, x.shape[1], "activation_quantize")
    if act not in ACT_CODES:
        raise InputError(f"activation_quantize: unknown activation {act!r}")
    return _quantize_out(_NO_ACC, x, False, _NO_SCALE, _NO_BIAS, _NO_BIAS, False, act, grid)


_NO_BIAS = np.zeros(1, np.float32)
# dummies for the input _quantize_out_rows does not read
_NO_ACC = np.zeros((1, 1), np.int32)
_NO_ROWS = np.zeros((1, 1), np.float32)
_NO_SCALE = np.zeros(1, np.float64)


def row_scales(row_scale, M: int, what: str) -> np.ndarray:
    """A per-row scale [M] or a scalar as float64 [M] (exact from float32), built directly:
    np.broadcast_to costs more than a batch-1 epilogue's arithmetic."""
    rs = np.asarray(row_scale, np.float64)
    if rs.shape == (M,):
        return np.ascontiguousarray(rs)
    if rs.ndim > 1 or rs.size != 1:
        raise InputError(f"{what}: row_scale must be a scalar or have shape [{M}], got shape {rs.shape}")
    return np.full(M, rs.reshape(()))


def epilogue(acc: np.ndarray, row_scale, w_scale: np.ndarray, bias: np.ndarray | None, act: str | None = None,
             out: np.ndarray | None = None) -> np.ndarray:
    """Integer accumulators -> float32 outputs of a linear layer, one pass.

    acc int32/int64 [M, N]; row_scale: float [M] (dynamic: the row's sequence scale) or a scalar
    (static per tensor); w_scale float32 [N]; bias float32 [N] or None; act: None or an activation name;
    out: a float32 [M, N] C-contiguous array to write into (else a new one).
    """
    M, N = acc.shape
    rs = row_scales(row_scale, M, "epilogue")
    out = chk.out_array(out, (M, N), np.float32, "epilogue", (acc,))
    if M and N:
        b = _NO_BIAS if bias is None else chk.f32_vector(bias, N, "epilogue: bias")
        _epilogue_rows(np.ascontiguousarray(acc), rs, chk.f32_vector(w_scale, N, "epilogue: w_scale"), b, bias is not None,
                       ACT_CODES[act], out)
    return out


# -------------------------------------------------------------------------------------- softmax


@njit
def _sum64(x):
    """sum of float32 x [K] (C-contiguous) in float64: four partial sums, lane j over 4i + j, then the
    tail into lane 0, then (s0 + s1) + (s2 + s3). A fixed order, so deterministic; one <4 x double>
    accumulator (sum4_f64), since without fastmath LLVM vectorises no float reduction."""
    K = x.shape[0]
    n4 = K // 4
    s0, s1, s2, s3 = sum4_f64(x, n4)
    for k in range(4 * n4, K):
        s0 += np.float64(x[k])
    return (s0 + s1) + (s2 + s3)


@njit
def _max32(x):
    """max of float32 x [K] (K >= 1), exact: as integer keys that order like the floats (negative
    patterns with their magnitude bits flipped), since LLVM vectorises an integer max reduction but
    no float one without fastmath. A row holding a NaN ends all-NaN in the softmax either way."""
    m = np.int32(-2147483648)
    for k in range(x.shape[0]):
        b = f32_bits(x[k])
        m = max(m, np.int32(b ^ np.int32((b >> np.int32(31)) & np.int32(0x7FFFFFFF))))
    return f32_from_bits(m if m >= 0 else m ^ np.int32(0x7FFFFFFF))


@njit
def _softmax_inplace(e):
    """e = softmax(e) for float32 e [T] (C-contiguous), max-subtracted, in place."""
    mx = _max32(e)
    for k in range(e.shape[0]):
        e[k] = _exp1(e[k] - mx)
    tot = np.float32(_sum64(e))  # float64 partial sums: float32 would drift by up to T ulp
    for k in range(e.shape[0]):
        e[k] = e[k] / tot


@njit
def _softmax_span(out, m0, m1):
    for m in range(m0, m1):
        _softmax_inplace(out[m])


@jit(parallel=True, ieee=True)
def _softmax_rows(out):
    M = out.shape[0]
    for c in prange((M + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK):
        _softmax_span(out, c * ROWS_PER_CHUNK, min(M, (c + 1) * ROWS_PER_CHUNK))


def softmax_rows(x: np.ndarray, parallel: bool = True) -> np.ndarray:
    """softmax over the last axis, float32 [..., T] -> float32 [..., T] (ops.softmax, fused)."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if out.size:
        o2 = out.reshape(-1, out.shape[-1])
        if parallel:
            _softmax_rows(o2)
        else:
            _softmax_span(o2, 0, o2.shape[0])
    return out


@jit(parallel=True, ieee=True)
def _softmax_quantize_core(acc, seq_scale, key_bias, rel_bias, has_rel, p_scale, lo, hi, zpf, out):
    """Per row (b, j, i): s = float32(acc) * seq_scale[b] + key_bias[b] (+ rel_bias[b, j, i]);
    p = softmax(s); out = clamp(rint(p / p_scale), lo, hi) + zp.
    # acc int32 [B*H*T, S] rows, seq_scale float32 [B], key_bias float32 [B, S] (the padding mask),
    # rel_bias float32 [B*H*T, S] (MPNet's relative bias + mask) when has_rel, out int8/uint8 [B*H*T, S]"""
    R, S = acc.shape
    rows_per_seq = R // seq_scale.shape[0]
    for c in prange((R + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK):
        s = np.empty(S, np.float32)
        for r in range(c * ROWS_PER_CHUNK, min(R, (c + 1) * ROWS_PER_CHUNK)):
            b = r // rows_per_seq
            a = acc[r]
            sc = seq_scale[b]
            br = rel_bias[r] if has_rel else key_bias[b]
            for k in range(S):
                s[k] = np.float32(a[k]) * sc + br[k]
            _softmax_inplace(s)
            o = out[r]
            for k in range(S):
                q = np.rint(s[k] / p_scale)
                q = hi if q > hi else q
                q = lo if q < lo else q
                o[k] = np.int32(q + zpf)


def softmax_quantize(acc: np.ndarray, seq_scale: np.ndarray, bias: np.ndarray, p_scale: float, zero_point: int,
                     qmin: int, qmax: int, out_dtype, out: np.ndarray | None = None) -> np.ndarray:
    """Attention probabilities straight from the Q K^T accumulators to their static codes.

    acc int32 [B, h, T, T]; seq_scale float32 [B] (= s_q s_k / sqrt(d), per sequence); bias float32
    broadcastable to [B, h, T, T] (key mask [B, 1, 1, T], or MPNet's full relative bias); the codes
    use the probs site's static (p_scale, zero_point) with the quantizers' convention
    clamp(rint(p / scale)) + zp. Equals quantize_static(softmax(float32(acc) * scale + bias)) up to
    the exp's last-ulp rounding. out: an array of out_dtype [B, h, T, T] to write the codes into.
    """
    B, H, T, S = acc.shape
    bias = np.asarray(bias, np.float32)
    out = chk.out_array(out, (B, H, T, S), np.dtype(out_dtype), "softmax_quantize", (acc,))
    zp = int(zero_point)
    if not acc.size:
        return out
    key, rel, has_rel = softmax_bias_args(bias, B, H, T, S)
    softmax_quantize_into(np.ascontiguousarray(acc).reshape(B * H * T, S), np.ascontiguousarray(seq_scale, np.float32),
                          key, rel, has_rel, np.float32(p_scale), np.float32(qmin - zp), np.float32(qmax - zp),
                          np.float32(zp), out.reshape(B * H * T, S))
    return out


def softmax_bias_args(bias: np.ndarray, B: int, H: int, T: int, S: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """softmax_quantize's form of its bias: (key bias float32 [B, S], relative bias float32 [B*H*T, S],
    whether the relative one is used). A key-padding bias [B, 1, 1, S] is one row per sequence; any
    other broadcastable bias is expanded in full."""
    if bias.ndim == 4 and bias.shape[1] == 1 and bias.shape[2] == 1:  # key padding only: one row per sequence
        return np.ascontiguousarray(np.broadcast_to(bias[:, 0, 0, :], (B, S))), np.zeros((1, S), np.float32), False
    rel = np.ascontiguousarray(np.broadcast_to(bias, (B, H, T, S))).reshape(B * H * T, S)
    return np.zeros((B, S), np.float32), rel, True


def softmax_quantize_into(acc2, seq_scale, key, rel, has_rel: bool, p_scale, lo, hi, zpf, out2) -> None:
    """softmax_quantize without its checks, for a caller that built every argument as it would
    (QuantExecutor's hot path): acc2 int32 [B*H*T, S] and out2 [B*H*T, S] C-contiguous, seq_scale float32
    [B], (key, rel, has_rel) from softmax_bias_args, p_scale float32, lo / hi = qmin / qmax - zero point
    and zpf = zero point, all float32."""
    _softmax_quantize_core(acc2, seq_scale, key, rel, has_rel, p_scale, lo, hi, zpf, out2)


# ----------------------------------------------------------------------------------- embeddings


@jit(parallel=True, ieee=True)
def _embed_rows(words, word_idx, pos_tab, pos_idx, type_tab, type_idx, has_types, out):
    """out[r] = (words[word_idx[r]] + pos_tab[pos_idx[r]]) + type_tab[type_idx[r]] (the last term only
    with has_types), in float32 in that order: NumPy's gather-then-add bits.   # -> out [R, C]"""
    C = out.shape[1]
    for r in prange(out.shape[0]):
        w, p, o = words[word_idx[r]], pos_tab[pos_idx[r]], out[r]
        if has_types:
            t = type_tab[type_idx[r]]
            for k in range(C):
                o[k] = (w[k] + p[k]) + t[k]
        else:
            for k in range(C):
                o[k] = w[k] + p[k]


def embed_sum(words: np.ndarray, word_idx: np.ndarray, pos_tab: np.ndarray, pos_idx: np.ndarray,
              type_tab: np.ndarray | None, type_idx: np.ndarray | None) -> np.ndarray:
    """Embedding rows summed in one pass: float32 [R, C] = words[word_idx] + pos_tab[pos_idx]
    (+ type_tab[type_idx]), the tables float32 [*, C], the indices int [R] within their tables (checked
    here: the kernel reads without bounds checks). NumPy's three gathers and two adds, bit for bit,
    without their [R, C] temporaries."""
    tabs = [np.ascontiguousarray(t, np.float32) for t in (words, pos_tab, words if type_tab is None else type_tab)]
    C = tabs[0].shape[-1]
    idx = []
    for name, t, ix in zip(("word", "position", "token type"), tabs, (word_idx, pos_idx, word_idx if type_idx is None else type_idx)):
        if np.asarray(ix).dtype.kind not in "iu":
            raise InputError(f"embed_sum: {name} indices must be integers, got dtype {np.asarray(ix).dtype}")
        ix = np.ascontiguousarray(ix, np.int64).reshape(-1)
        if t.ndim != 2 or t.shape[1] != C:
            raise InputError(f"embed_sum: the {name} table must be [*, {C}], got {t.shape}")
        if ix.size and (ix.min() < 0 or ix.max() >= t.shape[0]):
            raise InputError(f"embed_sum: {name} indices must lie in [0, {t.shape[0]}); got {ix.min()}..{ix.max()}")
        idx.append(ix)
    if not idx[0].size == idx[1].size == idx[2].size:
        raise InputError(f"embed_sum: the indices must have one length, got {[i.size for i in idx]}")
    out = np.empty((idx[0].size, C), np.float32)
    if out.size:
        _embed_rows(tabs[0], idx[0], tabs[1], idx[1], tabs[2], idx[2], type_tab is not None, out)
    return out


# ------------------------------------------------------------------------------------ LayerNorm


@njit
def _layer_norm_row(x, gamma, beta, eps, out, tmp):
    """out = (x - mean) / sqrt(var + eps) * gamma + beta, moments in float64; tmp float32 [C] scratch."""
    C = x.shape[0]
    mean = _sum64(x) / C
    m32 = np.float32(mean)
    for k in range(C):
        tmp[k] = x[k] - m32
    # variance of the float32-centred values (what ops.layer_norm computes), squares in float64, in
    # _sum64's order
    c4 = C - C % 4
    v0, v1, v2, v3 = sumsq4_f64(tmp, c4 // 4)
    for k in range(c4, C):
        d = np.float64(tmp[k])
        v0 += d * d
    var = ((v0 + v1) + (v2 + v3)) / C
    inv = np.float32(1.0 / np.sqrt(var + eps))
    for k in range(C):
        out[k] = tmp[k] * inv * gamma[k] + beta[k]


@njit
def _ln_span(x, b, add, gamma, beta, eps, out_sum, out, m0, m1):
    """Rows m0:m1: out = LayerNorm(x) or, with add, out_sum = x + b and out = LayerNorm(out_sum)."""
    tmp = np.empty(x.shape[1], np.float32)
    for m in range(m0, m1):
        row = x[m]
        if add:
            row = out_sum[m]
            xr = x[m]
            br = b[m]
            for k in range(x.shape[1]):
                row[k] = xr[k] + br[k]
        _layer_norm_row(row, gamma, beta, eps, out[m], tmp)


@jit(parallel=True, ieee=True)
def _ln_rows(x, b, add, gamma, beta, eps, out_sum, out):
    M = x.shape[0]
    for c in prange((M + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK):
        _ln_span(x, b, add, gamma, beta, eps, out_sum, out, c * ROWS_PER_CHUNK, min(M, (c + 1) * ROWS_PER_CHUNK))


def _layer_norm_call(x2, b2, add, gamma, beta, eps, s2, out2, parallel):
    g = np.ascontiguousarray(gamma, np.float32)
    bt = np.ascontiguousarray(beta, np.float32)
    if parallel:
        _ln_rows(x2, b2, add, g, bt, float(eps), s2, out2)
    else:  # one thread: the span over all rows, no parallel region
        _ln_span(x2, b2, add, g, bt, float(eps), s2, out2, 0, x2.shape[0])


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, parallel: bool = True) -> np.ndarray:
    """ops.layer_norm, fused: float32 [..., C] -> float32 [..., C]."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    if x.size:
        x2, o2 = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1])
        _layer_norm_call(x2, x2, False, gamma, beta, eps, o2, o2, parallel)  # b, out_sum unused without add
    return out


def add_layer_norm(a: np.ndarray, b: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                   parallel: bool = True, out_sum: np.ndarray | None = None,
                   out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(a + b, layer_norm(a + b)) in one pass: float32 [..., C] twice -> (sum, normalised), written into
    out_sum / out (float32, a's shape, distinct from a and b) when given."""
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    if a.shape != b.shape:
        raise InputError(f"add_layer_norm: a {a.shape} and b {b.shape} must have the same shape")
    s = chk.out_array(out_sum, a.shape, np.float32, "add_layer_norm: out_sum", (a, b))
    out = chk.out_array(out, a.shape, np.float32, "add_layer_norm: out", (a, b, s))
    if a.size:
        C = a.shape[-1]
        _layer_norm_call(a.reshape(-1, C), b.reshape(-1, C), True, gamma, beta, eps, s.reshape(-1, C), out.reshape(-1, C),
                         parallel)
    return s, out


def add_layer_norm_into(a2, b2, gamma, beta, eps: float, s2, out2) -> None:
    """add_layer_norm, row-parallel, without its checks, for a caller that built every argument as it
    would (QuantExecutor's hot path): a2, b2, s2, out2 float32 [M, C] C-contiguous, non-empty, the two
    outputs overlapping neither input nor each other; gamma, beta float32 [C] C-contiguous."""
    _ln_rows(a2, b2, True, gamma, beta, float(eps), s2, out2)


# ------------------------------------------------------------- integer residual sum -> LayerNorm -> codes


@jit(parallel=True, ieee=True)
def _residual_ln_quant_rows(a, b, s_bounds, a_zp, ra, b_zp, rb, s_zp, s_scale, s_qmin, s_qmax, gamma, beta, eps,
                            o_bounds, o_scale, o_lo, o_hi, o_zpf, out, bad):
    """Per row: s = add_requant(a, b) codes (group g of s_bounds: its zero points and ratios), x =
    dequantize(s) = float32(s - s_zp) * s_scale, y = LayerNorm(x), out = quantize(y) with the
    groups of o_bounds; bad[m] = 1 if y holds NaN/Inf.   # a, b [M, C] codes -> out [M, C] codes"""
    M, C = a.shape
    Gs = s_bounds.shape[0] - 1
    for c in prange((M + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK):
        x = np.empty(C, np.float32)
        y = np.empty(C, np.float32)
        tmp = np.empty(C, np.float32)
        yi = y.view(np.int32)
        for m in range(c * ROWS_PER_CHUNK, min(M, (c + 1) * ROWS_PER_CHUNK)):
            ar, br = a[m], b[m]
            for g in range(Gs):
                az, bz, sz, fa, fb = a_zp[g], b_zp[g], s_zp[g], ra[g], rb[g]
                sc, szi = s_scale[g], np.int32(s_zp[g])
                c0, c1 = s_bounds[g], s_bounds[g + 1]
                ag, bg, xg = ar[c0:c1], br[c0:c1], x[c0:c1]  # indexed from 0: vectorisable
                for i in range(c1 - c0):
                    q = _add_requant_one(ag[i], bg[i], az, fa, bz, fb, sz, s_qmin, s_qmax)
                    xg[i] = np.float32(q - szi) * sc
            _layer_norm_row(x, gamma, beta, eps, y, tmp)
            bad[m] = 1 if _quantize_row(y, yi, o_bounds, o_scale, o_lo, o_hi, o_zpf, out[m]) >= _EXP_ALL_ONES else 0


def residual_layer_norm_quantize(a, b, s_bounds, a_zp, ra, b_zp, rb, s_zp, s_scale, s_qmin: int, s_qmax: int,
                                 gamma, beta, eps: float, grid: OutGrid):
    """quantize(LayerNorm(dequantize(add_requant(a, b)))) in one pass over rows, the four steps of a
    statically quantized residual block bit for bit (tests/unit/test_fused.py compares it with the
    unfused kernels), without the sum's codes or the float LayerNorm output ever reaching memory.

    a, b: integer codes [..., C]; s_bounds int64 [Gs+1]: the sum's column groups (one group = per
    tensor), with per-group a_zp, b_zp, s_zp (float64) and ratios ra = a_scale / s_scale, rb (float64),
    the sum's float32 scales s_scale and its grid [s_qmin, s_qmax]; gamma, beta float32 [C]; grid: the
    LayerNorm output's OutGrid. Returns codes [..., C] of grid.dtype. NaN/Inf after the LayerNorm ->
    InputError.
    """
    what = "residual_layer_norm_quantize"
    a = np.ascontiguousarray(chk.array(a, "a", (np.int8, np.uint8, np.int16)))
    b = np.ascontiguousarray(chk.array(b, "b", (np.int8, np.uint8, np.int16)))
    if a.shape != b.shape or a.ndim < 1 or a.shape[-1] == 0:
        raise InputError(f"{what}: a {a.shape} and b {b.shape} must have the same shape, with columns")
    Cn = a.shape[-1]
    s_bounds = chk.group_bounds(s_bounds, Cn, "s_bounds")
    _check_grid(grid, Cn, what)
    Gs = s_bounds.size - 1
    per_group = [np.ascontiguousarray(v, np.float64) for v in (a_zp, ra, b_zp, rb, s_zp)]
    s_scale = np.ascontiguousarray(s_scale, np.float32)
    if any(v.shape != (Gs,) for v in (*per_group, s_scale)):
        raise InputError(f"{what}: zero points, ratios and scales of the sum need one entry per group ({Gs})")
    a_zp, ra, b_zp, rb, s_zp = per_group
    gamma, beta = chk.f32_vector(gamma, Cn, "gamma"), chk.f32_vector(beta, Cn, "beta")
    a2, b2 = a.reshape(-1, Cn), b.reshape(-1, Cn)
    out = np.empty(a2.shape, grid.dtype)
    bad = np.zeros(a2.shape[0], np.uint8)
    if out.size:
        _residual_ln_quant_rows(a2, b2, s_bounds, a_zp, ra, b_zp, rb, s_zp, s_scale, np.float64(s_qmin), np.float64(s_qmax),
                                gamma, beta, float(eps), grid.bounds, grid.scale, grid.lo, grid.hi, grid.zpf, out, bad)
    _check_bad(bad, "residual LayerNorm")
    return out.reshape(a.shape)


# ------------------------------------------------------------------------------ attention context


@jit(parallel=True, ieee=True)
def _merge_heads_rows(acc, scale, h, out):
    """out[b, t, j*d + e] = float32(acc[b*h + j, t, e]) * scale[b]   # [B*h, T, d] -> [B, T, h*d]"""
    B, T = out.shape[0], out.shape[1]
    d = acc.shape[2]
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        s = scale[b]
        o = out[b, t]
        for j in range(h):
            a = acc[b * h + j, t]
            for e in range(d):
                o[j * d + e] = np.float32(a[e]) * s


def merge_heads_scaled(acc: np.ndarray, scale: np.ndarray, heads: int, out: np.ndarray | None = None) -> np.ndarray:
    """ops.merge_heads(acc.astype(float32) * scale[:, None, None, None]) in one pass: the integer
    attention context int32 [B*h, T, d] with one float32 scale per sequence [B] -> float32 [B, T, h*d]
    (into `out` when given)."""
    acc = np.ascontiguousarray(acc)
    Bh, T, d = acc.shape
    B = Bh // heads
    out = chk.out_array(out, (B, T, heads * d), np.float32, "merge_heads_scaled", (acc,))
    if out.size:
        merge_heads_into(acc, np.ascontiguousarray(scale, np.float32), heads, out)
    return out


def merge_heads_into(acc, scale, heads: int, out) -> None:
    """merge_heads_scaled without its checks, for a caller that built every argument as it would
    (QuantExecutor's hot path): acc int32 [B*heads, T, d] C-contiguous, scale float32 [B], out float32
    [B, T, heads*d] C-contiguous, non-empty."""
    _merge_heads_rows(acc, scale, heads, out)
