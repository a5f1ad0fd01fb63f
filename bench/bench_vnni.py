"""What the vnni512 kernels buy, each against the path it replaced, in one process.

    flock /tmp/npbert-heavy.lock python bench/bench_vnni.py [--threads 2] [--reps 60] [--out results/vnni.json]

Needs a CPU where kernels/_simd.QUAD_ISA is "vnni512" (AVX512-VNNI). Every variant is a compiled
core of npbert/kernels/gemm.py or _simd.py that still exists beside its successor; their outputs are
compared bit for bit before anything is timed. Sections (medians; variants alternate in rounds whose
order flips, so they share the machine's noise):

- microkernel: one thread, L1-resident operands (K = 384, 96 k-quads): a 4 x 32 output block as two
  one-panel dequantizing tiles (_microkernel_quads_dequant_ir), one two-panel tile (..._quads2_...) and,
  per 8 rows, one 8 x 32 tile (..._quads2x8_...): GOP/s per thread, the kernels' own bound.
- dequant: the dequantizing GEMM panel by panel (_dequant_panels) against panel pairs in 8 x 32 and
  4 x 32 tiles (_dequant_panel_pairs) on all-MiniLM-L6-v2 and BERT-base shapes.
- weights: the same BERT-base FF1 GEMM at batch 1 on one weight called twice (warm) against 24
  weights cycled (58 MB, as a forward streams them).
- grouped: PEG's grouped GEMM (G = 6) group by group (_grouped_quads_panels) against all groups in one
  call with the sums in registers, two panels a tile (_grouped_vnni512_panels).
- bgemm: attention's Q K^T and P V through int16 pairs (_bgemm_pairs_core) against quad panels packed
  per call (_bgemm_quads_core).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _util  # noqa: E402

THREADS = _util.threads_from_argv(2)
_util.set_threads_env(THREADS)

import argparse  # noqa: E402
import statistics  # noqa: E402

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from npbert._jit import set_num_threads  # noqa: E402
from npbert.kernels import _simd as S  # noqa: E402
from npbert.kernels import gemm as G  # noqa: E402

MINILM = [(1024, 1152, 384), (1024, 1536, 384), (1024, 384, 1536), (128, 1536, 384), (128, 384, 1536)]
BERT_BASE = [(128, 2304, 768), (128, 3072, 768), (128, 768, 3072), (1024, 3072, 768)]


def _alternate(variants: dict, reps: int) -> dict[str, float]:
    """Median seconds per call of each no-argument callable, in rounds whose order flips."""
    for f in variants.values():
        f()
    times = {k: [] for k in variants}
    order = list(variants.items())
    for rep in range(reps):
        for k, f in (order if rep % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _same(outs: list[np.ndarray]) -> bool:
    return all(np.array_equal(o.view(np.int32), outs[0].view(np.int32)) for o in outs[1:])


@njit
def _mk_one_panel(n, a8, lda, wq, kq, corr, rs, ws, bs, out):
    for _ in range(n):
        for i0 in range(0, 8, S.MR):
            for p in range(2):
                S._microkernel_quads_dequant_ir(a8, i0 * lda, lda, wq, p * kq * 64, kq, corr, 16 * p, S._NO_FIX,
                                                S._NO_FIX, S._NO_FIX, 0, 0, rs, i0, ws[16 * p:], bs[16 * p:], out,
                                                i0 * 32 + 16 * p, 32)


@njit
def _mk_two_panels(n, a8, lda, wq, kq, corr, rs, ws, bs, out):
    for _ in range(n):
        for i0 in range(0, 8, S.MR):
            S._microkernel_quads2_dequant_ir(a8, i0 * lda, lda, wq, 0, kq * 64, kq, corr, 0, rs, i0, ws, bs, out,
                                             i0 * 32, 32)


@njit
def _mk_eight_rows(n, a8, lda, wq, kq, corr, rs, ws, bs, out):
    for _ in range(n):
        S._microkernel_quads2x8_dequant_ir(a8, 0, lda, wq, 0, kq * 64, kq, corr, 0, rs, 0, ws, bs, out, 0, 32)


def microkernel_section(reps: int) -> dict:
    set_num_threads(1)
    rng = np.random.default_rng(0)
    kq, inner = 96, 2000
    lda = 4 * kq
    a8 = rng.integers(0, 256, 8 * lda).astype(np.uint8)
    wq = rng.integers(-128, 128, 2 * kq * 64).astype(np.int8)
    corr = rng.integers(-1000, 1000, 32).astype(np.int32)
    rs = rng.random(8)
    ws, bs = rng.random(32).astype(np.float32), rng.random(32).astype(np.float32)
    outs = {k: np.zeros(8 * 32, np.float32) for k in ("4x16 one panel", "4x32 two panels", "8x32")}
    fns = dict(zip(outs, (_mk_one_panel, _mk_two_panels, _mk_eight_rows)))
    for k, f in fns.items():
        f(1, a8, lda, wq, kq, corr, rs, ws, bs, outs[k])
    same = _same(list(outs.values()))
    med = _alternate({k: (lambda f=f, o=outs[k]: f(inner, a8, lda, wq, kq, corr, rs, ws, bs, o))
                      for k, f in fns.items()}, reps)
    ops = inner * 8 * 32 * 4 * kq * 2
    res = {k: {"ns_per_8x32": v / inner * 1e9, "gops_per_thread": ops / v / 1e9} for k, v in med.items()}
    print("microkernel (1 thread, L1-resident, K = 384)" + ("" if same else "  OUTPUTS DIFFER"))
    for k, v in res.items():
        print(f"  {k:<16} {v['gops_per_thread']:6.0f} GOP/s per thread")
    set_num_threads(THREADS)
    return {"same_bits": same, "results": res}


def _dequant_args(m, n, k, rng):
    pw = G.pack_int8_weight(rng.integers(-128, 128, (n, k)).astype(np.int8))
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    a8, lda, corr = G._quads_operands(a, 128, pw)
    rs = np.zeros(-(-m // S.MR) * S.MR)
    rs[:m] = rng.uniform(1e-3, 1e-2, m)
    ws, bs = rng.random(n).astype(np.float32), rng.random(n).astype(np.float32)
    return (a8, lda, m, pw.panels, pw.kq, n, corr, *pw.fixes, rs, ws, bs, True), pw


def dequant_section(reps: int) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    print(f"dequantizing GEMM ({THREADS} threads): panel by panel -> panel pairs (8 x 32, 4 x 32 tiles)")
    for name, shapes in (("minilm", MINILM), ("bert-base", BERT_BASE)):
        for m, n, k in shapes:
            args, _ = _dequant_args(m, n, k, rng)
            outs = [G.aligned_empty(m * n, np.float32) for _ in range(2)]
            variants = {"one panel": lambda o=outs[0]: G._dequant_panels(*args, o),
                        "panel pairs": lambda o=outs[1]: G._dequant_panel_pairs(*args, o)}
            med = _alternate(variants, reps)
            same = _same(outs)
            gops = {v: 2 * m * n * k / t / 1e9 for v, t in med.items()}
            rows.append({"model": name, "m": m, "n": n, "k": k, "same_bits": same, "median_us": {v: t * 1e6 for v, t in med.items()},
                         "gops": gops, "speedup": med["one panel"] / med["panel pairs"]})
            print(f"  {name} [{m}x{k}]x[{k}x{n}]: {med['one panel'] * 1e6:7.0f} -> {med['panel pairs'] * 1e6:7.0f} us"
                  f" ({rows[-1]['speedup']:.2f}x, {gops['panel pairs']:.0f} GOP/s)" + ("" if same else "  OUTPUTS DIFFER"))
    return rows


def weights_section(reps: int) -> dict:
    rng = np.random.default_rng(2)
    m, n, k = 128, 3072, 768
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    pws = [G.pack_int8_weight(rng.integers(-128, 128, (n, k)).astype(np.int8)) for _ in range(24)]
    rs, ws, bs = np.full(m, 0.01, np.float32), np.full(n, 0.02, np.float32), np.zeros(n, np.float32)
    out = G.aligned_empty(m * n, np.float32).reshape(m, n)
    cold, warm = [], []
    for pw in pws:
        G.gemm_dequant(a, 128, pw, rs, ws, bs, out=out)
    for i in range(reps):
        pw = pws[i % len(pws)]
        for dst in (cold, warm):  # the first call finds the weight out of cache, the second in it
            t0 = time.perf_counter()
            G.gemm_dequant(a, 128, pw, rs, ws, bs, out=out)
            dst.append(time.perf_counter() - t0)
    res = {"weights_mb": sum(p.panels.nbytes for p in pws) / 1e6, "cold_us": statistics.median(cold) * 1e6,
           "warm_us": statistics.median(warm) * 1e6}
    print(f"weights: BERT-base FF1 at batch 1, {res['weights_mb']:.0f} MB cycled {res['cold_us']:.0f} us,"
          f" the same weight again {res['warm_us']:.0f} us ({res['cold_us'] / res['warm_us']:.3f}x)")
    return res


def grouped_section(reps: int) -> list[dict]:
    rng = np.random.default_rng(3)
    rows = []
    print(f"grouped GEMM, G = 6 ({THREADS} threads): group by group -> all groups in one call, two panels a tile")
    for m, n, k in ((1024, 1536, 384), (128, 1536, 384), (128, 3072, 768)):
        pw = G.pack_int8_weight(rng.integers(-128, 128, (n, k)).astype(np.int8))
        a = rng.integers(0, 256, (m, k)).astype(np.uint8)
        bounds = np.linspace(0, k, 7).astype(np.int64)
        zps, scales = rng.integers(0, 256, 6), rng.uniform(0.5, 2, 6).astype(np.float32)
        kernel, args, _ = G._grouped_plan(pw, a.dtype, k, bounds, zps, scales)
        lda, aoff = args[3], args[2]
        buf = np.empty(-(-m // S.MR) * S.MR * lda, np.uint8)
        G._widen_grouped(a, args[0], args[1], aoff, -(-m // S.MR) * S.MR, lda, buf)
        ws, bs = rng.random(n).astype(np.float32), rng.random(n).astype(np.float32)
        outs = [np.empty(m * n, np.float32) for _ in range(2)]
        call = lambda core, o: core(buf, lda, m, aoff, *args[4:-1], n, args[-1], ws, True, bs, True, o)  # noqa: E731
        med = _alternate({"group by group": lambda: call(G._grouped_quads_panels, outs[0]),
                          "in registers": lambda: call(G._grouped_vnni512_panels, outs[1])}, reps)
        same = _same(outs)
        rows.append({"m": m, "n": n, "k": k, "same_bits": same, "median_us": {v: t * 1e6 for v, t in med.items()},
                     "speedup": med["group by group"] / med["in registers"]})
        print(f"  [{m}x{k}]x[{k}x{n}]: {med['group by group'] * 1e6:7.0f} -> {med['in registers'] * 1e6:7.0f} us"
              f" ({rows[-1]['speedup']:.2f}x)" + ("" if same else "  OUTPUTS DIFFER"))
    return rows


def bgemm_section(reps: int) -> list[dict]:
    rng = np.random.default_rng(4)
    rows = []
    print(f"attention GEMMs ({THREADS} threads): int16 pairs -> quad panels packed per call")
    for BH, T, d in ((96, 128, 32), (96, 128, 64), (12, 128, 32), (12, 128, 64)):
        q, k, v = (rng.integers(-128, 128, (BH, T, d)).astype(np.int8) for _ in range(3))
        p = rng.integers(0, 256, (BH, T, T)).astype(np.uint8)
        for what, a, zp, b, b_kn, shape in (("Q K^T", q, 0, k, False, (BH, T, T)), ("P V", p, 128, v, True, (BH, T, d))):
            outs = [np.empty(shape, np.int32) for _ in range(2)]
            med = _alternate({"pairs": lambda o=outs[0]: G._bgemm_pairs_core(a, zp, b, b_kn, o),
                              "quads": lambda o=outs[1]: G._bgemm_quads_core(a, zp, b, b_kn, o)}, reps)
            same = _same(outs)
            rows.append({"what": what, "heads": BH, "T": T, "d": d, "same_bits": same,
                         "median_us": {x: t * 1e6 for x, t in med.items()}, "speedup": med["pairs"] / med["quads"]})
            print(f"  {what:<5} [{BH} x {T} x {d}]: {med['pairs'] * 1e6:6.0f} -> {med['quads'] * 1e6:6.0f} us"
                  f" ({rows[-1]['speedup']:.2f}x)" + ("" if same else "  OUTPUTS DIFFER"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "vnni.json"))
    args = ap.parse_args()
    if S.QUAD_ISA != "vnni512":
        print(f"this CPU compiles the quad kernel as {S.QUAD_ISA!r}, not 'vnni512': nothing to compare", file=sys.stderr)
        return 2
    set_num_threads(args.threads)
    res = {"microkernel": microkernel_section(args.reps), "dequant": dequant_section(args.reps),
           "weights": weights_section(args.reps), "grouped": grouped_section(args.reps),
           "bgemm": bgemm_section(args.reps)}
    _util.write_json(Path(args.out), {"command": " ".join(["python", *sys.argv]), "git": _util.git_state(),
                                      "machine": _util.machine_info(), "threads": args.threads, "reps": args.reps, **res})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
