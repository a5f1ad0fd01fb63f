"""The GEMM micro-kernel: a 4 x 16 int32 tile over k-pairs of int16 operands.

microkernel(a16, a_off, lda, wp, w_off, npairs, out, o_off, ldo):
    out[o_off + r*ldo + c] = sum_{p < npairs} a16[a_off + r*lda + 2p]     * wp[w_off + 32p + 2c]
                                            + a16[a_off + r*lda + 2p + 1] * wp[w_off + 32p + 2c + 1]
    for r < 4, c < 16; a16, wp int16 flat arrays, out int32 flat (a [4, 16] tile buffer with
    o_off = 0, ldo = 16, or straight into a C-contiguous int32 result). int32 wrap-around
    arithmetic (callers keep sums in range, see gemm.py).

Two variants for the grouped (PEG) GEMM share the k-pair loop and differ in the store: the scaled
one adds s * float64(tile) into a float64 [4, 16] buffer, the finishing one also rounds to float32,
multiplies the W scales, adds the biases and stores the tile into the float32 result.

On AVX2 a second family works on quad panels with vpmaddubsw (uint8 x int8, see the section
"the uint8 x int8 quad micro-kernel" below): plain int32 tiles and the same two grouped variants,
each adding the panel's sparse fixes in its registers.

Editing this file: numba's on-disk cache (cache=True) keys gemm.py's compiled functions on gemm.py's
own source, not on the functions they inline from here; npbert._jit.drop_stale_cache therefore drops
the package's whole cache when any of its sources changes.
"""

from __future__ import annotations

import numpy as np

from npbert._jit import njit

MR = 4  # rows of a tile
NR = 16  # columns of a tile (= columns of a weight panel)


@njit
def microkernel_numba(a16, a_off, lda, wp, w_off, npairs, out, o_off, ldo):
    """Plain-Numba micro-kernel (the simple version and the IR kernel's twin)."""
    for r in range(MR):
        for c in range(NR):
            out[o_off + r * ldo + c] = 0
    for r in range(MR):
        ao = a_off + r * lda
        oo = o_off + r * ldo
        for p in range(npairs):
            a0 = np.int32(a16[ao + 2 * p])
            a1 = np.int32(a16[ao + 2 * p + 1])
            wo = w_off + 2 * NR * p
            for c in range(NR):
                out[oo + c] += a0 * np.int32(wp[wo + 2 * c]) + a1 * np.int32(wp[wo + 2 * c + 1])






# ------------------------------------------------------------------------------ the LLVM-IR kernel
#
# Written as a numba intrinsic so the inner loop is exactly the IR below: per k-pair p,
#     w_lo, w_hi = load <16 x i16> panel[p, 0:16], panel[p, 16:32]    (columns 0-7, 8-15, as pairs)
#     for each of the 4 rows r:
#         b = splat<8 x i32>(load i32 a16[r, 2p:2p+2]) as <16 x i16>      (vpbroadcastd)
#         prod = sext(b) * sext(w) as <16 x i32>;  s = prod[even] + prod[odd]   (-> vpmaddwd)
#         acc[r, half] += s                                                  (-> vpaddd)
# The sext/mul/even-odd-shuffle/add form is plain portable IR (any LLVM target computes the same
# int32 values); the x86 backend matches it to vpmaddwd, which is exact for these operands (see
# gemm.py). Eight <8 x i32> accumulators live in registers (allocas promoted by SROA).

from llvmlite import binding as llvm_binding  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402


def _is_flat(t, dtype) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.dtype == dtype


def _splat(builder, x, n):
    """<n x T> of copies of the scalar x."""
    i32 = ir.IntType(32)
    undef = ir.Constant(ir.VectorType(x.type, n), ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(i32, 0)), undef,
                                  ir.Constant(ir.VectorType(i32, n), [0] * n))


def _splat8(builder, x):
    """<8 x T> of copies of the scalar x."""
    return _splat(builder, x, 8)


def _broadcast_pair(builder, row, p):
    """Row r's k-pair p, (a[r, 2p], a[r, 2p+1]), as a <16 x i16> of 8 copies: one 32-bit broadcast."""
    src = builder.gep(row, [builder.shl(p, ir.Constant(ir.IntType(64), 1))])
    pair = builder.load(builder.bitcast(src, ir.IntType(32).as_pointer()), align=2)
    return builder.bitcast(_splat8(builder, pair), ir.VectorType(ir.IntType(16), 16))


def _pair_loop(context, builder, signature, args, load_pair=_broadcast_pair):
    """Emit the k-pair loop; returns the eight <8 x i32> accumulators (row r, half h at 2r + h).
    load_pair(builder, row, p): how a row's k-pair reaches its <16 x i16> operand (an i16* row; the
    default broadcasts it; bench/bench_mk_variants.py times other operand layouts through this)."""
    a_arr = context.make_array(signature.args[0])(context, builder, args[0])
    w_arr = context.make_array(signature.args[3])(context, builder, args[3])
    a_off_v, lda_v, w_off_v, npairs_v = args[1], args[2], args[4], args[5]
    i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
    wt = ir.IntType(signature.args[3].dtype.bitwidth)  # panel element: i16, or i8 (sign-extended in
    # the loop: vpmovsxbw from memory; the products' operands still fit i16, so vpmaddwd matches)
    v16i32, v8i32 = ir.VectorType(i32, 16), ir.VectorType(i32, 8)
    v16w = ir.VectorType(wt, 16)
    even = ir.Constant(v8i32, list(range(0, 16, 2)))
    odd = ir.Constant(v8i32, list(range(1, 16, 2)))
    i16p = i16.as_pointer()

    a_base = builder.gep(builder.bitcast(a_arr.data, i16p), [a_off_v])
    w_base = builder.gep(builder.bitcast(w_arr.data, wt.as_pointer()), [w_off_v])
    rows = [builder.gep(a_base, [builder.mul(lda_v, ir.Constant(i64, r))]) for r in range(MR)]
    accs = [cgutils.alloca_once_value(builder, ir.Constant(v8i32, None)) for _ in range(2 * MR)]

    with cgutils.for_range(builder, npairs_v) as loop:
        p = loop.index
        wp_p = builder.gep(w_base, [builder.mul(p, ir.Constant(i64, 2 * NR))])
        w_lo = builder.load(builder.bitcast(wp_p, v16w.as_pointer()), align=1)
        w_hi = builder.load(builder.bitcast(builder.gep(wp_p, [ir.Constant(i64, NR)]), v16w.as_pointer()), align=1)
        w32 = (builder.sext(w_lo, v16i32), builder.sext(w_hi, v16i32))
        for r in range(MR):
            b32 = builder.sext(load_pair(builder, rows[r], p), v16i32)
            for h in range(2):
                prod = builder.mul(b32, w32[h])
                s = builder.add(builder.shuffle_vector(prod, prod, even), builder.shuffle_vector(prod, prod, odd))
                acc = accs[2 * r + h]
                builder.store(builder.add(builder.load(acc), s), acc)

    return [builder.load(acc) for acc in accs]


