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
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

MR, NR = 4, 16  # the tile of npbert's micro-kernel
K_PAIRS = 128  # 4 x 256 activations + 256 x 16 weights: L1-resident
VARIANTS = {  # name -> (activations pre-replicated, weights stored as int16)
    "broadcast + sign-extend (npbert)": (False, False),
    "broadcast + int16 weights": (False, True),
    "replicated + sign-extend": (True, False),
    "replicated + int16 weights": (True, True),
}


def make_kernel(a_replicated: bool, w_int16: bool):
    """A 4 x 16 tile kernel, out += A W^T over npairs k-pairs, looped `reps` times (njit)."""

    @intrinsic
    def tile(typingctx, a, lda, wp, npairs, out):
        sig = types.void(a, types.intp, wp, types.intp, out)

        def codegen(context, builder, signature, args):
            a_arr = context.make_array(signature.args[0])(context, builder, args[0])
            w_arr = context.make_array(signature.args[2])(context, builder, args[2])
            lda_v, npairs_v = args[1], args[3]
            i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
            wt = i16 if w_int16 else ir.IntType(8)
            v16i16, v16i32, v8i32 = ir.VectorType(i16, 16), ir.VectorType(i32, 16), ir.VectorType(i32, 8)
            v16w = ir.VectorType(wt, 16)
            even, odd = ir.Constant(v8i32, list(range(0, 16, 2))), ir.Constant(v8i32, list(range(1, 16, 2)))
            splat0, undef8 = ir.Constant(v8i32, [0] * 8), ir.Constant(v8i32, ir.Undefined)
            a_base = builder.bitcast(a_arr.data, i16.as_pointer())
            w_base = builder.bitcast(w_arr.data, wt.as_pointer())
            rows = [builder.gep(a_base, [builder.mul(lda_v, ir.Constant(i64, r))]) for r in range(MR)]
            accs = [cgutils.alloca_once_value(builder, ir.Constant(v8i32, None)) for _ in range(2 * MR)]
            with cgutils.for_range(builder, npairs_v) as loop:
                p = loop.index
                wp_p = builder.gep(w_base, [builder.mul(p, ir.Constant(i64, 2 * NR))])
                w_lo = builder.load(builder.bitcast(wp_p, v16w.as_pointer()), align=1)
                w_hi = builder.load(builder.bitcast(builder.gep(wp_p, [ir.Constant(i64, NR)]), v16w.as_pointer()), align=1)
                w32 = (builder.sext(w_lo, v16i32), builder.sext(w_hi, v16i32))
                for r in range(MR):
                    if a_replicated:  # row r holds each k-pair eight times: 16 int16 per pair, a plain load
                        src = builder.gep(rows[r], [builder.mul(p, ir.Constant(i64, 16))])
                        b16 = builder.load(builder.bitcast(src, v16i16.as_pointer()), align=2)
                    else:  # npbert: one 32-bit broadcast of the pair
                        src = builder.gep(rows[r], [builder.shl(p, ir.Constant(i64, 1))])
                        pair = builder.load(builder.bitcast(src, i32.as_pointer()), align=2)
                        b = builder.shuffle_vector(builder.insert_element(undef8, pair, ir.Constant(i32, 0)), undef8, splat0)
                        b16 = builder.bitcast(b, v16i16)
                    b32 = builder.sext(b16, v16i32)
                    for h in range(2):  # sext * sext, even + odd lanes: the vpmaddwd pattern
                        prod = builder.mul(b32, w32[h])
                        s = builder.add(builder.shuffle_vector(prod, prod, even), builder.shuffle_vector(prod, prod, odd))
                        acc = accs[2 * r + h]
                        builder.store(builder.add(builder.load(acc), s), acc)
            o_base = builder.bitcast(context.make_array(signature.args[4])(context, builder, args[4]).data, v8i32.as_pointer())
            for i in range(2 * MR):
                dst = builder.gep(o_base, [ir.Constant(i64, i)])
                builder.store(builder.add(builder.load(dst, align=4), builder.load(accs[i])), dst, align=4)
            return context.get_dummy_value()

        return sig, codegen

    @njit
    def run(a, lda, wp, npairs, out, reps):
        for _ in range(reps):
            tile(a, lda, wp, npairs, out)

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(_util.RESULTS / "mk_variants.json"))
    ap.add_argument("--reps", type=int, default=20000)
    cli = ap.parse_args()
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (MR, 2 * K_PAIRS)).astype(np.int16)  # [4, K] widened activations
    a_rep = np.repeat(a.reshape(MR, K_PAIRS, 1, 2), 8, axis=2).reshape(MR, K_PAIRS * 16).copy()  # [4, kp * 16]
    w8 = rng.integers(-128, 128, K_PAIRS * 2 * NR).astype(np.int8)  # one pair panel [kp, 32]
    want = a.astype(np.int64) @ w8.reshape(K_PAIRS, NR, 2).transpose(1, 0, 2).reshape(NR, 2 * K_PAIRS).astype(np.int64).T
    rows = []
    for name, (rep, wide) in VARIANTS.items():
        run = make_kernel(rep, wide)
        A, W = (a_rep if rep else a), (w8.astype(np.int16) if wide else w8)
        out = np.zeros(MR * NR, np.int32)
        run(A.reshape(-1), A.shape[1], W, K_PAIRS, out, 1)
        if not np.array_equal(out.reshape(MR, NR), want):  # checked before timing
            raise RuntimeError(f"{name}: the tile differs from the int64 product")
        run(A.reshape(-1), A.shape[1], W, K_PAIRS, out, 10)
        best = float("inf")
        for _ in range(7):
            t0 = time.perf_counter()
            run(A.reshape(-1), A.shape[1], W, K_PAIRS, out, cli.reps)
            best = min(best, time.perf_counter() - t0)
        gops = 2 * MR * NR * 2 * K_PAIRS * cli.reps / best / 1e9
        print(f"{name:34s} {gops:6.1f} GOP/s, one thread")
        rows.append({"variant": name, "gop_s": gops, "activations": "replicated" if rep else "broadcast",
                     "weights": "int16" if wide else "int8, sign-extended"})
    _util.write_json(cli.out, {"command": " ".join(["python", *sys.argv]), "machine": _util.machine_info(), "threads": 1,
                               "k_pairs": K_PAIRS, "tile": [MR, NR], "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
