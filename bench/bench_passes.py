"""The forward's passes other than the linear GEMMs, one by one, at all-MiniLM-L6-v2's shapes.

    flock /tmp/npbert-heavy.lock python bench/bench_passes.py [--batch 8] [--threads 2] [--out F]

At batch 8 x 128 tokens (M = 1024 rows; C = 384, I = 1536, 12 heads) every pass is timed in one
process, kernels sampled in rotation, on the arrays the forward would hand it, with the reusable
output buffers the forward passes (out=; the quantizing epilogues and static quantizers have none
and allocate their codes, as in the forward). Prints the median per call and ns per element; writes
bench/results/passes-b{batch}.json. Run it at two commits to see what a kernel change bought (the
passes' signatures are those of npbert at and after 7a5d75a).
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

from npbert import ops  # noqa: E402
from npbert._jit import set_num_threads  # noqa: E402
from npbert.kernels import fused as F  # noqa: E402
from npbert.kernels import quantize as Q  # noqa: E402


def passes(B: int, rng) -> dict:
    """name -> (callable, elements it writes)"""
    T, C, I, h = 128, 384, 1536, 12
    M = B * T
    x = (rng.standard_normal((M, C)) * 2).astype(np.float32)
    x_i = (rng.standard_normal((M, I)) * 2).astype(np.float32)
    y = rng.standard_normal((M, C)).astype(np.float32)
    acc = rng.integers(-(2**20), 2**20, (M, C)).astype(np.int32)
    acc_i = rng.integers(-(2**20), 2**20, (M, I)).astype(np.int32)
    ws, ws_i = rng.uniform(1e-3, 1e-2, C).astype(np.float32), rng.uniform(1e-3, 1e-2, I).astype(np.float32)
    b, b_i = rng.standard_normal(C).astype(np.float32), rng.standard_normal(I).astype(np.float32)
    rs = np.full(M, 1e-4, np.float32)
    g, beta = rng.uniform(0.5, 1.5, C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    a8, b8 = (rng.integers(-127, 128, (M, C)).astype(np.int8) for _ in range(2))
    seg, valid = np.arange(B + 1, dtype=np.int64) * T, np.ones(M, bool)
    bounds6 = np.linspace(0, C, 7).astype(np.int64)
    one, six = np.array([0, C], np.int64), np.full(6, 1.0)
    grid_u8 = F.OutGrid(one, np.float32(0.05), 128, 0, 255, np.uint8)
    grid_i = F.OutGrid(np.array([0, I], np.int64), np.float32(0.05), 0, 0, 255, np.uint8)
    grid6 = F.OutGrid(bounds6, np.full(6, 0.05, np.float32), np.zeros(6), -128, 127, np.int8)
    scores = rng.integers(-20000, 20000, (B, h, T, T)).astype(np.int32)
    ctx = rng.integers(-(2**20), 2**20, (B * h, T, C // h)).astype(np.int32)
    bias = ops.mask_bias(np.ones((B, T), np.int64))
    sq = np.full(B, 1e-3, np.float32)
    out_f, out_fi = np.empty((M, C), np.float32), np.empty((M, I), np.float32)
    codes, codes_i, probs = np.empty((M, C), np.int8), np.empty((M, I), np.int8), np.empty((B, h, T, T), np.uint8)
    s_buf, ln_buf, ctx_buf = np.empty((M, C), np.float32), np.empty((M, C), np.float32), np.empty((B, T, C), np.float32)
    # the embedding sum at MiniLM's table sizes: NumPy's gathers and adds, and fused.embed_sum (fd278ba on)
    words, pos_tab, type_tab = (rng.standard_normal((n, C)).astype(np.float32) for n in (30522, 512, 2))
    ids, pos, types = rng.integers(0, 30522, M), np.tile(np.arange(T), B), np.zeros(M, np.int64)
    embed = {"embeddings: NumPy gathers + adds [M, C]": (lambda: (words[ids] + pos_tab[pos]) + type_tab[types], M * C)}
    if hasattr(F, "embed_sum"):
        embed["embed_sum [M, C]"] = (lambda: F.embed_sum(words, ids, pos_tab, pos, type_tab, types), M * C)
    return {
        **embed,
        "quantize_dynamic_rows [M, C]": (lambda: Q.quantize_dynamic_rows(x, seg, valid, out=codes), M * C),
        "quantize_dynamic_rows [M, I]": (lambda: Q.quantize_dynamic_rows(x_i, seg, valid, out=codes_i), M * I),
        "epilogue [M, C]": (lambda: F.epilogue(acc, rs, ws, b, None, out_f), M * C),
        "epilogue gelu [M, I]": (lambda: F.epilogue(acc_i, rs, ws_i, b_i, "gelu", out_fi), M * I),
        "epilogue_quantize u8 [M, C]": (lambda: F.epilogue_quantize(acc, 1e-4, ws, b, None, grid_u8), M * C),
        "epilogue_quantize gelu u8 [M, I]": (lambda: F.epilogue_quantize(acc_i, 1e-4, ws_i, b_i, "gelu", grid_i), M * I),
        "quantize_static [M, C]": (lambda: Q.quantize_static(x, 0.05, 0, -128, 127, np.int8), M * C),
        "quantize_static_grouped G=6 [M, C]": (lambda: Q.quantize_static_grouped(
            x, bounds6, np.full(6, 0.05, np.float32), np.zeros(6, np.int64), -128, 127, np.int8), M * C),
        "add_requant_grouped G=6 [M, C]": (lambda: Q.add_requant_grouped(
            a8, six * 0.1, np.zeros(6, np.int64), b8, six * 0.1, np.zeros(6, np.int64), six * 0.2, np.zeros(6, np.int64),
            bounds6, -128, 127, np.int8), M * C),
        "residual_layer_norm_quantize G=6 [M, C]": (lambda: F.residual_layer_norm_quantize(
            a8, b8, bounds6, six * 0, six * 0.7, six * 0, six * 0.4, six * 0, np.full(6, 0.1, np.float32), -128, 127, g, beta,
            1e-12, grid6), M * C),
        "add_layer_norm [M, C]": (lambda: F.add_layer_norm(x, y, g, beta, 1e-12, out_sum=s_buf, out=ln_buf), M * C),
        "softmax_quantize [B, h, T, T]": (lambda: F.softmax_quantize(scores, sq, bias, 1 / 255, 0, 0, 255, np.uint8, probs),
                                          scores.size),
        "merge_heads_scaled [B, T, C]": (lambda: F.merge_heads_scaled(ctx, sq, h, ctx_buf), ctx.size),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    threads = set_num_threads(a.threads)
    table = passes(a.batch, np.random.default_rng(0))
    timings = _util.time_round_robin({k: fn for k, (fn, _n) in table.items()}, repeats=a.repeats)
    rows = []
    for k, t in timings.items():
        n = table[k][1]
        rows.append({"pass": k, "us": t["median_s"] * 1e6, "ns_per_element": t["median_s"] * 1e9 / n, **t})
        print(f"{k:<42} {rows[-1]['us']:9.1f} us  {rows[-1]['ns_per_element']:6.3f} ns/element")
    out = a.out or str(_util.RESULTS / f"passes-b{a.batch}.json")
    _util.write_json(out, {"command": " ".join(["python", *sys.argv]), "git": _util.git_state(), "machine": _util.machine_info(),
                           "threads": threads, "batch": a.batch, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
