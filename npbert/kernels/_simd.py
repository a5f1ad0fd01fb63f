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

from llvmlite import ir  # noqa: E402
from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402


def _is_flat(t, dtype) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.dtype == dtype


def _splat8(builder, x):
    """<8 x T> of copies of the scalar x."""
    i32 = ir.IntType(32)
    undef = ir.Constant(ir.VectorType(x.type, 8), ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(i32, 0)), undef,
                                  ir.Constant(ir.VectorType(i32, 8), [0] * 8))


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
        y_arr = context.make_array(signature.args[6])(context, builder, args[6])
        f64 = ir.DoubleType()
        v8f64 = ir.VectorType(f64, 8)
        sv = _splat8(builder, args[7])
        y_base = builder.bitcast(y_arr.data, f64.as_pointer())
        for i, acc in enumerate(accs):  # acc 2r + h holds tile[r, 8h:8h+8] = yt[16r + 8h : ...] = yt[8i : 8i + 8]
            dst = builder.bitcast(builder.gep(y_base, [ir.Constant(ir.IntType(64), 8 * i)]), v8f64.as_pointer())
            prod = builder.fmul(builder.sitofp(acc, v8f64), sv)
            builder.store(builder.fadd(builder.load(dst, align=8), prod), dst, align=8)
        return context.get_dummy_value()

    return sig, codegen


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
        arr = lambda k: context.make_array(signature.args[k])(context, builder, args[k])  # noqa: E731
        f32, f64, i32, i64 = ir.FloatType(), ir.DoubleType(), ir.IntType(32), ir.IntType(64)
        v8f64, v8f32 = ir.VectorType(f64, 8), ir.VectorType(f32, 8)
        sv = _splat8(builder, args[7])
        y_base = builder.bitcast(arr(6).data, f64.as_pointer())
        ws_base = builder.bitcast(arr(8).data, f32.as_pointer())
        bs_base = builder.bitcast(arr(9).data, f32.as_pointer())
        d_base = builder.gep(builder.bitcast(arr(10).data, f32.as_pointer()), [args[11]])
        vec = lambda base, k, t: builder.bitcast(builder.gep(base, [ir.Constant(i64, k)]), t.as_pointer())  # noqa: E731
        wsv = [builder.load(vec(ws_base, 8 * h, v8f32), align=4) for h in range(2)]
        bsv = [builder.load(vec(bs_base, 8 * h, v8f32), align=4) for h in range(2)]
        for i, acc in enumerate(accs):
            r, h = divmod(i, 2)
            v = builder.fadd(builder.load(vec(y_base, 8 * i, v8f64), align=8), builder.fmul(builder.sitofp(acc, v8f64), sv))
            f = builder.fadd(builder.fmul(builder.fptrunc(v, v8f32), wsv[h]), bsv[h])
            row = builder.gep(d_base, [builder.mul(args[12], ir.Constant(i64, r))])
            builder.store(f, builder.bitcast(builder.gep(row, [ir.Constant(i64, 8 * h)]), v8f32.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit
def microkernel_scaled(a16, a_off, lda, wp, w_off, npairs, yt, s):
    """yt[r*16 + c] += s * float64(tile[r, c]), tile = microkernel's 4 x 16 result (yt float64 flat [64])."""
    _microkernel_scaled_ir(a16, a_off, lda, wp, w_off, npairs, yt, s)


@njit
def microkernel_finish(a16, a_off, lda, wp, w_off, npairs, yt, s, ws, bs, dst, d_off, ldd):
    """dst[d_off + r*ldd + c] = float32(yt[r*16 + c] + s * float64(tile[r, c])) * ws[c] + bs[c]."""
    _microkernel_finish_ir(a16, a_off, lda, wp, w_off, npairs, yt, s, ws, bs, dst, d_off, ldd)


microkernel = microkernel_ir  # the one gemm.py uses; microkernel_numba stays as its tested twin


# --------------------------------------------------------------- the uint8 x int7 micro-kernel (vpmaddubsw)
#
# Quad panels: wq[j, q, c, t] = w[16j + c, 4q + t] (int8, 64 bytes per k-quad, zero padded). Per k-quad q
# and row r: b = splat<8 x i32>(a8[r, 4q:4q+4]) as <32 x i8>; for each half h (columns 8h..8h+7)
#     s16 = pmaddubsw(b, wq[q, 8h:8h+8, :])   (uint8 x int8 -> int16 pair sums, SATURATING)
#     acc[r, h] += pmaddwd(s16, 1)             (adjacent int16 pairs -> int32: the 4-term dot product)
# and at the end out = acc - corr (corr[n] = zp * sum_k w[n, k]: the zero-point correction).
# Exact only because no pair sum saturates: |a0 w0 + a1 w1| <= 2 * 255 * 64 = 32640 <= 32767 needs
# w in [-64, 63] (7-bit weights); PackedInt8Weight chooses quad panels only for such weights. The
# instruction has no portable IR pattern, so this kernel calls the x86 AVX2 intrinsics and exists only
# where numba's target has AVX2 (HAVE_U8S7).

def _target_has_avx2() -> bool:
    """Whether numba compiles for a CPU with AVX2: the host's features, unless NUMBA_CPU_NAME /
    NUMBA_CPU_FEATURES pin another target (portable caches set 'generic'), which then must name
    +avx2 itself. Asking the host alone would let LLVM abort on the intrinsic for a generic target."""
    from numba.core import config

    feats = (config.CPU_FEATURES or "").split(",")
    if "-avx2" in feats:
        return False
    if config.CPU_NAME not in (None, "host") or config.CPU_FEATURES:
        return "+avx2" in feats
    try:
        from llvmlite import binding as llvm_binding

        return bool(llvm_binding.get_host_cpu_features().get("avx2", False))
    except Exception:  # pragma: no cover - feature query unavailable: stay on the portable kernel
        return False


HAVE_U8S7 = _target_has_avx2()


@njit
def microkernel_u8s7_numba(a8, a_off, lda, wq, w_off, nquads, corr, c_off, out, o_off, ldo):
    """Plain-Numba twin of the u8 x s7 kernel (exact int arithmetic, no saturation modelled: the
    callers' operands never saturate)."""
    for r in range(MR):
        for c in range(NR):
            s = np.int32(0)
            for q in range(nquads):
                for t in range(4):
                    s += np.int32(a8[a_off + r * lda + 4 * q + t]) * np.int32(wq[w_off + 64 * q + 4 * c + t])
            out[o_off + r * ldo + c] = s - corr[c_off + c]


@intrinsic
def _microkernel_u8s7_ir(typingctx, a8, a_off, lda, wq, w_off, nquads, corr, c_off, out, o_off, ldo):
    if not (_is_flat(a8, types.uint8) and _is_flat(wq, types.int8) and _is_flat(corr, types.int32)
            and _is_flat(out, types.int32)):
        return None
    sig = types.void(a8, types.intp, types.intp, wq, types.intp, types.intp, corr, types.intp, out, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        mod = builder.module
        i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
        v32i8, v16i16, v8i32 = ir.VectorType(i8, 32), ir.VectorType(i16, 16), ir.VectorType(i32, 8)
        pmaddubsw = cgutils.get_or_insert_function(mod, ir.FunctionType(v16i16, [v32i8, v32i8]), "llvm.x86.avx2.pmadd.ub.sw")
        pmaddwd = cgutils.get_or_insert_function(mod, ir.FunctionType(v8i32, [v16i16, v16i16]), "llvm.x86.avx2.pmadd.wd")
        arr = lambda k: context.make_array(signature.args[k])(context, builder, args[k])  # noqa: E731
        a_off_v, lda_v, w_off_v, nq_v = args[1], args[2], args[4], args[5]
        a_base = builder.gep(builder.bitcast(arr(0).data, i8.as_pointer()), [a_off_v])
        w_base = builder.gep(builder.bitcast(arr(3).data, i8.as_pointer()), [w_off_v])
        rows = [builder.gep(a_base, [builder.mul(lda_v, ir.Constant(i64, r))]) for r in range(MR)]
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v8i32, None)) for _ in range(2 * MR)]
        ones = ir.Constant(v16i16, [1] * 16)
        with cgutils.for_range(builder, nq_v) as loop:
            q = loop.index
            wq_q = builder.gep(w_base, [builder.mul(q, ir.Constant(i64, 64))])
            wv = [builder.load(builder.bitcast(builder.gep(wq_q, [ir.Constant(i64, 32 * h)]), v32i8.as_pointer()), align=1)
                  for h in range(2)]
            q4 = builder.shl(q, ir.Constant(i64, 2))
            for r in range(MR):
                quad = builder.load(builder.bitcast(builder.gep(rows[r], [q4]), i32.as_pointer()), align=1)
                b8 = builder.bitcast(_splat8(builder, quad), v32i8)
                for h in range(2):
                    s32 = builder.call(pmaddwd, [builder.call(pmaddubsw, [b8, wv[h]]), ones])
                    acc = accs[2 * r + h]
                    builder.store(builder.add(builder.load(acc), s32), acc)
        c_base = builder.gep(builder.bitcast(arr(6).data, i32.as_pointer()), [args[7]])
        cv = [builder.load(builder.bitcast(builder.gep(c_base, [ir.Constant(i64, 8 * h)]), v8i32.as_pointer()), align=4)
              for h in range(2)]
        o_base = builder.gep(builder.bitcast(arr(8).data, i32.as_pointer()), [args[9]])
        for r in range(MR):
            o_row = builder.gep(o_base, [builder.mul(args[10], ir.Constant(i64, r))])
            for h in range(2):
                dst = builder.bitcast(builder.gep(o_row, [ir.Constant(i64, 8 * h)]), v8i32.as_pointer())
                builder.store(builder.sub(builder.load(accs[2 * r + h]), cv[h]), dst, align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit
def microkernel_u8s7(a8, a_off, lda, wq, w_off, nquads, corr, c_off, out, o_off, ldo):
    """out[o_off + r*ldo + c] = sum_{k < 4 nquads} a8[a_off + r*lda + k] * w[c, k] - corr[c_off + c] for the
    4 x 16 tile (a8 uint8, wq int8 quad panels of weights in [-64, 63], corr/out int32)."""
    _microkernel_u8s7_ir(a8, a_off, lda, wq, w_off, nquads, corr, c_off, out, o_off, ldo)