@intrinsic
def _microkernel_ir(typingctx, a16, a_off, lda, wp, w_off, npairs, out, o_off, ldo):
    if not (_is_flat(a16, types.int16) and (_is_flat(wp, types.int16) or _is_flat(wp, types.int8))
            and _is_flat(out, types.int32)):
        return None
    sig = types.void(a16, types.intp, types.intp, wp, types.intp, types.intp, out, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        accs = _pair_loop(context, builder, signature, args)
        o_arr = context.make_array(signature.args[6])(context, builder, args[6])
        o_off_v, ldo_v = args[7], args[8]
        i32, i64 = ir.IntType(32), ir.IntType(64)
        v8i32 = ir.VectorType(i32, 8)
        o_base = builder.gep(builder.bitcast(o_arr.data, i32.as_pointer()), [o_off_v])
        for r in range(MR):
            o_row = builder.gep(o_base, [builder.mul(ldo_v, ir.Constant(i64, r))])
            for h in range(2):
                dst = builder.bitcast(builder.gep(o_row, [ir.Constant(i64, 8 * h)]), v8i32.as_pointer())
                builder.store(accs[2 * r + h], dst, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _microkernel_scaled_ir(typingctx, a16, a_off, lda, wp, w_off, npairs, yt, s):
    """yt[r*16 + c] += s * float64(tile[r, c]) straight from the accumulator registers (no int32 tile
    round trip): the same float64 multiply and add, in the same order, as the NumPy reference."""
    if not (_is_flat(a16, types.int16) and _is_flat(wp, types.int8) and _is_flat(yt, types.float64)):
        return None
    sig = types.void(a16, types.intp, types.intp, wp, types.intp, types.intp, yt, types.float64)

    def codegen(context, builder, signature, args):
        accs = _pair_loop(context, builder, signature, args)
        _store_scaled(context, builder, signature, args, accs, 6)
        return context.get_dummy_value()

    return sig, codegen


def _fma8(builder, x, y, z):
    """x * y + z on <8 x double> where the product x * y is exact (the callers' contract): one fma on
    FMA targets, else multiply then add; with an exact product both round once, the same way."""
    if not HAVE_FMA:
        return builder.fadd(builder.fmul(x, y), z)
    v8f64 = ir.VectorType(ir.DoubleType(), 8)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8f64, [v8f64] * 3), "llvm.fma.v8f64")
    return builder.call(fma, [x, y, z])


def _store_scaled(context, builder, signature, args, accs, k, first=False):
    """yt += s * float64(acc) for the eight accumulators (row r, half h at 2r + h); yt, s = args[k], args[k + 1].
    first: yt = s * float64(acc) + 0.0, the same sum onto a zeroed yt without reading (or zeroing) it.

    One fused multiply-add, bit-identical to the separate multiply and add because the product is
    exact: s is a float32 (24-bit significand) and |acc| < 2^29 (29 bits), so s * acc needs at most
    53 bits; fma then rounds yt + s * acc once, exactly as the add alone would. The callers keep
    |acc| < 2^29 (gemm.K_MAX_FMA)."""
    y_arr = context.make_array(signature.args[k])(context, builder, args[k])
    f64 = ir.DoubleType()
    v8f64 = ir.VectorType(f64, 8)
    sv = _splat8(builder, args[k + 1])
    y_base = builder.bitcast(y_arr.data, f64.as_pointer())
    for i, acc in enumerate(accs):  # acc 2r + h holds tile[r, 8h:8h+8] = yt[16r + 8h : ...] = yt[8i : 8i + 8]
        dst = builder.bitcast(builder.gep(y_base, [ir.Constant(ir.IntType(64), 8 * i)]), v8f64.as_pointer())
        prev = ir.Constant(v8f64, [0.0] * 8) if first else builder.load(dst, align=8)
        builder.store(_fma8(builder, builder.sitofp(acc, v8f64), sv, prev), dst, align=8)


def _finish_rows(context, builder, signature, args, vals, k, col0=0):
    """dst[d_off + r*ldd + c] = float32(v[r, c]) * ws[c] + bs[c] for the eight float64 vectors vals
    (row r, half h at 2r + h); ws, bs, dst, d_off, ldd = args[k : k + 5]. float32 multiply then add,
    each rounded once (no fma), as NumPy would round them after the GEMM. col0: the tile's first
    column in ws, bs and dst (a second panel of the two-panel kernel: 16)."""
    arr = lambda i: context.make_array(signature.args[i])(context, builder, args[i])  # noqa: E731
    f32, i64 = ir.FloatType(), ir.IntType(64)
    v8f32 = ir.VectorType(f32, 8)
    c0 = ir.Constant(i64, col0)
    ws_base = builder.gep(builder.bitcast(arr(k).data, f32.as_pointer()), [c0])
    bs_base = builder.gep(builder.bitcast(arr(k + 1).data, f32.as_pointer()), [c0])
    d_base = builder.gep(builder.bitcast(arr(k + 2).data, f32.as_pointer()), [builder.add(args[k + 3], c0)])
    vec = lambda base, i: builder.bitcast(builder.gep(base, [ir.Constant(i64, i)]), v8f32.as_pointer())  # noqa: E731
    wsv = [builder.load(vec(ws_base, 8 * h), align=4) for h in range(2)]
    bsv = [builder.load(vec(bs_base, 8 * h), align=4) for h in range(2)]
    for i, v in enumerate(vals):
        r, h = divmod(i, 2)
        f = builder.fadd(builder.fmul(builder.fptrunc(v, v8f32), wsv[h]), bsv[h])
        row = builder.gep(d_base, [builder.mul(args[k + 4], ir.Constant(i64, r))])
        builder.store(f, vec(row, 8 * h), align=4)


