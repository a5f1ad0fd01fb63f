"""In-process A/B: what cache-line alignment of weight panels and buffers buys.

NumPy's large arrays start 16 bytes past a 64-byte cache line (malloc's header on an mmap'd block),
or wherever a smaller block falls; npbert allocates weight panels, the executors' scratch and the
GEMM's staging on whole lines (kernels.gemm.aligned_empty). Two sections, each alternating its
variants in blocks (--block timed calls after one untimed) so they share the machine's noise:

- gemm: the dequantizing GEMM (gemm.gemm_dequant) with MiniLM's real int8 weights, M = 128 x batch,
  its weight panels and its float32 output each on a line (offset 0) or 16 bytes past one.
- forward: two copies of one quantized model, one as npbert builds it and one whose panels and
  scratch were all placed 16 bytes past a line (aligned_empty patched while it was built and warmed).

    python bench/ab_align.py [--model DIR] [--batch 8] [--threads 2] [--blocks 30] [--block 5]
                             [--sections gemm,forward] [--out results/F.json]

Prints medians and ratios (speed of aligned over off-by-16, higher = alignment helps). Run it alone
(flock /tmp/npbert-heavy.lock ...).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from npbert._jit import set_num_threads
from npbert.io.tokenizer import Batch
from npbert.kernels import gemm as kg
from npbert.model import load_model
from npbert.qmodel import quantize_model

OFF = 16  # bytes past a cache line: where NumPy's mmap'd blocks start
SITES = ("encoder.layer.1.attention.self.query", "encoder.layer.1.intermediate.dense", "encoder.layer.1.output.dense")


_ALIGNED_EMPTY = kg.aligned_empty  # the real one: forward_section patches kg.aligned_empty with _empty_at


def _empty_at(n: int, dtype, off: int) -> np.ndarray:
    """aligned_empty's array shifted `off` bytes past the line."""
    dtype = np.dtype(dtype)
    raw = _ALIGNED_EMPTY(n * dtype.itemsize + kg.CACHE_LINE, np.uint8)
    return raw[off:off + n * dtype.itemsize].view(dtype)


def _copy_at(a: np.ndarray, off: int) -> np.ndarray:
    out = _empty_at(a.size, a.dtype, off).reshape(a.shape)
    out[...] = a
    return out


def _alternate(variants: dict, blocks: int, block: int) -> dict[str, float]:
    """Median seconds per call of each variant (a no-argument callable), in alternating blocks."""
    for f in variants.values():
        f()
    times = {k: [] for k in variants}
    order = list(variants.items())
    for b in range(blocks):
        for k, f in (order if b % 2 == 0 else order[::-1]):
            f()  # untimed: the previous variant's data leaves the caches
            for _ in range(block):
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def gemm_section(qm, M: int, blocks: int, block: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for site in SITES:
        w = qm.qweights[site]
        pw0 = w.packed
        N, K = pw0.n, pw0.k
        a = rng.integers(0, 256, (M, K)).astype(np.uint8)
        rs = np.full(M, 0.01, np.float32)
        variants, outs = {}, {}
        for w_off in (0, OFF):
            for o_off in (0, OFF):
                pw = copy.copy(pw0)
                pw.panels, pw._groups = _copy_at(pw0.panels, w_off), {}
                out = _copy_at(np.zeros((M, N), np.float32), o_off)
                key = f"w+{w_off}/out+{o_off}"
                outs[key] = out
                variants[key] = (lambda pw=pw, out=out: kg.gemm_dequant(a, 128, pw, rs, w.scale, w.bias, out=out))
        med = _alternate(variants, blocks, block)
        first = next(iter(outs.values()))
        same = all(np.array_equal(o, first) for o in outs.values())
        base = med["w+0/out+0"]
        rows.append({"site": site, "M": M, "K": K, "N": N, "same_bits": same, "median_s": med,
                     "speed_vs_aligned": {k: base / v for k, v in med.items()}})
        print(f"  {site} [{M}x{K}] x [{K}x{N}]  " + "  ".join(f"{k} {v * 1e6:.0f} us ({base / v:.3f})" for k, v in med.items())
              + ("" if same else "  OUTPUTS DIFFER"))
    return rows


def forward_section(model, recipe: str, batch: Batch, blocks: int, block: int) -> dict:
    aligned = quantize_model(model, recipe)
    aligned.forward(batch)
    real = kg.aligned_empty
    kg.aligned_empty = lambda n, dtype: _empty_at(n, dtype, OFF)  # panels, scratch and staging built off the line
    try:
        shifted = quantize_model(model, recipe)
        shifted.forward(batch)
    finally:
        kg.aligned_empty = real
    y0, y1 = aligned.forward(batch), shifted.forward(batch)
    same = np.array_equal(y0.last_hidden_state, y1.last_hidden_state)
    med = _alternate({"aligned": lambda: aligned.forward(batch), f"off+{OFF}": lambda: shifted.forward(batch)},
                     blocks, block)
    ratio = med[f"off+{OFF}"] / med["aligned"]
    print(f"  forward ({recipe}): aligned {med['aligned'] * 1e3:.2f} ms, off+{OFF} {med[f'off+{OFF}'] * 1e3:.2f} ms,"
          f" speed ratio {ratio:.3f}" + ("" if same else "  OUTPUTS DIFFER"))
    return {"recipe": recipe, "same_bits": same, "median_s": med, "speed_aligned_over_off": ratio}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="weights/all-MiniLM-L6-v2")
    ap.add_argument("--recipe", default="dynamic")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--sections", default="gemm,forward")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    set_num_threads(args.threads)
    model = load_model(args.model)
    B, T = args.batch, 128
    ids = np.random.default_rng(0).integers(1000, 20000, (B, T))
    ids[:, 0] = 101
    batch = Batch(ids, np.ones((B, T), np.int64), np.zeros((B, T), np.int64), np.zeros(B, bool))
    print(f"{args.model}, batch {B} x {T}, {args.threads} threads, {args.blocks} blocks of {args.block}")
    res: dict = {}
    sections = args.sections.split(",")
    if "gemm" in sections:
        res["gemm"] = gemm_section(quantize_model(model, args.recipe), B * T, args.blocks, args.block)
    if "forward" in sections:
        res["forward"] = forward_section(model, args.recipe, batch, args.blocks, args.block)
    if args.out:
        import _util

        _util.write_json(Path(args.out), {
            "command": " ".join(["python", *sys.argv]), "git": _util.git_state(), "machine": _util.machine_info(),
            "model": args.model, "batch": B, "seq_len": T, "threads": args.threads, "blocks": args.blocks,
            "block": args.block, "offset_bytes": OFF, **res})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
