"""Bit-identity across commits: every recipe's output on fixed batches, saved, then compared.

    python bench/snapshot_outputs.py save OUT.npz [--model DIR]
    python bench/snapshot_outputs.py compare A.npz B.npz

A kernel change that claims "bit-identical" is checked by saving a snapshot at the old commit (a git
worktree: `git worktree add /tmp/old REV`, then `cd /tmp/old && PYTHONPATH=/tmp/old python
/path/to/bench/snapshot_outputs.py save old.npz --model ...`) and at the new one, and comparing: the
last hidden states of 10 recipes (FP32, dynamic, TM-IQR, static W8A8, W8A8 mixed precision, PEG,
per-channel and 7-bit weights, int8 embeddings, TM-IQR on every linear) on four batches (4 x 110,
1 x 128, and padded 3 x 39 and 8 x 110, past the q/k/v row bound) must be equal bit for bit. Static
recipes calibrate on 32 STS-B train sentences. Setting NUMBA_CPU_NAME / NUMBA_CPU_FEATURES compares
instruction sets (e.g. haswell: the AVX2 byte kernel) the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STSB = ROOT.parent / "shared" / "data" / "glue" / "STS-B" / "train.tsv"
RECIPES = ("fp32", "dynamic", "tm-iqr", "w8a8", "w8a8-mp", "peg", "dynamic:weights=channel",
           "dynamic:wbits=7:weights=channel", "dynamic:emb=int8", "tm-iqr:tmiqr=all")


def _batches():
    from npbert.io.tokenizer import Batch

    rng = np.random.default_rng(0)

    def batch(B, T, pad):
        ids = rng.integers(1000, 20000, (B, T))
        ids[:, 0] = 101
        mask = np.ones((B, T), np.int64)
        if pad:  # sequence b loses its last 3b tokens
            for b in range(1, B):
                mask[b, T - 3 * b:] = 0
        return Batch(ids, mask, np.zeros((B, T), np.int64), np.zeros(B, bool))

    return {"4x110": batch(4, 110, False), "3x39pad": batch(3, 39, True), "8x110pad": batch(8, 110, True),
            "1x128": batch(1, 128, False)}


def save(out: Path, model_dir: str) -> None:
    from npbert.model import load_model
    from npbert.qmodel import quantize_model

    m = load_model(model_dir)
    calib = [line.split("\t")[7] for line in STSB.read_text(encoding="utf-8").splitlines()[1:33]]
    batches = _batches()
    res = {}
    for r in RECIPES:
        q = m if r == "fp32" else quantize_model(m, r, calibration=calib)
        for name, b in batches.items():
            res[f"{r}|{name}"] = q.forward(b).last_hidden_state
    np.savez(out, **res)
    print(f"saved {len(res)} outputs to {out}")


def compare(a: Path, b: Path) -> int:
    x, y = np.load(a), np.load(b)
    if sorted(x.files) != sorted(y.files):
        print(f"different contents: {sorted(set(x.files) ^ set(y.files))}")
        return 1
    differ = [k for k in x.files if not np.array_equal(x[k].view(np.int32), y[k].view(np.int32))]
    print(f"{len(x.files)} outputs, {len(differ)} differ" + (f": {differ}" if differ else " (bit-identical)"))
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("out")
    s.add_argument("--model", default=str(ROOT / "weights" / "all-MiniLM-L6-v2"))
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args()
    if args.cmd == "save":
        save(Path(args.out), args.model)
        return 0
    return compare(Path(args.a), Path(args.b))


if __name__ == "__main__":
    sys.exit(main())
