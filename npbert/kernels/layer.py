"""One encoder layer of a dynamic recipe as one compiled call.

QuantExecutor.layer (npbert/qmodel.py) runs a plain dynamic layer as a fixed sequence of kernels: the
input's uint8 codes, the q/k/v GEMM(s) with their head-major codes, Q K^T, softmax -> probability
codes, P V, the head merge, then three linears (each: its input's codes, the dequantizing GEMM) and
two residual + LayerNorm passes. Called one by one from Python, the ~16 kernels of a layer cost
their wrappers' Python and numba's argument unboxing each time (a MiniLM batch-1 forward: ~0.7 ms of
~15, bench/bench_overhead.py). dynamic_layer_into calls the same cores in the same order on the same
buffers from compiled code, so its outputs are the same bits (tests/unit/test_qmodel.py compares it
with the hooks). It is a sequencer only: every piece of arithmetic is the cores'.

A weight is passed as the tuple quads_args builds (its quad panels, fixes, zero-point correction
for uint8 codes + 128, scale and bias); a site's dynamic spec as (bits, tmiqr).
"""

from __future__ import annotations

import numpy as np

from npbert._jit import jit
from npbert.kernels._simd import MR
from npbert.kernels.fused import ACT_NONE, _activation_rows, _ln_rows, _merge_heads_rows, _softmax_quantize_core
from npbert.kernels.gemm import _NO_VEC, PackedInt8Weight, _bgemm_core, _gemm_quads_dequant_core, _quads_corr, _widen
from npbert.kernels.quantize import UNSIGNED_ZP, _quantize_dynamic_core, _quantize_dynamic_heads_core

__all__ = ["quads_args", "dynamic_layer_into", "OK"]

OK = 0  # dynamic_layer_into's return when every quantizer saw finite values


def quads_args(pw: PackedInt8Weight, w_scale: np.ndarray, bias: np.ndarray | None) -> tuple:
    """A quad-panel weight as dynamic_layer_into takes it, for uint8 codes + 128 (zero point
    UNSIGNED_ZP): (panels, kq, n, corr, fix_start, fix_c, fix_k, fix_v, w_scale, bias, has_bias).
    w_scale and bias float32 [N] C-contiguous (QWeight settles them)."""
    return (pw.panels, pw.kq, pw.n, _quads_corr(pw, UNSIGNED_ZP), *pw.fixes, w_scale,
            _NO_VEC if bias is None else bias, bias is not None)


@jit
def _codes(x2, seg, valid, spec, q, row_scale):
    """x2 float32 [M, K] -> uint8 codes + 128 q [M, K], row_scale float32 [M] (quantize.dynamic_rows_into's
    core). Returns -1, or the first bad row."""
    S = seg.shape[0] - 1
    bits, tmiqr = spec
    return _quantize_dynamic_core(x2, seg, valid, tmiqr, (1 << (bits - 1)) - 1, UNSIGNED_ZP, q,
                                  np.empty(S, np.float32), np.empty(S, np.float32), row_scale)


@jit
def _linear(a, row_scale, w, act, out):
    """out float32 [M, N] = act(float32(float64(a W^T) * row_scale) * w_scale + bias) for uint8 codes a
    [M, K] (gemm.dequant_into's core: the codes read in place where they are whole tiles, else widened
    into padded rows)."""
    panels, kq, n, corr, fix_start, fix_c, fix_k, fix_v, w_scale, bias, has_bias = w
    M, K = a.shape
    lda = 4 * kq
    mpad = (M + MR - 1) // MR * MR
    if M % MR == 0 and K == lda:
        a8 = a.reshape(M * K)
    else:
        a8 = np.empty(mpad * lda, np.uint8)
        _widen(a, 0, K, 0, mpad, lda, a8)
    rs = np.zeros(mpad)  # float64, rows past M: 0
    for m in range(M):
        rs[m] = row_scale[m]
    _gemm_quads_dequant_core(a8, lda, M, panels, kq, n, corr, fix_start, fix_c, fix_k, fix_v, rs, w_scale, bias,
                             has_bias, out.reshape(M * n))
    if act != ACT_NONE:
        _activation_rows(out, act)


@jit
def _head_codes(y, c0s, width, seg, valid, spec, heads, T, q, row_scale):
    """Head-major int8 codes q [nb, B*heads*T, d] and row scales [nb, M] of the column blocks of y
    [M, W] (quantize.heads_into's core). Returns -1, or the first bad row."""
    nb, S = c0s.shape[0], seg.shape[0] - 1
    bits, tmiqr = spec
    bad, _i = _quantize_dynamic_heads_core(y, c0s, width, seg, valid, tmiqr, (1 << (bits - 1)) - 1, heads, T, q,
                                           np.empty((nb, S), np.float32), np.empty((nb, S), np.float32), row_scale)
    return bad


