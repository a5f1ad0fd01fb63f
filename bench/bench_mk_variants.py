"""What bounds the exact int16 micro-kernel: its operand delivery, or its multiply-adds?

    flock /tmp/npbert-heavy.lock python bench/bench_mk_variants.py [--out bench/results/mk_variants.json]

npbert's s8s8 / u8s8 micro-kernel (npbert/kernels/_simd.py) issues, per k-pair of a 4 x 16 tile, two
sign-extending weight loads (vpmovsxbw), four 32-bit activation broadcasts (vpbroadcastd), eight
vpmaddwd and eight vpaddd. Two of those four kinds could be removed by storing the operands
differently: int16 weights (plain loads; twice the bytes) and activations pre-replicated eight times
(plain loads instead of broadcasts; 8x the bytes). This script builds the four combinations from
npbert's own k-pair loop (_simd._pair_loop: the weight dtype picks the load, its load_pair hook the
activation operand), checks each against int64, and times it on L1-resident operands (128 k-pairs,
one thread, best of 7). If all four run at the same speed, the multiply-add pair is the bound and
no operand layout can lift it.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _util  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from npbert.kernels._simd import MR, NR, _broadcast_pair, _pair_loop  # noqa: E402

K_PAIRS = 128  # 4 x 256 activations + 256 x 16 weights: L1-resident
VARIANTS = {  # name -> (activations pre-replicated, weights stored as int16)
    "broadcast + sign-extend (npbert)": (False, False),
    "broadcast + int16 weights": (False, True),
    "replicated + sign-extend": (True, False),
    "replicated + int16 weights": (True, True),
}


def _replicated_pair(builder, row, p):
    """The row holds each k-pair eight times (16 int16 per pair): a plain <16 x i16> load."""
    src = builder.gep(row, [builder.mul(p, ir.Constant(ir.IntType(64), 16))])
    return builder.load(builder.bitcast(src, ir.VectorType(ir.IntType(16), 16).as_pointer()), align=2)


def make_kernel(a_replicated: bool):
    """run(a, lda, wp, npairs, out, reps): out += the 4 x 16 tile A W^T, `reps` times (njit); the
    weight panel's dtype (int8 or int16) selects its load inside _pair_loop."""
    load_pair = _replicated_pair if a_replicated else _broadcast_pair

    @intrinsic
    def tile(typingctx, a, a_off, lda, wp, w_off, npairs, out):
        sig = types.void(a, types.intp, types.intp, wp, types.intp, types.intp, out)

        def codegen(context, builder, signature, args):
            accs = _pair_loop(context, builder, signature, args, load_pair)
            v8i32 = ir.VectorType(ir.IntType(32), 8)
            o_base = builder.bitcast(context.make_array(signature.args[6])(context, builder, args[6]).data, v8i32.as_pointer())
            for i, acc in enumerate(accs):
                dst = builder.gep(o_base, [ir.Constant(ir.IntType(64), i)])
                builder.store(builder.add(builder.load(dst, align=4), acc), dst, align=4)
            return context.get_dummy_value()

        return sig, codegen

    @njit
    def run(a, lda, wp, npairs, out, reps):
        for _ in range(reps):
            tile(a, 0, lda, wp, 0, npairs, out)

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
        run = make_kernel(rep)
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
