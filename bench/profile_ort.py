"""ONNX Runtime's own per-operator profile of a forward, next to npbert's (bench_e2e.py --sections profile).

    flock /tmp/npbert-heavy.lock python bench/profile_ort.py [--model minilm|bert-base] [--batch 1]
        [--threads 2] [--reps 20] [--out results/F.json]

Runs bench_e2e's ONNX Runtime int8 session (the same export and session options, run bench_e2e.py
once first) with SessionOptions.enable_profiling on B x 128 real tokens, and sums the profiler's
per-node kernel times by operator type: ms per forward and share of the profiled time.
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
import collections  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from ab_ort import MODELS  # noqa: E402  (the model and export paths)
from bench_e2e import OrtEngine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=list(MODELS), default="minilm")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    onnx_path = MODELS[a.model][1] / "model.int8.onnx"
    if not onnx_path.is_file():
        sys.exit(f"{onnx_path} missing: run `python bench/bench_e2e.py --models {a.model}` once first")
    rng = np.random.default_rng(0)
    B, T = a.batch, 128
    ids = rng.integers(1000, 20000, (B, T)).astype(np.int64)
    ids[:, 0] = 101
    with tempfile.TemporaryDirectory() as tmp:
        eng = OrtEngine(onnx_path, a.threads, profile_prefix=str(Path(tmp) / "ort"))
        fwd = eng.bind(ids, np.ones((B, T), np.int64), np.zeros((B, T), np.int64))
        warm = 3
        for _ in range(warm):
            fwd()
        t0 = time.perf_counter()
        for _ in range(a.reps):
            fwd()
        wall_ms = (time.perf_counter() - t0) / a.reps * 1e3
        events = json.loads(Path(eng.sess.end_profiling()).read_text())
    per_op, count = collections.Counter(), collections.Counter()
    for e in events:  # (the warm-up runs are profiled too: divide by every run)
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3 / (warm + a.reps)
            count[e["args"]["op_name"]] += 1
    total = sum(per_op.values())
    print(f"ONNX Runtime int8, {a.model}, batch {B} x {T}, {a.threads} threads: {wall_ms:.1f} ms per profiled forward, "
          f"{total:.1f} ms in kernels")
    rows = [{"op": op, "ms_per_forward": ms, "share": ms / total, "nodes": count[op] // (warm + a.reps)}
            for op, ms in per_op.most_common()]
    for r in rows:
        print(f"  {r['op']:<32} {r['ms_per_forward']:7.2f} ms  {100 * r['share']:5.1f}%  ({r['nodes']} nodes)")
    out = a.out or str(_util.RESULTS / f"profile-ort-{a.model}-b{B}.json")
    _util.write_json(out, {"command": " ".join(["python", *sys.argv]), "git": _util.git_state(), "machine": _util.machine_info(),
                           "model": a.model, "batch": B, "seq_len": T, "threads": a.threads, "reps": a.reps,
                           "forward_ms_profiled": wall_ms, "kernel_ms": total, "ops": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
