"""What PEG's per-group accumulation costs: gemm_grouped with G equal groups against gemm_u8s8 (one
group, int32 result) on one shape, in one process, kernels sampled in rotation.

    flock /tmp/npbert-heavy.lock python bench/bench_grouped.py [--m 1024 --k 384 --n 1536] [--threads 2]

Default shape: all-MiniLM-L6-v2's FF1 at batch 8 x 128 tokens. gemm_grouped includes the float
finish (group scales, W scale, bias) that gemm_u8s8 leaves to the epilogue pass. The weight is a
per-tensor 8-bit code of a Gaussian (max |w| -> 127, like a BERT weight), timed in both layouts:
pair panels (int16 vpmaddwd kernel) and, on AVX2, quad panels (vpmaddubsw; the few k-pairs that
could saturate split off as fixes, kernels/gemm.py split_saturating_pairs). Prints ms (median) per
kernel; writes bench/results/grouped.json.
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
from npbert.kernels.gemm import gemm_grouped, gemm_u8s8, pack_int8_weight  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int, default=1024)
    ap.add_argument("--k", type=int, default=384)
    ap.add_argument("--n", type=int, default=1536)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--out", default=str(_util.RESULTS / "grouped.json"))
    a = ap.parse_args()
    threads = set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (a.m, a.k), dtype=np.uint8)
    g = rng.standard_normal((a.n, a.k))
    w = np.round(g / np.abs(g).max() * 127).astype(np.int8)
    packs = {"pairs": pack_int8_weight(w, "pairs")}
    if HAVE_U8S7:
        packs["quads"] = pack_int8_weight(w, "quads")
        print(f"quad panels: {packs['quads'].fixes[3].size} fixes ({packs['quads'].fixes[3].size / w.size:.1e} of the weights)")
    ws = rng.uniform(1e-3, 1e-2, a.n).astype(np.float32)
    bias = rng.standard_normal(a.n).astype(np.float32)
    acc = np.empty((a.m, a.n), np.int32)
    out = np.empty((a.m, a.n), np.float32)
    fns = {}
    for lay, pw in packs.items():
        assert np.array_equal(gemm_u8s8(x, 100, pw, out=acc), R.gemm_u8s8_ref(x, 100, w))
        fns[f"gemm_u8s8 (int32 out) {lay}"] = lambda pw=pw: gemm_u8s8(x, 100, pw, out=acc)
    for G in (1, 2, 3, 6, 12):
        b = np.linspace(0, a.k, G + 1).astype(np.int64)
        zps = np.full(G, 100, np.int32)
        sc = rng.uniform(1e-3, 1e-2, G).astype(np.float32)
        ref = R.gemm_grouped_ref(x, b, zps, sc, w) * ws + bias
        for lay, pw in packs.items():
            y = gemm_grouped(x, b, zps, sc, pw, ws, bias, out=out)
            assert np.array_equal(y.view(np.int32), ref.view(np.int32)), (G, lay)  # checked before timing
            fns[f"gemm_grouped G={G} {lay}"] = (lambda b=b, zps=zps, sc=sc, pw=pw: gemm_grouped(x, b, zps, sc, pw, ws, bias, out=out))
    timings = _util.time_round_robin(fns, repeats=a.repeats)
    rows = [{"kernel": k, "ms": t["median_s"] * 1e3, **t} for k, t in timings.items()]
    for r in rows:
        print(f"{r['kernel']:<30} {r['ms']:7.2f} ms")
    _util.write_json(a.out, {"command": " ".join(["python", *sys.argv]), "machine": _util.machine_info(),
                             "threads": threads, "shape": {"M": a.m, "K": a.k, "N": a.n}, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
