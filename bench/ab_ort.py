"""npbert against ONNX Runtime int8 in one process, in alternating blocks: a speed ratio that a slow
stretch of a shared machine cannot decide alone.

    flock /tmp/npbert-heavy.lock python bench/ab_ort.py [--model minilm|bert-base] [--batch 8] [--threads 2]
        [--reps 30] [--block 5] [--gap 0.5] [--recipe dynamic] [--out results/F.json]

bench_e2e.py runs every engine in its own process, one after the other; on this shared VM a disturbed
stretch can slow one engine's process by 20-40% and not the other's, so single runs of it may swing a
ratio either way. Here npbert (the recipe) and ONNX Runtime's dynamic int8 model (bench_e2e's export:
run bench_e2e.py once first, it caches the ONNX files) run on the same pre-tokenized batch (B x 128
real tokens) in alternating blocks, the order flipped every round: --gap seconds of idle, one untimed
forward, then --block timed forwards back to back, as a server runs them. The idle lets the other
runtime's worker threads go to sleep (ORT's intra-op pool and numba's OpenMP workers both spin
after a call). Until 9f6faf0 each forward alternated with the other's after 50 ms of idle, which was
not enough: ORT's workers were still spinning, and a MiniLM batch-1 npbert forward right after ORT's
took 27.42 ms against 19.72 right after its own, while ORT's did not mind npbert's
(bench/results/ab-ort-minilm-b1-gap005.json: that version with the medians split by predecessor
added, run once before this one replaced it). Prints the medians and
npbert / ORT as a throughput ratio (higher = npbert faster).
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
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bench_e2e import DEFAULT_CACHE, OrtEngine  # noqa: E402  (the same cache and session options)

MODELS = {"minilm": (Path(__file__).resolve().parents[1] / "weights" / "all-MiniLM-L6-v2", DEFAULT_CACHE / "onnx" / "minilm"),
          "bert-base": (DEFAULT_CACHE / "bert-base-seed0", DEFAULT_CACHE / "onnx" / "bert-base")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=list(MODELS), default="minilm")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--recipe", default="dynamic")
    ap.add_argument("--block", type=int, default=5, help="timed forwards per block (after one untimed)")
    ap.add_argument("--gap", type=float, default=0.5, help="idle seconds before each block")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model_dir, onnx_dir = MODELS[args.model]
    onnx_path = onnx_dir / "model.int8.onnx"
    if not model_dir.is_dir() or not onnx_path.is_file():
        sys.exit(f"{model_dir} or {onnx_path} missing: run `python bench/bench_e2e.py --models {args.model}` once first "
                 "(it writes the random BERT-base and the ONNX exports to that cache)")

    from npbert._jit import set_num_threads
    from npbert.io.tokenizer import Batch
    from npbert.model import load_model
    from npbert.qmodel import quantize_model

    set_num_threads(args.threads)
    qm = quantize_model(load_model(model_dir), args.recipe)
    ort_engine = OrtEngine(onnx_path, args.threads)

    rng = np.random.default_rng(0)
    B, T = args.batch, 128
    ids = rng.integers(1000, 20000, (B, T)).astype(np.int64)
    ids[:, 0] = 101
    mask, types = np.ones((B, T), np.int64), np.zeros((B, T), np.int64)
    batch = Batch(ids, mask, types, np.zeros(B, bool))
    engines = {f"npbert-{args.recipe}": lambda: qm.forward(batch).last_hidden_state,
               "ort-int8": ort_engine.bind(ids, mask, types)}
    ref = engines["ort-int8"]()
    got = engines[f"npbert-{args.recipe}"]()
    cos = float(np.sum(ref * got) / (np.linalg.norm(ref) * np.linalg.norm(got)))
    for f in engines.values():  # warm
        f()
        f()
    times: dict[str, list[float]] = {e: [] for e in engines}
    order = list(engines.items())
    for blk in range(-(-args.reps // args.block)):
        for e, f in (order if blk % 2 == 0 else order[::-1]):
            time.sleep(args.gap)  # the other runtime's spinning workers go to sleep
            f()  # wakes this runtime's threads and caches: not timed
            for _ in range(args.block):
                t0 = time.perf_counter()
                f()
                times[e].append(time.perf_counter() - t0)
    med = {e: statistics.median(v) for e, v in times.items()}
    ratio = med["ort-int8"] / med[f"npbert-{args.recipe}"]
    print(f"{args.model}, batch {B} x {T}, {args.threads} threads, {len(times[order[0][0]])} forwards each in blocks of "
          f"{args.block} (+1 untimed), alternated, {args.gap} s idle before each block")
    for e, s in med.items():
        print(f"  {e:<16} {B / s:8.2f} seq/s  (median {s * 1e3:.2f} ms)")
    print(f"  npbert-{args.recipe} / ort-int8 speed: {ratio:.3f}   (output cosine {cos:.4f})")
    if args.out:
        _util.write_json(Path(args.out), {
            "command": " ".join(["python", *sys.argv]), "git": _util.git_state(), "machine": _util.machine_info(),
            "model": args.model, "batch": B, "seq_len": T, "threads": args.threads, "reps": args.reps, "block": args.block,
            "gap_s": args.gap, "median_s": med, "seq_per_s": {e: B / s for e, s in med.items()}, "speed_ratio": ratio,
            "cosine": cos, "samples_s": times})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
