"""In-process A/B of npbert recipes: alternate their forwards so every recipe sees the same machine noise.

bench_e2e.py times each engine in its own process; differences of a few percent between two recipes
(tm-iqr vs dynamic, peg vs w8a8) are then within process-to-process noise. Here all recipes live in one
process and run round-robin on one pre-tokenized batch, in an order that flips every round (the second
of two recipes in a round measured 2-4% slower); the medians' ratios are what the README quotes.

    python bench/ab_recipes.py [--model DIR] [--threads 2] [--batch 8] [--reps 30] [--recipes dynamic,tm-iqr,w8a8,peg]
                               [--off FLAG] [--out results/F.json]

Prints seq/s per recipe and the ratios tm-iqr/dynamic and peg/w8a8 (speed, higher = faster). Static
recipes calibrate on 32 STS-B train sentences. Run it alone (flock /tmp/npbert-heavy.lock ...).

--off FLAG (a QuantExecutor switch such as FUSE_GEMM_DEQUANT) adds each recipe once more with the
switch off ("dynamic-FLAG"), in the same rotation: what a bit-identical fusion buys, in one process.
--out writes the medians and ratios with the command, git state and machine as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from npbert._jit import set_num_threads
from npbert.io.tokenizer import Batch
from npbert.model import load_model
from npbert.qmodel import QuantExecutor, quantize_model

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "STS-B" / "train.tsv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="weights/all-MiniLM-L6-v2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--recipes", default="dynamic,tm-iqr,w8a8,peg")
    ap.add_argument("--off", default=None, help="a QuantExecutor switch to time off as well (e.g. FUSE_GEMM_DEQUANT)")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    if args.off is not None and not isinstance(getattr(QuantExecutor, args.off, None), bool):
        ap.error(f"--off {args.off}: not a QuantExecutor switch")
    set_num_threads(args.threads)
    model = load_model(args.model)
    calib = [line.split("\t")[7] for line in STSB.read_text(encoding="utf-8").splitlines()[1:33]]
    engines = {r: quantize_model(model, r, calibration=calib) for r in args.recipes.split(",")}
    switch = {r: True for r in engines}  # recipe label -> the --off switch's value for its forwards
    if args.off is not None:
        for r in list(engines):
            engines[f"{r}-{args.off}"] = engines[r]
            switch[f"{r}-{args.off}"] = False
    rng = np.random.default_rng(0)
    B, T = args.batch, 128
    ids = rng.integers(1000, 20000, (B, T))
    ids[:, 0] = 101
    batch = Batch(ids, np.ones((B, T), np.int64), np.zeros((B, T), np.int64), np.zeros(B, bool))
    def run(label, q):
        if args.off is not None:
            setattr(QuantExecutor, args.off, switch[label])
        q.forward(batch)

    for r, q in engines.items():  # warm: JIT cache load, scratch buffers
        run(r, q)
        run(r, q)
    times: dict[str, list[float]] = {r: [] for r in engines}
    order = list(engines.items())
    for rep in range(args.reps):
        # the order flips every round: measured, whichever recipe runs second in a round is 2-4% slower
        for r, q in (order if rep % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            run(r, q)
            times[r].append(time.perf_counter() - t0)
    med = {r: statistics.median(v) for r, v in times.items()}
    print(f"{args.model}, batch {B} x {T}, {args.threads} threads, {args.reps} round-robin repeats")
    for r, s in med.items():
        print(f"  {r:<12} {B / s:8.2f} seq/s  (median {s * 1e3:.1f} ms)")
    pairs = [("tm-iqr", "dynamic"), ("peg", "w8a8")]
    if args.off is not None:
        pairs += [(r, f"{r}-{args.off}") for r in args.recipes.split(",")]
    ratios = {}
    for a, b in pairs:
        if a in med and b in med:
            ratios[f"{a} / {b}"] = med[b] / med[a]
            print(f"  {a} / {b} speed: {med[b] / med[a]:.3f}")
    if args.out:
        import sys

        import _util

        _util.write_json(Path(args.out), {
            "command": " ".join(["python", *sys.argv]), "git": _util.git_state(), "machine": _util.machine_info(),
            "model": args.model, "batch": B, "seq_len": T, "threads": args.threads, "reps": args.reps,
            "median_s": med, "seq_per_s": {r: B / s for r, s in med.items()}, "speed_ratios": ratios})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
