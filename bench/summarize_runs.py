"""Ratios of engine pairs across repeated bench_e2e runs: each run's ratio, then their median.

    python bench/summarize_runs.py bench/results/e2e-pairs-*.json

One bench_e2e run times each engine in its own process, one after the other; on a shared machine a
disturbed stretch can slow one engine's process and not the other's. Repeating the run and taking
the median of each run's ratio keeps one such stretch from deciding a target. Prints, per model,
batch and thread count: dynamic / ORT int8, dynamic / torch FP32, tm-iqr / dynamic and peg / w8a8
(throughput ratios, higher = the first is faster).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

PAIRS = (("npbert-dynamic", "ort-int8"), ("npbert-dynamic", "torch-fp32"), ("npbert-tm-iqr", "npbert-dynamic"),
         ("npbert-peg", "npbert-w8a8"))


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__)
        return 2
    runs = []
    for p in paths:
        rows = json.loads(Path(p).read_text())["throughput"]
        runs.append({(r["model"], r["batch"], r["threads"], r["engine"]): r["seq_per_s"] for r in rows if "seq_per_s" in r})
    cells = sorted({k[:3] for run in runs for k in run})
    print(f"{len(runs)} runs: {', '.join(paths)}")
    for a, b in PAIRS:
        for cell in cells:
            ratios = [run[(*cell, a)] / run[(*cell, b)] for run in runs if (*cell, a) in run and (*cell, b) in run]
            if ratios:
                model, batch, threads = cell
                each = " ".join(f"{r:.3f}" for r in ratios)
                print(f"{a} / {b}  {model} B{batch} T{threads}: {each}  -> median {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
