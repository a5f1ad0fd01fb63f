"""`npbert eval` and `npbert table`: registered into the CLI by npbert.cli via `register(subparsers)`.

    npbert eval --model DIR --task mrpc --data ../shared/data/glue/MRPC --recipes fp32,dynamic --json mrpc.json
    npbert table mrpc.json sst2.json --out results.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from npbert.errors import DataError
from npbert.eval.tasks import TASKS

__all__ = ["register", "cmd_eval", "cmd_table", "write_json_atomic", "read_results"]


def _recipe_help() -> str:
    try:  # the registry lives in npbert.qmodel once it exists; names are validated there
        from npbert.qmodel import RECIPES

        names = ", ".join(["fp32", *RECIPES])
    except ImportError:
        names = "fp32, dynamic, tm-iqr, w8a8, w8a8-mp, peg"
    return f"comma-separated recipes to score (default fp32); known: {names}"


def register(subparsers) -> None:
    """Add the `eval` and `table` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser(
        "eval",
        help="score a checkpoint on a task split, FP32 and quantization recipes",
        description="Score a checkpoint on one task split (FP32 and each recipe) and print a table row.",
    )
    p.add_argument("--model", required=True, help="HF model directory (a task checkpoint, or any encoder for *-sim tasks)")
    p.add_argument("--task", required=True, choices=sorted(TASKS), help="task to score")
    p.add_argument("--data", required=True, help="the task's data folder (or a folder holding glue/<TASK> or sick/)")
    p.add_argument("--split", default="dev", help="split to score (default dev; SICK: train, trial, test)")
    p.add_argument("--recipes", default="fp32", help=_recipe_help())
    p.add_argument("--calib-split", default="train", help="split static recipes calibrate on (never the scored one)")
    p.add_argument("--calib-size", type=int, default=512, help="rows sampled from the calibration split (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample (default 0)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="threads for numba kernels (default: all cores)")
    p.add_argument(
        "--progress", choices=("auto", "always", "never"), default="auto",
        help="progress bars on stderr (auto: only when stderr is a terminal)",
    )
    p.add_argument("--json", metavar="OUT", default=None, help="write the result as JSON here (atomically)")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser(
        "table",
        help="Markdown table from `npbert eval --json` results",
        description="Tasks as rows, FP32 then each recipe as columns, the drop from FP32 in parentheses.",
    )
    p.add_argument("results", nargs="+", metavar="RESULT.json", help="result files (one result or a list each)")
    p.add_argument("--out", default=None, metavar="FILE.md", help="write the table here (atomically) as well as printing it")
    p.set_defaults(func=cmd_table)


def write_json_atomic(path: str | Path, obj) -> None:
    """JSON to a temp file in the target folder, then os.replace: never a half-written file."""
    _write_atomic(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def _write_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(x):
    """NumPy scalars -> Python; non-finite floats -> None (strict JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _summary(result: dict) -> str:
    lines = []
    for recipe, scores in result["results"].items():
        vals = ", ".join(f"{m} {'n/a' if v is None else f'{v:.2f}'}" for m, v in scores.items())
        secs = result.get("seconds", {}).get(recipe)
        lines.append(f"{recipe}: {vals}" + (f"  ({secs:.1f} s)" if secs is not None else ""))
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from npbert.eval.runner import evaluate
    from npbert.eval.table import render_table

    result = evaluate(
        args.model,
        args.task,
        args.data,
        split=args.split,
        recipes=args.recipes,
        calib_split=args.calib_split,
        calib_size=args.calib_size,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=args.progress,
    )
    print(render_table([result]), end="")
    print(f"\n{result['task']} {result['split']}, n = {result['n']}", file=sys.stderr)
    print(_summary(result), file=sys.stderr)
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def read_results(path: str | Path) -> list[dict]:
    """One result dict or a list of them from a JSON file; DataError naming the file otherwise."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: result file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); expected an `npbert eval --json` file") from None
    items = obj if isinstance(obj, list) else [obj]
    for i, r in enumerate(items):
        if not isinstance(r, dict) or "task" not in r or not isinstance(r.get("results"), dict):
            where = f" (item {i})" if isinstance(obj, list) else ""
            raise DataError(f"{path}{where}: not an evaluation result (needs 'task' and 'results'); made by `npbert eval --json`?")
    return items


def cmd_table(args: argparse.Namespace) -> int:
    from npbert.eval.table import render_table

    results = [r for p in args.results for r in read_results(p)]
    text = render_table(results)
    print(text, end="")
    if args.out:
        _write_atomic(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
