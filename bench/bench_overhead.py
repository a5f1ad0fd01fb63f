"""What a forward costs outside its numba kernels: the Python of the executor and the kernel wrappers.

    flock /tmp/npbert-heavy.lock python bench/bench_overhead.py [--model weights/all-MiniLM-L6-v2]
        [--recipe dynamic] [--batch 1] [--threads 2] [--reps 300] [--out results/F.json]

Times the forward (B x 128 real tokens) as it is, then with every compiled numba core of
npbert.kernels (gemm, quantize, fused, and the compiled layer) replaced by a no-op that returns "no error", so what is left
is the Python between the kernels: the executor's hooks, the wrappers' checks, the buffer lookups,
the NumPy glue. The outputs of the stubbed forward are garbage; only its time is read. Also counts
the Python function calls of one forward (cProfile). Run it in a git worktree of another commit to
compare (it imports the npbert of the checkout it sits in).
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
import cProfile  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

# the cores' error returns: the dynamic quantizers report "-1: no bad row" (as (-1, block) for heads)
_STUB_RETURNS = {"_quantize_dynamic_core": -1, "_quantize_dynamic_heads_core": (-1, 0)}


def _median_ms(fn, reps: int) -> float:
    for _ in range(10):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def _stub_cores() -> list[str]:
    """Replace the parallel / row cores (the compiled work) of npbert.kernels' modules by no-ops."""
    from npbert.kernels import fused, gemm, layer, quantize

    layer.dynamic_layer_into = lambda *a: layer.OK  # the compiled layer: its cores are called from numba
    stubbed = ["npbert.kernels.layer.dynamic_layer_into"]
    for mod in (gemm, quantize, fused):
        for name in dir(mod):
            obj = getattr(mod, name)
            if isinstance(obj, numba.core.registry.CPUDispatcher) and name.startswith("_") and (
                    "core" in name or "rows" in name):
                setattr(mod, name, (lambda r: (lambda *a, **k: r))(_STUB_RETURNS.get(name)))
                stubbed.append(f"{mod.__name__}.{name}")
    return stubbed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(_util.RESULTS.parents[1] / "weights" / "all-MiniLM-L6-v2"))
    ap.add_argument("--recipe", default="dynamic")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import npbert
    from npbert._jit import set_num_threads
    from npbert.io.tokenizer import Batch
    from npbert.model import load_model
    from npbert.qmodel import quantize_model

    set_num_threads(a.threads)
    qm = quantize_model(load_model(a.model), a.recipe)
    rng = np.random.default_rng(0)
    B, T = a.batch, 128
    ids = rng.integers(1000, 20000, (B, T)).astype(np.int64)
    ids[:, 0] = 101
    batch = Batch(ids, np.ones((B, T), np.int64), np.zeros((B, T), np.int64), np.zeros(B, bool))
    forward = lambda: qm.forward(batch)  # noqa: E731
    full_ms = _median_ms(forward, a.reps)
    stubbed = _stub_cores()
    python_ms = _median_ms(forward, a.reps)
    prof = cProfile.Profile()
    prof.enable()
    forward()
    prof.disable()
    calls = pstats.Stats(prof).total_calls
    print(f"{Path(npbert.__file__).parent}: {a.recipe}, batch {B} x {T}, {a.threads} threads")
    print(f"  forward {full_ms:.2f} ms; with the {len(stubbed)} numba cores stubbed {python_ms:.2f} ms; "
          f"{calls} Python function calls a forward")
    out = a.out or str(_util.RESULTS / f"overhead-b{B}.json")
    _util.write_json(out, {"command": " ".join(["python", *sys.argv]), "git": _util.git_state(), "machine": _util.machine_info(),
                           "model": a.model, "recipe": a.recipe, "batch": B, "seq_len": T, "threads": a.threads,
                           "reps": a.reps, "forward_ms": full_ms, "stubbed_forward_ms": python_ms,
                           "python_calls_per_forward": calls, "stubbed": stubbed})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