def _store_finish(context, builder, signature, args, accs, k):
    """v = yt + s * float64(acc) (one fma, exact as in _store_scaled), then dst[d_off + r*ldd + c] =
    float32(v[r, c]) * ws[c] + bs[c]; yt, s, ws, bs, dst, d_off, ldd = args[k : k + 7]. yt is left as it
    was (v is not stored back)."""
    f64 = ir.DoubleType()
    v8f64 = ir.VectorType(f64, 8)
    sv = _splat8(builder, args[k + 1])
    y_base = builder.bitcast(context.make_array(signature.args[k])(context, builder, args[k]).data, f64.as_pointer())
    yv = lambda i: builder.load(builder.bitcast(builder.gep(y_base, [ir.Constant(ir.IntType(64), 8 * i)]),  # noqa: E731
                                                v8f64.as_pointer()), align=8)
    vals = [_fma8(builder, builder.sitofp(acc, v8f64), sv, yv(i)) for i, acc in enumerate(accs)]
    _finish_rows(context, builder, signature, args, vals, k + 2)


@njit
def microkernel_ir(a16, a_off, lda, wp, w_off, npairs, out, o_off, ldo):
    """The SIMD micro-kernel (same contract as microkernel_numba)."""
    _microkernel_ir(a16, a_off, lda, wp, w_off, npairs, out, o_off, ldo)


@intrinsic
def _microkernel_finish_ir(typingctx, a16, a_off, lda, wp, w_off, npairs, yt, s, ws, bs, dst, d_off, ldd):
    """The last group of a grouped tile: v = yt + s * float64(acc) (as _microkernel_scaled_ir), then
    dst[d_off + r*ldd + c] = float32(v[r, c]) * ws[c] + bs[c] (float32, each op rounded once).
    ws, bs float32 [16]: the panel's W scales and biases (1.0 and -0.0 where there are none: x * 1 and
    x + (-0.0) return x exactly, signed zeros included)."""
    if not (_is_flat(a16, types.int16) and _is_flat(wp, types.int8) and _is_flat(yt, types.float64)
            and _is_flat(ws, types.float32) and _is_flat(bs, types.float32) and _is_flat(dst, types.float32)):
        return None
    sig = types.void(a16, types.intp, types.intp, wp, types.intp, types.intp, yt, types.float64, ws, bs, dst,
                     types.intp, types.intp)

    def codegen(context, builder, signature, args):
        accs = _pair_loop(context, builder, signature, args)
        _store_finish(context, builder, signature, args, accs, 6)
        return context.get_dummy_value()

    return sig, codegen


@njit
def microkernel_scaled(a16, a_off, lda, wp, w_off, npairs, yt, s):
    """yt[r*16 + c] += s * float64(tile[r, c]), tile = microkernel's 4 x 16 result (yt float64 flat [64]);
    s a float32 value and |tile| < 2^29, which make the product exact (see _store_scaled)."""
    _microkernel_scaled_ir(a16, a_off, lda, wp, w_off, npairs, yt, s)


@njit
def microkernel_finish(a16, a_off, lda, wp, w_off, npairs, yt, s, ws, bs, dst, d_off, ldd):
    """dst[d_off + r*ldd + c] = float32(yt[r*16 + c] + s * float64(tile[r, c])) * ws[c] + bs[c] (s a float32
    value, |tile| < 2^29, as microkernel_scaled)."""
    _microkernel_finish_ir(a16, a_off, lda, wp, w_off, npairs, yt, s, ws, bs, dst, d_off, ldd)


microkernel = microkernel_ir  # the one gemm.py uses; microkernel_numba stays as its tested twin


# --------------------------------------------------------------- the uint8 x int8 quad micro-kernel (vpmaddubsw)
#
# Quad panels: wq[j, q, c, t] = safe[16j + c, 4q + t] (int8, 64 bytes per k-quad, zero padded). Per k-quad q
# and row r: b = splat<8 x i32>(a8[r, 4q:4q+4]) as <32 x i8>; for each half h (columns 8h..8h+7)
#     s16 = pmaddubsw(b, wq[q, 8h:8h+8, :])   (uint8 x int8 -> int16 pair sums, SATURATING)
#     acc[r, h] += pmaddwd(s16, 1)             (adjacent int16 pairs -> int32: the 4-term dot product)
# then the panel's fixes (acc[r, c] += a8[r, k] * v, see _quad_loop) and out = acc - corr (corr[n] =
# zp * sum_k w[n, k]: the zero-point correction). Exact only because no pair sum saturates: the
# panels hold weights whose k-pairs cannot reach the int16 bound against uint8 (every 7-bit weight;
# an 8-bit weight after gemm.split_saturating_pairs moved the excess of the rare large same-sign
# pairs into the fixes). The instruction has no portable IR pattern, so this kernel calls the x86 AVX2
# intrinsics and exists only where numba's target has AVX2 (HAVE_U8S7: named for the 7-bit weights
# it was first written for).

def _target_has(feature: str) -> bool:
    """Whether numba compiles for a CPU with `feature` (an LLVM feature name: "avx2", "fma"): the
    host's features, unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES pin another target (portable caches
    set 'generic'), which then must name +feature itself. Asking the host alone would let LLVM abort
    on an AVX2 intrinsic for a generic target."""
    from numba.core import config

    feats = (config.CPU_FEATURES or "").split(",")
    if f"-{feature}" in feats:
        return False
    if config.CPU_NAME not in (None, "host") or config.CPU_FEATURES:
        return f"+{feature}" in feats
    try:
        return bool(llvm_binding.get_host_cpu_features().get(feature, False))
    except Exception:  # pragma: no cover - feature query unavailable: stay on the portable kernel
        return False


