"""Small numba intrinsics for the float kernels (fused.py): scalar bit casts and in-order float64 sums.

Why intrinsics. Without fastmath (npbert._jit) LLVM vectorises neither a float max reduction nor a
float64 sum: both would need reassociation. The kernels therefore fix an order that vectorises by
construction and write it here in IR:
- f32_bits / f32_from_bits: a float32's bit pattern and back. numba has no scalar bit cast; with it
  exp's 2^n scale and an exact max through order-preserving integer keys (an integer max reduction
  vectorises) stay inside one loop.
- fma32: a float32 fused multiply-add (llvm.fma.f32, one rounding). Explicit, never a contraction the
  compiler chooses, so the bits are the same on every CPU; the exp polynomial (fused._exp1) runs on
  it at half the instructions of mul + add. A CPU without FMA units (none with AVX2 that npbert's
  byte kernel targets; x86 before Haswell / Piledriver) gets libm's fmaf per call instead: the same
  results, unvectorised and far slower.
- sum4_f64 / sumsq4_f64: four float64 partial sums, lane j taking elements 4i + j in order of i, as
  one <4 x double> accumulator (vcvtps2pd + vaddpd). This is exactly the order of four scalar chains
  s_j += float64(x[4i + j]), so results are the same bits as that scalar code; LLVM's SLP pass did not
  pack those chains by itself. The squares are fmul then fadd, never contracted to an fma (no
  'contract' flag), so no CPU rounds them differently.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["f32_bits", "f32_from_bits", "fma32", "sum4_f64", "sumsq4_f64"]


@intrinsic
def f32_bits(typingctx, x):
    """float32 -> int32, the same 32 bits."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def f32_from_bits(typingctx, i):
    """integer of 32 bits or more (its low 32 bits) -> float32 with those bits."""
    if not isinstance(i, types.Integer) or i.bitwidth < 32:
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width != 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())
    return types.float32(i), codegen


@intrinsic
def fma32(typingctx, a, b, c):
    """float32 a * b + c rounded once (IEEE fusedMultiplyAdd)."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None

    def codegen(context, builder, sig, args):
        return builder.fma(*args)
    return types.float32(types.float32, types.float32, types.float32), codegen


def _lane_sums(x, n4, square: bool):
    """Typing + IR of sum4_f64 / sumsq4_f64."""
    if not (isinstance(x, types.Array) and x.dtype == types.float32 and x.ndim == 1 and x.layout == "C"
            and isinstance(n4, types.Integer)):
        return None
    rt = types.UniTuple(types.float64, 4)

    def codegen(context, builder, sig, args):
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        v4f, v4d = ir.VectorType(ir.FloatType(), 4), ir.VectorType(ir.DoubleType(), 4)
        acc = cgutils.alloca_once_value(builder, ir.Constant(v4d, None))  # +0.0 x 4, as s_j = 0.0
        base = builder.bitcast(arr.data, v4f.as_pointer())
        with cgutils.for_range(builder, args[1]) as loop:
            d = builder.fpext(builder.load(builder.gep(base, [loop.index]), align=4), v4d)
            builder.store(builder.fadd(builder.load(acc), builder.fmul(d, d) if square else d), acc)
        a = builder.load(acc)
        lanes = [builder.extract_element(a, ir.Constant(ir.IntType(32), j)) for j in range(4)]
        return context.make_tuple(builder, rt, lanes)
    return rt(x, n4), codegen


@intrinsic
def sum4_f64(typingctx, x, n4):
    """(s0, s1, s2, s3), s_j = sum over i < n4 of float64(x[4i + j]) added in order of i.
    x: C-contiguous float32 [>= 4 n4]."""
    return _lane_sums(x, n4, square=False)


@intrinsic
def sumsq4_f64(typingctx, x, n4):
    """(s0, s1, s2, s3), s_j = sum over i < n4 of float64(x[4i + j])^2 added in order of i."""
    return _lane_sums(x, n4, square=True)
