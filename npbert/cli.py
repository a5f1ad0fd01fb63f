"""`npbert` command line. Subcommands: embed, classify (here), eval / table (npbert.eval), quantize and
report (npbert.qmodel / npbert.report) where present. Choices come from the registries."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from npbert.errors import InputError, NpbertError, NpbertWarning

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "weights" / "all-MiniLM-L6-v2"


def default_model_dir() -> Path:
    """--model default: $NPBERT_MODEL, else weights/all-MiniLM-L6-v2 (made by `python weights/fetch.py`)."""
    env = os.environ.get("NPBERT_MODEL")
    return Path(env) if env else DEFAULT_MODEL


def _load(args):
    """Load args.model; with --recipe (and --calib for static recipes), the quantized model."""
    from npbert.model import load_model

    model_dir = Path(args.model) if args.model else default_model_dir()
    if not model_dir.exists() and args.model is None:
        raise NpbertError(f"default model not found at {model_dir}; run `python weights/fetch.py` first (or pass --model DIR)")
    if (model_dir / "npbert_quant.json").is_file():  # a saved quantized model carries its recipe
        from npbert.qmodel import load_quantized

        return load_quantized(model_dir)
    model = load_model(model_dir)
    if getattr(args, "recipe", None) not in (None, "fp32"):
        from npbert.qmodel_cli import quantize_from_cli

        return quantize_from_cli(model, args)
    return model


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: a crash leaves no half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npy(path: Path, arr: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


def _add_model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", required=required, default=None, help="HF model directory (default: all-MiniLM-L6-v2 in weights/)")
    p.add_argument("--threads", type=int, default=None, help="threads for numba kernels (default: all cores)")
    from npbert.qmodel_cli import add_recipe_args

    add_recipe_args(p)


def cmd_embed(args) -> int:
    model = _load(args)
    texts = list(args.text) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise InputError("no text given; pass TEXT arguments or lines on standard input")
    emb = model.embed(texts, batch_size=args.batch_size)
    if args.output:
        save_npy(Path(args.output), emb)
        print(f"wrote {emb.shape[0]} x {emb.shape[1]} float32 embeddings to {args.output}", file=sys.stderr)
    else:
        np.set_printoptions(precision=5, suppress=True, linewidth=120, threshold=12)
        for t, e in zip(texts, emb):
            print(f"{t[:40]!r}: {e}")
    return 0


def cmd_classify(args) -> int:
    model = _load(args)
    logits = model.classify([args.text], [args.text_pair] if args.text_pair is not None else None)[0]
    cfg = model.config
    if cfg.is_regression:
        out = {"label": None, "score": float(logits[0]), "logits": logits.tolist()}
    else:
        e = np.exp(logits - logits.max())
        probs = e / e.sum()
        names = model.label_names()
        k = int(np.argmax(logits))
        out = {"label": names[k], "logits": logits.tolist(), "probs": dict(zip(names, probs.round(6).tolist()))}
    if args.json:
        print(json.dumps(out))
    elif cfg.is_regression:
        print(f"score {out['score']:.4f}")
    else:
        print(f"label {out['label']}  " + "  ".join(f"{n}: {p:.4f}" for n, p in out["probs"].items()))
    return 0


# Subcommands living in other modules register themselves here (imported lazily, skipped if absent).
_EXTERNAL = ("npbert.eval.commands", "npbert.qmodel_cli", "npbert.report")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="npbert", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="sentence embeddings with the model's declared pooling")
    _add_model_args(p)
    p.add_argument("--output", "-o", help="write an (n, hidden) float32 .npy here instead of printing")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("text", nargs="*", help="texts (default: one per line on standard input)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("classify", help="label and scores from a sequence-classification checkpoint")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object with label and logits")
    p.add_argument("text")
    p.add_argument("text_pair", nargs="?", default=None)
    p.set_defaults(func=cmd_classify)

    for mod in _EXTERNAL:
        try:
            m = importlib.import_module(mod)
        except ImportError as e:
            if e.name != mod:  # the module exists but is broken: say so
                raise
            continue
        m.register(sub)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if getattr(args, "threads", None):
        from npbert._jit import set_num_threads

        set_num_threads(args.threads)
    with warnings.catch_warnings():
        # Truncation and similar notices: one plain line on stderr, not a source-location warning.
        warnings.simplefilter("always", NpbertWarning)
        warnings.showwarning = lambda message, *rest, **kw: print(f"npbert: {message}", file=sys.stderr)
        try:
            return int(args.func(args) or 0)
        except NpbertError as e:
            print(f"npbert: error: {e}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            return 0


if __name__ == "__main__":
    sys.exit(main())
