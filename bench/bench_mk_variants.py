"""What bounds the exact int16 micro-kernel: its operand delivery, or its multiply-adds?

    flock /tmp/npbert-heavy.lock python bench/bench_mk_variants.py [--out bench/results/mk_variants.json]

npbert's s8s8 / u8s8 micro-kernel (npbert/kernels/_simd.py) issues, per k-pair of a 4 x 16 tile, two
sign-extending weight loads (vpmovsxbw), four 32-bit activation broadcasts (vpbroadcastd), eight
vpmaddwd and eight vpaddd. Two of those four kinds could be removed by storing the operands
differently: int16 weights (plain loads; twice the bytes) and activations pre-replicated eight times
(plain loads instead of broadcasts; 8x the bytes). This script builds the four combinations as
numba intrinsics (the same IR pattern as _simd._pair_loop, otherwise unchanged), checks they agree,
and times each on L1-resident operands (128 k-pairs, one thread, best of 7). If all four run at the
same speed, the multiply-add pair is the bound and no operand layout can lift it.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402
import time, numpy as np, numba
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from llvmlite import ir
NR=16; MR=4
def make(a_rep, w16):
    @intrinsic
    def mk(typingctx, a, a_off, lda, wp, w_off, npairs, out):
        sig = types.void(a, types.intp, types.intp, wp, types.intp, types.intp, out)
        def codegen(context, builder, signature, args):
            a_arr = context.make_array(signature.args[0])(context, builder, args[0])
            w_arr = context.make_array(signature.args[3])(context, builder, args[3])
            a_off_v, lda_v, w_off_v, npairs_v = args[1], args[2], args[4], args[5]
            i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
            wt = i16 if w16 else ir.IntType(8)
            v16i16, v16i32, v8i32 = ir.VectorType(i16, 16), ir.VectorType(i32, 16), ir.VectorType(i32, 8)
            v16w = ir.VectorType(wt, 16)
            even = ir.Constant(v8i32, list(range(0, 16, 2))); odd = ir.Constant(v8i32, list(range(1, 16, 2)))
            splat0 = ir.Constant(v8i32, [0] * 8); undef8 = ir.Constant(v8i32, ir.Undefined)
            a_base = builder.gep(builder.bitcast(a_arr.data, i16.as_pointer()), [a_off_v])
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
                    if a_rep:  # A row r holds each pair replicated 8 times: 16 int16 per pair
                        bp = builder.gep(rows[r], [builder.mul(p, ir.Constant(i64, 16))])
                        b16 = builder.load(builder.bitcast(bp, v16i16.as_pointer()), align=2)
                    else:
                        pair = builder.load(builder.bitcast(builder.gep(rows[r], [builder.shl(p, ir.Constant(i64, 1))]), i32.as_pointer()), align=2)
                        b = builder.shuffle_vector(builder.insert_element(undef8, pair, ir.Constant(i32, 0)), undef8, splat0)
                        b16 = builder.bitcast(b, v16i16)
                    b32 = builder.sext(b16, v16i32)
                    for h in range(2):
                        prod = builder.mul(b32, w32[h])
                        s = builder.add(builder.shuffle_vector(prod, prod, even), builder.shuffle_vector(prod, prod, odd))
                        acc = accs[2 * r + h]
                        builder.store(builder.add(builder.load(acc), s), acc)
            o_arr = context.make_array(signature.args[6])(context, builder, args[6])
            o_base = builder.bitcast(o_arr.data, v8i32.as_pointer())
            for i in range(2*MR):
                dst = builder.gep(o_base, [ir.Constant(i64, i)])
                builder.store(builder.add(builder.load(dst, align=4), builder.load(accs[i])), dst, align=4)
            return context.get_dummy_value()
        return sig, codegen
    @njit
    def loop(a, lda, wp, kp, out, reps):
        for _ in range(reps):
            mk(a, 0, lda, wp, 0, kp, out)
    return loop
ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--out", default=str(_util.RESULTS / "mk_variants.json"))
cli = ap.parse_args()
numba.set_num_threads(1)
rng=np.random.default_rng(0)
kp=128
rows=[]
a8 = rng.integers(-128,128,(MR,2*kp)).astype(np.int16)
arep = np.repeat(a8.reshape(MR,kp,1,2),8,axis=2).reshape(MR,kp*16).copy()  # [MR, kp*16]
w8 = rng.integers(-128,128,(kp*2*NR,)).astype(np.int8); w16=w8.astype(np.int16)
ref=None
for name,(rep,wide) in {"broadcast + sign-extend (npbert)":(False,False),"broadcast + int16 weights":(False,True),"replicated + sign-extend":(True,False),"replicated + int16 weights":(True,True)}.items():
    f=make(rep,wide); A = arep if rep else a8; W = w16 if wide else w8
    out=np.zeros(64,np.int32); f(A.reshape(-1),A.shape[1],W,kp,out,1)
    ref = out.copy() if ref is None else ref; assert (out==ref).all(), name
    reps=20000; f(A.reshape(-1),A.shape[1],W,kp,out,10)
    ts=[]
    for _ in range(7):
        t0=time.perf_counter(); f(A.reshape(-1),A.shape[1],W,kp,out,reps); ts.append(time.perf_counter()-t0)
    tt=min(ts); gops=2*MR*NR*2*kp*reps/tt/1e9
    print(f"{name:34s} {gops:6.1f} GOP/s single thread")
    rows.append({"variant": name, "gop_s": gops, "activations": "replicated" if rep else "broadcast",
                 "weights": "int16" if wide else "int8 sign-extended"})
_util.write_json(cli.out, {"command": " ".join(["python", *sys.argv]), "machine": _util.machine_info(), "threads": 1,
                           "k_pairs": kp, "tile": [MR, NR], "results": rows})