HAVE_U8S7 = _target_has("avx2")
_LLVM_MAJOR = llvm_binding.llvm_version_info[0]  # (vpdpbusd's declared operand types changed in 22)
# The quad loop's instruction. VNNI's vpdpbusd adds the four uint8 x int8 products of each 32-bit lane
# to its int32 accumulator without an int16 intermediate, so it cannot saturate; the panels keep their
# fixes (w = panel + fix is an identity), and every path returns the same exact int32 sums (wrapping
# mod 2^32 alike). "vnni512": the whole 16-column panel quad in one zmm (AVX512-VNNI; AMD Zen 4/5 and
# Intel since Ice Lake run it at full width); "vnni256": one ymm per 8 columns (AVX-VNNI without
# AVX-512); "avx2": vpmaddubsw + vpmaddwd + vpaddd. NUMBA_CPU_NAME / NUMBA_CPU_FEATURES pick another
# target (tests pin haswell for the AVX2 path), and numba's cache keys on that target.
if HAVE_U8S7 and _target_has("avx512vnni") and _target_has("avx512bw") and _target_has("avx512vl"):
    QUAD_ISA = "vnni512"
elif HAVE_U8S7 and (_target_has("avxvnni") or (_target_has("avx512vnni") and _target_has("avx512vl"))):
    QUAD_ISA = "vnni256"
elif HAVE_U8S7:
    QUAD_ISA = "avx2"
else:
    QUAD_ISA = None
# with FMA hardware the grouped tiles' s * acc + yt is one vfmadd; without it, llvm.fma would become a
# libm call per lane, so the separate multiply and add (the same bits, see _store_scaled) are emitted
HAVE_FMA = _target_has("fma")


@njit
def microkernel_u8s7_numba(a8, a_off, lda, wq, w_off, nquads, corr, c_off, out, o_off, ldo):
    """Plain-Numba twin of the quad kernel without fixes (exact int arithmetic, no saturation
    modelled: the callers' panels never saturate)."""
    for r in range(MR):
        for c in range(NR):
            s = np.int32(0)
            for q in range(nquads):
                for t in range(4):
                    s += np.int32(a8[a_off + r * lda + 4 * q + t]) * np.int32(wq[w_off + 64 * q + 4 * c + t])
            out[o_off + r * ldo + c] = s - corr[c_off + c]


def _quad_loop(context, builder, signature, args):
    """Emit the k-quad loop (a8, a_off, lda, wq, w_off, nquads = args[0:6]), then the fixes
    (corr, c_off, fix_c, fix_k, fix_v, f0, f1 = args[6:13]); returns the eight <8 x i32> accumulators
    (row r, half h at 2r + h) minus the correction row corr[c_off : c_off + 16].

    Fix e (f0 <= e < f1) adds a8[r, fix_k[e]] * fix_v[e] to column fix_c[e] of every row r, in the
    registers: the product is splat and masked to its lane (lane index == column), so the tile never
    makes a round trip through memory (a first version wrote a [4, 16] int32 correction tile with
    scalar stores and read it back as vectors: it was slower)."""
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    v8i32 = ir.VectorType(i32, 8)
    arr = lambda k: context.make_array(signature.args[k])(context, builder, args[k])  # noqa: E731
    a_off_v, lda_v, w_off_v, nq_v = args[1], args[2], args[4], args[5]
    a_base = builder.gep(builder.bitcast(arr(0).data, i8.as_pointer()), [a_off_v])
    w_base = builder.gep(builder.bitcast(arr(3).data, i8.as_pointer()), [w_off_v])
    rows = [builder.gep(a_base, [builder.mul(lda_v, ir.Constant(i64, r))]) for r in range(MR)]
    accs = (_quad_sums_vnni512 if QUAD_ISA == "vnni512" else _quad_sums_avx2)(builder, rows, w_base, nq_v)

    fix = [builder.bitcast(arr(k).data, i64.as_pointer()) for k in (8, 9, 10)]
    lanes = [ir.Constant(v8i32, [8 * h + t for t in range(8)]) for h in range(2)]
    with cgutils.for_range_slice(builder, args[11], args[12], ir.Constant(i64, 1)) as (e, _):
        col, k, v = (builder.load(builder.gep(f, [e])) for f in fix)
        cs = _splat8(builder, builder.trunc(col, i32))
        masks = [builder.sext(builder.icmp_signed("==", lanes[h], cs), v8i32) for h in range(2)]
        v32 = builder.trunc(v, i32)
        for r in range(MR):
            a = builder.zext(builder.load(builder.gep(rows[r], [k])), i32)
            d = _splat8(builder, builder.mul(a, v32))  # |a * v| <= 255 * 128 (wrapping add: mod 2^32)
            for h in range(2):
                acc = accs[2 * r + h]
                builder.store(builder.add(builder.load(acc), builder.and_(d, masks[h])), acc)

    c_base = builder.gep(builder.bitcast(arr(6).data, i32.as_pointer()), [args[7]])
    cv = [builder.load(builder.bitcast(builder.gep(c_base, [ir.Constant(i64, 8 * h)]), v8i32.as_pointer()), align=4)
          for h in range(2)]
    return [builder.sub(builder.load(acc), cv[i % 2]) for i, acc in enumerate(accs)]


def _zmm_quad_loop(builder, rows, w_bases, nq_v, acc_of):
    """The vnni512 k-quad loop over len(w_bases) panels: per quad, each panel's 64 bytes (16 columns x
    4 k) are one zmm and each row's 4 activation bytes one 32-bit broadcast shared by the panels, so a
    row and panel cost one vpdpbusd into the <16 x i32> alloca acc_of(parity, panel, row) (parity:
    the quad's, from _two_quads_per_step)."""
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    v64i8 = ir.VectorType(i8, 64)
    vpdpbusd = _vnni_dot(builder, 16)

    def quad_step(q, parity):
        q64 = builder.mul(q, ir.Constant(i64, 64))
        wv = [builder.load(builder.bitcast(builder.gep(wb, [q64]), v64i8.as_pointer()), align=1) for wb in w_bases]
        q4 = builder.shl(q, ir.Constant(i64, 2))
        for r, row in enumerate(rows):
            quad = builder.load(builder.bitcast(builder.gep(row, [q4]), i32.as_pointer()), align=1)
            b8 = builder.bitcast(_splat(builder, quad, 16), v64i8)
            for p, w in enumerate(wv):
                acc = acc_of(parity, p, r)
                builder.store(vpdpbusd(builder.load(acc), b8, w), acc)

    _two_quads_per_step(builder, nq_v, quad_step)


