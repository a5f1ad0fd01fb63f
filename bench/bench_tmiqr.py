"""What TM-IQR costs: quantize_dynamic with tmiqr=True vs tmiqr=False vs the FF2 GEMM it feeds.

    flock /tmp/npbert-heavy.lock python bench/bench_tmiqr.py [--threads 2] [--repeats 11]

Shapes: the FF2 input of a batch of 8 sequences x 128 tokens (M = 1024, one segment per sequence,
padding rows masked): MiniLM K=1536 -> N=384, BERT-base K=3072 -> N=768. Reports the quantizer's
time as a share of quantizer + GEMM, the extra cost of the TM-IQR threshold, and the selection
alone (tmiqr_threshold over L=128 per-token abs-maxes) in microseconds. Outputs are checked
against kernels/reference.py before anything is timed. Writes bench/results/tmiqr.json.
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

import numpy as np  # noqa: E402

from npbert._jit import njit, set_num_threads  # noqa: E402
from npbert.kernels import reference as R  # noqa: E402
from npbert.kernels.gemm import gemm_s8s8, pack_int8_weight  # noqa: E402
from npbert.kernels.quantize import quantize_dynamic  # noqa: E402
from npbert.kernels.selection import tmiqr_threshold  # noqa: E402

SHAPES = {"MiniLM FF2": (1024, 1536, 384), "BERT-base FF2": (1024, 3072, 768)}
SEQS, T = 8, 128


@njit
def _select_loop(v, reps):
    """reps calls of tmiqr_threshold inside compiled code (no Python dispatch in the timing)."""
    acc = 0.0
    for _ in range(reps):
        acc += tmiqr_threshold(v)
    return acc


def activations(rng, M, K):
    """GELU-like FF2 inputs: mostly small, a few outlier tokens and channels (what TM-IQR is for)."""
    x = rng.standard_normal((M, K)).astype(np.float32)
    x = np.maximum(x, -0.17 * np.abs(x))  # GELU-ish skew
    x *= (1.0 + 4.0 * (rng.random((M, 1)) < 0.02)).astype(np.float32)  # outlier tokens
    x[:, rng.integers(0, K, 4)] *= 20.0  # outlier channels
    return np.ascontiguousarray(x, dtype=np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--out", default=str(_util.RESULTS / "tmiqr.json"))
    args = ap.parse_args()
    threads = set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows, lines = [], []
    for name, (M, K, N) in SHAPES.items():
        x = activations(rng, M, K)
        seg = np.arange(0, M + 1, T, dtype=np.int64)  # [SEQS+1] one segment per sequence
        lengths = rng.integers(T // 2, T + 1, SEQS)
        valid = (np.arange(T)[None, :] < lengths[:, None]).reshape(-1)  # [M] padding masked
        w = rng.integers(-128, 128, (N, K), dtype=np.int8)
        pw = pack_int8_weight(w)

        # exact agreement before timing
        for tm in (False, True):
            got, want = quantize_dynamic(x, seg, valid, 8, tm), R.quantize_dynamic_ref(x, seg, valid, 8, tm)
            assert all(np.array_equal(g, h) for g, h in zip(got, want)), f"quantize_dynamic(tmiqr={tm}) != reference"
        q = quantize_dynamic(x, seg, valid, 8, True)[0]
        assert np.array_equal(gemm_s8s8(q, pw), R.gemm_s8s8_ref(q, w)), "gemm_s8s8 != reference"
        tok = np.abs(x[:T]).max(axis=1)  # [128] per-token abs-max of one sequence
        assert tmiqr_threshold(tok) == R.tmiqr_threshold_ref(tok)
        print(f"{name}: all results match")

        fns = {
            "quantize_dynamic absmax": lambda: quantize_dynamic(x, seg, valid, 8, False),
            "quantize_dynamic tmiqr": lambda: quantize_dynamic(x, seg, valid, 8, True),
            "gemm_s8s8 FF2": lambda: gemm_s8s8(q, pw),
        }
        t = _util.time_round_robin(fns, repeats=args.repeats)
        reps = 20000
        _select_loop(tok, 10)
        sel = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            _select_loop(tok, reps)
            sel.append((time.perf_counter() - t0) / reps)
        sel_us = float(np.median(sel) * 1e6)
        py = _util.time_call(lambda: tmiqr_threshold(tok), repeats=args.repeats)

        qa, qt, g = (t[k]["median_s"] for k in fns)
        row = {
            "shape": name, "M": M, "K": K, "N": N, "segments": SEQS, "valid_rows": int(valid.sum()),
            "quantize_absmax_ms": qa * 1e3, "quantize_tmiqr_ms": qt * 1e3, "gemm_ms": g * 1e3,
            "gemm_gops": 2 * M * N * K / g / 1e9,
            "tmiqr_extra_ms": (qt - qa) * 1e3,
            "share_absmax_of_quant_plus_gemm": qa / (qa + g),
            "share_tmiqr_of_quant_plus_gemm": qt / (qt + g),
            "selection_us_per_segment_in_jit": sel_us,
            "selection_us_per_call_from_python": py["median_s"] * 1e6,
            "timings": t,
        }
        rows.append(row)
        lines.append(
            f"{name:14s} M={M} K={K} N={N}: quantize absmax {qa * 1e3:6.3f} ms | tmiqr {qt * 1e3:6.3f} ms "
            f"(+{(qt - qa) * 1e3:.3f} ms) | GEMM {g * 1e3:6.2f} ms ({row['gemm_gops']:.0f} GOP/s) | "
            f"share of quant+GEMM: absmax {100 * row['share_absmax_of_quant_plus_gemm']:.1f} %, "
            f"tmiqr {100 * row['share_tmiqr_of_quant_plus_gemm']:.1f} % | selection (L=128) "
            f"{sel_us:.2f} us in jit, {row['selection_us_per_call_from_python']:.2f} us from Python"
        )
    print("\n".join(lines))
    path = _util.write_json(
        args.out,
        {"machine": _util.machine_info(), "versions": _util.versions(), "threads": threads, "repeats": args.repeats,
         "results": rows, "table": lines},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