@jit
def dynamic_layer_into(x2, seg, valid, T, heads, stacked, in_spec, head_specs, lin_specs, act,
                       w_q, w_k, w_v, w_o, w_1, w_2, c0s, inv_sqrt_d,
                       key_bias, rel_bias, has_rel, p_scale, p_lo, p_hi, p_zpf, p_zp, ln1, ln2, eps,
                       codes_in, y_q, y_k, y_v, hq_q, hq_k, hq_v, rs_q, rs_k, rs_v, scores, probs, context, ctx,
                       codes_o, a_out, s1, x1, codes_1, g, codes_2, f2, s2, y):
    """One plain dynamic encoder layer, QuantExecutor.layer's kernel sequence, on caller-built buffers.

    x2 float32 [M, C] the layer input (rows b*T + t), seg / valid the dynamic quantizers' segments and
    valid rows; specs are (bits, tmiqr), head_specs q's, k's and v's. stacked: w_q is the stacked q/k/v
    weight [3C, C], y_q its output [M, 3C], hq_q the head codes [3, B*heads*T, d] and rs_q their row
    scales [3, M] (c0s = 0, C, 2C; the three head specs equal); else w_q, w_k, w_v each [C, C] with
    outputs [M, C], head codes [1, B*heads*T, d], row scales [1, M] (c0s = 0).
    Attention: scores int32 [B*heads, T, T], probs codes [B*heads*T, T] on the probabilities' static
    grid (p_scale, p_lo / p_hi = qmin / qmax - zp, p_zpf = zp as float32; p_zp the same as an int),
    context int32 [B*heads, T, d], ctx float32 [M, C]. Then codes_o / a_out (the output projection),
    s1 / x1 (residual sum, LayerNorm ln1 = (gamma, beta)), codes_1 / g [M, I] (FF1 + act), codes_2 /
    f2 (FF2), s2 / y (residual, ln2): y is the layer's output. Codes buffers uint8 [M, K].
    Returns OK, or the 1-based step whose quantizer met NaN/Inf (the caller re-runs the layer's hooks,
    which name the site and the token)."""
    M, C = x2.shape
    B = M // T
    d = C // heads
    BH = B * heads
    rs_in = np.empty(M, np.float32)
    if _codes(x2, seg, valid, in_spec, codes_in, rs_in) != -1:
        return 1
    # q, k, v: float [M, C] each (one stacked GEMM or three), then their head-major codes
    if stacked:
        _linear(codes_in, rs_in, w_q, ACT_NONE, y_q)
        if _head_codes(y_q, c0s, C, seg, valid, head_specs[0], heads, T, hq_q, rs_q) != -1:  # (one spec: the caller's)
            return 2
        q8, k8, v8 = hq_q[0], hq_q[1], hq_q[2]
        sq, sk, sv = rs_q[0], rs_q[1], rs_q[2]
    else:
        _linear(codes_in, rs_in, w_q, ACT_NONE, y_q)
        _linear(codes_in, rs_in, w_k, ACT_NONE, y_k)
        _linear(codes_in, rs_in, w_v, ACT_NONE, y_v)
        if (_head_codes(y_q, c0s, C, seg, valid, head_specs[0], heads, T, hq_q, rs_q) != -1
                or _head_codes(y_k, c0s, C, seg, valid, head_specs[1], heads, T, hq_k, rs_k) != -1
                or _head_codes(y_v, c0s, C, seg, valid, head_specs[2], heads, T, hq_v, rs_v) != -1):
            return 2
        q8, k8, v8 = hq_q[0], hq_k[0], hq_v[0]
        sq, sk, sv = rs_q[0], rs_k[0], rs_v[0]
    # scores = Q K^T [B*heads, T, T] at scale s_q s_k / sqrt(d) per sequence; softmax -> codes; P V
    _bgemm_core(q8.reshape(BH, T, d), 0, k8.reshape(BH, T, d), False, scores)
    seq_scale = np.empty(B, np.float32)
    ctx_scale = np.empty(B, np.float32)
    for b in range(B):
        seq_scale[b] = sq[b * T] * sk[b * T] * inv_sqrt_d
        ctx_scale[b] = p_scale * sv[b * T]
    _softmax_quantize_core(scores.reshape(BH * T, T), seq_scale, key_bias, rel_bias, has_rel, p_scale, p_lo, p_hi,
                           p_zpf, probs)
    _bgemm_core(probs.reshape(BH, T, T), p_zp, v8.reshape(BH, T, d), True, context)
    _merge_heads_rows(context, ctx_scale, heads, ctx.reshape(B, T, C))
    # output projection, residual + LayerNorm, FF1 + act, FF2, residual + LayerNorm
    o_spec, f1_spec, f2_spec = lin_specs
    rs = np.empty(M, np.float32)
    if _codes(ctx, seg, valid, o_spec, codes_o, rs) != -1:
        return 3
    _linear(codes_o, rs, w_o, ACT_NONE, a_out)
    _ln_rows(a_out, x2, True, ln1[0], ln1[1], eps, s1, x1)
    if _codes(x1, seg, valid, f1_spec, codes_1, rs) != -1:
        return 4
    _linear(codes_1, rs, w_1, act, g)
    if _codes(g, seg, valid, f2_spec, codes_2, rs) != -1:
        return 5
    _linear(codes_2, rs, w_2, ACT_NONE, f2)
    _ln_rows(f2, x1, True, ln2[0], ln2[1], eps, s2, y)
    return OK
