"""What the quad panels' sparse fixes cost: 8-bit weights in pair panels (int16 vpmaddwd kernel) against
the same weights in quad panels (uint8 x int8 vpmaddubsw kernel, the k-pairs that could saturate split
off as fixes added in the micro-kernel's registers), at the fix density real weights have and at
denser ones, on BERT-base shapes.

    flock /tmp/npbert-heavy.lock python bench/bench_quad_fixes.py [--threads 2] [--repeats 9]

Weights: per-tensor symmetric 8-bit codes of a Gaussian (max |w| -> 127), as a BERT weight under
`dynamic`; then the same codes times 1.5, 2 and 3 (clipped to [-127, 127]), which push more pairs
past the int16 bound: fix densities from about 1e-4 to 1e-1 of the weights. Per shape it also
prints the break-even density, interpolated linearly in the density between the two measured
points around it (the fix work is linear in the number of fixes). Every layout's output is
checked against the int64 reference before it is timed; the layouts of one shape are sampled in
rotation (bench/_util.py: time_round_robin). Prints the median ms per GEMM and pairs / quads (above
1: quads faster); writes bench/results/quad_fixes.json. PackedInt8Weight's `auto` layout picks quads
up to QUAD_FIX_MAX fixes per weight (kernels/gemm.py): the density where this table's ratio falls
to 1 is the break-even that bound is set below.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _util  # noqa: E402

THREADS = _util.threads_from_argv(2)
_util.set_threads_env(THREADS)

import argparse  # noqa: E402

import numpy as np  # noqa: E402

from npbert._jit import set_num_threads  # noqa: E402
from npbert.kernels import reference as R  # noqa: E402
from npbert.kernels._simd import HAVE_U8S7  # noqa: E402
from npbert.kernels.gemm import QUAD_FIX_MAX, gemm_s8s8, pack_int8_weight  # noqa: E402

SHAPES = ((128, 768, 768), (128, 3072, 768), (1024, 768, 768), (1024, 3072, 768), (1024, 768, 3072))  # M, N, K
GAINS = (1, 1.5, 2, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default=str(_util.RESULTS / "quad_fixes.json"))
    a = ap.parse_args()
    if not HAVE_U8S7:
        print("no AVX2: quad panels are not available on this CPU")
        return 1
    threads = set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    rows = []
    print(f"threads={threads}; auto picks quads up to {QUAD_FIX_MAX:.1e} fixes per weight")
    print(f"{'M':>5} {'N':>5} {'K':>5} {'gain':>4} {'fixes/weight':>12} {'pairs ms':>9} {'quads ms':>9} {'pairs/quads':>11}")
    for M, N, K in SHAPES:
        g = rng.standard_normal((N, K))
        base = np.round(g / np.abs(g).max() * 127)
        a8 = rng.integers(-127, 128, (M, K), dtype=np.int8)
        out = np.empty((M, N), np.int32)
        for gain in GAINS:
            w = np.clip(np.round(base * gain), -127, 127).astype(np.int8)
            pp, pq = pack_int8_weight(w, "pairs"), pack_int8_weight(w, "quads")
            ref = R.gemm_s8s8_ref(a8, w)
            for pw in (pp, pq):
                assert np.array_equal(gemm_s8s8(a8, pw), ref), (M, N, K, gain, pw.layout)  # before timing
            t = _util.time_round_robin({"pairs": lambda: gemm_s8s8(a8, pp, out=out),
                                        "quads": lambda: gemm_s8s8(a8, pq, out=out)}, repeats=a.repeats)
            density = pq.fixes[3].size / w.size
            ms = {k: v["median_s"] * 1e3 for k, v in t.items()}
            rows.append({"M": M, "N": N, "K": K, "gain": gain, "fixes": int(pq.fixes[3].size), "fix_density": density,
                         "pairs_ms": ms["pairs"], "quads_ms": ms["quads"], "pairs_over_quads": ms["pairs"] / ms["quads"],
                         "auto_layout": pack_int8_weight(w).layout, "timings": t})
            print(f"{M:>5} {N:>5} {K:>5} {gain:>4.1f} {density:>12.1e} {ms['pairs']:>9.2f} {ms['quads']:>9.2f} "
                  f"{ms['pairs'] / ms['quads']:>11.2f}", flush=True)
    breakeven = {}
    for M, N, K in SHAPES:
        pts = sorted((r["fix_density"], r["quads_ms"] - r["pairs_ms"]) for r in rows if (r["M"], r["N"], r["K"]) == (M, N, K))
        for (d0, e0), (d1, e1) in zip(pts, pts[1:]):
            if e0 < 0 <= e1:
                breakeven[f"{M}x{N}x{K}"] = d0 + (d1 - d0) * (-e0) / (e1 - e0)
                break
    print("break-even fixes per weight (quads as fast as pairs): "
          + ", ".join(f"{k} {v:.1e}" for k, v in breakeven.items()))
    _util.write_json(a.out, {"breakeven_fix_density": breakeven, "command": " ".join(["python", *sys.argv]), "machine": _util.machine_info(),
                             "git": _util.git_state(), "threads": threads, "quad_fix_max": QUAD_FIX_MAX, "results": rows})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