def _halves(builder, z):
    """A <16 x T> vector as its two <8 x T> halves (columns 0-7, 8-15 of a panel row)."""
    i32 = ir.IntType(32)
    return [builder.shuffle_vector(z, z, ir.Constant(ir.VectorType(i32, 8), [8 * h + t for t in range(8)]))
            for h in range(2)]


def _quad_sums_vnni512(builder, rows, w_base, nq_v):
    """The k-quad loop on AVX512-VNNI (_zmm_quad_loop on one panel). Even and odd quads go to separate
    accumulators (8 zmm chains instead of 4: the instruction's latency would otherwise bound the loop)
    that are added at the end (int32 adds wrap, so the order cannot change the sum). Returns the eight
    <8 x i32> accumulator allocas (row r, half h at 2r + h)."""
    v16i32 = ir.VectorType(ir.IntType(32), 16)
    zaccs = [[cgutils.alloca_once_value(builder, ir.Constant(v16i32, None)) for _ in range(MR)] for _ in range(2)]
    _zmm_quad_loop(builder, rows, [w_base], nq_v, lambda parity, p, r: zaccs[parity][r])
    return [cgutils.alloca_once_value(builder, half) for r in range(MR)
            for half in _halves(builder, builder.add(builder.load(zaccs[0][r]), builder.load(zaccs[1][r])))]


def _quad_sums_avx2(builder, rows, w_base, nq_v):
    """The k-quad loop on 256-bit registers, one accumulator per row and 8-column half: vpdpbusd where
    AVX-VNNI is (QUAD_ISA "vnni256"), else vpmaddubsw + vpmaddwd by ones + vpaddd. Returns the eight
    <8 x i32> accumulator allocas (row r, half h at 2r + h)."""
    mod = builder.module
    i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
    v32i8, v16i16, v8i32 = ir.VectorType(i8, 32), ir.VectorType(i16, 16), ir.VectorType(i32, 8)
    if QUAD_ISA == "vnni256":
        dot = _vnni_dot(builder, 8)
    else:
        pmaddubsw = cgutils.get_or_insert_function(mod, ir.FunctionType(v16i16, [v32i8, v32i8]), "llvm.x86.avx2.pmadd.ub.sw")
        pmaddwd = cgutils.get_or_insert_function(mod, ir.FunctionType(v8i32, [v16i16, v16i16]), "llvm.x86.avx2.pmadd.wd")
        ones = ir.Constant(v16i16, [1] * 16)
        dot = lambda acc, b8, w: builder.add(acc, builder.call(pmaddwd, [builder.call(pmaddubsw, [b8, w]), ones]))  # noqa: E731
    accs = [cgutils.alloca_once_value(builder, ir.Constant(v8i32, None)) for _ in range(2 * MR)]

    def quad_step(q, _parity):
        wq_q = builder.gep(w_base, [builder.mul(q, ir.Constant(i64, 64))])
        wv = [builder.load(builder.bitcast(builder.gep(wq_q, [ir.Constant(i64, 32 * h)]), v32i8.as_pointer()), align=1)
              for h in range(2)]
        q4 = builder.shl(q, ir.Constant(i64, 2))
        for r in range(MR):
            quad = builder.load(builder.bitcast(builder.gep(rows[r], [q4]), i32.as_pointer()), align=1)
            b8 = builder.bitcast(_splat8(builder, quad), v32i8)
            for h in range(2):
                acc = accs[2 * r + h]
                builder.store(dot(builder.load(acc), b8, wv[h]), acc)

    _two_quads_per_step(builder, nq_v, quad_step)
    return accs


def _vnni_dot(builder, lanes: int):
    """vpdpbusd on <lanes x i32> (8: ymm, 16: zmm) as a function (acc, a bytes uint8, w bytes int8) ->
    acc + the four-product sums per lane. LLVM 22 declares the intrinsic on byte vectors; earlier
    releases on <lanes x i32> (the same bits: the operands are bitcast)."""
    i8, i32 = ir.IntType(8), ir.IntType(32)
    vi32, vi8 = ir.VectorType(i32, lanes), ir.VectorType(i8, 4 * lanes)
    opnd = vi8 if _LLVM_MAJOR >= 22 else vi32
    name = "llvm.x86.avx512.vpdpbusd.%d" % (32 * lanes)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vi32, [vi32, opnd, opnd]), name)
    return lambda acc, a, w: builder.call(fn, [acc, builder.bitcast(a, opnd), builder.bitcast(w, opnd)])


def _two_quads_per_step(builder, nq_v, quad_step):
    """quad_step(q, parity) for q < nq_v: two k-quads per iteration (parity 0 and 1), then the odd one
    (parity 0); a grouped GEMM's groups are short (16 quads)."""
    i64 = ir.IntType(64)
    with cgutils.for_range(builder, builder.lshr(nq_v, ir.Constant(i64, 1))) as loop:
        q2 = builder.shl(loop.index, ir.Constant(i64, 1))
        quad_step(q2, 0)
        quad_step(builder.add(q2, ir.Constant(i64, 1)), 1)
    with cgutils.for_range_slice(builder, builder.and_(nq_v, ir.Constant(i64, -2)), nq_v, ir.Constant(i64, 1)) as (q, _):
        quad_step(q, 0)


def _quad_args_ok(a8, wq, corr, fix_c, fix_k, fix_v) -> bool:
    return (_is_flat(a8, types.uint8) and _is_flat(wq, types.int8) and _is_flat(corr, types.int32)
            and all(_is_flat(f, types.int64) for f in (fix_c, fix_k, fix_v)))


def _quad_sig(a8, wq, corr, fix_c, fix_k, fix_v):
    """The shared leading argument types: a8, a_off, lda, wq, w_off, nquads, corr, c_off, fix_c, fix_k,
    fix_v, f0, f1."""
    return (a8, types.intp, types.intp, wq, types.intp, types.intp, corr, types.intp, fix_c, fix_k, fix_v, types.intp,
            types.intp)


