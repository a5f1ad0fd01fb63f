"""Page faults per forward: does a steady-state forward allocate fresh memory?

    flock /tmp/npbert-heavy.lock python bench/bench_faults.py [--recipes dynamic,w8a8] [--batches 1,8]

A fresh multi-megabyte array per intermediate value costs its first-touch page faults on every call
(the allocator hands large blocks back to the kernel when they are freed). For each recipe and batch
(all-MiniLM-L6-v2, 128 tokens, 2 threads) this warms the model up with 5 forwards, then counts the
process's minor page faults (getrusage) over 20 more and reports faults per forward next to the median
forward time. Writes bench/results/faults.json. Run it at two commits to compare.
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
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from npbert._jit import set_num_threads  # noqa: E402
from npbert.io.tokenizer import Batch  # noqa: E402
from npbert.model import load_model  # noqa: E402
from npbert.qmodel import quantize_model  # noqa: E402

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "STS-B" / "train.tsv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="weights/all-MiniLM-L6-v2")
    ap.add_argument("--recipes", default="dynamic,w8a8,peg")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--forwards", type=int, default=20)
    ap.add_argument("--out", default=str(_util.RESULTS / "faults.json"))
    a = ap.parse_args()
    threads = set_num_threads(a.threads)
    model = load_model(a.model)
    calib = [line.split("\t")[7] for line in STSB.read_text(encoding="utf-8").splitlines()[1:33]]
    rows = []
    for recipe in a.recipes.split(","):
        qm = quantize_model(model, recipe, calibration=calib)
        for B in (int(b) for b in a.batches.split(",")):
            rng = np.random.default_rng(0)
            ids = rng.integers(1000, 20000, (B, 128))
            ids[:, 0] = 101
            batch = Batch(ids, np.ones((B, 128), np.int64), np.zeros((B, 128), np.int64), np.zeros(B, bool))
            for _ in range(5):
                qm.forward(batch)
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times = []
            for _ in range(a.forwards):
                t0 = time.perf_counter()
                qm.forward(batch)
                times.append(time.perf_counter() - t0)
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / a.forwards
            rows.append({"recipe": recipe, "batch": B, "minor_faults_per_forward": faults,
                         "median_ms": statistics.median(times) * 1e3})
            print(f"{recipe:<10} B={B}: {faults:8.1f} minor faults per forward, median {rows[-1]['median_ms']:.2f} ms")
    _util.write_json(a.out, {"command": " ".join(["python", *sys.argv]), "git": _util.git_state(), "machine": _util.machine_info(),
                             "threads": threads, "model": a.model, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
