"""CLI glue for quantized models: --recipe / --calib flags on embed and classify, and `npbert quantize`."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from npbert.errors import CalibrationError, DataError

# Header names of the text columns in the GLUE / SICK layouts, as (first, second-or-None).
_TEXT_COLUMNS = (("sentence1", "sentence2"), ("#1 String", "#2 String"), ("question", "sentence"),
                 ("sentence_A", "sentence_B"), ("sentence", None))


def read_calibration_tsv(path: str | Path, size: int | None = None, seed: int = 0):
    """Texts (and pairs) from a TSV with a GLUE/SICK header, or one text per line. -> (texts, pairs|None).

    size: take a seeded random sample of that many rows (deterministic); None = all rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: calibration file not found")
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise CalibrationError(f"{path}: the calibration file is empty")
    header = rows[0]
    texts, pairs = None, None
    for a, b in _TEXT_COLUMNS:
        if a in header and (b is None or b in header):
            ia, ib = header.index(a), (header.index(b) if b else None)
            body = rows[1:]
            for n, r in enumerate(body, start=2):
                if len(r) <= max(ia, ib or 0):
                    raise DataError(f"{path}:{n}: {len(r)} columns, the header has {len(header)}")
            texts = [r[ia] for r in body]
            pairs = [r[ib] for r in body] if ib is not None else None
            break
    if texts is None:  # no known header: one text per line, first column
        texts = [r[0] for r in rows if r and r[0].strip()]
    if not texts:
        raise CalibrationError(f"{path}: no calibration texts found")
    if size is not None and size < len(texts):
        idx = np.sort(np.random.default_rng(seed).choice(len(texts), size, replace=False))
        texts = [texts[i] for i in idx]
        pairs = [pairs[i] for i in idx] if pairs is not None else None
    return texts, pairs


def recipe_arg(text: str) -> str:
    """argparse type for --recipe: fp32, or any recipe string get_recipe accepts (NAME[:key=value...])."""
    if text == "fp32":
        return text
    from npbert.errors import QuantError
    from npbert.qmodel import get_recipe

    try:
        get_recipe(text)
    except QuantError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_recipe_args(p) -> None:
    from npbert.qmodel import RECIPES

    g = p.add_argument_group("quantization")
    g.add_argument("--recipe", default=None, type=recipe_arg,
                   help=f"run quantized with this recipe (default fp32): {', '.join(RECIPES)}, optionally with "
                        "options as NAME:key=value:... (e.g. dynamic:wbits=7:weights=channel); static recipes need --calib")
    g.add_argument("--calib", default=None, help="TSV (GLUE/SICK header) or text file of calibration texts")
    g.add_argument("--calib-size", type=int, default=256, help="seeded random sample of the calibration rows")
    g.add_argument("--site", action="append", default=[], metavar="PATTERN=SPEC",
                   help="per-site override, e.g. '*.output.dense.in=bits:16' or 'encoder.layer.0.*=off' (repeatable)")
    g.add_argument("--weight-granularity", choices=["tensor", "channel"], default=None)
    g.add_argument("--peg-groups", type=int, default=None)
    g.add_argument("--no-peg-permute", action="store_true")


def quantize_from_cli(model, args):
    from npbert.qmodel import get_recipe, quantize_model

    rec = get_recipe(args.recipe)
    calib = None
    if args.calib:
        calib = read_calibration_tsv(args.calib, args.calib_size)
    elif rec.needs_calibration:
        raise CalibrationError(f"recipe {args.recipe!r} calibrates static ranges: pass --calib FILE.tsv")
    return quantize_model(model, args.recipe, calib, overrides=args.site, progress=True,
                          weight_granularity=args.weight_granularity, peg_groups=args.peg_groups,
                          peg_permute=False if args.no_peg_permute else None)


def cmd_quantize(args) -> int:
    from npbert.cli import _load
    from npbert.qmodel import QuantizedModel

    if args.list_sites:
        from npbert.cli import default_model_dir
        from npbert.model import load_model
        from npbert.qmodel import discover_sites, get_recipe

        model = load_model(args.model or default_model_dir())
        rec = get_recipe(args.recipe or "w8a8")
        for s in discover_sites(model)[0]:
            sp = rec.spec(s)
            print(f"{s}\t{sp.mode}\t{sp.bits}\t{'sym' if sp.symmetric else 'asym'}\t{sp.granularity}")
        return 0
    if not args.recipe or args.recipe == "fp32":
        raise CalibrationError("pass --recipe (one of the quantized recipes) to quantize")
    if not args.out:
        raise DataError("pass --out DIR for the quantized model")
    qm = _load(args)
    assert isinstance(qm, QuantizedModel)
    out = qm.save(args.out)
    print(f"wrote {args.recipe} model to {out}", file=sys.stderr)
    return 0


def register(sub) -> None:
    from npbert.cli import _add_model_args

    p = sub.add_parser("quantize", help="calibrate and save a quantized model (safetensors + JSON)")
    _add_model_args(p)
    p.add_argument("--out", help="output folder (written atomically)")
    p.add_argument("--list-sites", action="store_true", help="print every quantization site and its spec")
    p.set_defaults(func=cmd_quantize)