@intrinsic
def _microkernel_u8s7_ir(typingctx, a8, a_off, lda, wq, w_off, nquads, corr, c_off, fix_c, fix_k, fix_v, f0, f1, out,
                         o_off, ldo):
    if not (_quad_args_ok(a8, wq, corr, fix_c, fix_k, fix_v) and _is_flat(out, types.int32)):
        return None
    sig = types.void(*_quad_sig(a8, wq, corr, fix_c, fix_k, fix_v), out, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        v8i32 = ir.VectorType(i32, 8)
        accs = _quad_loop(context, builder, signature, args)
        o_arr = context.make_array(signature.args[13])(context, builder, args[13])
        o_base = builder.gep(builder.bitcast(o_arr.data, i32.as_pointer()), [args[14]])
        for i, acc in enumerate(accs):
            r, h = divmod(i, 2)
            o_row = builder.gep(o_base, [builder.mul(args[15], ir.Constant(i64, r))])
            builder.store(acc, builder.bitcast(builder.gep(o_row, [ir.Constant(i64, 8 * h)]), v8i32.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _microkernel_quads_scaled_ir(typingctx, a8, a_off, lda, wq, w_off, nquads, corr, c_off, fix_c, fix_k, fix_v, f0, f1,
                                 yt, s):
    """yt[r*16 + c] += s * float64(quad tile[r, c]) with the tile complete (fixes added, corr
    subtracted): a group of the grouped GEMM on quad panels (as _microkernel_scaled_ir on pairs)."""
    if not (_quad_args_ok(a8, wq, corr, fix_c, fix_k, fix_v) and _is_flat(yt, types.float64)):
        return None
    sig = types.void(*_quad_sig(a8, wq, corr, fix_c, fix_k, fix_v), yt, types.float64)

    def codegen(context, builder, signature, args):
        _store_scaled(context, builder, signature, args, _quad_loop(context, builder, signature, args), 13)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _microkernel_quads_first_ir(typingctx, a8, a_off, lda, wq, w_off, nquads, corr, c_off, fix_c, fix_k, fix_v, f0, f1,
                                yt, s):
    """The first group: yt[r*16 + c] = s * float64(quad tile[r, c]) + 0.0 (as _microkernel_quads_scaled_ir
    onto a zeroed yt, bit for bit, without reading it)."""
    if not (_quad_args_ok(a8, wq, corr, fix_c, fix_k, fix_v) and _is_flat(yt, types.float64)):
        return None
    sig = types.void(*_quad_sig(a8, wq, corr, fix_c, fix_k, fix_v), yt, types.float64)

    def codegen(context, builder, signature, args):
        _store_scaled(context, builder, signature, args, _quad_loop(context, builder, signature, args), 13, first=True)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _microkernel_quads_finish_ir(typingctx, a8, a_off, lda, wq, w_off, nquads, corr, c_off, fix_c, fix_k, fix_v, f0, f1,
                                 yt, s, ws, bs, dst, d_off, ldd):
    """The last group on quad panels: as _microkernel_finish_ir with the complete quad tile."""
    if not (_quad_args_ok(a8, wq, corr, fix_c, fix_k, fix_v) and _is_flat(yt, types.float64)
            and _is_flat(ws, types.float32) and _is_flat(bs, types.float32) and _is_flat(dst, types.float32)):
        return None
    sig = types.void(*_quad_sig(a8, wq, corr, fix_c, fix_k, fix_v), yt, types.float64, ws, bs, dst, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        _store_finish(context, builder, signature, args, _quad_loop(context, builder, signature, args), 13)
        return context.get_dummy_value()

    return sig, codegen


def _store_dequant(context, builder, signature, args, accs, k, col0=0):
    """dst[d_off + r*ldd + c] = float32(float64(acc[r, c]) * rs[rs_off + r]) * ws[c] + bs[c]; rs, rs_off,
    ws, bs, dst, d_off, ldd = args[k : k + 7]. Each operation rounds once, in the order of
    fused.epilogue (float64 product to float32, then float32 multiply and add, no fma), so the tile
    equals that pass over the int32 result bit for bit; bs holds -0.0 where there is no bias."""
    f64, i64 = ir.DoubleType(), ir.IntType(64)
    v8f64 = ir.VectorType(f64, 8)
    rs_arr = context.make_array(signature.args[k])(context, builder, args[k])
    rs_base = builder.gep(builder.bitcast(rs_arr.data, f64.as_pointer()), [args[k + 1]])
    rsv = [_splat8(builder, builder.load(builder.gep(rs_base, [ir.Constant(i64, r)]))) for r in range(len(accs) // 2)]
    vals = [builder.fmul(builder.sitofp(acc, v8f64), rsv[i // 2]) for i, acc in enumerate(accs)]
    _finish_rows(context, builder, signature, args, vals, k + 2, col0)


@intrinsic
def _microkernel_quads_dequant_ir(typingctx, a8, a_off, lda, wq, w_off, nquads, corr, c_off, fix_c, fix_k, fix_v, f0,
                                  f1, rs, rs_off, ws, bs, dst, d_off, ldd):
    """The quad tile (fixes added, corr subtracted) dequantized in the registers: dst[d_off + r*ldd + c]
    = float32(float64(tile[r, c]) * rs[rs_off + r]) * ws[c] + bs[c] (rs float64: the rows' activation
    scales; ws, bs float32 [16] as in _microkernel_finish_ir). The int32 tile never reaches memory."""
    if not (_quad_args_ok(a8, wq, corr, fix_c, fix_k, fix_v) and _is_flat(rs, types.float64)
            and _is_flat(ws, types.float32) and _is_flat(bs, types.float32) and _is_flat(dst, types.float32)):
        return None
    sig = types.void(*_quad_sig(a8, wq, corr, fix_c, fix_k, fix_v), rs, types.intp, ws, bs, dst, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        _store_dequant(context, builder, signature, args, _quad_loop(context, builder, signature, args), 13)
        return context.get_dummy_value()

    return sig, codegen


def _two_panel_sums_vnni512(context, builder, signature, args, nrows=MR):
    """The k-quad loop over two adjacent panels at once (a8, a_off, lda, wq, w_off, w_off2, nquads, corr,
    c_off = args[0:9]): a 4 x 32 tile in eight zmm accumulators, each row's 4-byte broadcast shared by
    both panels, so a k-quad costs 6 loads for 8 vpdpbusd where one panel costs 5 for 4 (the loads
    bound the one-panel loop on L1-resident operands). No fixes (VNNI panels have none). Returns the
    sixteen <8 x i32> tiles minus the corrections, panel p's (row r, half h) at 8p + 2r + h."""
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    v16i32, v8i32 = ir.VectorType(i32, 16), ir.VectorType(i32, 8)
    arr = lambda k: context.make_array(signature.args[k])(context, builder, args[k])  # noqa: E731
    a_base = builder.gep(builder.bitcast(arr(0).data, i8.as_pointer()), [args[1]])
    w_data = builder.bitcast(arr(3).data, i8.as_pointer())
    w_bases = [builder.gep(w_data, [args[4]]), builder.gep(w_data, [args[5]])]
    rows = [builder.gep(a_base, [builder.mul(args[2], ir.Constant(i64, r))]) for r in range(nrows)]
    zaccs = [[cgutils.alloca_once_value(builder, ir.Constant(v16i32, None)) for _ in range(nrows)] for _ in range(2)]
    _zmm_quad_loop(builder, rows, w_bases, args[6], lambda _parity, p, r: zaccs[p][r])  # one chain per panel
    c_base = builder.gep(builder.bitcast(arr(7).data, i32.as_pointer()), [args[8]])
    cv = [builder.load(builder.bitcast(builder.gep(c_base, [ir.Constant(i64, 8 * i)]), v8i32.as_pointer()), align=4)
          for i in range(4)]  # corr[c_off : c_off + 32] in four <8 x i32>
    return [builder.sub(half, cv[2 * p + h]) for p in range(2) for r in range(nrows)
            for h, half in enumerate(_halves(builder, builder.load(zaccs[p][r])))]


def _quads2_typer(a8, wq, corr, rs, ws, bs, dst):
    """The two-panel dequantizing kernels' signature, or None (vnni512 only: elsewhere LLVM could not
    select the instruction; or wrong types)."""
    if QUAD_ISA != "vnni512" or not (
            _is_flat(a8, types.uint8) and _is_flat(wq, types.int8) and _is_flat(corr, types.int32)
            and _is_flat(rs, types.float64) and _is_flat(ws, types.float32) and _is_flat(bs, types.float32)
            and _is_flat(dst, types.float32)):
        return None
    ip = types.intp
    return types.void(a8, ip, ip, wq, ip, ip, ip, corr, ip, rs, ip, ws, bs, dst, ip, ip)


@intrinsic
def _microkernel_quads2_dequant_ir(typingctx, a8, a_off, lda, wq, w_off, w_off2, nquads, corr, c_off, rs, rs_off, ws,
                                   bs, dst, d_off, ldd):
    """Two adjacent quad panels (w_off, w_off2) without fixes as one 4 x 32 tile, dequantized as
    _microkernel_quads_dequant_ir: dst[d_off + r*ldd + c] = float32(float64(tile[r, c]) * rs[rs_off + r])
    * ws[c] + bs[c] for c < 32 (ws, bs float32 [32]: the two panels' W scales and biases). vnni512 only."""
    sig = _quads2_typer(a8, wq, corr, rs, ws, bs, dst)
    if sig is None:
        return None

    def codegen(context, builder, signature, args):
        tiles = _two_panel_sums_vnni512(context, builder, signature, args)
        for p in range(2):
            _store_dequant(context, builder, signature, args, tiles[8 * p: 8 * p + 8], 9, 16 * p)
        return context.get_dummy_value()

    return sig, codegen


def _grouped_vnni512_codegen(panels: int):
    """The codegen of _microkernel_grouped_vnni512_ir (panels=1) and its two-panel twin (panels=2:
    panels j and j+1 as a 4 x 32 tile, each row's broadcast shared; ws, bs [32])."""

    def codegen(context, builder, signature, args):
        i8, i32, i64, f64 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.DoubleType()
        v16i32, v16f64 = ir.VectorType(i32, 16), ir.VectorType(f64, 16)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16f64, [v16f64] * 3), "llvm.fma.v16f64")
        arr = lambda k: context.make_array(signature.args[k])(context, builder, args[k])  # noqa: E731
        ptr = lambda k, t: builder.bitcast(arr(k).data, t.as_pointer())  # noqa: E731
        a_tile = builder.gep(ptr(0, i8), [args[1]])
        w_data, woff_p, kqs_p, aoff_p = ptr(3, i8), ptr(4, i64), ptr(6, i64), ptr(7, i64)
        corr_p, sc_p = ptr(8, i32), ptr(10, f64)
        lda_v, j_v, np_v = args[2], args[5], args[9]
        ys = [[cgutils.alloca_once_value(builder, ir.Constant(v16f64, [0.0] * 16)) for _ in range(MR)]
              for _ in range(panels)]
        # one panel: even and odd k-quads on separate accumulators (8 chains); two panels: one per panel
        zaccs = [[cgutils.alloca_once(builder, v16i32) for _ in range(MR)] for _ in range(2)]
        n_groups = cgutils.unpack_tuple(builder, arr(6).shape, 1)[0]  # len(kqs)
        with cgutils.for_range(builder, n_groups) as gl:
            g = gl.index
            kq = builder.load(builder.gep(kqs_p, [g]))
            w_g = builder.add(builder.load(builder.gep(woff_p, [g])), builder.mul(builder.mul(j_v, kq), ir.Constant(i64, 64)))
            w_bases = [builder.gep(w_data, [builder.add(w_g, builder.mul(kq, ir.Constant(i64, 64 * p)))])
                       for p in range(panels)]
            a_g = builder.gep(a_tile, [builder.load(builder.gep(aoff_p, [g]))])
            rows = [builder.gep(a_g, [builder.mul(lda_v, ir.Constant(i64, r))]) for r in range(MR)]
            for par in range(2):
                for r in range(MR):
                    builder.store(ir.Constant(v16i32, None), zaccs[par][r])
            _zmm_quad_loop(builder, rows, w_bases, kq, lambda parity, p, r: zaccs[parity if panels == 1 else p][r])
            sv = _splat(builder, builder.load(builder.gep(sc_p, [g])), 16)
            for p in range(panels):
                c_off = builder.mul(builder.add(builder.add(builder.mul(g, np_v), j_v), ir.Constant(i64, p)),
                                    ir.Constant(i64, NR))
                cv = builder.load(builder.bitcast(builder.gep(corr_p, [c_off]), v16i32.as_pointer()), align=4)
                for r in range(MR):
                    z = builder.load(zaccs[p][r]) if panels == 2 else builder.add(builder.load(zaccs[0][r]),
                                                                                   builder.load(zaccs[1][r]))
                    y = ys[p][r]
                    builder.store(builder.call(fma, [builder.sitofp(builder.sub(z, cv), v16f64), sv, builder.load(y)]), y)
        for p in range(panels):  # ws, bs, dst, d_off, ldd = args[11:16]
            vals = [half for r in range(MR) for half in _halves(builder, builder.load(ys[p][r]))]
            _finish_rows(context, builder, signature, args, vals, 11, NR * p)
        return context.get_dummy_value()

    return codegen


def _grouped_sig(a8, wq, woff, kqs, aoff, corr, scales, ws, bs, dst):
    """The grouped vnni512 kernels' signature, or None (no such kernel off vnni512, or wrong types)."""
    if QUAD_ISA != "vnni512" or not (_is_flat(a8, types.uint8) and _is_flat(wq, types.int8) and _is_flat(corr, types.int32)
            and all(_is_flat(t, types.int64) for t in (woff, kqs, aoff)) and _is_flat(scales, types.float64)
            and _is_flat(ws, types.float32) and _is_flat(bs, types.float32) and _is_flat(dst, types.float32)):
        return None
    ip = types.intp
    return types.void(a8, ip, ip, wq, woff, ip, kqs, aoff, corr, ip, scales, ws, bs, dst, ip, ip)


@intrinsic
def _microkernel_grouped_vnni512_ir(typingctx, a8, a_off, lda, wq, woff, j, kqs, aoff, corr, np_, scales, ws, bs, dst,
                                    d_off, ldd):
    """A whole PEG tile in one call, for quad panels without fixes on vnni512: for each group g in order,
    acc_g = sum over its kqs[g] k-quads of a8[r, aoff[g] + k] * panel j of the group (at woff[g] + j *
    kqs[g] * 64) minus corr[(g * np_ + j) * 16 + c], then y = fma(float64(acc_g), scales[g], y) from y =
    0.0; finally dst[d_off + r*ldd + c] = float32(y) * ws[c] + bs[c]. The same operations in the same
    order as the first / scaled / finish kernels (bit-identical), but the float64 sums stay in
    registers across the groups instead of a [4, 16] float64 tile stored and reloaded per group, and
    one call replaces G (a PEG group of 64 dims is only 16 k-quads). int64 woff, kqs, aoff [G]; float64
    scales [G]; float32 ws, bs [16]."""
    sig = _grouped_sig(a8, wq, woff, kqs, aoff, corr, scales, ws, bs, dst)
    return None if sig is None else (sig, _grouped_vnni512_codegen(1))


@intrinsic
def _microkernel_grouped2_vnni512_ir(typingctx, a8, a_off, lda, wq, woff, j, kqs, aoff, corr, np_, scales, ws, bs, dst,
                                     d_off, ldd):
    """_microkernel_grouped_vnni512_ir over panels j and j+1 as one 4 x 32 tile (ws, bs float32 [32])."""
    sig = _grouped_sig(a8, wq, woff, kqs, aoff, corr, scales, ws, bs, dst)
    return None if sig is None else (sig, _grouped_vnni512_codegen(2))


@intrinsic
def _microkernel_quads2x8_dequant_ir(typingctx, a8, a_off, lda, wq, w_off, w_off2, nquads, corr, c_off, rs, rs_off, ws,
                                     bs, dst, d_off, ldd):
    """_microkernel_quads2_dequant_ir over 8 rows (two row tiles): an 8 x 32 tile in sixteen zmm
    accumulators, each k-quad 10 loads for 16 vpdpbusd (the 4-row kernel: 6 for 8). vnni512 only."""
    sig = _quads2_typer(a8, wq, corr, rs, ws, bs, dst)
    if sig is None:
        return None

    def codegen(context, builder, signature, args):
        tiles = _two_panel_sums_vnni512(context, builder, signature, args, 2 * MR)
        for p in range(2):
            _store_dequant(context, builder, signature, args, tiles[16 * p: 16 * p + 16], 9, 16 * p)
        return context.get_dummy_value()

    return sig, codegen


_NO_FIX = np.zeros(0, dtype=np.int64)


@njit
def microkernel_quads(a8, a_off, lda, wq, w_off, nquads, corr, c_off, fix_c, fix_k, fix_v, f0, f1, out, o_off, ldo):
    """microkernel_u8s7 plus the fixes e in [f0, f1): out[o_off + r*ldo + fix_c[e]] += a8[a_off + r*lda +
    fix_k[e]] * fix_v[e] (fix_* int64 flat), added in the registers before the store."""
    _microkernel_u8s7_ir(a8, a_off, lda, wq, w_off, nquads, corr, c_off, fix_c, fix_k, fix_v, f0, f1, out, o_off, ldo)


@njit
def microkernel_u8s7(a8, a_off, lda, wq, w_off, nquads, corr, c_off, out, o_off, ldo):
    """out[o_off + r*ldo + c] = sum_{k < 4 nquads} a8[a_off + r*lda + k] * w[c, k] - corr[c_off + c] for the
    4 x 16 tile (a8 uint8, wq int8 quad panels whose k-pairs cannot saturate, e.g. weights in [-64, 63];
    corr/out int32). No fixes (the GEMMs call the intrinsic with theirs)."""
    _microkernel_u8s7_ir(a8, a_off, lda, wq, w_off, nquads, corr, c_off, _NO_FIX, _NO_FIX, _NO_FIX, 0, 0, out, o_off, ldo)
